"""The Gaussian MLP policy of the paper's RL experiments and its distribution maths.

A policy is any built Keras model mapping observations ``[B, obs_dim]`` to
``[B, 2 * act_dim]``: the mean of a diagonal Gaussian over actions, then its log standard
deviation. :func:`gaussian_mlp_policy` builds the paper's: two hidden layers of 100 ReLU
units and a learned, state-independent log-std (:class:`StateIndependentLogStd`, a trainable
weight of the model, so :mod:`tf_maml.adapt` adapts it in the inner loop like every other
weight).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

LOG_2PI = math.log(2.0 * math.pi)


@keras.saving.register_keras_serializable(package="tf_maml")
class StateIndependentLogStd(keras.layers.Layer):
    """Appends a learned log standard deviation to the mean: ``[B, d] -> [B, 2d]``.

    The log-std is one trainable vector of ``d`` values, the same for every state (rllab's
    ``GaussianMLPPolicy(learn_std=True, adaptive_std=False)``), initialised to
    ``log(init_std)``.
    """

    def __init__(self, init_std: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.init_std = float(init_std)

    def build(self, input_shape):
        self.log_std = self.add_weight(
            shape=(input_shape[-1],), name="log_std",
            initializer=keras.initializers.Constant(math.log(self.init_std)))

    def call(self, mean):
        log_std = ops.broadcast_to(ops.cast(self.log_std, mean.dtype), ops.shape(mean))
        return ops.concatenate([mean, log_std], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "init_std": self.init_std}


POLICY_HIDDEN = (100, 100)  # the paper's: two hidden layers of 100 ReLU units


def gaussian_mlp_policy(observation_dim: int, action_dim: int, hidden=POLICY_HIDDEN,
                        init_std: float = 1.0, name: str = "gaussian_mlp_policy",
                        dtype: str | None = None) -> keras.Model:
    """The paper's policy: ``hidden`` ReLU layers (100, 100), a linear mean head and a
    state-independent learned log-std. Glorot-uniform weights and zero biases (rllab's
    Xavier initialisation); weights drawn from Keras' global seed. ``dtype`` (e.g.
    ``"float64"`` for finite-difference tests) defaults to Keras' float type."""
    inputs = keras.Input((observation_dim,), name="observation", dtype=dtype)
    h = inputs
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}", dtype=dtype)(h)
    mean = keras.layers.Dense(action_dim, name="mean", dtype=dtype)(h)
    outputs = StateIndependentLogStd(init_std, name="log_std", dtype=dtype)(mean)
    return keras.Model(inputs, outputs, name=name)


def split(preds: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean, log_std) from a policy output ``[..., 2d]``."""
    d = preds.shape[-1]
    if d is None or d % 2:
        raise ValueError(f"a Gaussian policy outputs [mean, log_std] with an even last "
                         f"dimension, got shape {preds.shape}")
    return preds[..., : d // 2], preds[..., d // 2:]


def log_prob(actions: tf.Tensor, mean: tf.Tensor, log_std: tf.Tensor) -> tf.Tensor:
    """log N(actions; mean, diag(exp(log_std)²)), summed over the action dimensions."""
    z = (actions - mean) * tf.exp(-log_std)
    return tf.reduce_sum(-0.5 * tf.square(z) - log_std - 0.5 * LOG_2PI, axis=-1)


def kl_divergence(mean_p, log_std_p, mean_q, log_std_q) -> tf.Tensor:
    """KL(p ‖ q) of two diagonal Gaussians, summed over the action dimensions."""
    var_p, var_q = tf.exp(2.0 * log_std_p), tf.exp(2.0 * log_std_q)
    return tf.reduce_sum(
        log_std_q - log_std_p + (var_p + tf.square(mean_p - mean_q)) / (2.0 * var_q) - 0.5,
        axis=-1)
