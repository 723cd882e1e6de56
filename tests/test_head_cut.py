"""The one cut of a model at its head (tf_maml.adapt.head_cut) and what is built on it: the
per-task and batched forward passes in two parts, and the baselines' body.

The truth for the body's features is Keras' own graph: the sub-model from the model's input
to the head layer's input, called as Keras calls it.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_meta_gradients import subclassed_two_dense

from tf_maml import adapt as adapt_lib
from tf_maml import baselines, models
from tf_maml.mapping.batched import Batched


def test_the_cut_serves_keras_the_per_task_pass_and_the_batched_pass():
    keras.utils.set_random_seed(7)
    model = models.conv4((28, 28, 1), 5, num_filters=4, max_pool=False, norm="batch_norm")
    cut = adapt_lib.head_cut(model)
    assert cut.head_layer is model.get_layer("logits")
    assert [v.path for v in cut.head_layer.trainable_variables] == [
        model.trainable_variables[i].path for i in sorted(cut.head_indices)]
    x = np.random.default_rng(0).random((2, 6, 28, 28, 1), dtype=np.float32)
    theta = [v.value for v in model.trainable_variables]

    # Keras' own sub-model up to the head's input, in training mode (batch statistics).
    want = np.stack([baselines.body(model)(x[t], training=True).numpy() for t in range(2)])
    split = adapt_lib.model_split(model)
    per_task = np.stack([split.body(theta, x[t]).numpy() for t in range(2)])
    runner = Batched(model).runner((x, np.zeros((2, 6)), x, np.zeros((2, 6))))
    batched = runner.split.body(runner.weights(theta), tf.constant(x)).numpy()
    np.testing.assert_allclose(per_task, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched, want, rtol=1e-4, atol=1e-4)
    # ... and the head on those features is the whole model.
    whole = np.stack([model(x[t], training=True).numpy() for t in range(2)])
    np.testing.assert_allclose(split.head(theta, tf.constant(want[0])).numpy(), whole[0],
                               rtol=1e-5, atol=1e-5)


def test_a_model_without_a_chain_has_no_cut_and_the_baselines_say_why():
    model = subclassed_two_dense()
    assert adapt_lib.head_cut(model) is None
    with pytest.raises(ValueError, match="cannot be cut before its head: .*subclassed"):
        baselines.body(model)
