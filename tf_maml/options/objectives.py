"""What the meta-update minimises, and the metric reported beside it.

* :class:`LastStep` (the default): MAML's query loss after the last inner step, Σ_i L(θ'_i)
  (Finn et al. 2017, eq. 2); first or second order as the learner's ``first_order`` says.
* :class:`MultiStepLoss`: MAML++'s multi-step loss, for its first ``iterations`` a weighted sum
  of the query losses after every inner step (:func:`tf_maml.mamlpp.msl_step_weights`), then
  the last step's alone.
* :class:`Reptile` (Nichol et al. 2018): not a loss but the move θ − mean_i θ'_i, handed to the
  meta-optimiser as a gradient.

The original's pretrained baseline (the loss of θ itself on the support set, no inner step)
is not an objective of a learner but a step of one: ``train_step(batch, pretrain=True)``, as
the original's ``--pretrain_iterations`` pretrains the same network before MAML continues.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from tf_maml import mamlpp
from tf_maml.errors import is_count
from tf_maml.options.steps import require_steps

ALGORITHMS = ("maml", "reptile")  # the meta-update: through the inner loop, or θ' - θ


class Objective:
    """What every objective has: ``metric_fn(y_true, y_pred)``, an optional per-task metric
    (e.g. :func:`tf_maml.losses.accuracy`) reported beside the loss in training and
    evaluation."""

    algorithm = "maml"
    iterations = 0  # the multi-step loss's: none

    def __init__(self, metric_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None):
        if metric_fn is not None and not callable(metric_fn):
            raise ValueError(f"metric_fn must be a function metric_fn(y_true, y_pred) -> "
                             f"scalar, got {metric_fn!r}")
        self.metric_fn = metric_fn

    def check(self, inner_steps: int, per_step_options: list[str]) -> None:
        """A ValueError if the objective cannot be used with these inner steps and per-step
        options (the names of those on)."""

    def multi_step_at(self, iteration: int) -> bool:
        """Whether the meta-step at ``iteration`` minimises the multi-step loss."""
        return False

    def step_weights(self, iteration, num_steps: int, dtype=tf.float32) -> tf.Tensor:
        """The multi-step loss's weights ``[num_steps]`` at ``iteration`` (a tensor in a
        compiled step), :func:`tf_maml.mamlpp.msl_step_weights`."""
        return mamlpp.msl_step_weights(iteration, num_steps, max(self.iterations, 1), dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LastStep(Objective):
    """MAML's objective: the query loss after the last inner step."""


class MultiStepLoss(Objective):
    """MAML++'s multi-step loss for the first ``iterations`` meta-iterations (the
    meta-optimiser's step count), the last step's loss after."""

    def __init__(self, iterations: int, metric_fn=None):
        super().__init__(metric_fn)
        if not is_count(iterations, 1):  # else 2.5 was truncated to 2 without a word
            raise ValueError(f"MultiStepLoss needs iterations >= 1, a whole number "
                             f"(for none, use LastStep()), got {iterations!r}")
        self.iterations = int(iterations)

    def check(self, inner_steps: int, per_step_options: list[str]) -> None:
        require_steps("MultiStepLoss", inner_steps)

    def multi_step_at(self, iteration: int) -> bool:
        return iteration < self.iterations

    def __repr__(self) -> str:
        return f"MultiStepLoss({self.iterations})"


class Reptile(Objective):
    """Reptile: θ − mean_i θ'_i, θ'_i after ``inner_steps`` first-order SGD steps on task
    i's support set, every weight adapted, at the fixed α (learned rates get no update)."""

    algorithm = "reptile"

    def check(self, inner_steps: int, per_step_options: list[str]) -> None:
        if per_step_options:
            raise ValueError(f"{per_step_options[0]} is a MAML++ option of the "
                             "meta-gradient; Reptile has none: drop it or use LastStep()")


def objective(value) -> Objective:
    """``value`` as an objective: None is :class:`LastStep`."""
    if value is None:
        return LastStep()
    if not isinstance(value, Objective):
        raise ValueError(f"objective must be LastStep(), MultiStepLoss(iterations) or "
                         f"Reptile(), got {value!r}")
    return value
