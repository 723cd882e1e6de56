"""The meta-optimiser: a Keras optimiser with gradient transforms before it and the
non-finite guard around it, composed outside the learner as optax's ``chain`` composes
transformations::

    meta_optimizer = chain(ClipNetwork(10.0), adam(cosine(1e-3, 1e-5, 50000)))
    learner = tf_maml.MetaLearner(model, loss_fn, ..., meta_optimizer=meta_optimizer)

Every step passes the guard: a step whose loss or meta-gradient is NaN/Inf is not applied,
and counted (``nonfinite_steps``), so the training loop can stop and say so.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras
import tensorflow as tf

from tf_maml import mamlpp

# TF1's AdamOptimizer default, which the original trained with. Keras 3's Adam applies ε the
# same way (θ -= lr_t·m / (√v + ε)), so with this ε the meta-update is the original's.
ORIGINAL_ADAM_EPSILON = 1e-8


def adam(learning_rate=1e-3) -> keras.optimizers.Adam:
    """The original's ``tf.train.AdamOptimizer``: Keras' Adam with ε = 1e-8 (Keras': 1e-7);
    ``learning_rate`` β, a number > 0 or a schedule (e.g. :func:`cosine`)."""
    if not (isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
            or callable(learning_rate)):
        learning_rate = mamlpp.check_meta_lr(learning_rate, "adam's learning_rate")
    return keras.optimizers.Adam(learning_rate, epsilon=ORIGINAL_ADAM_EPSILON)


cosine = mamlpp.cosine_meta_lr  # MAML++'s cosine annealing of β, a Keras schedule


class ClipNetwork:
    """Clips every element of the network's meta-gradients (θ, per-step batch norm) to
    ±``value``, not the learned inner rates': MAML++'s meta_update clamps
    ``classifier.named_parameters()``, not its inner-loop optimiser's rates (the original
    clipped MiniImageNet's at 10)."""

    def __init__(self, value: float):
        if not (math.isfinite(float(value)) and float(value) > 0):
            raise ValueError(f"ClipNetwork needs a clipping value > 0, got {value}")
        self.value = float(value)

    def __call__(self, grads, network: Sequence[bool]) -> list:
        c = self.value
        return [tf.clip_by_value(g, -c, c) if net else g for g, net in zip(grads, network)]

    def __repr__(self) -> str:
        return f"ClipNetwork({self.value})"


class MetaOptimizer:
    """``optimizer`` (a Keras optimiser: its state, step count and learning rate are what
    checkpoints hold) after ``transforms`` (each ``transform(grads, network) -> grads``,
    ``network[i]``: whether gradient i is the network's rather than a learned rate's), inside
    the non-finite guard."""

    def __init__(self, optimizer: keras.optimizers.Optimizer,
                 transforms: Sequence = ()):
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ValueError(f"MetaOptimizer needs a keras.optimizers.Optimizer, got "
                             f"{optimizer!r}")
        _check_learning_rate(optimizer)
        self.optimizer = optimizer
        self.transforms = tuple(transforms)
        self.nonfinite_steps = None  # the guard's count, made with the slots in build()

    @property
    def iterations(self):
        return self.optimizer.iterations

    def build(self, variables) -> None:
        """Creates the optimiser's slots for ``variables`` (in this order: checkpoints name
        them by position) and the guard's count, under the caller's strategy scope."""
        self.optimizer.build(variables)
        self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, trainable=False)

    def apply(self, grads, variables, loss=None, network: Sequence[bool] | None = None):
        """One step on ``variables``, unless ``loss`` or a transformed gradient is not
        finite. Returns whether it was applied."""
        network = [True] * len(grads) if network is None else network
        for transform in self.transforms:
            grads = transform(grads, network)
        return apply_if_finite(self.optimizer, grads, variables, loss,
                               on_skip=lambda: self.nonfinite_steps.assign_add(1))


def _check_learning_rate(optimizer: keras.optimizers.Optimizer) -> None:
    """A ValueError unless ``optimizer``'s fixed learning rate is a finite number > 0, as
    :func:`adam` checks its own: Keras takes ``Adam(-1.0)`` and ascends the meta-objective,
    and a NaN only shows as skipped steps. A schedule (a dict in the config) or a callable
    (whose config cannot be read) is the user's curve, not checked here."""
    try:
        value = optimizer.get_config()["learning_rate"]
    except (OSError, TypeError, ValueError):  # a lambda's config needs its source file
        return
    if isinstance(value, numbers.Real):
        mamlpp.check_meta_lr(value, f"keras.optimizers.{type(optimizer).__name__}'s "
                                    f"learning_rate")


def chain(*links) -> MetaOptimizer:
    """``chain(transform, ..., optimizer)``: the transforms in order, then the Keras
    optimiser, as one :class:`MetaOptimizer`."""
    optimizers = [link for link in links if isinstance(link, keras.optimizers.Optimizer)]
    if len(optimizers) != 1:
        raise ValueError(f"chain needs one Keras optimizer, as its last link, e.g. "
                         f"chain(ClipNetwork(10.0), adam()); got {len(optimizers)}")
    if links[-1] is not optimizers[0]:
        # The transforms change the gradients the optimiser's step takes, so it comes last.
        transforms = ", ".join(repr(link) for link in links if link is not optimizers[0])
        name = type(optimizers[0]).__name__
        last = "adam" if name == "Adam" else f"keras.optimizers.{name}"
        raise ValueError(f"chain takes the optimizer last, after the gradient transforms (got "
                         f"it as link {links.index(optimizers[0]) + 1} of {len(links)}): write "
                         f"chain({transforms}, {last}(...))")
    return MetaOptimizer(links[-1], links[:-1])


def meta_optimizer(value) -> MetaOptimizer:
    """``value`` as a :class:`MetaOptimizer`: None is the original's Adam (β = 1e-3), a Keras
    optimiser is used as it is (guarded)."""
    if isinstance(value, MetaOptimizer):
        return value
    return MetaOptimizer(adam() if value is None else value)


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
