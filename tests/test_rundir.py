"""A run directory that cannot be silently corrupted: each way an unlucky user could lose or
mix work gives the right behaviour or a one-line error naming the problem and the fix.

Reproduced on temporary sinusoid runs (checkpoints every 20 iterations, a log row every 10):
a resume with another meta_lr (and a flag that would make the run another one), a lost or
garbled ``checkpoint`` state file, two writers, the log after a fallback, a full disk or a
read-only directory, and evaluation on a corrupt latest checkpoint. The same mechanism serves
the CLI, ``MetaLearner.fit(run_dir=...)`` and the RL runner (tests/test_rl.py).
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_bad_inputs import as_flags, cli, one_line_error, snapshot
from test_cli import fast_intervals, sine_config, weights_of  # noqa: F401 (a fixture)
from test_convert import save_tf1_sinusoid  # a TF1 name-based checkpoint

from tf_maml import atomic, experiment, losses, models, options, rundir, runner, zoo
from tf_maml import evaluate as evaluate_lib
from tf_maml.api import MetaLearner
from tf_maml.checkpoint import CheckpointError, learner_checkpointer
from tf_maml.config import Config, ConfigError
from tf_maml.main import to_flags
from tf_maml.rundir import RunDirError
from tf_maml.tasks.sinusoid import SinusoidTasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
quiet = lambda line: None  # noqa: E731


def trained(logdir, iterations: int, **overrides):
    """A sinusoid run trained to ``iterations``; (config, run directory)."""
    config = sine_config(logdir, metatrain_iterations=iterations, test_after_train=False,
                         **overrides)
    runner.run(config, log=quiet)
    return config, logdir / config.exp_string()


def model_weights(run_dir, iteration) -> list[np.ndarray]:
    found = weights_of(run_dir, iteration)
    return [found[n] for n in sorted(found) if n.startswith("optimizer/_trainable_variables/")]


def log_iterations(run_dir) -> list[int]:
    with open(run_dir / "training_log.csv") as f:
        return [int(row["iteration"]) for row in csv.DictReader(f)]


def checkpoint_hashes(run_dir) -> dict[str, str]:
    return {k: v for k, v in snapshot(run_dir).items() if k.startswith("model-")}


# ---------------------------------------------------------------------- 1. changed flags
def test_a_changed_meta_lr_applies_from_the_resumed_iteration_with_adams_moments_kept(
        tmp_path, fast_intervals):
    _, run_a = trained(tmp_path / "a", 40)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    run_b = tmp_path / "b" / run_a.name
    runner.run(sine_config(tmp_path / "a", metatrain_iterations=41, test_after_train=False),
               log=quiet)
    logs = []
    runner.run(sine_config(tmp_path / "b", metatrain_iterations=41, test_after_train=False,
                           meta_lr=1e-4), log=logs.append)
    # Adam's step is lr * m̂ / (√v̂ + ε): with the moments kept and the same gradient (same
    # task stream), a tenth of the learning rate moves θ by exactly a tenth as far. Moments
    # restarted from zero would give a step of about lr in every coordinate instead.
    before = model_weights(run_a, 40)
    for theta, full, tenth in zip(before, model_weights(run_a, 41), model_weights(run_b, 41)):
        assert np.abs(full - theta).max() > 1e-5
        np.testing.assert_allclose(tenth - theta, (full - theta) / 10, rtol=2e-3, atol=2e-8)
    reader = tf.train.load_checkpoint(str(run_b / "model-41"))
    assert reader.get_tensor("optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE") == \
        pytest.approx(1e-4)
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 41
    changed = [line for line in logs if line.startswith("Changed on resume")]
    assert changed == ["Changed on resume, from iteration 40: `meta_lr` 0.001 -> 0.0001 "
                       "(Adam's moments kept), `metatrain_iterations` 40 -> 41"]
    assert to_flags(changed[0]).endswith("--meta_lr 0.001 -> 0.0001 (Adam's moments kept), "
                                         "--metatrain_iterations 40 -> 41")


@pytest.mark.parametrize("flag, value", [("seed", 5), ("pretrain_iterations", 10)])
def test_a_resume_refuses_a_flag_that_makes_the_run_another_naming_the_fix(
        tmp_path, fast_intervals, flag, value):
    config, run_dir = trained(tmp_path, 20)
    before = snapshot(run_dir)
    other = dataclasses.replace(config, metatrain_iterations=40, **{flag: value})
    with pytest.raises(ConfigError, match=rf"--{flag}: the run in {run_dir.name} was trained "
                       rf"with --{flag}={getattr(config, flag)}; .* Pass "
                       rf"--{flag}={getattr(config, flag)} to continue it, or another --logdir"):
        runner.run(other, log=quiet)
    assert snapshot(run_dir) == before


def test_a_run_restored_from_the_zoo_refuses_a_flag_that_makes_it_another(tmp_path,
                                                                         fast_intervals):
    """The zoo folder holds the run's config.json with placeholders for this machine's
    paths; a run directory seeded from it must check the flags as the run itself would."""
    config, run_dir = trained(tmp_path / "trained", 20)
    zoo_dir = tmp_path / "zoo" / "sine"  # as publish leaves it
    os.makedirs(zoo_dir)
    for name in os.listdir(run_dir):
        if name.startswith("model-20.") or name == "training_log.csv":
            shutil.copy2(run_dir / name, zoo_dir)
    (zoo_dir / "config.json").write_text(
        zoo.sanitized_config(config.to_json(), {str(tmp_path / "trained"): "$LOGDIR"}))
    fresh = dataclasses.replace(config, logdir=str(tmp_path / "fresh"),
                                metatrain_iterations=40)
    fresh_run = tmp_path / "fresh" / run_dir.name
    assert zoo.restore(str(zoo_dir), str(fresh_run), log=quiet)
    before = snapshot(fresh_run)
    with pytest.raises(ConfigError, match=rf"--seed: the run in {run_dir.name} was trained "
                                          r"with --seed=0; resuming it with 5"):
        runner.run(dataclasses.replace(fresh, seed=5), log=quiet)
    assert snapshot(fresh_run) == before
    logs = []
    runner.run(fresh, log=logs.append)  # the same flags resume it
    assert f"Resumed from {fresh_run}/model-20 at iteration 20" in logs
    assert json.loads((fresh_run / "config.json").read_text())["logdir"] == fresh.logdir


def test_a_garbled_config_json_is_one_line_and_changes_nothing(tmp_path, fast_intervals):
    config, run_dir = trained(tmp_path, 20)
    (run_dir / "config.json").write_text('{"datasource": "sinusoid", "seed": ')  # cut short
    before = snapshot(run_dir)
    result = cli(*as_flags(config, metatrain_iterations=40))
    assert result.code == 1
    line = one_line_error(result.err)
    assert line.startswith(f"tf-maml: error: {run_dir}/config.json, the flags the run was "
                           "trained with, cannot be read (")
    assert "fix it, or delete it to resume without comparing the flags" in line
    assert snapshot(run_dir) == before


def test_fit_applies_a_changed_meta_lr_and_says_so(tmp_path):
    run_dir = str(tmp_path / "fit")

    def learner(meta_lr):
        keras.utils.set_random_seed(0)
        return MetaLearner(models.fc_net((1,), (8,), 1, norm="None"), losses.mse, inner_lr=0.01,
                           meta_optimizer=options.adam(meta_lr))

    learner(1e-3).fit(SinusoidTasks(5, 5), 3, meta_batch_size=2, run_dir=run_dir,
                      log_interval=None, log=quiet)
    logs = []
    again = learner(1e-2)
    again.fit(SinusoidTasks(5, 5), 4, meta_batch_size=2, run_dir=run_dir, log_interval=None,
              log=logs.append)
    assert "Changed on resume, from iteration 3: `meta_lr` 0.001 -> 0.01 (Adam's moments " \
           "kept)" in logs
    assert float(again.optimizer.learning_rate.numpy()) == pytest.approx(1e-2)
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(model-4\); pass "
                                              r"`resume=True`.*another `run_dir`"):
        learner(1e-3).fit(SinusoidTasks(5, 5), 5, meta_batch_size=2, run_dir=run_dir,
                          resume=False, log_interval=None, log=quiet)


def test_fit_with_fewer_iterations_than_its_checkpoint_is_refused_as_the_cli_refuses(tmp_path):
    # Was "Training already complete (5/3 iterations)": fit returned 5 for 3 asked, and
    # fit.json recorded the run anew, as the command line refuses to (tf-maml's
    # --metatrain_iterations below the checkpoint).
    run_dir = tmp_path / "fit"
    keras.utils.set_random_seed(0)
    learner = MetaLearner(models.fc_net((1,), (8,), 1, norm="None"), losses.mse, inner_lr=0.01)
    learner.fit(SinusoidTasks(5, 5), 5, meta_batch_size=2, run_dir=str(run_dir),
                log_interval=None, log=quiet)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as raised:
        learner.fit(SinusoidTasks(5, 5), 3, meta_batch_size=2, run_dir=str(run_dir),
                    log_interval=None, log=quiet)
    assert str(raised.value) == (
        f"`iterations`: the run in {run_dir} is at iteration 5 (model-5), past the 3 asked; "
        "training does not go back. Pass `iterations=5` or more to train it on, or another "
        "`run_dir` for a new run. Nothing was overwritten.")
    assert snapshot(run_dir) == before


def test_the_logs_seconds_do_not_follow_the_wall_clock(tmp_path, monkeypatch):
    """The wall clock set back (NTP, a laptop's resume) while a run trains: the log's seconds
    since the session began are measured on the monotonic clock (they went negative)."""
    wall = iter(range(2 * 10**9, 0, -3600))  # each reading an hour before the last
    monkeypatch.setattr(time, "time", lambda: float(next(wall)))
    keras.utils.set_random_seed(0)
    learner = MetaLearner(models.fc_net((1,), (8,), 1, norm="None"), losses.mse, inner_lr=0.01)
    learner.fit(SinusoidTasks(5, 5), 3, meta_batch_size=2, run_dir=str(tmp_path),
                log_interval=None, log=quiet)
    with open(tmp_path / "training_log.csv") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    assert seconds and all(0 <= s < 600 for s in seconds), seconds


# ---------------------------------------------------------------------- 2. the state file
@pytest.mark.parametrize("damage", ["lost", "garbled"])
def test_a_lost_or_garbled_state_file_changes_nothing(tmp_path, fast_intervals, damage):
    config, run_dir = trained(tmp_path, 60)
    if damage == "lost":
        os.remove(run_dir / "checkpoint")
    else:
        (run_dir / "checkpoint").write_bytes(b"\x00garbage\xff{")
    kept = checkpoint_hashes(run_dir)
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(model-60\)"):
        runner.run(dataclasses.replace(config, resume=False), log=quiet)
    logs = []
    runner.run(dataclasses.replace(config, train=False, num_test_tasks=2), log=logs.append)
    assert f"Restored {run_dir}/model-60 (iteration 60)" in logs
    logs.clear()
    runner.run(dataclasses.replace(config, metatrain_iterations=80), log=logs.append)
    assert f"Resumed from {run_dir}/model-60 at iteration 60" in logs
    after = checkpoint_hashes(run_dir)
    assert {k: after[k] for k in kept} == kept  # model-20 .. model-60 untouched
    assert tf.train.latest_checkpoint(str(run_dir)).endswith("model-80")  # a valid file again
    assert log_iterations(run_dir) == list(range(10, 81, 10))


def test_an_existing_checkpoint_is_never_overwritten(tmp_path):
    def checkpointer(seed):
        keras.utils.set_random_seed(seed)
        return learner_checkpointer(
            MetaLearner(models.fc_net((1,), (8,), 1, norm="None"), losses.mse), str(tmp_path))

    checkpointer(0).save(20)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"model-20 already exists and holds another "
                                              r"state; it is left as it is"):
        checkpointer(1).save(20)
    assert snapshot(tmp_path) == before


def test_a_weights_only_zoo_checkpoint_is_complete_or_a_clear_error(tmp_path, fast_intervals):
    # The zoo keeps a finished run as θ alone (zoo._slim_checkpoint). Restored on a fresh
    # clone, the same settings find it complete; more iterations cannot resume without Adam's
    # moments, which must be said, not reported as "does not fit this model".
    from tf_maml import zoo

    config, run_dir = trained(tmp_path / "full", 20)
    slim = tmp_path / "zoo" / run_dir.name
    slim.mkdir(parents=True)
    shutil.copy(run_dir / "config.json", slim)
    zoo._slim_checkpoint(str(run_dir), 20, str(slim))
    names = [n for n, _ in tf.train.list_variables(str(slim / "model-20"))]
    assert not any(n.startswith("optimizer/") for n in names)  # the case under test

    logs = []
    runner.run(dataclasses.replace(config, logdir=str(tmp_path / "zoo")), log=logs.append)
    assert any(line.startswith("Training already complete (20/20 iterations") for line in logs)
    before = snapshot(slim)
    longer = dataclasses.replace(config, logdir=str(tmp_path / "zoo"), metatrain_iterations=40)
    with pytest.raises(CheckpointError, match=r"model-20 holds the model's weights only .* "
                                              r"Evaluate it with `train=False`"):
        runner.run(longer, log=quiet)
    assert snapshot(slim) == before
    # ... and evaluation still restores exactly the trained θ.
    def theta(directory):
        learner = experiment.build_learner(config)
        learner_checkpointer(learner, str(directory)).restore(str(directory / "model-20"),
                                                             expect_optimizer=False)
        return [v.numpy() for v in learner.model.weights]

    for trained_w, slim_w in zip(theta(run_dir), theta(slim), strict=True):
        np.testing.assert_array_equal(slim_w, trained_w)


# ---------------------------------------------------------------------- 3. two writers
def command(logdir, iterations=10**6):
    return [sys.executable, "-m", "tf_maml.main", "--datasource=sinusoid", "--norm=None",
            f"--metatrain_iterations={iterations}", "--update_batch_size=5",
            "--update_lr=0.01", "--meta_batch_size=4", f"--logdir={logdir}",
            "--test_after_train=False", "--log=False"]


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    first = subprocess.Popen(command(tmp_path), cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        run_dir = tmp_path / "cls_5.mbs_4.ubs_5.numstep1.updatelr0.01nonorm"
        deadline = time.time() + 300
        while not (run_dir / "training_log.csv").exists() and time.time() < deadline:
            assert first.poll() is None, first.communicate()[0][-3000:]
            time.sleep(0.1)
        second = cli(*command(tmp_path)[3:])  # the same command, in this process
        assert second.code == 1
        line = one_line_error(second.err)
        assert f"{run_dir} is in use by process {first.pid} on {socket.gethostname()}" in line
        assert "wait for it to finish, or stop it, or use another --logdir" in line
    finally:
        first.send_signal(signal.SIGTERM)  # saves a checkpoint, releases the lock
        try:
            out = first.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired as err:
            first.kill()
            pytest.fail(f"SIGTERM did not stop the first writer: {str(err.output)[-2000:]}")
    assert "Interrupted at iteration" in out
    assert not (run_dir / rundir.LOCK_NAME).exists()
    rows = log_iterations(run_dir)
    assert rows == sorted(set(rows))  # one writer: each iteration once


def lock_of(pid, **extra) -> str:
    return json.dumps(dict(pid=pid, host=socket.gethostname(), since=time.time(), **extra))


def test_a_lock_of_a_live_process_refuses_and_a_stale_one_is_taken_over(tmp_path):
    path = tmp_path / rundir.LOCK_NAME
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(lock_of(sleeper.pid, command="tf-maml --logdir=x"))
        with pytest.raises(RunDirError, match=rf"in use by process {sleeper.pid} on .*"
                                              r"\(tf-maml --logdir=x\)"), rundir.lock(tmp_path):
            pass
        assert path.exists()  # not ours: left alone
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same pid, now dead (SIGKILL): the lock is stale.
    logs = []
    with rundir.lock(tmp_path, logs.append):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert any(f"removing the stale lock {path} of process {sleeper.pid}" in line
               for line in logs)
    assert not path.exists()
    # A recycled pid (alive, but started after the lock was written) is stale too.
    path.write_text(lock_of(os.getpid(), started_ticks="1"))
    with rundir.lock(tmp_path, quiet):
        pass
    # Another host's process cannot be checked: refused, with the way out.
    path.write_text(json.dumps(dict(pid=1, host="elsewhere")))
    with pytest.raises(RunDirError, match=rf"if it no longer runs, delete {path}"), \
            rundir.lock(tmp_path):
        pass


@pytest.mark.parametrize("entry", ["fit", "navigation"])
def test_fit_and_the_rl_runner_take_the_same_lock(tmp_path, entry):
    from test_rl import nav_config

    if entry == "fit":
        run_dir = tmp_path / "fit"
        keras.utils.set_random_seed(0)
        learner = MetaLearner(models.fc_net((1,), (8,), 1, norm="None"), losses.mse)
        start = lambda: learner.fit(SinusoidTasks(5, 5), 2, meta_batch_size=2,  # noqa: E731
                                    run_dir=str(run_dir), log_interval=None, log=quiet)
    else:
        config = nav_config(tmp_path)
        run_dir = tmp_path / config.exp_string()
        start = lambda: runner.run(config, log=quiet)  # noqa: E731
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(run_dir)
        (run_dir / rundir.LOCK_NAME).write_text(lock_of(sleeper.pid))
        with pytest.raises(RunDirError, match=f"{run_dir} is in use by process {sleeper.pid}"):
            start()
        assert os.listdir(run_dir) == [rundir.LOCK_NAME]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_lock_is_taken_once_and_a_second_one_is_refused_in_this_process_too(tmp_path):
    """No reentrancy: inside a run (the lock held), another lock on the same directory, a
    `fit` into it, or another thread's lock is refused, naming this process; the lock file
    is this process's own and goes when the run ends."""
    import threading

    run_dir = tmp_path / "run"
    with rundir.lock(str(run_dir), quiet):
        with pytest.raises(RunDirError, match=rf"in use by process {os.getpid()} .*this "
                                              r"process already trains there"):
            with rundir.lock(str(run_dir), quiet):
                pass
        learner = MetaLearner(models.fc_net((1,), (4,), 1, norm="None"), losses.mse)
        with pytest.raises(RunDirError, match="this process already trains there"):
            learner.fit(SinusoidTasks(5, 5), 1, meta_batch_size=2, run_dir=str(run_dir),
                        log_interval=None, log=quiet)
        refused = []

        def other_thread():
            try:
                with rundir.lock(str(run_dir), quiet):
                    pass
            except RunDirError as err:
                refused.append(str(err))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(refused) == 1
        assert json.loads((run_dir / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
        assert os.listdir(run_dir) == [rundir.LOCK_NAME]  # the refused fit wrote nothing
    assert not run_dir.exists()  # created for the lock, removed with it


def test_a_command_line_run_takes_its_lock_once(tmp_path, fast_intervals, monkeypatch):
    taken = []
    lock = rundir.lock

    def counting(run_dir, log=print):
        taken.append(os.path.realpath(run_dir))
        return lock(run_dir, log)

    monkeypatch.setattr(rundir, "lock", counting)
    _, run_dir = trained(tmp_path, 20)
    assert taken == [os.path.realpath(run_dir)]
    assert (run_dir / "model-20.index").exists() and not (run_dir / rundir.LOCK_NAME).exists()


def test_a_checkpoint_can_be_evaluated_while_training_holds_the_lock(tmp_path,
                                                                    fast_intervals):
    config, run_dir = trained(tmp_path, 20)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / rundir.LOCK_NAME).write_text(lock_of(sleeper.pid))
        logs = []
        runner.run(dataclasses.replace(config, train=False, num_test_tasks=2),
                   log=logs.append)
        assert f"Restored {run_dir}/model-20 (iteration 20)" in logs
        assert json.loads((run_dir / rundir.LOCK_NAME).read_text())["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_evaluations_write_their_result_sets_one_after_the_other(tmp_path):
    """Two evaluations of one run directory (another --test_iter, or the one after training)
    rename the same files: one whose set is being written holds results.lock, and the other
    waits for it (it renamed its files among the first's: a csv of one, an npy of the
    other); one that holds it far too long is named."""
    path = tmp_path / rundir.RESULTS_LOCK_NAME
    csv_file = tmp_path / "test_ubs10_stepsize0.01.csv"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(lock_of(sleeper.pid))  # the other evaluation, writing its set
        writer = threading.Thread(target=evaluate_lib.write_results,
                                  args=(str(tmp_path), np.ones((2, 3)), 10, 0.01))
        writer.start()
        time.sleep(0.5)
        assert writer.is_alive() and not csv_file.exists()  # waits
        path.unlink()  # the other's set is written
        writer.join(10)
        assert csv_file.exists() and not path.exists()
        path.write_text(lock_of(sleeper.pid))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(rundir, "RESULTS_WAIT_S", 0.3)
            with pytest.raises(RunDirError, match=f"{path} has been held by process "
                               f"{sleeper.pid} .* for over 0 s; wait for it"):
                evaluate_lib.write_results(str(tmp_path), np.ones((2, 3)), 10, 0.01)
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------------- 4. the log
def test_the_log_holds_each_iteration_once_after_a_fallback(tmp_path, fast_intervals):
    config, run_dir = trained(tmp_path, 60)
    data = run_dir / "model-60.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:50])  # a crash while model-60 was written
    logs = []
    runner.run(dataclasses.replace(config, metatrain_iterations=80), log=logs.append)
    assert f"Resumed from {run_dir}/model-40 at iteration 40" in logs
    assert "Kept the unreadable model-60 as corrupt-model-60." in logs
    assert (run_dir / "corrupt-model-60.index").exists()
    assert log_iterations(run_dir) == list(range(10, 81, 10))
    assert sorted(p for p in os.listdir(run_dir) if p.startswith("model-")
                  and p.endswith(".index")) == [f"model-{i}.index" for i in (20, 40, 60, 80)]


@pytest.mark.parametrize("content, problem", [
    (b"\x00\xff\xfe garbage", "not a CSV text file"),
    (b"iteration;phase;pre\n10;metatrain;3.1\n20;metatrain;2.9\n",  # a spreadsheet's save
     "its first line has no column 'iteration' (it reads iteration;phase;pre)"),
    (None, "it cannot be opened (Is a directory)"),
], ids=["binary", "semicolons", "folder"])
def test_a_log_that_is_not_the_runs_is_one_line_and_kept(tmp_path, fast_intervals, content,
                                                         problem):
    # It used to be a traceback (binary, a folder), or rewritten empty: every row lost
    # (semicolons).
    config, run_dir = trained(tmp_path, 20)
    if content is None:
        (run_dir / "training_log.csv").unlink()
        (run_dir / "training_log.csv" / "kept").mkdir(parents=True)
    else:
        (run_dir / "training_log.csv").write_bytes(content)
    before = snapshot(run_dir)
    result = cli(*as_flags(config, metatrain_iterations=40))
    assert result.code == 1
    line = one_line_error(result.err)
    assert line.startswith(f"tf-maml: error: {run_dir}/training_log.csv cannot be read as "
                           f"the run's log: {problem}")
    assert "restore it, or move it away to start a new log" in line
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------- 5. full or read-only
@pytest.mark.parametrize("error", ["OSError", "TensorFlow"])
def test_a_full_disk_while_saving_keeps_the_run_and_says_so(tmp_path, fast_intervals,
                                                            monkeypatch, error):
    config, run_dir = trained(tmp_path, 40)
    kept = snapshot(run_dir)
    write = tf.train.Checkpoint.write

    def full_disk(self, prefix, *args, **kwargs):
        if not prefix.endswith("model-60"):
            return write(self, prefix, *args, **kwargs)
        os.makedirs(prefix + "_temp")  # as TF's sharded save leaves it
        (run_dir / "model-60_temp" / "part-00000").write_bytes(b"half")
        if error == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{prefix}_temp/part-00000; No space left on device [Op:SaveV2]")

    monkeypatch.setattr(tf.train.Checkpoint, "write", full_disk)
    result = cli(*as_flags(config, metatrain_iterations=80))
    assert result.code == 1
    line = one_line_error(result.err)
    assert line == (f"tf-maml: error: could not save the checkpoint model-60 in {run_dir}: No "
                    "space left on device. Nothing was lost: the latest checkpoint model-40 "
                    f"is intact; free some space on the disk of {run_dir}, then run the same "
                    "command again.")
    left = sorted(os.listdir(run_dir))
    assert not any(name.startswith("model-60") for name in left), left  # no temporary
    assert rundir.LOCK_NAME not in left
    assert {k: v for k, v in snapshot(run_dir).items() if k.startswith("model-")} == \
        {k: v for k, v in kept.items() if k.startswith("model-")}
    assert log_iterations(run_dir) == list(range(10, 61, 10))
    monkeypatch.setattr(tf.train.Checkpoint, "write", write)  # space freed: the same command
    os.makedirs(run_dir / "model-9000_temp")  # as a SIGKILL during a save leaves it
    logs = []
    runner.run(dataclasses.replace(config, metatrain_iterations=80), log=logs.append)
    assert "Removed model-9000_temp, left by an interrupted save." in logs
    assert not (run_dir / "model-9000_temp").exists()
    assert f"Resumed from {run_dir}/model-40 at iteration 40" in logs
    assert log_iterations(run_dir) == list(range(10, 81, 10))


def test_another_evaluation_keeps_the_earlier_results_it_replaces(tmp_path, fast_intervals):
    """The original names a result after K and the step size only: evaluating another
    checkpoint (or 10 tasks after 600) replaced the earlier numbers for good. The earlier
    set is now kept whole in earlier_results/; the same numbers again keep nothing more."""
    config, run_dir = trained(tmp_path, 40)
    evaluation = dataclasses.replace(config, train=False, num_test_tasks=4)
    runner.run(dataclasses.replace(evaluation, test_iter=20), log=quiet)  # model-20's results
    earlier = {k: v for k, v in snapshot(run_dir).items() if k.startswith("test_")}
    assert len(earlier) == 4 and not (run_dir / rundir.EARLIER_RESULTS).exists()
    logs = []
    runner.run(evaluation, log=logs.append)  # model-40's: other numbers, same file names
    now = {k: v for k, v in snapshot(run_dir).items() if k.startswith("test_")}
    assert set(now) == set(earlier) and now != earlier
    (kept,) = (run_dir / rundir.EARLIER_RESULTS).iterdir()
    assert snapshot(kept) == earlier
    assert f"The earlier results, with other numbers, are kept in {kept}" in logs
    runner.run(evaluation, log=quiet)  # model-40's again: the same numbers
    assert len(list((run_dir / rundir.EARLIER_RESULTS).iterdir())) == 1
    assert {k: v for k, v in snapshot(run_dir).items() if k.startswith("test_")} == now


def test_a_full_disk_while_writing_results_keeps_the_earlier_set_whole(
        tmp_path, fast_intervals, monkeypatch):
    """The result files (csv, pkl, npy) and test_config.json are one set: a write that fails
    on any of them leaves every one of them as the earlier evaluation wrote it."""
    config, run_dir = trained(tmp_path, 40)
    evaluation = dataclasses.replace(config, train=False, num_test_tasks=4)
    runner.run(dataclasses.replace(evaluation, test_iter=20), log=quiet)  # model-20's results

    def result_files():
        return {k: v for k, v in snapshot(run_dir).items() if k.startswith("test_")}

    earlier = result_files()
    name = "test_ubs5_stepsize0.01"
    assert set(earlier) == {f"{name}.csv", f"{name}.pkl", f"{name}.npy", "test_config.json"}
    real_open = open

    def full_disk_at(failing: int):
        """``open`` on a disk that fills up at the ``failing``-th file written."""
        opened = []

        def full_disk(path, mode="r", *args, **kwargs):
            if "w" in mode or "a" in mode:
                opened.append(path)
                if len(opened) == failing:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, mode, *args, **kwargs)

        return full_disk

    for failing in range(1, 5):  # the first, second, ... file written hits the full disk
        monkeypatch.setattr(atomic, "open", full_disk_at(failing), raising=False)
        result = cli(*as_flags(evaluation))  # model-40
        assert result.code == 1
        assert one_line_error(result.err) == (
            f"tf-maml: error: could not write the evaluation results in {run_dir}: No space "
            f"left on device. Nothing was lost: the checkpoints and the earlier results "
            f"({name}.csv/.pkl/.npy, test_config.json) are intact; free some space on the "
            f"disk of {run_dir}, then run the same command again.")
        assert result_files() == earlier, failing
        assert not [p for p in os.listdir(run_dir) if p.endswith(atomic.TEMP_SUFFIX)]
    monkeypatch.undo()
    result = cli(*as_flags(evaluation))  # space freed: the same command
    assert result.code == 0, result.err
    now = result_files()
    assert all(now[k] != earlier[k] for k in earlier), "a set of model-40's files"
    assert json.loads((run_dir / "test_config.json").read_text())["test_iter"] == -1
    with real_open(run_dir / f"{name}.csv") as f:
        means = np.array(list(csv.reader(f))[1], dtype=float)
    np.testing.assert_allclose(means, np.load(run_dir / f"{name}.npy").mean(0), rtol=1e-6)


def test_a_read_only_run_directory_is_one_line_and_changes_nothing(tmp_path, fast_intervals,
                                                                  monkeypatch):
    config, run_dir = trained(tmp_path, 20)
    before = snapshot(run_dir)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "link", read_only)  # the lock is the first file written
    result = cli(*as_flags(config, metatrain_iterations=40))
    assert result.code == 1
    line = one_line_error(result.err)
    assert line.startswith(f"tf-maml: error: could not write the lock run.lock in {run_dir}: "
                           "Read-only file system. Nothing was lost")
    assert f"make {run_dir} writable, or use another --logdir" in line
    assert snapshot(run_dir) == before


def test_an_evaluation_of_a_read_only_run_directory_stops_before_it_evaluates(
        tmp_path, fast_intervals, monkeypatch):
    """Permissions changed after training (or a read-only mount): the one line comes before
    the evaluation, whose results could not be kept (it came after it: minutes or hours on
    a large test set, lost)."""
    config, run_dir = trained(tmp_path, 20)
    before = snapshot(run_dir)
    real_os_open, real_open = os.open, open

    def refuse(path):
        if str(path).startswith(str(run_dir)):
            raise OSError(errno.EROFS, "Read-only file system")

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def read_only_open(path, mode="r", *args, **kwargs):
        if set(mode) & set("wax+"):
            refuse(path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(atomic, "open", read_only_open, raising=False)
    logs = []
    with pytest.raises(RunDirError, match=f"could not write the evaluation results in "
                       f"{run_dir}: Read-only file system. Nothing was lost: the checkpoints "
                       f"are intact and no result file was written; make {run_dir} writable"):
        runner.run(dataclasses.replace(config, train=False, num_test_tasks=2), log=logs.append)
    assert not [line for line in logs if line.startswith("Evaluating")]
    monkeypatch.undo()
    assert snapshot(run_dir) == before


def test_a_logdir_that_is_a_file_says_to_use_another(tmp_path):
    # The fix used to be "check <run dir>, then run the same command again", which fails again.
    blocker = tmp_path / "logs"
    blocker.write_text("a file")
    config = sine_config(blocker, metatrain_iterations=20)
    result = cli(*as_flags(config))
    assert result.code == 1
    line = one_line_error(result.err)
    assert line.startswith(f"tf-maml: error: could not create the run directory in {blocker}/")
    assert "a file stands where" in line and "use another --logdir" in line
    assert blocker.read_text() == "a file" and os.listdir(tmp_path) == ["logs"]


# ---------------------------------------------------------------------- 6. evaluation
def test_evaluating_a_corrupt_latest_checkpoint_names_the_readable_one(tmp_path, fast_intervals):
    config, run_dir = trained(tmp_path, 60)
    data = run_dir / "model-60.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:50])
    before = snapshot(run_dir)
    result = cli(*as_flags(config, train=False, num_test_tasks=2))
    assert result.code == 1
    line = one_line_error(result.err)
    assert f"checkpoint {run_dir}/model-60 is corrupt or truncated" in line
    assert line.endswith("; --test_iter=40 evaluates the newest readable one (model-40)")
    assert snapshot(run_dir) == before
    result = cli(*as_flags(config, train=False, num_test_tasks=2, test_iter=40))
    assert result.code == 0 and f"Restored {run_dir}/model-40 (iteration 40)" in result.out


def test_the_evaluation_after_training_writes_the_flags_of_its_results(tmp_path,
                                                                      fast_intervals):
    """test_config.json describes the results beside it: after an evaluation of model-20 on
    2 tasks, the evaluation after training replaces the results and the flags (it left the
    earlier evaluation's test_iter=20, num_test_tasks=2 beside its 3 tasks)."""
    config, run_dir = trained(tmp_path, 20)
    earlier = dataclasses.replace(config, train=False, test_iter=20, num_test_tasks=2)
    (run_dir / "test_config.json").write_text(earlier.to_json())
    on = dataclasses.replace(config, test_after_train=True, num_test_tasks=3)
    runner.run(on, log=quiet)  # training complete: the evaluation after it
    assert np.load(run_dir / "test_ubs5_stepsize0.01.npy").shape[0] == 3
    assert Config.from_json((run_dir / "test_config.json").read_text()) == on


def test_evaluating_an_original_checkpoint_creates_the_run_directory(tmp_path):
    """--train=False --init_checkpoint into a --logdir that does not exist yet (the
    documented evaluation of the original authors' checkpoint, on a fresh clone)."""
    prefix = save_tf1_sinusoid(str(tmp_path / "model70000"), hidden=40)
    config = sine_config(tmp_path / "new" / "logs", train=False, init_checkpoint=prefix,
                         num_test_tasks=4)
    result = cli(*as_flags(config))
    assert result.code == 0, result.err
    run_dir = tmp_path / "new" / "logs" / config.exp_string()
    assert Config.from_json((run_dir / "test_config.json").read_text()) == config
    assert np.load(run_dir / "test_ubs5_stepsize0.01.npy").shape == (4, 4)
    assert not [p for p in os.listdir(run_dir) if p.startswith("model-")]


def test_evaluating_with_export_dir_exports_the_checkpoint_evaluated(tmp_path, fast_intervals):
    config, run_dir = trained(tmp_path, 40)
    export_dir = tmp_path / "export"
    result = cli(*as_flags(config, train=False, test_iter=20, num_test_tasks=2,
                           export_dir=str(export_dir)))
    assert result.code == 0, result.err
    assert f"Restored {run_dir}/model-20 (iteration 20)" in result.out
    assert f"Exported model-20 to {export_dir}" in result.out
    exported = keras.models.load_model(export_dir / "model.keras", compile=False)
    held, later = model_weights(run_dir, 20), model_weights(run_dir, 40)
    assert len(exported.trainable_weights) == len(held) == 6
    for weight, value, other in zip(exported.trainable_weights, held, later):
        np.testing.assert_array_equal(weight.numpy(), value)
        assert not np.array_equal(value, other)  # model-40 is another model
    loaded = tf.saved_model.load(str(export_dir))
    assert "adapt_and_predict" in loaded.signatures


# ---------------------------------------------------------------------- the command line
def test_every_config_field_is_the_flag_of_the_same_name():
    from absl import flags

    from tf_maml import main as cli_main
    from tf_maml.config import Config

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tf-maml"])
    assert cli_main.config_from_flags() == Config()
    flags.FLAGS(["tf-maml", "--nan_policy=skip", "--baseline=None", "--meta_lr=0.5"])
    assert cli_main.config_from_flags() == Config(nan_policy="skip", meta_lr=0.5)
    flags.FLAGS.unparse_flags()
