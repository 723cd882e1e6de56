"""2D navigation, the reinforcement-learning tasks of Finn et al. (2017), §5.3.

A point agent starts at the origin of the plane; each task is a goal drawn uniformly from
[−0.5, 0.5]². The observation is the agent's position (``oracle=True``: position and goal);
an action is a velocity. Each step the agent moves by the velocity, clipped to
[−0.1, 0.1] per coordinate, and receives the negative Euclidean distance to the goal. The
episode ends once the agent is within 0.01 of the goal, or after the horizon of 100 steps.

Choices, where the paper and the authors' code (``rllab``-based ``maml_rl``,
``point_env_rand_goal.py`` in a ``normalize()`` wrapper) differ or are silent:

* **Reward: the negative distance**, as the authors' code. The paper's text says "negative
  squared distance"; the plotted returns (about −10 for the oracle over 100 steps) match the
  distance, not its square (which would be about 100 times smaller near the goal).
* **Action scale.** The policy acts in rllab's normalised units: the velocity is
  ``max_speed · clip(a, −1, 1)`` with ``max_speed = 0.1``. This is exactly what
  ``normalize(PointEnvRandGoal())`` did to the [−0.1, 0.1] action box, so a freshly
  initialised Gaussian policy (standard deviation 1) explores at the speed limit instead of
  being clipped on almost every step.
* **Termination: Euclidean distance < 0.01** (the issue's wording; the authors' code tested
  ``|dx| < 0.01 and |dy| < 0.01``, a box of the same size). The reward of the final step
  counts; nothing after it does.

Everything is vectorised: :class:`NavigationTasks` steps a ``[tasks, trajectories]`` batch
of agents with TensorFlow ops (inside a ``tf.function`` the whole rollout is one graph, see
:mod:`tf_maml.rl.sampler`); NumPy arrays are accepted as well. :class:`NavigationEnv` is
the same dynamics as one Gymnasium-API environment (``reset``/``step``) for users' tools;
it needs no Gymnasium, and subclasses ``gymnasium.Env`` when Gymnasium is installed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_maml.errors import check_count, check_switch

try:  # optional: only for NavigationEnv's spaces and isinstance(env, gymnasium.Env)
    import gymnasium as _gymnasium
except ImportError:  # pragma: no cover - exercised where gymnasium is absent
    _gymnasium = None

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01
HORIZON = 100


class NavigationTasks:
    """A batch of 2D-navigation tasks stepped together (the meta-RL environment interface).

    The interface the samplers use (``tf_maml.rl.sampler``), all on ``[T, N, ...]`` tensors
    for T tasks with N trajectories each:

    * ``sample_tasks(num_tasks, rng) -> [T, 2]`` goals (NumPy, from ``rng``);
    * ``initial_state(tasks, num_trajectories) -> [T, N, 2]`` positions (the origin);
    * ``observe(state, tasks) -> [T, N, observation_dim]``;
    * ``step(state, tasks, actions) -> (next_state, reward [T, N], done [T, N])``.

    Args:
      oracle: append the goal to the observation (the paper's oracle baseline).
      horizon: maximal episode length (100 in the paper).
      max_speed: the velocity limit per coordinate (0.1); actions are in units of it.
      goal_tolerance: the episode ends within this distance of the goal (0.01).

    Example::

        env = NavigationTasks()
        goals = env.sample_tasks(3, np.random.default_rng(0))
        state = env.initial_state(goals, num_trajectories=5)          # [3, 5, 2] zeros
        state, reward, done = env.step(state, goals, tf.ones([3, 5, 2]))  # moved to (.1, .1)
    """

    action_dim = 2

    def __init__(self, oracle: bool = False, horizon: int = HORIZON,
                 max_speed: float = MAX_SPEED, goal_tolerance: float = GOAL_TOLERANCE):
        check_count("horizon", horizon, 1, "a whole number of steps")  # 2.5 ran 2
        if not max_speed > 0 or not goal_tolerance >= 0:
            raise ValueError(f"max_speed must be > 0 and goal_tolerance >= 0, got {max_speed} "
                             f"and {goal_tolerance}")
        check_switch("oracle", oracle)
        self.oracle = oracle
        self.horizon = int(horizon)
        self.max_speed = float(max_speed)
        self.goal_tolerance = float(goal_tolerance)

    @property
    def observation_dim(self) -> int:
        return 4 if self.oracle else 2

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> np.ndarray:
        """``num_tasks`` goals, uniform on [−0.5, 0.5]², as float32 ``[T, 2]``."""
        check_count("num_tasks", num_tasks, 1, "a whole number of tasks")  # else numpy's
        return rng.uniform(GOAL_LOW, GOAL_HIGH, size=(num_tasks, 2)).astype(np.float32)

    def initial_state(self, tasks, num_trajectories: int) -> tf.Tensor:
        tasks = tf.convert_to_tensor(tasks, tf.float32)
        return tf.zeros([tf.shape(tasks)[0], num_trajectories, 2], tf.float32)

    def observe(self, state, tasks) -> tf.Tensor:
        state = tf.convert_to_tensor(state, tf.float32)
        if not self.oracle:
            return state
        goals = tf.broadcast_to(tf.convert_to_tensor(tasks, tf.float32)[:, None, :],
                                tf.shape(state))
        return tf.concat([state, goals], axis=-1)

    def step(self, state, tasks, actions) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Moves every agent by its clipped velocity; returns the new positions, the reward
        −‖position − goal‖ after the move, and whether the goal was reached."""
        state = tf.convert_to_tensor(state, tf.float32)
        actions = tf.convert_to_tensor(actions, tf.float32)
        goals = tf.convert_to_tensor(tasks, tf.float32)[:, None, :]
        velocity = self.max_speed * tf.clip_by_value(actions, -1.0, 1.0)
        next_state = state + velocity
        distance = tf.norm(next_state - goals, axis=-1)
        return next_state, -distance, distance < self.goal_tolerance


_EnvBase = _gymnasium.Env if _gymnasium is not None else object


class NavigationEnv(_EnvBase):
    """One 2D-navigation task with the Gymnasium API (``reset``/``step``), NumPy in and out.

    The same dynamics as :class:`NavigationTasks` (it calls its ``step``). The goal is
    ``goal`` if given, else drawn at ``reset`` from the seeded generator, or passed with
    ``reset(options={"goal": (x, y)})``. ``step`` returns Gymnasium's 5-tuple
    ``(obs, reward, terminated, truncated, info)``; ``truncated`` is set at the horizon.
    Works without Gymnasium installed; with it, this is a ``gymnasium.Env`` with Box spaces.
    """

    metadata = {"render_modes": []}

    def __init__(self, goal=None, oracle: bool = False, horizon: int = HORIZON):
        self.tasks = NavigationTasks(oracle=oracle, horizon=horizon)
        self._fixed_goal = None if goal is None else np.asarray(goal, np.float32).reshape(2)
        self._rng = np.random.default_rng()
        self.goal = self._fixed_goal
        self._position = np.zeros(2, np.float32)
        self._steps = 0
        self.render_mode = None
        if _gymnasium is not None:
            box = _gymnasium.spaces.Box
            reach = self.tasks.horizon * self.tasks.max_speed  # the farthest an agent gets
            self.observation_space = box(-reach, reach, (self.tasks.observation_dim,),
                                         np.float32)
            self.action_space = box(-1.0, 1.0, (2,), np.float32)

    def _observation(self) -> np.ndarray:
        obs = self.tasks.observe(self._position[None, None], self.goal[None])
        return np.asarray(obs, np.float32)[0, 0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if _gymnasium is not None:
            super().reset(seed=seed)  # seeds gymnasium's self.np_random
            rng = self.np_random
        else:
            if seed is not None:
                self._rng = np.random.default_rng(seed)
            rng = self._rng
        if options and "goal" in options:
            self.goal = np.asarray(options["goal"], np.float32).reshape(2)
        elif self._fixed_goal is not None:
            self.goal = self._fixed_goal
        else:
            self.goal = self.tasks.sample_tasks(1, rng)[0]
        self._position = np.zeros(2, np.float32)
        self._steps = 0
        return self._observation(), {"goal": self.goal.copy()}

    def step(self, action):
        if self.goal is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, np.float32).reshape(1, 1, 2)
        position, reward, done = self.tasks.step(self._position[None, None], self.goal[None],
                                                 action)
        self._position = np.asarray(position, np.float32)[0, 0]
        self._steps += 1
        terminated = bool(np.asarray(done)[0, 0])
        truncated = not terminated and self._steps >= self.tasks.horizon
        return (self._observation(), float(np.asarray(reward)[0, 0]), terminated, truncated,
                {"goal": self.goal.copy()})

    def close(self):
        pass
