"""Half-cheetah and ant locomotion, the MuJoCo tasks of Finn et al. (2017), §5.3 and Fig. 5.

Four task families (``TASK_FAMILIES``), as the authors' rllab environments in cbfinn/maml_rl
(``rllab/envs/mujoco/``) define them; a task is one number:

* ``cheetah_vel`` (``half_cheetah_env_rand.py``): a goal velocity v* ~ U[0, 2]; reward
  −|v − v*| − 0.05·Σa²;
* ``cheetah_dir`` (``half_cheetah_env_rand_direc.py``): a direction d = ±1 (even odds);
  reward d·v − 0.05·Σa²;
* ``ant_vel`` (``ant_env_rand.py``): v* ~ U[0, 3]; reward −|v − v*| + 1 − 0.005·Σa²
  − 0.0005·Σ clip(f, −1, 1)² + 0.05, f the bodies' external contact forces;
* ``ant_dir`` (``ant_env_rand_direc.py``): d = ±1; reward d·v − the same costs + 0.05.

v is the forward (x) velocity of the robot's centre of mass (rllab's ``body_comvels`` of
the torso: the subtree's mass-weighted body velocities), a the action clipped to [−1, 1]
(rllab's ``normalize()`` over the actuators' control range). The ant's episode ends when
its torso leaves 0.2 ≤ z ≤ 1 (or the state is not finite); the cheetah's runs the horizon
(200); either ends when MuJoCo resets a diverged simulation (:func:`done`). Observations:
the cheetah's joint positions but the x position, velocities and centre of mass (20
values); the ant's positions, velocities, clipped contact forces of every body, torso
orientation matrix and centre of mass (125). The oracle (``oracle=True``, the authors'
``*_oracle.py``) appends the task's number.

The models are Gymnasium's ``half_cheetah.xml`` and ``ant.xml`` (the rllab models, with the
ant's control range written as a gear of 150 and its contact softness set back to rllab's,
``Robot.geom_contact``), run with the authors' time steps: one
simulator step per action (rllab's models have no ``frame_skip``), 0.01 s for the cheetah
and 0.02 s for the ant. docs/deviations.md lists where this differs from rllab on
MuJoCo 1.31.

This module is the physics and the task definitions: the models, start states, rewards,
observations and ends of episodes, vectorised over a batch of simulations.
:class:`tf_maml.rl.mujoco_batch.LocomotionTasks` is the task family the RL learner trains
on: its ``rollout`` steps all T·N simulations of a batch together in MuJoCo's C thread pool.
:class:`tf_maml.tasks.locomotion_env.LocomotionEnv` is one task with the Gymnasium API
(one ``mujoco.MjData`` stepped by ``mj_step``): the same simulation, for users' tools and as
the plain loop the batch is tested and timed against. Both need the ``rl`` extra
(``pip install -e ".[rl]"``: MuJoCo, and Gymnasium for the models); importing this module
does not, and it imports neither (the configuration checks read :data:`TASK_FAMILIES` from
it on every ``tf-maml`` start).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import threading
import warnings

import numpy as np
from absl import logging

from tf_maml.errors import ConfigError, check_count

HORIZON = 200  # maml_rl's max_path_length in cluster_maml_trpo_{cheetah,ant}.py
QPOS_NOISE, QVEL_NOISE = 0.01, 0.1  # rllab mujoco_env.reset_mujoco: N(0, 0.01²), N(0, 0.1²)
EXTRA = 'pip install -e ".[rl]"'


@dataclasses.dataclass(frozen=True)
class Robot:
    """A MuJoCo robot as the authors' rllab environment runs it."""

    xml: str  # the model among Gymnasium's MuJoCo assets
    timestep: float  # the rllab model's option timestep (s)
    frame_skip: int  # simulator steps per action
    ctrl_cost: float  # coefficient of Σ clip(a)²
    contact_cost: float  # coefficient of Σ clip(cfrc_ext, −1, 1)²
    healthy_z: tuple[float, float] | None  # the torso heights of a live episode
    # Every geom's contact softness (solref, solimp) where Gymnasium's XML lost the rllab
    # model's: None keeps the XML's (the cheetah's are rllab's).
    geom_contact: tuple[tuple[float, ...], tuple[float, ...]] | None = None


CHEETAH = Robot("half_cheetah.xml", 0.01, 1, 0.5 * 1e-1, 0.0, None)
# rllab vendor/mujoco_models/ant.xml l.9: <default><geom solref=".02 1" solimp=".8 .8 .01">,
# which Gymnasium's ant.xml dropped (MuJoCo's default solimp is 0.9 0.95 0.001); MuJoCo
# completes a 3-number solimp (dmin, dmax, width) with its midpoint and power 0.5, 2 (checked).
ANT = Robot("ant.xml", 0.02, 1, 0.5 * 1e-2, 0.5 * 1e-3, (0.2, 1.0),
            ((0.02, 1.0), (0.8, 0.8, 0.01, 0.5, 2.0)))


@dataclasses.dataclass(frozen=True)
class Family:
    """A task family: a robot and what its task asks of the forward velocity."""

    robot: Robot
    direction: bool  # a task is a direction ±1 (else a goal velocity U[0, goal_high])
    goal_high: float
    bonus: float  # added to every step's reward (the ant's "survive" and "happy" terms)


TASK_FAMILIES = {
    "cheetah_vel": Family(CHEETAH, False, 2.0, 0.0),
    "cheetah_dir": Family(CHEETAH, True, 2.0, 0.0),
    "ant_vel": Family(ANT, False, 3.0, 1.0 + 0.05),
    "ant_dir": Family(ANT, True, 3.0, 0.05),
}


def missing_simulator(what: str) -> ConfigError:
    return ConfigError(f"{what} needs the MuJoCo simulator and Gymnasium's robot models, "
                       f"which are not installed: install the rl extra, {EXTRA}")


def require_simulator(what: str = "the locomotion tasks") -> None:
    """Raises the one-line :class:`ConfigError` naming the extra when MuJoCo (with its
    batched stepping, MuJoCo 4) or Gymnasium is missing."""
    try:
        import mujoco  # noqa: F401
        from mujoco import batch  # noqa: F401
    except ImportError as err:
        raise missing_simulator(what) from err
    if importlib.util.find_spec("gymnasium") is None:
        raise missing_simulator(what)


SIMULATOR_PACKAGES = ("mujoco", "gymnasium")


def simulator_versions() -> dict[str, str | None]:
    """The installed versions of MuJoCo and Gymnasium (None: not installed), read from their
    package metadata without importing them. The physics and the robot models are theirs and
    the rl extra does not pin them, so a locomotion run records them (its ``config.json``,
    and the model zoo's ``results.json``)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in SIMULATOR_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


_WARNED: set[str] = set()  # the kinds of MuJoCo warning logged (see log_mujoco_warning)
_WARNED_LOCK = threading.Lock()  # mujoco.batch warns from its worker threads


def log_mujoco_warning(message: str) -> None:
    """MuJoCo's warnings (e.g. a diverged simulation, which it resets) to the log, the first
    of each kind (the message without its numbers: DOF, time) only; MuJoCo's own handler
    printed every one and appended it to MUJOCO_LOG.TXT in the current folder."""
    kind = re.sub(r"\d+(\.\d+)?", "#", message)
    with _WARNED_LOCK:
        if kind in _WARNED:
            return
        _WARNED.add(kind)
    logging.warning("MuJoCo: %s (further warnings of this kind are not logged)",
                    message.strip())


@functools.cache
def load_model(robot: Robot):
    """The robot's ``mujoco.MjModel``: Gymnasium's XML at the authors' time step and with
    rllab's contact softness (``Robot.geom_contact``; docs/deviations.md), with two
    sensors the rewards read, so that ``mj_forward`` computes them: the torso subtree's
    linear velocity (rllab's centre-of-mass velocity), and for a robot with a contact cost
    a torso accelerometer, whose evaluation makes MuJoCo compute the bodies' contact forces
    (``cfrc_ext``; MuJoCo ≥ 2 leaves them 0 unless a sensor needs them). MuJoCo's warnings
    go to :func:`log_mujoco_warning` from then on, unless a handler was set already."""
    require_simulator()
    import mujoco

    if mujoco.get_mju_user_warning() is None:  # every simulation's model comes from here
        mujoco.set_mju_user_warning(log_mujoco_warning)
    assets = os.path.join(os.path.dirname(importlib.util.find_spec("gymnasium").origin),
                          "envs", "mujoco", "assets")
    spec = mujoco.MjSpec.from_file(os.path.join(assets, robot.xml))
    spec.option.timestep = robot.timestep
    if robot.geom_contact is not None:  # per geom: the XML's defaults are applied at parsing
        for geom in spec.geoms:
            geom.solref, geom.solimp = robot.geom_contact
    spec.add_sensor(type=mujoco.mjtSensor.mjSENS_SUBTREELINVEL,
                    objtype=mujoco.mjtObj.mjOBJ_BODY, objname="torso", name="torso_comvel")
    if robot.contact_cost:
        spec.body("torso").add_site(name="torso_imu")
        spec.add_sensor(type=mujoco.mjtSensor.mjSENS_ACCELEROMETER,
                        objtype=mujoco.mjtObj.mjOBJ_SITE, objname="torso_imu")
    with warnings.catch_warnings():  # the cheetah's settotalmass, deprecated in MuJoCo 4
        warnings.simplefilter("ignore")
        return spec.compile()


def initial_qpos(model) -> np.ndarray:
    """The rllab model's ``init_qpos`` numeric if it has one (the ant's crouched pose),
    else the model's reference configuration."""
    for i in range(model.nnumeric):
        if model.numeric(i).name == "init_qpos":
            return np.array(model.numeric(i).data[:model.nq], np.float64)
    return np.array(model.qpos0, np.float64)


def initial_state(model, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One episode's start (rllab ``reset_mujoco``): ``init_qpos + 0.01·N(0, 1)`` and
    ``0.1·N(0, 1)`` velocities, positions drawn first, from ``rng``."""
    qpos = initial_qpos(model) + QPOS_NOISE * rng.normal(size=model.nq)
    qvel = QVEL_NOISE * rng.normal(size=model.nv)
    return qpos, qvel


def observe(family: Family, state: dict, tasks: np.ndarray, oracle: bool) -> np.ndarray:
    """Observations ``[B, obs]`` from the simulator's ``state`` (arrays with a leading batch
    axis B: ``qpos``, ``qvel``, ``subtree_com``, ``xmat``, ``cfrc_ext``), ``tasks [B]``."""
    torso = 1
    if family.robot is CHEETAH:  # half_cheetah_env_rand.py get_current_obs
        parts = [state["qpos"][:, 1:], state["qvel"], state["subtree_com"][:, torso]]
    else:  # ant_env_rand.py get_current_obs
        count = len(state["qpos"])
        parts = [state["qpos"], state["qvel"],
                 np.clip(state["cfrc_ext"], -1.0, 1.0).reshape(count, -1),
                 state["xmat"][:, torso], state["subtree_com"][:, torso]]
    if oracle:
        parts.append(np.asarray(tasks, np.float64)[:, None])
    return np.concatenate(parts, axis=1).astype(np.float32)


def reward(family: Family, state: dict, tasks: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Rewards ``[B]`` after a step: the task's velocity term, the bonus, the costs of the
    clipped ``actions [B, act]`` and of the contact forces (``state``: :func:`observe`'s,
    plus ``comvel [B, 3]``, the torso subtree's centre-of-mass velocity)."""
    robot = family.robot
    velocity = state["comvel"][:, 0]
    tasks = np.asarray(tasks, np.float64)
    progress = tasks * velocity if family.direction else -np.abs(velocity - tasks)
    cost = robot.ctrl_cost * np.sum(np.square(np.clip(actions, -1.0, 1.0)), axis=1)
    if robot.contact_cost:
        forces = np.clip(state["cfrc_ext"], -1.0, 1.0).reshape(len(velocity), -1)
        cost = cost + robot.contact_cost * np.sum(np.square(forces), axis=1)
    return progress + family.bonus - cost


def done(family: Family, state: dict, diverged: np.ndarray) -> np.ndarray:
    """Whether each episode ended ``[B]``: the ant's torso out of its height range, or a
    state that is not finite (rllab ``ant_env_rand.py``); for both robots, a simulation
    MuJoCo found diverged during the step (``diverged [B]``, :func:`resets`), which it has
    reset to the model's reference pose. MuJoCo 1.31 went on with the non-finite state, which
    ended the ant's episode (the finite check, kept) and would have left the cheetah's
    going on with NaN (docs/deviations.md)."""
    ended = np.array(diverged, bool)
    z_range = family.robot.healthy_z
    if z_range is not None:
        finite = np.isfinite(state["qpos"]).all(axis=1) & np.isfinite(state["qvel"]).all(axis=1)
        z = state["qpos"][:, 2]
        ended |= ~(finite & (z >= z_range[0]) & (z <= z_range[1]))
    return ended


def resets(warning: np.ndarray) -> np.ndarray:
    """How often MuJoCo has reset each simulation ``[B]``, from its warning counters
    ``[B, mjNWARNING, 2]`` (``mujoco.batch.Batch.warning``'s (lastinfo, number)): ``mj_step``
    resets a simulation whose positions, velocities or accelerations are not finite or
    huge (``mj_checkPos``, ``mj_checkVel``, ``mj_checkAcc``) to the model's reference pose
    and counts a warning, so a diverged simulation never shows a non-finite state."""
    import mujoco

    bad = [int(w) for w in (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                            mujoco.mjtWarning.mjWARN_BADQACC)]
    return np.asarray(warning)[:, bad, 1].sum(axis=1)


def data_warnings(data) -> np.ndarray:
    """One ``MjData``'s warning counters as :func:`resets` reads them ``[1, mjNWARNING, 2]``."""
    return np.array([[[w.lastinfo, w.number] for w in data.warning]])


def data_state(data) -> dict:
    """:func:`observe`'s and :func:`reward`'s ``state`` of one ``MjData`` (batch of 1)."""
    fields = {name: getattr(data, name)[None] for name in STATE_FIELDS}
    fields["comvel"] = data.sensordata[None, :3]
    return fields


STATE_FIELDS = ("qpos", "qvel", "subtree_com", "xmat", "cfrc_ext")


def sample_tasks(family: Family, num_tasks: int, rng: np.random.Generator) -> np.ndarray:
    """``[T, 1]`` float32: goal velocities U[0, high], or directions ±1 at even odds (the
    authors drew U[0, high] and went backwards below its middle)."""
    check_count("num_tasks", num_tasks, 1, "a whole number of tasks")  # else numpy's
    draw = rng.uniform(0.0, family.goal_high, size=(num_tasks, 1))
    if family.direction:
        draw = np.where(draw < family.goal_high / 2, -1.0, 1.0)
    return draw.astype(np.float32)


def observation_dim(family: Family, oracle: bool) -> int:
    """The length of an observation (cheetah 20, ant 125; the oracle's one more)."""
    import mujoco

    model = load_model(family.robot)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    return int(observe(family, data_state(data), np.zeros(1), oracle).shape[1])


def family_named(name: str) -> Family:
    if name not in TASK_FAMILIES:
        raise ValueError(f"the locomotion task family must be one of "
                         f"{', '.join(TASK_FAMILIES)}, got {name!r}")
    return TASK_FAMILIES[name]
