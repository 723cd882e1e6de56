"""Sampling trajectories of a batch of tasks, and turning them into advantages.

A batch of trajectories is a dict of tensors for T tasks × N trajectories × H steps:

* ``observations [T, N, H, obs_dim]``, ``actions [T, N, H, act_dim]`` (the sampled,
  unclipped Gaussian actions, whose log-likelihood the policy gradient uses);
* ``rewards [T, N, H]`` and ``mask [T, N, H]`` (1 for the steps that happened, including
  the one that reached the goal); every array is 0 after the episode ended.

With a step budget (``max_steps``, :class:`PathSchedule`: the authors' ``maml_rl`` sampler)
the Python-stepped samplers return ``P`` paths per task instead of N, ``P`` the same for
every task of the batch (a multiple of N); a task's paths beyond its own number are all 0,
mask included. :func:`flatten_paths` then lays each task's steps out one after another.

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
# What is sampled per task and policy: N trajectories, or whole paths until N × H steps
# (maml_rl's budget, PathSchedule)
SAMPLE_BUDGETS = ("trajectories", "steps")


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


def round_seed(seed, round_index: int) -> np.ndarray:
    """The seed of a step-budget rollout's round ``round_index`` (its slots' paths number
    ``round_index``·N + slot, :class:`PathSchedule`): ``seed`` itself for round 0, so that
    the first N paths are the N trajectories sampled without a budget."""
    seed = np.asarray(seed, np.int64)
    if round_index == 0:
        return seed
    return np.random.default_rng([*seed.tolist(), round_index]).integers(2**31, size=2)


class PathSchedule:
    """Which path each of the T × N slots (environments, simulations) of a Python-stepped
    rollout runs, and what each path draws; shared by :class:`tf_maml.rl.gym_tasks.GymTasks`
    and :class:`tf_maml.rl.mujoco_batch.LocomotionTasks`, whose trajectories must agree.

    Without ``max_steps`` every slot runs one episode: N trajectories per task. With
    ``max_steps`` B, a task's paths are numbered k = 0, 1, ... and the rollout keeps, per
    task, every whole path k with Σ_{j<k} len_j < B: paths one after another until the task
    has at least B steps, the last one kept whole. That is ``maml_rl``'s per-task budget
    (``sandbox/rocky/tf/samplers/batch_sampler.py`` ``obtain_samples``: ``max_samples=
    batch_size / n_envs`` steps per task; ``rllab/sampler/stateful_pool.py`` ``run_collect``:
    whole paths ``while count < threshold``). Path k runs on slot k mod N as that slot's
    round k // N: its start is entry (task, slot) of
    ``episode_seeds(round_seed(seed, round))`` and its exploration noise at its step t that
    of ``exploration_noise(round_seed(seed, round))[t, task, slot]``, so a path is the same
    whatever the schedule. A slot whose path ends waits until its next path is sure to be
    kept (the paths before it hold fewer than B steps even if those still running reach the
    horizon) and starts it at the next time step, or stops once the paths before it are
    sure to reach B: every path after the first N is kept (the first N too when
    B > (N − 1)·H, as the learner's N·H). (Starting every path that might be kept
    instead made a randomly initialised ant simulate 52% more steps than the budget kept,
    for 30% fewer time steps of the loop.)
    """

    def __init__(self, seed, num_tasks: int, num_slots: int, horizon: int, action_dim: int,
                 max_steps: int | None = None):
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.seed = np.asarray(seed, np.int64)
        self.shape = (num_tasks, num_slots)
        self.horizon, self.action_dim, self.max_steps = horizon, action_dim, max_steps
        self.round = np.zeros(self.shape, np.int64)  # the round of each slot's path
        self.t = np.zeros(self.shape, np.int64)  # the steps of each slot's path so far
        self.live = np.ones(self.shape, bool)
        self.waiting = np.zeros(self.shape, bool)  # between paths, not yet sure of the next

        self.lengths: list[dict[int, int]] = [{} for _ in range(num_tasks)]  # finished paths
        self._noise: dict[int, np.ndarray] = {}
        self.buffers: list[dict[str, np.ndarray]] = []  # per round [T, N, H, ...]

    def episode_seeds(self, round_index: int) -> np.ndarray:
        """The episode-start seeds ``[T, N]`` of the round's paths."""
        return episode_seeds(round_seed(self.seed, round_index), *self.shape)

    def start_seeds(self, which: np.ndarray) -> np.ndarray:
        """The episode-start seed ``[T, N]`` of the slots ``which`` (each from its current
        :attr:`round`'s :meth:`episode_seeds`; 0 elsewhere): the one rule both samplers
        reset by."""
        seeds = np.zeros(self.shape, np.int64)
        for r in np.unique(self.round[which]):
            chosen = which & (self.round == r)
            seeds[chosen] = self.episode_seeds(int(r))[chosen]
        return seeds

    def noise(self) -> np.ndarray:
        """The exploration noise ``[T, N, act]`` of every slot's current step."""
        rounds = np.unique(self.round)
        for r in rounds:
            if r not in self._noise:
                self._noise[r] = np.asarray(exploration_noise(
                    round_seed(self.seed, int(r)), self.horizon, *self.shape, self.action_dim))
        if len(rounds) == 1 and np.all(self.t == self.t.flat[0]):
            return self._noise[rounds[0]][self.t.flat[0]]
        out = np.empty(self.shape + (self.action_dim,), np.float32)
        for r in rounds:
            i, j = np.nonzero(self.round == r)
            out[i, j] = self._noise[r][np.minimum(self.t[i, j], self.horizon - 1), i, j]
        return out

    def write(self, values: dict[str, np.ndarray]) -> None:
        """Stores the live slots' ``values`` (``[T, N, ...]`` each) at their paths' current
        step."""
        for r in np.unique(self.round[self.live]):
            while len(self.buffers) <= r:
                self.buffers.append({})
            i, j = np.nonzero(self.live & (self.round == r))
            for key, value in values.items():
                value = np.asarray(value)
                if key not in self.buffers[r]:
                    self.buffers[r][key] = np.zeros(
                        self.shape + (self.horizon,) + value.shape[2:], np.float32)
                self.buffers[r][key][i, j, self.t[i, j]] = value[i, j]

    def step(self, ended: np.ndarray) -> np.ndarray:
        """After a time step of the live slots, ``ended`` ``[T, N]`` those whose episode
        ended at it (the horizon's end is added here): records the paths and returns the
        ``[T, N]`` slots that start a new path (their environments must be reset, from
        :meth:`episode_seeds` of their new :attr:`round`)."""
        self.t[self.live] += 1
        ended = self.live & (np.asarray(ended, bool) | (self.t >= self.horizon))
        slots = self.shape[1]
        for i, j in zip(*np.nonzero(ended)):
            self.lengths[i][int(self.round[i, j]) * slots + j] = int(self.t[i, j])
        self.live &= ~ended
        restart = np.zeros(self.shape, bool)
        if self.max_steps is None:
            return restart
        self.waiting |= ended
        for task in np.flatnonzero(self.waiting.any(axis=1)):
            self._decide(task, restart)
        return restart

    def _decide(self, task: int, restart: np.ndarray) -> None:
        """The waiting slots of ``task``, in the order of the paths they would run next:
        path k starts once Σ_{j<k} len_j < B is sure (bounding the paths still running by
        H), so that every path started is kept; the slot stops once the sum is sure to
        reach B. Both bounds grow with k: the first undecided path leaves the later ones
        waiting too."""
        slots, budget = self.shape[1], self.max_steps
        nexts = sorted(((int(self.round[task, s]) + 1) * slots + int(s), int(s))
                       for s in np.flatnonzero(self.waiting[task]))
        low = high = 0  # bounds of Σ_{j<k} len_j
        j = 0
        for k, slot in nexts:
            while j < k and low < budget:
                term_low, term_high = self._path_bounds(task, j)
                low, high, j = low + term_low, high + term_high, j + 1
            if low >= budget:  # this one and every later one: the budget is reached before
                for _, later in nexts[nexts.index((k, slot)):]:
                    self.waiting[task, later] = False
                return
            if high >= budget:
                return
            self.waiting[task, slot] = False
            self.live[task, slot] = restart[task, slot] = True
            self.round[task, slot] += 1
            self.t[task, slot] = 0

    def _path_bounds(self, task: int, j: int) -> tuple[float, float]:
        """Lower and upper bounds of the length of path j of ``task`` (∞ if it will never
        run: its slot stopped, the budget reached before it)."""
        slot = j % self.shape[1]
        if j in self.lengths[task]:
            return self.lengths[task][j], self.lengths[task][j]
        if not (self.live[task, slot] or self.waiting[task, slot]):
            return np.inf, np.inf
        if j // self.shape[1] == self.round[task, slot] and self.live[task, slot]:
            return max(int(self.t[task, slot]), 1), self.horizon  # running
        return 1, self.horizon  # to come

    def kept(self) -> np.ndarray:
        """The number of paths each task keeps ``[T]``: all N without a budget, else the
        whole paths up to the first that starts with the budget reached."""
        if self.max_steps is None:
            return np.full(self.shape[0], self.shape[1])
        out = np.zeros(self.shape[0], np.int64)
        for task, lengths in enumerate(self.lengths):
            total, k = 0, 0
            while total < self.max_steps:
                total += lengths[k]  # known: every path before the budget ran
                k += 1
            out[task] = k
        return out

    def result(self) -> dict[str, tf.Tensor]:
        """The kept paths ``[T, P, H, ...]``, path k of a task at index k, P the smallest
        multiple of N holding every task's; the others are 0, mask included."""
        kept, slots = self.kept(), self.shape[1]
        rounds = -(-int(kept.max()) // slots)
        keep = np.arange(rounds * slots)[None, :] < kept[:, None]  # [T, P]
        out = {}
        for key in self.buffers[0]:
            value = np.concatenate([b[key] for b in self.buffers[:rounds]], axis=1)
            if rounds > 1 or not keep.all():
                value = np.where(keep.reshape(keep.shape + (1,) * (value.ndim - 2)), value, 0.0)
            out[key] = tf.constant(value.astype(np.float32))
        return out


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


def baseline_features(observations: tf.Tensor, steps: tf.Tensor | None = None) -> tf.Tensor:
    """rllab's linear-baseline features ``[o, o², t, t², t³, 1]`` (o clipped to ±10,
    t = step / 100) for ``observations [T, N, H, obs]`` -> ``[T, N, H, 2·obs + 4]``; the
    step of each observation in its path is its index along H, or ``steps [T, N, H]``."""
    obs = tf.clip_by_value(observations, -10.0, 10.0)
    if steps is None:
        horizon = observations.shape[-2]
        t = tf.range(horizon, dtype=tf.float32)[:, None] / 100.0
    else:
        t = tf.cast(steps, tf.float32)[..., None] / 100.0
    time = tf.concat([t, t ** 2, t ** 3, tf.ones_like(t)], axis=-1)
    time = tf.broadcast_to(time, tf.concat([tf.shape(obs)[:-1], [4]], axis=0))
    return tf.concat([obs, obs ** 2, time], axis=-1)


def fit_linear_baseline(observations: tf.Tensor, returns: tf.Tensor, mask: tf.Tensor,
                        reg: float = BASELINE_REG, steps: tf.Tensor | None = None) -> tf.Tensor:
    """Per task, the ridge regression of the returns on :func:`baseline_features` over the
    steps that happened; returns its predictions ``[T, N, H]`` (float32).

    Solves (ΦᵀΦ + reg·I) w = ΦᵀR per task in float64 (rllab's ``LinearFeatureBaseline``,
    fitted on each task's own trajectories, as in ``maml_rl``).
    """
    phi = tf.cast(baseline_features(observations, steps), tf.float64)
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
    happened (rllab's ``center_adv``). 0 on masked steps. Steps laid out by
    :func:`flatten_paths` bring their discounted returns and steps in their paths."""
    mask = trajectories["mask"]
    if "discounted_returns" in trajectories:
        returns = trajectories["discounted_returns"]
    else:
        returns = discounted_returns(trajectories["rewards"], discount)
    adv = (returns - fit_linear_baseline(trajectories["observations"], returns, mask,
                                         steps=trajectories.get("steps"))) * mask
    if normalize:
        count = tf.maximum(tf.reduce_sum(mask, axis=[1, 2], keepdims=True), 1.0)
        mean = tf.reduce_sum(adv, axis=[1, 2], keepdims=True) / count
        var = tf.reduce_sum(tf.square(adv - mean) * mask, axis=[1, 2], keepdims=True) / count
        adv = (adv - mean) / (tf.sqrt(var) + 1e-8) * mask
    return adv


def undiscounted_returns(trajectories: dict) -> tf.Tensor:
    """The return of each trajectory, ``[T, N]``: the sum of its rewards."""
    return tf.reduce_sum(trajectories["rewards"], axis=-1)


def flatten_paths(trajectories: dict, discount: float, capacity: int) -> dict:
    """Each task's steps one after another: ``trajectories`` of P paths per task
    (``[T, P, H, ...]``) as ``[T, 1, capacity, ...]`` arrays, the steps that happened first
    in path order and the rest 0 (mask included), with ``discounted_returns`` (along each
    path, :func:`discounted_returns`) and ``steps`` (the step of each in its path), what
    :func:`advantages` needs. ``capacity`` must hold every task's steps: with a step budget
    B and horizon H at most B + H − 1 (the paths before the last hold fewer than B steps)."""
    mask = np.asarray(trajectories["mask"])
    num_tasks, paths, horizon = mask.shape
    counts = mask.reshape(num_tasks, -1).sum(axis=1).astype(np.int64)
    if counts.max() > capacity:
        raise ValueError(f"a task has {counts.max()} steps, more than the capacity {capacity}")
    values = {k: np.asarray(v) for k, v in trajectories.items()}
    values["discounted_returns"] = np.asarray(discounted_returns(trajectories["rewards"],
                                                                 discount))
    values["steps"] = np.broadcast_to(np.arange(horizon, dtype=np.float32), mask.shape)
    out = {}
    for key, value in values.items():
        flat = value.reshape((num_tasks, paths * horizon) + value.shape[3:])
        packed = np.zeros((num_tasks, capacity) + value.shape[3:], np.float32)
        for task in range(num_tasks):
            happened = np.flatnonzero(mask[task].reshape(-1))
            packed[task, :len(happened)] = flat[task, happened]
        out[key] = tf.constant(packed[:, None])
    return out
