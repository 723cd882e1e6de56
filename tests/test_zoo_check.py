"""The zoo is checked before anything is reported from it, restored out of it or exported
from it: a row of docs/RESULTS.md must agree with the per-task matrix it was made from, a
complete row must hold its checkpoint, a corrupt zoo checkpoint is named with the fix (not
restored into a run that then fails), and a failed publish fails the command.

The tests work on copies of committed zoo folders in tmp_path; the committed ``.npy``
(accuracy or MSE of every test task at every step) is the independent truth, summarised here
as the paper does: mean and 1.96·std/√n over the tasks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
from absl import flags as absl_flags
from conftest import refuse_files_below

from tf_maml import reproduce, zoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINE, SINE_RESULT = "sinusoid_maml_k10", "test_ubs10_stepsize0.01"
OMNI, OMNI_ZOO, OMNI_RESULT = "omniglot5_1shot", "omniglot_5way_1shot", "test_ubs1_stepsize0.4"
DATA = "model-70000.data-00000-of-00001"


def _real_rows(tmp_path, names):
    """The repository's rows ``names`` (their flagfiles and a copy of their zoo folders) in
    tmp_path/flags and tmp_path/zoo."""
    flags_dir = tmp_path / "flags"
    flags_dir.mkdir()
    with open(os.path.join(REPO, "flags", "experiments.json")) as f:
        rows = [r for r in json.load(f)["experiments"] if r["name"] in names]
    for row in rows:
        for key in ("train", "eval"):
            if row.get(key):
                shutil.copy(os.path.join(REPO, "flags", row[key] + ".flags"), flags_dir)
        shutil.copytree(os.path.join(REPO, "zoo", row["zoo"]), tmp_path / "zoo" / row["zoo"],
                        dirs_exist_ok=True)
    (flags_dir / "experiments.json").write_text(json.dumps({"experiments": rows}))


def _main(tmp_path, monkeypatch, *args):
    """tf-maml-reproduce in this process, on tmp_path's flags/, zoo/ and logs/."""
    monkeypatch.setattr(reproduce.signal, "signal", lambda *a: None)  # keep pytest's handler
    values = absl_flags.FlagValues()
    reproduce.define_flags(values)
    values(["tf-maml-reproduce", f"--flags_dir={tmp_path / 'flags'}",
            f"--zoo_dir={tmp_path / 'zoo'}", f"--logdir_root={tmp_path / 'logs'}",
            f"--output={tmp_path / 'RESULTS.md'}", f"--figures_dir={tmp_path / 'fig'}",
            "--figures=False", *args])
    return reproduce.main(["tf-maml-reproduce"], values)


def _report(tmp_path, monkeypatch, *args):
    return _main(tmp_path, monkeypatch, "--train=False", "--evaluate=False", *args)


def _truth(zoo_dir, result):
    values = np.load(os.path.join(zoo_dir, result + ".npy"))
    return values.mean(0), 1.96 * values.std(0) / np.sqrt(values.shape[0])


def _edit_results(path, edit):
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_an_untouched_zoo_copy_reports_the_numbers_of_its_per_task_matrices(tmp_path,
                                                                            monkeypatch):
    _real_rows(tmp_path, [SINE, OMNI])
    assert _report(tmp_path, monkeypatch) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    mean, ci = _truth(tmp_path / "zoo" / SINE, SINE_RESULT)
    assert f"| {mean[-1]:.3f} ± {ci[-1]:.3f} | complete |" in text
    mean, ci = _truth(tmp_path / "zoo" / OMNI_ZOO, OMNI_RESULT)
    assert f"| {100 * mean[-1]:.2f} ± {100 * ci[-1]:.2f} |" in text


def _delete(name):
    return lambda folder: os.remove(folder / name)


def _garble(name):
    return lambda folder: (folder / name).write_text('{"run": {"finished": tr')


def _write(name, text):
    return lambda folder: (folder / name).write_text(text)


def _shift(field, column, by):
    def edit(folder):
        _edit_results(folder / "results.json",
                      lambda r: r[f"{SINE_RESULT}|{SINE}"][field].__setitem__(
                          column, r[f"{SINE_RESULT}|{SINE}"][field][column] + by))
    return edit


@pytest.mark.parametrize("damage, named", [
    (_delete("results.json"), "results.json"),
    (_garble("results.json"), "results.json"),
    # JSON, but not a record: each was a traceback (from the report, from the log's stretches)
    (_write("results.json", "[]"), "results.json"),
    (_write("results.json", '{"run": 70000}'), "results.json"),
    (_shift("means", -1, 0.002), "results.json"),   # 0.121 -> 0.123, as printed
    (_shift("ci95", 0, 0.01), "results.json"),      # the 0-step column's interval
    (_shift("means", 5, 0.01), "results.json"),     # a column the table does not show
    (_delete(SINE_RESULT + ".npy"), SINE_RESULT + ".npy"),
    # An emptied matrix was EOFError's traceback; a garbled one, NumPy's advice to load it
    # with allow_pickle=True.
    (_write(SINE_RESULT + ".npy", ""), SINE_RESULT + ".npy"),
    (_write(SINE_RESULT + ".npy", "garbled"), SINE_RESULT + ".npy"),
    (_delete(DATA), DATA),                          # a complete row without its weights
    (_delete("model-70000.index"), "model-70000.index"),
    (_delete("training_log.csv"), "training_log.csv"),  # its training time and machines
    (_delete("config.json"), "config.json"),
    # Was reported "complete", and restored into the run directory, whose resume then failed
    # and sent the user back to the zoo for a good copy.
    (_garble("config.json"), "config.json"),
], ids=["results-deleted", "results-invalid", "results-a-list", "run-a-number", "mean-edited",
        "interval-edited", "unshown-column-edited", "matrix-deleted", "matrix-emptied",
        "matrix-garbled", "weights-deleted",
        "index-deleted", "log-deleted", "config-deleted", "config-garbled"])
def test_a_row_that_disagrees_with_its_files_fails_the_report_naming_the_file(
        tmp_path, monkeypatch, damage, named):
    """Before: the row silently lost its numbers, or published the edited one, or stayed
    "complete" without the model behind it, and the command exited 0."""
    _real_rows(tmp_path, [SINE])
    folder = tmp_path / "zoo" / SINE
    damage(folder)
    with pytest.raises(reproduce.ReproduceError) as err:
        _report(tmp_path, monkeypatch)
    message = str(err.value)
    assert "\n" not in message and "allow_pickle" not in message
    assert os.path.join(str(folder), named) in message
    assert "git checkout" in message
    assert not (tmp_path / "RESULTS.md").exists()  # no report from a zoo that disagrees


def test_a_report_alone_says_what_the_zoo_holds(tmp_path, monkeypatch, capsys):
    # Was "0/70000 iterations on disk (training not requested)" and "nothing to evaluate
    # yet" of a complete zoo row: a report does not restore the zoo into the run directory.
    _real_rows(tmp_path, [SINE])
    assert _report(tmp_path, monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"[{SINE}] 0/70000 iterations on disk (70000 in the zoo)\n" in out
    assert "nothing to evaluate yet" not in out


def test_numbers_are_compared_at_the_precision_the_report_prints(tmp_path, monkeypatch):
    """An accuracy is printed in percent with two decimals: a change of 0.0001 points agrees
    with the matrix, a change of 0.02 points (the printed value moves) does not."""
    _real_rows(tmp_path, [OMNI])
    path = tmp_path / "zoo" / OMNI_ZOO / "results.json"
    key = f"{OMNI_RESULT}|{OMNI}"
    mean, _ = _truth(path.parent, OMNI_RESULT)
    _edit_results(path, lambda r: r[key]["means"].__setitem__(-1, float(mean[-1]) + 1e-6))
    assert _report(tmp_path, monkeypatch) == 0
    _edit_results(path, lambda r: r[key]["means"].__setitem__(-1, float(mean[-1]) + 2e-4))
    with pytest.raises(reproduce.ReproduceError, match=f"{OMNI}.*{OMNI_RESULT}.npy"):
        _report(tmp_path, monkeypatch)


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the tensor's checksum no longer matches
    path.write_bytes(bytes(data))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_a_corrupt_zoo_checkpoint_of_an_unfinished_run_is_named_not_restored(
        tmp_path, monkeypatch, capsys):
    """Before: the corrupt state was copied into the run directory, training failed with
    "move the run directory away", and a fresh directory restored the same state again. Now
    the zoo file is named with its fix, and nothing is copied."""
    from test_reproduce import _flags, _table

    # unfinished: its target is past 70000, of the zoo's flags (25 tasks per meta-batch)
    _flags(tmp_path, SINE, 10**6, tasks=600, meta_batch_size=25)
    _table(tmp_path)
    shutil.copytree(os.path.join(REPO, "zoo", SINE), tmp_path / "zoo" / SINE)
    folder = tmp_path / "zoo" / SINE
    _corrupt(folder / DATA)
    before = _digest(folder)
    code = _main(tmp_path, monkeypatch, f"--experiments={SINE}", "--budget_minutes=1",
                 "--eval_reserve_minutes=0")
    out = capsys.readouterr().out
    assert code != 0
    line = next(x for x in out.splitlines() if str(folder / DATA) in x)
    assert "git checkout" in line and "move the run directory" not in out
    assert _digest(folder) == before  # the zoo is left as it was
    run_dirs = list((tmp_path / "logs").rglob("model-*")) if (tmp_path / "logs").exists() else []
    assert run_dirs == []  # nothing corrupt was seeded into a run directory


def test_export_of_a_corrupt_zoo_checkpoint_names_the_file_and_the_fix(tmp_path, monkeypatch):
    _real_rows(tmp_path, [SINE])
    folder = tmp_path / "zoo" / SINE
    _corrupt(folder / DATA)
    with pytest.raises(reproduce.ReproduceError) as err:
        _main(tmp_path, monkeypatch, f"--experiments={SINE}",
              f"--export_dir={tmp_path / 'saved'}")
    message = str(err.value)
    assert "\n" not in message and str(folder / DATA) in message and "git checkout" in message
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("lost", ["model-70000.index", DATA, "training_log.csv",
                                  "config.json", "config.json:garbled"])
def test_a_zoo_that_lost_its_checkpoint_is_named_not_trained_again_from_the_start(
        tmp_path, monkeypatch, capsys, lost):
    """A zoo folder whose results.json records the run's state at 70000 but lost a file of
    model-70000. Before: its latest state read as none, the row was trained again from
    iteration 0, and each publication of the new run replaced the zoo's training log and
    record (the history of the 70000 iterations) with its own. Without its training log or
    config.json, it was resumed and published without the log's history, or without the
    check of the flags it was trained with. Now the file is named with its fix, before any
    training."""
    from test_reproduce import _flags, _table

    from tf_maml import reproduce_run

    # unfinished: training would resume it, of the zoo's flags (25 tasks per meta-batch)
    _flags(tmp_path, SINE, 10**6, tasks=600, meta_batch_size=25)
    _table(tmp_path)
    shutil.copytree(os.path.join(REPO, "zoo", SINE), tmp_path / "zoo" / SINE)
    folder = tmp_path / "zoo" / SINE
    lost, _, garbled = lost.partition(":")  # garbled: restored, its resume failed on it
    if garbled:
        _garble(lost)(folder)
    else:
        (folder / lost).unlink()
    before = _digest(folder)
    commands = []
    monkeypatch.setattr(reproduce_run, "stream",
                        lambda cmd, *a, **k: commands.append(cmd) or (1, False, ""))
    with pytest.raises(reproduce.ReproduceError):  # the report cannot be made either
        _main(tmp_path, monkeypatch, f"--experiments={SINE}")
    out = capsys.readouterr().out
    assert commands == []  # neither trained nor evaluated
    line = next(x for x in out.splitlines() if str(folder / lost) in x)
    assert ("is not a JSON object" if garbled else "is missing") in line
    assert f"git checkout -- {folder}" in line
    assert _digest(folder) == before


def test_a_zoo_run_of_other_flags_is_named_not_taken_for_the_flagfile_s_run(
        tmp_path, monkeypatch, capsys):
    """The zoo holds the finished sinusoid run of 25 tasks per meta-batch; the row's flagfile
    now says 5, another run directory. Before: the zoo's run was restored into the new
    directory, found finished at 70000, not trained, and its evaluation reported as the new
    flags' number (as the baselines' pretraining did when its minibatch went from 32 to 64).
    Now the row fails in one line naming both runs and the fix, runs nothing and leaves the
    zoo as it was."""
    from test_reproduce import _flags, _table

    from tf_maml import reproduce_run

    _flags(tmp_path, SINE, 70000, tasks=600, meta_batch_size=5)  # the zoo's run has 25
    _table(tmp_path)
    shutil.copytree(os.path.join(REPO, "zoo", SINE), tmp_path / "zoo" / SINE)
    folder = tmp_path / "zoo" / SINE
    before = _digest(folder)
    commands = []
    monkeypatch.setattr(reproduce_run, "stream",
                        lambda cmd, *a, **k: commands.append(cmd) or (1, False, ""))
    assert _main(tmp_path, monkeypatch, f"--experiments={SINE}") == 1
    out = capsys.readouterr().out
    assert commands == []  # neither trained nor evaluated
    line = next(x for x in out.splitlines() if f"{folder} holds the run" in x)
    assert "cls_5.mbs_25.ubs_10" in line and "makes the run cls_5.mbs_5.ubs_10" in line
    assert f"move {folder} away" in line
    assert not os.path.exists(tmp_path / "logs" / "sine" / "cls_5.mbs_5.ubs_10.numstep1."
                              "updatelr0.01nonorm" / "checkpoint")
    assert _digest(folder) == before
    # Nor exported as the row's model (it was: the export read the zoo's checkpoint alone).
    export_dir = tmp_path / "exported"
    with pytest.raises(reproduce.ReproduceError, match=rf"^{re.escape(str(folder))} holds the "
                       r"run cls_5\.mbs_25\..* makes the run cls_5\.mbs_5\."):
        _main(tmp_path, monkeypatch, f"--experiments={SINE}", f"--export_dir={export_dir}")
    assert not export_dir.exists() and _digest(folder) == before


def test_export_of_a_zoo_that_lost_its_checkpoint_names_the_file(tmp_path, monkeypatch):
    # Was "holds no model to export: train sinusoid_maml_k10 first", for a row whose
    # results.json reports it complete.
    _real_rows(tmp_path, [SINE])
    folder = tmp_path / "zoo" / SINE
    (folder / "model-70000.index").unlink()
    with pytest.raises(reproduce.ReproduceError,
                       match=rf"^{re.escape(str(folder / 'model-70000.index'))} is missing but "
                             r".*complete at iteration 70000: restore it from git"):
        _main(tmp_path, monkeypatch, f"--experiments={SINE}",
              f"--export_dir={tmp_path / 'saved'}")
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("target, problem", [
    ("file", "is a file, not a directory"),
    ("folder", "holds files that are not an export's (notes.txt)"),
])
def test_export_into_a_file_or_a_foreign_folder_is_one_line(tmp_path, monkeypatch, target,
                                                            problem):
    # Was a RunDirError traceback: the command caught only its own errors.
    _real_rows(tmp_path, [SINE])
    saved = tmp_path / "saved"
    if target == "file":
        saved.write_text("a file")
    else:
        saved.mkdir()
        (saved / "notes.txt").write_text("mine")
    before = _digest(tmp_path / "saved") if target == "folder" else saved.read_text()
    with pytest.raises(reproduce.ReproduceError,
                       match=rf"^--export_dir {saved} {re.escape(problem)}"):
        _main(tmp_path, monkeypatch, f"--experiments={SINE}", f"--export_dir={saved}")
    assert (_digest(saved) if target == "folder" else saved.read_text()) == before


def test_a_publish_never_replaces_a_zoo_record_it_cannot_read(tmp_path):
    """A garbled results.json was read as empty and replaced by the run's evaluations alone:
    any other row's numbers in the folder and the record of the machine that trained it
    were lost, and the report then credited the publishing machine with the training,
    with exit code 0."""
    _real_rows(tmp_path, [SINE])
    folder = tmp_path / "zoo" / SINE
    shutil.copytree(folder, tmp_path / "run")  # a finished run as the zoo holds it
    _garble("results.json")(folder)
    before = _digest(folder)
    with pytest.raises(zoo.ZooError) as err:
        zoo.publish(str(tmp_path / "run"), str(folder), True, {}, "a machine", log=print)
    message = str(err.value)
    assert str(folder / "results.json") in message and "git checkout" in message
    assert _digest(folder) == before


@pytest.mark.parametrize("how", ["publish", "restore", "evaluate"])
def test_a_garbled_record_of_the_runs_evaluations_is_named_and_kept(tmp_path, how):
    """A garbled reproduce.json was read as empty: publishing skipped the run's evaluations
    without a word, and a restore from the zoo, or the next evaluation, replaced it with
    the new entries alone, losing the others."""
    import types

    from tf_maml import reproduce_run

    _real_rows(tmp_path, [SINE])
    folder, run = tmp_path / "zoo" / SINE, tmp_path / "run"
    run.mkdir()
    state = run / zoo.RUN_STATE_FILE
    state.write_text('{"test_ubs10_stepsize0.01|other": {"iteration": 5')
    before, zoo_before = _digest(run), _digest(folder)
    message = (rf"^{re.escape(str(state))}, the record of the run's evaluations, cannot be "
               r"read \(.*\): restore it from a copy, or delete it \(the zoo's evaluations "
               r"are then taken again, and the others run again\); it was left as it is$")
    if how == "evaluate":  # refused before the evaluation's command runs
        plan = types.SimpleNamespace(experiment=types.SimpleNamespace(name=SINE),
                                     run_dir=str(run), result_name=SINE_RESULT,
                                     train_cmd=None, eval_cmd=["false"])
        status = reproduce_run._evaluate(plan, True, False, lambda _: None, log=lambda _: None)
        assert re.match(message, status["eval_error"])
    else:
        with pytest.raises(zoo.ZooError, match=message):
            if how == "publish":
                zoo.publish(str(run), str(folder), True, {}, "a machine", log=print)
            else:
                zoo._take_evaluations(str(folder), str(run), overwrite=True)
    assert _digest(run) == before and _digest(folder) == zoo_before


@pytest.mark.parametrize("flag", ["output", "figures_dir"])
def test_a_report_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, flag):
    # Was a FileExistsError / NotADirectoryError traceback from os.makedirs.
    _real_rows(tmp_path, [SINE])
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with pytest.raises(reproduce.ReproduceError) as err:
        _main(tmp_path, monkeypatch, "--train=False", "--evaluate=False", "--figures=True",
              f"--{flag}={blocker / 'inside'}")
    message = str(err.value)
    assert "\n" not in message and f"in {blocker}" in message
    assert f"a file stands where {blocker}" in message and f"use another --{flag}" in message
    assert blocker.read_text() == "a file" and not (tmp_path / "RESULTS.md").exists()


@pytest.mark.parametrize("flag, damage", [("output", "file"), ("output", "read-only"),
                                          ("figures_dir", "read-only")])
def test_a_report_that_cannot_be_written_is_refused_before_any_row_runs(
        tmp_path, monkeypatch, capsys, flag, damage):
    # Was found when the report was written, at the end: after every row's training. The
    # tests run as root, whom permissions do not stop: a read-only folder is given by the
    # file creation it would refuse (tempfile's), there and nowhere else.
    from test_reproduce import _flags, _table

    # unfinished: it would train, of the zoo's flags (25 tasks per meta-batch)
    _flags(tmp_path, SINE, 10**6, tasks=600, meta_batch_size=25)
    _table(tmp_path)
    shutil.copytree(os.path.join(REPO, "zoo", SINE), tmp_path / "zoo" / SINE)
    place = tmp_path / "place"
    if damage == "file":
        place.write_text("a file")
    else:
        place.mkdir()
        refuse_files_below(monkeypatch, place, errno.EROFS)
    target = place / "inside" if damage == "file" else place
    value = target / "RESULTS.md" if flag == "output" else target
    with pytest.raises(reproduce.ReproduceError) as err:
        _main(tmp_path, monkeypatch, f"--experiments={SINE}", "--run_budget_minutes=0.01",
              "--evaluate=False", "--figures=True", f"--{flag}={value}")
    message = str(err.value)
    assert "\n" not in message and f"in {target}" in message
    if damage == "file":
        assert f"a file stands where {target}" in message and "use another --output" in message
    else:
        assert "Read-only file system. Nothing was lost: any earlier " in message
        assert f"make {target} writable, or use another --{flag}" in message
    assert f"[{SINE}]" not in capsys.readouterr().out  # no row ran


@pytest.mark.parametrize("flag", ["logdir_root", "zoo_dir"])
def test_a_folder_with_a_bracket_is_refused_where_checkpoints_are_read(tmp_path, monkeypatch,
                                                                      flag):
    # TensorFlow finds no checkpoint below a '[' (test_bad_inputs shows it): a row trained
    # there could never be resumed or evaluated, a zoo there never restored or exported.
    _real_rows(tmp_path, [SINE])
    value = tmp_path / "runs[1]"
    with pytest.raises(reproduce.ReproduceError) as err:
        _main(tmp_path, monkeypatch, f"--experiments={SINE}", f"--{flag}={value}")
    assert str(err.value).startswith(f"--{flag}: {value} holds '[', which TensorFlow takes "
                                     "for the start of a pattern: it would not find what it "
                                     "writes there")
    assert not value.exists()


def test_an_output_that_is_not_a_report_is_refused_and_kept(tmp_path, monkeypatch):
    # --output=README.md (or the table, flags/experiments.json) was replaced by the report.
    _real_rows(tmp_path, [SINE])
    notes = tmp_path / "README.md"
    notes.write_text("# My notes\n\nnot a report\n")
    with pytest.raises(reproduce.ReproduceError, match=rf"^--output={re.escape(str(notes))} is "
                       r"a file this command did not write \(it has no \"<!-- written by "
                       r"tf-maml-reproduce\" line\), which the report would replace: give the "
                       r"path of the results file"):
        _report(tmp_path, monkeypatch, f"--output={notes}")
    assert notes.read_text() == "# My notes\n\nnot a report\n"
    # A report, or an empty file, is replaced.
    notes.write_text("")
    assert _report(tmp_path, monkeypatch, f"--output={notes}") == 0
    assert _report(tmp_path, monkeypatch, f"--output={notes}") == 0
    assert "<!-- written by tf-maml-reproduce" in notes.read_text()


def test_a_misspelt_zoo_dir_does_not_rewrite_the_report(tmp_path, monkeypatch):
    # Was exit 0 and a RESULTS.md of every row "not run", over the committed table.
    _real_rows(tmp_path, [SINE])
    (tmp_path / "RESULTS.md").write_text("the committed table")
    with pytest.raises(reproduce.ReproduceError) as err:
        _main(tmp_path, monkeypatch, "--train=False", "--evaluate=False",
              f"--zoo_dir={tmp_path / 'zooo'}")
    assert str(err.value).startswith(f"--zoo_dir={tmp_path / 'zooo'} is not a folder")
    assert (tmp_path / "RESULTS.md").read_text() == "the committed table"
    assert not (tmp_path / "zooo").exists()


def test_a_zoo_dir_of_one_row_does_not_rewrite_the_report(tmp_path, monkeypatch):
    # Was exit 0 and a RESULTS.md of every row "not run": the folder exists, but holds no
    # row's folder (one row's own, or an empty one).
    _real_rows(tmp_path, [SINE])
    assert _report(tmp_path, monkeypatch) == 0
    report = (tmp_path / "RESULTS.md").read_text()
    folder = tmp_path / "zoo" / SINE
    with pytest.raises(reproduce.ReproduceError, match=(
            rf"^--zoo_dir={re.escape(str(folder))} holds no row's folder \(it is one row's "
            rf"folder, holding results\.json: give the zoo, --zoo_dir="
            rf"{re.escape(str(tmp_path / 'zoo'))}\): the report made from it would list every "
            r"row not run.*was not rewritten$")):
        _report(tmp_path, monkeypatch, f"--zoo_dir={folder}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(reproduce.ReproduceError, match=r"empty holds no row's folder: the "):
        _report(tmp_path, monkeypatch, f"--zoo_dir={tmp_path / 'empty'}")
    assert (tmp_path / "RESULTS.md").read_text() == report


@pytest.mark.parametrize("given, named", [
    ((), "--output and --figures_dir"),
    (("--output=R.md",), "--figures_dir"),
    (("--figures=False",), "--output"),
])
def test_the_report_of_another_zoo_does_not_replace_the_checkout_s(tmp_path, monkeypatch,
                                                                   given, named):
    # Was this checkout's docs/RESULTS.md rewritten from a zoo of a few rows: every other
    # row "not run" (and its figures redrawn), though that report is of the checkout's zoo/.
    _real_rows(tmp_path, [SINE])
    report, figures = (os.path.join(reproduce.REPO, "docs", name) for name in
                       ("RESULTS.md", "figures"))
    before = open(report, "rb").read(), sorted(os.listdir(figures))
    monkeypatch.setattr(reproduce.signal, "signal", lambda *a: None)
    values = absl_flags.FlagValues()
    reproduce.define_flags(values)
    values(["tf-maml-reproduce", f"--flags_dir={tmp_path / 'flags'}",
            f"--zoo_dir={tmp_path / 'zoo'}", "--train=False", "--evaluate=False", *given])
    with pytest.raises(reproduce.ReproduceError) as err:
        reproduce.main(["tf-maml-reproduce"], values)
    assert str(err.value).startswith(
        f"--zoo_dir={tmp_path / 'zoo'} is not this checkout's zoo, but {named} would replace "
        f"this checkout's report of its own zoo: give the report of {tmp_path / 'zoo'} its "
        f"own place, e.g. --output={tmp_path / 'RESULTS.md'}")
    assert (open(report, "rb").read(), sorted(os.listdir(figures))) == before


def test_a_logdir_root_that_is_a_file_fails_the_row_in_one_line(tmp_path, monkeypatch, capsys):
    # Was a NotADirectoryError traceback from the zoo's restore into the run directory.
    _real_rows(tmp_path, [SINE])
    (tmp_path / "logs").write_text("a file")
    before = _digest(tmp_path / "zoo" / SINE)
    assert _main(tmp_path, monkeypatch, "--train=False") == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"[{SINE}] could not"))
    assert f"a file stands where {tmp_path / 'logs'}" in line
    assert "use another --logdir_root" in line
    assert (tmp_path / "logs").read_text() == "a file"
    assert _digest(tmp_path / "zoo" / SINE) == before


def test_a_file_in_place_of_a_row_s_zoo_folder_stops_the_row_before_training(
        tmp_path, monkeypatch, capsys):
    # Was trained from the start (the zoo read as empty), and only the first publish failed.
    _real_rows(tmp_path, [SINE])
    shutil.rmtree(tmp_path / "zoo" / SINE)
    (tmp_path / "zoo" / SINE).write_text("not a folder")
    code = _main(tmp_path, monkeypatch, f"--experiments={SINE}", "--run_budget_minutes=0.01")
    out = capsys.readouterr().out
    assert code == 1
    assert (f"[{SINE}] {tmp_path / 'zoo' / SINE}, this row's zoo folder, is a file, so nothing "
            "trained or evaluated could be published there: move that file away") in out
    assert "training" not in out.split("is a file")[0]
    assert (tmp_path / "zoo" / SINE).read_text() == "not a folder"


@pytest.mark.parametrize("row", ["unfinished", "new", "finished"])
def test_a_zoo_folder_that_cannot_be_written_stops_a_row_to_train_before_training(
        tmp_path, monkeypatch, capsys, row):
    # Was found only by the first publish, after the training. The tests run as root, whom
    # permissions do not stop: the system's refusal (a read-only mount, another owner) is
    # given by the file creation it would refuse, in the zoo and nowhere else. A finished
    # row publishes nothing new: a read-only zoo (a checkout's) serves it as before.

    from test_reproduce import _flags, _table

    zoo = tmp_path / "zoo"
    if row == "finished":
        _real_rows(tmp_path, [SINE])
    else:
        # unfinished: past the zoo's 70000, of the zoo's flags (25 tasks per meta-batch)
        _flags(tmp_path, SINE, 10**6, tasks=600, meta_batch_size=25)
        _table(tmp_path)
        zoo.mkdir()
        if row == "unfinished":
            shutil.copytree(os.path.join(REPO, "zoo", SINE), zoo / SINE)
    refuse_files_below(monkeypatch, zoo, errno.EACCES)
    code = _main(tmp_path, monkeypatch, f"--experiments={SINE}", "--run_budget_minutes=0.01",
                 "--evaluate=False")
    out = capsys.readouterr().out
    if row == "finished":
        assert code == 0 and "cannot be" not in out
        return
    assert code == 1
    what = (f"cannot be made: {zoo} cannot be written" if row == "new"
            else "cannot be written")
    folder = zoo if row == "new" else zoo / SINE
    assert (f"[{SINE}] {zoo / SINE}, this row's zoo folder, {what} (Permission denied), so "
            f"nothing trained or evaluated could be published there: make {folder} writable "
            "(or give another --zoo_dir), then run the same command again") in out
    assert "training" not in out.split("cannot be")[0]


def test_a_failed_publish_fails_the_command_and_keeps_the_run_directory(tmp_path, monkeypatch,
                                                                       capsys):
    """The zoo folder cannot be written (here: a file is in its place); the run directory,
    the source of truth, keeps its checkpoint, and the command exits non-zero."""
    _real_rows(tmp_path, [SINE])
    plan = reproduce.plan(reproduce.load_experiments(str(tmp_path / "flags"))[0],
                          str(tmp_path / "logs"), {}, None, str(tmp_path / "flags"),
                          str(tmp_path / "zoo"))
    run_dir = tmp_path / "run"
    shutil.move(tmp_path / "zoo" / SINE, run_dir)  # a finished run, not yet in the zoo
    os.makedirs(os.path.dirname(plan.run_dir))
    shutil.move(run_dir, plan.run_dir)
    (tmp_path / "zoo" / SINE).write_text("not a folder")
    before = _digest(pathlib.Path(plan.run_dir))
    code = _report(tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert code != 0
    assert "could not publish" in out and str(tmp_path / "zoo" / SINE) in out
    assert zoo.latest_iteration(plan.run_dir) == 70000
    assert _digest(pathlib.Path(plan.run_dir)) == before

