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
later calls; under a step budget a simulation whose next path is sure to be kept is reset
and starts it (:class:`tf_maml.rl.sampler.PathSchedule`, which also says which paths run).

Episode starts follow :class:`tf_maml.rl.gym_tasks.GymTasks`: simulation (i, j) starts from
the generator seeded with entry (i, j) of ``default_rng(seed).integers(2**31, (T, N))``
(later paths: of their round's seed, ``PathSchedule.episode_seeds``), so the result is the
trajectories a plain loop over one ``LocomotionEnv`` per simulation gives for the same seed
(tested, with and without a budget), bit for bit at any thread count.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_maml.errors import check_switch
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
        check_switch("oracle", oracle)  # else "False" appended the goal
        self.oracle = oracle
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

    def rollout(self, policy_fn, tasks, num_trajectories: int, seed,
                max_steps: int | None = None) -> dict:
        """N trajectories of each of the T ``tasks``, all T·N simulations stepped together,
        as :func:`tf_maml.rl.sampler.rollout` returns them: ``observations``, ``actions``,
        ``rewards`` and ``mask`` tensors ``[T, N, H, ...]``, zeros after an episode's end.
        With ``max_steps``: whole paths until each task has at least that many steps, a
        simulation whose episode ended starting the next (``maml_rl``'s budget,
        :class:`tf_maml.rl.sampler.PathSchedule`), ``[T, P, H, ...]``."""
        return _rollout(self, policy_fn, tasks, num_trajectories, seed, max_steps)


def _rollout(tasks_family: LocomotionTasks, policy_fn, tasks, num_trajectories: int,
             seed, max_steps: int | None = None) -> dict:
    """:meth:`LocomotionTasks.rollout`: the loop over time steps (module doc)."""
    import mujoco

    tasks = np.asarray(tasks, np.float64).reshape(len(tasks), -1)[:, 0]
    num_tasks, horizon = len(tasks), tasks_family.horizon
    shape, size = (num_tasks, num_trajectories), num_tasks * num_trajectories
    family, model = tasks_family.family, tasks_family.model
    batch = tasks_family.batch(size)
    fields = {name: batch.bind(name) for name in ("ctrl", "sensordata",
                                                  *locomotion.STATE_FIELDS)}
    schedule = sampler.PathSchedule(seed, num_tasks, num_trajectories, horizon,
                                    tasks_family.action_dim, max_steps)
    batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE.value)
    _start(batch, fields, model, np.arange(size), schedule.episode_seeds(0).reshape(-1))
    goals = np.repeat(tasks, num_trajectories)  # the task of each simulation [T·N]
    obs = locomotion.observe(family, _state(fields), goals, tasks_family.oracle)
    acc = mujoco.mjtStage.mjSTAGE_ACC.value
    while schedule.live.any():
        alive = schedule.live.reshape(-1)
        ids = None if alive.all() else np.flatnonzero(alive)
        mean, log_std = (np.asarray(p) for p in policy_lib.split(policy_fn(
            tf.constant(obs.reshape(shape + (-1,))))))
        actions = (mean + np.exp(log_std) * schedule.noise()).astype(np.float32)
        schedule.write({"observations": obs.reshape(shape + (-1,)), "actions": actions})
        clipped = np.clip(actions.reshape(size, -1).astype(np.float64), -1.0, 1.0)
        fields["ctrl"][alive] = clipped[alive]
        before = locomotion.resets(batch.warning)
        batch.step(ids, nstep=family.robot.frame_skip, stage=acc)
        state = _state(fields)
        rewards = locomotion.reward(family, state, goals, clipped)
        schedule.write({"rewards": rewards.reshape(shape),
                        "mask": np.ones(shape, np.float32)})
        ended = locomotion.done(family, state, locomotion.resets(batch.warning) > before)
        restart = schedule.step(ended.reshape(shape)).reshape(-1)
        if restart.any():
            which = np.flatnonzero(restart)
            seeds = schedule.start_seeds(restart.reshape(shape)).reshape(-1)
            batch.reset(which, stage=mujoco.mjtStage.mjSTAGE_NONE.value)
            _start(batch, fields, model, which, seeds[which])
            state = _state(fields)
        obs = locomotion.observe(family, state, goals, tasks_family.oracle)
    return schedule.result()


def _start(batch, fields, model, ids: np.ndarray, reset_seeds: np.ndarray) -> None:
    """The simulations ``ids``, just reset, at their episode start (rllab ``reset``: the
    state drawn from its own seeded generator, zero controls, then ``mj_forward``)."""
    qpos, qvel = fields["qpos"], fields["qvel"]
    for k, reset_seed in zip(ids, reset_seeds):
        qpos[k], qvel[k] = locomotion.initial_state(model, np.random.default_rng(
            int(reset_seed)))
    batch.forward(ids if len(ids) < batch.nsim else None)


def _state(fields: dict) -> dict:
    """The state the rewards and observations read: the bound fields, and the torso
    subtree's centre-of-mass velocity (the first sensor)."""
    return {**fields, "comvel": fields["sensordata"][:, :3]}
