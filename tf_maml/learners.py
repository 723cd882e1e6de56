"""MetaLearner: MAML (Finn, Abbeel & Levine, ICML 2017), first-order MAML, Reptile and the
pretrained (multi-task) baseline, for any built Keras model, over :func:`tf_maml.adapt.adapt`.

Each computation is written once, for one task: the meta-objective
(:meth:`MetaLearner.task_objective`), Reptile's fast weights and evaluation's per-step
losses. How the tasks of a meta-batch are run (one by one, vectorised, all at once through
batched kernels, chunk by chunk) is the business of :mod:`tf_maml.mapping`, chosen by the
learner's :class:`~tf_maml.mapping.ExecutionPlan`: it changes speed and memory, never a
number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import distribute as distribute_lib
from tf_maml.config import ALGORITHMS
from tf_maml.mapping import Batch, ExecutionPlan, Runner, check_batch
from tf_maml.mapping.base import model_example_shape, model_runner

# TF1's AdamOptimizer default, which the original trained with. Keras 3's Adam applies ε the
# same way (θ -= lr_t·m / (√v + ε)), so with this ε the meta-update is the original's.
ORIGINAL_ADAM_EPSILON = 1e-8


def _read(variables) -> list[tf.Tensor]:
    """The current values of ``variables`` as tensors (what an outer tape watches)."""
    return [tf.identity(v.value if hasattr(v, "value") else v) for v in variables]


class MetaLearner:
    """Meta-learns the initialisation θ of a built Keras model (Finn et al. 2017).

    MAML finds θ from which a few SGD steps on a new task's K examples (its support set)
    give a model that does well on that task's other examples (its query set). For every
    task i of a meta-batch the inner loop adapts θ (eq. 1, :func:`tf_maml.adapt.adapt`),

        θ'_i = θ − α ∇θ L_i(f_θ)            (repeated ``inner_steps`` times),

    and the meta-update moves θ to lower the query losses after adaptation (eq. 2),

        θ ← θ − β ∇θ Σ_i L_i(f_θ'_i),

    differentiating through the inner steps (second order; ``first_order=True`` stops the
    gradient there, the original's ``--stop_grad``). β is the meta-optimiser's (Adam's)
    learning rate. ``algorithm="reptile"`` (Nichol et al. 2018) uses θ − mean_i θ'_i instead.

    Args:
      model: any built Keras model (Sequential, functional, subclassed). Its code is not
        changed: tasks run through it with substituted (fast) weights.
      loss_fn: ``loss_fn(y_true, y_pred) -> scalar`` for ONE task, the inner loop's and the
        meta-objective's L (e.g. :func:`tf_maml.losses.summed_xent`).
      inner_lr: α, the inner SGD step size.
      inner_steps: inner steps during meta-training (the original's ``num_updates``).
      first_order: first-order MAML: no gradient through the inner gradient.
      algorithm: ``"maml"`` or ``"reptile"``.
      meta_lr: β, the learning rate of the default meta-optimiser.
      meta_optimizer: defaults to ``keras.optimizers.Adam(meta_lr, epsilon=1e-8)``: the
        original's ``tf.train.AdamOptimizer`` (same update, ε = 1e-8; Keras' is 1e-7).
      metric_fn: optional per-task metric (e.g. accuracy) reported beside the loss.
      adapt_norm: also adapt normalisation offsets/scales in the inner loop (the original
        did not: they are meta-trained only).
      adapt_layers: ``"all"`` (MAML) or ``"head"``: ANIL (Raghu et al. 2020), where only the
        last layer with weights adapts in the inner loop and the body learns in the outer
        loop alone.
      meta_grad_clip: clip every meta-gradient element to ±value (the original did for
        MiniImageNet, with 10).
      learn_inner_lr: Meta-SGD (Li et al. 2017): one learnable α per parameter element,
        initialised to ``inner_lr`` and meta-trained with θ.
      plan: how the tasks of a meta-batch are run, a :class:`tf_maml.mapping.ExecutionPlan`
        (speed and memory only; default: chosen automatically for the model and the CPU).

    Example (sinusoid regression, the paper's §5.1)::

        import keras, numpy as np, tf_maml
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(40, activation="relu"),
                                  keras.layers.Dense(40, activation="relu"),
                                  keras.layers.Dense(1)])
        learner = tf_maml.MetaLearner(model, tf_maml.losses.mse, inner_lr=0.01)
        tasks = tf_maml.SinusoidTasks(num_support=10, num_query=10)
        learner.fit(tasks, iterations=2000, meta_batch_size=25)
        sx, sy, qx, qy = tasks.sample_batch(1, np.random.default_rng(0))
        fast = learner.adapt(sx[0], sy[0], num_steps=5)      # θ' for a new task
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
        adapt_layers: str = "all",
        meta_grad_clip: float | None = None,
        learn_inner_lr: bool = False,
        plan: ExecutionPlan | None = None,
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
        self.mask = adapt_lib.adapted_mask(model, adapt_norm, adapt_layers)
        self.plan = ExecutionPlan() if plan is None else plan
        self.plan.check(model)
        self._example_shape = model_example_shape(model)
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

    def use_plan(self, plan: ExecutionPlan) -> None:
        """Runs the tasks by ``plan`` from now on (e.g. the one autotuning chose): the
        compiled steps are traced again."""
        plan.check(self.model)
        self.plan = plan
        self._train_fns.clear()
        self._eval_fns.clear()

    def task_mapping(self, batch: Batch) -> str:
        """How ``meta_gradients`` maps the tasks of a batch of these shapes, in words
        (e.g. ``"batched"``, ``"accumulate (8 tasks/chunk, batched)"``, ``"map"``)."""
        return self.plan.describe(self.model, batch)

    def _lr(self, lrs):
        return lrs if lrs else self.inner_lr

    # ------------------------------------------------------------------ adaptation
    def adapt(self, support_x, support_y, num_steps: int | None = None, weights=None):
        """Fast weights for one task: ``num_steps`` (default ``inner_steps``) SGD steps on
        its support set from θ (or from ``weights``). Returns a list of tensors matching
        ``model.trainable_variables``."""
        steps = self.inner_steps if num_steps is None else int(num_steps)
        weights = _read(self.model.trainable_variables) if weights is None else weights
        support_x, support_y = tf.convert_to_tensor(support_x), tf.convert_to_tensor(support_y)
        num_x, num_y = (t.shape[0] if t.shape.rank else None for t in (support_x, support_y))
        if num_x is not None and num_y is not None and num_x != num_y:
            raise ValueError(f"adapt: support_y has {num_y} targets but support_x has {num_x} "
                             "examples; every example needs one")
        fast, _, _ = self._inner_loop(model_runner(self.model), weights, support_x, support_y,
                                      _read(self.inner_lrs), steps)
        return fast

    def predict(self, x, fast_weights=None, training: bool = True):
        """Predictions with ``fast_weights`` (default: the meta-learned θ)."""
        weights = fast_weights
        if weights is None:
            weights = _read(self.model.trainable_variables)
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
        progress is printed every ``log_interval`` iterations (None: silent). With a task
        source, the plan's "auto" and 1000 iterations or more to go, the plan's candidates
        are timed first and the fastest kept (:mod:`tf_maml.autotune`; cached in
        ``run_dir``; ``ExecutionPlan(autotune=False)`` keeps the rules' plan).
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

    # ------------------------------------------------------------------ per task
    def _inner_loop(self, runner: Runner, theta, support_x, support_y, inner_lrs, num_steps,
                    first_order: bool = False, mask=None, return_all: bool = False):
        """:func:`tf_maml.adapt.adapt` from θ on what ``runner`` runs (one task, or a stack of
        tasks); α is Meta-SGD's ``inner_lrs`` if any, else ``inner_lr``."""
        return adapt_lib.adapt(
            self.model, runner.weights(theta), support_x, support_y,
            runner.per_task(self.loss_fn), self._lr(inner_lrs), num_steps,
            first_order=first_order, mask=self.mask if mask is None else mask,
            return_all=return_all, forward_fn=runner.forward,
        )

    def task_objective(self, task, theta, inner_lrs=(), pretrain: bool = False,
                       runner: Runner | None = None) -> dict[str, tf.Tensor]:
        """The meta-objective of ONE task: its query loss after adaptation.

        ``task`` is ``(support_x, support_y, query_x, query_y)``; ``theta`` the weights to
        adapt from (tensors matching ``model.trainable_variables``), ``inner_lrs``
        Meta-SGD's α tensors (empty: ``inner_lr``). Returns ``post_loss`` =
        L(f_θ'; query) with θ' after ``inner_steps`` steps (Finn et al. 2017, eq. 2's
        summand), ``pre_loss`` = L(f_θ; support) and, with a ``metric_fn``, ``pre_metric``
        and ``post_metric``. ``pretrain=True``: no inner step (the original's pretrained
        baseline minimises ``pre_loss``). ``runner``: how a task mapping runs the task
        (default: through the model, one task); with a stacked runner every value is one
        per task.
        """
        runner = model_runner(self.model) if runner is None else runner
        support_x, support_y, query_x, query_y = task
        fast, pre_loss, pre_preds = self._inner_loop(
            runner, theta, support_x, support_y, inner_lrs, 0 if pretrain else self.inner_steps,
            first_order=self.first_order)
        query_preds = runner.forward(fast, query_x)
        out = {"pre_loss": pre_loss,
               "post_loss": runner.per_task(self.loss_fn)(query_y, query_preds)}
        if self.metric_fn is not None:
            metric_fn = runner.per_task(self.metric_fn)
            out["pre_metric"] = metric_fn(support_y, pre_preds)
            out["post_metric"] = metric_fn(query_y, query_preds)
        return out

    @property
    def _loss_dtype(self):
        return tf.as_dtype(self.model.trainable_variables[0].dtype)

    def _signature(self):
        spec = {k: tf.TensorSpec([], self._loss_dtype) for k in ("pre_loss", "post_loss")}
        if self.metric_fn is not None:
            spec.update({k: tf.TensorSpec([], tf.float32) for k in ("pre_metric", "post_metric")})
        return spec

    # ------------------------------------------------------------------ meta-batches
    def meta_gradients(self, batch: Batch, pretrain: bool = False,
                       plan: ExecutionPlan | None = None):
        """Meta-gradients for ``meta_variables`` and the mean per-task metrics.

        MAML: ∇θ mean_i L(θ'_i; query_i); pretrain: ∇θ mean_i L(θ; support_i) (the
        original's pretrained baseline minimises the pre-update loss). The plan's mapping
        (``plan``, default the learner's) runs :meth:`task_objective` over the tasks.
        """
        mapping = (self.plan if plan is None else plan).for_gradients(self.model, batch)
        signature = self._signature()

        def gradients(tasks, tasks_mapping):
            """The mean meta-gradient and metrics of ``tasks`` under one outer tape."""
            # Read θ (and α) here: inside an accumulating while loop, the loop body's own
            # tensors are the ones its tape must watch.
            params, lrs = _read(self.model.trainable_variables), _read(self.inner_lrs)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(params + lrs)
                per_task = tasks_mapping.map(
                    lambda task, runner: self.task_objective(task, params, lrs, pretrain,
                                                             runner),
                    tasks, signature)
                metrics = {k: tf.reduce_mean(v) for k, v in per_task.items()}
                objective = metrics["pre_loss"] if pretrain else metrics["post_loss"]
            grads = tape.gradient(objective, params + lrs,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads, metrics

        return mapping.mean_gradients(gradients, batch, self.meta_variables, signature)

    def reptile_gradients(self, batch: Batch):
        """Reptile (Nichol et al. 2018): θ − mean_i θ'_i, with θ'_i after ``inner_steps``
        SGD steps (step α = ``inner_lr``, every weight adapted) on task i's support set;
        handed to the meta-optimiser as a gradient."""
        params = _read(self.model.trainable_variables)
        everything = [True] * len(params)

        def task_fn(task, runner):
            support_x, support_y, query_x, query_y = task
            fast, pre_loss, _ = self._inner_loop(runner, params, support_x, support_y, (),
                                                 self.inner_steps, first_order=True,
                                                 mask=everything)
            post_loss = runner.per_task(self.loss_fn)(query_y, runner.forward(fast, query_x))
            return {"fast": fast, "pre_loss": pre_loss, "post_loss": post_loss}

        signature = {
            "fast": [tf.TensorSpec(p.shape, p.dtype) for p in params],
            "pre_loss": tf.TensorSpec([], self._loss_dtype),
            "post_loss": tf.TensorSpec([], self._loss_dtype),
        }
        out = self.plan.for_tasks(self.model, batch).map(task_fn, batch, signature)
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
            return self._train_fns[key](check_batch(batch, "train_step", self._example_shape))
        if not distribute_lib.is_distributed(batch):
            batch = distribute_lib.split_batch(
                self.strategy, check_batch(batch, "train_step", self._example_shape))
        return self._train_fns[key](batch)

    meta_train_step = train_step  # the name used in the paper's vocabulary

    def evaluate_batch(self, batch: Batch, num_steps: int) -> dict:
        """Per task and step (0..num_steps) query loss (and metric), shape [T, num_steps+1].

        Step 0 is the meta-learned θ itself, evaluated on the query set.
        """
        num_steps = int(num_steps)
        if num_steps not in self._eval_fns:
            def evaluate(batch):
                params, lrs = _read(self.model.trainable_variables), _read(self.inner_lrs)

                def task_fn(task, runner):
                    support_x, support_y, query_x, query_y = task
                    trajectory, _, _ = self._inner_loop(runner, params, support_x, support_y,
                                                        lrs, num_steps, return_all=True)
                    preds = [runner.forward(w, query_x) for w in trajectory]
                    loss_fn = runner.per_task(self.loss_fn)
                    out = {"loss": tf.stack([loss_fn(query_y, p) for p in preds], axis=-1)}
                    if self.metric_fn is not None:
                        metric_fn = runner.per_task(self.metric_fn)
                        out["metric"] = tf.stack([metric_fn(query_y, p) for p in preds],
                                                 axis=-1)
                    return out

                signature = {"loss": tf.TensorSpec([num_steps + 1], self._loss_dtype)}
                if self.metric_fn is not None:
                    signature["metric"] = tf.TensorSpec([num_steps + 1], tf.float32)
                return self.plan.for_tasks(self.model, batch).map(task_fn, batch, signature)

            self._eval_fns[num_steps] = tf.function(evaluate, reduce_retracing=True)
        return self._eval_fns[num_steps](
            check_batch(batch, "evaluate_batch", self._example_shape))
