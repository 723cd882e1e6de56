"""MAML for RL (tf_maml/rl, tf_maml/tasks/navigation.py) against independent truth: the
navigation dynamics and rewards worked out by hand, the REINFORCE gradient against the
closed-form gradient of a Gaussian bandit's expected reward (exact Gauss-Hermite
quadrature), the KL's Hessian-vector product against finite differences and against the
full Hessian (float64), the meta-gradient against finite differences, conjugate gradient
against numpy.linalg.solve, TRPO's step against its trust region and against the step the
full Hessian gives, and the CLI end to end."""

import contextlib
import csv
import functools
import json
import math
import os
import re
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import runner
from tf_maml.config import Config, ConfigError
from tf_maml.rl import policy as policy_lib
from tf_maml.rl import sampler, trpo
from tf_maml.rl.gym_tasks import GymTasks
from tf_maml.rl.learner import RLMetaLearner, policy_gradient_loss
from tf_maml.tasks.navigation import NavigationEnv, NavigationTasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def eager():
    """Runs the learner's tf.functions eagerly: for these tiny models, tracing the
    third-order graphs costs far more than running them."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@contextlib.contextmanager
def compiled():
    """The learner's tf.functions compiled inside an ``eager`` test: for TRPO's update,
    whose conjugate gradient calls the KL's Hessian-vector product ten times, one trace
    costs less than ten eager forward-mode products."""
    tf.config.run_functions_eagerly(False)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(True)


def constant_policy(mean, log_std):
    """A policy_fn ignoring the state: the same Gaussian for every agent."""
    mean, log_std = tf.constant(mean, tf.float32), tf.constant(log_std, tf.float32)

    def policy_fn(obs):
        shape = tf.concat([tf.shape(obs)[:-1], [2]], axis=0)
        return tf.concat([tf.broadcast_to(mean, shape), tf.broadcast_to(log_std, shape)], -1)

    return policy_fn


# ---------------------------------------------------------------- the environment
def test_navigation_step_moves_by_the_clipped_velocity_and_rewards_minus_distance():
    env = NavigationTasks()
    goals = np.array([[0.3, -0.4], [0.1, 0.1]], np.float32)
    state = np.zeros((2, 1, 2), np.float32)
    # Actions are in units of the 0.1 speed limit: (1, -0.5) -> velocity (0.1, -0.05);
    # (5, -7) is clipped to (1, -1) -> (0.1, -0.1).
    actions = np.array([[[1.0, -0.5]], [[5.0, -7.0]]], np.float32)
    state, reward, done = env.step(state, goals, actions)
    np.testing.assert_allclose(state.numpy()[:, 0], [[0.1, -0.05], [0.1, -0.1]], atol=1e-7)
    expected = [-math.hypot(0.1 - 0.3, -0.05 + 0.4), -math.hypot(0.0, -0.2)]
    np.testing.assert_allclose(reward.numpy()[:, 0], expected, rtol=1e-6)
    assert not done.numpy().any()
    state, reward, done = env.step(state, goals, [[[0.0, 0.0]], [[0.0, 2.0]]])
    np.testing.assert_allclose(state.numpy()[1, 0], [0.1, 0.0], atol=1e-7)
    # Task 2 is now 0.1 from its goal; task 1 did not move.
    np.testing.assert_allclose(reward.numpy()[:, 0], [expected[0], -0.1], rtol=1e-6)


def test_navigation_ends_within_0_01_of_the_goal():
    env = NavigationTasks()
    goals = np.array([[0.1, 0.1], [0.105, 0.1], [0.112, 0.1]], np.float32)
    _, reward, done = env.step(np.zeros((3, 1, 2)), goals, np.ones((3, 1, 2), np.float32))
    assert done.numpy()[:, 0].tolist() == [True, True, False]  # distances 0, 0.005, 0.012
    np.testing.assert_allclose(reward.numpy()[:, 0], [0.0, -0.005, -0.012], atol=1e-6)


def test_goals_are_uniform_on_the_square_and_the_oracle_sees_them():
    env = NavigationTasks(oracle=True)
    goals = env.sample_tasks(20000, np.random.default_rng(0))
    assert goals.shape == (20000, 2) and goals.dtype == np.float32
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    np.testing.assert_allclose(goals.mean(0), [0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(goals.var(0), [1 / 12, 1 / 12], rtol=0.03)  # U(-.5, .5)
    obs = env.observe(np.full((2, 3, 2), 0.2, np.float32), goals[:2]).numpy()
    assert obs.shape == (2, 3, 4)
    np.testing.assert_allclose(obs[1, 2], [0.2, 0.2, *goals[1]])
    assert NavigationTasks().observation_dim == 2 and env.observation_dim == 4


def test_rollout_steps_all_agents_together_and_masks_after_the_goal():
    env = NavigationTasks()
    goals = np.array([[0.3, 0.0], [-0.5, 0.5]], np.float32)
    # Deterministic policy (std e^-30): always full speed along +x.
    traj = sampler.rollout(env, constant_policy([1.0, 0.0], [-30.0, -30.0]), goals, 2,
                           seed=[1, 2])
    assert traj["observations"].shape == (2, 2, 100, 2)
    # Task 1 reaches (0.3, 0) at its third step: rewards -0.2, -0.1, 0, then nothing.
    np.testing.assert_allclose(traj["rewards"].numpy()[0, :, :4], [[-0.2, -0.1, 0.0, 0.0]] * 2,
                               atol=1e-6)
    np.testing.assert_array_equal(traj["mask"].numpy()[0, 0], [1, 1, 1] + [0] * 97)
    np.testing.assert_allclose(traj["observations"].numpy()[0, 0, :4],
                               [[0, 0], [0.1, 0], [0.2, 0], [0, 0]], atol=1e-6)
    # Task 2 is never reached: 100 steps, reward -|(0.1 (t+1), 0) - (-0.5, 0.5)|.
    t = np.arange(1, 101)
    np.testing.assert_allclose(traj["rewards"].numpy()[1, 1],
                               -np.hypot(0.1 * t + 0.5, 0.5), rtol=1e-5)
    assert traj["mask"].numpy()[1].sum() == 200
    returns = sampler.undiscounted_returns(traj).numpy()
    np.testing.assert_allclose(returns[0], [-0.3, -0.3], atol=1e-5)


def test_rollout_actions_are_mean_plus_std_times_the_seeded_noise():
    env = NavigationTasks()
    goals = np.array([[0.4, 0.4]], np.float32)
    traj = sampler.rollout(env, constant_policy([0.2, -0.1], [math.log(0.5)] * 2), goals, 3,
                           seed=[7, 8])
    noise = sampler.exploration_noise(tf.constant([7, 8]), 100, 1, 3, 2).numpy()
    expected = np.array([0.2, -0.1]) + 0.5 * np.transpose(noise, (1, 2, 0, 3))
    mask = traj["mask"].numpy()[..., None]
    np.testing.assert_allclose(traj["actions"].numpy(), expected * mask, atol=1e-6)
    # Positions are the running sums of the clipped velocities.
    velocity = 0.1 * np.clip(expected, -1, 1)
    np.testing.assert_allclose(traj["observations"].numpy()[0, :, 1:4],
                               (np.cumsum(velocity, axis=2)[0, :, :3]) * mask[0, :, 1:4],
                               atol=1e-5)


def test_gymnasium_api_env_and_gym_tasks_match_the_vectorised_rollout():
    env = NavigationEnv(goal=(0.3, 0.0))
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    for expected_reward in (-0.2, -0.1):
        obs, reward, terminated, truncated, _ = env.step(np.array([1.0, 0.0]))
        assert reward == pytest.approx(expected_reward, abs=1e-6) and not terminated
    obs, reward, terminated, truncated, _ = env.step(np.array([1.0, 0.0]))
    assert terminated and not truncated and reward == pytest.approx(0.0, abs=1e-6)

    tasks = GymTasks(lambda goal: NavigationEnv(goal=goal), NavigationTasks().sample_tasks,
                     observation_dim=2, action_dim=2, horizon=100)
    goals = np.array([[0.2, 0.2], [-0.3, 0.2]], np.float32)
    # A noisy policy saturating at the speed limit along (1, 1): task 1's episodes end at
    # the second step, task 2's run all 100 steps.
    policy_fn = constant_policy([5.0, 5.0], [math.log(0.3)] * 2)
    gym_traj = tasks.rollout(policy_fn, goals, 3, seed=[3, 4])
    tf_traj = sampler.rollout(NavigationTasks(), policy_fn, goals, 3, seed=[3, 4])
    assert gym_traj["mask"].numpy().sum() == 3 * 2 + 3 * 100
    for key in ("observations", "actions", "rewards", "mask"):
        np.testing.assert_allclose(gym_traj[key].numpy(), tf_traj[key].numpy(), atol=1e-5,
                                   err_msg=key)


def test_the_learner_trains_on_gymnasium_envs_exactly_as_on_the_vectorised_env(eager):
    def learner_for(env):
        keras.utils.set_random_seed(0)
        return RLMetaLearner(policy_lib.gaussian_mlp_policy(2, 2, hidden=(8,)), env,
                             num_trajectories=2)

    vectorised = NavigationTasks(horizon=6)
    gym = GymTasks(lambda goal: NavigationEnv(goal=goal, horizon=6), vectorised.sample_tasks,
                   observation_dim=2, action_dim=2, horizon=6)
    goals = vectorised.sample_tasks(2, np.random.default_rng(0))
    learners = [learner_for(env) for env in (vectorised, gym)]
    batches = [learner.collect(goals, np.random.default_rng(1))[0] for learner in learners]
    for key, value in batches[0]["outer"].items():
        np.testing.assert_allclose(batches[1]["outer"][key].numpy(), value.numpy(), atol=1e-5,
                                   err_msg=key)
    with compiled():
        assert learners[1].update(batches[1])["step_fraction"] > 0


def test_navigation_env_works_without_gymnasium(monkeypatch):
    # A fresh copy of the module imported while `import gymnasium` fails.
    import importlib.util

    import tf_maml.tasks.navigation as navigation

    monkeypatch.setitem(sys.modules, "gymnasium", None)
    spec = importlib.util.spec_from_file_location("navigation_without_gym", navigation.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NavigationEnv.__mro__[1] is object
    env = module.NavigationEnv()
    first, info = env.reset(seed=5)
    goal = info["goal"]
    np.testing.assert_array_equal(env.reset(seed=5)[1]["goal"], goal)  # seeded goals
    assert goal.min() >= -0.5 and goal.max() <= 0.5 and not np.all(first)
    obs, reward, terminated, truncated, _ = env.step([10.0, 0.0])
    np.testing.assert_allclose(obs, [0.1, 0.0], atol=1e-7)
    assert reward == pytest.approx(-np.hypot(0.1 - goal[0], goal[1]), rel=1e-5)


def test_navigation_env_passes_gymnasiums_checker():
    gymnasium = pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env

    env = NavigationEnv()
    assert isinstance(env, gymnasium.Env)
    check_env(env, skip_render_check=True)


# ---------------------------------------------------------------- returns and advantages
def test_discounted_returns_by_hand():
    rewards = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)
    g = 0.9
    expected = [1 - 2 * g + 3 * g**2 + 0.5 * g**3, -2 + 3 * g + 0.5 * g**2, 3 + 0.5 * g, 0.5]
    np.testing.assert_allclose(sampler.discounted_returns(rewards, g).numpy()[0], expected,
                               rtol=1e-6)


def test_linear_baseline_is_the_least_squares_fit_on_rllab_features():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 3, 6, 2)).astype(np.float32)
    returns = rng.normal(size=(2, 3, 6)).astype(np.float32)
    mask = np.ones((2, 3, 6), np.float32)
    mask[0, 1, 4:] = 0.0  # an episode that ended after 4 steps
    predictions = sampler.fit_linear_baseline(obs, returns, mask, reg=0.0).numpy()
    t = np.arange(6)[:, None] / 100.0
    for task in range(2):
        rows, targets = [], []
        for traj in range(3):
            n = int(mask[task, traj].sum())
            o = obs[task, traj, :n]
            feats = np.concatenate([o, o**2, t[:n], t[:n]**2, t[:n]**3, np.ones((n, 1))], 1)
            rows.append(feats)
            targets.append(returns[task, traj, :n])
        coeffs = np.linalg.lstsq(np.concatenate(rows), np.concatenate(targets), rcond=None)[0]
        fitted = np.concatenate(rows) @ coeffs
        np.testing.assert_allclose(predictions[task][mask[task] > 0], fitted, atol=2e-4)


def test_advantages_are_normalised_per_task_and_zero_after_the_end():
    rng = np.random.default_rng(1)
    traj = {"observations": tf.constant(rng.normal(size=(2, 4, 5, 2)), tf.float32),
            "rewards": tf.constant(rng.normal(size=(2, 4, 5)), tf.float32),
            "mask": tf.constant(np.repeat([[1, 1, 1, 0, 0], [1] * 5], [2, 6], 0)
                                .reshape(2, 4, 5), tf.float32)}
    traj["rewards"] *= traj["mask"]
    adv = sampler.advantages(traj, 0.99).numpy()
    mask = traj["mask"].numpy()
    assert np.all(adv[mask == 0] == 0)
    for task in range(2):
        valid = adv[task][mask[task] > 0]
        assert abs(valid.mean()) < 1e-5 and valid.std() == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- the policy gradient
def bandit_policy(weight, bias, std):
    """mean = weight * x + bias (x = 1 below), state-independent std; float64."""
    model = keras.Sequential([keras.Input((1,), dtype="float64"),
                              keras.layers.Dense(1, dtype="float64"),
                              policy_lib.StateIndependentLogStd(std, dtype="float64")])
    model.layers[0].set_weights([np.array([[weight]]), np.array([bias])])
    return model


def test_reinforce_step_follows_the_analytic_gradient_of_the_expected_reward():
    # One-step bandit: a ~ N(mu, sigma^2), reward r(a) = -(a - c)^2, so
    # J = E[r] = -((mu - c)^2 + sigma^2): dJ/dmu = -2 (mu - c), dJ/dlog(sigma) = -2 sigma^2.
    # With Gauss-Hermite nodes as actions and the quadrature weights folded into the
    # advantages, the REINFORCE estimate is the exact expectation E[grad log pi(a) r(a)]
    # (its integrand is a polynomial of degree 4 in a).
    weight, bias, c, alpha = 0.3, 0.2, -0.4, 0.05
    model = bandit_policy(weight, bias, 0.7)
    mu, std = weight + bias, float(np.exp(model.trainable_variables[2].numpy()[0]))
    nodes, quad_weights = np.polynomial.hermite_e.hermegauss(6)
    quad_weights = quad_weights / np.sqrt(2 * np.pi)
    actions = mu + std * nodes
    k = len(nodes)
    y = np.stack([actions, k * quad_weights * -(actions - c) ** 2, np.ones(k)], axis=1)
    theta = [v.value for v in model.trainable_variables]
    fast, _, _ = adapt_lib.adapt(model, theta, np.ones((k, 1)), y, policy_gradient_loss,
                                 alpha, 1)
    estimate = [(f - t).numpy() / alpha for f, t in zip(fast, theta)]
    d_mu = -2 * (mu - c)
    np.testing.assert_allclose(estimate[0], [[d_mu]], rtol=1e-10)  # dJ/dweight (x = 1)
    np.testing.assert_allclose(estimate[1], [d_mu], rtol=1e-10)  # dJ/dbias
    np.testing.assert_allclose(estimate[2], [-2 * std**2], rtol=1e-10)  # dJ/dlog(sigma)


def test_reinforce_with_sampled_actions_is_unbiased():
    # The same bandit with actions actually sampled: the estimate is within 4 standard
    # errors of the analytic gradient (and the masked rows are ignored).
    weight, bias, std, c = -0.1, 0.4, 0.5, 0.6
    model = bandit_policy(weight, bias, std)
    mu, n = weight + bias, 200000
    rng = np.random.default_rng(0)
    actions = mu + std * rng.standard_normal(n)
    rewards = -(actions - c) ** 2
    mask = np.ones(n)
    mask[:1000] = 0.0
    y = np.stack([actions, rewards, mask], axis=1)
    theta = [v.value for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(theta)
        loss = policy_gradient_loss(tf.constant(y), adapt_lib.forward(model, theta,
                                                                      np.ones((n, 1))))
    grads = tape.gradient(loss, theta)
    per_sample = np.stack([(actions - mu) / std**2 * rewards,
                           ((actions - mu) ** 2 / std**2 - 1) * rewards], 1)[1000:]
    se = per_sample.std(0) / np.sqrt(len(per_sample))
    analytic = np.array([-2 * (mu - c), -2 * std**2])
    estimate = -np.array([grads[1].numpy()[0], grads[2].numpy()[0]])
    assert np.all(np.abs(estimate - analytic) < 4 * se), (estimate, analytic, se)


def test_log_std_is_a_weight_the_inner_loop_adapts():
    keras.utils.set_random_seed(0)
    model = policy_lib.gaussian_mlp_policy(2, 2, init_std=1.0)
    assert [tuple(v.shape) for v in model.trainable_variables][-1] == (2,)
    assert adapt_lib.adapted_mask(model) == [True] * len(model.trainable_variables)
    out = model(np.zeros((3, 2), np.float32)).numpy()
    np.testing.assert_allclose(out[:, 2:], 0.0)  # log(1)
    # A large advantage on actions far below the mean with a tiny std: both move.
    y = np.concatenate([np.full((3, 2), -3.0), np.ones((3, 1)), np.ones((3, 1))], 1)
    theta = [v.value for v in model.trainable_variables]
    fast, _, _ = adapt_lib.adapt(model, theta, np.zeros((3, 2), np.float32),
                                 y.astype(np.float32), policy_gradient_loss, 0.1, 1)
    assert np.all(fast[-1].numpy() > 0)  # wider, to reach the far actions


# ---------------------------------------------------------------- meta-objective derivatives
def float64_learner(first_order=False, inner_steps=1, hidden=(5,)):
    keras.utils.set_random_seed(3)
    policy = policy_lib.gaussian_mlp_policy(2, 2, hidden=hidden, init_std=0.6, dtype="float64")
    return RLMetaLearner(policy, NavigationTasks(), inner_lr=0.5, inner_steps=inner_steps,
                         num_trajectories=2, first_order=first_order)


def synthetic_batch(learner, num_tasks=2, rows=7, inner_steps=1):
    """A meta-batch like collect()'s, of random observations and advantages: actions drawn
    from θ's policy (support) and from the adapted policies at θ = θ_old (outer);
    ``inner_steps=0``: no support, the outer actions from θ's policy (plain TRPO)."""
    rng = np.random.default_rng(5)
    f64 = lambda a: tf.constant(a, tf.float64)  # noqa: E731

    def sample(policy_out):
        mean, log_std = policy_lib.split(policy_out)
        return mean + tf.exp(log_std) * rng.normal(size=mean.shape), mean, log_std

    mask = np.ones((num_tasks, rows))
    mask[0, -2:] = 0.0
    support_x = f64(rng.normal(size=(num_tasks, rows, 2)))
    actions, _, _ = sample(tf.stack([adapt_lib.forward(learner.model, learner.params(), x)
                                     for x in support_x]))
    y = tf.concat([actions, f64(rng.normal(size=(num_tasks, rows, 1))), f64(mask[..., None])],
                  -1)
    supports = [(support_x, y)] * inner_steps
    x = f64(rng.normal(size=(num_tasks, rows, 2)))
    fast = learner._adapt_tasks([learner.params()] * num_tasks, supports, first_order=True)
    actions, old_mean, old_log_std = sample(
        tf.stack([adapt_lib.forward(learner.model, w, x[i]) for i, w in enumerate(fast)]))
    outer = {"x": x, "actions": actions, "advantages": f64(rng.normal(size=(num_tasks, rows))),
             "mask": f64(mask), "old_mean": old_mean, "old_log_std": old_log_std}
    return {"supports": supports, "outer": outer}


def kl_gradient(learner, batch, theta):
    """∇θ KL at the flat ``theta`` (one tape around the inner step's)."""
    params = learner.unflat(theta)
    with tf.GradientTape() as tape:
        tape.watch(params)
        _, kl = learner._outer_terms(params, batch, with_surrogate=False)
    return learner.flat(tape.gradient(kl, params))


def kl_hessian(learner, batch):
    """The full Hessian of the mean KL in θ at θ_old, column by column by reverse mode: the
    gradient of each entry of ∇θ KL (a tape around a tape around the inner step's tape)."""
    params = learner.params()
    with tf.GradientTape(persistent=True) as outer_tape:
        outer_tape.watch(params)
        with tf.GradientTape() as tape:
            tape.watch(params)
            _, kl = learner._outer_terms(params, batch, with_surrogate=False)
        grad = tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(kl, params)], 0)
        entries = [grad[j] for j in range(grad.shape[0])]
    return np.stack([learner.flat(outer_tape.gradient(e, params,
                                                      unconnected_gradients="zero"))
                     for e in entries], axis=1)


@functools.cache
def kl_problem(inner_steps: int):
    """A float64 learner (19 weights) and a synthetic meta-batch for the tests of the KL's
    Hessian-vector product, made once: the compiled kl_hvp is traced once for them all
    (neither test changes the learner's weights). 15 steps per task: a full-rank Hessian,
    so that CG's 10 iterations are well posed."""
    learner = float64_learner(inner_steps=inner_steps, hidden=(3,))
    return learner, synthetic_batch(learner, rows=15, inner_steps=inner_steps)


def test_kl_hessian_vector_product_matches_finite_differences_through_the_inner_step():
    learner, batch = kl_problem(1)
    theta = learner.flat(learner.params())
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, theta.size))

    def kl(point):
        return float(learner._outer_terms(learner.unflat(point), batch, False)[1])

    assert kl(theta) == pytest.approx(0.0, abs=1e-15)  # θ = θ_old
    hv = learner.flat(learner.kl_hvp(learner.params(), learner.unflat(v), batch))
    eps = 1e-4
    # uᵀHv by central differences of KL values alone (no tape at all).
    fd = (kl(theta + eps * (u + v)) - kl(theta + eps * (u - v)) - kl(theta - eps * (u - v))
          + kl(theta - eps * (u + v))) / (4 * eps**2)
    assert u @ hv == pytest.approx(fd, rel=1e-5)
    assert v @ hv == pytest.approx((kl(theta + eps * v) + kl(theta - eps * v)) / eps**2,
                                   rel=1e-5)
    # H v whole, as central differences of the KL's gradient (reverse mode, second order).
    eps = 1e-5
    fd_hv = (kl_gradient(learner, batch, theta + eps * v)
             - kl_gradient(learner, batch, theta - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv, fd_hv, rtol=1e-6, atol=1e-8 * np.abs(fd_hv).max())
    # Without the second-order terms of the inner step, H v is measurably different: the
    # check above would catch a product that ignored the dependence of θ' on θ.
    first_order = float64_learner(first_order=True, hidden=(3,))
    hv_fo = first_order.flat(first_order.kl_hvp(first_order.params(),
                                                first_order.unflat(v), batch))
    assert abs(u @ hv_fo - fd) > 100 * abs(u @ hv - fd)


@pytest.mark.parametrize("inner_steps", [1, 0])  # MAML; plain TRPO (pretrained, oracle)
def test_kl_hessian_vector_product_is_the_full_hessian_at_theta_old(inner_steps):
    """H e_j (Gauss-Newton, forward over reverse) for every basis vector e_j is the Hessian
    built by reverse over reverse over reverse: exact at θ_old, though it drops the term of
    the KL's gradient in the policy's outputs (0 there). And the TRPO step from it is the
    step from that Hessian. kl_hvp runs compiled here (eager forward mode is slow); the
    reference and the surrogate run eagerly, uncompiled."""
    learner, batch = kl_problem(inner_steps)
    hessian = kl_hessian(learner, batch)
    scale = np.abs(hessian).max()
    assert np.abs(hessian - hessian.T).max() < 1e-12 * scale
    assert np.linalg.eigvalsh(hessian).min() > -1e-12 * scale
    params = learner.params()

    def gauss_newton(v):
        return learner.flat(learner.kl_hvp(params, learner.unflat(v), batch))

    columns = np.stack([gauss_newton(e) for e in np.eye(len(hessian))], axis=1)
    np.testing.assert_allclose(columns, hessian, rtol=1e-9, atol=1e-12 * scale)

    with tf.GradientTape() as tape:
        tape.watch(params)
        loss, _ = learner._outer_terms(params, batch)
    grad, theta = learner.flat(tape.gradient(loss, params)), learner.flat(params)

    def loss_and_kl(candidate):
        return tuple(float(t) for t in learner._outer_terms(learner.unflat(candidate), batch))

    (new_theta, info), (ref_theta, ref_info) = (
        trpo.trpo_step(theta, grad, hvp, loss_and_kl, 0.01, float(loss))
        for hvp in (gauss_newton, lambda v: hessian @ v))
    assert info.step_fraction > 0 and info.backtracks == ref_info.backtracks
    # Equal up to rounding as CG amplifies it (by up to the damped Hessian's condition).
    np.testing.assert_allclose(new_theta - theta, ref_theta - theta, rtol=0,
                               atol=1e-6 * np.abs(ref_theta - theta).max())
    assert info.kl == pytest.approx(ref_info.kl, rel=1e-6)


def test_meta_gradient_of_the_surrogate_matches_finite_differences(eager):
    learner = float64_learner()
    batch = synthetic_batch(learner)
    theta = learner.flat(learner.params())
    loss, grads = learner.surrogate_gradient(learner.params(), batch)
    u = np.random.default_rng(1).normal(size=theta.size)
    eps = 1e-5

    def surrogate(point):
        return float(learner._outer_terms(learner.unflat(point), batch)[0])

    assert float(loss) == pytest.approx(surrogate(theta))
    fd = (surrogate(theta + eps * u) - surrogate(theta - eps * u)) / (2 * eps)
    assert learner.flat(grads) @ u == pytest.approx(fd, rel=1e-6)


# ---------------------------------------------------------------- CG and TRPO
def test_conjugate_gradient_solves_a_small_spd_system():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    a = m.T @ m + 0.5 * np.eye(6)
    b = rng.normal(size=6)
    x = trpo.conjugate_gradient(lambda v: a @ v, b, iterations=6)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8)
    # Fewer iterations: a worse, but still descending, approximation of the solution.
    x2 = trpo.conjugate_gradient(lambda v: a @ v, b, iterations=2)
    assert np.linalg.norm(a @ x2 - b) > 1e-6
    with pytest.raises(FloatingPointError, match="positive definite"):
        trpo.conjugate_gradient(lambda v: -v, b)


def test_trpo_step_lands_on_the_trust_region_and_backtracks_when_the_kl_is_larger():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(4, 4))
    a = m @ m.T + np.eye(4)
    g = rng.normal(size=4)
    theta0 = np.zeros(4)
    delta = 0.01

    def quadratic(scale):
        return lambda th: (float(g @ th), scale * 0.5 * float(th @ a @ th))

    # The KL is the quadratic model itself: the full step goes to KL = δ (up to damping).
    theta, info = trpo.trpo_step(theta0, g, lambda v: a @ v, quadratic(1.0), delta, 0.0,
                                 cg_iters=4, damping=0.0)
    assert info.step_fraction == 1.0 and info.kl == pytest.approx(delta, rel=1e-6)
    np.testing.assert_allclose(theta, -np.sqrt(2 * delta / (g @ np.linalg.solve(a, g)))
                               * np.linalg.solve(a, g), rtol=1e-6)
    # The true KL is 4x the model: 4 * 0.8^(2n) <= 1 first for n = 4 backtracks.
    theta, info = trpo.trpo_step(theta0, g, lambda v: a @ v, quadratic(4.0), delta, 0.0,
                                 cg_iters=4, damping=0.0)
    assert info.backtracks == 4 and info.step_fraction == pytest.approx(0.8**4)
    assert info.kl <= delta and info.loss_after < 0
    # No candidate improves the loss: θ is kept.
    theta, info = trpo.trpo_step(theta0, g, lambda v: a @ v, lambda th: (1.0, 0.0), delta,
                                 0.0)
    assert info.step_fraction == 0.0 and np.all(theta == theta0)


def test_a_meta_update_respects_the_kl_limit_on_the_post_update_policies(eager):
    keras.utils.set_random_seed(0)
    env = NavigationTasks(horizon=10)
    learner = RLMetaLearner(policy_lib.gaussian_mlp_policy(2, 2, hidden=(16,)), env,
                            num_trajectories=3, max_kl=0.01)
    rng = np.random.default_rng(0)
    batch, returns = learner.collect(env.sample_tasks(2, rng), rng)
    assert len(returns) == 2 and len(batch["supports"]) == 1
    with compiled():
        info = learner.update(batch)
    assert info["step_fraction"] > 0 and info["surrogate_after"] < info["surrogate_before"]
    # The KL between the adapted policies at θ_old (who sampled) and at the new θ,
    # recomputed here in numpy from the policies' outputs.
    outer = batch["outer"]
    fast = learner._adapt_tasks([learner.params()] * 2, batch["supports"], first_order=True)
    kls = []
    for i, weights in enumerate(fast):
        out = adapt_lib.forward(learner.model, weights, outer["x"][i]).numpy()
        mu_q, ls_q = out[:, :2], out[:, 2:]
        mu_p, ls_p = outer["old_mean"][i].numpy(), outer["old_log_std"][i].numpy()
        kl = np.sum(ls_q - ls_p + (np.exp(2 * ls_p) + (mu_p - mu_q) ** 2)
                    / (2 * np.exp(2 * ls_q)) - 0.5, axis=1)
        mask = outer["mask"][i].numpy()
        kls.append((np.sum(kl * mask), mask.sum()))
    mean_kl = sum(k for k, _ in kls) / sum(n for _, n in kls)  # over every step
    assert 0.0 < mean_kl <= 0.01 + 1e-6
    assert mean_kl == pytest.approx(info["kl"], rel=1e-3)


def test_the_kl_constraint_is_a_mean_over_every_step_of_the_meta_batch():
    # maml_rl constrains tf.reduce_mean(tf.concat(kls, 0)) (maml_npo.py): the steps of all
    # tasks pooled. Task 0 has one valid step at KL |(2, 0)|²/2 = 2, task 1 three steps at
    # KL 0 (and a masked step that must not count): the pooled mean is 2/4, not (2 + 0)/2.
    learner = RLMetaLearner(policy_lib.gaussian_mlp_policy(2, 2, hidden=(4,)),
                            NavigationTasks(), num_trajectories=1)
    zeros = tf.zeros((4, 2))
    new_mean = [tf.constant([[2.0, 0.0]] + [[0.0, 0.0]] * 3), tf.constant([[0.0, 0.0]] * 3
                                                                           + [[5.0, 0.0]])]
    outputs = [tf.concat([m, zeros], axis=1) for m in new_mean]  # log σ = 0
    outer = {"mask": tf.constant([[1.0, 0, 0, 0], [1.0, 1, 1, 0]]),
             "old_mean": tf.zeros((2, 4, 2)), "old_log_std": tf.zeros((2, 4, 2))}
    _, kl = learner._terms_of_outputs(outputs, outer, with_surrogate=False)
    assert float(kl) == pytest.approx(0.5)


# ---------------------------------------------------------------- maml_rl's step budget
class CountdownEnv:
    """A Gymnasium-API toy whose episode ends (terminated) after ``length`` steps, or, with
    length 0, after 1 + (reset seed mod 7) steps; it observes (reset seed mod 1000, step)
    and pays 1 per step, so a path's return is its length."""

    def __init__(self, length: int):
        self.length = int(length)

    def reset(self, *, seed=None, options=None):
        self.seed, self.t = int(seed), 0
        self.end = self.length or 1 + self.seed % 7
        return np.array([self.seed % 1000, 0.0], np.float32), {}

    steps = 0  # of every instance: what was simulated

    def step(self, action):
        self.t += 1
        CountdownEnv.steps += 1
        obs = np.array([self.seed % 1000, self.t], np.float32)
        return obs, 1.0, self.t >= self.end, False, {}


def countdown_tasks(horizon: int) -> GymTasks:
    return GymTasks(lambda task: CountdownEnv(task[0]), lambda n, rng: np.zeros((n, 1)),
                    observation_dim=2, action_dim=2, horizon=horizon)


def serial_budget(lengths, budget: int) -> int:
    """maml_rl's rule (rllab stateful_pool.run_collect, one worker): whole paths while the
    steps collected so far are fewer than the budget; returns how many paths."""
    count, paths = 0, 0
    while count < budget:
        count += lengths[paths]
        paths += 1
    return paths


def test_a_step_budget_samples_whole_paths_until_each_task_has_n_times_h_steps():
    # H = 10, N = 3 environments per task, budget 3 x 10 = 30 steps per task. Episodes of 4
    # steps: 8 paths (28 < 30, then 32); of 10: 3 (exactly 30); of 7: 5 (28, then 35); of
    # 1: 30. The batch holds P = 30 paths per task (a multiple of N), the rest zero.
    traj = countdown_tasks(10).rollout(constant_policy([0.0, 0.0], [0.0, 0.0]),
                                       np.array([[4], [10], [7], [1]]), 3, [5, 6],
                                       max_steps=30)
    mask = traj["mask"].numpy()
    assert mask.shape == (4, 30, 10)
    for task, (length, paths) in enumerate([(4, 8), (10, 3), (7, 5), (1, 30)]):
        np.testing.assert_array_equal(mask[task].sum(-1), [length] * paths + [0] * (30 - paths))
        steps = traj["observations"].numpy()[task, :paths, :, 1]
        np.testing.assert_array_equal(steps[:, :length], np.tile(np.arange(length), (paths, 1)))
    assert mask.sum(axis=(1, 2)).tolist() == [32, 30, 35, 30]
    np.testing.assert_array_equal(traj["rewards"].numpy(), mask)


def test_a_step_budget_keeps_the_paths_maml_rls_serial_rule_keeps():
    # Lengths 1-7 drawn from each path's reset seed: path k of a task runs on environment
    # k mod N in round k // N, its start and noise from that round's seed.
    num_slots, horizon, seed, budget = 3, 7, np.array([11, 12]), 16
    CountdownEnv.steps = 0
    traj = countdown_tasks(horizon).rollout(constant_policy([0.0, 0.0], [0.0, 0.0]),
                                            np.zeros((5, 1)), num_slots, seed,
                                            max_steps=budget)
    mask, obs, actions = (traj[k].numpy() for k in ("mask", "observations", "actions"))
    # a path starts once it is sure to be kept (the first N: when B > (N - 1) H)
    assert CountdownEnv.steps == mask.sum()
    seeds = [sampler.episode_seeds(sampler.round_seed(seed, r), 5, num_slots)
             for r in range(13)]
    for task in range(5):
        path_seeds = [int(seeds[k // num_slots][task, k % num_slots]) for k in range(36)]
        lengths = [1 + s % 7 for s in path_seeds]
        kept = serial_budget(lengths, budget)
        np.testing.assert_array_equal(mask[task].sum(-1)[:kept], lengths[:kept])
        assert mask[task, kept:].sum() == 0 and budget <= sum(lengths[:kept]) < budget + horizon
        np.testing.assert_array_equal(obs[task, :kept, 0, 0], [s % 1000 for s in path_seeds[:kept]])
        for k in range(kept):  # mean 0, std 1: the action is the path's own noise
            round_noise = sampler.exploration_noise(sampler.round_seed(seed, k // num_slots),
                                                    horizon, 5, num_slots, 2).numpy()
            n = lengths[k]
            np.testing.assert_array_equal(actions[task, k, :n],
                                          round_noise[:n, task, k % num_slots])


def test_without_early_ends_a_step_budget_samples_the_n_trajectories():
    tasks, policy_fn = countdown_tasks(6), constant_policy([0.3, -0.2], [-1.0, 0.5])
    budget = tasks.rollout(policy_fn, np.full((2, 1), 6), 4, [1, 2], max_steps=4 * 6)
    plain = tasks.rollout(policy_fn, np.full((2, 1), 6), 4, [1, 2])
    for key in ("observations", "actions", "rewards", "mask"):
        np.testing.assert_array_equal(budget[key].numpy(), plain[key].numpy(), err_msg=key)


def test_flatten_paths_by_hand():
    # One task, paths of 2 and 3 steps (H = 3), laid out in 6 steps.
    mask = np.array([[[1, 1, 0], [1, 1, 1]]], np.float32)
    rewards = np.array([[[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]]], np.float32)
    obs = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1) * mask[..., None]
    flat = sampler.flatten_paths({"observations": obs, "actions": obs, "rewards": rewards,
                                  "mask": mask}, 0.5, capacity=6)
    np.testing.assert_array_equal(flat["mask"].numpy()[0, 0], [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(flat["steps"].numpy()[0, 0], [0, 1, 0, 1, 2, 0])
    np.testing.assert_array_equal(flat["observations"].numpy()[0, 0, :, 0], [0, 1, 3, 4, 5, 0])
    np.testing.assert_allclose(flat["discounted_returns"].numpy()[0, 0],
                               [1 + 0.5 * 2, 2, 3 + 0.5 * 4 + 0.25 * 5, 4 + 0.5 * 5, 5, 0])
    # the baseline's time features restart with each path: the same fit as on the paths
    returns = sampler.discounted_returns(rewards, 0.5)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(1, 2, 3, 1)).astype(np.float32) * mask[..., None]
    on_paths = sampler.fit_linear_baseline(obs, returns, mask).numpy()[mask > 0]
    flat = sampler.flatten_paths({"observations": obs, "rewards": rewards, "mask": mask}, 0.5,
                                 capacity=6)
    on_steps = sampler.fit_linear_baseline(flat["observations"], flat["discounted_returns"],
                                           flat["mask"], steps=flat["steps"]).numpy()
    np.testing.assert_allclose(on_steps[0, 0, :5], on_paths, rtol=1e-5, atol=1e-5)


def test_the_learner_reports_maml_rls_returns_and_adapts_on_every_step_of_the_budget(eager):
    # Tasks of 4- and 10-step episodes, N = 3, H = 10: 8 paths of return 4 (32 steps) and 3
    # of return 10 (30 steps). maml_rl logs the mean over all paths, (8·4 + 3·10) / 11; the
    # test scripts average each task's own paths: 4 and 10.
    keras.utils.set_random_seed(0)
    learner = RLMetaLearner(policy_lib.gaussian_mlp_policy(2, 2, hidden=(8,)),
                            countdown_tasks(10), num_trajectories=3, sample_budget="steps")
    tasks = np.array([[4], [10]])
    batch, returns = learner.collect(tasks, np.random.default_rng(0))
    assert returns == [pytest.approx(62 / 11), pytest.approx(62 / 11)]
    (x, y), = batch["supports"]
    assert x.shape == (2, 30 + 10 - 1, 2)  # a task overshot the budget: B + H − 1 steps
    np.testing.assert_array_equal(tf.reduce_sum(y[..., -1], -1).numpy(), [32, 30])
    np.testing.assert_array_equal(tf.reduce_sum(batch["outer"]["mask"], -1).numpy(), [32, 30])
    np.testing.assert_allclose(learner.evaluate(tasks, 1, np.random.default_rng(1)),
                               [[4, 4], [10, 10]])
    with compiled():
        assert learner.update(batch)["step_fraction"] >= 0
    with pytest.raises(ValueError, match="Python-stepped"):
        RLMetaLearner(policy_lib.gaussian_mlp_policy(2, 2), NavigationTasks(),
                      sample_budget="steps")


@pytest.mark.parametrize("regularizer", [{"kernel_regularizer": "l2"},
                                         {"activity_regularizer": "l2"}])
def test_a_regularized_policy_is_refused_not_silently_unregularized(regularizer):
    # TRPO's meta-step adds no penalty: the regularizer would be ignored without a word.
    policy = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, **regularizer),
                               keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="regularizers.*silently ignored"):
        RLMetaLearner(policy, NavigationTasks())


def test_a_dropout_policy_is_refused_not_silently_run_without_it():
    # The RL learner's forward passes are unseeded: its dropout would be off throughout.
    policy = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8),
                               keras.layers.Dropout(0.2, name="drop"), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="random numbers.*drop.*silently off"):
        RLMetaLearner(policy, NavigationTasks())


# ---------------------------------------------------------------- the command line
def nav_config(tmp_path, **overrides):
    base = dict(datasource="navigation", logdir=str(tmp_path), metatrain_iterations=2,
                meta_batch_size=2, update_batch_size=2, update_lr=0.1, norm="None",
                num_test_tasks=2, test_num_updates=2, log=False)
    base.update(overrides)
    return Config(**base).validate()


def test_cli_trains_resumes_and_writes_returns_per_step(tmp_path):
    def config(**overrides):  # one task per meta-batch: each run traces its tasks' graphs
        return nav_config(tmp_path, meta_batch_size=1, **overrides)

    lines = []
    result = runner.run(config(), log=lines.append)  # compiled, as the CLI runs
    run_dir = result["run_dir"]
    assert run_dir.endswith("cls_5.mbs_1.ubs_2.numstep1.updatelr0.1nonorm")
    with open(os.path.join(run_dir, "test_returns.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["steps"]) for r in rows] == [0, 1, 2]
    returns = np.load(os.path.join(run_dir, "test_returns.npy"))
    assert returns.shape == (2, 3) and np.all(returns < 0)
    assert float(rows[1]["mean_return"]) == pytest.approx(returns[:, 1].mean(), rel=1e-6)
    assert float(rows[1]["ci95"]) == pytest.approx(
        1.96 * returns[:, 1].std() / np.sqrt(2), rel=1e-6)
    assert os.path.exists(os.path.join(run_dir, "model-2.index"))
    lines.clear()
    # compiled too: tracing again costs less than TRPO's eager Hessian-vector products
    runner.run(config(metatrain_iterations=3, test_after_train=False), log=lines.append)
    assert any("Resumed from" in line and "at iteration 2" in line for line in lines)
    with open(os.path.join(run_dir, "training_log.csv")) as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [1, 2, 3]
    # --resume=False on a run with checkpoints: an error that names the fix, nothing touched
    from tf_maml.checkpoint import CheckpointError

    before = sorted(os.listdir(run_dir))
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(model-3\).*"
                                              r"`resume=True`"):
        runner.run(config(metatrain_iterations=4, resume=False), log=lines.append)
    assert sorted(os.listdir(run_dir)) == before


def test_a_full_disk_while_writing_returns_keeps_the_earlier_pair_whole(tmp_path, monkeypatch):
    """test_returns.csv and .npy are one set: the .npy hitting a full disk used to leave the
    new csv beside the old npy (two evaluations mixed), with "earlier results are intact"."""
    import errno

    from tf_maml import atomic
    from tf_maml.rl import training as rl_training
    from tf_maml.rundir import RunDirError

    rl_training.write_results(str(tmp_path), np.full((2, 3), -5.0))
    earlier = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert sorted(earlier) == ["test_returns.csv", "test_returns.npy"]
    real_open, opened = open, []

    def full_at_the_second_file(path, mode="r", *args, **kwargs):
        if "w" in mode:
            opened.append(path)
            if len(opened) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", full_at_the_second_file, raising=False)
    with pytest.raises(RunDirError, match="No space left on device. Nothing was lost"):
        rl_training.write_results(str(tmp_path), np.full((2, 3), -1.0))
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == earlier


def test_returns_of_another_evaluation_keep_the_earlier_pair(tmp_path):
    """An evaluation with other returns keeps the earlier test_returns pair whole in
    earlier_results/ (it replaced them for good); the same returns again keep nothing."""
    from tf_maml import rundir
    from tf_maml.rl import training as rl_training

    rl_training.write_results(str(tmp_path), np.full((2, 3), -5.0), log=lambda line: None)
    rl_training.write_results(str(tmp_path), np.full((2, 3), -1.0), log=lambda line: None)
    (kept,) = (tmp_path / rundir.EARLIER_RESULTS).iterdir()
    assert sorted(os.listdir(kept)) == ["test_returns.csv", "test_returns.npy"]
    np.testing.assert_array_equal(np.load(kept / "test_returns.npy"), np.full((2, 3), -5.0))
    np.testing.assert_array_equal(np.load(tmp_path / "test_returns.npy"), np.full((2, 3), -1.0))
    rl_training.write_results(str(tmp_path), np.full((2, 3), -1.0), log=lambda line: None)
    assert len(os.listdir(tmp_path / rundir.EARLIER_RESULTS)) == 1


def test_a_folder_where_the_returns_go_is_named_before_training(tmp_path):
    """Was said only after the training and the whole evaluation, as supervised runs were."""
    from tf_maml.rundir import RunDirError

    config = nav_config(tmp_path, metatrain_iterations=1)
    run_dir = tmp_path / config.exp_string()
    (run_dir / "test_returns.csv").mkdir(parents=True)
    with pytest.raises(RunDirError, match=(
            rf"^could not write test_returns\.csv in {re.escape(str(run_dir))}: "
            rf"{re.escape(str(run_dir / 'test_returns.csv'))} is a folder, where a file goes\. "
            r"Nothing was lost: the checkpoints are intact and no result file was written; "
            r"move that "
            r"folder away")):
        runner.run(config, log=lambda line: None)
    assert sorted(os.listdir(run_dir)) == ["test_returns.csv"]  # not trained: nothing saved


def test_a_folder_where_the_flags_go_names_the_earlier_returns_it_keeps(tmp_path):
    """What a refused write keeps is said as the supervised evaluation says it: the earlier
    files by name (it said "earlier results are intact" whether there were any or not)."""
    from tf_maml.rl import training as rl_training
    from tf_maml.rundir import RunDirError

    rl_training.write_results(str(tmp_path), np.full((2, 3), -5.0), log=lambda line: None)
    (tmp_path / "test_config.json").mkdir()
    with pytest.raises(RunDirError, match=r"Nothing was lost: the checkpoints and the earlier "
                                          r"results \(test_returns\.csv/\.npy\) are intact; "):
        rl_training.check_results_writable(str(tmp_path), extra=["test_config.json"])


def test_an_evaluation_stopped_before_its_returns_leaves_the_earlier_flags(tmp_path,
                                                                          monkeypatch):
    """test_config.json is written with the returns, as one set: an evaluation stopped
    (Ctrl-C, a kill) or failed before them left its flags beside the earlier returns."""
    from tf_maml.rl import training as rl_training

    config = nav_config(tmp_path, baseline="random", train=False)
    run_dir = tmp_path / config.exp_string()
    run_dir.mkdir()
    (run_dir / "test_config.json").write_text("the earlier evaluation's")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rl_training, "evaluate", stopped)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, log=lambda line: None)
    assert (run_dir / "test_config.json").read_text() == "the earlier evaluation's"
    monkeypatch.undo()
    returns = np.full((2, 3), -5.0)
    rl_training.write_results(str(run_dir), returns, extra={"test_config.json": "these"})
    assert (run_dir / "test_config.json").read_text() == "these"


def _random_baseline_cli(tmp_path, capsys, *extra) -> str:
    """Runs tf-maml on a tiny navigation random baseline (with the flags ``extra``) into
    tmp_path; asserts it exited cleanly and returns its run directory."""
    from absl import app, flags

    from tf_maml import main as cli_main

    flags.FLAGS.unparse_flags()
    argv = ["tf-maml", "--datasource=navigation", "--baseline=random", f"--logdir={tmp_path}",
            "--meta_batch_size=2", "--update_batch_size=2", "--update_lr=0.1", "--norm=None",
            "--num_test_tasks=2", "--test_num_updates=1", *extra]
    try:
        with pytest.raises(SystemExit) as exit_:
            app.run(cli_main.main, argv=argv)
    finally:
        flags.FLAGS.unparse_flags()
    assert exit_.value.code in (0, None), capsys.readouterr().err[-2000:]
    return os.path.join(tmp_path, "cls_5.mbs_2.ubs_2.numstep1.updatelr0.1randomnonorm")


def test_cli_random_baseline_evaluates_without_training(tmp_path, capsys):
    run_dir = _random_baseline_cli(tmp_path, capsys, "--max_kl=0.02", "--discount=0.9")
    assert os.path.exists(os.path.join(run_dir, "test_returns.csv"))
    assert not any(name.startswith("model-") for name in os.listdir(run_dir))
    with open(os.path.join(run_dir, "config.json")) as f:
        config = Config.from_json(f.read())
    assert config.max_kl == 0.02 and config.discount == 0.9


def test_a_random_baseline_evaluated_alone_can_be_reevaluated(tmp_path, capsys):
    """tf-maml-reproduce evaluates the random row with --train=False, which writes its flags
    as test_config.json, not config.json: python -m tf_maml.rl.run said the folder "holds no
    config.json". Its step 0 (no adaptation: the seeded policy on the fixed test tasks) is
    the first evaluation's."""
    run_dir = _random_baseline_cli(tmp_path, capsys, "--train=False")
    assert not os.path.exists(os.path.join(run_dir, "config.json"))
    runner.reevaluate_rl(run_dir, ["0.05"], log=lambda *_: None)
    first = np.load(os.path.join(run_dir, "test_returns.npy"))
    again = np.load(os.path.join(run_dir, "test_returns_steps0.05.npy"))
    assert first.shape == again.shape == (2, 2)
    np.testing.assert_array_equal(again[:, 0], first[:, 0])


def test_a_random_baseline_restored_from_the_zoo_names_its_evaluation(tmp_path):
    """From a clone, tf-maml-reproduce restores the random row as its numbers and its
    record (reproduce.json) alone: the re-evaluation said it was "not a run directory";
    it names the evaluation that writes the flags, with this folder's --logdir."""
    run_dir = tmp_path / "navigation" / "cls_5.mbs_20.ubs_20.numstep1.updatelr0.1randomnonorm"
    run_dir.mkdir(parents=True)
    (run_dir / "reproduce.json").write_text(json.dumps({"test_returns|navigation_random": {
        "iteration": 0, "train_command": None, "eval_command":
        "tf-maml --flagfile=flags/navigation_random.flags --logdir=$LOGDIR/navigation/ "
        "--train=False"}}))
    (run_dir / "test_returns.csv").write_text("steps,mean_return\n0,-78.2\n")
    expected = (f"tf-maml --flagfile=flags/navigation_random.flags --logdir={tmp_path}"
                f"{os.sep}navigation{os.sep} --train=False")
    with pytest.raises(ConfigError, match="restored from the model zoo") as err:
        runner.reevaluate_rl(str(run_dir), ["0.1"])
    assert f"`{expected}`" in str(err.value)


@pytest.mark.parametrize("overrides, flag", [
    (dict(datasource="sinusoid", baseline="random"), "--baseline"),
    (dict(max_kl=0.0), "--max_kl"),
    (dict(discount=1.5), "--discount"),
    (dict(algorithm="reptile"), "--algorithm"),
    (dict(sample_budget="steps"), "--sample_budget"),  # navigation's are N trajectories
])
def test_impossible_navigation_flags_name_the_flag(tmp_path, overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        nav_config(tmp_path, **overrides)
    nav_config(tmp_path, baseline="oracle", pretrain_iterations=1, metatrain_iterations=0)


@pytest.mark.parametrize("run_dir, step_sizes, num_test_tasks, message", [
    ("missing", ["0.1"], 0, r"--run_dir=.*missing is not a run directory \(not a folder\): "
                            r"give the folder of a finished RL run"),
    ("empty", ["0.1"], 0, r"--run_dir=.*empty is not a run directory \(it holds no "
                          r"config\.json\)"),
    ("garbled", ["0.1"], 0, r"garbled/config\.json, the flags the run was trained with, cannot "
                            r"be read .*restore it"),
    ("sinusoid", ["0.1"], 0, r"--run_dir=.*sinusoid is a sinusoid run; this command "
                             r"re-evaluates reinforcement-learning runs"),
    ("navigation", ["0.1", "half"], 0, r"--step_sizes: one step size \(alpha\) >= 0 per test "
                                       r"step.*got '0\.1,half'"),
    ("navigation", ["-0.1"], 0, r"--step_sizes: .*got '-0\.1'"),
    ("navigation", ["0.1"], -2, r"--num_test_tasks: must be >= 0 \(0: the run's\), got -2"),
    ("navigation", ["0.1"], 0, r"--run_dir=.*navigation holds no checkpoint to re-evaluate: "
                               r"train the run first with tf-maml --flagfile=<its flagfile> "
                               r"\(e\.g\. flags/navigation_maml\.flags\)$"),
], ids=["missing", "empty", "garbled-config", "supervised-run", "not-a-number", "negative",
        "negative-tasks", "no-checkpoint"])
def test_reevaluation_arguments_are_named_before_anything_is_written(
        tmp_path, run_dir, step_sizes, num_test_tasks, message):
    # python -m tf_maml.rl.run: each of these was a traceback (FileNotFoundError, ValueError
    # from float() or from the locomotion module), or a negative α evaluated; a run without a
    # checkpoint was told of tf-maml's flags (--train=True, --logdir).
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "config.json").write_text('{"datasource": "navi')
    for name in ("sinusoid", "navigation"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(
            Config(datasource=name, norm="None").to_json())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=message):
        runner.reevaluate_rl(str(tmp_path / run_dir), step_sizes, num_test_tasks)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_step_sizes_too_many_to_name_the_results_are_refused_before_evaluating(
        tmp_path, monkeypatch):
    """60 step sizes name the results test_returns_steps<60 values>.csv, over the 255 bytes a
    file name may have: the write failed after the whole evaluation. Ordinary step sizes keep
    their names (docs/rl.md's test_returns_steps0.1_0.05_0.05), -0 is 0."""
    from tf_maml.rl import training as rl_training

    run_dir = tmp_path / "navigation"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(
        Config(datasource="navigation", norm="None", baseline="random").to_json())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(rl_training, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    sizes = [f"0.0{i % 10}5" for i in range(60)]
    with pytest.raises(ConfigError, match=r"^`step_sizes`: 60 step sizes would name the results "
                       r"test_returns_steps0\.005_0\.015_.*_0\.095\.csv, too long a name for a "
                       rf"file in {re.escape(str(run_dir))} \(\d+ bytes while it is written, "
                       r"over the \d+ a file name may have\): give fewer step sizes"):
        runner.reevaluate_rl(str(run_dir), sizes)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert (rl_training.reevaluation_name(str(run_dir), [0.1, 0.05, 0.05])
            == "test_returns_steps0.1_0.05_0.05")
    assert rl_training.reevaluation_name(str(run_dir), [-0.0, 0.1]) == "test_returns_steps0.0_0.1"


@pytest.mark.parametrize("run_dir, message", [
    ("", r"^--run_dir: is empty \(an unset shell variable"),
    ("~/logs/navigation/run", r"^--run_dir: '~/logs/navigation/run' starts with ~, which only a "
                              r"shell expands .*: it would be a folder named ~ here; write /"),
], ids=["empty", "home"])
def test_a_run_dir_no_shell_expanded_is_named_not_said_to_be_no_folder(run_dir, message):
    # Was "--run_dir=~/logs/navigation/run is not a run directory (not a folder)", of a
    # folder the user's shell lists (the ~ of a flagfile, or of --run_dir=~/...).
    with pytest.raises(ConfigError, match=message):
        runner.reevaluate_rl(run_dir, ["0.1"])


def test_a_finished_rl_run_kept_as_weights_is_told_apart_from_resumable_state(tmp_path):
    """The model zoo keeps a finished run as the policy and the iteration alone (no TRPO
    counters): resuming training from it says so, as for a supervised run, instead of
    calling the checkpoint one of another model."""
    from tf_maml.checkpoint import CheckpointError
    from tf_maml.rl import training as rl_training

    learner = rl_training.build_learner(num_trajectories=1)
    full = rl_training.checkpointer(learner, str(tmp_path / "run"))
    full.save(3)
    assert not full.weights_only(full.path_for(3))
    tf.train.Checkpoint(model=learner.model, iteration=full.iteration).write(
        str(tmp_path / "zoo" / "model-3"))
    kept = rl_training.checkpointer(learner, str(tmp_path / "zoo"))
    assert kept.weights_only(kept.path_for(3))
    with pytest.raises(CheckpointError, match="holds the model's weights only"):
        kept.restore(kept.path_for(3))
    assert kept.restore(kept.path_for(3), expect_optimizer=False)[0] == 3
