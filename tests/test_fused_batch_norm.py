"""tf_maml.models.BatchNormalization on float32 feature maps runs TensorFlow's fused kernel
(FusedBatchNormV3). Its second-order MAML meta-gradients must equal those of the exact-
moments graph it replaces, and those of the float64 model (never fused; checked against
finite differences in tests/test_meta_gradients.py), and its forward pass and moving
statistics those of Keras' own BatchNormalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import five_way_batch, keras_float, small_conv4

from tf_maml import losses, models
from tf_maml.api import MetaLearner
from tf_maml.mapping import ExecutionPlan


@pytest.fixture
def float32():
    with keras_float("float32"):
        yield
    models.BatchNormalization.fused_training = True


def _meta_gradients(model, batch, dtype):
    # accumulate, one task per chunk: the model's own layers, one task traced
    learner = MetaLearner(model, losses.summed_xent(1), inner_lr=0.4, inner_steps=1)
    learner.use_plan(ExecutionPlan("accumulate", tasks_per_chunk=1))
    batch = tuple(tf.constant(t.astype(dtype) if t.dtype.kind == "f" else t) for t in batch)
    fn = tf.function(lambda b: learner.meta_gradients(b)[0])
    graph_def = fn.get_concrete_function(batch).graph.as_graph_def()
    ops = {node.op for node in graph_def.node}  # and inside the while loop's body:
    ops |= {node.op for f in graph_def.library.function for node in f.node_def}
    return [g.numpy().astype("float64") for g in fn(batch)], ops


def test_fused_second_order_meta_gradients_match_exact_moments_and_float64(float32):
    keras.utils.set_random_seed(0)
    model = small_conv4()  # 12 -> 6 -> 3 -> 2 -> 1
    batch = five_way_batch(np.random.default_rng(0))  # float64: cast per run below
    fused, fused_ops = _meta_gradients(model, batch, "float32")
    assert "FusedBatchNormV3" in fused_ops and "FusedBatchNormGradV3" in fused_ops
    models.BatchNormalization.fused_training = False
    exact, exact_ops = _meta_gradients(model, batch, "float32")
    assert not any("FusedBatchNorm" in op for op in exact_ops)
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    twin = small_conv4()
    twin.set_weights([w.astype("float64") for w in model.get_weights()])
    truth, _ = _meta_gradients(twin, batch, "float64")
    scale = max(np.max(np.abs(t)) for t in truth)
    assert scale > 1.0
    for got, ref, t, v in zip(fused, exact, truth, model.trainable_variables):
        np.testing.assert_allclose(got, t, rtol=1e-3, atol=2e-5 * scale, err_msg=v.path)
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=2e-5 * scale, err_msg=v.path)
        if "conv" in v.path and "bias" in v.path:  # batch norm cancels them: exactly 0
            assert np.max(np.abs(got)) < 2e-5 * scale


def test_fused_forward_and_moving_statistics_match_keras(float32):
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, size=(6, 5, 4, 3)), tf.float32)
    ours = models.BatchNormalization(momentum=0.5, epsilon=1e-3, scale=True)
    theirs = keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-3, scale=True)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign([0.5, 1.0, 2.0])
        layer.beta.assign([0.1, -0.2, 0.3])
    y, expected = ours(x, training=True), theirs(x, training=True)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in ((ours.moving_mean, theirs.moving_mean),
                 (ours.moving_variance, theirs.moving_variance)):
        assert not np.allclose(b.numpy(), [0, 0, 0]) and not np.allclose(b.numpy(), [1, 1, 1])
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)
    # inference mode and other ranks keep Keras' own code
    np.testing.assert_allclose(ours(x, training=False).numpy(),
                               theirs(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
