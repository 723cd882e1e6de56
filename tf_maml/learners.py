"""MetaLearner: MAML (Finn, Abbeel & Levine, ICML 2017), first-order MAML, Reptile and the
pretrained (multi-task) baseline, for any built Keras model, over :func:`tf_maml.adapt.adapt`.

Each computation is written once, for one task: the meta-objective
(:meth:`MetaLearner.task_objective`), Reptile's fast weights and evaluation's per-step
losses. How the tasks of a meta-batch run (one by one, vectorised, batched, chunk by chunk)
is :mod:`tf_maml.mapping`'s business, by the learner's :class:`~tf_maml.mapping.ExecutionPlan`:
speed and memory, never a number. The options are :mod:`tf_maml.options`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import distribute as distribute_lib
from tf_maml import keras_internals, losses
from tf_maml.errors import BatchError, check_count, check_switch, is_count
from tf_maml.mapping import Batch, ExecutionPlan, Runner, check_batch
from tf_maml.mapping.base import examples_problem, model_example_shape, model_runner
from tf_maml.meta_update import MetaUpdate, refused_batches
from tf_maml.options import adaptation, annealing, objectives, rates
from tf_maml.options import meta_optimizer as optim
from tf_maml.options.per_step_bn import PerStepBatchNorm


def _step_count(num_steps, where: str) -> int:
    """``num_steps`` as the whole number >= 0 of inner steps it must be (a Python or numpy
    integer, or a scalar integer tensor); a ValueError naming ``where`` for any other value:
    2.5 ran 2 steps, -1 none, "2" and True ran 2 and 1, all without a word."""
    value = num_steps
    if isinstance(value, tf.Tensor) and value.shape.rank == 0 and value.dtype.is_integer:
        value = int(value)
    check_count(f"{where}: num_steps", value, 0, "a whole number of inner steps")
    return int(value)


def _read(variables) -> list[tf.Tensor]:
    """The current values of ``variables`` as tensors (what an outer tape watches)."""
    return [tf.identity(v.value if hasattr(v, "value") else v) for v in variables]


def _given_weights(variables, weights, where: str, name: str) -> list[tf.Tensor]:
    """``weights`` given for ``variables`` (the model's trainable ones: fast weights adapt
    returned, or saved as numpy arrays) as tensors of the variables' dtypes: else numpy
    arrays failed in adapt's tape ("of type 'ndarray', not tf.Tensor"). A ValueError
    naming ``where``'s argument ``name`` unless there is one per variable, of its shape:
    else a count was forward's ("needs 4 ... tensors, got 2"; a dict counted as 1) and
    another model's shapes Keras' StatelessScope error of many lines."""
    if not isinstance(weights, (list, tuple)) or len(weights) != len(variables):
        got = (len(weights) if isinstance(weights, (list, tuple))
               else f"a {type(weights).__name__}")
        raise ValueError(f"{where}: {name} must be the {len(variables)} weights adapt returns "
                         f"(one per model.trainable_variables), got {got}")
    tensors = []
    for i, (variable, weight) in enumerate(zip(variables, weights)):
        if not (tf.is_tensor(weight) and weight.dtype == variable.dtype):
            weight = tf.cast(weight, variable.dtype)
        if tuple(weight.shape) != tuple(variable.shape):
            raise ValueError(f"{where}: {name}[{i}] has shape {tuple(weight.shape)}, but the "
                             f"model's weight {variable.path} has shape "
                             f"{tuple(variable.shape)}: give the weights adapt returned for "
                             "this model")
        tensors.append(weight)
    return tensors


class MetaLearner(MetaUpdate):
    """Meta-learns the initialisation θ of a built Keras model (Finn et al. 2017).

    MAML finds θ from which a few SGD steps on a new task's K examples (its support set)
    give a model that does well on that task's other examples (its query set). For every
    task i of a meta-batch the inner loop adapts θ (eq. 1, :func:`tf_maml.adapt.adapt`),

        θ'_i = θ − α ∇θ L_i(f_θ)            (repeated ``inner_steps`` times),

    and the meta-update moves θ to lower the query losses after adaptation (eq. 2),

        θ ← θ − β ∇θ Σ_i L_i(f_θ'_i),

    differentiating through the inner steps (second order; ``first_order=True`` stops the
    gradient there, the original's ``--stop_grad``). β is the meta-optimiser's. This is the
    core; ``tf_maml.MetaLearner`` (:mod:`tf_maml.api`) adds ``fit`` and ``export`` above it.

    Args:
      model: any built Keras model (Sequential, functional, subclassed). Its code is not
        changed: tasks run through it with substituted (fast) weights. Its weight
        regularizers' penalty R is added as Keras' ``fit`` adds it: to every inner step's
        support loss at the fast weights, R(θ'), and once to the meta-objective, R(θ)
        (:func:`tf_maml.adapt.weight_penalty`); the losses reported are L alone. Its
        dropout-like layers (:data:`tf_maml.adapt.RANDOM_LAYERS`) draw a fresh mask at every
        forward pass of meta-training (each inner step, query pass, task and iteration,
        seeded by ``optimizer.iterations``: reproducible) and none at evaluation, in
        ``adapt``, ``predict`` or an export.
      loss_fn: ``loss_fn(y_true, y_pred) -> scalar`` for ONE task, the inner loop's and the
        meta-objective's L (e.g. :func:`tf_maml.losses.summed_xent`), or a Keras loss name.
      inner_lr: α, a number, or learned: :class:`~tf_maml.options.MetaSGD` (per parameter),
        :class:`~tf_maml.options.LSLR` (MAML++: per layer and inner step), both.
      inner_steps: inner steps during meta-training (the original's ``num_updates``).
      first_order: first-order MAML (no gradient through the inner gradient), or
        :class:`~tf_maml.options.FirstOrderUntil` (MAML++'s derivative-order annealing).
      adapt: which weights the inner loop adapts, ``"all"`` (but normalisation, as the
        original), ``"all+norm"``, ``"head"`` (ANIL, Raghu et al. 2020), or
        :class:`~tf_maml.options.PerStepBatchNorm` (MAML++), see
        :mod:`tf_maml.options.adaptation`.
      objective: :class:`~tf_maml.options.LastStep` (the default),
        :class:`~tf_maml.options.MultiStepLoss` (MAML++) or :class:`~tf_maml.options.Reptile`
        (Nichol et al. 2018), each with an optional ``metric_fn`` (e.g. accuracy) reported
        beside the loss.
      meta_optimizer: a :class:`~tf_maml.options.MetaOptimizer` (``chain(ClipNetwork(10),
        adam(cosine(...)))``) or a Keras optimiser; default: the original's Adam (β = 1e-3,
        ε = 1e-8).

    How tasks run is :attr:`plan` (:meth:`use_plan`): speed only. "Iteration", for MAML++'s
    schedules, is ``optimizer.iterations`` (in checkpoints).

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

    def __init__(self, model: keras.Model, loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
                 inner_lr: float | rates.InnerRate = 0.01, inner_steps: int = 1,
                 first_order: bool | annealing.FirstOrderUntil = False,
                 adapt: str | PerStepBatchNorm = "all",
                 objective: objectives.Objective | None = None,
                 meta_optimizer=None):
        _check_model(model)
        if not is_count(inner_steps):  # else 2.5 runs 2 steps, "3" fails deep in a comparison
            raise ValueError(f"inner_steps must be a whole number >= 0, got {inner_steps!r}")
        too_many = adapt_lib.unrolled_steps_problem(inner_steps)  # training unrolls them
        if too_many:
            raise ValueError(f"inner_steps={inner_steps}: {too_many}")
        self.model = model
        self.loss_fn = losses.task_loss(loss_fn)  # a Keras loss name: its mean
        _check_logits(model, self.loss_fn)
        self._loss_checked = False  # see _check_loss
        self._classes: int | None = None  # a classifier's outputs per example (_check_loss)
        self.rate = rates.inner_rate(inner_lr)
        self.inner_lr, self.lslr = self.rate.value, self.rate.per_step
        self.inner_steps = int(inner_steps)
        self.order = annealing.derivative_order(first_order)
        self.first_order = self.order is True
        self.objective = objectives.objective(objective)
        self.algorithm, self.metric_fn = self.objective.algorithm, self.objective.metric_fn
        adapt, self.per_step_bn = adaptation.check(adapt)
        self.adapted = adapt  # "all", "all+norm" or "head" (with per-step batch norm or not)
        self.mask = adaptation.adapted_mask(model, adapt)
        self._check_options()
        self.plan = ExecutionPlan()
        self.plan.check(model)
        self._example_shape = model_example_shape(model)
        # The meta-learned variables beyond θ, in checkpoint order: the learned inner rates,
        # then per-step batch norm's values for steps 1..S-1 of each batch-norm variable.
        self.inner_lrs: list[keras.Variable] = self.rate.variables(model, self.inner_steps)
        self.bn_indices, self.bn_steps = [], []
        if self.per_step_bn is not None:
            self.bn_indices = self.per_step_bn.batch_norm_indices(model, self.inner_steps)
            self.bn_steps = self.per_step_bn.variables(model, self.bn_indices, self.inner_steps)
        # tf.distribute: a learner built under strategy.scope() (its model too) splits each
        # meta-batch over the strategy's replicas (tf_maml/distribute.py); None: one device.
        self.strategy = distribute_lib.current_strategy()
        self.meta_optimizer = optim.meta_optimizer(meta_optimizer)
        self.optimizer = self.meta_optimizer.optimizer
        if self.strategy is not None:
            self._check_distributed(model)
        self.meta_optimizer.build(self.meta_variables)
        self._train_fns: dict = {}
        self._eval_fns: dict = {}

    def _check_options(self) -> None:
        """Each per-step option checks the inner steps it needs; the objective, which of
        them it can run with (Reptile: none)."""
        anneals = isinstance(self.order, annealing.FirstOrderUntil)
        if anneals:
            self.order.check(self.inner_steps)
        on = ((self.rate.per_step, self.rate), (self.per_step_bn is not None, self.per_step_bn),
              (anneals, self.order))
        self.objective.check(self.inner_steps, [repr(option) for is_on, option in on if is_on])

    def checked_batch(self, batch, where: str) -> tuple[tf.Tensor, ...]:
        """``batch`` as :func:`~tf_maml.mapping.check_batch` returns it for this model, the
        loss checked on its first task and a classifier's ids on all (:meth:`_check_loss`); a
        ValueError naming what is wrong, raised before anything is traced or applied."""
        batch = check_batch(batch, where, self._example_shape)
        self._check_loss(batch[0][0], batch[1][0], where=where,
                         batch_targets={"support_y": batch[1], "query_y": batch[3]})
        return batch

    def _check_loss(self, support_x, support_y, weights=None, batch_targets=None,
                    where: str = "adapt") -> None:
        """The first time: the loss's value on one task, computed eagerly (one forward
        pass), must fit the targets and be a scalar, and a classifier's class ids, in
        ``batch_targets`` (every task's support and query targets: a min and a max) too,
        must fit its outputs (:func:`tf_maml.losses.check_task_loss`).
        Checked here rather than while tracing, where the one-line error would come wrapped
        in a traceback. Every later call: a classifier's class ids again (a min and a max,
        about 0.1 ms), a :class:`~tf_maml.errors.BatchError` naming ``where``: else
        TensorFlow's op failed on one out of range, printing its C++ log lines
        ("OP_REQUIRES failed ...") before the error, and on a GPU gave a NaN loss."""
        if not self._loss_checked:
            self._classes = losses.check_task_loss(
                self.loss_fn, support_y, self.predict(support_x, weights),
                batch_targets=batch_targets)
            self._loss_checked = True
        elif self._classes is not None:
            try:
                for name, ids in (batch_targets or {"support_y": support_y}).items():
                    losses.check_class_range(ids, self._classes, name)
            except ValueError as err:
                raise BatchError(f"{where}: {err}") from None

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

    def use_plan(self, plan: ExecutionPlan) -> MetaLearner:
        """Runs the tasks by ``plan`` (a :class:`tf_maml.ExecutionPlan`) from now on, e.g.
        the one autotuning chose: the compiled steps are traced again. Returns the learner,
        so that ``MetaLearner(model, loss_fn).use_plan(plan)`` chains."""
        plan.check(self.model)
        self.plan = plan
        self._train_fns.clear()
        self._eval_fns.clear()
        return self

    def task_mapping(self, batch: Batch) -> str:
        """How ``meta_gradients`` maps the tasks of a batch of these shapes, in words
        (e.g. ``"batched"``, ``"accumulate (8 tasks/chunk, batched)"``, ``"map"``)."""
        return self.plan.describe(self.model, batch)

    def step_lr(self, lrs):
        """α as :func:`tf_maml.adapt.adapt` takes it, from the learned rates' values
        ``lrs``: :meth:`tf_maml.options.InnerRate.step_lr` (``inner_lr`` when none are
        learned; with LSLR a function of the inner step)."""
        return self.rate.step_lr(lrs, self.inner_steps)

    def step_params(self, theta, bn_steps, runner: Runner | None = None):
        """Per-step batch norm's ``step_params(weights, step)`` for
        :func:`tf_maml.adapt.adapt` (None without it): the batch-norm entries of
        ``weights`` become step ``step``'s values (θ's own for step 0, ``bn_steps`` after;
        a step beyond those meta-trained reuses the last), laid out by ``runner``."""
        if not self.bn_indices or not bn_steps:
            return None
        return self.per_step_bn.step_params(self.bn_indices, theta, bn_steps, self.inner_steps,
                                            list if runner is None else runner.weights)

    # ------------------------------------------------------------------ adaptation
    def adapt(self, support_x, support_y, num_steps: int | None = None, weights=None):
        """Fast weights for one task: ``num_steps`` (default ``inner_steps``) SGD steps on
        its support set from θ (or from ``weights``). Returns a list of tensors matching
        ``model.trainable_variables``."""
        steps = self.inner_steps if num_steps is None else _step_count(num_steps, "adapt")
        weights = (_read(self.model.trainable_variables) if weights is None else
                   _given_weights(self.model.trainable_variables, weights, "adapt", "weights"))
        support_x, support_y = (_task_tensor("adapt", "support_x", support_x),
                                _task_tensor("adapt", "support_y", support_y))
        problem = examples_problem("support_x", support_x.shape, self._example_shape)
        if problem:  # else Keras' multi-line error from inside the model's call
            raise ValueError(f"adapt: {problem}")
        num_x, num_y = (t.shape[0] if t.shape.rank else None for t in (support_x, support_y))
        if num_x is not None and num_y is not None and num_x != num_y:
            raise ValueError(f"adapt: support_y has {num_y} targets but support_x has {num_x} "
                             "examples; every example needs one")
        if num_x == 0:  # else the loss of no example had no gradient: θ came back unchanged
            raise ValueError("adapt: support_x holds no examples; adapting needs at least one "
                             "labelled example of the task")
        self._check_loss(support_x, support_y, weights)
        with refused_batches("adapt"):
            fast, _, _ = self._inner_loop(model_runner(self.model), weights, support_x,
                                          support_y, _read(self.inner_lrs), steps,
                                          bn_steps=_read(self.bn_steps))
        return fast

    def predict(self, x, fast_weights=None, training: bool = True):
        """Predictions with ``fast_weights`` (default: the meta-learned θ).

        ``training=True``: batch norm on the batch's statistics, as the original always
        ran it and as every loss here is computed. ``training=False`` is refused for a
        model with a batch norm that is not frozen: meta-training never updates its moving
        statistics (the forward pass discards them), so they are not θ's (a new model's
        are mean 0, variance 1); the same holds for the Keras model's own inference mode
        (``model(x)``, ``model.predict``)."""
        check_switch("predict: training", training)  # else "False" ran in training mode
        if not training:
            stale = _moving_statistics_layers(self.model)
            if stale:
                raise ValueError(
                    f"predict(training=False) would normalise with the moving statistics of "
                    f"{', '.join(stale)}, which meta-training never updates (MAML uses batch "
                    "statistics throughout, as the original): they are not θ's (a new "
                    "model's are mean 0, variance 1). Predict with training=True (the "
                    "batch's statistics)")
        weights = (_read(self.model.trainable_variables) if fast_weights is None else
                   _given_weights(self.model.trainable_variables, fast_weights, "predict",
                                  "fast_weights"))
        x = _task_tensor("predict", "x", x)
        problem = examples_problem("x", x.shape, self._example_shape)
        if problem:  # else Keras' multi-line error from inside the model's call
            raise ValueError(f"predict: {problem}")
        return adapt_lib.forward(self.model, weights, x, training=training)

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
            penalty_fn=runner.penalty,
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
        adapt from (matching ``model.trainable_variables``), ``inner_lrs`` the learned α
        values (empty: ``inner_lr``). Returns ``post_loss`` = L(f_θ'; query), θ' after
        ``inner_steps`` steps (eq. 2's summand), ``pre_loss`` = L(f_θ; support) and, with a
        ``metric_fn``, ``pre_metric`` and ``post_metric``. ``pretrain=True``: no inner step
        (the pretrained baseline minimises ``pre_loss``). ``runner``: how a task mapping
        runs the task (default: the model, one task; stacked: one value per task).

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
        # (float16 under mixed_float16: reported, as the signatures say, in θ's dtype)
        out = {"pre_loss": tf.cast(pre_loss, self._loss_dtype),
               "post_loss": tf.cast(loss_fn(query_y, query_preds), self._loss_dtype)}
        if msl_weights is not None and not pretrain:
            losses = [tf.cast(loss_fn(query_y, predict(w)), self._loss_dtype)
                      for w in trajectory[1:-1]]
            losses.append(out["post_loss"])
            out["msl_loss"] = tf.add_n([msl_weights[s] * loss for s, loss in enumerate(losses)])
        if self.metric_fn is not None:
            metric_fn = runner.per_task(self.metric_fn)
            out["pre_metric"] = tf.cast(metric_fn(support_y, pre_preds), tf.float32)
            out["post_metric"] = tf.cast(metric_fn(query_y, query_preds), tf.float32)
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
    def _seeded(self, batch: Batch) -> tuple:
        """``batch`` with every task's seed as a fifth tensor ``[T, 2]``, for a model with
        random layers (dropout; :func:`tf_maml.adapt.random_layers`); else ``batch``.

        Task t's seed folds t into (iteration, 0): the iteration is the meta-optimiser's
        step count (``optimizer.iterations``, read as the step runs, in checkpoints), so
        every meta-iteration draws new masks, the same ones again for the same iteration,
        with no state of its own. t is the task's place in the global meta-batch: replica
        r of R holds tasks [r·T, (r+1)·T) (:func:`tf_maml.distribute.split_batch`), so two
        replicas draw what one device would. The layers' own seed states are folded in too
        (:func:`tf_maml.adapt.forward`), so ``Dropout(seed=...)`` or
        ``keras.utils.set_random_seed`` choose the sequence: Keras keeps them out of
        checkpoints, so a resumed run draws an uninterrupted one's masks when its model is
        built with the same seeds."""
        if not adapt_lib.random_layers(self.model):
            return batch
        batch = tuple(tf.convert_to_tensor(t) for t in batch)
        count = batch[0].shape[0]  # static when known: the loop mapping indexes the seeds
        count = tf.shape(batch[0], out_type=tf.int64)[0] if count is None else count
        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        first = tf.cast(replica, tf.int64) * count
        base = tf.stack([tf.cast(self.optimizer.iterations, tf.int64),
                         tf.constant(0, tf.int64)])
        tasks = first + tf.range(count, dtype=tf.int64)
        seeds = tf.map_fn(lambda t: adapt_lib.fold_seed(base, t), tasks,
                          fn_output_signature=tf.TensorSpec([2], tf.int64))
        return (*batch[:4], seeds)

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
        penalty = adapt_lib.weight_penalty(self.model)
        batch = self._seeded(batch)

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
                if penalty is not None:
                    # Weight decay on θ, as Keras' fit adds model.losses: R(θ) once, not per
                    # task. Every mapping averages the means of its parts (chunks, replicas)
                    # with weights summing to 1, so ∇R(θ) reaches the meta-gradient once.
                    objective = objective + tf.cast(penalty(params), objective.dtype)
            grads = tape.gradient(objective, watched,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads, metrics

        return mapping.mean_gradients(gradients, batch, self.meta_variables, signature)

    def reptile_gradients(self, batch: Batch):
        """Reptile (Nichol et al. 2018): θ − mean_i θ'_i, with θ'_i after ``inner_steps``
        SGD steps (step α = ``inner_lr``, every weight adapted) on task i's support set;
        handed to the meta-optimiser as a gradient. A model with weight regularizers adapts
        with their penalty, and the move gets ∇R(θ) added once (weight decay on θ)."""
        params = _read(self.model.trainable_variables)
        everything = [True] * len(params)

        def task_fn(task, runner):
            support_x, support_y, query_x, query_y = task
            fast, pre_loss, _ = self._inner_loop(runner, params, support_x, support_y, (),
                                                 self.inner_steps, first_order=True,
                                                 mask=everything)
            post_loss = runner.per_task(self.loss_fn)(query_y, runner.forward(fast, query_x))
            return {"fast": fast, "pre_loss": tf.cast(pre_loss, self._loss_dtype),
                    "post_loss": tf.cast(post_loss, self._loss_dtype)}

        signature = {
            "fast": [tf.TensorSpec(p.shape, p.dtype) for p in params],
            "pre_loss": tf.TensorSpec([], self._loss_dtype),
            "post_loss": tf.TensorSpec([], self._loss_dtype),
        }
        mapping = self.plan.for_tasks(self.model, batch)
        out = mapping.map(task_fn, self._seeded(batch), signature)
        grads = [p - tf.reduce_mean(f, axis=0) for p, f in zip(params, out["fast"])]
        penalty = adapt_lib.weight_penalty(self.model)
        if penalty is not None:  # weight decay on θ, as in meta_gradients: ∇R(θ) once
            with tf.GradientTape() as tape:
                tape.watch(params)
                value = penalty(params)
            decay = tape.gradient(value, params,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grads = [g + d for g, d in zip(grads, decay)]
        grads += [tf.zeros_like(v) for v in self.inner_lrs + self.bn_steps]
        metrics = {"pre_loss": tf.reduce_mean(out["pre_loss"]),
                   "post_loss": tf.reduce_mean(out["post_loss"])}
        return grads, metrics

    # ------------------------------------------------------------------ compiled steps
    def evaluate_batch(self, batch: Batch, num_steps: int, predictions: bool = False) -> dict:
        """Per task and step (0..num_steps) query loss (and metric), shape [T, num_steps+1];
        with ``predictions``, also the model's query outputs ``[T, num_steps+1, *y]`` (for
        an ensemble, which averages them over models).

        Step 0 is the meta-learned θ itself, evaluated on the query set.
        """
        num_steps = _step_count(num_steps, "evaluate_batch")
        too_many = adapt_lib.unrolled_steps_problem(num_steps)
        if too_many:  # (adapt runs eagerly: any step count, a step at a time)
            raise ValueError(f"evaluate_batch: num_steps={num_steps}: {too_many}")
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
                    # In the signature's dtypes: under mixed_float16 the model computes (so
                    # losses and predictions come) in float16, and map's TensorArrays take
                    # only their declared dtype.
                    out = {"loss": tf.cast(tf.stack([loss_fn(query_y, p) for p in preds],
                                                    axis=-1), self._loss_dtype)}
                    if self.metric_fn is not None:
                        metric_fn = runner.per_task(self.metric_fn)
                        out["metric"] = tf.cast(tf.stack(
                            [metric_fn(query_y, p) for p in preds], axis=-1), tf.float32)
                    if predictions:
                        stacked = len(query_x.shape) == batch_rank
                        out["predictions"] = tf.cast(tf.stack(preds, axis=1 if stacked else 0),
                                                     self._loss_dtype)
                    return out

                signature = {"loss": tf.TensorSpec([num_steps + 1], self._loss_dtype)}
                if self.metric_fn is not None:
                    signature["metric"] = tf.TensorSpec([num_steps + 1], tf.float32)
                if predictions:
                    signature["predictions"] = tf.TensorSpec(None, self._loss_dtype)
                return self.plan.for_tasks(self.model, batch).map(task_fn, batch, signature)

            self._eval_fns[key] = tf.function(evaluate, reduce_retracing=True, autograph=False)
        batch = self.checked_batch(batch, "evaluate_batch")
        with refused_batches("evaluate_batch"):
            return self._eval_fns[key](batch)


def _check_model(model: keras.Model) -> None:
    """A ValueError unless ``model`` is built, takes one input and has weights to
    meta-learn."""
    if not model.built:
        raise ValueError(
            "MetaLearner needs a built Keras model: call the model once on an example "
            "batch (or give it an Input) before wrapping it."
        )
    untracked = _untracked_variables(model)
    if untracked:
        # Keras 3 tracks only its own variables (add_weight, keras.Variable): a tf.Variable
        # set on a layer is in no trainable_variables, so it would stay at its first value.
        raise ValueError(
            f"model {model.name} has trainable tf.Variables that Keras does not track "
            f"({', '.join(untracked)}): they are not in model.trainable_variables, so "
            "MetaLearner would neither adapt nor meta-learn them (and export cannot save "
            "them). Create them with the layer's self.add_weight(...) instead")
    if not model.trainable_variables:
        raise ValueError(
            f"model {model.name} has no trainable weights, so there is nothing to "
            "meta-learn: set model.trainable = True (and unfreeze its layers) before "
            "wrapping it."
        )
    integral = _non_float_weights(model)
    if integral:
        # θ − α∇L has no meaning for an integer: the inner step failed on casting α to it.
        raise ValueError(
            f"model {model.name} has trainable weights that are not floats "
            f"({', '.join(integral)}): a gradient step cannot change them. Make them "
            "non-trainable (add_weight(..., trainable=False)) or of a float dtype")
    regularized = adapt_lib.activity_regularized_layers(model)
    if regularized:
        # Keras' fit adds model.losses to the loss. Weight penalties are added to the inner
        # and outer losses (tf_maml.adapt.weight_penalty), but an activity penalty depends on
        # the activations of a forward pass, which the losses here do not collect: it would
        # be silently left out of both.
        raise ValueError(
            f"model {model.name} has activity regularizers (layers {', '.join(regularized)}), "
            "whose penalties MetaLearner does not add to its inner or outer loss: they would "
            "be silently ignored. Remove them (weight regularizers, e.g. "
            "kernel_regularizer=..., are supported)")
    random = adapt_lib.drawing_layers(model, unsupported_only=True)
    if random:
        # A layer's random state (its SeedGenerator) is a variable that the stateless forward
        # pass reads but never advances: meta-training seeds it per forward pass, and
        # evaluation sets the rate to 0, for the dropout-like layers tf_maml knows
        # (tf_maml.adapt.RANDOM_LAYERS). Any other would draw one mask for every step, task
        # and iteration, and draw at evaluation too (it runs in training mode).
        raise ValueError(
            f"model {model.name} has layers that draw random numbers in training mode "
            f"({', '.join(random)}) that MetaLearner does not support (a recurrent layer's "
            "dropout=, random augmentation, a layer of one's own): they would draw the same "
            "numbers at every step, task and iteration, and at evaluation too. Remove them, "
            "or set their rates to 0; Dropout, SpatialDropout1D/2D/3D, GaussianDropout, "
            "AlphaDropout and GaussianNoise are supported (e.g. a Dropout layer after the "
            "recurrent one)")
    inputs = _input_count(model)
    if inputs > 1:
        # A task's support_x and query_x are one tensor each; Keras would only say, at the
        # first step, that it "expects 2 inputs but received 1" (a subclassed model: "too
        # many values to unpack", or that a tensor has no index 'a').
        raise ValueError(
            f"model {model.name} takes {inputs} inputs, but MetaLearner feeds a "
            "model one tensor of examples (support_x, query_x), and multi-input models are not "
            "supported: give it a model of one input, e.g. concatenate the features into one "
            "tensor, or wrap the model in one whose single Input is sliced into the parts")


def _task_tensor(caller: str, name: str, value) -> tf.Tensor:
    """A task's examples or targets ``value`` as a tensor, or a ValueError naming ``name``
    and the fix: None, a ragged list and strings were TensorFlow's errors ("Attempt to
    convert a value (None)", a failed cast of a graph) naming neither."""
    if value is None:
        raise ValueError(f"{caller}: {name} is None: give an array or tensor")
    try:
        tensor = tf.convert_to_tensor(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{caller}: {name} is no array of one shape ({e}): give an array or "
                         "tensor, e.g. np.stack of the examples") from None
    if tensor.dtype == tf.string:
        raise ValueError(f"{caller}: {name} holds strings, which no loss or model takes: give "
                         "numbers (a classifier's class ids 0..N-1, e.g. from "
                         "np.unique(labels, return_inverse=True))")
    return tensor


def _output_layer(model: keras.layers.Layer) -> keras.layers.Layer | None:
    """The layer that produces a Sequential or single-output functional model's output
    (nested models followed), None if that cannot be read (a subclassed model)."""
    if isinstance(model, keras.Sequential):
        layer = model.layers[-1] if model.layers else None
    elif keras_internals.is_functional(model) and len(model.outputs) == 1:
        call = keras_internals.producer(model.outputs[0])
        layer = call[0] if call else None
    else:
        return None
    return _output_layer(layer) if isinstance(layer, keras.Model) else layer


def _check_logits(model: keras.Model, loss_fn) -> None:
    """A ValueError if ``loss_fn`` takes logits but ``model`` ends in a softmax (the
    probabilities would be softmaxed again: a wrong loss and a damped gradient, silently)."""
    layer = _output_layer(model)
    if layer is None or not losses.takes_logits(loss_fn):
        return
    if (isinstance(layer, keras.layers.Softmax)
            or getattr(layer, "activation", None) is keras.activations.softmax):
        raise ValueError(
            f"model {model.name}'s output layer {layer.name!r} applies a softmax, but loss_fn "
            f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)} takes logits (it applies "
            "a softmax itself): remove the output's softmax, or give a loss on probabilities, "
            "e.g. 'sparse_categorical_crossentropy'")


def _moving_statistics_layers(model: keras.Model) -> list[str]:
    """The names of ``model``'s batch norms that normalise with batch statistics in training
    mode (those not frozen: a frozen one uses its moving statistics in both modes)."""
    return [layer.name for layer in keras_internals.layers_of(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def _untracked_variables(model: keras.Model) -> list[str]:
    """``layer.attribute`` for each trainable ``tf.Variable`` that a layer of ``model``
    holds (directly or in a list, tuple or dict attribute) and Keras does not track."""
    names = []
    for layer in keras_internals.layers_of(model):
        for attribute, value in vars(layer).items():
            if attribute.startswith("_self_"):  # TensorFlow's own tracking of the same
                continue
            values = (value.values() if isinstance(value, dict)
                      else value if isinstance(value, (list, tuple)) else [value])
            if any(isinstance(v, tf.Variable) and v.trainable for v in values):
                names.append(f"{layer.name}.{attribute}")
    return names


def _non_float_weights(model: keras.Model) -> list[str]:
    """``layer/weight (dtype)`` for each trainable weight of ``model`` that is not a float."""
    return [f"{v.path} ({v.dtype})" for v in model.trainable_variables
            if not keras.backend.is_float_dtype(v.dtype)]


def _input_count(model: keras.Model) -> int:
    """How many input tensors ``model`` takes: a functional model's ``inputs``; for a
    subclassed model, which has none, the structure of the first argument it was built with
    (a list or dict of shapes on ``model([a, b])`` or ``model({"a": a, "b": b})``), or its
    call's arguments without a default (``call(self, a, b)``: Keras records a's shape only)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    shape = (model.get_build_config() or {}).get("input_shape")
    if isinstance(shape, dict) or (isinstance(shape, (list, tuple))
                                   and any(isinstance(d, (list, tuple, dict)) for d in shape)):
        return len(shape)
    return max(1, len(_required_call_arguments(model)))


def _required_call_arguments(model: keras.Model) -> list[str]:
    """The arguments of ``model.call`` a caller must give, but ``training`` and ``mask``
    (Keras passes those itself)."""
    import inspect

    try:
        parameters = inspect.signature(model.call).parameters.values()
    except (TypeError, ValueError):  # a call without a signature to read
        return []
    return [p.name for p in parameters
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.default is p.empty and p.name not in ("training", "mask")]
