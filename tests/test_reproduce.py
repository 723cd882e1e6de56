"""tf-maml-reproduce: planning, budget, pick-up of finished runs, and the report's numbers.

The end-to-end test trains two tiny sinusoid runs through the real CLI (in subprocesses) and
checks the report against the per-task matrices the evaluation wrote, recomputed here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tf_maml import reproduce
from tf_maml.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(tmp_path, name, iterations, pretrained=False, tasks=20):
    lines = ["--datasource=sinusoid", "--logdir=logs/sine/", "--meta_batch_size=5",
             "--norm=None", "--update_batch_size=10", "--update_lr=0.01",
             f"--num_test_tasks={tasks}"]
    lines += ([f"--pretrain_iterations={iterations}", "--metatrain_iterations=0"]
              if pretrained else [f"--metatrain_iterations={iterations}"])
    path = tmp_path / "flags" / f"{name}.flags"
    path.parent.mkdir(exist_ok=True)
    path.write_text("# test flagfile\n" + "\n".join(lines) + "\n")
    return path


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "tf_maml.reproduce", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def test_every_paper_flagfile_plans_to_the_directory_its_training_writes():
    """Every experiment's training and evaluation flagfiles agree on the run directory
    (otherwise the 5-shot row would evaluate a run that does not exist)."""
    plans = [reproduce.plan(e, "/tmp/x", {"omniglot": "/d", "miniimagenet": "/d"}, None,
                            os.path.join(REPO, "flags")) for e in reproduce.EXPERIMENTS]
    assert len(plans) == len(reproduce.EXPERIMENTS) >= 20
    by_name = {p.experiment.name: p for p in plans}
    assert by_name["omniglot5_5shot"].run_dir == by_name["omniglot5_1shot"].run_dir
    assert by_name["omniglot5_1shot"].run_dir.endswith(
        "omniglot5way/cls_5.mbs_32.ubs_1.numstep1.updatelr0.4batchnorm")
    assert by_name["omniglot5_5shot"].result_name == "test_ubs5_stepsize0.4"
    assert by_name["miniimagenet_1shot"].target == 60000
    assert by_name["sinusoid_pretrained_k5"].target == 70000
    assert by_name["miniimagenet_original_checkpoint"].train_cmd is None
    for p in plans:
        assert p.eval_config.test_set or p.experiment.group == "sinusoid", p.experiment.name


def test_config_for_reads_flagfiles_like_absl(tmp_path):
    path = _flags(tmp_path, "x", 7, pretrained=True)
    config = reproduce.config_for(str(path), {"logdir": "/r/"})
    assert config == Config(datasource="sinusoid", logdir="/r/", meta_batch_size=5,
                            norm="None", update_batch_size=10, update_lr=0.01,
                            num_test_tasks=20, pretrain_iterations=7, metatrain_iterations=0)
    bad = tmp_path / "bad.flags"
    bad.write_text("--train\n")
    with pytest.raises(reproduce.ReproduceError, match="bad.flags:1"):
        reproduce.read_flagfile(str(bad))
    with pytest.raises(reproduce.ReproduceError, match="not found"):
        reproduce.read_flagfile(str(tmp_path / "missing.flags"))


def test_selection():
    assert [e.name for e in reproduce.select("sinusoid_maml_k10,omniglot5_1shot")] == [
        "sinusoid_maml_k10", "omniglot5_1shot"]
    assert {e.group for e in reproduce.select("miniimagenet")} == {"miniimagenet"}
    assert len(reproduce.select("all")) == len(reproduce.EXPERIMENTS)
    with pytest.raises(reproduce.ReproduceError, match="unknown experiment 'omniglot6'"):
        reproduce.select("omniglot6")


def test_wall_time_sums_sessions(tmp_path):
    (tmp_path / "training_log.csv").write_text(
        "iteration,phase,pre,post,val_pre,val_post,seconds\n"
        "100,metatrain,1,2,,,10.0\n200,metatrain,1,2,,,20.5\n"   # session 1: 20.5 s
        "200,metatrain,1,2,,,3.0\n300,metatrain,1,2,,,7.25\n"    # session 2: 7.25 s
        "300,val,,,0.2,0.9,8.0\n")                               # ... 8.0 s
    assert reproduce.training_wall_seconds(str(tmp_path)) == pytest.approx(28.5)
    val_it, val, tr_it, _ = reproduce.validation_curve(str(tmp_path))
    assert val_it.tolist() == [300] and val.tolist() == [0.9] and tr_it.tolist() == [100, 200,
                                                                                     200, 300]


def test_target_met():
    e = reproduce.BY_NAME["omniglot5_1shot"]
    assert reproduce.target_met(e, 97.3, 0.5).startswith("yes")
    assert reproduce.target_met(e, 97.1, 0.5).startswith("no")
    orig = reproduce.BY_NAME["miniimagenet_original_checkpoint"]
    assert reproduce.target_met(orig, 48.23, 1.8).startswith("yes")
    assert reproduce.target_met(orig, 46.5, 1.8).startswith("no")


def test_missing_data_dir_is_reported_not_fatal(tmp_path):
    p = reproduce.plan(reproduce.BY_NAME["omniglot5_1shot"], str(tmp_path), {}, None,
                       os.path.join(REPO, "flags"))
    assert "--omniglot_dir" in p.skip_reason
    out = _run(["--experiments=omniglot", "--omniglot_dir=" + str(tmp_path / "nope")], tmp_path)
    assert out.returncode == 2 and "--omniglot_dir" in out.stderr and "not a folder" in out.stderr


def test_end_to_end_budget_partial_then_pick_up(tmp_path):
    """A complete run and a budget-cut partial one; the report's numbers equal the
    evaluation's per-task matrices; a second invocation neither retrains nor re-evaluates."""
    _flags(tmp_path, "sinusoid_maml_k10", 30)
    _flags(tmp_path, "sinusoid_pretrained_k10", 10**7, pretrained=True)
    common = [f"--flags_dir={tmp_path / 'flags'}", f"--logdir_root={tmp_path / 'logs'}",
              f"--output={tmp_path / 'RESULTS.md'}", f"--figures_dir={tmp_path / 'fig'}",
              "--eval_reserve_minutes=0"]
    cut_run = _run(common + ["--experiments=sinusoid_pretrained_k10", "--budget_minutes=0.4"],
                   tmp_path)
    assert cut_run.returncode == 0, cut_run.stdout + cut_run.stderr
    assert "budget reached" in cut_run.stdout
    first = _run(common + ["--experiments=sinusoid_maml_k10"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    both = ["--experiments=sinusoid_maml_k10,sinusoid_pretrained_k10"]
    report_run = _run(common + both + ["--train=False"], tmp_path)
    assert report_run.returncode == 0, report_run.stdout + report_run.stderr
    assert report_run.stdout.count("already evaluated") == 2
    sine = tmp_path / "logs" / "sine"
    maml_dir = sine / "cls_5.mbs_5.ubs_10.numstep1.updatelr0.01nonorm"
    pre_dir = sine / "cls_5.mbs_5.ubs_10.numstep1.updatelr0.01nonorm.pretrained"
    assert reproduce.latest_iteration(str(maml_dir)) == 30
    cut = reproduce.latest_iteration(str(pre_dir))
    assert 0 < cut < 10**7
    report = (tmp_path / "RESULTS.md").read_text()
    for run_dir, label, it, status in ((maml_dir, "MAML K=10", 30, "complete"),
                                       (pre_dir, "pretrained K=10", cut, "partial")):
        values = np.load(run_dir / "test_ubs10_stepsize0.01.npy")
        assert values.shape == (20, 11)
        mean, ci = values.mean(0), 1.96 * values.std(0) / np.sqrt(20)
        row = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == str(it) and status in cells[-1]
        for cell, col in zip(cells[4:7], (0, 1, 10)):
            m, c = (float(x) for x in re.findall(r"[-\d.]+", cell))
            assert m == pytest.approx(mean[col], abs=6e-4)
            assert c == pytest.approx(ci[col], abs=6e-4)
    assert "tf-maml --flagfile=" in report and "--test_iter=30" in report
    assert (tmp_path / "fig" / "sinusoid_figure3.png").stat().st_size > 1000

    csv_time = (maml_dir / "test_ubs10_stepsize0.01.csv").stat().st_mtime_ns
    again = _run(common + both + ["--budget_minutes=0"], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no training budget left" in again.stdout  # the partial run is not resumed
    assert again.stdout.count("already evaluated") == 2
    assert (maml_dir / "test_ubs10_stepsize0.01.csv").stat().st_mtime_ns == csv_time
    assert reproduce.latest_iteration(str(pre_dir)) == cut


def test_sigterm_to_reproduce_stops_its_training_child_with_a_checkpoint(tmp_path):
    """Stopping tf-maml-reproduce must not orphan its tf-maml child or lose its work: the
    child gets SIGTERM too, saves a checkpoint, and both exit."""
    import signal
    import time

    _flags(tmp_path, "sinusoid_maml_k10", 10**7)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tf_maml.reproduce", "--experiments=sinusoid_maml_k10",
         f"--flags_dir={tmp_path / 'flags'}", f"--logdir_root={tmp_path / 'logs'}",
         f"--output={tmp_path / 'RESULTS.md'}", f"--figures_dir={tmp_path / 'fig'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait for the training loop's first progress line
            if line.strip().startswith("[") and "it/s" in line:
                break
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = tmp_path / "logs" / "sine" / "cls_5.mbs_5.ubs_10.numstep1.updatelr0.01nonorm"
    assert reproduce.latest_iteration(str(run_dir)) > 0
    log = (run_dir / "reproduce.log").read_text()
    assert "Interrupted at iteration" in log
    time.sleep(2)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps  # no orphaned training process
