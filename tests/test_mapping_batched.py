"""The batched-task mapping (tf_maml.mapping.batched) against the per-task unrolled loop
(ExecutionPlan("loop")): forward passes, meta-gradients (second order, first
order, two inner steps, pretrain, Meta-SGD, Reptile) and evaluation, on the paper's
architectures and a plain MLP; and the models it must refuse."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import adapt, losses, options
from tf_maml.api import MetaLearner
from tf_maml.mapping import ExecutionPlan, batched
from tf_maml.models import conv4, fc_net

# Compared in float64, where the only difference from the per-task loop is the order of
# float additions, so agreement is to ~1e-12; a float32 run is checked more loosely.
RTOL, ATOL = 1e-9, 1e-12

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def _classification_batch(rng, shape, tasks=3, n=5, k=1, q=2):
    return (rng.uniform(size=(tasks, n * k) + shape).astype(keras.config.floatx()),
            np.tile(np.arange(n, dtype="int32"), (tasks, k)),
            rng.uniform(size=(tasks, n * q) + shape).astype(keras.config.floatx()),
            np.tile(np.arange(n, dtype="int32"), (tasks, q)))


def omniglot_conv():
    return conv4((28, 28, 1), 5, num_filters=8), (28, 28, 1)


def miniimagenet_conv():
    # max-pool variant on tiny 21x21 inputs: 21 -> 10 -> 5 -> 2 -> 1
    return conv4((21, 21, 3), 5, num_filters=8, max_pool=True), (21, 21, 3)


def layer_norm_conv():
    return conv4((28, 28, 1), 5, num_filters=8, norm="layer_norm"), (28, 28, 1)


def no_norm_conv():
    return conv4((28, 28, 1), 5, num_filters=8, norm="None"), (28, 28, 1)


def fc_batch_norm():
    return fc_net((28, 28, 1), (32, 16), 5, norm="batch_norm"), (28, 28, 1)


def odd_conv():
    """Other kernel sizes, strides, VALID padding, no bias, relu activation, BN scale."""
    model = keras.Sequential([
        keras.Input((13, 11, 2)),
        keras.layers.Conv2D(6, (5, 3), strides=(2, 1), padding="valid", use_bias=False,
                            activation="relu"),
        keras.layers.BatchNormalization(scale=True, center=False, epsilon=1e-2),
        keras.layers.Conv2D(4, 1),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(5, 2, strides=2, padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(5),
    ])
    return model, (13, 11, 2)


CLASSIFIERS = {
    "omniglot_conv": omniglot_conv,
    "miniimagenet_conv": miniimagenet_conv,
    "layer_norm_conv": layer_norm_conv,
    "no_norm_conv": no_norm_conv,
    "fc_batch_norm": fc_batch_norm,
    "odd_conv": odd_conv,
}


def _build(name):
    keras.utils.set_random_seed(1)
    return CLASSIFIERS[name]()


def _learners(model, meta_lr=None, **kwargs):
    """(every task batched, the per-task loop reference): two learners over the SAME model,
    each with its own meta-optimiser (Adam at ``meta_lr``, default the learner's)."""
    kwargs = {"loss_fn": losses.summed_xent(1), "inner_lr": 0.4,
              "objective": options.LastStep(losses.accuracy), **kwargs}
    return tuple(MetaLearner(model, **kwargs, meta_optimizer=meta_lr and options.adam(meta_lr))
                 .use_plan(ExecutionPlan(mode)) for mode in ("batched", "loop"))


def _flat(grads):
    return np.concatenate([np.asarray(g).ravel() for g in grads])


def _assert_same(got, expected, rtol=RTOL, atol=ATOL):
    got_grads, got_metrics = got
    exp_grads, exp_metrics = expected
    assert len(got_grads) == len(exp_grads)
    for g, e in zip(got_grads, exp_grads):
        assert g.shape == e.shape and g.dtype == e.dtype
    exp_flat = _flat(exp_grads)
    np.testing.assert_allclose(_flat(got_grads), exp_flat, rtol=rtol,
                               atol=atol * np.max(np.abs(exp_flat)))
    assert set(got_metrics) == set(exp_metrics)
    for key in exp_metrics:
        np.testing.assert_allclose(float(got_metrics[key]), float(exp_metrics[key]),
                                   rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_forward_matches_per_task_stateless_call(name):
    model, shape = _build(name)
    assert batched.supports(model), batched.unsupported_reason(model)
    rng = np.random.default_rng(0)
    tasks = 3
    stacked = [tf.constant(rng.normal(size=(tasks,) + tuple(v.shape)) * 0.3)
               for v in model.trainable_variables]
    x = tf.constant(rng.uniform(size=(tasks, 4) + shape))
    got = batched.batched_forward(model, stacked, x)
    expected = tf.stack([adapt.forward(model, [w[t] for w in stacked], x[t])
                         for t in range(tasks)])
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name, first_order, steps", [
    *((name, False, 1) for name in CLASSIFIERS),
    *((name, True, 1) for name in ("omniglot_conv", "miniimagenet_conv", "odd_conv")),
    *((name, False, 2) for name in ("omniglot_conv", "layer_norm_conv", "fc_batch_norm")),
])
def test_meta_gradients_match_per_task_loop(name, first_order, steps):
    model, shape = _build(name)
    learner, reference = _learners(model, inner_steps=steps, first_order=first_order)
    batch = _classification_batch(np.random.default_rng(0), shape)
    assert (learner.task_mapping(batch), reference.task_mapping(batch)) == ("batched", "loop")
    _assert_same(learner.meta_gradients(batch), reference.meta_gradients(batch))


@pytest.mark.parametrize("name", ["omniglot_conv", "fc_batch_norm"])
def test_pretrain_gradients_match_per_task_loop(name):
    model, shape = _build(name)
    learner, reference = _learners(model)
    batch = _classification_batch(np.random.default_rng(1), shape)
    _assert_same(learner.meta_gradients(batch, pretrain=True),
                 reference.meta_gradients(batch, pretrain=True))


def test_meta_sgd_and_adapted_norm_match_per_task_loop():
    # float32: MetaLearner creates the Meta-SGD learning rates as float32 variables.
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    model, shape = _build("fc_batch_norm")
    learner, reference = _learners(model, inner_steps=2, inner_lr=options.MetaSGD(0.4),
                                   adapt="all+norm")
    rng = np.random.default_rng(2)
    for a, b in zip(learner.inner_lrs, reference.inner_lrs):
        value = rng.uniform(0.1, 0.5, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    batch = _classification_batch(rng, shape)
    got = learner.meta_gradients(batch)
    assert len(got[0]) == 2 * len(model.trainable_variables)
    _assert_same(got, reference.meta_gradients(batch), rtol=1e-4, atol=2e-5)


def test_reptile_matches_per_task_loop():
    model, shape = _build("omniglot_conv")
    learner, reference = _learners(model, inner_steps=2,
                                   objective=options.Reptile(losses.accuracy))
    batch = _classification_batch(np.random.default_rng(3), shape)
    _assert_same(learner.reptile_gradients(batch), reference.reptile_gradients(batch))


@pytest.fixture
def eager_functions():
    """MetaLearner.evaluate_batch without tracing its tf.function (faster here)."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.mark.parametrize("name", ["miniimagenet_conv", "fc_batch_norm"])
def test_evaluation_matches_per_task_loop(name, eager_functions):
    model, shape = _build(name)
    learner, reference = _learners(model)
    batch = _classification_batch(np.random.default_rng(4), shape, q=3)
    expected = reference.evaluate_batch(batch, 2)
    got = learner.evaluate_batch(batch, 2)
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].shape == expected[key].shape == (3, 3)
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=RTOL, atol=ATOL)


def test_mlp_regression_with_mse_matches_per_task_loop():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(16), keras.layers.Activation("relu"),
                              keras.layers.Dense(1)])
    learner, reference = _learners(model, loss_fn=losses.mse, objective=None, inner_lr=0.05,
                                   inner_steps=2)
    rng = np.random.default_rng(5)
    x = rng.uniform(-5, 5, size=(4, 20, 1))
    y = rng.uniform(0.1, 5, size=(4, 1, 1)) * np.sin(x)
    batch = (x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])
    _assert_same(learner.meta_gradients(batch), reference.meta_gradients(batch))
    tf.config.run_functions_eagerly(True)
    try:
        expected = reference.evaluate_batch(batch, 2)["loss"].numpy()
    finally:
        tf.config.run_functions_eagerly(False)
    got = learner.evaluate_batch(batch, 2)["loss"].numpy()
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_float32_second_order_agrees_within_float32_rounding():
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    model, shape = _build("omniglot_conv")
    learner, reference = _learners(model)
    batch = _classification_batch(np.random.default_rng(7), shape)
    got = learner.meta_gradients(batch)
    assert got[0][0].dtype == tf.float32
    # atol relative to the largest gradient element. (With 2 inner steps float32 rounding
    # is amplified ~100x in the second-order terms that tf.nn.moments' stop_gradient adds
    # through batch norm, in whichever summation order: compare those in float64.)
    _assert_same(got, reference.meta_gradients(batch), rtol=1e-4, atol=2e-5)


def test_inside_tf_function_matches_eager():
    model, shape = _build("odd_conv")
    learner, _ = _learners(model)
    batch = tuple(tf.constant(t) for t in _classification_batch(np.random.default_rng(6), shape))
    eager = learner.meta_gradients(batch)
    graph = tf.function(lambda b: learner.meta_gradients(b))(batch)
    _assert_same(graph, eager)


@pytest.mark.parametrize("extra", [
    keras.layers.Dropout(0.5),
    keras.layers.LayerNormalization(),
    keras.layers.Dense(4, activation=lambda x: x * 2.0),
])
def test_unsupported_layers_are_refused(extra):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), extra,
                              keras.layers.Dense(2)])
    assert not batched.supports(model)
    assert batched.unsupported_reason(model)


def test_recurrent_and_branching_models_are_refused():
    rnn = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4), keras.layers.Dense(2)])
    assert not batched.supports(rnn)
    inputs = keras.Input((6,))
    branch = keras.layers.Add()([keras.layers.Dense(4)(inputs), keras.layers.Dense(4)(inputs)])
    assert not batched.supports(keras.Model(inputs, keras.layers.Dense(2)(branch)))
    frozen = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    frozen.layers[0].trainable = False
    assert not batched.supports(frozen)


def test_patch_bytes_counts_im2col_patches():
    model, _ = _build("omniglot_conv")
    # 28 -> 14 -> 7 -> 4 -> 2, 3x3 kernels, 1 then 8 input channels, float64
    per_image = 8 * (14 * 14 * 9 * 1 + 7 * 7 * 9 * 8 + 4 * 4 * 9 * 8 + 2 * 2 * 9 * 8)
    assert batched.patch_bytes(model, [(3, 5, 28, 28, 1)]) == 15 * per_image
    assert batched.patch_bytes(model, [(3, 5, 28, 28, 1), (3, 2, 28, 28, 1)]) == 21 * per_image
    mlp, _ = _build("fc_batch_norm")
    assert batched.patch_bytes(mlp, [(3, 5, 28, 28, 1)]) == 0


def test_meta_learner_batched_mode_trains_like_the_loop():
    model, shape = _build("odd_conv")
    twin, _ = _build("odd_conv")
    batch = _classification_batch(np.random.default_rng(8), shape)
    fast, _ = _learners(model, meta_lr=0.01)
    _, slow = _learners(twin, meta_lr=0.01)
    for learner in (fast, slow):
        learner.train_step(batch)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_auto_batches_conv_nets_within_the_patch_budget():
    conv, shape = _build("omniglot_conv")
    auto = MetaLearner(conv, losses.summed_xent(1), inner_lr=0.4)
    batch = _classification_batch(np.random.default_rng(8), shape)
    assert isinstance(auto.plan.for_tasks(conv, batch), batched.Batched)
    assert auto.task_mapping(batch) == "batched"
    # MiniImageNet 5-way 1-shot: GBs of im2col patches, over the budget: map_fn
    mini = conv4((84, 84, 3), 5, num_filters=32, max_pool=True)
    plan = ExecutionPlan()
    x, y = tf.TensorSpec((2, 5, 84, 84, 3)), tf.TensorSpec((2, 5))
    assert plan.for_tasks(mini, (x, y, tf.TensorSpec((2, 75, 84, 84, 3)), y)).name == "map"
    assert isinstance(plan.for_tasks(mini, (x, y, x, y)), batched.Batched)
