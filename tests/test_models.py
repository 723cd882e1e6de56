"""The original MAML networks in Keras (tf_maml.models): shapes, and normalisation semantics.

Batch norm must behave as ``tf.contrib.layers.batch_norm(is_training=True)`` did in the
original: an offset beta and no scale, eps 1e-3, and the statistics of the batch at hand, at
meta-train and meta-test time alike (cbfinn/maml issues #9, #37).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import adapt, losses, models
from tf_maml.api import MetaLearner
from tf_maml.mapping import ExecutionPlan

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.random(shape, dtype=np.float32)


def intermediate_shapes(model, names):
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    return [tuple(t.shape[1:]) for t in probe.outputs]


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("ways", [5, 20])
def test_omniglot_conv4_shapes(ways):
    model = models.conv4((28, 28, 1), ways)
    assert model(rand(3, 28, 28, 1), training=True).shape == (3, ways)
    # stride-2 SAME convs 28 -> 14 -> 7 -> 4 -> 2, 64 filters, then the spatial mean
    assert intermediate_shapes(model, ["relu1", "relu2", "relu3", "relu4", "spatial_mean"]) == [
        (14, 14, 64), (7, 7, 64), (4, 4, 64), (2, 2, 64), (64,)]
    assert all(model.get_layer(f"conv{i}").strides == (2, 2) for i in range(1, 5))
    assert model.get_layer("logits").kernel.shape == (64, ways)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)


def test_miniimagenet_conv4_shapes():
    model = models.conv4((84, 84, 3), 5, num_filters=32, max_pool=True)
    assert model(rand(2, 84, 84, 3), training=True).shape == (2, 5)
    # stride-1 convs, each followed by a 2x2 VALID max-pool: 84 -> 42 -> 21 -> 10 -> 5
    assert intermediate_shapes(model, ["pool1", "pool2", "pool3", "pool4", "flatten"]) == [
        (42, 42, 32), (21, 21, 32), (10, 10, 32), (5, 5, 32), (800,)]
    assert all(model.get_layer(f"conv{i}").strides == (1, 1) for i in range(1, 5))
    assert model.get_layer("conv1").kernel.shape == (3, 3, 3, 32)
    assert model.get_layer("logits").kernel.shape == (800, 5)
    # 32 773 trainable floats, as the original checkpoint model59000
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 32773


def test_fc_net_shapes():
    omniglot = models.fc_net((28, 28, 1), (256, 128, 64, 64), 5, norm="batch_norm")
    assert omniglot(rand(4, 28, 28, 1), training=True).shape == (4, 5)
    assert [omniglot.get_layer(f"dense{i}").kernel.shape for i in range(1, 6)] == [
        (784, 256), (256, 128), (128, 64), (64, 64), (64, 5)]
    sine = models.fc_net((1,), (40, 40), 1)
    assert sine(rand(7, 1)).shape == (7, 1)
    assert [v.shape for v in sine.trainable_variables] == [(1, 40), (40,), (40, 40), (40,),
                                                           (40, 1), (1,)]
    assert not any(layer.name.startswith("norm") for layer in sine.layers)  # norm="None"


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="--norm='batchnorm'"):
        models.conv4((28, 28, 1), 5, norm="batchnorm")


# --------------------------------------------------------------------------- batch norm
def test_batch_norm_has_only_an_offset():
    model = models.conv4((84, 84, 3), 5, num_filters=32, max_pool=True)
    for i in range(1, 5):
        bn = model.get_layer(f"norm{i}")
        assert isinstance(bn, keras.layers.BatchNormalization)
        assert bn.center and not bn.scale and bn.gamma is None
        assert bn.epsilon == pytest.approx(1e-3)
        assert [v.path for v in bn.trainable_variables] == [f"norm{i}/beta"]
    # the inner loop leaves beta alone (the original's weights dict had no norm parameters)
    mask = adapt.adapted_mask(model)
    frozen = [v.path for v, m in zip(model.trainable_variables, mask) if not m]
    assert frozen == [f"norm{i}/beta" for i in range(1, 5)]


def bn_by_hand(x: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """contrib batch_norm(is_training=True, scale=False): batch moments over every axis but
    the last, biased variance, eps 1e-3, then + beta."""
    axes = tuple(range(x.ndim - 1))
    x = x.astype(np.float64)
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    return (x - mean) / np.sqrt(var + 1e-3) + beta


@pytest.mark.parametrize("shape", [(6, 5, 5, 4), (8, 7)])
def test_batch_norm_uses_the_statistics_of_the_batch_at_hand(shape):
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, models.normalization("batch_norm", "bn")(inputs))
    beta = RNG.normal(size=shape[-1]).astype(np.float32)
    model.get_layer("bn").beta.assign(beta)
    weights = [v.value for v in model.trainable_variables]
    x = RNG.normal(2.0, 3.0, size=shape).astype(np.float32)
    out = adapt.forward(model, weights, tf.constant(x)).numpy()
    np.testing.assert_allclose(out, bn_by_hand(x, beta), atol=1e-5)
    # same example, other companions: other output, again the batch-statistics one
    x2 = x.copy()
    x2[1:] = RNG.normal(-1.0, 0.5, size=x2[1:].shape)
    out2 = adapt.forward(model, weights, tf.constant(x2)).numpy()
    np.testing.assert_allclose(out2, bn_by_hand(x2, beta), atol=1e-5)
    assert np.abs(out2[0] - out[0]).max() > 0.1
    # the moving statistics were neither updated nor used
    bn = model.get_layer("bn")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), 0)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), 1)
    inference = model(x, training=False).numpy()  # moving stats: (x - 0) / sqrt(1 + eps) + b
    np.testing.assert_allclose(inference, x / np.sqrt(1 + 1e-3) + beta, rtol=1e-5, atol=1e-5)
    assert np.abs(inference - out).max() > 0.1


def omniglot_forward_by_hand(model, x: np.ndarray) -> np.ndarray:
    """The original's strided forward_conv with tf.nn ops and the model's arrays."""
    h = tf.constant(x)
    for i in range(1, 5):
        conv = model.get_layer(f"conv{i}")
        h = tf.nn.conv2d(h, conv.kernel.numpy(), [1, 2, 2, 1], "SAME") + conv.bias.numpy()
        mean, var = tf.nn.moments(h, axes=[0, 1, 2])
        h = tf.nn.relu((h - mean) / tf.sqrt(var + 1e-3) + model.get_layer(f"norm{i}").beta)
    h = tf.reduce_mean(h, axis=[1, 2])
    head = model.get_layer("logits")
    return (h @ head.kernel.numpy() + head.bias.numpy()).numpy()


def test_conv4_forward_is_the_originals_with_batch_statistics():
    keras.utils.set_random_seed(3)
    model = models.conv4((28, 28, 1), 5, num_filters=16)
    for i in range(1, 5):  # non-trivial offsets and biases
        model.get_layer(f"norm{i}").beta.assign(RNG.normal(size=16).astype(np.float32))
        model.get_layer(f"conv{i}").bias.assign(RNG.normal(size=16).astype(np.float32))
    weights = [v.value for v in model.trainable_variables]
    x = rand(5, 28, 28, 1)
    out = adapt.forward(model, weights, tf.constant(x)).numpy()
    np.testing.assert_allclose(out, omniglot_forward_by_hand(model, x), rtol=1e-4, atol=1e-4)
    x2 = np.concatenate([x[:1], rand(9, 28, 28, 1)])  # example 0 among other companions
    out2 = adapt.forward(model, weights, tf.constant(x2)).numpy()
    np.testing.assert_allclose(out2, omniglot_forward_by_hand(model, x2), rtol=1e-4, atol=1e-4)
    assert np.abs(out2[0] - out[0]).max() > 1e-3


def test_fc_net_forward_with_batch_norm():
    keras.utils.set_random_seed(4)
    model = models.fc_net((28, 28, 1), (256, 128, 64, 64), 5, norm="batch_norm")
    for i in range(1, 5):
        bn = model.get_layer(f"norm{i}")
        bn.beta.assign(RNG.normal(size=bn.beta.shape).astype(np.float32))
    x = rand(10, 28, 28, 1)
    h = x.reshape(10, -1).astype(np.float64)
    for i in range(1, 5):
        dense = model.get_layer(f"dense{i}")
        h = h @ dense.kernel.numpy() + dense.bias.numpy()
        h = np.maximum(bn_by_hand(h, model.get_layer(f"norm{i}").beta.numpy()), 0)
    head = model.get_layer("dense5")
    want = h @ head.kernel.numpy() + head.bias.numpy()
    got = adapt.forward(model, [v.value for v in model.trainable_variables], tf.constant(x))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_evaluation_uses_batch_statistics_too():
    """At meta-test the query set is normalised with its own statistics, as in training:
    step 0 of evaluate_batch is the query loss of a training-mode forward pass."""
    keras.utils.set_random_seed(5)
    model = models.conv4((28, 28, 1), 5, num_filters=8)
    loss_fn = losses.summed_xent(1)
    learner = MetaLearner(model, loss_fn, inner_lr=0.4,
                          inner_steps=1).use_plan(ExecutionPlan("loop"))
    sx, qx = rand(1, 5, 28, 28, 1), rand(1, 5, 28, 28, 1)
    sy = qy = np.arange(5, dtype=np.int32)[None]
    got = learner.evaluate_batch((sx, sy, qx, qy), 0)["loss"].numpy()[0, 0]
    train_mode = float(loss_fn(qy[0], model(qx[0], training=True)))
    inference = float(loss_fn(qy[0], model(qx[0], training=False)))
    assert got == pytest.approx(train_mode, rel=1e-5)
    assert abs(inference - train_mode) > 1e-3
    np.testing.assert_allclose(learner.predict(qx[0]).numpy(),
                               model(qx[0], training=True).numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- layer norm
@pytest.mark.parametrize("shape", [(3, 6, 6, 4), (5, 9)])
def test_contrib_layer_norm_normalises_over_every_non_batch_axis(shape):
    layer = models.normalization("layer_norm", "ln")
    x = RNG.normal(1.0, 2.0, size=shape).astype(np.float32)
    layer.build(x.shape)
    gamma = RNG.normal(size=shape[-1]).astype(np.float32)
    beta = RNG.normal(size=shape[-1]).astype(np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    axes = tuple(range(1, len(shape)))
    xd = x.astype(np.float64)
    mean = xd.mean(axis=axes, keepdims=True)
    var = ((xd - mean) ** 2).mean(axis=axes, keepdims=True)
    want = (xd - mean) / np.sqrt(var + 1e-12) * gamma + beta
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-4, atol=1e-4)
    # per example: the output of one example does not depend on the others
    np.testing.assert_allclose(layer(x[:1]).numpy(), want[:1], rtol=1e-4, atol=1e-4)
    if len(shape) == 4:  # not keras' LayerNormalization(axis=-1), which uses channels only
        keras_ln = keras.layers.LayerNormalization(axis=-1, epsilon=1e-12)
        assert np.abs(keras_ln(x).numpy() - (want - beta) / gamma).max() > 1e-2
