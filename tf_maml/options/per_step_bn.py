"""Per-step batch norm (MAML++): batch norm's β (and γ) per inner step. Step s of the inner
loop and the query pass after it use step s's values, meta-learned; step 0's are the model's
own variables. ``MetaLearner(..., adapt=PerStepBatchNorm())``."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_maml import keras_internals
from tf_maml.options.steps import clamp, require_steps


class PerStepBatchNorm:
    """Per-step batch norm over the inner loop that ``adapt`` (``"all"`` or ``"head"``)
    describes; batch norm itself is never adapted (a per-step value would overwrite the
    step)."""

    def __init__(self, adapt: str = "all"):
        if adapt not in ("all", "head"):
            raise ValueError(f"PerStepBatchNorm gives batch norm its own values at each inner "
                             f"step, so the inner loop cannot also adapt them: adapt must be "
                             f"'all' or 'head', got {adapt!r}")
        self.adapt = adapt

    def batch_norm_indices(self, model: keras.Model, inner_steps: int) -> list[int]:
        """Indices in ``model.trainable_variables`` of every
        ``keras.layers.BatchNormalization`` variable (β, and γ if the layer scales)."""
        require_steps("PerStepBatchNorm", inner_steps)
        ids = {id(v) for layer in keras_internals.layers_of(model)
               if isinstance(layer, keras.layers.BatchNormalization)
               for v in layer.trainable_variables}
        indices = [i for i, v in enumerate(model.trainable_variables) if id(v) in ids]
        if not indices:
            raise ValueError(f"PerStepBatchNorm needs a model with trainable "
                             f"keras.layers.BatchNormalization layers; {model.name} has none "
                             "(e.g. tf_maml.models.conv4(..., norm='batch_norm'), or "
                             "--norm=batch_norm)")
        return indices

    @staticmethod
    def variables(model: keras.Model, indices, inner_steps: int) -> list[keras.Variable]:
        """For each batch-norm variable (``indices``), its values for inner steps 1..S−1
        (checkpoint names ``bn_step_<index>``), initialised to step 0's."""
        if inner_steps < 2:
            return []
        return [keras.Variable(tf.repeat(model.trainable_variables[i].value[None],
                                         inner_steps - 1, axis=0),
                               dtype=model.trainable_variables[i].dtype, trainable=True,
                               name=f"bn_step_{i}")
                for i in indices]

    @staticmethod
    def step_params(indices, theta, bn_steps, inner_steps: int, layout=list):
        """``step_params(weights, step)`` for :func:`tf_maml.adapt.adapt`: the batch-norm
        entries (``indices``) of ``weights`` become step ``step``'s values (θ's own for step 0,
        ``bn_steps`` after; a step beyond those meta-trained reuses the last), laid out by
        ``layout`` (a runner's ``weights``)."""
        stacks = [tf.concat([theta[i][None], values], 0)
                  for i, values in zip(indices, bn_steps)]
        last = inner_steps - 1

        def params_at(weights, step):
            k = clamp(step, last)
            if isinstance(k, int) and k == 0:
                return list(weights)  # θ's own values, already in place
            weights = list(weights)
            for i, stack in zip(indices, stacks):
                weights[i] = layout([stack[k]])[0]
            return weights

        return params_at

    def __repr__(self) -> str:
        return f"PerStepBatchNorm({self.adapt!r})"
