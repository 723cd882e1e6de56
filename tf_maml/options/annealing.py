"""Derivative-order annealing (MAML++): first-order meta-gradients for the first iterations,
second order after. ``MetaLearner(..., first_order=FirstOrderUntil(N))``.

"Iteration" is the meta-optimiser's step count (``optimizer.iterations``, in checkpoints), so
a resumed run switches where it would have."""

from __future__ import annotations

from tf_maml.errors import is_count
from tf_maml.options.steps import require_steps


class FirstOrderUntil:
    """First-order meta-gradients while the iteration is below ``iterations``, second order
    from it on (the learner keeps one compiled step per order)."""

    def __init__(self, iterations: int):
        if not is_count(iterations, 1):  # else 2.5 was truncated to 2 without a word
            raise ValueError(f"FirstOrderUntil needs iterations >= 1, a whole number "
                             f"(for none, give first_order=False), got {iterations!r}")
        self.iterations = int(iterations)

    def check(self, inner_steps: int) -> None:
        require_steps("FirstOrderUntil", inner_steps)

    def first_order_at(self, iteration: int) -> bool:
        return iteration < self.iterations

    def __repr__(self) -> str:
        return f"FirstOrderUntil({self.iterations})"


def derivative_order(first_order):
    """``first_order`` checked: a bool (always first / always second order) or a
    :class:`FirstOrderUntil`."""
    if isinstance(first_order, FirstOrderUntil):
        return first_order
    if first_order not in (True, False):
        raise ValueError(f"first_order must be True, False or FirstOrderUntil(iterations), "
                         f"got {first_order!r}")
    return bool(first_order)
