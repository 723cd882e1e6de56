"""The zoo's integrity: every published number comes from a checkpoint the zoo holds, the
training time leaves pauses out, every training stretch is recorded with its processor, and
the prose that quotes results agrees with docs/RESULTS.md.

Independent truths: hand-made training logs whose training time and speeds are worked out
here by hand; the committed per-task matrices (``.npy``), summarised as the paper does (mean
and 1.96·std/√n over the tasks); the files a zoo folder holds.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
import sys

import numpy as np
import pytest

from tf_maml import report, reproduce, reproduce_run, training_log, zoo
from tf_maml.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(REPO, "flags")
HEADER = "iteration,phase,pre,post,val_pre,val_post,seconds\n"
RESULT = "test_ubs1_stepsize0.01"
QUIET = {"log": lambda _: None}


def _checkpoint(run_dir, iteration):
    import tensorflow as tf

    tf.train.Checkpoint(v=tf.Variable(float(iteration))).write(
        str(run_dir / f"model-{iteration}"))


def _evaluated(run_dir, iteration, key=f"{RESULT}|x"):
    (run_dir / zoo.RUN_STATE_FILE).write_text(json.dumps(
        {key: {"iteration": iteration, "means": [0.5], "ci95": [0.1]}}))
    (run_dir / f"{RESULT}.csv").write_text(f"0.{iteration}\n")


def _remove(run_dir, iteration):
    for path in run_dir.glob(f"model-{iteration}.*"):
        path.unlink()


# ---------------------------------------------------------------------------- checkpoints
def test_the_zoo_keeps_the_checkpoint_of_every_evaluation_beside_the_latest_state(tmp_path):
    """A run evaluated at 2500 then trained on to 3000 (its run directory has dropped 2500,
    as training's max_to_keep does): the zoo keeps model-2500, whose number it publishes,
    beside the resumable model-3000; a fresh run directory restored from it resumes from
    3000 and re-evaluates 2500; once 3000 is evaluated, 2500 stands behind no number and
    goes. Before: publishing 3000 removed 2500, so the zoo published a number of weights it
    no longer held."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "training_log.csv").write_text(HEADER + "2500,metatrain,1,2,,,10\n")
    _checkpoint(run_dir, 2500)
    _evaluated(run_dir, 2500)
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    _checkpoint(run_dir, 3000)
    _remove(run_dir, 2500)
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert zoo.checkpoint_iterations(str(zoo_dir)) == [2500, 3000]
    assert zoo.results(str(zoo_dir))[f"{RESULT}|x"]["iteration"] == 2500
    # TensorFlow's index names the latest state (what resumes), and lists both.
    index = (zoo_dir / "checkpoint").read_text()
    assert 'model_checkpoint_path: "model-3000"' in index and '"model-2500"' in index

    fresh = tmp_path / "fresh"
    assert zoo.restore(str(zoo_dir), str(fresh), **QUIET)
    assert zoo.checkpoint_iterations(str(fresh)) == [2500, 3000]
    assert os.path.basename(Checkpointer(str(fresh), {}).latest) == "model-3000"

    _evaluated(run_dir, 3000)
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert zoo.checkpoint_iterations(str(zoo_dir)) == [3000]


def test_the_fine_tuning_search_so_far_travels_with_the_zoo(tmp_path):
    """A fine-tuning search stopped midway (its record, rundir.SELECTION_NAME, beside the
    checkpoint it measured) is published; a fresh run directory, and one of the same
    checkpoint that lacks the record, get it back, so the search resumes on another machine;
    a run directory behind the zoo never replaces the zoo's record with its own."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "training_log.csv").write_text(HEADER + "60,metatrain,1,2,,,10\n")
    _checkpoint(run_dir, 60)
    name = "finetune_selection_ubs5.json"
    (run_dir / name).write_text('{"accuracy": [[0.5, 1.0, 0.4]]}\n')
    assert zoo.publish(str(run_dir), str(zoo_dir), True, {}, "m", **QUIET)
    assert (zoo_dir / name).read_text() == (run_dir / name).read_text()
    (run_dir / name).write_text('{"accuracy": [[0.5, 1.0, 0.4], [0.5, 0.1, 0.5]]}\n')
    assert zoo.publish(str(run_dir), str(zoo_dir), True, {}, "m", **QUIET)  # progress
    assert (zoo_dir / name).read_text() == (run_dir / name).read_text()
    assert not zoo.publish(str(run_dir), str(zoo_dir), True, {}, "m", **QUIET)  # nothing new
    fresh = tmp_path / "fresh"
    assert zoo.restore(str(zoo_dir), str(fresh), **QUIET)
    assert (fresh / name).read_text() == (zoo_dir / name).read_text()
    (fresh / name).unlink()
    zoo.restore(str(zoo_dir), str(fresh), **QUIET)  # the same checkpoint, the record lost
    assert (fresh / name).read_text() == (zoo_dir / name).read_text()
    behind = tmp_path / "behind"
    behind.mkdir()
    _checkpoint(behind, 30)
    (behind / name).write_text('{"accuracy": []}\n')
    zoo.publish(str(behind), str(zoo_dir), False, {}, "m", **QUIET)
    assert (zoo_dir / name).read_text() == (run_dir / name).read_text()


def test_a_long_evaluation_is_published_while_it_runs(tmp_path):
    """The fine-tuning search runs for hours inside a row's evaluation command: the row's
    publisher is called while that command runs, as while training (it publishes when its
    own clock says), so that a stop keeps the search's progress in the zoo."""
    import types

    run = tmp_path / "run"
    run.mkdir()
    plan = types.SimpleNamespace(
        experiment=types.SimpleNamespace(name="x"), run_dir=str(run), result_name=RESULT,
        train_cmd=None, eval_cmd=[sys.executable, "-c", "import time; time.sleep(2.5)\n"
                                  "raise SystemExit(3)"])
    calls = []
    status = reproduce_run._evaluate(plan, True, False, calls.append, **QUIET)
    assert "eval_error" in status and calls and all(c is plan for c in calls)


def test_a_zoo_path_with_glob_characters_gets_the_checkpoint_and_its_row_checked(tmp_path):
    """A zoo under ``runs[2026]``: the checkpoint's files were listed with a glob of the
    path, which matched none of them, so publishing recorded "now holds iteration 2500" and
    moved no file; and a row whose results.json is lost read as a row not run."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "runs[2026]" / "zoo" / "x"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    _checkpoint(run_dir, 2500)
    _evaluated(run_dir, 2500)
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert sorted(p.name for p in zoo_dir.glob("model-2500.*")) == [
        "model-2500.data-00000-of-00001", "model-2500.index"]
    (zoo_dir / zoo.RESULTS_FILE).unlink()
    from tf_maml import zoo_check

    problem = zoo_check.row_problem(str(zoo_dir), "x", RESULT, target=2500, tasks=1,
                                    kind="accuracy")
    assert problem and problem.startswith(f"{zoo_dir / zoo.RESULTS_FILE} is missing although")


def test_a_zoo_that_lost_an_evaluated_checkpoint_takes_it_back_from_the_run(tmp_path):
    """The zoo holds 3000 and a number of 2500 but not model-2500 (as the headline row was);
    the run directory still has it: publishing brings it into the zoo."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    for iteration in (2500, 3000):
        _checkpoint(run_dir, iteration)
    _evaluated(run_dir, 2500)
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    _remove(zoo_dir, 2500)
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert zoo.checkpoint_iterations(str(zoo_dir)) == [2500, 3000]


def test_an_evaluation_only_row_publishes_its_numbers_without_a_checkpoint(tmp_path):
    """The original authors' checkpoint is evaluated, not trained: its zoo folder holds the
    evaluation and no checkpoint (nor TensorFlow's index of none)."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    _evaluated(run_dir, 0)
    assert zoo.publish(str(run_dir), str(zoo_dir), True, {}, "m", **QUIET)
    assert zoo.results(str(zoo_dir))[f"{RESULT}|x"]["iteration"] == 0
    assert not (zoo_dir / "checkpoint").exists() and zoo.checkpoint_iterations(str(zoo_dir)) == []


def test_an_evaluation_only_row_is_not_evaluated_again_in_a_fresh_run_directory(tmp_path):
    """The zoo's evaluation of the original authors' checkpoint reaches a fresh run
    directory (a clone, a new --logdir_root), so reproduce finds it up to date instead of
    spending 11 minutes and rewriting its date and machine; a run directory's own newer
    result is never overwritten."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    _evaluated(run_dir, 0)
    assert zoo.publish(str(run_dir), str(zoo_dir), True, {}, "m", **QUIET)
    fresh = tmp_path / "fresh"
    assert zoo.restore(str(zoo_dir), str(fresh), **QUIET)
    state = json.loads((fresh / zoo.RUN_STATE_FILE).read_text())
    assert state[f"{RESULT}|x"]["iteration"] == 0
    assert (fresh / f"{RESULT}.csv").read_text() == "0.0\n"
    assert not zoo.restore(str(zoo_dir), str(fresh), **QUIET)  # nothing left to bring
    mine = tmp_path / "mine"
    mine.mkdir()
    _evaluated(mine, 0, key=f"{RESULT}|y")
    (mine / f"{RESULT}.csv").write_text("mine\n")
    assert zoo.restore(str(zoo_dir), str(mine), **QUIET)
    assert (mine / f"{RESULT}.csv").read_text() == "mine\n"
    assert set(json.loads((mine / zoo.RUN_STATE_FILE).read_text())) == {
        f"{RESULT}|x", f"{RESULT}|y"}


def test_reevaluate_evaluates_the_published_checkpoint_not_the_latest_state(tmp_path):
    """--reevaluate checks a published number: with the evaluation of 2500 on record and the
    state at 3000, the evaluation command gets --test_iter=2500 (the stand-in evaluation
    writes the iteration it was given as its number). Before: it evaluated 3000 and the
    comparison was with a number of other weights."""
    table = {e.name: e for e in reproduce.load_experiments(FLAGS_DIR)}
    p = reproduce.plan(table["sinusoid_maml_k10"], str(tmp_path), {}, None, FLAGS_DIR,
                       str(tmp_path / "zoo"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for iteration in (2500, 3000):
        _checkpoint(run_dir, iteration)
    key = f"{p.result_name}|sinusoid_maml_k10"
    (run_dir / zoo.RUN_STATE_FILE).write_text(json.dumps(
        {key: {"iteration": 2500, "means": [2500.0], "ci95": [0.0]}}))
    csv = run_dir / f"{p.result_name}.csv"
    csv.write_text("h\n2500\nh\n0\n")
    evaluate = ("import sys; it = [a.split('=')[1] for a in sys.argv if "
                f"a.startswith('--test_iter=')][0]; open({str(csv)!r}, 'w').write("
                "f'h\\n{it}\\nh\\n0\\n')")
    p = dataclasses.replace(p, run_dir=str(run_dir), eval_cmd=[sys.executable, "-c", evaluate])
    lines = []
    reproduce.execute(p, None, train=False, evaluate=True, reevaluate=True, eval_reserve_s=0,
                      publish=lambda plan: None, log=lines.append)
    state = json.loads((run_dir / zoo.RUN_STATE_FILE).read_text())[key]
    assert state["iteration"] == 2500 and state["means"] == [2500.0], lines
    assert any("re-evaluated iteration 2500" in line and "the same" in line for line in lines)
    # Without --reevaluate, the state not evaluated yet is: 3000.
    reproduce.execute(p, None, train=False, evaluate=True, reevaluate=False, eval_reserve_s=0,
                      publish=lambda plan: None, log=lines.append)
    assert json.loads((run_dir / zoo.RUN_STATE_FILE).read_text())[key]["means"] == [3000.0]


# ---------------------------------------------------------------------------- training time
def _log(tmp_path, text):
    (tmp_path / "training_log.csv").write_text(HEADER + text)
    return training_log.read_training_log(str(tmp_path))


def test_training_time_leaves_pauses_out(tmp_path):
    """Session 1: 100 iterations every 10 s, except one interval of 500 s (a pause: 50 times
    the median), which counts at the median: 10 + 10 + 10 + 10 + 10 = 50 s of training (540
    s elapsed). Session 2 (the clock restarts): 4 s to its first row, then 12 s (a 2 s
    validation included) and 10 s: 26 s. In all 76 s, not the 566 s the clocks show."""
    rows = _log(tmp_path,
                "100,metatrain,1,2,,,10\n200,metatrain,1,2,,,20\n300,metatrain,1,2,,,30\n"
                "400,metatrain,1,2,,,530\n500,metatrain,1,2,,,540\n"
                "500,metatrain,1,2,,,4\n500,val,,,1,2,6\n600,metatrain,1,2,,,16\n"
                "700,metatrain,1,2,,,26\n")
    assert training_log.training_seconds(rows) == pytest.approx(76.0)
    assert training_log.training_seconds([]) is None


# ---------------------------------------------------------------------------- stretches
TWO_SESSIONS = ("100,metatrain,1,2,,,10\n200,metatrain,1,2,,,20\n300,metatrain,1,2,,,30\n"
                "400,metatrain,1,2,,,5\n500,metatrain,1,2,,,10\n600,metatrain,1,2,,,15\n")
AMD = "AMD EPYC (family 26), AVX-512, 2 cores"
INTEL = "Intel(R) Xeon(R) Processor (family 6), AVX-512 + AMX, 2 cores"


def _zoo_with_old_record(tmp_path, machines):
    """A zoo folder as older code wrote it: the first session (0-300 at 10 it/s) and the
    machines that published, no stretch records; its run directory has trained a second
    session (300-600 at 20 it/s) and saved model-650."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    zoo_dir.mkdir(parents=True)
    (zoo_dir / "training_log.csv").write_text(HEADER + TWO_SESSIONS[:72])
    (zoo_dir / "results.json").write_text(json.dumps(
        {"run": {"finished": False, "iteration": 300, "machines": machines, "state": "full"}}))
    _checkpoint(zoo_dir, 300)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "training_log.csv").write_text(HEADER + TWO_SESSIONS)
    _checkpoint(run_dir, 650)
    return run_dir, zoo_dir


def _published_at_2500(tmp_path, config: str = "{}"):
    """A run directory at model-2500 (``config`` its config.json), published into a zoo."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(config)
    (run_dir / "training_log.csv").write_text(HEADER + "2500,metatrain,1,2,,,10\n")
    _checkpoint(run_dir, 2500)
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    return run_dir, zoo_dir


def test_a_publish_killed_after_moving_the_checkpoint_in_is_completed_by_the_next(
        tmp_path, monkeypatch):
    """tf-maml-reproduce killed (SIGKILL, a power cut) once model-3000 was in the zoo but
    before its log and record: the next publish (the rerun) writes them. Before: the zoo
    held 3000 with the record and log of 2500 for good, as nothing was newer to publish."""
    run_dir, zoo_dir = _published_at_2500(tmp_path)
    _checkpoint(run_dir, 3000)
    with open(run_dir / "training_log.csv", "a") as f:
        f.write("3000,metatrain,1,2,,,20\n")

    class Killed(BaseException):
        pass

    def killed(*args):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(zoo, "read_csv_up_to", killed)  # right after the checkpoint went in
        with pytest.raises(Killed):
            zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert zoo.latest_iteration(str(zoo_dir)) == 3000
    assert zoo.results(str(zoo_dir))["run"]["iteration"] == 2500  # what the kill left
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert zoo.results(str(zoo_dir))["run"]["iteration"] == 3000
    assert (zoo_dir / "training_log.csv").read_text().splitlines()[-1].startswith("3000,")
    assert not zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)  # done


def test_a_restore_stopped_at_any_file_is_completed_by_the_rerun(tmp_path, monkeypatch):
    """tf-maml-reproduce stopped (Ctrl-C, a kill) while it seeds a run directory from the
    zoo: the rerun restores the checkpoint with its log and config. Before: a stop after
    the checkpoint's files left the run directory as new as the zoo without them, and the
    rerun restored nothing more."""
    import builtins

    run_dir, zoo_dir = _published_at_2500(tmp_path, '{"seed": 1}')
    real_open = builtins.open
    for stop_at in range(1, 6):
        fresh, written = tmp_path / f"fresh{stop_at}", []

        def stopping(path, mode="r", *args, fresh=fresh, written=written, stop_at=stop_at,
                     **kwargs):
            if "w" in mode and str(path).startswith(str(fresh)):
                written.append(path)
                if len(written) == stop_at:
                    raise KeyboardInterrupt
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", stopping)
        try:
            zoo.restore(str(zoo_dir), str(fresh), **QUIET)
        except KeyboardInterrupt:
            pass
        monkeypatch.undo()
        zoo.restore(str(zoo_dir), str(fresh), **QUIET)
        assert zoo.latest_iteration(str(fresh)) == 2500, stop_at
        assert (fresh / "training_log.csv").read_text().endswith("2500,metatrain,1,2,,,10\n")
        assert (fresh / "config.json").exists(), stop_at


def test_what_a_killed_copy_leaves_is_neither_published_nor_kept_by_the_rerun(tmp_path):
    """tf-maml-reproduce SIGKILLed while it copied a checkpoint shard leaves the shard's
    temporary (``<shard>.<pid>.tmp``). Before: the lister took it for a shard of model-2500,
    so a publish copied the partial file into the zoo, and the rerun of the restore left it
    beside the whole shard for good."""
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    _checkpoint(run_dir, 2500)
    shard = "model-2500.data-00000-of-00001"
    left = f"{shard}.{os.getpid() + 1}.tmp"
    (run_dir / left).write_bytes(b"half")
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert not glob.glob(str(zoo_dir / "*.tmp"))
    fresh = tmp_path / "fresh"  # a restore killed midway, then run again
    fresh.mkdir()
    (fresh / left).write_bytes(b"half")
    os.utime(fresh / left, (1, 1))  # written before the rerun started
    (zoo_dir / f"{RESULT}.npy.{os.getpid() + 1}.tmp").write_bytes(b"half")  # not a result
    assert zoo.restore(str(zoo_dir), str(fresh), **QUIET)
    assert not glob.glob(str(fresh / "*.tmp"))
    assert (fresh / shard).read_bytes() == (run_dir / shard).read_bytes()


def test_a_publish_stopped_while_it_copies_an_evaluation_leaves_the_zoo_s_earlier_one(
        tmp_path, monkeypatch):
    """A stop (Ctrl-C, a kill) while the zoo takes a new evaluation's file: the zoo keeps the
    earlier file whole, as its record still vouches for it, and the rerun publishes the new
    one. Before: the file was copied over the zoo's in place, so the stop left it cut."""
    import builtins

    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    _checkpoint(run_dir, 2500)
    _evaluated(run_dir, 2500)
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    _checkpoint(run_dir, 3000)
    _evaluated(run_dir, 3000)
    real_open = builtins.open

    def stopped(path, mode="r", *args, **kwargs):
        if "w" in mode and os.path.basename(str(path)).startswith(RESULT) \
                and os.path.dirname(str(path)) == str(zoo_dir):
            with real_open(path, mode, *args, **kwargs) as f:
                f.write(b"0." if "b" in mode else "0.")
            raise KeyboardInterrupt
        return real_open(path, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", stopped)
        with pytest.raises(KeyboardInterrupt):
            zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert (zoo_dir / f"{RESULT}.csv").read_text() == "0.2500\n"
    assert not glob.glob(str(zoo_dir / "*.tmp"))
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, "m", **QUIET)
    assert (zoo_dir / f"{RESULT}.csv").read_text() == "0.3000\n"


def test_publish_records_every_training_stretch_with_its_processor(tmp_path):
    """The session trained before stretches were recorded is derived from the log and the
    one machine the zoo recorded; the one just trained is this machine's (an Intel with
    AVX-512 and AMX); the last stretch ends at the checkpoint held."""
    run_dir, zoo_dir = _zoo_with_old_record(tmp_path, [AMD])
    assert zoo.publish(str(run_dir), str(zoo_dir), False, {}, INTEL, **QUIET)
    assert zoo.results(str(zoo_dir))["run"]["stretches"] == [
        {"first": 0, "last": 300, "iterations_per_second": 10.0,
         "processor": "AMD EPYC (family 26)", "isa": "AVX-512", "cores": 2},
        {"first": 300, "last": 650, "iterations_per_second": 20.0,
         "processor": "Intel(R) Xeon(R) Processor (family 6)", "isa": "AVX-512 + AMX",
         "cores": 2}]


def test_a_stretch_whose_processor_was_not_recorded_says_so(tmp_path):
    """Two machines published the run but nothing says which trained which session: the
    report's Machines section says "not recorded" for both rather than guess, and lists
    the stretches with their speeds."""
    _, zoo_dir = _zoo_with_old_record(tmp_path, [AMD, INTEL])
    (zoo_dir / "training_log.csv").write_text(HEADER + TWO_SESSIONS)
    stretches = training_log.run_stretches(
        training_log.read_training_log(str(zoo_dir)), 300, zoo.results(str(zoo_dir))["run"])
    assert [(s["first"], s["last"], s["iterations_per_second"], s["processor"])
            for s in stretches] == [(0, 300, 10.0, None), (300, 600, 20.0, None)]
    experiment = reproduce.Experiment(name="x", group="miniimagenet", label="x",
                                      eval_flags="x.flags", zoo="x", train_flags="x.flags")
    row = report.collect(experiment, str(zoo_dir), 1000, 600)
    text = report.render([row], [], str(tmp_path / "RESULTS.md"))
    machines = text.split("## Machines", 1)[1]
    assert "| x | 0-300 | 10.00 | not recorded |" in machines
    assert "| x | 300-600 | 20.00 | not recorded |" in machines


def test_the_machine_names_amx_beside_avx512(monkeypatch):
    monkeypatch.setattr(reproduce_run.threads, "cpuinfo", lambda: {
        "model name": "Intel(R) Xeon(R) Processor", "cpu family": "6",
        "flags": "fpu avx2 avx512f amx_bf16 amx_tile amx_int8"})
    monkeypatch.setattr(reproduce_run.os, "cpu_count", lambda: 2)
    assert reproduce_run.machine() == INTEL
    assert training_log.machine_fields(INTEL) == {
        "processor": "Intel(R) Xeon(R) Processor (family 6)", "isa": "AVX-512 + AMX",
        "cores": 2}


# ---------------------------------------------------------------------------- the committed zoo
def _results_tables():
    """(group, label, cells) of every table row of docs/RESULTS.md."""
    with open(os.path.join(REPO, "docs", "RESULTS.md")) as f:
        text = f.read()
    families = {title: family for family, title in report.RETURN_TITLES.items()}
    group, header, out = None, None, []
    for line in text.splitlines():
        if line.startswith("## "):
            group = {"Sinusoid": "sinusoid", "Omniglot": "omniglot",
                     "MiniImageNet": "miniimagenet"}.get(line[3:].split()[0])
        elif line.startswith("### ") and line[4:] in families:  # a task family's returns
            group = families[line[4:]]
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = line
        elif group and header.startswith(("| run ", "| experiment ")) and "---" not in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out.append((group, re.sub(r" \[\d+\]$", "", cells[0]), cells[1:]))
    return out


def _interval(values, step, scale, digits):
    n = values.shape[0]
    with np.errstate(all="ignore"):  # the oracle's fine-tuning overflows
        mean, ci = values.mean(0)[step], 1.96 * values.std(0)[step] / np.sqrt(n)
    return f"{scale * mean:.{digits}f} ± {scale * ci:.{digits}f}"


def test_the_committed_zoo_holds_no_half_done_write():
    """A publish killed midway leaves a journal (``.<file>.<pid>.set``) and new files under
    temporary names (``<file>.<pid>.tmp``) beside the old ones. A reader completes such a
    set only when no process of that pid runs, which on another machine may be any
    process: committed, the zoo would hold a mixed set there. The command that publishes
    again completes it before anything is committed."""
    from tf_maml import atomic

    left = sorted(os.path.relpath(os.path.join(folder, name), REPO)
                  for folder, _, names in os.walk(os.path.join(REPO, "zoo")) for name in names
                  if name.endswith((atomic.JOURNAL_SUFFIX, atomic.TEMP_SUFFIX)))
    assert not left, (f"half-done writes in the zoo: {left}; run tf-maml-reproduce "
                      "--train=False --evaluate=False --experiments=<the row> to complete them")


def test_every_number_in_results_comes_from_a_file_and_a_checkpoint_in_the_zoo():
    """Walks docs/RESULTS.md: each row's numbers are those of its evaluation's per-task
    matrix in its zoo folder, and the checkpoint of the iteration it names (and of the
    state a partial row says is committed) is there. A zoo folder's training log ends at
    the latest checkpoint it holds."""
    table = reproduce.load_experiments(FLAGS_DIR)
    by_label = {(e.group, e.label): e for e in table}
    checked = 0
    for group, label, cells in _results_tables():
        e = by_label[(group, label)]
        p = reproduce.plan(e, "/tmp/x", {"omniglot": "/d", "miniimagenet": "/d"}, None,
                           FLAGS_DIR, os.path.join(REPO, "zoo"))
        if group == "sinusoid":  # MSE at 0, 1 and the last step
            iteration, numbers, steps, scale, digits = cells[0], cells[3:6], (0, 1, -1), 1, 3
        elif group in report.RETURN_TITLES:  # average return after 0, 1, 2, 3 steps
            iteration, numbers, steps, scale, digits = cells[0], cells[3:7], range(4), 1, 2
            iteration = iteration.split(" of ")[0]
        else:  # accuracy (%) after the last step
            iteration, numbers, steps, scale, digits = cells[4], cells[1:2], (-1,), 100, 2
        if not numbers[0]:
            continue
        values = np.load(os.path.join(p.zoo_dir, p.result_name + ".npy"))
        assert os.path.exists(os.path.join(p.zoo_dir, p.result_name + ".csv")), label
        for cell, step in zip(numbers, steps):
            if "non-finite" not in cell:
                assert cell == _interval(values, step, scale, digits), (label, cell)
        named = [int(iteration)] if e.train_flags else []
        named += [int(i) for i in re.findall(r"state at (\d+) committed", cells[-1])]
        for i in named:
            assert i in zoo.checkpoint_iterations(p.zoo_dir), (label, i)
        log = training_log.read_training_log(p.zoo_dir)
        if log:
            assert int(log[-1]["iteration"]) <= zoo.latest_iteration(p.zoo_dir), p.zoo_dir
        checked += 1
    assert checked >= 24


# ---------------------------------------------------------------------------- prose
def _prose():
    """README's Results section, docs/reproducing.md and docs/rl.md's results: where results
    are quoted in prose."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read().split("## Results", 1)[1].split("\n## ", 1)[0]
    with open(os.path.join(REPO, "docs", "rl.md")) as f:
        rl = f.read().split("\n## Results", 1)[1].split("\n## ", 1)[0]
    with open(os.path.join(REPO, "docs", "reproducing.md")) as f:
        return {"README.md": readme, "docs/reproducing.md": f.read(), "docs/rl.md": rl}


def _zoo_intervals():
    """Every mean ± half-width a zoo evaluation gives, at every step, as a percentage for
    accuracies (3 decimals for MSE)."""
    out = []
    for path in sorted(glob.glob(os.path.join(REPO, "zoo", "*", "*.npy"))):
        values = np.load(path)
        scale = 1 if "sinusoid" in path or "test_returns" in path else 100  # MSE, return
        n = values.shape[0]
        with np.errstate(all="ignore"):  # the oracle's fine-tuning overflows
            out += list(zip(np.abs(scale * values.mean(0)),  # prose's "−12.39" reads 12.39
                            scale * 1.96 * values.std(0) / np.sqrt(n)))
    return out


def _step_schedule_intervals():
    """Every mean ± half-width of docs/results/navigation's evaluations with α per test step
    (a zoo policy evaluated again with the authors' test schedule, docs/rl.md)."""
    out = []
    for path in sorted(glob.glob(os.path.join(REPO, "docs", "results", "navigation", "*",
                                              "test_returns_steps*.csv"))):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        out += [(abs(float(r["mean_return"])), float(r["ci95"])) for r in rows]
    return out


def test_results_quoted_in_prose_agree_with_results_md_and_the_zoo():
    """Every "m ± c" in README's Results section, docs/reproducing.md and docs/rl.md's
    results is one of RESULTS.md's (ours or the paper's, at the prose's precision) or a step
    of a zoo evaluation (or of a zoo policy evaluated with α per test step); every "N of its
    M iterations" names an iteration RESULTS.md gives, and a "resumable state" there is the
    committed one; every speed, time left and "N h of training" is RESULTS.md's.
    Before: reproducing.md gave the ANIL run "about 3 hours left at 4.18 it/s" (RESULTS.md:
    4.5 h at 2.92 it/s), and README said the headline run stopped at 48761 "with its
    resumable state" (committed at 50668)."""
    with open(os.path.join(REPO, "docs", "RESULTS.md")) as f:
        results = f.read()
    quoted = [(float(m), float(c)) for m, c in re.findall(r"([\d.]+) ± ([\d.]+)", results)]
    quoted += _zoo_intervals() + _step_schedule_intervals()
    iterations = {int(i) for i in re.findall(r"\| (\d{3,6}) \|", results)}
    states = {int(i) for i in re.findall(r"state at (\d+) committed", results)}
    for row in results.splitlines():  # a partial row without "state at" holds what it evaluated
        if "**partial**" in row and "state at" not in row:
            states |= {int(i) for i in re.findall(r"\| (\d{3,6}) \|", row)}
    problems = []
    for name, text in _prose().items():
        flat = " ".join(text.split())
        for m, c in re.findall(r"(\d+\.\d+) ± (\d+\.\d+)", flat):
            digits = len(m.split(".")[1])
            if not any(round(qm, digits) == float(m) and round(qc, len(c.split(".")[1]))
                       == float(c) for qm, qc in quoted):
                problems.append(f"{name}: {m} ± {c}")
        for n in re.findall(r"(\d{3,6}) of (?:its )?\d{4,6} (?:of its )?iterations", flat):
            if int(n) not in iterations | states:
                problems.append(f"{name}: {n} iterations")
        for sentence in re.split(r"(?<=[.;])\s", flat):
            if "resumable state" in sentence:
                for n in re.findall(r"\b(\d{4,6}) of (?:its )?\d{4,6}", sentence):
                    if int(n) not in states:
                        problems.append(f"{name}: resumable state at {n}")
        for claim in re.findall(r"[\d.]+ (?:h|min|hours|minutes) left at [\d.]+ it/s", flat):
            if claim not in results:
                problems.append(f"{name}: {claim}")
        for claim in re.findall(r"left at ([\d.]+) it/s", flat):
            if f"left at {claim} it/s" not in results:
                problems.append(f"{name}: left at {claim} it/s")
        for claim in re.findall(r"([\d.]+ (?:h|min|s)) of training", flat):
            if f"| {claim} |" not in results:  # a training time of RESULTS.md's
                problems.append(f"{name}: {claim} of training")
    assert not problems, problems
