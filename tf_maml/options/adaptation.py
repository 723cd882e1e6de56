"""Which weights the inner loop adapts: the learner's ``adapt=`` choice.

* ``"all"`` (the default): every trainable weight except normalisation offsets and scales,
  which the original meta-trained only;
* ``"all+norm"``: every trainable weight, normalisation's too;
* ``"head"``: ANIL (Raghu et al., ICLR 2020): only the last layer with weights adapts, the
  body learns in the outer loop alone;
* :class:`~tf_maml.options.per_step_bn.PerStepBatchNorm` (``"all"`` or ``"head"``): as
  those, and batch norm takes its own meta-learned values at each inner step (MAML++).
"""

from __future__ import annotations

import keras

from tf_maml import adapt as adapt_lib
from tf_maml.options.per_step_bn import PerStepBatchNorm

ADAPT = ("all", "all+norm", "head")


def check(adapt) -> tuple[str, PerStepBatchNorm | None]:
    """``adapt`` as (one of :data:`ADAPT`, per-step batch norm or None); a ValueError naming
    the choices otherwise."""
    if isinstance(adapt, PerStepBatchNorm):
        return adapt.adapt, adapt
    if adapt not in ADAPT:
        raise ValueError(f"adapt must be one of {ADAPT} or PerStepBatchNorm(), got {adapt!r}")
    return adapt, None


def adapted_mask(model: keras.Model, adapt: str) -> list[bool]:
    """Which of ``model.trainable_variables`` the inner loop adapts under ``adapt``."""
    return adapt_lib.adapted_mask(model, adapt_norm=adapt == "all+norm",
                                  adapt_layers="head" if adapt == "head" else "all")
