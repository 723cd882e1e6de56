"""tf_maml.keras_internals: each use of Keras' private API on a known model, so that a Keras
release that changes one fails here, by name, before any meta-gradient goes quietly wrong."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import keras_internals


def _chain():
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.ReLU(name="relu")(hidden))
    return keras.Model(inputs, outputs)


def test_layers_of_finds_nested_layers():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="inner_dense")],
                             name="inner")
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1, name="outer_dense")])
    names = [layer.name for layer in keras_internals.layers_of(outer)]
    assert {"inner", "inner_dense", "outer_dense"} <= set(names)
    assert outer.name in names
    assert outer.name not in [layer.name for layer in
                              keras_internals.layers_of(outer, include_self=False)]


def test_functional_graph_is_walked_back_to_its_input():
    model = _chain()
    assert keras_internals.is_functional(model)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not keras_internals.is_functional(Subclassed())
    names, tensor = [], model.outputs[0]
    while (call := keras_internals.producer(tensor)) is not None:
        layer, inputs, args, kwargs = call
        if isinstance(layer, keras.layers.InputLayer):
            break
        assert len(inputs) == 1 and len(args) == 1
        assert all(v is None for v in kwargs.values())
        names.append(layer.name)
        tensor = inputs[0]
    assert names == ["head", "relu", "hidden"]
    assert tensor is model.inputs[0]


def test_batch_norm_statistics_route_through_the_moments_hook():
    # Keras' layer must still compute its training statistics in BatchNormalization._moments
    # (over _reduction_axes): if a release moves them, the hook stops being called.
    layer = keras.layers.BatchNormalization()
    layer.build((None, 3, 3, 2))
    assert list(layer._reduction_axes) == [0, 1, 2]
    calls = []

    def spy(inputs, mask):
        calls.append(mask)
        return keras_internals.exact_moments(inputs, layer._reduction_axes)

    layer._moments = spy
    layer(tf.ones((2, 3, 3, 2)), training=True)
    assert calls == [None]


def test_exact_moments_have_exact_second_derivatives():
    # var(x) = mean((x - mean x)²) over N values: ∂²var/∂x_i∂x_k = 2/N (δ_ik − 1/N).
    # tf.nn.moments (Keras' own) gives 2/N δ_ik: the −2/N² is lost with the stopped mean.
    x = tf.constant(np.random.default_rng(0).normal(size=(5,)))
    n = 5
    want = 2.0 / n * (np.eye(n) - 1.0 / n)

    def hessian(moments):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                _, variance = moments(x)
            grad = inner.gradient(variance, x)
        return outer.jacobian(grad, x).numpy()

    np.testing.assert_allclose(hessian(lambda t: keras_internals.exact_moments(t, [0])), want,
                               atol=1e-12)
    assert np.max(np.abs(hessian(lambda t: tf.nn.moments(t, [0])) - want)) > 1e-2


@pytest.mark.parametrize("mask", [False, True])
def test_use_exact_moments_keeps_values_and_is_idempotent(mask):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 3))
    outputs = keras.layers.BatchNormalization()(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(2, 4, 3)).astype("float32")
    m = np.array([[1, 1, 0, 1], [1, 0, 1, 1]], bool) if mask else None
    layer = model.layers[-1]
    before = layer(x, training=True, mask=m).numpy()
    keras_internals.use_exact_moments(model)
    hook = layer.__dict__["_moments"]
    keras_internals.use_exact_moments(model)
    assert layer.__dict__["_moments"] is hook
    np.testing.assert_allclose(layer(x, training=True, mask=m).numpy(), before, rtol=1e-5,
                               atol=1e-6)
    # Keras' own layers elsewhere are untouched: no global was changed.
    assert "_moments" not in keras.layers.BatchNormalization().__dict__
