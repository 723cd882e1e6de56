"""Keras builders faithful to the original MAML networks (cbfinn/maml maml.py).

* :func:`fc_net`: the fully connected net. Sinusoid 1-40-40-1; Omniglot ``--conv=False``
  784-256-128-64-64-N. Kernels ~ truncated normal(0.01), biases zero; hidden layers are
  linear -> norm -> ReLU, the output layer is linear.
* :func:`conv4`: four blocks of [3x3 conv + bias -> norm -> ReLU (-> 2x2 max-pool)] then a
  head. Omniglot (strided, no pooling): spatial mean then dense with N(0, 1) kernel.
  MiniImageNet (``max_pool=True``): flatten (5*5*F) then Glorot-uniform dense.

Batch norm is ``BatchNormalization(center=True, scale=False, epsilon=1e-3)``, the defaults
of ``tf.contrib.layers.batch_norm``: an offset β and no scale. Call these models with
``training=True`` always (tf_maml.adapt does): the original used batch statistics at
meta-train and meta-test time.
"""

from __future__ import annotations

import keras
from keras import ops

NORMS = ("batch_norm", "layer_norm", "None")  # the original's --norm; "None": no normalization


@keras.saving.register_keras_serializable(package="tf_maml")
class ContribLayerNorm(keras.layers.Layer):
    """``tf.contrib.layers.layer_norm`` as the original used it.

    Normalises over every non-batch axis (H, W, C for a conv map), then applies a
    per-channel (last axis) scale γ and offset β; variance epsilon 1e-12. Keras'
    ``LayerNormalization(axis=-1)`` normalises over channels only, which is different.
    """

    _maml_normalization = True  # tf_maml.adapt keeps it out of the inner loop

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x):
        axes = list(range(1, len(x.shape)))
        mean = ops.mean(x, axis=axes, keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
        return (x - mean) * ops.rsqrt(var + 1e-12) * self.gamma + self.beta


@keras.saving.register_keras_serializable(package="tf_maml")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, with TensorFlow's fused kernel in training mode.

    In training mode on float32 NHWC feature maps (the conv nets) it runs
    ``tf.nn.fused_batch_norm``: the same batch statistics, an analytic gradient
    (FusedBatchNormGrad, whose own gradient is the analytic second derivative: only first
    derivatives of the moments enter it, and those are exact), in a few fused kernels
    instead of a dozen element-wise ops over the feature map. A MiniImageNet meta-step took
    15% less time. Elsewhere (float64, dense layers, ``fused_training = False`` on the class
    or a layer) it is Keras' layer, whose batch statistics tf_maml computes exactly to every
    order like those of any Keras batch norm (:mod:`tf_maml.keras_internals`).
    tests/test_fused_batch_norm.py checks the two against each other and against float64;
    finite differences check the exact one (tests/test_meta_gradients.py).
    """

    fused_training = True

    def call(self, inputs, training=None, mask=None):
        if self._fused(inputs, training, mask):
            return self._fused_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fused(self, inputs, training, mask) -> bool:
        return bool(
            self.fused_training and training and self.trainable and mask is None
            and not self.renorm and not self.synchronized
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4 and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) == "float32"
            and self.compute_dtype == "float32"
        )

    def _fused_call(self, inputs):
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = (ops.cast(self.gamma, inputs.dtype) if self.scale
                 else tf.ones([channels], inputs.dtype))
        offset = (ops.cast(self.beta, inputs.dtype) if self.center
                  else tf.zeros([channels], inputs.dtype))
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, epsilon=self.epsilon, is_training=True, data_format="NHWC")
        # Moving statistics as Keras updates them, with the biased batch variance (the
        # kernel returns the unbiased one); unused, and pruned, inside tf_maml.adapt.
        count = tf.cast(tf.size(inputs) // channels, inputs.dtype)
        variance = tf.math.multiply_no_nan(unbiased_variance,
                                           (count - 1.0) / tf.maximum(count, 1.0))
        momentum = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, inputs.dtype) * momentum
                                + mean * (1.0 - momentum))
        self.moving_variance.assign(ops.cast(self.moving_variance, inputs.dtype) * momentum
                                    + variance * (1.0 - momentum))
        return outputs


def normalization(norm: str, name: str) -> keras.layers.Layer | None:
    if norm == "batch_norm":
        return BatchNormalization(center=True, scale=False, epsilon=1e-3, name=name)
    if norm == "layer_norm":
        return ContribLayerNorm(name=name)
    if norm == "None":
        return None
    raise ValueError(f"--norm={norm!r} is not one of {', '.join(NORMS)}")


def fc_net(
    input_shape: tuple[int, ...],
    hidden: tuple[int, ...],
    num_outputs: int,
    norm: str = "None",
    name: str = "fc_net",
) -> keras.Model:
    """The original's ``construct_fc_weights`` / ``forward_fc`` as a functional model.

    A multi-dimensional input (an image) is flattened first, as the original did.
    """
    init = keras.initializers.TruncatedNormal(stddev=0.01)
    inputs = keras.Input(input_shape, name="inputs")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i, units in enumerate(hidden, start=1):
        x = keras.layers.Dense(units, kernel_initializer=init, name=f"dense{i}")(x)
        norm_layer = normalization(norm, f"norm{i}")
        if norm_layer is not None:
            x = norm_layer(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    outputs = keras.layers.Dense(
        num_outputs, kernel_initializer=init, name=f"dense{len(hidden) + 1}"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def conv4(
    input_shape: tuple[int, int, int],
    num_classes: int,
    num_filters: int = 64,
    max_pool: bool = False,
    norm: str = "batch_norm",
    name: str = "conv4",
) -> keras.Model:
    """The original's ``construct_conv_weights`` / ``forward_conv`` as a functional model.

    Without ``max_pool`` (Omniglot): stride-2 SAME convs (28->14->7->4->2), then the spatial
    mean and a dense layer with N(0, 1) kernel. With ``max_pool`` (MiniImageNet): stride-1
    SAME convs each followed by 2x2 VALID max-pool (84->42->21->10->5), then flatten and a
    Glorot-uniform dense layer.
    """
    inputs = keras.Input(input_shape, name="inputs")
    x = inputs
    for i in range(1, 5):
        x = keras.layers.Conv2D(
            num_filters, 3, strides=1 if max_pool else 2, padding="same",
            kernel_initializer="glorot_uniform", name=f"conv{i}",
        )(x)
        norm_layer = normalization(norm, f"norm{i}")
        if norm_layer is not None:
            x = norm_layer(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if max_pool:
            x = keras.layers.MaxPooling2D(2, 2, padding="valid", name=f"pool{i}")(x)
    if max_pool:
        x = keras.layers.Flatten(name="flatten")(x)
        head_init = "glorot_uniform"
    else:
        x = keras.layers.GlobalAveragePooling2D(name="spatial_mean")(x)
        head_init = keras.initializers.RandomNormal(stddev=1.0)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=head_init, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
