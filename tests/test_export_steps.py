"""The exported ``adapt_and_predict`` against SGD steps written out by hand.

``tests/test_export.py`` compares the SavedModel with the library's own Python path; here
the truth is independent of :func:`tf_maml.adapt.adapt`: an MLP's forward pass in plain
TensorFlow ops and an eager ``tf.GradientTape`` loop of eq. 1 (Finn et al. 2017), with α
taken from the learner's variables as the paper defines it for each variant (MAML: the
scalar; Meta-SGD: one per element; LSLR: one per variable and step, a step beyond those
meta-trained reusing the last; ANIL: only the head adapts).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import losses, options
from tf_maml.api import MetaLearner

TOL = {"rtol": 1e-5, "atol": 1e-6}
INNER_LR = 0.05


def mlp_forward(weights, x):
    """The Sequential below (Dense-ReLU, Dense-ReLU, Dense), by hand."""
    h = x
    for kernel, bias in zip(weights[0:-2:2], weights[1:-2:2]):
        h = tf.nn.relu(tf.matmul(h, kernel) + bias)
    return tf.matmul(h, weights[-2]) + weights[-1]


def hand_steps(weights, support_x, support_y, num_steps, alpha, adapted):
    """``num_steps`` SGD steps on the mean squared error: w ← w − α(step, i) ∇w L."""
    weights = [tf.constant(w) for w in weights]
    for step in range(num_steps):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = tf.reduce_mean(tf.square(mlp_forward(weights, support_x) - support_y))
        grads = tape.gradient(loss, weights)
        weights = [w - alpha(step, i) * g if adapted[i] else w
                   for i, (w, g) in enumerate(zip(weights, grads))]
    return weights


def make_learner(seed: int, **kwargs) -> MetaLearner:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    kwargs.setdefault("inner_lr", INNER_LR)
    learner = MetaLearner(model, losses.mse, **kwargs)
    # Learned rates that differ per element and step, as after meta-training.
    rng = np.random.default_rng(seed)
    for v in learner.inner_lrs:
        v.assign(rng.uniform(0.02, 0.08, v.shape).astype(np.float32))
    return learner


def task(seed: int):
    rng = np.random.default_rng(seed)
    support_x = rng.uniform(-5, 5, (10, 1)).astype(np.float32)
    query_x = rng.uniform(-5, 5, (7, 1)).astype(np.float32)
    return support_x, (2.0 * np.sin(support_x + 0.5)).astype(np.float32), query_x


def alpha_of(learner: MetaLearner, inner_lr: float):
    """α(step, i) as the paper's variants define it, scaled by the ``inner_lr`` input in
    the units of the learner's initial α (export.py's module docstring)."""
    rates = [v.numpy() for v in learner.inner_lrs]
    scale = inner_lr / learner.inner_lr
    if not rates:
        return lambda step, i: inner_lr
    if learner.lslr:
        return lambda step, i: rates[i][min(step, learner.inner_steps - 1)] * scale
    return lambda step, i: rates[i] * scale


CASES = {
    "maml": {},
    "meta_sgd": {"inner_lr": options.MetaSGD(INNER_LR)},
    "lslr": {"inner_lr": options.LSLR(INNER_LR), "inner_steps": 2},
    "anil": {"adapt": "head"},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_adapt_and_predict_takes_the_hand_written_sgd_steps(name, tmp_path):
    learner = make_learner(3, **CASES[name])
    loaded = tf.saved_model.load(learner.export(str(tmp_path / name), num_steps=2))
    support_x, support_y, query_x = task(4)
    theta = [v.numpy() for v in learner.model.trainable_variables]
    adapted = learner.mask
    if name == "anil":
        assert adapted == [False, False, False, False, True, True]
    before = mlp_forward(theta, query_x).numpy()
    np.testing.assert_allclose(loaded.serving_default(query_x).numpy(), before, **TOL)
    # Default step count and α, more steps than trained (LSLR: the last step's rates
    # again), and a step size scaled by the inner_lr input.
    for steps, inner_lr in ((None, INNER_LR), (3, INNER_LR), (4, 0.5 * INNER_LR)):
        inputs = {}
        if steps is not None:
            inputs["num_steps"] = tf.constant(steps, tf.int32)
        if inner_lr != INNER_LR:
            inputs["inner_lr"] = tf.constant(inner_lr, tf.float32)
        got = loaded.adapt_and_predict(support_x, support_y, query_x, **inputs).numpy()
        fast = hand_steps(theta, support_x, support_y, 2 if steps is None else steps,
                          alpha_of(learner, inner_lr), adapted)
        want = mlp_forward(fast, query_x).numpy()
        np.testing.assert_allclose(got, want, **TOL, err_msg=f"{name} {inputs}")
        assert np.abs(want - before).max() > 1e-3  # the steps change the predictions


def test_a_tensor_step_count_runs_the_unrolled_steps_in_a_loop():
    learner = make_learner(5, inner_lr=options.LSLR(INNER_LR), inner_steps=2)
    support_x, support_y, _ = task(6)
    theta = [v.value for v in learner.model.trainable_variables]
    step_lr = learner.step_lr([v.value for v in learner.inner_lrs])
    for steps in (0, 1, 3):
        unrolled, pre_loss, _ = adapt_lib.adapt(learner.model, theta, support_x, support_y,
                                                losses.mse, step_lr, steps)
        looped, loop_pre_loss, _ = adapt_lib.adapt(learner.model, theta, support_x, support_y,
                                                   losses.mse, step_lr, tf.constant(steps))
        for a, b in zip(unrolled, looped):
            np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)
        np.testing.assert_allclose(pre_loss.numpy(), loop_pre_loss.numpy(), **TOL)
    with pytest.raises(ValueError, match="return_all=True needs num_steps as a Python int"):
        adapt_lib.adapt(learner.model, theta, support_x, support_y, losses.mse, step_lr,
                        tf.constant(2), return_all=True)
