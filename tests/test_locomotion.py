"""The MuJoCo locomotion task families (tf_maml/tasks/locomotion.py, tf_maml/rl/mujoco_batch.py)
against independent truth: rewards and observations worked out by hand from a plain MuJoCo
simulation of Gymnasium's model with the authors' formulas (rllab's centre-of-mass velocity
from mj_objectVelocity, the contact forces from an explicit mj_rnePostConstraint); the
batched sampler against a plain Python loop over one Gymnasium-API environment per
trajectory; a tiny meta-iteration through the runner; and the one-line message of a missing
rl extra. All but the last need the rl extra (MuJoCo, Gymnasium)."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import pathlib
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import runner
from tf_maml.config import Config
from tf_maml.rl.gym_tasks import GymTasks
from tf_maml.rl.mujoco_batch import LocomotionTasks
from tf_maml.rl.policy import gaussian_mlp_policy
from tf_maml.tasks import locomotion
from tf_maml.tasks.locomotion_env import LocomotionEnv

REPO = pathlib.Path(__file__).resolve().parents[1]
needs_mujoco = pytest.mark.skipif(
    importlib.util.find_spec("mujoco") is None or importlib.util.find_spec("gymnasium") is None,
    reason='the rl extra is not installed (pip install -e ".[rl]")')
# The authors' rllab models (vendor/mujoco_models): time step per action, contact cost.
TIMESTEP = {"cheetah": 0.01, "ant": 0.02}


def raw_model(robot: str):
    """Gymnasium's XML at the rllab model's time step and, for the ant, with the contact
    softness of rllab's ant.xml l.9 (solref .02 1, solimp .8 .8 .01): no sensors added."""
    import mujoco

    gym_dir = os.path.dirname(importlib.util.find_spec("gymnasium").origin)
    xml = "half_cheetah.xml" if robot == "cheetah" else "ant.xml"
    spec = mujoco.MjSpec.from_file(os.path.join(gym_dir, "envs", "mujoco", "assets", xml))
    if robot == "ant":
        for geom in spec.geoms:
            geom.solref, geom.solimp = [0.02, 1], [0.8, 0.8, 0.01, 0.5, 2]
    with warnings.catch_warnings():  # the cheetah's deprecated settotalmass, as a warning
        warnings.simplefilter("ignore")  # (MjModel.from_xml_path would log it to a file)
        model = spec.compile()
    model.opt.timestep = TIMESTEP[robot]
    return model


def rllab_comvel(model, data) -> np.ndarray:
    """rllab's ``get_body_comvel("torso")``: the mass-weighted mean of the linear velocities
    (mj_objectVelocity, world frame) of the torso's subtree, every body but the world."""
    import mujoco

    momentum, mass = np.zeros(3), 0.0
    for body in range(1, model.nbody):
        velocity = np.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, body, velocity, 0)
        momentum += model.body_mass[body] * velocity[3:]
        mass += model.body_mass[body]
    return momentum / mass


def scripted_policy(actions: np.ndarray, shape):
    """A policy that plays ``actions[t]`` at the t-th call, with no exploration to speak of
    (log-std −60: exp(−60)·ε vanishes in float32 beside actions of order 1)."""
    calls = []

    def policy_fn(obs):
        t = len(calls)
        calls.append(t)
        mean = np.broadcast_to(actions[t], shape + actions.shape[1:])
        return tf.constant(np.concatenate([mean, np.full_like(mean, -60.0)], -1), tf.float32)

    return policy_fn


def by_hand(family: str, task: float, reset_seed: int, actions: np.ndarray):
    """Observations and rewards of one episode, computed here from a plain simulation by the
    formulas of the authors' rllab environments (half_cheetah_env_rand(_direc).py,
    ant_env_rand(_direc).py)."""
    import mujoco

    robot = "cheetah" if family.startswith("cheetah") else "ant"
    model = raw_model(robot)
    data = mujoco.MjData(model)
    rng = np.random.default_rng(reset_seed)
    init = np.array(model.numeric_data[:model.nq]) if robot == "ant" else np.zeros(model.nq)
    data.qpos[:] = init + 0.01 * rng.normal(size=model.nq)
    data.qvel[:] = 0.1 * rng.normal(size=model.nv)

    def observe():
        mujoco.mj_forward(model, data)
        if robot == "cheetah":
            return np.concatenate([data.qpos[1:], data.qvel, data.subtree_com[1]])
        mujoco.mj_rnePostConstraint(model, data)  # cfrc_ext: only computed on request
        return np.concatenate([data.qpos, data.qvel, np.clip(data.cfrc_ext, -1, 1).ravel(),
                               data.xmat[1], data.subtree_com[1]])

    observations, rewards, obs = [], [], observe()
    for action in actions:
        observations.append(obs)
        a = np.clip(action.astype(np.float64), -1, 1)
        data.ctrl[:] = a
        mujoco.mj_step(model, data)
        obs = observe()
        v = rllab_comvel(model, data)[0]
        if family == "cheetah_vel":
            r = -abs(v - task) - 0.1 * 0.5 * np.sum(a ** 2)
        elif family == "cheetah_dir":
            r = task * v - 0.1 * 0.5 * np.sum(a ** 2)
        else:
            forward = -abs(v - task) + 1.0 if family == "ant_vel" else task * v
            contact = 0.5 * 1e-3 * np.sum(np.clip(data.cfrc_ext, -1, 1) ** 2)
            r = forward - 0.5 * 1e-2 * np.sum(a ** 2) - contact + 0.05
        rewards.append(r)
        if robot == "ant" and not 0.2 <= data.qpos[2] <= 1.0:
            break
    return np.array(observations), np.array(rewards)


@needs_mujoco
@pytest.mark.parametrize("family", ["cheetah_vel", "cheetah_dir", "ant_vel", "ant_dir"])
def test_rewards_and_observations_of_a_scripted_episode_match_the_authors_formulas(family):
    horizon, shape = 40, (2, 2)
    tasks_family = LocomotionTasks(family, horizon=horizon)
    tasks = np.array([[0.5], [1.7]] if family.endswith("vel") else [[-1.0], [1.0]], np.float32)
    t = np.arange(horizon)[:, None]
    actions = (1.5 * np.sin(0.3 * t + np.arange(tasks_family.action_dim))).astype(np.float32)
    seed = [3, 4]
    traj = tasks_family.rollout(scripted_policy(actions, shape), tasks, 2, seed)
    reset_seeds = np.random.default_rng(np.asarray(seed, np.int64)).integers(2**31, size=shape)
    for i, j in [(0, 0), (1, 1)]:
        obs, rewards = by_hand(family, float(tasks[i, 0]), int(reset_seeds[i, j]), actions)
        steps = len(rewards)
        mask = traj["mask"][i, j].numpy()
        assert mask.sum() == steps and np.all(mask[:steps] == 1)
        np.testing.assert_allclose(traj["rewards"][i, j, :steps], rewards, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(traj["observations"][i, j, :steps], obs, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(traj["actions"][i, j, :steps], actions[:steps], atol=1e-20)
        assert np.all(traj["rewards"][i, j, steps:].numpy() == 0)


@needs_mujoco
@pytest.mark.parametrize("family, oracle", [("cheetah_vel", False), ("ant_dir", True)])
def test_batched_sampler_returns_the_trajectories_of_a_plain_loop(family, oracle):
    """All T·N simulations in one mujoco.batch against GymTasks stepping one LocomotionEnv
    (one MjData, mj_step) per trajectory: the same observations, actions, rewards and masks,
    bit for bit, also where ant episodes end at different steps."""
    horizon = 60
    batched = LocomotionTasks(family, oracle=oracle, horizon=horizon, threads=2)
    plain = GymTasks(lambda task: LocomotionEnv(family, goal=float(task[0]),
                                                           oracle=oracle, horizon=horizon),
                     batched.sample_tasks, batched.observation_dim, batched.action_dim,
                     horizon)
    keras.utils.set_random_seed(0)
    policy = gaussian_mlp_policy(batched.observation_dim, batched.action_dim)

    def policy_fn(obs):
        flat = tf.reshape(obs, [-1, obs.shape[-1]])
        return tf.reshape(policy(flat), tf.concat([tf.shape(obs)[:-1], [-1]], 0))

    tasks = batched.sample_tasks(3, np.random.default_rng(5))
    qpos, before_step = batched.batch(3 * 4).bind("qpos"), []

    def recording_policy_fn(obs):  # the simulations' positions before each time step
        before_step.append(qpos.copy().reshape(3, 4, -1))
        return policy_fn(obs)

    got = batched.rollout(recording_policy_fn, tasks, 4, [7, 8])
    want = plain.rollout(policy_fn, tasks, 4, [7, 8])
    for key in ("observations", "actions", "rewards", "mask"):
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)
    lengths = got["mask"].numpy().sum(-1).astype(int)
    if family.startswith("ant"):  # random torques topple some ants: ends differ
        assert lengths.min() < horizon and len(np.unique(lengths)) > 1
        # a finished simulation is not stepped again: its positions stay where it fell
        final = qpos.reshape(3, 4, -1)
        for i, j in zip(*np.nonzero(lengths < len(before_step))):
            fallen = before_step[lengths[i, j]][i, j]
            assert not 0.2 <= fallen[2] <= 1.0  # the torso's height that ended it
            for later in before_step[lengths[i, j] + 1:] + [final]:
                np.testing.assert_array_equal(later[i, j], fallen)
    if oracle:  # the task appended to every observation that happened
        appended = got["observations"][..., -1].numpy()
        np.testing.assert_array_equal(appended, tasks[:, None, :] * got["mask"].numpy())


@needs_mujoco
@pytest.mark.parametrize("family", ["ant_vel", "cheetah_vel"])
def test_with_a_step_budget_the_batched_sampler_returns_the_paths_of_a_plain_loop(family):
    """maml_rl's budget (whole paths until N × H steps per task): the batch restarts each
    simulation whose ant fell, as GymTasks resets its LocomotionEnv, into the same paths
    bit for bit; the cheetah, which never falls, samples its N trajectories."""
    horizon, slots = 40, 3
    batched = LocomotionTasks(family, horizon=horizon, threads=2)
    plain = GymTasks(lambda task: LocomotionEnv(family, goal=float(task[0]), horizon=horizon),
                     batched.sample_tasks, batched.observation_dim, batched.action_dim,
                     horizon)
    keras.utils.set_random_seed(0)  # wild actions (std 3) topple ants within 40 steps
    policy = gaussian_mlp_policy(batched.observation_dim, batched.action_dim, init_std=3.0)

    def policy_fn(obs):
        flat = tf.reshape(obs, [-1, obs.shape[-1]])
        return tf.reshape(policy(flat), tf.concat([tf.shape(obs)[:-1], [-1]], 0))

    tasks = batched.sample_tasks(2, np.random.default_rng(5))
    budget = slots * horizon
    got = batched.rollout(policy_fn, tasks, slots, [1, 2], max_steps=budget)
    want = plain.rollout(policy_fn, tasks, slots, [1, 2], max_steps=budget)
    for key in ("observations", "actions", "rewards", "mask"):
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)
    lengths = got["mask"].numpy().sum(-1).astype(int)  # [T, P]
    for row in lengths:  # maml_rl's rule: the last path starts below the budget, kept whole
        kept = row[row > 0]
        assert np.all(row[len(kept):] == 0) and kept.sum() >= budget > kept[:-1].sum()
    if family == "ant_vel":  # random torques topple ants: more, shorter paths
        assert lengths.shape[1] > slots and lengths.min() < horizon
    else:
        no_budget = batched.rollout(policy_fn, tasks, slots, [1, 2])
        for key in ("observations", "actions", "rewards", "mask"):
            np.testing.assert_array_equal(got[key].numpy(), no_budget[key].numpy())


@needs_mujoco
def test_the_task_families_sample_the_authors_ranges():
    rng = np.random.default_rng(0)
    # half_cheetah_env_rand.py, ant_env_rand.py sample_goals: U[0, 2], U[0, 3]
    for family, high in [("cheetah_vel", 2.0), ("ant_vel", 3.0)]:
        velocity = LocomotionTasks(family).sample_tasks(2000, rng)
        assert velocity.shape == (2000, 1) and 0 <= velocity.min() and velocity.max() <= high
        assert velocity.max() > 0.95 * high and velocity.min() < 0.05 * high
        assert velocity.mean() == pytest.approx(high / 2, abs=0.1)
    for family in ("cheetah_dir", "ant_dir"):  # *_rand_direc.py: ±1 at even odds
        direction = LocomotionTasks(family).sample_tasks(2000, rng)
        assert direction.shape == (2000, 1) and set(np.unique(direction)) == {-1.0, 1.0}
        assert np.mean(direction) == pytest.approx(0.0, abs=0.1)
    dims = {name: LocomotionTasks(name).observation_dim
            for name in ("cheetah_vel", "ant_vel")}
    # rllab: cheetah qpos[1:] (8) + qvel (9) + torso com (3); ant qpos (15) + qvel (14) +
    # 14 bodies' 6 contact forces + torso xmat (9) + com (3)
    assert dims == {"cheetah_vel": 20, "ant_vel": 125}


@needs_mujoco
def test_a_tiny_meta_iteration_through_the_runner_writes_the_returns(tmp_path):
    # one task per meta-batch: the meta-step's graphs are traced per task
    config = Config(datasource="cheetah_vel", logdir=str(tmp_path), metatrain_iterations=1,
                    meta_batch_size=1, update_batch_size=2, update_lr=0.1, norm="None",
                    horizon=5, num_test_tasks=2, test_num_updates=2, log=False,
                    sample_budget="steps").validate()
    lines = []
    result = runner.run(config, log=lines.append)
    run_dir = result["run_dir"]
    assert any("2 x 5 environment steps per step" in line for line in lines)
    with open(os.path.join(run_dir, "config.json")) as f:
        assert Config.from_json(f.read()).sample_budget == "steps"
    assert run_dir.endswith("cls_5.mbs_1.ubs_2.numstep1.updatelr0.1nonorm.horizon5")
    with open(os.path.join(run_dir, "training_log.csv")) as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [1]
    with open(os.path.join(run_dir, "test_returns.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["steps"]) for r in rows] == [0, 1, 2]
    returns = np.load(os.path.join(run_dir, "test_returns.npy"))
    # −|v − v*| − control cost ≤ 0 at every step; 5 steps cannot reach −(5 · 10)
    assert returns.shape == (2, 3) and np.all(returns < 0) and np.all(returns > -50)
    assert os.path.exists(os.path.join(run_dir, "model-1.index"))


@needs_mujoco
def test_a_locomotion_run_records_the_simulator_it_ran_on(tmp_path):
    """MuJoCo and Gymnasium are unpinned: a locomotion run's flags (config.json, and an
    evaluation's test_config.json) name the versions the modules themselves report."""
    import gymnasium
    import mujoco

    for train, name in ((True, "config.json"), (False, "test_config.json")):
        runner._write_config(Config(datasource="cheetah_vel", norm="None", train=train),
                             str(tmp_path))
        with open(tmp_path / name) as f:
            record = json.load(f)
        assert record["versions"] == {"mujoco": mujoco.__version__,
                                      "gymnasium": gymnasium.__version__}
        assert Config.from_json(json.dumps(record)).datasource == "cheetah_vel"
    runner._write_config(Config(datasource="navigation", norm="None"), str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert "versions" not in json.load(f)  # navigation simulates nothing of theirs


def test_without_the_rl_extra_a_locomotion_flagfile_fails_with_one_line(tmp_path, capsys,
                                                                         monkeypatch):
    from absl import app, flags

    from tf_maml import main as cli_main

    monkeypatch.setitem(sys.modules, "mujoco", None)  # `import mujoco` raises ImportError
    flags.FLAGS.unparse_flags()
    argv = ["tf-maml", f"--flagfile={REPO}/flags/cheetah_vel_maml.flags",
            f"--logdir={tmp_path}/logs"]
    try:
        with pytest.raises(SystemExit) as exit_:
            app.run(cli_main.main, argv=argv)
    finally:
        flags.FLAGS.unparse_flags()
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("tf-maml: error: --datasource=cheetah_vel needs the MuJoCo")
    assert err[0].endswith('pip install -e ".[rl]"')
    assert not os.path.exists(tmp_path / "logs")  # refused before the run directory


def capsule_mass(density: float, radius: float, length: float) -> float:
    return density * (np.pi * radius**2 * length + 4 / 3 * np.pi * radius**3)


@needs_mujoco
def test_the_compiled_models_have_rllabs_physics():
    """load_model against numbers typed from rll/rllab's vendor/mujoco_models (the files
    maml_rl's environments load), as MuJoCo reads them: what Gymnasium's XML writes
    differently must have been set back (the ant's contact softness), or be equivalent (the
    ant's gear × control range)."""
    import mujoco

    cheetah = locomotion.load_model(locomotion.CHEETAH)
    # half_cheetah.xml l.36 settotalmass='14'; l.43 timestep 0.01, no integrator (Euler)
    assert cheetah.opt.timestep == 0.01
    assert cheetah.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert cheetah.body_mass.sum() == pytest.approx(14.0)
    # l.38 joint defaults: armature .1, damping .01, stiffness 8 (the legs override the last
    # two, l.62-80), solreflimit .02 1, solimplimit 0 .8 .03 (then MuJoCo's 0.5, 2)
    legs = slice(3, 9)
    np.testing.assert_array_equal(cheetah.dof_armature[legs], 0.1)
    np.testing.assert_array_equal(cheetah.dof_damping[legs], [6, 4.5, 3, 4.5, 3, 1.5])
    np.testing.assert_array_equal(cheetah.jnt_stiffness[legs], [240, 180, 120, 180, 120, 60])
    np.testing.assert_array_equal(cheetah.jnt_range[legs], [[-.52, 1.05], [-.785, .785],
                                                             [-.4, .785], [-1, .7],
                                                             [-1.2, .87], [-.5, .5]])
    np.testing.assert_array_equal(cheetah.jnt_solref[legs], [[0.02, 1]] * 6)
    np.testing.assert_array_equal(cheetah.jnt_solimp[legs], [[0, 0.8, 0.03, 0.5, 2]] * 6)
    # l.39 geom defaults (the floor too): friction .4 .1 .1, solimp 0 .8 .01, solref .02 1
    np.testing.assert_array_equal(cheetah.geom_friction, [[0.4, 0.1, 0.1]] * cheetah.ngeom)
    np.testing.assert_array_equal(cheetah.geom_solimp, [[0, 0.8, 0.01, 0.5, 2]] * cheetah.ngeom)
    np.testing.assert_array_equal(cheetah.geom_solref, [[0.02, 1]] * cheetah.ngeom)
    np.testing.assert_array_equal(cheetah.geom_margin, 0)
    # l.88-93 gears; l.40 ctrlrange -1 1
    np.testing.assert_array_equal(cheetah.actuator_gear[:, 0], [120, 90, 60, 120, 60, 30])
    np.testing.assert_array_equal(cheetah.actuator_ctrlrange, [[-1, 1]] * 6)

    ant = locomotion.load_model(locomotion.ANT)
    # ant.xml l.3: timestep 0.02, RK4
    assert ant.opt.timestep == 0.02 and ant.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    # l.8 joint defaults armature 1, damping 1 (the free root's 0, l.23); limits MuJoCo's
    np.testing.assert_array_equal(ant.dof_armature, [0] * 6 + [1] * 8)
    np.testing.assert_array_equal(ant.dof_damping, [0] * 6 + [1] * 8)
    np.testing.assert_array_equal(ant.jnt_stiffness, 0)
    hip, front_ankle, back_ankle = [-30, 30], [30, 70], [-70, -30]  # degrees, l.27-63
    np.testing.assert_allclose(ant.jnt_range[1:], np.radians(
        [hip, front_ankle, hip, back_ankle, hip, back_ankle, hip, front_ankle]), rtol=1e-12)
    np.testing.assert_array_equal(ant.jnt_solimp[1:], [[0.9, 0.95, 0.001, 0.5, 2]] * 8)
    # l.9 geom defaults (the floor too): friction 1 .5 .5, margin .01, solref .02 1,
    # solimp .8 .8 .01 (then MuJoCo's 0.5, 2); density 5
    np.testing.assert_array_equal(ant.geom_friction, [[1, 0.5, 0.5]] * ant.ngeom)
    np.testing.assert_array_equal(ant.geom_margin, 0.01)
    np.testing.assert_array_equal(ant.geom_solref, [[0.02, 1]] * ant.ngeom)
    np.testing.assert_array_equal(ant.geom_solimp, [[0.8, 0.8, 0.01, 0.5, 2]] * ant.ngeom)
    torso = 5.0 * 4 / 3 * np.pi * 0.25**3  # l.22: a sphere of radius .25
    leg, ankle = capsule_mass(5.0, 0.08, 0.2 * 2**0.5), capsule_mass(5.0, 0.08, 0.4 * 2**0.5)
    np.testing.assert_allclose(ant.body_mass, [0, torso] + [leg, leg, ankle] * 4, rtol=1e-9)
    # l.71-78: ctrlrange ±150 at gear 1; Gymnasium's ±1 at gear 150 is the same torque range
    np.testing.assert_array_equal(ant.actuator_gear[:, 0] * ant.actuator_ctrlrange[:, 1], 150)
    np.testing.assert_array_equal(ant.actuator_ctrlrange, [[-1, 1]] * 8)


@needs_mujoco
@pytest.mark.parametrize("family", ["ant_vel", "cheetah_dir"])
def test_a_simulation_that_diverges_ends_its_episode_in_both_samplers(family, tmp_path,
                                                                     monkeypatch):
    """A huge velocity written into one simulation mid-episode: MuJoCo resets it to the
    reference pose with a warning instead of producing the non-finite state the authors'
    termination looked for; its episode must end at that step (that step's reward counted),
    in the batch and in LocomotionEnv alike, and the other simulation must go on. MuJoCo's
    warning goes to the log, not into a MUJOCO_LOG.TXT in the user's current folder."""
    monkeypatch.chdir(tmp_path)
    horizon, kick, size = 12, 5, 2
    tasks_family = LocomotionTasks(family, horizon=horizon)
    actions = np.zeros((horizon, tasks_family.action_dim), np.float32)  # stand still
    scripted = scripted_policy(actions, (1, size))
    qvel, calls = tasks_family.batch(size).bind("qvel"), []

    def policy_fn(obs):  # called before each step: kick simulation 0 before step `kick`
        if len(calls) == kick:
            qvel[0, -1] = 1e6
        calls.append(len(calls))
        return scripted(obs)

    seed = [9, 9]
    traj = tasks_family.rollout(policy_fn, np.array([[1.0]], np.float32), size, seed)
    mask = traj["mask"].numpy()[0]
    assert mask[0].sum() == kick + 1 and mask[1].sum() == horizon
    batched_reward = traj["rewards"].numpy()[0, 0, kick]
    assert np.isfinite(traj["observations"].numpy()).all()

    env = LocomotionEnv(family, goal=1.0, horizon=horizon)
    reset_seed = np.random.default_rng(np.asarray(seed, np.int64)).integers(2**31, size=(1, 2))
    env.reset(seed=int(reset_seed[0, 0]))
    for _ in range(kick):
        assert not env.step(actions[0])[2]
    env.data.qvel[-1] = 1e6
    _, reward, terminated, truncated, _ = env.step(actions[0])
    assert terminated and not truncated
    assert reward == pytest.approx(batched_reward, rel=1e-5, abs=1e-5)
    assert os.listdir(tmp_path) == []


@needs_mujoco
def test_locomotion_env_passes_gymnasiums_checker():
    """As the navigation environment (tests/test_rl.py): spaces, seeding, reset and step as
    Gymnasium specifies them. The checker reports much as warnings only: none but that the
    observations are unbounded (velocities and contact forces are, as in Gymnasium's own
    MuJoCo environments)."""
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    env = LocomotionEnv("cheetah_vel")
    assert isinstance(env, gymnasium.Env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    others = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert others == []


@needs_mujoco
def test_locomotion_env_refuses_a_direction_other_than_plus_or_minus_one():
    """rllab's direction environments took a reset argument in [0, 2]; here the goal is the
    direction itself and scales the reward, so anything but ±1 is refused. A goal passed to
    reset() is that episode's only: the goal fixed at construction comes back."""
    with pytest.raises(ValueError, match=r"-1 \(backward\) or 1 \(forward\), got 2.0"):
        LocomotionEnv("ant_dir", goal=2.0)
    env = LocomotionEnv("cheetah_dir", goal=1.0)
    with pytest.raises(ValueError, match="got 0.5"):
        env.reset(options={"goal": 0.5})
    env.reset(seed=0, options={"goal": -1})
    assert env.goal == -1.0
    env.reset(seed=0)
    assert env.goal == 1.0
    assert LocomotionEnv("cheetah_vel", goal=1.7).reset(seed=0)[0].shape == (20,)


def module_level_imports(path: pathlib.Path) -> set[str]:
    """The modules ``path`` imports when it is imported (not inside its functions)."""
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.add(child.module or "")
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_the_task_definitions_the_configuration_checks_read_import_no_simulator():
    """tf_maml/config_checks.py reads TASK_FAMILIES from tasks/locomotion.py on every
    tf-maml start: importing it must not import Gymnasium or MuJoCo (LocomotionEnv, which
    subclasses gymnasium.Env, lives in tasks/locomotion_env.py)."""
    assert "tf_maml.tasks.locomotion" in module_level_imports(REPO / "tf_maml/config_checks.py")
    imported = module_level_imports(REPO / "tf_maml/tasks/locomotion.py")
    assert not {name for name in imported if name.split(".")[0] in ("gymnasium", "mujoco")}
    assert {name for name in imported if name.startswith("tf_maml")} == {"tf_maml.errors"}
