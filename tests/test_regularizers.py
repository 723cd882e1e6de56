"""Weight regularizers, as Keras' ``fit`` adds ``model.losses``: each inner step descends the
support loss plus R(θ') at the fast weights, and the meta-objective is the mean query loss
plus R(θ) once. Checked against a linear model's steps written out by hand in numpy and
central finite differences of the regularized meta-objective, on every task mapping, in the
SavedModel export, and per task on stacked weights (a penalty that is no sum of elements)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import losses, options
from tf_maml.api import MetaLearner
from tf_maml.export import export
from tf_maml.mapping import ExecutionPlan

# λ exact in float32: Keras casts a regularizer's factor through float32 (0.3 is not 0.3 then)
FEATURES, ALPHA, LAMBDA = 3, 0.1, 0.25


# ---------------------------------------------------------------- numpy reference
def np_grad(theta, x, y):
    """∇θ of the MSE of y = x θ (θ of shape [FEATURES, 1]), by hand."""
    return 2.0 * x.T @ (x @ theta - y) / len(x)


def np_mse(theta, x, y):
    return float(np.mean((x @ theta - y) ** 2))


def np_fast(theta, x, y, steps, alpha=ALPHA):
    """θ' after ``steps`` steps on L + λ‖θ'‖², the penalty at the fast weights; ``alpha``
    a number or, Meta-SGD, one per weight."""
    trajectory = [theta]
    for _ in range(steps):
        fast = trajectory[-1]
        trajectory.append(fast - alpha * (np_grad(fast, x, y) + 2 * LAMBDA * fast))
    return trajectory


def np_objective(theta, tasks, steps, step_weights=None, alpha=ALPHA):
    """Mean over tasks of the query loss after ``steps`` (or MSL's weighted sum over the
    steps), plus λ‖θ‖² once."""
    total = 0.0
    for sx, sy, qx, qy in tasks:
        trajectory = np_fast(theta, sx, sy, steps, alpha)
        if step_weights is None:
            total += np_mse(trajectory[-1], qx, qy)
        else:
            total += sum(w * np_mse(t, qx, qy) for w, t in zip(step_weights, trajectory[1:]))
    return total / len(tasks) + LAMBDA * float(np.sum(theta ** 2))


def finite_difference(fn, theta, eps=1e-6):
    grad = np.zeros_like(theta)
    for i in np.ndindex(theta.shape):
        step = np.zeros_like(theta)
        step[i] = eps
        grad[i] = (fn(theta + step) - fn(theta - step)) / (2 * eps)
    return grad


# ---------------------------------------------------------------- keras side
def linear_learner(theta, dtype="float64", **kwargs) -> MetaLearner:
    model = keras.Sequential([
        keras.Input((FEATURES,), dtype=dtype),
        keras.layers.Dense(1, use_bias=False, dtype=dtype,
                           kernel_regularizer=keras.regularizers.L2(LAMBDA)),
    ])
    model.set_weights([theta])
    return MetaLearner(model, losses.mse, **{"inner_lr": ALPHA, **kwargs})


@pytest.fixture
def problem():
    rng = np.random.default_rng(5)
    theta = rng.normal(size=(FEATURES, 1))
    tasks = []
    for _ in range(3):
        w = rng.normal(size=(FEATURES, 1))
        x = rng.normal(size=(8, FEATURES))
        tasks.append((x[:4], x[:4] @ w, x[4:], x[4:] @ w))
    return theta, tasks


def as_batch(tasks):
    return tuple(tf.constant(np.stack(part)) for part in zip(*tasks))


def test_inner_steps_descend_the_loss_plus_l2_at_the_fast_weights(problem):
    theta, tasks = problem
    sx, sy = tasks[0][:2]
    fast = linear_learner(theta).adapt(sx, sy, num_steps=2)
    step1 = theta - ALPHA * (np_grad(theta, sx, sy) + 2 * LAMBDA * theta)
    step2 = step1 - ALPHA * (np_grad(step1, sx, sy) + 2 * LAMBDA * step1)  # R at θ'_1
    np.testing.assert_allclose(fast[0].numpy(), step2, rtol=1e-12)


@pytest.mark.parametrize("parallelism", ["loop", "vectorized", "map", "batched", "accumulate"])
def test_meta_gradient_is_the_regularized_objective_s_on_every_mapping(problem, parallelism):
    theta, tasks = problem
    learner = linear_learner(theta, inner_steps=2).use_plan(ExecutionPlan(parallelism))
    grads, metrics = learner.meta_gradients(as_batch(tasks))
    expected = finite_difference(lambda t: np_objective(t, tasks, 2), theta)
    np.testing.assert_allclose(grads[0].numpy(), expected, rtol=1e-6, atol=1e-9)
    # The reported loss is the data loss alone, comparable with an unregularized run's.
    data = np.mean([np_mse(np_fast(theta, *task[:2], 2)[-1], *task[2:]) for task in tasks])
    np.testing.assert_allclose(float(metrics["post_loss"]), data, rtol=1e-10)


def test_first_order_meta_gradient_is_the_query_gradient_at_fast_weights_plus_r_once(problem):
    theta, tasks = problem
    grads, _ = linear_learner(theta, inner_steps=2, first_order=True).meta_gradients(
        as_batch(tasks))
    query = np.mean([np_grad(np_fast(theta, sx, sy, 2)[-1], qx, qy)
                     for sx, sy, qx, qy in tasks], axis=0)
    np.testing.assert_allclose(grads[0].numpy(), query + 2 * LAMBDA * theta, rtol=1e-10)


def test_multi_step_loss_adds_the_penalty_once(problem):
    theta, tasks = problem
    weights = np.array([0.3, 0.7])
    learner = linear_learner(theta, inner_steps=2)
    grads, _ = learner.meta_gradients(as_batch(tasks), msl_weights=tf.constant(weights))
    expected = finite_difference(lambda t: np_objective(t, tasks, 2, weights), theta)
    np.testing.assert_allclose(grads[0].numpy(), expected, rtol=1e-6, atol=1e-9)


def test_meta_sgd_rates_and_theta_get_the_regularized_objective_s_gradients(problem):
    theta, tasks = problem
    learner = linear_learner(theta, inner_lr=options.MetaSGD(ALPHA), inner_steps=2)
    alpha = np.array([[0.05], [0.1], [0.2]])
    learner.inner_lrs[0].assign(alpha)
    grads, _ = learner.meta_gradients(as_batch(tasks))
    np.testing.assert_allclose(
        grads[0].numpy(), finite_difference(lambda t: np_objective(t, tasks, 2, alpha=alpha),
                                            theta), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        grads[1].numpy(), finite_difference(lambda a: np_objective(theta, tasks, 2, alpha=a),
                                            alpha), rtol=1e-6, atol=1e-9)


def test_reptile_moves_towards_regularized_fast_weights_with_weight_decay(problem):
    theta, tasks = problem
    learner = linear_learner(theta, inner_steps=3, objective=options.Reptile())
    grads, _ = learner.reptile_gradients(as_batch(tasks))
    adapted = np.mean([np_fast(theta, sx, sy, 3)[-1] for sx, sy, _, _ in tasks], axis=0)
    np.testing.assert_allclose(grads[0].numpy(), theta - adapted + 2 * LAMBDA * theta,
                               rtol=1e-10)


def test_evaluation_adapts_with_the_penalty(problem):
    theta, tasks = problem
    out = linear_learner(theta).evaluate_batch(as_batch(tasks), num_steps=2)
    expected = [[np_mse(w, qx, qy) for w in np_fast(theta, sx, sy, 2)]
                for sx, sy, qx, qy in tasks]
    np.testing.assert_allclose(out["loss"].numpy(), expected, rtol=1e-10)


def test_export_adapts_with_the_penalty(problem, tmp_path):
    theta, tasks = problem
    learner = linear_learner(theta.astype(np.float32), dtype="float32")
    sx, sy, qx, _ = (t.astype(np.float32) for t in tasks[0])
    loaded = tf.saved_model.load(export(learner, str(tmp_path / "linear"), num_steps=2))
    got = loaded.adapt_and_predict(sx, sy, qx).numpy()
    np.testing.assert_allclose(got, qx @ np_fast(theta, sx, sy, 2)[-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, learner.predict(qx, learner.adapt(sx, sy, 2)).numpy(),
                               rtol=1e-5, atol=1e-6)


def _bn_net(gamma_regularizer):
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((4,), dtype="float64"),
        keras.layers.Dense(5, dtype="float64"),
        keras.layers.BatchNormalization(gamma_regularizer=gamma_regularizer, dtype="float64"),
        keras.layers.ReLU(dtype="float64"),
        keras.layers.Dense(3, dtype="float64"),
    ])


def test_mamlpp_penalty_of_unadapted_batch_norm_is_weight_decay_on_theta_alone():
    # Batch norm's γ is not adapted: its penalty is a constant in every inner step (its
    # per-step copies carry none), so with LSLR, per-step batch norm and the multi-step
    # loss the meta-gradient is the unregularized one plus ∇R(θ) = 2λγ on γ, and nothing
    # else changes.
    rng = np.random.default_rng(1)
    batch = (rng.normal(size=(2, 3, 4)), np.tile(np.arange(3), (2, 1)),
             rng.normal(size=(2, 6, 4)), np.tile(np.arange(3), (2, 2)))
    grads = []
    for regularizer in (keras.regularizers.L2(LAMBDA), None):
        learner = MetaLearner(_bn_net(regularizer), losses.summed_xent(1),
                              inner_lr=options.LSLR(0.3), inner_steps=2,
                              adapt=options.PerStepBatchNorm(),
                              objective=options.MultiStepLoss(10),
                              ).use_plan(ExecutionPlan("loop"))
        for v in learner.bn_steps:  # per-step values of their own, not θ's
            v.assign(v + 0.1)
        out, _ = learner.meta_gradients(batch, msl_weights=learner.msl_weights(0))
        grads.append([g.numpy() for g in out])
    gamma_at = [i for i, v in enumerate(learner.model.trainable_variables)
                if "gamma" in v.path]
    assert len(gamma_at) == 1
    gamma = learner.model.trainable_variables[gamma_at[0]].numpy()
    for i, (regularized, plain) in enumerate(zip(*grads)):
        decay = 2 * LAMBDA * gamma if i == gamma_at[0] else 0
        np.testing.assert_allclose(regularized, plain + decay, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- stacked weights
class _Norm(keras.regularizers.Regularizer):
    """λ‖w‖: no sum of elements, so its value on weights stacked over tasks is not the sum
    of the tasks' (nor its gradient the stack of theirs)."""

    def __call__(self, w):
        return LAMBDA * tf.sqrt(tf.reduce_sum(tf.square(w)))


def _mlp(regularized: bool = True):
    keras.utils.set_random_seed(4)
    on = (lambda regularizer: regularizer) if regularized else (lambda regularizer: None)
    return keras.Sequential([
        keras.Input((2,), dtype="float64"),
        keras.layers.Dense(6, activation="tanh", dtype="float64",
                           kernel_regularizer=on(_Norm()),
                           bias_regularizer=on(keras.regularizers.L1(0.05))),
        keras.layers.Dense(1, dtype="float64",
                           kernel_regularizer=on(keras.regularizers.L2(0.2))),
    ])


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_stacked_weights_get_each_task_s_own_penalty(adapt):
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(4, 5, 2)), rng.normal(size=(4, 5, 1)),
             rng.normal(size=(4, 5, 2)), rng.normal(size=(4, 5, 1)))
    model = _mlp()
    results = {}
    for mode in ("batched", "loop"):
        learner = MetaLearner(model, losses.mse, inner_lr=0.2, inner_steps=2, adapt=adapt,
                              ).use_plan(ExecutionPlan(mode))
        assert learner.task_mapping(batch) == mode
        grads, _ = learner.meta_gradients(batch)
        results[mode] = ([g.numpy() for g in grads],
                         learner.evaluate_batch(batch, 2)["loss"].numpy())
    for got, want in zip(results["batched"][0], results["loop"][0]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(results["batched"][1], results["loop"][1], rtol=1e-9)
    # Guards the comparison: the penalties change the meta-gradient.
    plain, _ = MetaLearner(_mlp(regularized=False), losses.mse, inner_lr=0.2, inner_steps=2,
                           adapt=adapt).use_plan(ExecutionPlan("loop")).meta_gradients(batch)
    assert max(np.abs(g.numpy() - r).max() for g, r in zip(plain, results["loop"][0])) > 1e-3
