"""Distributed meta-training (tf_maml/distribute.py): a meta-batch split over 2 replicas
gives the single-replica meta-gradient; the CLI on 2 logical CPU devices and a 2-worker
MultiWorkerMirroredStrategy cluster on localhost end with the weights of one process
training on the same tasks; only the chief writes; flag errors name the fix.

The 2-device and 2-worker runs need fresh processes (logical devices and collective ops are
set up before TensorFlow's first op): they start together, in the background, when the
first test that needs them runs, while this process trains the single-device reference.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_maml import distribute, runner
from tf_maml.config import Config, ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HELPER = os.path.join(HERE, "distributed_helper.py")
TIMEOUT = 600  # seconds for the subprocesses (a loaded 2-core machine is slow)
FIRST, TOTAL = 10, 25  # the cluster resumes at FIRST a run that one process started

SINE = dict(datasource="sinusoid", norm="None", update_batch_size=5, update_lr=0.01,
            meta_batch_size=4, num_test_tasks=10, test_num_updates=1, seed=2)
FLAGS = ["--datasource=sinusoid", "--norm=None", "--update_batch_size=5", "--update_lr=0.01",
         "--meta_batch_size=4", "--num_test_tasks=10", "--test_num_updates=1", "--seed=2",
         f"--metatrain_iterations={TOTAL}"]
RUN = Config(**SINE).exp_string()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def variables(learner) -> dict[str, np.ndarray]:
    """θ and Adam's state by position, as tests/distributed_helper.py saves them."""
    out = {f"theta{i}": v.numpy() for i, v in enumerate(learner.model.trainable_variables)}
    out.update({f"opt{i}": np.asarray(v.numpy()) for i, v in
                enumerate(learner.optimizer.variables)})
    return out


def checkpoint(run_dir, iteration) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(os.path.join(run_dir, f"model-{iteration}"))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if n.endswith("VARIABLE_VALUE") and not n.startswith("save_counter")}


def assert_close(got: dict, want: dict, rtol=1e-5, atol=1e-6):
    assert got.keys() == want.keys() and len(want) > 5
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts the 2-device CLI run and the 2-worker cluster, trains the references here,
    waits (with a timeout) and returns what they wrote."""
    root = tmp_path_factory.mktemp("distribute")
    quiet = lambda line: None  # noqa: E731
    # One process trains the first FIRST iterations; the cluster resumes them.
    runner.run(Config(**SINE, logdir=str(root / "cluster"), metatrain_iterations=FIRST,
                      test_after_train=False).validate(), log=quiet)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO,
               TMPDIR=str(root / "scratch"))  # the non-chief's scratch checkpoints go here
    os.makedirs(env["TMPDIR"])
    procs = {"mirrored": subprocess.Popen(
        [sys.executable, HELPER, "mirrored", str(root), *FLAGS, f"--logdir={root / 'two'}",
         "--distribution_strategy=mirrored", "--num_cpu_devices=2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)}
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs[f"worker{index}"] = subprocess.Popen(
            [sys.executable, HELPER, "worker", str(root), *FLAGS, f"--logdir={root / 'cluster'}",
             "--distribution_strategy=multi_worker_mirrored"],
            cwd=REPO, env=dict(env, TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
    # Meanwhile, the reference: one process, one device, the same tasks, uninterrupted.
    reference = runner.run(Config(**SINE, logdir=str(root / "one"),
                                  metatrain_iterations=TOTAL).validate(), log=quiet)
    deadline, outputs = time.time() + TIMEOUT, {}
    for name, proc in procs.items():
        try:
            outputs[name] = proc.communicate(timeout=max(deadline - time.time(), 1))[0]
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            pytest.fail(f"{name} did not finish within {TIMEOUT} s")
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name} failed:\n{outputs[name][-4000:]}"
    return dict(root=root, reference=reference, outputs=outputs,
                mirrored=dict(np.load(root / "mirrored.npz")),
                workers=[dict(np.load(root / f"worker{i}.npz")) for i in range(2)])


# ---------------------------------------------------------------------- 2 replicas, 1 process
CASES = ("maml", "fomaml_metasgd", "reptile", "pretrain", "maml_regularized",
         "maml_dropout", "conv_batch_norm")


@pytest.mark.parametrize("case", CASES)
def test_two_replicas_apply_the_single_replica_meta_gradient(runs, case):
    out = runs["mirrored"]
    assert int(out["replicas"]) == 2
    count = len([k for k in out if k.startswith(f"{case}/single/")])
    assert count >= 4
    largest = max(np.abs(out[f"{case}/single/{i}"]).max() for i in range(count))
    assert largest > 1e-3, "a zero gradient would prove nothing"
    for i in range(count):
        single, applied = out[f"{case}/single/{i}"], out[f"{case}/applied/{i}"]
        # SGD(1.0): the weight change is the all-reduced gradient; float64, so only the
        # order of the additions differs.
        np.testing.assert_allclose(applied, single, rtol=1e-9, atol=1e-12, err_msg=str(i))
        assert float(out[f"{case}/copies_differ/{i}"]) == 0.0  # both replicas updated alike
    for key in [k for k in out if k.startswith(f"{case}/metric_single/")]:
        np.testing.assert_allclose(out[key.replace("metric_single", "metric_dist")], out[key],
                                   rtol=1e-9)


def test_a_nan_in_one_replica_skips_the_step_on_every_replica(runs):
    out = runs["mirrored"]
    assert not bool(out["nan/applied"])
    assert float(out["nan/changed"]) == 0.0
    assert int(out["nan/nonfinite_steps"]) == 1


def test_a_batch_that_does_not_split_evenly_is_refused(runs):
    message = str(runs["mirrored"]["uneven_error"])
    assert "5 tasks do not split evenly over 2 replicas" in message


def test_each_replica_gets_its_own_half_of_each_meta_batch(runs):
    out = runs["mirrored"]
    for i in range(3):
        for j in range(4):
            whole = out[f"pipeline/{i}/{j}/global"]
            halves = out[f"pipeline/{i}/{j}/replica0"], out[f"pipeline/{i}/{j}/replica1"]
            np.testing.assert_array_equal(np.concatenate(halves), whole)
            assert not np.array_equal(halves[0], halves[1])
    # The stream started at meta-batch 7, so its second batch is meta-batch 8, drawn from
    # its own generator.
    np.testing.assert_array_equal(out["pipeline/1/1/global"], out["pipeline/batch8_support_y"])


def test_cli_on_two_cpu_devices_trains_like_one_device(runs):
    assert int(runs["mirrored"]["cli_exit_code"]) == 0
    assert "Distribution: mirrored, 2 replicas, 2 tasks each" in runs["outputs"]["mirrored"]
    one, two = runs["root"] / "one" / RUN, runs["root"] / "two" / RUN
    assert_close(checkpoint(two, TOTAL), checkpoint(one, TOTAL))
    name = "test_ubs5_stepsize0.01.npy"  # evaluated after training, on one device
    np.testing.assert_allclose(np.load(two / name), np.load(one / name), rtol=1e-5)


# ---------------------------------------------------------------------- 2 workers
def test_two_workers_resume_and_end_with_the_weights_of_one_process(runs):
    workers, reference = runs["workers"], variables(runs["reference"]["learner"])
    assert workers[0].keys() == workers[1].keys()
    for name in reference:  # the same all-reduced steps on both workers: bit-identical
        np.testing.assert_array_equal(workers[0][name], workers[1][name], err_msg=name)
    assert_close({k: workers[0][k] for k in reference}, reference)
    for logs in (str(w["logs"]) for w in workers):
        assert "Resumed from" in logs and f"at iteration {FIRST}" in logs
        assert "multi_worker_mirrored, 2 replicas, 2 tasks each" in logs
    chief_run = runs["root"] / "cluster" / RUN
    assert_close(checkpoint(chief_run, TOTAL), checkpoint(runs["root"] / "one" / RUN, TOTAL))


def test_only_the_chief_writes(runs):
    chief_logs, other_logs = (str(w["logs"]) for w in runs["workers"])
    run_dir = runs["root"] / "cluster" / RUN
    assert "Evaluating 10 test tasks" in chief_logs and f"Saved {run_dir}" in chief_logs
    assert "not the chief" in other_logs
    assert "Evaluating" not in other_logs and "Saved" not in other_logs
    with open(run_dir / "training_log.csv") as f:  # one writer: one row per interval
        assert [row["iteration"] for row in csv.DictReader(f)] == [str(FIRST), str(TOTAL)]
    events = [p for p in os.listdir(run_dir) if p.startswith("events.out.tfevents")]
    assert len(events) == 2  # the first process's and the chief's
    assert os.listdir(runs["root"] / "scratch") == []  # the non-chief's scratch: removed


# ---------------------------------------------------------------------- errors
def test_a_meta_batch_that_does_not_split_is_a_config_error_naming_the_fix():
    config = Config(distribution_strategy="mirrored", num_cpu_devices=2, meta_batch_size=25)
    # In the library's terms (it also guards MetaLearner.fit); the command line says the flag.
    with pytest.raises(ConfigError, match=r"`meta_batch_size`: 25 tasks do not split evenly "
                                          r"over the 2 replicas.*`meta_batch_size=24` or 26"):
        config.validate()
    with pytest.raises(ConfigError, match=r"`meta_batch_size=4`"):
        distribute.check_meta_batch_size(3, 4, "multi_worker_mirrored")
    distribute.check_meta_batch_size(32, 8)
    from tf_maml.main import to_flags

    with pytest.raises(ConfigError) as info:
        config.validate()
    assert to_flags(str(info.value)).startswith(
        "--meta_batch_size: 25 tasks do not split evenly over the 2 replicas of "
        "--distribution_strategy=mirrored; use a multiple of 2, e.g. --meta_batch_size=24 or 26")


@pytest.mark.parametrize("overrides, match", [
    (dict(distribution_strategy="horovod"), "--distribution_strategy: 'horovod' is not one of"),
    (dict(num_cpu_devices=2), "--num_cpu_devices: .*--distribution_strategy=mirrored"),
    (dict(distribution_strategy="multi_worker_mirrored", num_cpu_devices=2),
     "--num_cpu_devices"),
    (dict(distribution_strategy="mirrored", num_cpu_devices=-1), "--num_cpu_devices: must be"),
])
def test_impossible_distribution_flags_are_rejected(overrides, match):
    with pytest.raises(ConfigError, match=match):
        Config(**overrides).validate()


def test_a_malformed_tf_config_is_a_config_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}}')  # no "task"
    with pytest.raises(ConfigError, match="TF_CONFIG must be JSON like"):
        distribute.make_strategy("multi_worker_mirrored")


def test_num_cpu_devices_after_tensorflow_started_is_a_clear_error():
    tf.constant(1.0) + 1.0  # noqa: B018 (TensorFlow is running from here on)
    have = len(tf.config.list_logical_devices("CPU"))
    with pytest.raises(ConfigError, match=r"--num_cpu_devices=\d+: TensorFlow is already "
                                          r"running .* before its first op"):
        distribute.configure_cpu_devices(have + 1)


def test_a_learner_under_a_strategy_needs_its_model_built_under_it():
    import keras

    from tf_maml import losses
    from tf_maml.api import MetaLearner
    from tf_maml.models import fc_net

    model = fc_net((1,), (4,), 1, norm="None")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope(), pytest.raises(ValueError, match="build the model under the same"):
        MetaLearner(model, losses.mse)
    optimizer = keras.optimizers.Adam()
    with strategy.scope(), pytest.raises(ValueError, match="meta_optimizer was created outside"):
        MetaLearner(fc_net((1,), (4,), 1, norm="None"), losses.mse, meta_optimizer=optimizer)
