"""What the library asks of a learner, declared: the training loop, the checkpoints, the
callbacks, the ensemble and autotuning each name here the members they use, and nothing
else of a learner is used by them.

Three learners implement them: :class:`tf_maml.learners.MetaLearner` (all of them),
:class:`tf_maml.baselines.Classifier` (:class:`TaskLearner`: the pretraining of the
MiniImageNet baselines) and :class:`tf_maml.rl.learner.RLMetaLearner` (:class:`Learner`).
The protocols are structural (``typing.Protocol``): a learner needs no base class, and
``isinstance(learner, TunableLearner)`` tells whether autotuning applies to it.

This module imports nothing of the library: every floor can name these types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Learner(Protocol):
    """What the training loop (:func:`tf_maml.train.fit` and the run directory around it)
    and the checkpoints (:func:`tf_maml.checkpoint.learner_checkpointer`) use."""

    model: Any
    """The Keras model whose weights are trained (checkpointed as ``model``)."""
    optimizer: Any
    """The trackable state of the outer update (Adam's moments and step; TRPO's counters),
    checkpointed beside the model."""
    strategy: Any
    """The ``tf.distribute.Strategy`` the learner's variables live under, or None (one
    device): only a multi-worker strategy's chief writes into the run directory."""

    @property
    def extra_variables(self) -> Mapping[str, Sequence]:
        """Checkpointed state beyond the model's and the optimizer's, by checkpoint name
        (Meta-SGD's learned rates, ...); empty if there is none."""

    def train_step(self, batch: Any, pretrain: bool = False) -> Mapping[str, Any]:
        """One update on ``batch`` (one element of the loop's batch iterator); returns the
        step's metrics. ``pretrain``: the step of a pretraining phase. A step whose update
        may be skipped (a non-finite loss) says whether it was applied under ``applied``."""


@runtime_checkable
class TaskLearner(Learner, Protocol):
    """A learner of few-shot tasks, trained on task sources (``sample_batch(n, rng)``):
    what the supervised callbacks (:mod:`tf_maml.callbacks`: progress, CSV log, TensorBoard,
    validation) use. Its :meth:`train_step` returns ``pre_loss`` and ``post_loss`` (and
    ``pre_metric``, ``post_metric`` with a metric) and ``applied``."""

    metric_fn: Callable | None
    """The metric reported beside the loss (accuracy), or None (regression)."""

    def evaluate_batch(self, batch: Any, num_steps: int) -> Mapping[str, Any]:
        """Per task and step ``0..num_steps`` (or one column if the learner takes no
        steps) of a batch of tasks: ``loss`` and/or ``metric``, shape ``[T, S+1]``."""


@runtime_checkable
class EnsembleLearner(TaskLearner, Protocol):
    """What the ensemble of checkpoints (:mod:`tf_maml.ensemble`) uses: the members' query
    predictions, averaged, scored with the learner's own loss and metric."""

    loss_fn: Callable
    """One task's loss, ``loss_fn(y_true, y_pred)`` -> scalar."""

    def evaluate_batch(self, batch: Any, num_steps: int,
                       predictions: bool = False) -> Mapping[str, Any]:
        """As :meth:`TaskLearner.evaluate_batch`; with ``predictions`` also the query
        predictions after every step (``predictions`` [T, S+1, Nq, ...], ``query_y``)."""


@runtime_checkable
class TunableLearner(EnsembleLearner, Protocol):
    """What autotuning (:mod:`tf_maml.autotune`) uses to time the candidates of the
    learner's execution plan on a meta-batch, and the library's ``fit`` for its summaries'
    names (``inner_steps``)."""

    plan: Any
    """The learner's :class:`~tf_maml.mapping.ExecutionPlan`."""
    algorithm: str
    inner_steps: int
    first_order: bool

    @property
    def meta_variables(self) -> Sequence:
        """The variables the meta-gradients are taken with respect to (their shapes key
        the autotuning cache)."""

    def use_plan(self, plan: Any) -> None:
        """Trains with ``plan`` from now on."""

    def checked_batch(self, batch: Any, where: str) -> tuple:
        """``batch`` as tensors, checked (one-line errors naming ``where``)."""

    def meta_gradients(self, batch: Any, pretrain: bool = False,
                       plan: Any = None) -> tuple[Any, Mapping[str, Any]]:
        """(meta-gradients, metrics) of ``batch`` with ``plan``, nothing applied."""
