"""The inner learning rate α: fixed (MAML), learned per parameter element (Meta-SGD, Li et
al. 2017), learned per layer and inner step (LSLR, MAML++: Antoniou et al. 2019), or both.

``MetaLearner(model, loss, inner_lr=0.01)`` is a fixed α; ``inner_lr=MetaSGD(0.01)``,
``LSLR(0.1)`` or ``LSLR(0.1, per_parameter=True)`` learn it, starting from the value given.
"""

from __future__ import annotations

import math
import numbers

import keras
import tensorflow as tf

from tf_maml.errors import check_switch
from tf_maml.options.steps import clamp, require_steps


class InnerRate:
    """A fixed inner learning rate α (the paper's): nothing learned."""

    per_parameter = False  # one α per parameter element (Meta-SGD)
    per_step = False  # one α per inner step (LSLR)

    def __init__(self, value: float = 0.01):
        if not math.isfinite(float(value)):
            raise ValueError(f"the inner learning rate must be a finite number, got {value}")
        if float(value) < 0:  # a step up the support loss; the export refuses it too
            raise ValueError(f"the inner learning rate α must be >= 0 (a step size; 0 leaves "
                             f"the weights unchanged), got {value}")
        self.value = float(value)

    @property
    def learned(self) -> bool:
        return self.per_parameter or self.per_step

    def variables(self, model: keras.Model, inner_steps: int) -> list[keras.Variable]:
        """The learned rates, one variable per trainable variable of ``model`` (checkpoint
        names ``inner_lr_<i>``), initialised to α: Meta-SGD's of the variable's shape, LSLR's
        with a leading ``[inner_steps]`` axis (scalars per step without Meta-SGD). None for a
        fixed α."""
        if not self.learned:
            return []
        if self.per_step:
            require_steps(type(self).__name__, inner_steps)
        steps = [inner_steps] if self.per_step else []
        return [keras.Variable(tf.fill(steps + (list(v.shape) if self.per_parameter else []),
                                       tf.constant(self.value, v.dtype)),
                               dtype=v.dtype, trainable=True, name=f"inner_lr_{i}")
                for i, v in enumerate(model.trainable_variables)]

    def step_lr(self, lrs, inner_steps: int):
        """α as :func:`tf_maml.adapt.adapt` takes it, from the learned rates' values ``lrs``:
        ``value`` (none learned), one tensor per variable (Meta-SGD), or with LSLR a function
        of the inner step (a step beyond those meta-trained reuses the last step's rates)."""
        if not lrs:
            return self.value
        if not self.per_step:
            return list(lrs)
        last = inner_steps - 1
        return lambda step: [r[clamp(step, last)] for r in lrs]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value})"


class MetaSGD(InnerRate):
    """Meta-SGD: one learnable α per parameter element, initialised to ``value`` and
    meta-trained with θ."""

    per_parameter = True


class LSLR(InnerRate):
    """MAML++'s learned per-layer per-step inner rates: one α per trainable variable and
    inner step, initialised to ``value``; with ``per_parameter=True`` (Meta-SGD's rates given
    a step axis) one per element and step."""

    per_step = True

    def __init__(self, value: float = 0.01, per_parameter: bool = False):
        super().__init__(value)
        check_switch("per_parameter", per_parameter)
        self.per_parameter = per_parameter

    def __repr__(self) -> str:
        return f"LSLR({self.value}, per_parameter={self.per_parameter})"


def inner_rate(inner_lr) -> InnerRate:
    """``inner_lr`` as an :class:`InnerRate`: a number is a fixed α."""
    if isinstance(inner_lr, InnerRate):
        return inner_lr
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, numbers.Real):
        raise ValueError(f"inner_lr must be a number or an InnerRate (MetaSGD, LSLR), "
                         f"got {inner_lr!r}")
    return InnerRate(inner_lr)
