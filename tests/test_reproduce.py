"""tf-maml-reproduce and the model zoo: planning, budget, publishing into the zoo, resuming
and re-evaluating from it on a "fresh clone", export, and the report's numbers.

The end-to-end tests train tiny sinusoid runs through the real CLI (its children are
processes; the command itself runs in this process, as its console entry would) and
check the report against the per-task matrices the evaluation wrote, recomputed here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from tf_maml import report, reproduce, reproduce_run, training_log, zoo
from tf_maml.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(REPO, "flags")
MAML_DIR = "cls_5.mbs_5.ubs_10.numstep1.updatelr0.01nonorm"
PRE_DIR = MAML_DIR + ".pretrained"


def _flags(tmp_path, name, iterations, pretrained=False, tasks=20, meta_batch_size=5):
    lines = ["--datasource=sinusoid", "--logdir=logs/sine/",
             f"--meta_batch_size={meta_batch_size}", "--norm=None",
             "--update_batch_size=10", "--update_lr=0.01", f"--num_test_tasks={tasks}"]
    lines += ([f"--pretrain_iterations={iterations}", "--metatrain_iterations=0"]
              if pretrained else [f"--metatrain_iterations={iterations}"])
    path = tmp_path / "flags" / f"{name}.flags"
    path.parent.mkdir(exist_ok=True)
    path.write_text("# test flagfile\n" + "\n".join(lines) + "\n")
    return path


def _table(tmp_path):
    """The two sinusoid rows of the repository's table, for flagfiles in tmp_path/flags."""
    (tmp_path / "flags").mkdir(exist_ok=True)
    with open(os.path.join(FLAGS_DIR, "experiments.json")) as f:
        rows = [r for r in json.load(f)["experiments"]
                if r["name"] in ("sinusoid_maml_k10", "sinusoid_pretrained_k10")]
    (tmp_path / "flags" / "experiments.json").write_text(json.dumps({"experiments": rows}))


@pytest.fixture
def cli(monkeypatch, capsys):
    """tf-maml-reproduce's console entry (``reproduce.run``: absl's flag parsing, exit codes,
    one-line errors) in this process, in ``cwd``: ``(args, cwd) -> (returncode, stdout,
    stderr)``. Its training and evaluation children are processes, as always; only the
    parent's own TensorFlow start-up is saved."""
    monkeypatch.setattr(reproduce.signal, "signal", lambda *a: None)  # keep pytest's handler
    monkeypatch.setenv("PYTHONPATH", REPO)  # the children's, as the console script's

    def run(args, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            reproduce.run(["tf-maml-reproduce", *args])
            code = 0
        except SystemExit as exit_:
            code = 0 if exit_.code is None else exit_.code
        out, err = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def _common(tmp_path, logs="logs", zoo_dir="zoo", output="RESULTS.md"):
    return [f"--flags_dir={tmp_path / 'flags'}", f"--logdir_root={tmp_path / logs}",
            f"--zoo_dir={tmp_path / zoo_dir}", f"--output={tmp_path / output}",
            f"--figures_dir={tmp_path / 'fig'}", "--eval_reserve_minutes=0"]


def test_every_paper_flagfile_plans_to_the_directory_its_training_writes():
    """Every row's training and evaluation flagfiles agree on the run directory (otherwise
    the 5-shot row would evaluate a run that does not exist), and rows that share a run
    share its zoo folder."""
    table = reproduce.load_experiments(FLAGS_DIR)
    plans = [reproduce.plan(e, "/tmp/x", {"omniglot": "/d", "miniimagenet": "/d"}, None,
                            FLAGS_DIR, "/z") for e in table]
    assert len(plans) == len(table) >= 24
    by_name = {p.experiment.name: p for p in plans}
    one, five = by_name["omniglot5_1shot"], by_name["omniglot5_5shot_from_1shot"]
    assert five.run_dir == one.run_dir and five.zoo_dir == one.zoo_dir
    assert one.run_dir.endswith("omniglot5way/cls_5.mbs_32.ubs_1.numstep1.updatelr0.4batchnorm")
    assert five.result_name == "test_ubs5_stepsize0.4"
    trained5 = by_name["omniglot5_5shot"]
    assert trained5.train_config.update_batch_size == 5 and trained5.run_dir != one.run_dir
    seed1 = by_name["omniglot5_nonconv_1shot_seed1"]
    assert seed1.train_config.seed == 1 and seed1.eval_config.seed == 1
    assert seed1.run_dir != by_name["omniglot5_nonconv_1shot"].run_dir
    assert by_name["miniimagenet_1shot"].target == 60000
    assert by_name["sinusoid_pretrained_k5"].target == 70000
    assert by_name["miniimagenet_original_checkpoint"].train_cmd is None
    dirs = {}
    for p in plans:
        # The image rows evaluate on the test split (sinusoid and RL tasks have no splits).
        assert p.eval_config.test_set or p.experiment.kind != "accuracy", p.experiment.name
        if p.train_cmd:  # one zoo folder per training run, and the other way round
            assert dirs.setdefault(p.zoo_dir, p.run_dir) == p.run_dir, p.experiment.name


def test_config_for_reads_flagfiles_as_the_cli_does(tmp_path):
    path = _flags(tmp_path, "x", 7, pretrained=True)
    config = reproduce.config_for(str(path), {"logdir": "/r/"})
    assert config == Config(datasource="sinusoid", logdir="/r/", meta_batch_size=5,
                            norm="None", update_batch_size=10, update_lr=0.01,
                            num_test_tasks=20, pretrain_iterations=7, metatrain_iterations=0)
    bad = tmp_path / "bad.flags"
    bad.write_text("--no_such_flag=3\n")
    with pytest.raises(reproduce.ReproduceError, match="no_such_flag"):
        reproduce.config_for(str(bad))
    with pytest.raises(reproduce.ReproduceError, match="not found"):
        reproduce.config_for(str(tmp_path / "missing.flags"))
    # Saved as "UTF-8 with BOM": its first line was left over by the parser and ignored, so
    # the row was planned without its first flag (an Omniglot flagfile's --datasource).
    bom = tmp_path / "bom.flags"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().split(b"\n", 1)[1])
    with pytest.raises(reproduce.ReproduceError, match=r"bom\.flags: .*byte-order mark"):
        reproduce.config_for(str(bom))


def test_selection():
    table = reproduce.load_experiments(FLAGS_DIR)
    assert [e.name for e in reproduce.select("sinusoid_maml_k10,omniglot5_1shot", table)] == [
        "sinusoid_maml_k10", "omniglot5_1shot"]
    assert {e.group for e in reproduce.select("miniimagenet", table)} == {"miniimagenet"}
    assert len(reproduce.select("all", table)) == len(table)
    with pytest.raises(reproduce.ReproduceError, match="unknown experiment 'omniglot6'"):
        reproduce.select("omniglot6", table)
    # A misspelt row is named with the rows it is closest to, ahead of the whole list of 36.
    with pytest.raises(reproduce.ReproduceError, match=r"^unknown experiment 'sinusiod_maml_k1"
                                                       r"0' \(did you mean sinusoid_maml_k10"):
        reproduce.select("sinusiod_maml_k10", table)
    # Was the whole list alone, for a name in capitals; and for names separated by spaces or
    # semicolons (in a flagfile, or quoted), each of them a row.
    with pytest.raises(reproduce.ReproduceError, match=r"^unknown experiment 'SINUSOID' \(did "
                                                       r"you mean sinusoid\?\)"):
        reproduce.select("SINUSOID", table)
    for spec in ("sinusoid_maml_k10 omniglot", "sinusoid_maml_k10; omniglot"):
        with pytest.raises(reproduce.ReproduceError, match=rf"^--experiments={spec}: separate "
                           r"the names with commas, --experiments=sinusoid_maml_k10,omniglot$"):
            reproduce.select(spec, table)


@pytest.mark.parametrize("row, problem", [
    ({"name": "mine", "group": "sinusoid", "train": "sinusoid_maml_k5"},
     "row 2 ('mine') lacks 'label', 'zoo'"),
    ({"name": "mine", "group": "sinusoid", "label": "K=5", "zoo": "mine", "tarin": "x"},
     "row 2 ('mine') has the unknown key 'tarin' (did you mean train?)"),
    ({"name": "mine", "group": "sinusoid", "label": "K=5", "zoo": "mine"},
     "row 2 ('mine') has no flagfile: give 'train' and/or 'eval'"),
    ("sinusoid_maml_k5", "row 2 is not a JSON object"),
], ids=["missing-keys", "misspelt-key", "no-flagfile", "not-an-object"])
def test_an_edited_table_row_is_named_in_one_line(tmp_path, row, problem):
    # A row added by hand without 'label' or 'zoo' was a KeyError traceback; a misspelt key
    # was ignored ('tarin': a row that evaluates "None.flags").
    _table(tmp_path)
    path = tmp_path / "flags" / "experiments.json"
    table = json.loads(path.read_text())
    table["experiments"] = table["experiments"][:1] + [row]
    path.write_text(json.dumps(table))
    with pytest.raises(reproduce.ReproduceError) as err:
        reproduce.load_experiments(str(tmp_path / "flags"))
    assert str(err.value).startswith(f"{path}: {problem}")
    assert "\n" not in str(err.value)


def test_a_table_that_is_no_json_object_is_named_in_one_line(tmp_path):
    # A list (the rows alone, without {"experiments": ...}) was a TypeError traceback.
    (tmp_path / "experiments.json").write_text('[{"name": "mine"}]')
    with pytest.raises(reproduce.ReproduceError, match=rf"^{re.escape(str(tmp_path))}/"
                       r"experiments\.json is not an experiment table \(list indices must be "):
        reproduce.load_experiments(str(tmp_path))


def test_wall_time_speed_and_curve_from_the_training_log(tmp_path):
    (tmp_path / "training_log.csv").write_text(
        "iteration,phase,pre,post,val_pre,val_post,seconds\n"
        "100,metatrain,1,2,,,10.0\n200,metatrain,1,2,,,20.5\n"   # session 1: 20.5 s
        "200,metatrain,1,2,,,3.0\n300,metatrain,1,2,,,7.25\n"    # session 2 ...
        "300,val,,,0.2,0.9,8.0\n900,metatrain,1,2,,,83.0\n")     # ... 83 s, 700 its in 80 s
    rows = training_log.read_training_log(str(tmp_path))
    assert training_log.training_seconds(rows) == pytest.approx(20.5 + 83.0)
    assert training_log.last_speed(rows) == pytest.approx(700 / 80)
    # A run stopped for 500 s (kill -STOP) between two log rows trains at 10 it/s, not at
    # the 900 iterations / 590 s its session spans.
    paused = "".join(f"{i},metatrain,1,2,,,{t}\n" for i, t in
                     zip(range(100, 1001, 100), [10, 20, 30, 530, 540, 550, 560, 570, 580, 590]))
    (tmp_path / "training_log.csv").write_text(
        "iteration,phase,pre,post,val_pre,val_post,seconds\n" + paused)
    paused_rows = training_log.read_training_log(str(tmp_path))
    assert training_log.last_speed(paused_rows) == pytest.approx(10.0)
    val_it, val, tr_it, _ = report.validation_curve(rows)
    assert val_it.tolist() == [300] and val.tolist() == [0.9]
    assert tr_it.tolist() == [100, 200, 200, 300, 900]


def test_a_partial_row_gives_its_recent_validation_and_hours_left(tmp_path):
    """The status of a run stopped at 3000 of 6000 iterations: the mean of its last 10
    validations (the 12 logged are 0.10, 0.15, ..., 0.65: the last 10 average 0.425),
    and 3000 iterations at its 10 it/s."""
    rows = "".join(f"{i},metatrain,1,2,,,{i / 10}\n{i},val,,,0.2,{0.05 + 0.05 * (i // 250)},"
                   f"{i / 10}\n" for i in range(250, 3001, 250))
    (tmp_path / "training_log.csv").write_text(
        "iteration,phase,pre,post,val_pre,val_post,seconds\n" + rows)
    log = training_log.read_training_log(str(tmp_path))
    assert report.recent_validation(log) == (pytest.approx(0.425), 10, 750, 3000)
    experiment = reproduce.Experiment(name="x", group="miniimagenet", label="x",
                                      eval_flags="x.flags", zoo="x", train_flags="x.flags")
    row = {"experiment": experiment, "state": None, "committed": 3000, "target": 6000,
           "speed": training_log.last_speed(log), "validation": report.recent_validation(log),
           "run": {"machines": ["a 2-core CPU"]},
           "stretches": training_log.run_stretches(log, 3000, {"machines": ["a 2-core CPU"]})}
    assert report.status(row) == (
        "**partial**; state at 3000 committed; validation accuracy after adaptation 42.5% "
        "(mean of the 10 validations at 750-3000); 5 min left at 10.00 it/s (a 2-core CPU)")
    # Trained to the end but not evaluated (a baseline whose shared pretraining another row
    # ran): nothing is partial, and nothing is left to train.
    assert report.status(dict(row, committed=6000)) == (
        "trained (6000 committed), not evaluated yet")


def test_the_hours_left_are_at_the_fastest_stretch_on_the_processor_that_trained_last():
    """Two stretches on one processor, the second at half speed (another job beside it): the
    2000 iterations left take 200 s at the first's 10 it/s. A faster processor's stretch
    earlier, or one too short to tell, is no guide."""
    experiment = reproduce.Experiment(name="x", group="miniimagenet", label="x",
                                      eval_flags="x.flags", zoo="x", train_flags="x.flags")
    a = {"processor": "CPU A", "isa": "AVX2", "cores": 2}
    b = {"processor": "CPU B", "isa": "AVX-512", "cores": 2}

    def left(*stretches):
        row = {"experiment": experiment, "state": None, "committed": 4000, "target": 6000,
               "speed": stretches[-1][2], "validation": None,
               "stretches": [dict(machine, first=first, last=last, iterations_per_second=v)
                             for first, last, v, machine in stretches]}
        return report.status(row).split("; ")[-1]

    assert left((0, 3000, 10.0, a), (3000, 4000, 5.0, a)) == (
        "3 min left at 10.00 it/s (CPU A, AVX2, 2 cores)")
    assert left((0, 3000, 40.0, b), (3000, 4000, 5.0, a)) == (
        "7 min left at 5.00 it/s (CPU A, AVX2, 2 cores)")
    assert left((0, 500, 10.0, a), (500, 4000, 5.0, a)) == (
        "7 min left at 5.00 it/s (CPU A, AVX2, 2 cores)")


def test_the_zoo_holds_the_log_up_to_its_checkpoint_and_each_evaluation_once(tmp_path):
    """A run stopped at 3000 whose latest checkpoint is 2500: the rows logged after 2500 (two
    validations among them) are of weights the zoo does not hold, so the published log ends
    at 2500, and the row's recent validation is that of the committed state: the 10 up to
    2500 are 0.10, 0.15, ..., 0.55, mean 0.325 (0.425 with the two later ones). An
    evaluation is published with placeholders for the machine's paths, and only once."""
    import tensorflow as tf

    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo" / "x"
    run_dir.mkdir()
    rows = "".join(f"{i},metatrain,1,2,,,{i / 10}\n{i},val,,,0.2,{0.05 + 0.05 * (i // 250)},"
                   f"{i / 10}\n" for i in range(250, 3001, 250))
    header = "iteration,phase,pre,post,val_pre,val_post,seconds\n"
    (run_dir / "training_log.csv").write_text(header + rows + "3001,metatr")  # a cut line
    (run_dir / "config.json").write_text("{}")
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(run_dir / "model-2500"))
    command = f"tf-maml --logdir={tmp_path}/run --train=False"
    (run_dir / zoo.RUN_STATE_FILE).write_text(json.dumps(
        {"test_ubs1_stepsize0.01|x": {"iteration": 2500, "eval_command": command}}))
    (run_dir / "test_ubs1_stepsize0.01.csv").write_text("0.5\n")
    paths = {str(tmp_path): "$LOGDIR"}
    assert zoo.publish(str(run_dir), str(zoo_dir), False, paths, "m", log=lambda _: None)
    held = zoo.results(str(zoo_dir))["test_ubs1_stepsize0.01|x"]
    assert held["eval_command"] == "tf-maml --logdir=$LOGDIR/run --train=False"
    # Published once: the same run directory again changes nothing.
    assert not zoo.publish(str(run_dir), str(zoo_dir), False, paths, "m", log=lambda _: None)
    published = (zoo_dir / "training_log.csv").read_text()
    assert published.startswith(header) and published.count("\n") == 1 + 2 * 10
    assert published.splitlines()[-1].startswith("2500,val,")
    assert (run_dir / "training_log.csv").read_text().endswith("3001,metatr")  # left as is
    assert report.recent_validation(training_log.read_training_log(str(zoo_dir))) == (
        pytest.approx(0.325), 10, 250, 2500)


def test_a_failed_command_s_last_line_reaches_the_console(tmp_path):
    """A child that fails with tf-maml's one-line error: the console's failure message
    repeats that line (not only "see the log"), and the log keeps everything it printed."""
    error = "tf-maml: error: --data_dir=/nowhere does not exist; prepare the data first"
    child = [sys.executable, "-c",
             f"import sys; print('starting'); print({error!r}); print(); sys.exit(2)"]
    log_path = str(tmp_path / "run" / "reproduce.log")
    shown = []
    code, stopped, last = reproduce_run.stream(child, log_path, None, shown.append)
    assert (code, stopped, last) == (2, False, error)
    message = reproduce_run.failure(code, last, log_path)
    assert message == f"exit code 2: {error}; see {log_path}"
    assert "starting" in open(log_path).read() and error in open(log_path).read()
    assert reproduce_run.failure(1, "", log_path) == f"exit code 1; see {log_path}"


def test_a_row_meets_the_paper_when_the_intervals_overlap():
    assert report.intervals_overlap(97.9, 0.5, (98.7, 0.4))       # 0.8 apart, 0.9 of room
    assert not report.intervals_overlap(97.7, 0.5, (98.7, 0.4))   # 1.0 apart
    assert report.intervals_overlap(48.23, 1.80, (48.70, 1.84))
    assert not report.intervals_overlap(96.12, 0.36, (97.5, 0.6))


def test_a_path_flag_with_an_unexpanded_home_is_refused(tmp_path, cli):
    out = cli(["--experiments=sinusoid_maml_k10", "--logdir_root=~/maml_logs"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("tf-maml-reproduce: error: --logdir_root: '~/maml_logs' "
                                 "starts with ~, which only a shell expands")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flag", ["logdir_root", "zoo_dir"])
def test_an_empty_path_flag_is_refused(tmp_path, cli, flag):
    # Was taken as the current folder (an unset shell variable, --logdir_root=$LOGDIR).
    out = cli(["--experiments=sinusoid_maml_k10", "--train=False", "--evaluate=False",
               "--figures=False", f"--output={tmp_path / 'R.md'}", f"--{flag}="], tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith(f"tf-maml-reproduce: error: --{flag}: is empty (an unset "
                                 f"shell variable, as in --{flag}=$X?): give the path")
    assert os.listdir(tmp_path) == []


def test_missing_data_dir_is_reported_not_fatal(tmp_path, cli):
    table = {e.name: e for e in reproduce.load_experiments(FLAGS_DIR)}
    p = reproduce.plan(table["omniglot5_1shot"], str(tmp_path), {}, None, FLAGS_DIR,
                       str(tmp_path / "zoo"))
    assert "--omniglot_dir" in p.skip_reason
    out = cli(["--experiments=omniglot", "--omniglot_dir=" + str(tmp_path / "nope")], tmp_path)
    assert out.returncode == 2 and "--omniglot_dir" in out.stderr and "not a folder" in out.stderr


@pytest.mark.parametrize("flag", ["budget_minutes", "run_budget_minutes",
                                  "eval_reserve_minutes", "publish_every_minutes"])
def test_a_negative_number_of_minutes_is_refused_before_anything_is_written(tmp_path, cli,
                                                                             flag):
    """Not a budget spent before it began (training skipped, runs reported partial): one line
    naming the flag and its value, and no run, zoo or report written."""
    _table(tmp_path)
    _flags(tmp_path, "sinusoid_maml_k10", 1)
    _flags(tmp_path, "sinusoid_pretrained_k10", 1, pretrained=True)
    r = cli(_common(tmp_path) + [f"--{flag}=-5", "--figures=False"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"tf-maml-reproduce: error: flag --{flag}=-5.0: must be >= 0 "
                               "minutes"), r.stderr
    assert sorted(os.listdir(tmp_path)) == ["flags"]


@pytest.mark.parametrize("flag, message", [
    ("output", "--output={out} is a folder: give the path of the results file, e.g. "
               "--output={out}/RESULTS.md"),
    ("figures_dir", "--figures_dir={out} is a file: give the folder for the PNG figures (or "
                    "--figures=False)"),
])
def test_a_report_path_that_cannot_be_written_is_refused_before_any_run(tmp_path, cli, flag,
                                                                         message):
    """Found only when the report was written, after every row had trained ("could not write
    RESULTS.md ...: Is a directory")."""
    _table(tmp_path)
    _flags(tmp_path, "sinusoid_maml_k10", 1)
    out = tmp_path / "taken"
    out.mkdir() if flag == "output" else out.write_text("")
    r = cli(_common(tmp_path) + [f"--{flag}={out}", "--experiments=sinusoid_maml_k10"],
            tmp_path)
    assert r.returncode == 2
    assert r.stderr == f"tf-maml-reproduce: error: {message.format(out=out)}\n"
    assert sorted(os.listdir(tmp_path)) == ["flags", "taken"]  # no run, zoo or report


@pytest.mark.parametrize("row, trains", [("omniglot20_1shot", True),
                                          ("omniglot20_1shot_mamlpp", False)])
def test_an_ensemble_keeps_its_evaluation_reserve_once_per_member(tmp_path, row, trains):
    """4 minutes before the deadline with 1 minute kept per evaluated model: a one-model row
    still trains; MAML++'s top-5 ensemble adapts 5 models per task and needs 5 minutes, so it
    does not start training."""
    import dataclasses
    import time

    table = {e.name: e for e in reproduce.load_experiments(FLAGS_DIR)}
    p = reproduce.plan(table[row], str(tmp_path), {"omniglot": str(tmp_path)}, None,
                       FLAGS_DIR, str(tmp_path / "zoo"))
    assert p.models_evaluated == (1 if trains else 5)
    p = dataclasses.replace(p, train_cmd=[sys.executable, "-c", "pass"])
    lines = []
    reproduce.execute(p, time.monotonic() + 240, train=True, evaluate=False, reevaluate=False,
                      eval_reserve_s=60, publish=lambda plan: None, log=lines.append)
    assert any("no training budget left" in line for line in lines) != trains, lines
    assert any("] training 0/" in line for line in lines) == trains, lines


def test_placeholders_replace_machine_paths(tmp_path):
    paths = {str(tmp_path / "data" / "omniglot"): "$DATA/omniglot", str(tmp_path): "$LOGDIR"}
    text = f"tf-maml --data_dir={tmp_path}/data/omniglot --logdir={tmp_path}/sine/"
    assert zoo.placeholder(text, paths) == ("tf-maml --data_dir=$DATA/omniglot "
                                           "--logdir=$LOGDIR/sine/")
    config = json.dumps({"data_dir": "/elsewhere/omniglot", "logdir": f"{tmp_path}/sine/",
                         "init_checkpoint": None, "seed": 3})
    clean = json.loads(zoo.sanitized_config(config, paths))
    assert clean == {"data_dir": "$PATH/omniglot", "logdir": "$LOGDIR/sine/",
                     "init_checkpoint": None, "seed": 3}


def _report_row(report_text, label):
    row = next(line for line in report_text.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_zoo_end_to_end_budget_publish_fresh_clone_resume_reevaluate_export(tmp_path, cli,
                                                                          monkeypatch):
    """A complete run and a budget-cut partial one are published to the zoo (the finished
    one as weights only, the partial one as resumable state, no machine paths); the report's
    numbers equal the evaluation's per-task matrices; a "fresh clone" (the zoo copied, no
    run directories) regenerates the report byte for byte, re-evaluates the zoo model to the
    same number, resumes the partial run from its zoo state, and exports a SavedModel."""
    _flags(tmp_path, "sinusoid_maml_k10", 30)
    _flags(tmp_path, "sinusoid_pretrained_k10", 10**7, pretrained=True)
    _table(tmp_path)
    common = _common(tmp_path)
    both = ["--experiments=sinusoid_maml_k10,sinusoid_pretrained_k10"]
    # Budgets of 6 s, which run out while the child starts: it is stopped at its first
    # progress line (iteration 100) and saves. The 20 s a real run needs at least is waived.
    monkeypatch.setattr(reproduce_run, "MIN_TRAIN_SECONDS", 0)
    cut_run = cli(common + ["--experiments=sinusoid_pretrained_k10", "--budget_minutes=0.1"],
                  tmp_path)
    assert cut_run.returncode == 0, cut_run.stdout + cut_run.stderr
    assert "budget reached" in cut_run.stdout
    first = cli(common + ["--experiments=sinusoid_maml_k10"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    maml_run, pre_run = tmp_path / "logs/sine" / MAML_DIR, tmp_path / "logs/sine" / PRE_DIR
    maml_zoo, pre_zoo = tmp_path / "zoo/sinusoid_maml_k10", tmp_path / "zoo/sinusoid_pretrained_k10"
    assert zoo.latest_iteration(str(maml_zoo)) == 30
    cut = zoo.latest_iteration(str(pre_zoo))
    assert 0 < cut < 10**7 and cut == zoo.latest_iteration(str(pre_run))
    # Finished: weights only (smaller than the run's checkpoint, which has Adam's moments);
    # partial: the whole state, byte for byte. Only the latest state is kept.
    size = lambda d, i: os.path.getsize(d / f"model-{i}.data-00000-of-00001")  # noqa: E731
    assert size(maml_zoo, 30) < 0.5 * size(maml_run, 30)
    assert size(pre_zoo, cut) == size(pre_run, cut)
    assert zoo.checkpoint_iterations(str(pre_zoo)) == [cut]
    for path in list(maml_zoo.iterdir()) + list(pre_zoo.iterdir()):
        if path.suffix in (".json", ".csv"):
            assert str(tmp_path) not in path.read_text(), path
    results = json.loads((maml_zoo / "results.json").read_text())
    entry = results["test_ubs10_stepsize0.01|sinusoid_maml_k10"]
    assert "--logdir=$LOGDIR/sine/" in entry["eval_command"] and entry["iteration"] == 30
    assert results["run"]["state"] == "weights"

    report_text = (tmp_path / "RESULTS.md").read_text()
    for run_dir, label, it, status in ((maml_run, "MAML K=10", 30, "complete"),
                                       (pre_run, "pretrained K=10", cut, "partial")):
        values = np.load(run_dir / "test_ubs10_stepsize0.01.npy")
        assert values.shape == (20, 11)
        mean, ci = values.mean(0), 1.96 * values.std(0) / np.sqrt(20)
        cells = _report_row(report_text, label)
        assert cells[1] == str(it) and status in cells[-1]
        for cell, col in zip(cells[4:7], (0, 1, 10)):
            m, c = (float(x) for x in re.findall(r"[-\d.]+", cell))
            assert m == pytest.approx(mean[col], abs=6e-4)
            assert c == pytest.approx(ci[col], abs=6e-4)
    assert "tf-maml --flagfile=" in report_text and "--test_iter=30" in report_text
    assert str(tmp_path) not in report_text

    # A second invocation neither retrains the finished run nor re-evaluates anything.
    # Figures are drawn by `first` and by the clone's `regen` (whose reports are compared,
    # links to the figures included); the other calls would only draw them again, and a
    # figure that fails is logged, never an error (tf_maml.report), so they skip them.
    again = cli(common + both + ["--budget_minutes=0", "--figures=False"], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no training budget left" in again.stdout
    assert again.stdout.count("already evaluated") == 2

    # A fresh clone: the zoo, the table and the flagfiles; no run directory.
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(tmp_path / "zoo", clone / "zoo")
    shutil.copytree(tmp_path / "flags", clone / "flags")
    regen = cli(_common(clone) + ["--train=False", "--evaluate=False"], clone)
    assert regen.returncode == 0, regen.stdout + regen.stderr
    assert (clone / "RESULTS.md").read_text() == (tmp_path / "RESULTS.md").read_text().replace(
        str(tmp_path), str(clone))
    assert not (clone / "logs").exists() or not any((clone / "logs").rglob("model-*"))

    reeval = cli(_common(clone) + ["--experiments=sinusoid_maml_k10", "--train=False",
                                   "--reevaluate", "--figures=False"], clone)
    assert reeval.returncode == 0, reeval.stdout + reeval.stderr
    assert "re-evaluated iteration 30" in reeval.stdout and ", the same)" in reeval.stdout

    resumed = cli(_common(clone) + ["--experiments=sinusoid_pretrained_k10",
                                    "--budget_minutes=0.1", "--evaluate=False",
                                    "--figures=False"], clone)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"restored iteration {cut}" in resumed.stdout, resumed.stdout
    assert re.search(rf"Resum\w+ .*{cut}", (clone / "logs/sine" / PRE_DIR /
                                             "reproduce.log").read_text())
    assert zoo.latest_iteration(str(clone / "zoo/sinusoid_pretrained_k10")) > cut

    exported = cli(_common(clone) + ["--experiments=sinusoid_maml_k10",
                                     f"--export_dir={clone / 'saved'}"], clone)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    import tensorflow as tf

    loaded = tf.saved_model.load(str(clone / "saved"))
    x = np.linspace(-5, 5, 10, dtype=np.float32)[:, None]
    y = np.sin(x).astype(np.float32)
    pred = loaded.adapt_and_predict(x, y, x).numpy()
    assert pred.shape == (10, 1) and np.all(np.isfinite(pred))


def test_the_committed_results_file_is_regenerated_from_the_zoo_byte_for_byte(tmp_path, cli):
    """docs/RESULTS.md comes from committed files only: rewriting it from zoo/ on this
    checkout (no run directories, no data) gives the committed file exactly."""
    out = tmp_path / "docs" / "RESULTS.md"
    result = cli(["--train=False", "--evaluate=False", f"--logdir_root={tmp_path / 'logs'}",
                  f"--output={out}", f"--figures_dir={tmp_path / 'docs' / 'figures'}"],
                 tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(os.path.join(REPO, "docs", "RESULTS.md")) as f:
        committed = f.read()
    assert out.read_text() == committed
    for path in ("/work/", "shared/data", os.path.expanduser("~")):
        assert path not in committed


def test_sigterm_to_reproduce_stops_its_training_child_with_a_checkpoint(tmp_path):
    """Stopping tf-maml-reproduce must not orphan its tf-maml child or lose its work: the
    child gets SIGTERM too, saves a checkpoint, and both exit."""
    import signal
    import threading
    import time

    _flags(tmp_path, "sinusoid_maml_k10", 10**7)
    _table(tmp_path)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tf_maml.reproduce", "--experiments=sinusoid_maml_k10",
         *_common(tmp_path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait for the training loop's first progress line
            if line.strip().startswith("[") and "it/s" in line:
                break
        # Keep reading: a child blocked on a full pipe could not finish its shutdown.
        rest = []
        drain = threading.Thread(target=lambda: rest.append(proc.stdout.read()), daemon=True)
        drain.start()
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        drain.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = tmp_path / "logs" / "sine" / MAML_DIR
    saved = zoo.latest_iteration(str(run_dir))
    assert saved > 0
    # It exits as an interrupted command does, in one line, and the checkpoint its child
    # saved on the way out is in the zoo already.
    assert proc.returncode == 130
    assert "Traceback" not in "".join(rest) and "interrupted" in "".join(rest)
    assert zoo.latest_iteration(str(tmp_path / "zoo" / "sinusoid_maml_k10")) == saved
    log = (run_dir / "reproduce.log").read_text()
    assert "Interrupted at iteration" in log
    deadline = time.monotonic() + 30  # a loaded machine may take a while to reap the child
    while True:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if str(tmp_path) not in ps or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert str(tmp_path) not in ps  # no orphaned training process


def test_an_interrupted_evaluation_is_not_said_to_save_a_checkpoint(tmp_path):
    # Ctrl-C or SIGTERM during a row's evaluation said "stopping the training process (it
    # saves a checkpoint)": nothing of the kind happens, and the results are not half-written.
    def interrupt():
        raise KeyboardInterrupt

    logs = []
    with pytest.raises(KeyboardInterrupt):
        reproduce_run.stream([sys.executable, "-c", "import time; time.sleep(60)"],
                             str(tmp_path / "reproduce.log"), None, logs.append,
                             on_tick=interrupt, evaluation=True)
    assert logs == ["    interrupted: stopping the evaluation (its results are written whole "
                    "or not at all)"]


def test_the_committed_zoo_is_small_and_names_no_machine_path():
    """Under 20 MB in all; its text files name no folder of the machine that trained."""
    root = os.path.join(REPO, "zoo")
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            total += os.path.getsize(path)
            if name.endswith((".json", ".csv", ".md")) or name == "checkpoint":
                with open(path) as f:
                    text = f.read()
                assert not re.search(r"(/work/|/home/|/root/|/tmp/|shared/data)", text), path
    assert total < 20 * 2**20


# ---------------------------------------------------------------------------- RL rows
NAV_DIR = "cls_5.mbs_1.ubs_1.numstep1.updatelr0.1nonorm.horizon5"


def _rl_table(tmp_path):
    """A tiny 2D-navigation MAML row (2 meta-iterations of one task, 5-step episodes, 3
    test tasks, 0 and 1 test steps) and its random baseline, as the repository's RL rows."""
    flags_dir = tmp_path / "flags"
    flags_dir.mkdir(exist_ok=True)
    common = ["--datasource=navigation", "--logdir=logs/navigation/", "--meta_batch_size=1",
              "--update_batch_size=1", "--update_lr=0.1", "--norm=None", "--horizon=5",
              "--num_test_tasks=3", "--test_num_updates=1"]
    (flags_dir / "nav_maml.flags").write_text("\n".join(common + ["--metatrain_iterations=2"]))
    (flags_dir / "nav_random.flags").write_text("\n".join(common + ["--baseline=random"]))
    rows = [{"name": "navigation_maml", "group": "navigation", "label": "MAML",
             "train": "nav_maml", "zoo": "navigation_maml"},
            {"name": "navigation_random", "group": "navigation", "label": "random",
             "train": None, "eval": "nav_random", "zoo": "navigation_random"}]
    (flags_dir / "experiments.json").write_text(json.dumps({"experiments": rows}))


def _in_process(cmd, log_path, deadline, log, on_tick=None, evaluation=False):
    """reproduce_run.stream for a tf-maml child, run in this process (the children's
    TensorFlow start-up is most of a tiny RL row's time): the same flags, the same runner."""
    from absl import flags

    from tf_maml import main as cli_main
    from tf_maml import runner

    assert cmd[:3] == reproduce_run.tf_maml_command(), cmd
    values = flags.FlagValues()
    cli_main.define_flags(values)
    values(["tf-maml", *cmd[3:]])
    lines = []
    runner.run(cli_main.config_from_flags(values).validate(), log=lines.append)
    with open(log_path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return 0, False, lines[-1]


def _weights(prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/")}


def _returns_cells(report_text, label):
    row = next(line for line in report_text.split("### 2D navigation", 1)[1].splitlines()
               if line.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def _by_hand(npy):
    """The report's cells of an evaluation, computed here from its per-task returns."""
    returns = np.load(npy)
    mean, ci = returns.mean(0), 1.96 * returns.std(0) / np.sqrt(returns.shape[0])
    return [f"{m:.2f} ± {c:.2f}" for m, c in zip(mean, ci)]


def test_an_rl_row_is_published_partial_resumed_from_the_zoo_bit_for_bit_and_reported(
        tmp_path, cli, monkeypatch):
    """Figure 5's pipeline on 2D navigation: a run stopped after 1 of its 2 meta-iterations
    is evaluated and published as resumable state (partial, "1 of 2"); a fresh clone resumes
    it from the zoo at iteration 1, and its iteration 2 is the uninterrupted run's bit for
    bit (the sampling noise of iteration i comes from (seed, i), nothing else is carried);
    the random baseline is evaluated untrained, once. The report's returns are the per-task
    returns' mean and 1.96·std/√n, computed here."""
    from tf_maml import runner
    from tf_maml.rl import training as rl_training

    _rl_table(tmp_path)
    monkeypatch.setattr(reproduce_run, "stream", _in_process)
    # The truth: the run uninterrupted, checkpointed after each meta-iteration; then cut
    # back to its state after the first, as a run stopped there leaves it.
    monkeypatch.setattr(rl_training, "SAVE_INTERVAL", 1)
    run_dir = tmp_path / "logs" / "navigation" / NAV_DIR
    whole = reproduce.config_for(str(tmp_path / "flags" / "nav_maml.flags"), {
        "logdir": str(run_dir.parent) + os.sep, "test_after_train": "False"})
    runner.run(whole.validate(), log=lambda _: None)
    truth = _weights(run_dir / "model-2")
    for path in run_dir.glob("model-2.*"):
        path.unlink()

    first = cli(_common(tmp_path) + ["--train=False"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    maml_zoo, random_zoo = tmp_path / "zoo/navigation_maml", tmp_path / "zoo/navigation_random"
    results = zoo.results(str(maml_zoo))
    assert results["test_returns|navigation_maml"]["iteration"] == 1
    assert results["run"]["state"] == "full" and zoo.checkpoint_iterations(str(maml_zoo)) == [1]
    assert zoo.checkpoint_iterations(str(random_zoo)) == []
    text = (tmp_path / "RESULTS.md").read_text()
    cells = _returns_cells(text, "MAML")
    assert cells[1] == "1 of 2" and cells[3] == "3" and "**partial**" in cells[-1]
    assert cells[4:6] == _by_hand(maml_zoo / "test_returns.npy")
    cells = _returns_cells(text, "random")
    assert cells[1] == "untrained" and cells[-1] == "complete"
    assert cells[4:6] == _by_hand(random_zoo / "test_returns.npy")

    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(tmp_path / "zoo", clone / "zoo")
    shutil.copytree(tmp_path / "flags", clone / "flags")
    resumed = cli(_common(clone), clone)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "restored iteration 1" in resumed.stdout
    assert "[navigation_random] results of iteration 0 already evaluated" in resumed.stdout
    log = (clone / "logs/navigation" / NAV_DIR / "reproduce.log").read_text()
    assert re.search(r"Resumed from \S+model-1 at iteration 1", log), log
    clone_zoo = clone / "zoo/navigation_maml"
    assert zoo.results(str(clone_zoo))["run"]["state"] == "weights"
    held = _weights(clone_zoo / "model-2")
    assert held.keys() == truth.keys()
    for name, value in truth.items():
        np.testing.assert_array_equal(held[name], value, err_msg=name)
    text = (clone / "RESULTS.md").read_text()
    cells = _returns_cells(text, "MAML")
    assert cells[1] == "2 of 2" and cells[-1] == "complete"
    assert cells[4:6] == _by_hand(clone_zoo / "test_returns.npy")
    assert "![figure5_navigation.png](fig/figure5_navigation.png)" in text
    assert (clone / "fig" / "figure5_navigation.png").stat().st_size > 0
    assert "![training_navigation.png](fig/training_navigation.png)" in text
    assert (clone / "fig" / "training_navigation.png").read_bytes().startswith(b"\x89PNG")


def test_a_locomotion_row_reads_its_returns_records_its_simulator_and_is_checked(tmp_path):
    """The half-cheetah's random row needs no data folder and no checkpoint (an
    --original_checkpoint given for the image rows is not its init); its evaluation's mean
    and 95% half-width per step are read from test_returns.csv, the simulator versions of the
    evaluation's flags go into its record, and once published the zoo's check compares that
    record with the per-task returns (a hand-edited mean is named). The stand-in evaluation
    writes a known matrix; the numbers are worked out here."""
    import dataclasses

    from tf_maml import zoo_check

    table = {e.name: e for e in reproduce.load_experiments(FLAGS_DIR)}
    p = reproduce.plan(table["cheetah_vel_random"], str(tmp_path), {}, str(tmp_path / "ckpt"),
                       FLAGS_DIR, str(tmp_path / "zoo"))
    assert (p.skip_reason, p.train_cmd, p.target, p.result_name) == (None, None, 0,
                                                                     "test_returns")
    assert p.eval_config.init_checkpoint is None and p.eval_config.num_test_tasks == 40
    returns = np.arange(40 * 4, dtype=float).reshape(40, 4) % 7 - 60.0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    np.save(run_dir / "matrix.npy", returns)
    versions = {"mujoco": "4.0.1", "gymnasium": "1.4.0"}
    evaluate = (
        f"import json, numpy as np, os; os.chdir({str(run_dir)!r}); r = np.load('matrix.npy');"
        " np.save('test_returns.npy', r); m, c = r.mean(0), 1.96 * r.std(0) / 40 ** 0.5; "
        "open('test_returns.csv', 'w').write('steps,mean_return,ci95,std,median,num_tasks\\n'"
        " + ''.join(f'{s},{float(m[s])!r},{float(c[s])!r},0,0,40\\n' for s in range(4))); "
        f"json.dump({{'versions': {versions!r}}}, open('test_config.json', 'w'))")
    p = dataclasses.replace(p, run_dir=str(run_dir), eval_cmd=[sys.executable, "-c", evaluate])
    lines = []
    status = reproduce.execute(p, None, train=True, evaluate=True, reevaluate=False,
                               eval_reserve_s=0, publish=lambda plan: None, log=lines.append)
    assert status == {}, lines
    state = json.loads((run_dir / zoo.RUN_STATE_FILE).read_text())
    entry = state["test_returns|cheetah_vel_random"]
    mean = [returns[:, s].mean() for s in range(4)]
    ci = [1.96 * returns[:, s].std() / np.sqrt(40) for s in range(4)]
    assert entry["iteration"] == 0 and entry["versions"] == versions
    np.testing.assert_allclose(entry["means"], mean, rtol=1e-12)
    np.testing.assert_allclose(entry["ci95"], ci, rtol=1e-12)
    assert zoo.publish(str(run_dir), p.zoo_dir, True, {}, "m", log=lambda _: None)
    check = dict(target=0, tasks=40, kind="return")
    assert zoo_check.row_problem(p.zoo_dir, "cheetah_vel_random", "test_returns", **check) is None
    record = json.loads((tmp_path / "zoo/cheetah_vel_random/results.json").read_text())
    record["test_returns|cheetah_vel_random"]["means"][1] += 0.01
    (tmp_path / "zoo/cheetah_vel_random/results.json").write_text(json.dumps(record))
    problem = zoo_check.row_problem(p.zoo_dir, "cheetah_vel_random", "test_returns", **check)
    assert f"mean of cheetah_vel_random at update1, {mean[1] + 0.01:.2f}, is not the " \
           f"{mean[1]:.2f}" in problem
    with pytest.raises(reproduce.ReproduceError, match="reinforcement-learning row"):
        reproduce.export(p, str(tmp_path / "saved"))


def test_a_wall_clock_jump_neither_spends_nor_extends_the_budget(tmp_path, monkeypatch):
    """The budget is kept on the monotonic clock: the wall clock put a day forward (NTP, a
    laptop resumed) does not stop a run at once, as it did (nor would one put back keep it
    running past its budget)."""
    import time

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400)
    child = [sys.executable, "-c", "print('Iteration 1: 0.5, 0.4', flush=True)"]
    code, stopped, _ = reproduce_run.stream(child, str(tmp_path / "reproduce.log"),
                                            time.monotonic() + 60, lambda line: None)
    assert code == 0 and not stopped


def test_a_budget_stops_an_rl_pretraining_once_its_loop_has_started(tmp_path):
    """The TRPO baselines log "Pretrain Iteration i/N: return ..." (no "  [" line): that
    says the loop runs, so the budget's SIGTERM goes at once instead of after the 3 minutes
    a training process is given to start, and the line is shown on the console."""
    import time

    child = [sys.executable, "-c", "import time; print('Pretrain Iteration 1/1000: return "
             "-57.30, KL 0.0090, step 1.000 (13.4s, 4.5 it/min)', flush=True); time.sleep(60)"]
    shown = []
    t0 = time.monotonic()
    code, stopped, _ = reproduce_run.stream(child, str(tmp_path / "reproduce.log"),
                                            time.monotonic() - 1, shown.append)
    assert stopped and code != 0 and time.monotonic() - t0 < 30
    assert any(line.strip().startswith("Pretrain Iteration 1/1000: return") for line in shown)


def test_a_figure_stopped_while_it_is_written_leaves_the_earlier_one_whole(tmp_path,
                                                                          monkeypatch):
    """The report's figures are replaced whole like RESULTS.md: tf-maml-reproduce killed
    while one is written leaves the earlier PNG (it left a truncated one in docs/figures,
    which a commit of the report would take along)."""
    import matplotlib.figure
    import numpy as np

    from tf_maml.rl import figure as rl_figure

    np.save(tmp_path / "test_returns.npy", np.ones((4, 3)))
    path = tmp_path / "figure5.png"
    path.write_bytes(b"the earlier figure")
    real = matplotlib.figure.Figure.savefig

    class Killed(BaseException):
        pass

    def cut_short(self, target, **kwargs):
        (open(target, "wb") if isinstance(target, str) else target).write(b"\x89PNG half")
        raise Killed

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_short)
    with pytest.raises(Killed):
        rl_figure.plot({"MAML": str(tmp_path)}, str(path))
    assert path.read_bytes() == b"the earlier figure"
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real)
    rl_figure.plot({"MAML": str(tmp_path)}, str(path))
    assert path.read_bytes().startswith(b"\x89PNG")
    assert sorted(os.listdir(tmp_path)) == ["figure5.png", "test_returns.npy"]  # no temporary


def test_rl_training_curves_are_the_logged_returns(tmp_path, monkeypatch):
    """The meta-training figure of an RL family draws each run's logged average return per
    meta-iteration: MAML's after its inner step and before it, a pretrained run's once (its
    two columns are equal), in iteration order, a row cut short left out. The values are the
    hand-written log's."""
    import matplotlib.figure

    from tf_maml.rl import figure as rl_figure

    head = "iteration,pretrain,pre_return,post_return,kl,seconds\n"
    maml, pretrained, empty = tmp_path / "maml", tmp_path / "pretrained", tmp_path / "empty"
    for folder in (maml, pretrained, empty):
        folder.mkdir()
    (maml / "training_log.csv").write_text(
        head + "2,0,-50.5,-20.25,0.01,3\n1,0,-70,-60,0.01,1\n3,0,-40\n")
    (pretrained / "training_log.csv").write_text(head + "1,1,-65,-65,0.01,1\n"
                                                 "2,1,-45.5,-45.5,0.01,2\n")
    drawn = {}

    def capture(self, target, **kwargs):
        ax = self.axes[0]
        drawn.update({line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                      for line in ax.get_lines()})
        target.write(b"\x89PNG")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    path = rl_figure.plot_training({"MAML": str(maml), "pretrained": str(pretrained),
                                    "random": str(empty)}, str(tmp_path / "t.png"), "nav")
    assert path == str(tmp_path / "t.png") and (tmp_path / "t.png").read_bytes() == b"\x89PNG"
    assert drawn == {"MAML, after the inner step": ([1, 2], [-60, -20.25]),
                     "MAML, before it": ([1, 2], [-70, -50.5]),
                     "pretrained": ([1, 2], [-65, -45.5])}
    assert rl_figure.plot_training({"random": str(empty)}, str(tmp_path / "u.png"), "") is None
    assert not (tmp_path / "u.png").exists()
