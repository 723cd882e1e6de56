"""The model zoo checked against its own files before anything is taken from it.

A row of ``docs/RESULTS.md`` is made from a zoo folder's ``results.json``, whose numbers were
computed from the evaluation's per-task matrix (``test_ubs*.npy``, kept beside it), and
stands for the model in the folder's checkpoint. :func:`row_problem` checks that they still
agree (a deleted or hand-edited file would otherwise publish a wrong row, or silently drop
one); :func:`state_problem` checks that the checkpoints it vouches for are there, with the
training log and config.json of a trained state, and :func:`checkpoint_problem` reads a zoo
checkpoint whole, before it is restored into a run or exported (a lost one would have the row
trained again from the start, a corrupt one be copied into every fresh run directory). Each
problem is one line that names the file and what to do about it.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np

from tf_maml import atomic
from tf_maml import zoo as zoo_lib
from tf_maml.rundir import CHECKPOINT_NAME, ENSEMBLE_NAME, checkpoint_files


def _from_git(path: str) -> str:
    return f"restore it from git (`git checkout -- {path}`)"


def _evaluate_again(row: str) -> str:
    return f"evaluate again (`tf-maml-reproduce --experiments={row} --train=False --reevaluate`)"


# ---------------------------------------------------------------------------- the numbers
KINDS = ("accuracy", "mse", "return")  # what a row's numbers are (Experiment.kind)


def _printed(value: float, kind: str) -> str:
    """A number as docs/RESULTS.md prints it: accuracies in percent with two decimals,
    sinusoid MSEs with three, average returns with two."""
    if kind == "accuracy":
        return f"{100 * value:.2f}%"
    return f"{value:.3f}" if kind == "mse" else f"{value:.2f}"


def _agree(recorded: float, truth: float, kind: str) -> bool:
    """Equal as printed; a value within float32 noise of the truth also agrees (the CSV the
    record was read from holds float32 values, which can sit on a rounding boundary)."""
    return (_printed(recorded, kind) == _printed(truth, kind)
            or math.isclose(recorded, truth, rel_tol=1e-6, abs_tol=1e-9))


def _numbers(entry: dict) -> tuple[list[float], list[float]] | None:
    means, ci95 = entry.get("means"), entry.get("ci95")
    if not (isinstance(means, list) and isinstance(ci95, list) and len(means) == len(ci95)
            and all(isinstance(v, (int, float)) for v in means + ci95)
            and isinstance(entry.get("iteration"), int)):
        return None
    return means, ci95


def _evaluation_problem(results_path: str, entry: dict | None, npy: str, row: str,
                        tasks: int, kind: str) -> str | None:
    """The row's evaluation in ``results.json`` against the per-task matrix ``npy``: both
    there, the mean and 95% half-width of every step as the evaluation computes them."""
    if entry is None:
        if not os.path.exists(npy):
            return None  # not evaluated yet
        return (f"{results_path} has no evaluation of {row} although {npy} is there: "
                f"{_from_git(results_path)}, or {_evaluate_again(row)}")
    numbers = _numbers(entry)
    if numbers is None:
        return (f"{results_path}: the evaluation of {row} is malformed (it needs an integer "
                f"iteration and equally long means and ci95): {_from_git(results_path)}")
    if not os.path.exists(npy):
        return (f"{npy} is missing, so the numbers {results_path} gives for {row} cannot be "
                f"checked: {_from_git(npy)}, or {_evaluate_again(row)}")
    from tf_maml.figures import read_matrix  # the one reader of a per-task matrix

    try:
        values = read_matrix(npy)
    except ValueError as err:  # cut short, emptied (a traceback: EOFError), garbled
        return f"{npy} {err}: {_from_git(npy)}"
    if values.ndim != 2 or values.shape[1] != len(numbers[0]):
        return (f"{npy} holds a {values.shape} matrix, not one per-task row of the "
                f"{len(numbers[0])} steps {results_path} gives for {row}: {_from_git(npy)}")
    if values.shape[0] != tasks:
        return (f"{npy} holds {values.shape[0]} test tasks, but {row} is evaluated on {tasks}"
                f": {_from_git(npy)}, or {_evaluate_again(row)}")
    from tf_maml.evaluate import summarize  # the computation the evaluation wrote them with

    with np.errstate(all="ignore"):  # a diverged run's matrix holds inf and nan
        means, _, ci95 = summarize(values)
    for field, recorded, truth in (("mean", numbers[0], means), ("95% half-width",
                                                                  numbers[1], ci95)):
        for step, (r, t) in enumerate(zip(recorded, truth)):
            if not _agree(float(r), float(t), kind):
                return (f"{results_path}: the {field} of {row} at update{step}, "
                        f"{_printed(r, kind)}, is not the {_printed(t, kind)} of {npy} "
                        f"(results.json is written by tf-maml-reproduce, not by hand): "
                        f"{_from_git(results_path)}, or {_evaluate_again(row)}")
    return None


# ---------------------------------------------------------------------------- the models
def _checkpoint_files_problem(zoo_dir: str, iteration: int, why: str) -> str | None:
    prefix = os.path.join(zoo_dir, f"{CHECKPOINT_NAME}-{iteration}")
    if not os.path.exists(prefix + ".index"):
        missing = prefix + ".index"
    elif not checkpoint_files(prefix)[1:]:  # its data shards
        missing = prefix + ".data-00000-of-00001"
    else:
        return None
    return f"{missing} is missing but {why}: {_from_git(zoo_dir)}"


def _models_problem(zoo_dir: str, record: dict, entry: dict | None, row: str,
                    target: int, held_by: str | None = None) -> str | None:
    """The checkpoints ``results.json`` vouches for: the run's state, the evaluated model of
    a complete row and an ensemble's members (but none that the directory ``held_by`` holds
    whole: a publication from it puts that one back)."""
    results_path = os.path.join(zoo_dir, zoo_lib.RESULTS_FILE)
    run = record.get("run", {})
    needed = []
    if target and entry is not None and entry["iteration"] >= target:
        needed.append((entry["iteration"], f"{results_path} reports {row} complete at "
                                           f"iteration {entry['iteration']}"))
    if isinstance(run.get("iteration"), int) and run["iteration"] > 0:
        needed.append((run["iteration"], f"{results_path} records the run's state at "
                                         f"iteration {run['iteration']}"))
        ensemble = atomic.read_json(os.path.join(zoo_dir, ENSEMBLE_NAME))
        if ensemble.get("latest") == run["iteration"]:
            needed += [(m.get("iteration"), f"{ENSEMBLE_NAME} names it as a member")
                       for m in ensemble.get("members", []) if isinstance(m, dict)]
    held = set(zoo_lib.checkpoint_iterations(held_by)) if held_by else set()
    for iteration, why in needed:
        if iteration in held:
            continue
        problem = _checkpoint_files_problem(zoo_dir, iteration, why)
        if problem:
            return problem
    return None


def _run_files_problem(zoo_dir: str, record: dict, held_by: str | None = None) -> str | None:
    """The files that go with a trained state (``results.json``'s run iteration): the
    training log (the report's training time, stretches and machines; a resume continues
    it) and config.json (a resume compares its flags with it); not needed if ``held_by``,
    a run directory, holds that state (its own log and config.json are published)."""
    iteration = record.get("run", {}).get("iteration")
    if not (isinstance(iteration, int) and iteration > 0):
        return None
    if held_by and iteration in zoo_lib.checkpoint_iterations(held_by):
        return None
    results_path = os.path.join(zoo_dir, zoo_lib.RESULTS_FILE)
    for name in (*zoo_lib.KEPT_FILES, "config.json"):
        path = os.path.join(zoo_dir, name)
        if not os.path.exists(path):
            return (f"{path} is missing but {results_path} records the run's state at "
                    f"iteration {iteration}: {_from_git(zoo_dir)}")
    config = os.path.join(zoo_dir, "config.json")
    if not atomic.read_json(config):  # a restore would copy it into the run directory
        return (f"{config} is not a JSON object of the run's flags (garbled, or a merge "
                f"left conflict markers in it): {_from_git(config)}")
    return None


def row_problem(zoo_dir: str, row: str, result_name: str, *, target: int, tasks: int,
                kind: str) -> str | None:
    """What in ``zoo_dir`` disagrees with the rest about the report row ``row`` (evaluated as
    ``result_name``; ``target`` iterations, 0 for a row that trains nothing; ``tasks`` test
    tasks; ``kind`` of numbers, one of :data:`KINDS`, compared as the report prints them),
    in one line with the fix; None if all agree. Cheap: it reads the folder's JSON and one
    small matrix, no checkpoint."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not os.path.isdir(zoo_dir):
        return None
    results_path = os.path.join(zoo_dir, zoo_lib.RESULTS_FILE)
    held = sorted((os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(zoo_dir), "*"))
                   if os.path.basename(p).startswith((*zoo_lib.RESULT_PREFIXES,
                                                      CHECKPOINT_NAME + "-"))),
                  key=lambda name: (not name.endswith(".npy"), name))  # evaluations first
    try:
        record = zoo_lib.read_results(results_path)
    except FileNotFoundError:
        if not held:
            return None  # a row not run yet
        return f"{results_path} is missing although {zoo_dir} holds {held[0]}: " + _from_git(
            results_path)
    except (OSError, ValueError) as err:
        return (f"{results_path} is not a valid results record ({err}): "
                + _from_git(results_path))
    entry = record.get(f"{result_name}|{row}")
    npy = os.path.join(zoo_dir, result_name + ".npy")
    problem = _evaluation_problem(results_path, entry, npy, row, tasks, kind)
    return (problem or _models_problem(zoo_dir, record, entry, row, target)
            or _run_files_problem(zoo_dir, record))


def state_problem(zoo_dir: str, row: str, result_name: str, *, target: int,
                  held_by: str | None = None) -> str | None:
    """Whether ``zoo_dir`` holds every checkpoint its ``results.json`` vouches for, and the
    training log and config.json of its trained state (see :func:`row_problem`; what the run
    directory ``held_by`` holds is not needed); else one line naming the missing file and
    the fix. Checked before a row is restored, trained or exported: a zoo that lost its
    latest state would otherwise read as holding none, and the row would be trained again
    from the start and published over the zoo's training log and record; one that lost its
    log or config.json would be resumed without the log's history or the check of its
    flags."""
    try:
        record = zoo_lib.read_results(os.path.join(zoo_dir, zoo_lib.RESULTS_FILE))
    except (OSError, ValueError):  # none yet, or unreadable: row_problem and publish say so
        return None
    return (_models_problem(zoo_dir, record, record.get(f"{result_name}|{row}"), row, target,
                            held_by)
            or _run_files_problem(zoo_dir, record, held_by))


def checkpoint_problem(zoo_dir: str, row: str) -> str | None:
    """Whether the checkpoints a restore or an export takes from ``zoo_dir`` (the latest and
    any ensemble members) read whole, their checksums verified; else one line naming the
    file and what to do with it (a corrupt zoo file would be copied into every fresh run
    directory, so moving a run directory away cannot help)."""
    import tensorflow as tf

    for iteration in sorted({zoo_lib.latest_iteration(zoo_dir),
                             *zoo_lib.ensemble_members(zoo_dir)} - {0}):
        prefix = os.path.join(zoo_dir, f"{CHECKPOINT_NAME}-{iteration}")
        bad = prefix + ".index"
        try:
            reader = tf.train.load_checkpoint(prefix)
            bad = ", ".join(checkpoint_files(prefix)[1:])
            for name in reader.get_variable_to_shape_map():
                reader.get_tensor(name)
        except (tf.errors.OpError, ValueError, IndexError) as err:
            detail = ((getattr(err, "message", None) or str(err)).splitlines() or [""])[0]
            detail = detail.replace(prefix, os.path.basename(prefix)).strip()
            return (f"{bad} in the zoo is corrupt or truncated ({detail}): "
                    f"{_from_git(zoo_dir)}, or delete {prefix}.* to train {row} from the "
                    "start")
    return None
