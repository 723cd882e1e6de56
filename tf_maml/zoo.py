"""The model zoo: every trained paper row, and the state of every unfinished run, as files
that live in the repository (``zoo/<run>/``), so that they outlive the machine that trained
them.

A zoo folder is the part of a run directory worth keeping:

- ``model-<i>.index`` / ``.data-*`` and the ``checkpoint`` index: for an unfinished run the
  whole training state (θ, Adam's moments, Meta-SGD's α, the iteration), so that training
  resumes from it on any machine; for a finished run only θ (and α) and the iteration, a third
  of the size (a finished run needs no optimizer);
- ``config.json``: the run's configuration, machine paths replaced by placeholders
  (``$DATA/omniglot``, ``$LOGDIR/...``);
- ``training_log.csv``: the training curve up to the latest checkpoint held (and the
  training time, summed over sessions);
- the evaluations, in the original's formats (``test_ubs<K>_stepsize<α>.csv/.pkl``, and the
  per-task ``.npy``; a reinforcement-learning run's ``test_returns.csv/.npy``), and
  ``results.json``: what each evaluation gave, of which iteration,
  with the commands (placeholders again), the date and the machine; and, under ``run``, the
  state kept and every stretch of training with its speed and processor
  (:mod:`tf_maml.training_log`);
- for a run evaluated as an ensemble (``--ensemble=N``), ``ensemble.json`` and the weights
  of its members, so that the ensemble is evaluated again from the zoo alone.

:func:`publish` copies a run directory into its zoo folder when the run has moved on;
:func:`restore` goes the other way when the zoo is ahead (a fresh clone, another machine), so
that ``tf-maml-reproduce`` resumes or evaluates a zoo run like any other. The zoo keeps the
latest state and the checkpoint of every evaluation it publishes (a partial row's number may
be of an older checkpoint than the state training resumes from); publishing removes any
other checkpoint.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil

from tf_maml import atomic, training_log
from tf_maml.atomic import read_json, write_json
from tf_maml.rundir import (
    CHECKPOINT_NAME,
    ENSEMBLE_NAME,
    SELECTION_NAME,
    checkpoint_files,
    checkpoint_prefixes,
    csv_text,
    read_csv_up_to,
)

RESULTS_FILE = "results.json"
RUN_STATE_FILE = "reproduce.json"  # the run directory's record of its evaluations
PATH_FIELDS = ("data_dir", "logdir", "init_checkpoint", "export_dir")
KEPT_FILES = ("training_log.csv",)
# An evaluation's files: test_ubs<K>_stepsize<α>[_ensemble<N>] or test_ubs<K>_<baseline>
# (the original's formats), test_returns (a reinforcement-learning run's returns).
RESULT_PREFIXES = ("test_ubs", "test_returns")


class ZooError(ValueError):
    """A zoo folder that cannot be used; the message names the fix."""


# ---------------------------------------------------------------------------- reading
def checkpoint_iterations(directory: str) -> list[int]:
    """Iterations of the complete ``model-<i>`` checkpoints in ``directory``, ascending (a
    checkpoint counts once its data files are there beside its index)."""
    return [i for i, _ in checkpoint_prefixes(directory, complete=True)]


def latest_iteration(directory: str) -> int:
    """The highest complete checkpoint in ``directory`` (0 if none)."""
    return max(checkpoint_iterations(directory), default=0)


def results(zoo_dir: str) -> dict:
    """The zoo folder's ``results.json`` (empty if none, or if it is not a record: the
    report checks it with :func:`read_results` before it prints a row of it)."""
    try:
        return read_results(os.path.join(zoo_dir, RESULTS_FILE))
    except (OSError, ValueError):
        return {}


def read_results(path: str) -> dict:
    """The ``results.json`` at ``path``: a JSON object whose ``run`` and evaluations (the
    ``|`` keys) are objects. Raises FileNotFoundError if there is none, ValueError (saying
    what is wrong) if it is not such a record: garbled, or edited by hand."""
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    bad = [key for key, value in record.items()
           if (key == "run" or "|" in key) and not isinstance(value, dict)]
    if bad:
        raise ValueError(f"its entry {bad[0]!r} is not a JSON object")
    return record


def run_state(run_dir: str) -> dict:
    """The run directory's record of its evaluations (:data:`RUN_STATE_FILE`; {} if there is
    none); a ZooError if it is there but cannot be read: read as empty, its evaluations went
    unpublished and the next evaluation or restore replaced it, losing them."""
    path = os.path.join(run_dir, RUN_STATE_FILE)
    try:
        return atomic.read_record(path) or {}
    except ValueError as err:
        raise ZooError(f"{path}, the record of the run's evaluations, {err}: restore it from a "
                       "copy, or delete it (the zoo's evaluations are then taken again, and "
                       "the others run again); it was left as it is") from None


def _results_to_update(zoo_dir: str) -> dict:
    """``results.json`` for :func:`publish`, which writes it back with what it adds: one that
    is there but cannot be read is an error, since replacing it would lose every number it
    holds and the record of the machines that trained the run."""
    path = os.path.join(zoo_dir, RESULTS_FILE)
    try:
        return read_results(path)
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise ZooError(f"{path} is not a valid results record ({err}), and publishing would "
                       f"replace it: restore it from git (`git checkout -- {path}`)") from None


# ---------------------------------------------------------------------------- paths
def placeholder(text: str, paths: dict[str, str]) -> str:
    """``text`` with every path of this machine in ``paths`` (path -> placeholder) replaced,
    longest first, so that nothing committed names a folder of the machine it came from."""
    for path in sorted((p for p in paths if p), key=len, reverse=True):
        for form in {os.path.normpath(path), os.path.abspath(path)}:
            text = text.replace(form, paths[path])
    return text


def sanitized_config(config_json: str, paths: dict[str, str]) -> str:
    """``config.json`` with its path fields in placeholders; a path no placeholder covers
    keeps only its last component under ``$PATH``."""
    config = json.loads(config_json)
    for field in PATH_FIELDS:
        value = config.get(field)
        if isinstance(value, str) and value:
            value = placeholder(value, paths)
            if os.path.isabs(value):
                value = "$PATH/" + os.path.basename(os.path.normpath(value))
            config[field] = value
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------- publishing
def _write_index(directory: str) -> None:
    """The ``checkpoint`` index file TensorFlow's CheckpointManager reads: the latest
    checkpoint (what training resumes from) and every one held (an evaluated one among
    them). It lists a checkpoint only if its timestamp is after
    ``last_preserved_timestamp``; fixed stamps keep the file the same from one publication
    of the same checkpoints to the next."""
    names = [f"{CHECKPOINT_NAME}-{i}" for i in checkpoint_iterations(directory)]
    if not names:  # an evaluation-only row (the original authors' checkpoint) holds none
        return
    lines = [f'model_checkpoint_path: "{names[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
    lines += ["all_model_checkpoint_timestamps: 1.0"] * len(names)
    atomic.write(os.path.join(directory, "checkpoint"),
                 "\n".join(lines + ["last_preserved_timestamp: 0.0"]) + "\n")


def ensemble_members(directory: str) -> list[int]:
    """The iterations of the ensemble recorded in ``directory`` if it was chosen among the
    checkpoints up to the directory's latest one (else none: training has moved on)."""
    record = read_json(os.path.join(directory, ENSEMBLE_NAME))
    if record.get("latest") != latest_iteration(directory):
        return []
    return [m["iteration"] for m in record.get("members", [])]


def evaluated_iterations(record: dict) -> set[int]:
    """The iterations whose checkpoints the evaluations of a ``results.json`` (or a run
    directory's record) were made of."""
    return {entry["iteration"] for key, entry in record.items()
            if "|" in key and isinstance(entry, dict)
            and isinstance(entry.get("iteration"), int)}


def _kept_iterations(zoo_dir: str) -> set[int]:
    """What the zoo keeps: the latest state, the model of every published number and the
    members of the ensemble chosen up to the latest state."""
    return ({latest_iteration(zoo_dir)} | evaluated_iterations(results(zoo_dir))
            | set(ensemble_members(zoo_dir)))


def _remove_checkpoints(directory: str, keep: set[int]) -> None:
    for iteration, prefix in checkpoint_prefixes(directory, complete=True):
        if iteration not in keep:
            for path in checkpoint_files(prefix):
                os.remove(path)


def _prefix(directory: str, iteration: int) -> str:
    return os.path.join(directory, f"{CHECKPOINT_NAME}-{iteration}")


def _slim_checkpoint(run_dir: str, iteration: int, out_dir: str) -> None:
    """Writes ``out_dir/model-<iteration>`` holding θ (and any learned inner rates and
    per-step batch norm) and the iteration of the run's checkpoint, without the optimizer:
    the same object names as the training checkpoint, so evaluation restores it unchanged."""
    import tensorflow as tf

    from tf_maml import experiment
    from tf_maml.checkpoint import learner_checkpointer

    _, learner = experiment.run_learner(os.path.join(run_dir, "config.json"))
    checkpointer = learner_checkpointer(learner, run_dir)
    checkpointer.restore(_prefix(run_dir, iteration), expect_optimizer=False)
    parts = {"model": learner.model, "iteration": checkpointer.iteration}
    parts.update(learner.extra_variables)
    tf.train.Checkpoint(**parts).write(_prefix(out_dir, iteration))


def _copy_checkpoint(run_dir: str, iteration: int, zoo_dir: str, weights_only: bool) -> None:
    """Puts the run's ``model-<iteration>`` into ``zoo_dir`` (θ alone if ``weights_only``,
    else the whole state), written beside it first so that no half checkpoint is left, and
    no mix of two versions of it."""
    tmp = zoo_dir + ".publish.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        if weights_only:
            _slim_checkpoint(run_dir, iteration, tmp)
        else:
            for path in checkpoint_files(_prefix(run_dir, iteration)):
                shutil.copy2(path, tmp)
        # Moved in as one set: a stop between two files would leave the index of one
        # version beside the data of another (a finished run's θ over its full state).
        with atomic.stops_deferred():
            for path in glob.glob(os.path.join(glob.escape(tmp), "*")):
                os.replace(path, os.path.join(zoo_dir, os.path.basename(path)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(run_dir: str, zoo_dir: str, finished: bool, paths: dict[str, str],
            machine: str, log=print) -> bool:
    """Copies what is new in ``run_dir`` into ``zoo_dir``: its latest checkpoint (weights
    only when ``finished``), the training log, sanitized config and every evaluation newer
    than the zoo's. Returns whether anything changed. Never moves the zoo backwards: a run
    directory older than the zoo folder publishes nothing."""
    if not os.path.isdir(run_dir):
        return False
    run_latest, zoo_latest = latest_iteration(run_dir), latest_iteration(zoo_dir)
    run_results = run_state(run_dir)
    zoo_results = _results_to_update(zoo_dir)
    changed = False
    os.makedirs(zoo_dir, exist_ok=True)
    meta = dict(zoo_results.get("run", {}))
    # A newer checkpoint, or the same one now finished (its optimizer state can go), or the
    # same one whose record lags behind it: a publication killed (SIGKILL, a power cut)
    # after the checkpoint was moved in, before the log, config and record that go with it.
    if run_latest > zoo_latest or (run_latest == zoo_latest > 0 and (
            finished and meta.get("state") != "weights"
            or meta.get("iteration") != zoo_latest)):
        _copy_checkpoint(run_dir, run_latest, zoo_dir, weights_only=finished)
        if os.path.exists(os.path.join(zoo_dir, ENSEMBLE_NAME)):
            os.remove(os.path.join(zoo_dir, ENSEMBLE_NAME))  # of an earlier iteration
        for name in KEPT_FILES:
            # Cut at the checkpoint published: the rows training wrote after it (validations
            # included) are of weights the zoo does not hold, and a resume writes them again.
            columns, rows = read_csv_up_to(os.path.join(run_dir, name), run_latest)
            if columns:
                atomic.write(os.path.join(zoo_dir, name), csv_text(columns, rows))
        with open(os.path.join(run_dir, "config.json")) as f:
            config_text = sanitized_config(f.read(), paths)
        atomic.write(os.path.join(zoo_dir, "config.json"), config_text)
        machines = list(meta.get("machines", []))
        if machine not in machines:
            machines.append(machine)
        # Every stretch of training, the one this machine has just trained included.
        stretches = training_log.run_stretches(training_log.read_training_log(zoo_dir),
                                               run_latest, meta, machine)
        meta.update({"iteration": run_latest, "finished": finished,
                     "state": "weights" if finished else "full", "machines": machines,
                     "stretches": stretches})
        changed = True
        log(f"  zoo: {zoo_dir} now holds iteration {run_latest}"
            + (" (weights)" if finished else " (resumable state)"))
    if finished and _publish_ensemble(run_dir, zoo_dir, log):
        changed = True
    for key, entry in run_results.items():
        if "|" not in key:
            continue
        # As the zoo holds it: commands with placeholders, and the machine.
        entry = dict(entry)
        for field in ("eval_command", "train_command"):
            if entry.get(field):
                entry[field] = placeholder(entry[field], paths)
        entry.setdefault("machine", machine)
        held = zoo_results.get(key, {})
        if entry == held or held.get("iteration", -1) > entry.get("iteration", 0):
            continue
        name = key.split("|", 1)[0]
        # The evaluation's files, as one set (a kill between two copies left the zoo's
        # earlier csv beside the new npy), from a set its killed writer completed.
        atomic.complete_interrupted(run_dir)
        atomic.write_all({os.path.join(zoo_dir, name + ext): _read_bytes(
            os.path.join(run_dir, name + ext)) for ext in (".csv", ".pkl", ".npy")
            if os.path.exists(os.path.join(run_dir, name + ext))})
        zoo_results[key] = entry
        changed = True
        log(f"  zoo: {zoo_dir} now holds the evaluation {key} of iteration "
            f"{entry.get('iteration')}")
    # The fine-tuning's search records, which a run directory as new as the zoo measured on
    # the checkpoint the zoo holds (an older one's would replace progress with a stale record).
    if run_latest >= zoo_latest and _copy_records(run_dir, zoo_dir):
        changed = True
        log(f"  zoo: {zoo_dir} now holds the fine-tuning's search so far")
    # The model of every number published: held already (it was the latest state when it
    # was evaluated), or taken from the run directory if the zoo lost it.
    for iteration in sorted(evaluated_iterations(zoo_results)
                            - set(checkpoint_iterations(zoo_dir))):
        if iteration in checkpoint_iterations(run_dir):
            _copy_checkpoint(run_dir, iteration, zoo_dir, weights_only=False)
            changed = True
            log(f"  zoo: {zoo_dir} holds again the evaluated iteration {iteration}")
    if changed:
        zoo_results["run"] = meta
        write_json(os.path.join(zoo_dir, RESULTS_FILE), zoo_results)
        # Only now, with the evaluations recorded: a checkpoint goes once no number is of it.
        _remove_checkpoints(zoo_dir, _kept_iterations(zoo_dir))
        _write_index(zoo_dir)
    return changed


def _publish_ensemble(run_dir: str, zoo_dir: str, log) -> bool:
    """Copies the weights of the run's ensemble members (and ``ensemble.json``) into the zoo
    folder, when the ensemble was chosen up to the checkpoint the zoo holds."""
    members = ensemble_members(run_dir)
    if not members or latest_iteration(run_dir) != latest_iteration(zoo_dir):
        return False
    with open(os.path.join(run_dir, ENSEMBLE_NAME)) as f:
        record = f.read()
    held = set(checkpoint_iterations(zoo_dir))
    if all(i in held for i in members) and record == _read_text(
            os.path.join(zoo_dir, ENSEMBLE_NAME)):
        return False
    for iteration in members:
        if iteration not in held:
            _copy_checkpoint(run_dir, iteration, zoo_dir, weights_only=True)
    atomic.write(os.path.join(zoo_dir, ENSEMBLE_NAME), record)
    log(f"  zoo: {zoo_dir} now holds the ensemble of iterations "
        + ", ".join(str(i) for i in members))
    return True


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _take_evaluations(zoo_dir: str, run_dir: str, overwrite: bool) -> bool:
    """Copies the zoo's result files into ``run_dir`` and merges the zoo's evaluations (the
    ``|`` keys of its results) into the run's state. ``overwrite``: the zoo's replace what the
    run directory has (a restored checkpoint's evaluations are the zoo's); else the run
    directory's are kept, and nothing is done when it records every evaluation of the zoo
    already. Returns whether anything was taken."""
    state_path = os.path.join(run_dir, RUN_STATE_FILE)
    state = run_state(run_dir)
    taken = {key: entry for key, entry in results(zoo_dir).items()
             if "|" in key and (overwrite or key not in state)}
    if not taken and not overwrite:
        return False
    os.makedirs(run_dir, exist_ok=True)
    atomic.complete_interrupted(zoo_dir)  # a set a killed publish left half replaced
    # One set: a kill between two copies left one evaluation's files of two versions.
    atomic.write_all({os.path.join(run_dir, os.path.basename(path)): _read_bytes(path)
                      for prefix in RESULT_PREFIXES
                      for path in glob.glob(os.path.join(glob.escape(zoo_dir), prefix + "*"))
                      # not what a killed copy left
                      if not path.endswith(atomic.TEMP_SUFFIX)
                      and (overwrite or not os.path.exists(
                          os.path.join(run_dir, os.path.basename(path))))})
    state.update(taken)
    write_json(state_path, state)
    return True


def restore(zoo_dir: str, run_dir: str, log=print) -> bool:
    """Seeds ``run_dir`` from ``zoo_dir`` when the zoo holds a later checkpoint (a fresh
    clone, or another machine trained further): the checkpoint, the training log and the
    evaluations, so that training resumes and evaluation finds what was evaluated; and the
    run's ``config.json`` (with the zoo's placeholders for paths), so that a resume refuses
    a flag that would make it another run, as it would in the run's own directory."""
    zoo_latest = latest_iteration(zoo_dir)
    if zoo_latest == 0:
        # A row with no weights of its own (the evaluation of a checkpoint kept elsewhere, as
        # the original authors'): the zoo's evaluations the run directory does not record yet,
        # so that a fresh run directory does not evaluate the row again (--reevaluate still
        # does); never overwriting what the run directory has.
        if not _take_evaluations(zoo_dir, run_dir, overwrite=False):
            return False
        log(f"  zoo: restored the evaluations of {zoo_dir} into {run_dir}")
        return True
    if latest_iteration(run_dir) >= zoo_latest:
        # Of the same checkpoint: a search the zoo kept and the run directory lacks resumes.
        if latest_iteration(run_dir) == zoo_latest and _copy_records(zoo_dir, run_dir,
                                                                     missing_only=True):
            log(f"  zoo: restored the fine-tuning's search so far from {zoo_dir}")
        return False
    os.makedirs(run_dir, exist_ok=True)
    # The checkpoints last, each file whole and an index after its data: a restore stopped
    # anywhere (Ctrl-C, a kill) leaves the run directory behind the zoo, and the rerun
    # restores again. It copied them first: a stop after them left a run directory as new
    # as the zoo without its log and config.json, which no rerun restored (training then
    # wrote a log without the zoo's rows, and published it).
    for name in (*KEPT_FILES, "config.json"):
        if os.path.exists(os.path.join(zoo_dir, name)):
            _copy_whole(os.path.join(zoo_dir, name), run_dir)
    _take_evaluations(zoo_dir, run_dir, overwrite=True)
    _copy_records(zoo_dir, run_dir)
    if ensemble_members(zoo_dir):
        _copy_whole(os.path.join(zoo_dir, ENSEMBLE_NAME), run_dir)
    # The latest state (training resumes from it), the ensemble's members and the evaluated
    # checkpoints (a re-evaluation checks a published number against its own model).
    for _, prefix in checkpoint_prefixes(zoo_dir, complete=True):
        index, *data = checkpoint_files(prefix)
        for path in (*data, index):
            _copy_whole(path, run_dir)
    _write_index(run_dir)
    log(f"  zoo: restored iteration {zoo_latest} from {zoo_dir} into {run_dir}")
    return True


def _copy_records(source: str, target: str, missing_only: bool = False) -> bool:
    """Copies ``source``'s search records (:data:`~tf_maml.rundir.SELECTION_NAME`) that
    ``target`` lacks or holds otherwise (``missing_only``: lacks); returns whether any was."""
    copied = False
    for path in glob.glob(os.path.join(glob.escape(source), SELECTION_NAME.format("*"))):
        there = os.path.join(target, os.path.basename(path))
        if os.path.exists(there) and (missing_only or _read_text(there) == _read_text(path)):
            continue
        _copy_whole(path, target)
        copied = True
    return copied


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _copy_whole(path: str, directory: str) -> None:
    """``path`` copied into ``directory`` under a temporary name, then renamed."""
    with open(path, "rb") as src, atomic.replacing(
            os.path.join(directory, os.path.basename(path))) as dst:
        shutil.copyfileobj(src, dst)


def today() -> str:
    return datetime.date.today().isoformat()
