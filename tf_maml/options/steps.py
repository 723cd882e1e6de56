"""What the per-step options (LSLR, per-step batch norm, the multi-step loss, derivative-order
annealing) share: they have one value per inner step, so they need at least one step, and a
step beyond those meta-trained reuses the last step's value."""

from __future__ import annotations

import tensorflow as tf


def require_steps(option: str, inner_steps: int) -> None:
    """A ValueError unless there is an inner step for ``option`` to act on."""
    if inner_steps < 1:
        raise ValueError(f"{option} needs inner_steps >= 1, got {inner_steps}")


def clamp(step, last: int):
    """``min(step, last)`` for a Python step or a step tensor (the export's while loop):
    steps beyond those meta-trained reuse the last step's learned values."""
    return min(step, last) if isinstance(step, int) else tf.minimum(step, last)
