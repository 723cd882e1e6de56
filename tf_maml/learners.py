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
from tf_maml import keras_internals, losses, mamlpp
from tf_maml.config import ALGORITHMS
from tf_maml.mapping import Batch, ExecutionPlan, Runner, check_batch
from tf_maml.mapping.base import model_example_shape, model_runner

# TF1's AdamOptimizer default, which the original trained with. Keras 3's Adam applies ε the
# same way (θ -= lr_t·m / (√v + ε)), so with this ε the meta-update is the original's.
ORIGINAL_ADAM_EPSILON = 1e-8


def _read(variables) -> list[tf.Tensor]:
    """The current values of ``variables`` as tensors (what an outer tape watches)."""
    return [tf.identity(v.value if hasattr(v, "value") else v) for v in variables]


def _clamp(step, last: int):
    """``min(step, last)`` for a Python step or a step tensor (the export's while loop):
    steps beyond those meta-trained reuse the last step's learned values."""
    return min(step, last) if isinstance(step, int) else tf.minimum(step, last)


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
      meta_grad_clip: clip every element of the network's meta-gradients (θ, per-step
        batch norm; not the learned rates) to ±value (the original did for MiniImageNet,
        with 10; MAML++ too).
      learn_inner_lr: Meta-SGD (Li et al. 2017): one learnable α per parameter element,
        initialised to ``inner_lr`` and meta-trained with θ.
      plan: how the tasks of a meta-batch are run, a :class:`tf_maml.mapping.ExecutionPlan`
        (speed and memory only; default: chosen automatically for the model and the CPU).

    MAML++ (Antoniou et al., ICLR 2019), each trick its own option, all off by default
    (docs/mamlpp.md); "iteration" is the meta-optimiser's step count
    (``optimizer.iterations``, saved in checkpoints):

      lslr: learned per-layer per-step inner learning rates: one α per trainable variable
        and inner step, initialised to ``inner_lr`` (Meta-SGD's rates, given a step axis;
        with ``learn_inner_lr`` too, one per element and step).
      per_step_bn: batch norm's β (and γ) per inner step: step s of the inner loop and the
        query pass after it use their own values, meta-learned; step 0's are the model's
        own variables. Needs ``keras.layers.BatchNormalization`` layers, not adapted.
      msl_iterations: multi-step loss: for the first this many iterations the
        meta-objective is a weighted sum of the query losses after every inner step
        (:func:`tf_maml.mamlpp.msl_step_weights`), then the last step's alone.
      first_order_iterations: derivative-order annealing: first-order meta-gradients for
        the first this many iterations, second order after (two compiled steps).
      cosine_annealing_iterations: the meta learning rate follows a cosine from
        ``meta_lr`` to ``min_meta_lr`` over this many iterations
        (:func:`tf_maml.mamlpp.cosine_meta_lr`); 0: constant.
      min_meta_lr: the cosine's minimum (MAML++: 1e-5).

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
        lslr: bool = False,
        per_step_bn: bool = False,
        msl_iterations: int = 0,
        first_order_iterations: int = 0,
        cosine_annealing_iterations: int = 0,
        min_meta_lr: float = 1e-5,
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
        _check_mamlpp(algorithm, first_order, inner_steps, lslr, per_step_bn, msl_iterations,
                      first_order_iterations, cosine_annealing_iterations, meta_optimizer)
        self.model = model
        self.loss_fn = losses.task_loss(loss_fn)  # a Keras loss name: its mean
        self._loss_checked = False  # see _check_loss
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
        self.lslr = bool(lslr)
        self.msl_iterations = int(msl_iterations)
        self.first_order_iterations = int(first_order_iterations)
        # Learned inner rates, one variable per trainable variable: Meta-SGD's have its
        # shape, LSLR's a leading step axis ([inner_steps] scalars, or both).
        self.inner_lrs: list[keras.Variable] = []
        if learn_inner_lr or self.lslr:
            steps = [self.inner_steps] if self.lslr else []
            self.inner_lrs = [
                keras.Variable(tf.fill(steps + (list(v.shape) if learn_inner_lr else []),
                                       tf.constant(self.inner_lr, v.dtype)),
                               dtype=v.dtype, trainable=True, name=f"inner_lr_{i}")
                for i, v in enumerate(model.trainable_variables)
            ]
        # Per-step batch norm: for each batch-norm variable (index in trainable_variables),
        # its values for inner steps 1..S-1 (step 0 is the variable itself).
        self.bn_indices: list[int] = []
        self.bn_steps: list[keras.Variable] = []
        if per_step_bn:
            self.bn_indices = _batch_norm_indices(model, self.mask)
            self.bn_steps = [
                keras.Variable(tf.repeat(model.trainable_variables[i].value[None],
                                         self.inner_steps - 1, axis=0),
                               dtype=model.trainable_variables[i].dtype, trainable=True,
                               name=f"bn_step_{i}")
                for i in self.bn_indices
            ] if self.inner_steps > 1 else []
        # tf.distribute: a learner built under strategy.scope() (its model too) splits each
        # meta-batch over the strategy's replicas (tf_maml/distribute.py); None: one device.
        self.strategy = distribute_lib.current_strategy()
        schedule = (mamlpp.cosine_meta_lr(meta_lr, min_meta_lr, cosine_annealing_iterations)
                    if cosine_annealing_iterations else meta_lr)
        self.optimizer = meta_optimizer or keras.optimizers.Adam(
            schedule, epsilon=ORIGINAL_ADAM_EPSILON)
        if self.strategy is not None:
            self._check_distributed(model)
        self.optimizer.build(self.meta_variables)
        # Non-finite guard: a step whose loss or meta-gradient is NaN/Inf is not applied;
        # the first such iteration is remembered so the training loop can stop and say so.
        self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._train_fns: dict = {}
        self._eval_fns: dict = {}

    def checked_batch(self, batch, where: str) -> tuple[tf.Tensor, ...]:
        """``batch`` as :func:`~tf_maml.mapping.check_batch` returns it for this model, and
        the loss checked on its first task (:meth:`_check_loss`); a ValueError naming what
        is wrong, raised before anything is traced or applied."""
        batch = check_batch(batch, where, self._example_shape)
        self._check_loss(batch[0][0], batch[1][0])
        return batch

    def _check_loss(self, support_x, support_y, weights=None) -> None:
        """The first time: the loss's value on one task, computed eagerly (one forward
        pass), must be a scalar (:func:`tf_maml.losses.check_scalar`). Checked here rather
        than while tracing, where the one-line error would come wrapped in a traceback."""
        if not self._loss_checked:
            losses.check_scalar(self.loss_fn, support_y, self.predict(support_x, weights))
            self._loss_checked = True

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
        """Everything the meta-optimiser updates: θ, then the learned inner rates
        (Meta-SGD, LSLR) and per-step batch-norm values, if any."""
        return list(self.model.trainable_variables) + list(self.inner_lrs) + list(self.bn_steps)

    @property
    def extra_variables(self) -> dict[str, list]:
        """The meta-learned variables beyond the model's, by checkpoint name (only those
        that exist): ``inner_lrs`` (Meta-SGD, LSLR) and ``bn_steps`` (per-step BN)."""
        parts = {"inner_lrs": list(self.inner_lrs), "bn_steps": list(self.bn_steps)}
        return {name: variables for name, variables in parts.items() if variables}

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

    def step_lr(self, lrs):
        """α as :func:`tf_maml.adapt.adapt` takes it, from the learned rates' values
        ``lrs``: ``inner_lr`` (none learned), one tensor per variable (Meta-SGD), or with
        LSLR a function of the inner step (a step beyond those meta-trained reuses the
        last step's rates)."""
        if not lrs:
            return self.inner_lr
        if not self.lslr:
            return list(lrs)
        last = self.inner_steps - 1
        return lambda step: [r[_clamp(step, last)] for r in lrs]

    def step_params(self, theta, bn_steps, runner: Runner | None = None):
        """Per-step batch norm's ``step_params(weights, step)`` for
        :func:`tf_maml.adapt.adapt` (None without it): the batch-norm entries of
        ``weights`` become step ``step``'s values (θ's own for step 0, ``bn_steps`` after;
        a step beyond those meta-trained reuses the last), laid out by ``runner``."""
        if not self.bn_indices or not bn_steps:
            return None
        stacks = [tf.concat([theta[i][None], values], 0)
                  for i, values in zip(self.bn_indices, bn_steps)]
        layout = list if runner is None else runner.weights
        last = self.inner_steps - 1

        def params_at(weights, step):
            k = _clamp(step, last)
            if isinstance(k, int) and k == 0:
                return list(weights)  # θ's own values, already in place
            weights = list(weights)
            for i, stack in zip(self.bn_indices, stacks):
                weights[i] = layout([stack[k]])[0]
            return weights

        return params_at

    def _phase(self, pretrain: bool = False) -> tuple[bool, bool]:
        """(first order, multi-step loss) for the next meta-step: derivative-order
        annealing and MSL switch at an iteration, so the step to run is chosen here (one
        compiled function per phase) from the meta-optimiser's step count."""
        if pretrain or self.algorithm != "maml" or not (self.first_order_iterations
                                                         or self.msl_iterations):
            return self.first_order, False
        iteration = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
        return (self.first_order or iteration < self.first_order_iterations,
                iteration < self.msl_iterations)

    def msl_weights(self, iteration=None) -> tf.Tensor:
        """MSL's weights of the query loss after each inner step at ``iteration``
        (default: the meta-optimiser's step count), see
        :func:`tf_maml.mamlpp.msl_step_weights`."""
        iteration = self.optimizer.iterations if iteration is None else iteration
        return mamlpp.msl_step_weights(iteration, self.inner_steps,
                                       max(self.msl_iterations, 1), self._loss_dtype)

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
        self._check_loss(support_x, support_y, weights)
        fast, _, _ = self._inner_loop(model_runner(self.model), weights, support_x, support_y,
                                      _read(self.inner_lrs), steps,
                                      bn_steps=_read(self.bn_steps))
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
                    first_order: bool = False, mask=None, return_all: bool = False,
                    bn_steps=()):
        """:func:`tf_maml.adapt.adapt` from θ on what ``runner`` runs (one task, or a stack of
        tasks); α is the learned ``inner_lrs`` if any (:meth:`step_lr`), else ``inner_lr``;
        ``bn_steps``: per-step batch norm's values (:meth:`step_params`)."""
        return adapt_lib.adapt(
            self.model, runner.weights(theta), support_x, support_y,
            runner.per_task(self.loss_fn), self.step_lr(inner_lrs), num_steps,
            first_order=first_order, mask=self.mask if mask is None else mask,
            return_all=return_all, forward_fn=runner.forward,
            step_params=self.step_params(theta, bn_steps, runner), split=self._split(runner),
        )

    def _split(self, runner: Runner):
        """The runner's cut before the head, unless the plan turns it off."""
        return runner.split if self.plan.cache_body_features else None

    def _predictor(self, runner: Runner, theta, bn_steps, x):
        """``predict(w)``: the predictions for ``x`` of weights ``w`` of an inner-loop
        trajectory from θ; ANIL's features of ``x`` computed once, from θ
        (:func:`tf_maml.adapt.trajectory_forward`)."""
        forward_fn, inputs = adapt_lib.trajectory_forward(
            runner.forward, x, lambda: runner.weights(theta), self._split(runner), self.mask,
            self.step_params(theta, bn_steps, runner))
        return lambda weights: forward_fn(weights, inputs)

    def task_objective(self, task, theta, inner_lrs=(), pretrain: bool = False,
                       runner: Runner | None = None, bn_steps=(), msl_weights=None,
                       first_order: bool | None = None) -> dict[str, tf.Tensor]:
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

        ``bn_steps``: per-step batch norm's values. ``msl_weights`` (MSL, MAML++): also
        ``msl_loss`` = Σ_s w_s L(f_θ_s; query) over the fast weights after steps 1..S.
        ``first_order``: overrides the learner's (derivative-order annealing).
        """
        runner = model_runner(self.model) if runner is None else runner
        first_order = self.first_order if first_order is None else first_order
        support_x, support_y, query_x, query_y = task
        trajectory, pre_loss, pre_preds = self._inner_loop(
            runner, theta, support_x, support_y, inner_lrs, 0 if pretrain else self.inner_steps,
            first_order=first_order, return_all=True, bn_steps=bn_steps)
        predict = self._predictor(runner, theta, bn_steps, query_x)
        query_preds = predict(trajectory[-1])
        loss_fn = runner.per_task(self.loss_fn)
        out = {"pre_loss": pre_loss, "post_loss": loss_fn(query_y, query_preds)}
        if msl_weights is not None and not pretrain:
            losses = [loss_fn(query_y, predict(w)) for w in trajectory[1:-1]]
            losses.append(out["post_loss"])
            out["msl_loss"] = tf.add_n([msl_weights[s] * loss for s, loss in enumerate(losses)])
        if self.metric_fn is not None:
            metric_fn = runner.per_task(self.metric_fn)
            out["pre_metric"] = metric_fn(support_y, pre_preds)
            out["post_metric"] = metric_fn(query_y, query_preds)
        return out

    @property
    def _loss_dtype(self):
        return tf.as_dtype(self.model.trainable_variables[0].dtype)

    def _signature(self, msl: bool = False):
        names = ("pre_loss", "post_loss") + (("msl_loss",) if msl else ())
        spec = {k: tf.TensorSpec([], self._loss_dtype) for k in names}
        if self.metric_fn is not None:
            spec.update({k: tf.TensorSpec([], tf.float32) for k in ("pre_metric", "post_metric")})
        return spec

    # ------------------------------------------------------------------ meta-batches
    def meta_gradients(self, batch: Batch, pretrain: bool = False,
                       first_order: bool | None = None, msl_weights=None,
                       plan: ExecutionPlan | None = None):
        """Meta-gradients for ``meta_variables`` and the mean per-task metrics.

        MAML: ∇θ mean_i L(θ'_i; query_i); pretrain: ∇θ mean_i L(θ; support_i) (the
        original's pretrained baseline minimises the pre-update loss). The plan's mapping
        runs :meth:`task_objective` over the tasks (``plan``, default the learner's).
        ``first_order`` overrides the learner's; with ``msl_weights`` ([inner_steps]: e.g.
        :meth:`msl_weights`) the objective is MAML++'s multi-step loss, Σ_s w_s L(θ'_s; query)
        after every step s.
        """
        mapping = (self.plan if plan is None else plan).for_gradients(self.model, batch)
        msl = msl_weights is not None and not pretrain
        if msl:
            msl_weights = tf.cast(msl_weights, self._loss_dtype)
            if msl_weights.shape != [self.inner_steps]:
                raise ValueError(f"msl_weights needs one weight per inner step "
                                 f"({self.inner_steps}), got shape {msl_weights.shape}")
        signature = self._signature(msl)

        def gradients(tasks, tasks_mapping):
            """The mean meta-gradient and metrics of ``tasks`` under one outer tape."""
            # Read θ (and α) here: inside an accumulating while loop, the loop body's own
            # tensors are the ones its tape must watch.
            params, lrs = _read(self.model.trainable_variables), _read(self.inner_lrs)
            bns = _read(self.bn_steps)
            watched = params + lrs + bns
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(watched)
                per_task = tasks_mapping.map(
                    lambda task, runner: self.task_objective(
                        task, params, lrs, pretrain, runner, bn_steps=bns,
                        msl_weights=msl_weights if msl else None, first_order=first_order),
                    tasks, signature)
                metrics = {k: tf.reduce_mean(v) for k, v in per_task.items()}
                objective = metrics["pre_loss" if pretrain else
                                    "msl_loss" if msl else "post_loss"]
            grads = tape.gradient(objective, watched,
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
        grads += [tf.zeros_like(v) for v in self.inner_lrs + self.bn_steps]
        metrics = {"pre_loss": tf.reduce_mean(out["pre_loss"]),
                   "post_loss": tf.reduce_mean(out["post_loss"])}
        return grads, metrics

    def apply_gradients(self, grads, loss=None):
        """One meta-optimiser step, skipped (and counted) if the loss or a gradient is not
        finite. Returns whether it was applied."""
        if self.meta_grad_clip is not None:
            # The network's gradients only (θ, per-step batch norm): MAML++'s meta_update
            # clamps `classifier.named_parameters()`, not its inner-loop optimiser's rates.
            c = float(self.meta_grad_clip)
            rates = {id(v) for v in self.inner_lrs}
            grads = [g if id(v) in rates else tf.clip_by_value(g, -c, c)
                     for g, v in zip(grads, self.meta_variables)]
        return apply_if_finite(self.optimizer, grads, self.meta_variables, loss,
                               on_skip=lambda: self.nonfinite_steps.assign_add(1))

    # ------------------------------------------------------------------ compiled steps
    def train_step(self, batch: Batch, pretrain: bool = False) -> dict:
        """One compiled meta-training step on a batch of tasks; returns mean metrics and
        ``applied`` (False when the step was skipped for a non-finite value).

        Under a tf.distribute strategy (see :mod:`tf_maml.distribute`) ``batch`` is the
        global meta-batch, split evenly over the replicas, or per-replica values from
        :func:`tf_maml.distribute.task_batches`; gradients and metrics are all-reduced and
        one meta-optimiser step is applied.
        """
        kind = "pretrain" if pretrain else self.algorithm
        first_order, msl = self._phase(pretrain)
        key = (kind, first_order, msl)
        if key not in self._train_fns:
            def gradients(batch):
                if kind == "reptile":
                    return self.reptile_gradients(batch)
                # MSL's weights follow the iteration inside the compiled step: no retracing.
                return self.meta_gradients(batch, pretrain=(kind == "pretrain"),
                                           first_order=first_order,
                                           msl_weights=self.msl_weights() if msl else None)

            def apply(grads, metrics):
                loss = metrics["pre_loss"] if kind == "pretrain" else metrics["post_loss"]
                return dict(metrics, applied=self.apply_gradients(grads, loss))

            if self.strategy is None:
                def step(batch):
                    return apply(*gradients(batch))
            else:
                step = distribute_lib.replicated_step(self.strategy, gradients, apply)
            self._train_fns[key] = tf.function(step, reduce_retracing=True)
        if self.strategy is None:
            return self._train_fns[key](self.checked_batch(batch, "train_step"))
        if not distribute_lib.is_distributed(batch):
            batch = distribute_lib.split_batch(self.strategy,
                                               self.checked_batch(batch, "train_step"))
        return self._train_fns[key](batch)

    meta_train_step = train_step  # the name used in the paper's vocabulary

    def evaluate_batch(self, batch: Batch, num_steps: int, predictions: bool = False) -> dict:
        """Per task and step (0..num_steps) query loss (and metric), shape [T, num_steps+1];
        with ``predictions``, also the model's query outputs ``[T, num_steps+1, *y]`` (for
        an ensemble, which averages them over models).

        Step 0 is the meta-learned θ itself, evaluated on the query set.
        """
        num_steps = int(num_steps)
        key = (num_steps, bool(predictions))
        if key not in self._eval_fns:
            # The step axis goes just before the query examples' axis, whether the mapping
            # hands task_fn one task (outputs [Nq, ...]) or a stack of them ([T, Nq, ...]).
            batch_rank = len(batch[2].shape)

            def evaluate(batch):
                params, lrs = _read(self.model.trainable_variables), _read(self.inner_lrs)
                bns = _read(self.bn_steps)

                def task_fn(task, runner):
                    support_x, support_y, query_x, query_y = task
                    trajectory, _, _ = self._inner_loop(runner, params, support_x, support_y,
                                                        lrs, num_steps, return_all=True,
                                                        bn_steps=bns)
                    predict = self._predictor(runner, params, bns, query_x)
                    preds = [predict(w) for w in trajectory]
                    loss_fn = runner.per_task(self.loss_fn)
                    out = {"loss": tf.stack([loss_fn(query_y, p) for p in preds], axis=-1)}
                    if self.metric_fn is not None:
                        metric_fn = runner.per_task(self.metric_fn)
                        out["metric"] = tf.stack([metric_fn(query_y, p) for p in preds],
                                                 axis=-1)
                    if predictions:
                        stacked = len(query_x.shape) == batch_rank
                        out["predictions"] = tf.stack(preds, axis=1 if stacked else 0)
                    return out

                signature = {"loss": tf.TensorSpec([num_steps + 1], self._loss_dtype)}
                if self.metric_fn is not None:
                    signature["metric"] = tf.TensorSpec([num_steps + 1], tf.float32)
                if predictions:
                    signature["predictions"] = tf.TensorSpec(None, self._loss_dtype)
                return self.plan.for_tasks(self.model, batch).map(task_fn, batch, signature)

            self._eval_fns[key] = tf.function(evaluate, reduce_retracing=True)
        return self._eval_fns[key](self.checked_batch(batch, "evaluate_batch"))


def apply_if_finite(optimizer, grads, variables, loss=None, on_skip=None) -> tf.Tensor:
    """``optimizer.apply(grads, variables)`` unless the loss or a gradient is NaN/Inf (then
    ``on_skip()``, if given). Returns whether the step was applied. The one non-finite
    guard of every optimiser step: the meta-step's and the baselines' pretraining's."""
    checks = [tf.reduce_all(tf.math.is_finite(g)) for g in grads]
    if loss is not None:
        checks.append(tf.math.is_finite(loss))

    def apply():
        optimizer.apply(grads, variables)
        return tf.constant(True)

    def skip():
        if on_skip is not None:
            on_skip()
        return tf.constant(False)

    return tf.cond(tf.reduce_all(checks), apply, skip)


def _batch_norm_indices(model: keras.Model, mask: Sequence[bool]) -> list[int]:
    """Indices in ``model.trainable_variables`` of every ``keras.layers.BatchNormalization``
    variable (β, and γ if the layer scales), for per-step batch norm; a ValueError if there
    are none or the inner loop adapts them (a per-step value would overwrite the step)."""
    ids = {id(v) for layer in keras_internals.layers_of(model)
           if isinstance(layer, keras.layers.BatchNormalization)
           for v in layer.trainable_variables}
    indices = [i for i, v in enumerate(model.trainable_variables) if id(v) in ids]
    if not indices:
        raise ValueError(f"per_step_bn needs a model with trainable "
                         f"keras.layers.BatchNormalization layers; {model.name} has none "
                         "(`norm=batch_norm`)")
    if any(mask[i] for i in indices):
        raise ValueError("per_step_bn gives batch norm its own values at each inner step, "
                         "so the inner loop cannot also adapt them: drop `adapt_norm`")
    return indices


def _check_mamlpp(algorithm, first_order, inner_steps, lslr, per_step_bn, msl_iterations,
                  first_order_iterations, cosine_annealing_iterations, meta_optimizer) -> None:
    """A ValueError naming a MAML++ option that cannot be used as asked."""
    for name, value in (("msl_iterations", msl_iterations),
                        ("first_order_iterations", first_order_iterations),
                        ("cosine_annealing_iterations", cosine_annealing_iterations)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0 (0: off), got {value}")
    per_step = [name for name, on in (("lslr", lslr), ("per_step_bn", per_step_bn),
                                      ("msl_iterations", msl_iterations),
                                      ("first_order_iterations", first_order_iterations))
                if on]
    if per_step and algorithm != "maml":
        raise ValueError(f"`{per_step[0]}` is a MAML++ option of the meta-gradient; "
                         f"algorithm={algorithm!r} has none")
    if per_step and inner_steps < 1:
        raise ValueError(f"`{per_step[0]}` needs `inner_steps` >= 1, got {inner_steps}")
    if first_order_iterations and first_order:
        raise ValueError("`first_order_iterations` anneals from first to second order; with "
                         "`first_order=True` every step is first order: drop one of them")
    if cosine_annealing_iterations and meta_optimizer is not None:
        raise ValueError("`cosine_annealing_iterations` sets the default Adam's learning "
                         "rate; with your own meta_optimizer give it a "
                         "keras.optimizers.schedules.CosineDecay instead")
