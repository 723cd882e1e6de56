"""MAML++'s training schedules (Antoniou, Edwards & Storkey, "How to train your MAML",
ICLR 2019), as functions of the meta-iteration.

The tricks themselves are options of :class:`tf_maml.MetaLearner` (:mod:`tf_maml.options`)
over the one inner loop (:func:`tf_maml.adapt.adapt`); this module holds only the two
schedules they need:

* :func:`msl_step_weights`: the multi-step loss (MSL) weights of the query loss after each
  inner step, annealed from uniform towards the last step;
* :func:`cosine_meta_lr`: the meta learning rate annealed along a cosine to a minimum.

Both are written for a meta-iteration that may be a tensor (the meta-optimiser's step
count, read inside a compiled train step), so a schedule never retraces the step.
"""

from __future__ import annotations

import math
import numbers

import keras
import tensorflow as tf

from tf_maml.errors import is_count

# MAML++'s floor for the weight of each non-final step, times the number of steps
# (the reference code's `0.03 / number_of_training_steps_per_iter`).
MSL_MIN_WEIGHT = 0.03


def msl_step_weights(iteration, num_steps: int, anneal_iterations: int,
                     dtype=tf.float32) -> tf.Tensor:
    """MSL's weights ``[num_steps]`` of the query losses after inner steps 1..S.

    With S = ``num_steps`` and progress p = ``iteration / anneal_iterations`` (MAML++'s
    epoch over its ``multi_step_loss_num_epochs``), each non-final step weighs
    max(1/S − p/S, 0.03/S) and the last step min(1/S + p(S−1)/S, 1 − (S−1)·0.03/S): uniform
    at the start, then weight moves to the last step at the same rate until the non-final
    steps reach their floor. From ``anneal_iterations`` on MAML++ optimises the last step's
    loss alone; :class:`tf_maml.MetaLearner` then switches to the plain MAML objective (the
    one-hot weights ``[0, ..., 0, 1]``).

    The reference evaluates p once per epoch (500 iterations), a staircase; here p moves
    every iteration, the same curve sampled finer.
    """
    s = float(num_steps)
    p = tf.cast(iteration, dtype) / tf.cast(anneal_iterations, dtype)
    floor = MSL_MIN_WEIGHT / s
    non_final = tf.maximum(1.0 / s - p / s, floor)
    last = tf.minimum(1.0 / s + p * (s - 1.0) / s, 1.0 - (s - 1.0) * floor)
    return tf.concat([tf.fill([num_steps - 1], non_final), tf.reshape(last, [1])], 0)


def check_meta_lr(value, what: str) -> float:
    """``value``, a meta learning rate β, as a float; a ValueError naming ``what`` it is
    unless it is a finite number > 0 (Keras takes a negative one and ascends the
    meta-objective, and says only "should be float" of an int or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what}, the meta learning rate β, must be a number > 0 (the "
                         f"original's is 1e-3), got {value!r}")
    return float(value)


def cosine_meta_lr(meta_lr: float, min_meta_lr: float, iterations: int):
    """The meta learning rate after t meta-steps,
    min + (β − min)·(1 + cos(π·min(t, T)/T))/2 with T = ``iterations``: PyTorch's
    ``CosineAnnealingLR`` that MAML++ used, as a Keras schedule (``CosineDecay`` with
    α = min/β is exactly this curve). MAML++ stepped it once per epoch; here every step."""
    meta_lr = check_meta_lr(meta_lr, "cosine's meta_lr")
    if isinstance(min_meta_lr, bool) or not isinstance(min_meta_lr, numbers.Real) \
            or not (math.isfinite(min_meta_lr) and 0 <= min_meta_lr <= meta_lr):
        raise ValueError(f"min_meta_lr must be in [0, meta_lr={meta_lr}], got {min_meta_lr!r}")
    if not is_count(iterations, 1):  # else 2.5 was truncated to 2 without a word
        raise ValueError(f"cosine annealing needs a whole number of iterations >= 1, got "
                         f"{iterations!r}")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=meta_lr, decay_steps=int(iterations),
        alpha=min_meta_lr / meta_lr)


__all__ = ["MSL_MIN_WEIGHT", "check_meta_lr", "cosine_meta_lr", "msl_step_weights"]
