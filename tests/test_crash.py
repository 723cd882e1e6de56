"""SIGKILL at a random moment, then the same command again: training continues from the last
checkpoint (the killed process's lock is stale) and ends with exactly the weights (and Adam
state) of an uninterrupted run, and a log that holds each iteration once. Ctrl-C pressed
several times in a row stops with one line and a checkpoint that reads."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "cls_5.mbs_4.ubs_5.numstep1.updatelr0.01nonorm"


def command(logdir, iterations=3000):
    return [sys.executable, "-m", "tf_maml.main", "--datasource=sinusoid",
            f"--metatrain_iterations={iterations}", "--norm=None", "--update_batch_size=5",
            "--update_lr=0.01", "--meta_batch_size=4", f"--logdir={logdir}",
            "--test_after_train=False", "--log=False", "--deterministic", "--seed=3"]


# The SIGKILL test's command: tf-maml (tf_maml.main, as ``-m`` runs it) with a checkpoint
# every SAVE iterations and a log row every SAVE // 10 (tf_maml.train's intervals; the CLI's
# are 1000 and 100, as tests/test_cli.py's fast_intervals shrinks them in-process). What the
# test proves needs a checkpoint before the kill, log rows after it and a checkpoint after
# it, not 3000 iterations: 3 * SAVE keeps the proportions of the CLI's 3000 in a fifth of
# the iterations.
SAVE = 200
FAST_INTERVALS = ("import runpy, sys; from tf_maml import train; "
                  f"train.SAVE_INTERVAL, train.SUMMARY_INTERVAL = {SAVE}, {SAVE // 10}; "
                  "sys.argv[0] = 'tf-maml'; "
                  "runpy.run_module('tf_maml.main', run_name='__main__')")


def fast_command(logdir):
    return [sys.executable, "-c", FAST_INTERVALS] + command(logdir, 3 * SAVE)[3:]


def state(run_dir, iteration):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(run_dir, f"model-{iteration}"))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if n.endswith("VARIABLE_VALUE") and not n.startswith("save_counter")}


def last_logged(run_dir):
    """The last iteration in the run's training_log.csv (rows are flushed as written)."""
    try:
        with open(run_dir / "training_log.csv") as f:
            rows = [line.split(",")[0] for line in list(f)[1:]]
    except FileNotFoundError:
        return 0
    return max((int(r) for r in rows if r.isdigit()), default=0)


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(fast_command(tmp_path / "a"), cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
    proc = subprocess.Popen(fast_command(tmp_path / "b"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "b" / RUN / f"model-{SAVE}.index"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert first.exists(), "the run never wrote its first checkpoint"
    # Somewhere in the middle of training (or writing): a random moment, cut short once the
    # log passes the second checkpoint's iteration (written as that checkpoint is) so that a
    # fast processor cannot finish the run first.
    kill_at = time.time() + random.uniform(0.0, 1.0)
    while time.time() < kill_at and last_logged(tmp_path / "b" / RUN) < 2 * SAVE:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / RUN / f"model-{3 * SAVE}.index").exists(), "killed too late"
    out = subprocess.run(fast_command(tmp_path / "b"), cwd=REPO, env=env, check=True,
                         capture_output=True, text=True, timeout=600)
    assert "Resumed from" in out.stdout
    with open(tmp_path / "b" / RUN / "training_log.csv") as f:  # each iteration once
        rows = [int(line.split(",")[0]) for line in list(f)[1:]]
    assert rows == list(range(SAVE // 10, 3 * SAVE + 1, SAVE // 10))
    a, b = state(tmp_path / "a" / RUN, 3 * SAVE), state(tmp_path / "b" / RUN, 3 * SAVE)
    assert a.keys() == b.keys() and len(a) > 5
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_ctrl_c_three_times_saves_once_and_ends_in_one_line(tmp_path):
    """An impatient user presses Ctrl-C three times: the run saves the iteration it reached
    (the later presses must not cut that save short) and ends with one line, no traceback."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run_dir = tmp_path / RUN
    proc = subprocess.Popen(command(tmp_path) + ["--metatrain_iterations=1000000",
                                                 "--autotune=False"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while last_logged(run_dir) < 100 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if last_logged(run_dir) < 100:
        proc.kill()
        raise AssertionError("the run never got going: " + proc.communicate()[1][-3000:])
    for _ in range(3):  # as fast as a hand presses: the later ones land in the save
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    said = [line for line in out.splitlines() + err.splitlines() if "nterrupt" in line]
    assert len(said) == 1, said
    iteration = int(said[0].split("Interrupted at iteration ")[1].split(":")[0])
    assert said[0] == (f"Interrupted at iteration {iteration}: saved {run_dir}/model-"
                       f"{iteration}; run the same command again to continue.")
    assert iteration >= last_logged(run_dir) >= 100
    assert sorted(os.listdir(run_dir)) == [  # no half save, no lock left
        "checkpoint", "config.json", f"model-{iteration}.data-00000-of-00001",
        f"model-{iteration}.index", "training_log.csv"]
    assert int(state(run_dir, iteration)["iteration/.ATTRIBUTES/VARIABLE_VALUE"]) == iteration
