"""Your own environments as a meta-RL task family: any Gymnasium-API environment.

:class:`GymTasks` turns a factory ``make_env(task) -> env`` into the task family
:class:`tf_maml.rl.learner.RLMetaLearner` trains on. ``env`` only needs Gymnasium's API,
``reset(seed=...) -> (obs, info)`` and ``step(action) -> (obs, reward, terminated,
truncated, info)``; Gymnasium itself is not imported (it need not be installed). The T·N
environments of a batch are stepped by a Python loop, the policy is called once per step
for all of them, and the output is exactly what the vectorised TensorFlow sampler
(:func:`tf_maml.rl.sampler.rollout`) returns, with the same exploration noise for the same
seed.

Example (the navigation tasks through their Gymnasium environment)::

    from tf_maml.tasks.navigation import NavigationEnv, NavigationTasks

    tasks = GymTasks(lambda goal: NavigationEnv(goal=goal),
                     sample_tasks=NavigationTasks().sample_tasks,
                     observation_dim=2, action_dim=2, horizon=100)
    learner = RLMetaLearner(gaussian_mlp_policy(2, 2), tasks)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tf_maml.rl import policy as policy_lib
from tf_maml.rl import sampler


class GymTasks:
    """A task family of Gymnasium-API environments.

    Args:
      make_env: ``make_env(task) -> env``, one environment for one task (a row of what
        ``sample_tasks`` returns). Called T·N times per batch of rollouts.
      sample_tasks: ``sample_tasks(num_tasks, rng) -> array [T, ...]`` of task parameters.
      observation_dim, action_dim: flat sizes of an observation and an action.
      horizon: the maximal episode length (an episode also ends when the environment says
        ``terminated`` or ``truncated``).
    """

    def __init__(self, make_env: Callable, sample_tasks: Callable[[int, np.random.Generator],
                                                                  np.ndarray],
                 observation_dim: int, action_dim: int, horizon: int):
        if horizon < 1 or observation_dim < 1 or action_dim < 1:
            raise ValueError(f"observation_dim, action_dim and horizon must be >= 1, got "
                             f"{observation_dim}, {action_dim} and {horizon}")
        self.make_env = make_env
        self._sample_tasks = sample_tasks
        self.observation_dim = int(observation_dim)
        self.action_dim = int(action_dim)
        self.horizon = int(horizon)

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(self._sample_tasks(num_tasks, rng), np.float32)

    def rollout(self, policy_fn, tasks, num_trajectories: int, seed) -> dict[str, tf.Tensor]:
        """N trajectories per task, as :func:`tf_maml.rl.sampler.rollout` returns them."""
        tasks = np.asarray(tasks)
        num_tasks, horizon = len(tasks), self.horizon
        shape = (num_tasks, num_trajectories)
        envs = [[self.make_env(task) for _ in range(num_trajectories)] for task in tasks]
        seed_value = np.asarray(seed, np.int64)
        noise = np.asarray(sampler.exploration_noise(seed_value, horizon, num_tasks,
                                                     num_trajectories, self.action_dim))
        obs = np.zeros(shape + (self.observation_dim,), np.float32)
        reset_seeds = sampler.episode_seeds(seed_value, num_tasks, num_trajectories)
        for i in range(num_tasks):
            for j in range(num_trajectories):
                obs[i, j] = self._flat(envs[i][j].reset(seed=int(reset_seeds[i, j]))[0], "reset")
        out = {"observations": np.zeros(shape + (horizon, self.observation_dim), np.float32),
               "actions": np.zeros(shape + (horizon, self.action_dim), np.float32),
               "rewards": np.zeros(shape + (horizon,), np.float32),
               "mask": np.zeros(shape + (horizon,), np.float32)}
        alive = np.ones(shape, bool)
        for t in range(horizon):
            if not alive.any():
                break
            mean, log_std = (np.asarray(p) for p in policy_lib.split(policy_fn(
                tf.constant(obs))))
            actions = (mean + np.exp(log_std) * noise[t]).astype(np.float32)
            # zeros after the end (np.where: NaN·0 would be NaN)
            out["observations"][:, :, t] = np.where(alive[..., None], obs, 0.0)
            out["actions"][:, :, t] = np.where(alive[..., None], actions, 0.0)
            for i, j in zip(*np.nonzero(alive)):
                next_obs, reward, terminated, truncated, _ = envs[i][j].step(actions[i, j])
                out["rewards"][i, j, t] = reward
                out["mask"][i, j, t] = 1.0
                obs[i, j] = self._flat(next_obs, "step")
                if terminated or truncated:
                    alive[i, j] = False
        for row in envs:
            for env in row:
                if hasattr(env, "close"):
                    env.close()
        return {k: tf.constant(v) for k, v in out.items()}

    def _flat(self, obs, where: str) -> np.ndarray:
        flat = np.asarray(obs, np.float32).reshape(-1)
        if flat.size != self.observation_dim:
            raise ValueError(f"the environment's {where}() returned an observation of "
                             f"{flat.size} values; GymTasks was told observation_dim="
                             f"{self.observation_dim}")
        return flat
