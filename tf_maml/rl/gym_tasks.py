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

from tf_maml.errors import check_count
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
        check_count("num_tasks", num_tasks, 1, "a whole number of tasks")  # else the env's
        return np.asarray(self._sample_tasks(num_tasks, rng), np.float32)

    def rollout(self, policy_fn, tasks, num_trajectories: int, seed,
                max_steps: int | None = None) -> dict[str, tf.Tensor]:
        """N trajectories per task, as :func:`tf_maml.rl.sampler.rollout` returns them; with
        ``max_steps``, whole paths until each task has at least that many steps, N
        environments per task (:class:`tf_maml.rl.sampler.PathSchedule`)."""
        tasks = np.asarray(tasks)
        num_tasks = len(tasks)
        schedule = sampler.PathSchedule(seed, num_tasks, num_trajectories, self.horizon,
                                        self.action_dim, max_steps)
        envs = [[self.make_env(task) for _ in range(num_trajectories)] for task in tasks]
        obs = np.zeros(schedule.shape + (self.observation_dim,), np.float32)
        self._reset(envs, obs, schedule, np.ones(schedule.shape, bool))
        while schedule.live.any():
            mean, log_std = (np.asarray(p) for p in policy_lib.split(policy_fn(
                tf.constant(obs))))
            actions = (mean + np.exp(log_std) * schedule.noise()).astype(np.float32)
            schedule.write({"observations": obs, "actions": actions})
            rewards = np.zeros(schedule.shape, np.float32)
            ended = np.zeros(schedule.shape, bool)
            for i, j in zip(*np.nonzero(schedule.live)):
                next_obs, rewards[i, j], terminated, truncated, _ = envs[i][j].step(
                    actions[i, j])
                obs[i, j] = self._flat(next_obs, "step")
                ended[i, j] = terminated or truncated
            schedule.write({"rewards": rewards, "mask": np.ones(schedule.shape, np.float32)})
            self._reset(envs, obs, schedule, schedule.step(ended))
        for row in envs:
            for env in row:
                if hasattr(env, "close"):
                    env.close()
        return schedule.result()

    def _reset(self, envs, obs, schedule, which) -> None:
        """Starts the paths of the slots ``which`` (their round's episode seeds)."""
        seeds = schedule.start_seeds(which)
        for i, j in zip(*np.nonzero(which)):
            obs[i, j] = self._flat(envs[i][j].reset(seed=int(seeds[i, j]))[0], "reset")

    def _flat(self, obs, where: str) -> np.ndarray:
        flat = np.asarray(obs, np.float32).reshape(-1)
        if flat.size != self.observation_dim:
            raise ValueError(f"the environment's {where}() returned an observation of "
                             f"{flat.size} values; GymTasks was told observation_dim="
                             f"{self.observation_dim}")
        return flat
