"""Meta-objectives and meta-steps over :mod:`tf_maml.adapt`: MAML, first-order MAML, Reptile
and the pretrained (multi-task) baseline.

A batch of tasks is a tuple ``(support_x, support_y, query_x, query_y)`` whose leading axis
is the task (``meta_batch_size``). Each task is adapted independently (its own batch-norm
statistics, its own fast weights); the per-task computations are mapped over that axis with
``tf.vectorized_map`` (fast for dense nets), ``tf.map_fn`` (convolutional nets, whose
per-task filter gradients have no vectorised kernel), or an unrolled Python loop (the
straightforward reference, used by the tests to check the other two); or, for a linear
chain of standard layers, all tasks run at once through batched kernels
(:mod:`tf_maml.batched`: per-task weights stacked, im2col convolutions). Meta-gradients can
also be accumulated chunk of tasks by chunk in a ``tf.while_loop``
(:mod:`tf_maml.accumulate`), so that only one chunk's activations are alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from tf_maml import accumulate as accumulate_lib
from tf_maml import adapt as adapt_lib
from tf_maml import batched as batched_lib
from tf_maml import distribute as distribute_lib
from tf_maml import threads as threads_lib

Batch = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]
ALGORITHMS = ("maml", "reptile")
TASK_PARALLELISM = ("auto", "batched", "vectorized", "map", "loop", "accumulate")
# "auto" uses tf_maml.batched only while one support + one query pass of im2col patches
# stays under this (Omniglot: 51-101 MB; MiniImageNet 84x84: ~1 GB, stays on map_fn).
BATCHED_PATCH_BUDGET = 256 * 2**20
# "auto" and "accumulate" (tf_maml.accumulate): conv nets accumulate meta-gradients over
# chunks of as many tasks as hold at most this much im2col patches (see _accumulate_plan;
# Omniglot: 16 tasks of 5-way 1-shot, 4 of 20-way 1-shot).
ACCUMULATE_PATCH_BUDGET = 32 * 2**20
# ... when several chunks run at once (``parallel_chunks`` > 1, each on its own core): chunks
# this small stay in a core's cache (Omniglot: 2 tasks of 5-way 1-shot, 1 of 20-way).
PARALLEL_CHUNK_PATCH_BUDGET = 4 * 2**20



BATCH_NAMES = ("support_x", "support_y", "query_x", "query_y")


def _model_example_shape(model: keras.Model) -> tuple | None:
    """The shape of one example the model takes (None dims unknown), or None if the model
    does not say (several inputs, or a subclassed model without an input shape)."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if not isinstance(shape, tuple) or any(isinstance(d, (tuple, list)) for d in shape):
        return None
    return tuple(shape[1:])


def _check_batch(batch, where: str, example_shape: tuple | None = None
                 ) -> tuple[tf.Tensor, ...]:
    """``batch`` as 4 tensors, or a ValueError saying what is wrong with it (checked on the
    static shapes, so before any tracing). ``example_shape``: what one example of x must
    look like (the model's input shape without the batch axis; None dims match any)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 4:
        got = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
               else f"a {type(batch).__name__}")
        raise ValueError(f"{where} expects a batch (support_x, support_y, query_x, query_y) "
                         f"with the task on the leading axis, got {got}")
    tensors = tuple(tf.convert_to_tensor(t) for t in batch)
    shapes = {name: t.shape for name, t in zip(BATCH_NAMES, tensors)}
    for name, shape in shapes.items():
        if shape.rank is not None and shape.rank < 2:
            raise ValueError(f"{where}: {name} has shape {shape}; expected [tasks, examples, "
                             "...] (the task on the leading axis)")
    tasks = {name: shape[0] for name, shape in shapes.items()
             if shape.rank is not None and shape[0] is not None}
    if len(set(tasks.values())) > 1:
        raise ValueError(f"{where}: the arrays of a batch must hold the same number of tasks, "
                         f"got {', '.join(f'{n} {c}' for n, c in tasks.items())}")
    for x_name, y_name in (("support_x", "support_y"), ("query_x", "query_y")):
        x_shape, y_shape = shapes[x_name], shapes[y_name]
        if x_shape.rank is None or y_shape.rank is None:
            continue
        if x_shape[1] is not None and y_shape[1] is not None and x_shape[1] != y_shape[1]:
            raise ValueError(f"{where}: {y_name} has {y_shape[1]} targets per task but "
                             f"{x_name} has {x_shape[1]} examples; every example needs one")
        if example_shape is None:
            continue
        got = tuple(x_shape[2:])
        if len(got) != len(example_shape) or any(
                g is not None and e is not None and g != e for g, e in zip(got, example_shape)):
            want = ", ".join("?" if d is None else str(d) for d in example_shape)
            missing = (" (is the task axis missing? a single task needs a leading axis "
                       "of 1)" if len(got) + 1 == len(example_shape) else "")
            raise ValueError(f"{where}: {x_name} has shape {x_shape}, i.e. examples of shape "
                             f"{got}, but the model takes examples of shape ({want}); expected "
                             f"[tasks, examples, {want}]{missing}")
    return tensors


def _has_conv(model: keras.Model) -> bool:
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    return any(isinstance(layer, conv_types) for layer in model._flatten_layers())


def _has_recurrent(model: keras.Model) -> bool:
    return any(isinstance(layer, keras.layers.RNN) for layer in model._flatten_layers())


# TF1's AdamOptimizer default, which the original trained with. Keras 3's Adam applies ε the
# same way (θ -= lr_t·m / (√v + ε)), so with this ε the meta-update is the original's.
ORIGINAL_ADAM_EPSILON = 1e-8


class MetaLearner:
    """Meta-trains the initialisation θ of a built Keras model (Finn et al. 2017).

    Args:
      model: any built Keras model (Sequential, functional, subclassed). Its code is not
        changed: tasks are run through ``model.stateless_call`` with fast weights.
      loss_fn: ``loss_fn(y_true, y_pred) -> scalar`` for ONE task, used in the inner loop
        and for the meta-objective (e.g. :func:`tf_maml.losses.summed_xent`).
      inner_lr: α, the inner SGD step size.
      inner_steps: number of inner steps during meta-training (the original's num_updates).
      first_order: stop the gradient through the inner gradient (first-order MAML).
      algorithm: ``"maml"`` or ``"reptile"``.
      meta_optimizer: defaults to ``keras.optimizers.Adam(meta_lr, epsilon=1e-8)``: the
        original's ``tf.train.AdamOptimizer`` (same update, ε = 1e-8; Keras' default is 1e-7).
      metric_fn: optional per-task metric (e.g. accuracy) reported beside the loss.
      adapt_norm: also adapt normalisation offsets/scales in the inner loop (the original
        did not: they are meta-trained only).
      meta_grad_clip: clip every meta-gradient element to ±value (the original did for
        MiniImageNet with 10).
      learn_inner_lr: Meta-SGD (Li et al. 2017): one learnable α per parameter element,
        initialised to ``inner_lr`` and meta-trained with θ.
      task_parallelism: ``"auto"``, ``"batched"``, ``"vectorized"``, ``"map"``, ``"loop"``
        or ``"accumulate"`` (see module doc). ``"auto"``: for a conv net, meta-gradients
        through tf_maml.batched in one pass while all tasks' im2col patches stay under
        ``ACCUMULATE_PATCH_BUDGET``, else accumulated over chunks of tasks (batched chunks
        within that budget; one task per chunk through the model itself when the batched
        path cannot run it or one task's patches exceed ``BATCHED_PATCH_BUDGET``);
        map_fn for recurrent nets, else vectorized. Evaluation and Reptile (no outer tape)
        use batched while the patches fit ``BATCHED_PATCH_BUDGET``, else map_fn.
        ``"accumulate"``: always accumulates, in chunks as ``"auto"`` would pick them (one
        task per chunk for a net without convolutions) or of ``tasks_per_chunk`` tasks
        (evaluation and Reptile: map_fn, one task at a time).
      tasks_per_chunk: with ``task_parallelism="accumulate"``, this many tasks per
        iteration (must divide the meta-batch; above 1 the model must be supported by
        tf_maml.batched). 1 holds the least memory.
      parallel_chunks: how many chunks of an accumulated meta-batch run at once (the
        ``tf.while_loop``'s ``parallel_iterations``): None (default) one per CPU core this
        process may use (one on a machine with a GPU), at most the number of chunks. Each
        chunk's activations are alive while it runs, so memory grows with it; 1 is the
        least. On 2 cores, 2 chunks at once ran Omniglot 1.45-1.6x faster than 1 (README,
        Performance), more with ``tf.config.threading.set_intra_op_parallelism_threads(1)``
        (what the ``tf-maml`` command does on a CPU).

    Example (sinusoid regression, the paper's §5.1)::

        import keras, numpy as np, tf_maml
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(40, activation="relu"),
                                  keras.layers.Dense(40, activation="relu"),
                                  keras.layers.Dense(1)])
        learner = tf_maml.MetaLearner(model, tf_maml.losses.mse, inner_lr=0.01)
        tasks = tf_maml.SinusoidTasks(num_support=10, num_query=10)
        learner.fit(tasks, iterations=2000, meta_batch_size=25)
        sx, sy, qx, qy = tasks.sample_batch(1, np.random.default_rng(0))
        fast = learner.adapt(sx[0], sy[0], num_steps=5)
        print(np.mean((learner.predict(qx[0], fast) - qy[0]) ** 2))
    """

    def __init__(
        self,
        model: keras.Model,
        loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        algorithm: str = "maml",
        meta_lr: float = 1e-3,
        meta_optimizer: keras.optimizers.Optimizer | None = None,
        metric_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
        adapt_norm: bool = False,
        meta_grad_clip: float | None = None,
        learn_inner_lr: bool = False,
        task_parallelism: str = "auto",
        tasks_per_chunk: int | None = None,
        parallel_chunks: int | None = None,
    ):
        if not model.built:
            raise ValueError(
                "MetaLearner needs a built Keras model: call the model once on an example "
                "batch (or give it an Input) before wrapping it."
            )
        if not model.trainable_variables:
            raise ValueError(
                f"model {model.name} has no trainable weights, so there is nothing to "
                "meta-learn: set model.trainable = True (and unfreeze its layers) before "
                "wrapping it."
            )
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if task_parallelism not in TASK_PARALLELISM:
            raise ValueError(
                f"task_parallelism must be one of {TASK_PARALLELISM}, got {task_parallelism!r}"
            )
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        self.model = model
        self.loss_fn = loss_fn
        self.metric_fn = metric_fn
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.first_order = bool(first_order)
        self.algorithm = algorithm
        self.meta_grad_clip = meta_grad_clip
        self.mask = adapt_lib.adapted_mask(model, adapt_norm)
        if task_parallelism == "batched" and not batched_lib.supports(model):
            raise ValueError("task_parallelism='batched' cannot run this model: "
                             f"{batched_lib.unsupported_reason(model)}")
        # Omniglot conv4 on CPU: 1.8x (second order) to 2.2x (first order) faster than
        # map_fn (benchmarks/batched_vs_map.py); dense nets stay on pfor, which is faster.
        self._auto_batched = (task_parallelism == "auto" and _has_conv(model)
                              and batched_lib.supports(model))
        # Conv nets accumulate meta-gradients chunk by chunk (tf_maml.accumulate) once
        # mapping all tasks would hold more than ACCUMULATE_PATCH_BUDGET of im2col patches
        # (or always, without the batched path): see _accumulate_plan.
        self._auto_accumulate = task_parallelism == "auto" and _has_conv(model)
        self._batched_ok = batched_lib.supports(model)
        if tasks_per_chunk is not None and (task_parallelism != "accumulate"
                                            or int(tasks_per_chunk) < 1):
            raise ValueError("tasks_per_chunk needs task_parallelism='accumulate' and a "
                             f"positive number, got {tasks_per_chunk!r}")
        if tasks_per_chunk is not None and int(tasks_per_chunk) > 1 and not self._batched_ok:
            raise ValueError(f"tasks_per_chunk={tasks_per_chunk} needs a model that "
                             "tf_maml.batched supports (else chunks hold one task): "
                             f"{batched_lib.unsupported_reason(model)}")
        self.tasks_per_chunk = None if tasks_per_chunk is None else int(tasks_per_chunk)
        if parallel_chunks is not None and int(parallel_chunks) < 1:
            raise ValueError(f"parallel_chunks must be a positive number (or None: one per "
                             f"CPU core), got {parallel_chunks!r}")
        self.parallel_chunks = None if parallel_chunks is None else int(parallel_chunks)
        self._example_shape = _model_example_shape(model)
        if task_parallelism == "auto":
            # pfor has no batched kernel for a per-task conv filter gradient (it falls back
            # to a while loop, slower than map_fn) and cannot vectorise RNN while loops.
            loops = _has_conv(model) or _has_recurrent(model)
            task_parallelism = "map" if loops else "vectorized"
        self.task_parallelism = task_parallelism
        self.inner_lrs: list[keras.Variable] = []
        if learn_inner_lr:
            self.inner_lrs = [
                keras.Variable(tf.fill(v.shape, tf.cast(self.inner_lr, v.dtype)),
                               trainable=True, name=f"inner_lr_{i}")
                for i, v in enumerate(model.trainable_variables)
            ]
        # tf.distribute: a learner built under strategy.scope() (its model too) splits each
        # meta-batch over the strategy's replicas (tf_maml/distribute.py); None: one device.
        self.strategy = distribute_lib.current_strategy()
        self.optimizer = meta_optimizer or keras.optimizers.Adam(
            meta_lr, epsilon=ORIGINAL_ADAM_EPSILON)
        if self.strategy is not None:
            self._check_distributed(model)
        self.optimizer.build(self.meta_variables)
        # Non-finite guard: a step whose loss or meta-gradient is NaN/Inf is not applied;
        # the first such iteration is remembered so the training loop can stop and say so.
        self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._train_fns: dict = {}
        self._eval_fns: dict = {}

    def _check_distributed(self, model: keras.Model) -> None:
        if not all(isinstance(getattr(v, "value", v), tf.distribute.DistributedValues)
                   for v in model.trainable_variables):
            raise ValueError(
                f"MetaLearner was created under a tf.distribute strategy's scope but model "
                f"{model.name} was built outside it: build the model under the same "
                "strategy.scope() (its weights must be mirrored on every replica)."
            )
        if getattr(self.optimizer, "_distribution_strategy", self.strategy) is not self.strategy:
            raise ValueError("meta_optimizer was created outside the strategy's scope: create "
                             "it under the same strategy.scope() as the MetaLearner.")

    # ------------------------------------------------------------------ variables
    @property
    def meta_variables(self) -> list:
        """Everything the meta-optimiser updates: θ (and Meta-SGD's α if learned)."""
        return list(self.model.trainable_variables) + list(self.inner_lrs)

    def _read(self, variables) -> list[tf.Tensor]:
        return [tf.identity(v.value if hasattr(v, "value") else v) for v in variables]

    # ------------------------------------------------------------------ per-task map
    def _use_batched(self, batch: Batch) -> bool:
        """Whether this batch runs through tf_maml.batched (decided when tracing)."""
        if self.task_parallelism == "batched":
            return True
        if not self._auto_batched:
            return False
        shapes = [tuple(batch[0].shape), tuple(batch[2].shape)]
        if any(d is None for shape in shapes for d in shape):
            return False
        return batched_lib.patch_bytes(self.model, shapes) <= BATCHED_PATCH_BUDGET

    def _cores(self) -> int:
        """Chunks that may run at once by default: one per CPU core, one with a GPU."""
        if self.parallel_chunks is not None:
            return self.parallel_chunks
        if threads_lib.has_accelerator():
            return 1
        return threads_lib.available_cores()

    def _accumulate_plan(self, batch: Batch) -> tuple[int, bool, int] | None:
        """How the meta-gradients of this batch are accumulated (decided when tracing):
        None maps all tasks at once (the other modes); else ``(tasks per chunk, whether
        a chunk runs through tf_maml.batched, chunks run at once)`` for
        tf_maml.accumulate.

        A chunk holds the most tasks (dividing the meta-batch) whose im2col patches (one
        support + one query pass, :func:`tf_maml.batched.patch_bytes`) stay within a
        budget: ``ACCUMULATE_PATCH_BUDGET`` when chunks run one at a time (batched kernels
        big enough to amortise op dispatch, memory bounded), the smaller
        ``PARALLEL_CHUNK_PATCH_BUDGET`` when several run at once, one per core (what
        stays in a core's cache). "auto" maps all tasks in one batched pass if they fit.
        A model the batched path cannot run, shapes unknown when tracing, a net without
        convolutions, one task over the budget (Omniglot 20-way with several cores) or
        over ``BATCHED_PATCH_BUDGET`` (MiniImageNet): one task per chunk, through the
        model itself.
        """
        explicit = self.task_parallelism == "accumulate"
        if not (explicit or self._auto_accumulate):
            return None
        num_tasks = batch[0].shape[0]
        cores = self._cores()

        def plan(chunk, use_batched):
            chunks = None if num_tasks is None else max(num_tasks // chunk, 1)
            return chunk, use_batched, cores if chunks is None else min(cores, chunks)

        if self.tasks_per_chunk is not None:
            return plan(self.tasks_per_chunk, self.tasks_per_chunk > 1)
        shapes = [(1, *batch[0].shape[1:]), (1, *batch[2].shape[1:])]
        if (not self._batched_ok or num_tasks is None
                or any(d is None for shape in shapes for d in shape)):
            return plan(1, False)
        per_task = batched_lib.patch_bytes(self.model, shapes)
        budget = ACCUMULATE_PATCH_BUDGET if cores == 1 else PARALLEL_CHUNK_PATCH_BUDGET
        if per_task == 0 or per_task > min(budget, BATCHED_PATCH_BUDGET):
            return plan(1, False)
        if not explicit and per_task * num_tasks <= budget:
            return None  # auto: one batched pass over every task (see _use_batched)
        chunk = max(c for c in range(1, num_tasks + 1) if num_tasks % c == 0
                    and (c * per_task <= budget or c == 1))
        return plan(chunk, chunk > 1)

    def task_mapping(self, batch: Batch) -> str:
        """How ``meta_gradients`` maps the tasks of a batch of these shapes, in words
        (e.g. ``"batched"``, ``"accumulate (8 tasks/chunk, batched)"``, ``"map"``)."""
        plan = self._accumulate_plan(batch)
        if plan is not None:
            chunk, use_batched, parallel = plan
            return (f"accumulate ({chunk} task{'s' if chunk > 1 else ''}/chunk"
                    f"{', batched' if use_batched else ''}"
                    f"{f', {parallel} at once' if parallel > 1 else ''})")
        if self._use_batched(batch):
            return "batched"
        return self.task_parallelism

    def _map_tasks(self, fn, batch: Batch, signature):
        if self.task_parallelism == "vectorized":
            return tf.vectorized_map(fn, batch, fallback_to_while_loop=True)
        if self.task_parallelism == "accumulate":  # no outer tape here: one task at a time
            return tf.map_fn(fn, batch, fn_output_signature=signature, parallel_iterations=1)
        if self.task_parallelism == "map":
            num_tasks = batch[0].shape[0]
            return tf.map_fn(
                fn, batch, fn_output_signature=signature, parallel_iterations=num_tasks or 10
            )
        num_tasks = batch[0].shape[0]
        if num_tasks is None:
            raise ValueError("task_parallelism='loop' needs a static number of tasks")
        outs = [fn(tuple(t[i] for t in batch)) for i in range(num_tasks)]
        return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outs)

    def _lr(self, lrs):
        return lrs if lrs else self.inner_lr

    # ------------------------------------------------------------------ adaptation
    def adapt(self, support_x, support_y, num_steps: int | None = None, weights=None):
        """Fast weights for one task: ``num_steps`` (default ``inner_steps``) SGD steps on
        its support set from θ (or from ``weights``). Returns a list of tensors matching
        ``model.trainable_variables``."""
        steps = self.inner_steps if num_steps is None else int(num_steps)
        weights = self._read(self.model.trainable_variables) if weights is None else weights
        lrs = self._read(self.inner_lrs)
        support_x, support_y = tf.convert_to_tensor(support_x), tf.convert_to_tensor(support_y)
        num_x, num_y = (t.shape[0] if t.shape.rank else None for t in (support_x, support_y))
        if num_x is not None and num_y is not None and num_x != num_y:
            raise ValueError(f"adapt: support_y has {num_y} targets but support_x has {num_x} "
                             "examples; every example needs one")
        fast, _, _ = adapt_lib.adapt(
            self.model, weights, support_x, support_y, self.loss_fn, self._lr(lrs), steps,
            mask=self.mask,
        )
        return fast

    def predict(self, x, fast_weights=None, training: bool = True):
        """Predictions with ``fast_weights`` (default: the meta-learned θ)."""
        weights = fast_weights
        if weights is None:
            weights = self._read(self.model.trainable_variables)
        return adapt_lib.forward(self.model, weights, tf.convert_to_tensor(x), training=training)

    def fit(
        self,
        tasks,
        iterations: int,
        meta_batch_size: int = 25,
        seed: int = 0,
        run_dir: str | None = None,
        resume: bool = True,
        callbacks: Sequence = (),
        log_interval: int | None = 100,
        pretrain_iterations: int = 0,
        nan_policy: str = "stop",
        log=print,
    ) -> int:
        """Meta-trains for ``iterations`` meta-batches; returns the last iteration.

        ``tasks`` is a task source (anything with ``sample_batch(meta_batch_size, rng)``,
        e.g. :class:`tf_maml.SinusoidTasks`) or an iterable / ``tf.data.Dataset`` of batches
        ``(support_x, support_y, query_x, query_y)``. With ``run_dir`` it holds that
        directory's lock, checkpoints there every 1000 iterations, resumes from the latest
        readable checkpoint (Adam state included; ``resume=False`` refuses a directory that
        holds checkpoints) and writes TensorBoard scalars and ``training_log.csv``; see
        docs/resuming.md. ``callbacks`` are :class:`tf_maml.callbacks.Callback` objects;
        progress is printed every ``log_interval`` iterations (None: silent).
        """
        from tf_maml import train

        return train.fit_learner(
            self, tasks, iterations, meta_batch_size=meta_batch_size, seed=seed,
            run_dir=run_dir, resume=resume, callbacks=callbacks, log_interval=log_interval,
            pretrain_iterations=pretrain_iterations, nan_policy=nan_policy, log=log)

    def export(self, export_dir: str, num_steps: int = 10, **kwargs) -> str:
        """SavedModel with ``serving_default`` (θ's predictions) and ``adapt_and_predict``
        (``num_steps`` inner steps inside the graph, then query predictions), plus
        ``model.keras``; see :func:`tf_maml.export.export`."""
        from tf_maml.export import export

        return export(self, export_dir, num_steps=num_steps, **kwargs)

    # ------------------------------------------------------------------ objectives
    def _task_maml(self, params, lrs, task, num_steps, first_order):
        support_x, support_y, query_x, query_y = task
        fast, pre_loss, pre_preds = adapt_lib.adapt(
            self.model, params, support_x, support_y, self.loss_fn, self._lr(lrs), num_steps,
            first_order=first_order, mask=self.mask,
        )
        query_preds = adapt_lib.forward(self.model, fast, query_x)
        post_loss = self.loss_fn(query_y, query_preds)
        out = {"pre_loss": pre_loss, "post_loss": post_loss}
        if self.metric_fn is not None:
            out["pre_metric"] = self.metric_fn(support_y, pre_preds)
            out["post_metric"] = self.metric_fn(query_y, query_preds)
        return out

    @property
    def _loss_dtype(self):
        return tf.as_dtype(self.model.trainable_variables[0].dtype)

    def _signature(self):
        spec = {k: tf.TensorSpec([], self._loss_dtype) for k in ("pre_loss", "post_loss")}
        if self.metric_fn is not None:
            spec.update({k: tf.TensorSpec([], tf.float32) for k in ("pre_metric", "post_metric")})
        return spec

    def meta_gradients(self, batch: Batch, pretrain: bool = False):
        """Meta-gradients for ``meta_variables`` and the mean per-task metrics.

        MAML: ∇θ mean_i L(θ'_i; query_i); pretrain: ∇θ mean_i L(θ; support_i) (the
        original's pretrained baseline minimises the pre-update loss).
        """
        plan = self._accumulate_plan(batch)
        if plan is not None:
            chunk, use_batched, parallel = plan
            return accumulate_lib.meta_gradients(self, batch, pretrain=pretrain,
                                                 tasks_per_chunk=chunk, use_batched=use_batched,
                                                 parallel_chunks=parallel)
        if self._use_batched(batch):
            return batched_lib.meta_gradients(self, batch, pretrain=pretrain)
        params = self._read(self.model.trainable_variables)
        lrs = self._read(self.inner_lrs)
        num_steps = 0 if pretrain else self.inner_steps
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params + lrs)
            per_task = self._map_tasks(
                lambda task: self._task_maml(params, lrs, task, num_steps, self.first_order),
                batch, self._signature(),
            )
            metrics = {k: tf.reduce_mean(v) for k, v in per_task.items()}
            objective = metrics["pre_loss"] if pretrain else metrics["post_loss"]
        grads = tape.gradient(
            objective, params + lrs, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return grads, metrics

    def reptile_gradients(self, batch: Batch):
        """Reptile (Nichol et al. 2018): θ − mean_i θ'_i, with θ'_i after ``inner_steps``
        SGD steps on task i's support set; handed to the meta-optimiser as a gradient."""
        if self._use_batched(batch):
            return batched_lib.reptile_gradients(self, batch)
        params = self._read(self.model.trainable_variables)
        everything = [True] * len(params)

        def task_fn(task):
            support_x, support_y, query_x, query_y = task
            fast, pre_loss, _ = adapt_lib.adapt(
                self.model, params, support_x, support_y, self.loss_fn, self.inner_lr,
                self.inner_steps, first_order=True, mask=everything,
            )
            post_loss = self.loss_fn(query_y, adapt_lib.forward(self.model, fast, query_x))
            return {"fast": fast, "pre_loss": pre_loss, "post_loss": post_loss}

        signature = {
            "fast": [tf.TensorSpec(p.shape, p.dtype) for p in params],
            "pre_loss": tf.TensorSpec([], self._loss_dtype),
            "post_loss": tf.TensorSpec([], self._loss_dtype),
        }
        out = self._map_tasks(task_fn, batch, signature)
        grads = [p - tf.reduce_mean(f, axis=0) for p, f in zip(params, out["fast"])]
        grads += [tf.zeros_like(v) for v in self.inner_lrs]
        metrics = {"pre_loss": tf.reduce_mean(out["pre_loss"]),
                   "post_loss": tf.reduce_mean(out["post_loss"])}
        return grads, metrics

    def apply_gradients(self, grads, loss=None):
        """One meta-optimiser step, skipped (and counted) if the loss or a gradient is not
        finite. Returns whether it was applied."""
        if self.meta_grad_clip is not None:
            c = float(self.meta_grad_clip)
            grads = [tf.clip_by_value(g, -c, c) for g in grads]
        checks = [tf.reduce_all(tf.math.is_finite(g)) for g in grads]
        if loss is not None:
            checks.append(tf.math.is_finite(loss))
        finite = tf.reduce_all(checks)

        def apply():
            self.optimizer.apply(grads, self.meta_variables)
            return tf.constant(True)

        def skip():
            self.nonfinite_steps.assign_add(1)
            return tf.constant(False)

        return tf.cond(finite, apply, skip)

    # ------------------------------------------------------------------ compiled steps
    def train_step(self, batch: Batch, pretrain: bool = False) -> dict:
        """One compiled meta-training step on a batch of tasks; returns mean metrics and
        ``applied`` (False when the step was skipped for a non-finite value).

        Under a tf.distribute strategy (see :mod:`tf_maml.distribute`) ``batch`` is the
        global meta-batch, split evenly over the replicas, or per-replica values from
        :func:`tf_maml.distribute.task_batches`; gradients and metrics are all-reduced and
        one meta-optimiser step is applied.
        """
        key = "pretrain" if pretrain else self.algorithm
        if key not in self._train_fns:
            def gradients(batch):
                if key == "reptile":
                    return self.reptile_gradients(batch)
                return self.meta_gradients(batch, pretrain=(key == "pretrain"))

            def apply(grads, metrics):
                loss = metrics["pre_loss"] if key == "pretrain" else metrics["post_loss"]
                return dict(metrics, applied=self.apply_gradients(grads, loss))

            if self.strategy is None:
                def step(batch):
                    return apply(*gradients(batch))
            else:
                step = distribute_lib.replicated_step(self.strategy, gradients, apply)
            self._train_fns[key] = tf.function(step, reduce_retracing=True)
        if self.strategy is None:
            return self._train_fns[key](_check_batch(batch, "train_step", self._example_shape))
        if not distribute_lib.is_distributed(batch):
            batch = distribute_lib.split_batch(
                self.strategy, _check_batch(batch, "train_step", self._example_shape))
        return self._train_fns[key](batch)

    meta_train_step = train_step  # the name used in the paper's vocabulary

    def evaluate_batch(self, batch: Batch, num_steps: int) -> dict:
        """Per task and step (0..num_steps) query loss (and metric), shape [T, num_steps+1].

        Step 0 is the meta-learned θ itself, evaluated on the query set.
        """
        num_steps = int(num_steps)
        if num_steps not in self._eval_fns:
            def evaluate(batch):
                if self._use_batched(batch):
                    return batched_lib.evaluate_batch(self, batch, num_steps)
                params = self._read(self.model.trainable_variables)
                lrs = self._read(self.inner_lrs)

                def task_fn(task):
                    support_x, support_y, query_x, query_y = task
                    trajectory, _, _ = adapt_lib.adapt(
                        self.model, params, support_x, support_y, self.loss_fn,
                        self._lr(lrs), num_steps, mask=self.mask, return_all=True,
                    )
                    preds = [adapt_lib.forward(self.model, w, query_x) for w in trajectory]
                    out = {"loss": tf.stack([self.loss_fn(query_y, p) for p in preds])}
                    if self.metric_fn is not None:
                        out["metric"] = tf.stack([self.metric_fn(query_y, p) for p in preds])
                    return out

                signature = {"loss": tf.TensorSpec([num_steps + 1], self._loss_dtype)}
                if self.metric_fn is not None:
                    signature["metric"] = tf.TensorSpec([num_steps + 1], tf.float32)
                return self._map_tasks(task_fn, batch, signature)

            self._eval_fns[num_steps] = tf.function(evaluate, reduce_retracing=True)
        return self._eval_fns[num_steps](
            _check_batch(batch, "evaluate_batch", self._example_shape))
