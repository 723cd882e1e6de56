"""Sampling trajectories of a batch of tasks, and turning them into advantages.

A batch of trajectories is a dict of tensors for T tasks × N trajectories × H steps:

* ``observations [T, N, H, obs_dim]``, ``actions [T, N, H, act_dim]`` (the sampled,
  unclipped Gaussian actions, whose log-likelihood the policy gradient uses);
* ``rewards [T, N, H]`` and ``mask [T, N, H]`` (1 for the steps that happened, including
  the one that reached the goal); every array is 0 after the episode ended.

:func:`rollout` runs an environment with the TensorFlow interface of
:class:`tf_maml.tasks.navigation.NavigationTasks` as one ``tf.while_loop`` (all T·N agents
step together; call it inside a ``tf.function``). :class:`tf_maml.rl.gym_tasks.GymTasks`
provides the same output for Gymnasium-API environments with a Python loop.

:func:`advantages` computes discounted returns, fits rllab's linear feature baseline per
task and returns normalised advantages (generalised advantage estimation with λ = 1, as
the authors' ``maml_rl`` default).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tf_maml.rl import policy as policy_lib

PolicyFn = Callable[[tf.Tensor], tf.Tensor]  # observations [T, N, obs] -> [T, N, 2 * act]
BASELINE_REG = 1e-5  # rllab LinearFeatureBaseline's ridge coefficient


def exploration_noise(seed, horizon: int, num_tasks: int, num_trajectories: int,
                      action_dim: int) -> tf.Tensor:
    """Standard normal noise ``[H, T, N, act]`` from a stateless ``seed`` (2 integers), so a
    batch of rollouts is a pure function of the weights, the tasks and the seed."""
    shape = tf.stack([horizon, num_tasks, num_trajectories, action_dim])
    return tf.random.stateless_normal(shape, seed=tf.cast(seed, tf.int64))


def episode_seeds(seed, num_tasks: int, num_trajectories: int) -> np.ndarray:
    """The seed of each episode start ``[T, N]`` of a Python-loop or batched-simulator
    rollout from ``seed``: one definition, so that both give the same episodes."""
    return np.random.default_rng(np.asarray(seed, np.int64)).integers(
        2**31, size=(num_tasks, num_trajectories))


def rollout(env, policy_fn: PolicyFn, tasks: tf.Tensor, num_trajectories: int,
            seed) -> dict[str, tf.Tensor]:
    """N trajectories of each of the T ``tasks`` in ``env``, stepped together.

    ``policy_fn`` maps observations ``[T, N, obs_dim]`` to Gaussian parameters
    ``[T, N, 2 * act_dim]`` (mean, log-std); actions are ``mean + exp(log_std) · ε`` with
    ε from :func:`exploration_noise`. Agents whose episode ended stay where they are and
    are masked out.
    """
    tasks = tf.convert_to_tensor(tasks)
    num_tasks, horizon, act_dim = tf.shape(tasks)[0], env.horizon, env.action_dim
    noise = exploration_noise(seed, horizon, num_tasks, num_trajectories, act_dim)
    state = env.initial_state(tasks, num_trajectories)
    alive = tf.ones(tf.stack([num_tasks, num_trajectories]), tf.bool)
    arrays = {k: tf.TensorArray(tf.float32, size=horizon)
              for k in ("observations", "actions", "rewards", "mask")}

    def body(t, state, alive, arrays):
        obs = env.observe(state, tasks)
        mean, log_std = policy_lib.split(policy_fn(obs))
        action = mean + tf.exp(log_std) * noise[t]
        next_state, reward, done = env.step(state, tasks, action)
        live = tf.cast(alive, tf.float32)
        arrays = {  # steps after the end are zeros
            "observations": arrays["observations"].write(t, obs * live[..., None]),
            "actions": arrays["actions"].write(t, action * live[..., None]),
            "rewards": arrays["rewards"].write(t, reward * live),
            "mask": arrays["mask"].write(t, live),
        }
        state = tf.where(alive[..., None], next_state, state)
        return t + 1, state, tf.logical_and(alive, tf.logical_not(done)), arrays

    _, _, _, arrays = tf.while_loop(lambda t, *_: t < horizon, body,
                                    (tf.constant(0), state, alive, arrays))
    # TensorArray stacks [H, T, N, ...]; trajectories are stored [T, N, H, ...].
    out = {}
    for key, array in arrays.items():
        stacked = array.stack()
        perm = [1, 2, 0] + list(range(3, stacked.shape.rank))
        out[key] = tf.transpose(stacked, perm)
    return out


def discounted_returns(rewards: tf.Tensor, discount: float) -> tf.Tensor:
    """R_t = Σ_{k ≥ t} γ^{k−t} r_k along the last axis (rewards after the end are 0)."""
    horizon = rewards.shape[-1]
    steps = tf.range(horizon, dtype=tf.float32)
    lag = steps[:, None] - steps[None, :]  # [k, t]: k − t
    weights = tf.where(lag >= 0, tf.pow(tf.cast(discount, tf.float32), tf.maximum(lag, 0.0)),
                       0.0)
    return tf.tensordot(rewards, weights, axes=[[-1], [0]])


def baseline_features(observations: tf.Tensor) -> tf.Tensor:
    """rllab's linear-baseline features ``[o, o², t, t², t³, 1]`` (o clipped to ±10,
    t = step / 100) for ``observations [T, N, H, obs]`` -> ``[T, N, H, 2·obs + 4]``."""
    obs = tf.clip_by_value(observations, -10.0, 10.0)
    horizon = observations.shape[-2]
    t = tf.range(horizon, dtype=tf.float32)[:, None] / 100.0
    time = tf.concat([t, t ** 2, t ** 3, tf.ones_like(t)], axis=-1)
    time = tf.broadcast_to(time, tf.concat([tf.shape(obs)[:-1], [4]], axis=0))
    return tf.concat([obs, obs ** 2, time], axis=-1)


def fit_linear_baseline(observations: tf.Tensor, returns: tf.Tensor, mask: tf.Tensor,
                        reg: float = BASELINE_REG) -> tf.Tensor:
    """Per task, the ridge regression of the returns on :func:`baseline_features` over the
    steps that happened; returns its predictions ``[T, N, H]`` (float32).

    Solves (ΦᵀΦ + reg·I) w = ΦᵀR per task in float64 (rllab's ``LinearFeatureBaseline``,
    fitted on each task's own trajectories, as in ``maml_rl``).
    """
    phi = tf.cast(baseline_features(observations), tf.float64)
    m = tf.cast(mask, tf.float64)[..., None]
    num_tasks, num_features = tf.shape(phi)[0], phi.shape[-1]
    phi_flat = tf.reshape(phi * m, [num_tasks, -1, num_features])
    target = tf.reshape(tf.cast(returns, tf.float64) * m[..., 0], [num_tasks, -1, 1])
    gram = tf.matmul(phi_flat, phi_flat, transpose_a=True)
    gram += reg * tf.eye(num_features, dtype=tf.float64)
    coeffs = tf.linalg.solve(gram, tf.matmul(phi_flat, target, transpose_a=True))  # [T, F, 1]
    predictions = tf.einsum("tnhf,tf->tnh", phi, coeffs[..., 0])
    return tf.cast(predictions, tf.float32)


def advantages(trajectories: dict, discount: float, normalize: bool = True) -> tf.Tensor:
    """Advantages ``[T, N, H]``: discounted return minus each task's fitted linear baseline,
    then (``normalize``) centred and scaled to unit variance per task over the steps that
    happened (rllab's ``center_adv``). 0 on masked steps."""
    mask = trajectories["mask"]
    returns = discounted_returns(trajectories["rewards"], discount)
    adv = (returns - fit_linear_baseline(trajectories["observations"], returns, mask)) * mask
    if normalize:
        count = tf.maximum(tf.reduce_sum(mask, axis=[1, 2], keepdims=True), 1.0)
        mean = tf.reduce_sum(adv, axis=[1, 2], keepdims=True) / count
        var = tf.reduce_sum(tf.square(adv - mean) * mask, axis=[1, 2], keepdims=True) / count
        adv = (adv - mean) / (tf.sqrt(var) + 1e-8) * mask
    return adv


def undiscounted_returns(trajectories: dict) -> tf.Tensor:
    """The return of each trajectory, ``[T, N]``: the sum of its rewards."""
    return tf.reduce_sum(trajectories["rewards"], axis=-1)
