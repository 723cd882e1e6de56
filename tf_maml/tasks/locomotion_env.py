"""One locomotion task with the Gymnasium API (:class:`LocomotionEnv`): the simulation of
:mod:`tf_maml.tasks.locomotion` stepped by ``mj_step``, one ``MjData``. Apart from that
module so that importing the task definitions (as the configuration checks do on every
``tf-maml`` start) does not import Gymnasium."""

from __future__ import annotations

import numpy as np

from tf_maml.errors import check_switch
from tf_maml.tasks import locomotion

try:  # optional: only for the spaces and isinstance(env, gymnasium.Env)
    import gymnasium as _gymnasium
except ImportError:  # pragma: no cover - exercised where gymnasium is absent
    _gymnasium = None

_EnvBase = _gymnasium.Env if _gymnasium is not None else object


def checked_goal(family, goal):
    """``goal`` as a float, refused for a direction family unless it is ±1 (rllab's
    direction environments took a reset argument in [0, 2] and went backwards below 1; here
    the task is the direction itself, which scales the reward)."""
    if goal is None:
        return None
    goal = float(goal)
    if family.direction and goal not in (-1.0, 1.0):
        raise ValueError(f"a direction task's goal is -1 (backward) or 1 (forward), got "
                         f"{goal}: pass the direction, not rllab's reset argument in [0, 2]")
    return goal


class LocomotionEnv(_EnvBase):
    """One locomotion task with the Gymnasium API, NumPy in and out: one ``MjData`` stepped
    by ``mj_step`` (the plain loop ``LocomotionTasks``' batch is tested against).

    The task of an episode is ``reset(options={"goal": g})``'s if given (that episode
    only), else the ``goal`` given at construction, else one drawn at every ``reset`` from
    the seeded generator (:func:`tf_maml.tasks.locomotion.sample_tasks`). A direction
    family's goal must be ±1. The start state is drawn from ``np.random.default_rng(seed)``
    (:func:`tf_maml.tasks.locomotion.initial_state`); ``truncated`` is set at the horizon,
    ``terminated`` when the ant falls or MuJoCo resets a diverged simulation.
    """

    metadata = {"render_modes": []}

    def __init__(self, family: str, goal: float | None = None, oracle: bool = False,
                 horizon: int = locomotion.HORIZON):
        locomotion.require_simulator()
        import mujoco

        self.family = locomotion.family_named(family)
        check_switch("oracle", oracle)  # else "False" appended the goal
        self.oracle = oracle
        self.horizon = int(horizon)
        self.model = locomotion.load_model(self.family.robot)
        self.data = mujoco.MjData(self.model)
        self._fixed_goal = checked_goal(self.family, goal)
        self.goal = self._fixed_goal
        self._rng = np.random.default_rng()
        self._steps = 0
        self.render_mode = None
        if _gymnasium is not None:
            box = _gymnasium.spaces.Box
            size = locomotion.observation_dim(self.family, self.oracle)
            self.observation_space = box(-np.inf, np.inf, (size,), np.float32)
            self.action_space = box(-1.0, 1.0, (self.model.nu,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        import mujoco

        if _gymnasium is not None:
            super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        if options and "goal" in options:
            self.goal = checked_goal(self.family, options["goal"])
        elif self._fixed_goal is not None:
            self.goal = self._fixed_goal
        else:
            self.goal = float(locomotion.sample_tasks(self.family, 1, self._rng)[0, 0])
        mujoco.mj_resetData(self.model, self.data)  # also clears the warning counters
        self.data.qpos[:], self.data.qvel[:] = locomotion.initial_state(self.model, self._rng)
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        goal = np.array([self.goal])
        state = locomotion.data_state(self.data)
        return locomotion.observe(self.family, state, goal, self.oracle)[0], {}

    def step(self, action):
        import mujoco

        if self.goal is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, np.float64).reshape(1, -1), -1.0, 1.0)
        self.data.ctrl[:] = action[0]
        before = locomotion.resets(locomotion.data_warnings(self.data))
        mujoco.mj_step(self.model, self.data, nstep=self.family.robot.frame_skip)
        # mujoco.batch checks the new state (a diverged one is reset) before its mj_forward;
        # so does this loop, to give the batch's trajectories
        mujoco.mj_checkPos(self.model, self.data)
        mujoco.mj_checkVel(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)  # rllab: model.forward() after the steps
        self._steps += 1
        state, goal, family = locomotion.data_state(self.data), np.array([self.goal]), self.family
        diverged = locomotion.resets(locomotion.data_warnings(self.data)) > before
        terminated = bool(locomotion.done(family, state, diverged)[0])
        truncated = not terminated and self._steps >= self.horizon
        step_reward = float(locomotion.reward(family, state, goal, action)[0])
        return (locomotion.observe(family, state, goal, self.oracle)[0], step_reward, terminated,
                truncated, {})

    def close(self):
        pass
