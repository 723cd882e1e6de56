"""The locomotion task families as the RL learner samples them: :class:`LocomotionTasks`,
whose rollouts step all T·N simulations of a batch together in MuJoCo's C thread pool
(``mujoco.batch.Batch``, MuJoCo 4), the policy once per time step for all of them (the
physics, rewards and observations: :mod:`tf_maml.tasks.locomotion`).

One time step: the policy maps the ``[T, N, obs]`` observations to Gaussian parameters;
the actions ``mean + exp(log_std)·ε`` (ε from :func:`tf_maml.rl.sampler.exploration_noise`)
are written, clipped to [−1, 1], into the live simulations' controls; one
``Batch.step(nstep=frame_skip, stage=mjSTAGE_ACC)`` call advances them and runs
``mj_forward`` at the new states (rllab's ``model.forward()`` after the steps, which the
observations and rewards read); the rewards, observations and ends of episodes are then
computed from the bound simulator fields with NumPy, for all simulations at once
(:mod:`tf_maml.tasks.locomotion`), and a simulation MuJoCo reset during the step (its
``Batch.warning`` counters rose) ends its episode. Finished simulations are left out of
later calls.

Episode starts follow :class:`tf_maml.rl.gym_tasks.GymTasks`: simulation (i, j) starts from
the generator seeded with entry (i, j) of ``default_rng(seed).integers(2**31, (T, N))``, so
the result is the trajectories a plain loop over one ``LocomotionEnv`` per simulation gives
for the same seed (tested), bit for bit at any thread count.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_maml.rl import policy as policy_lib
from tf_maml.rl import sampler
from tf_maml.tasks import locomotion


class LocomotionTasks:
    """A locomotion task family (``family``: one of
    :data:`tf_maml.tasks.locomotion.TASK_FAMILIES`) for
    :class:`tf_maml.rl.learner.RLMetaLearner`, with :class:`tf_maml.rl.gym_tasks.GymTasks`'
    interface: ``sample_tasks`` and a batched ``rollout``.

    Args:
      family: ``cheetah_vel``, ``cheetah_dir``, ``ant_vel`` or ``ant_dir``.
      oracle: append the task (goal velocity or direction) to the observation.
      horizon: the maximal episode length (200).
      threads: MuJoCo's threads stepping the simulations (0: one per CPU).

    Example::

        tasks = LocomotionTasks("cheetah_vel")
        learner = RLMetaLearner(gaussian_mlp_policy(tasks.observation_dim, tasks.action_dim),
                                tasks)
    """

    def __init__(self, family: str, oracle: bool = False, horizon: int = locomotion.HORIZON,
                 threads: int = 0):
        if horizon < 1 or threads < 0:
            raise ValueError(f"horizon must be >= 1 and threads >= 0, got {horizon} and "
                             f"{threads}")
        self.name = family
        self.family = locomotion.family_named(family)
        self.model = locomotion.load_model(self.family.robot)
        self.oracle = bool(oracle)
        self.horizon = int(horizon)
        self.threads = int(threads)
        self.action_dim = int(self.model.nu)
        self.observation_dim = locomotion.observation_dim(self.family, self.oracle)
        self._batches: dict = {}

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> np.ndarray:
        """``[T, 1]`` goal velocities or directions
        (:func:`tf_maml.tasks.locomotion.sample_tasks`)."""
        return locomotion.sample_tasks(self.family, num_tasks, rng)

    def batch(self, num_simulations: int):
        """The ``mujoco.batch.Batch`` of that many simulations (kept for the next call)."""
        if num_simulations not in self._batches:
            from mujoco import batch as mj_batch

            self._batches[num_simulations] = mj_batch.Batch(self.model, num_simulations,
                                                            nthread=self.threads)
        return self._batches[num_simulations]

    def rollout(self, policy_fn, tasks, num_trajectories: int, seed) -> dict:
        """N trajectories of each of the T ``tasks``, all T·N simulations stepped together,
        as :func:`tf_maml.rl.sampler.rollout` returns them: ``observations``, ``actions``,
        ``rewards`` and ``mask`` tensors ``[T, N, H, ...]``, zeros after an episode's end."""
        return _rollout(self, policy_fn, tasks, num_trajectories, seed)


def _rollout(tasks_family: LocomotionTasks, policy_fn, tasks, num_trajectories: int,
             seed) -> dict:
    """:meth:`LocomotionTasks.rollout`: the loop over time steps (module doc)."""
    import mujoco

    tasks = np.asarray(tasks, np.float64).reshape(len(tasks), -1)[:, 0]
    num_tasks, horizon = len(tasks), tasks_family.horizon
    shape, size = (num_tasks, num_trajectories), num_tasks * num_trajectories
    family, model = tasks_family.family, tasks_family.model
    batch = tasks_family.batch(size)
    fields = {name: batch.bind(name) for name in ("ctrl", "sensordata",
                                                  *locomotion.STATE_FIELDS)}
    seed_value = np.asarray(seed, np.int64)
    noise = np.asarray(sampler.exploration_noise(seed_value, horizon, num_tasks,
                                                 num_trajectories, tasks_family.action_dim))
    _start(batch, fields, model, sampler.episode_seeds(seed_value, num_tasks, num_trajectories))
    goals = np.repeat(tasks, num_trajectories)  # the task of each simulation [T·N]
    state = _state(fields)
    obs = locomotion.observe(family, state, goals, tasks_family.oracle)
    out = {"observations": np.zeros((horizon, size, obs.shape[1]), np.float32),
           "actions": np.zeros((horizon, size, tasks_family.action_dim), np.float32),
           "rewards": np.zeros((horizon, size), np.float32),
           "mask": np.zeros((horizon, size), np.float32)}
    alive = np.ones(size, bool)
    acc = mujoco.mjtStage.mjSTAGE_ACC.value
    for t in range(horizon):
        if not alive.any():
            break
        ids = None if alive.all() else np.flatnonzero(alive)
        mean, log_std = (np.asarray(p) for p in policy_lib.split(policy_fn(
            tf.constant(obs.reshape(shape + (-1,))))))
        actions = (mean + np.exp(log_std) * noise[t]).astype(np.float32).reshape(size, -1)
        # np.where, not a product: a finished simulation's NaN must not pass as NaN·0
        out["observations"][t] = np.where(alive[:, None], obs, 0.0)
        out["actions"][t] = np.where(alive[:, None], actions, 0.0)
        clipped = np.clip(actions.astype(np.float64), -1.0, 1.0)
        fields["ctrl"][alive] = clipped[alive]
        before = locomotion.resets(batch.warning)
        batch.step(ids, nstep=family.robot.frame_skip, stage=acc)
        state = _state(fields)
        rewards = locomotion.reward(family, state, goals, clipped)
        out["rewards"][t] = np.where(alive, rewards, 0.0)
        out["mask"][t] = alive
        obs = locomotion.observe(family, state, goals, tasks_family.oracle)
        alive &= ~locomotion.done(family, state, locomotion.resets(batch.warning) > before)
    # Stored [H, T·N, ...] while stepping; trajectories are [T, N, H, ...].
    return {key: tf.constant(np.moveaxis(value, 0, 1).reshape(shape + value.shape[:1]
                                                              + value.shape[2:]))
            for key, value in out.items()}


def _start(batch, fields, model, reset_seeds: np.ndarray) -> None:
    """Every simulation at its episode start (rllab ``reset``: the state drawn from its own
    seeded generator, zero controls, then ``mj_forward``)."""
    import mujoco

    batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE.value)
    qpos, qvel = fields["qpos"], fields["qvel"]
    for k, reset_seed in enumerate(reset_seeds.reshape(-1)):
        qpos[k], qvel[k] = locomotion.initial_state(model, np.random.default_rng(
            int(reset_seed)))
    batch.forward()


def _state(fields: dict) -> dict:
    """The state the rewards and observations read: the bound fields, and the torso
    subtree's centre-of-mass velocity (the first sensor)."""
    return {**fields, "comvel": fields["sensordata"][:, :3]}
