"""One checkpointer and one resume path for every kind of training (supervised, RL,
``MetaLearner.fit``): ``<run_dir>/model-<iteration>``, found from the files themselves,
never overwritten, the last ``MAX_TO_KEEP`` kept.

Settings saved beside the state (Adam's learning rate) are the run's settings, not its
state: a resume keeps the value the learner was built with and says so.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence

import tensorflow as tf

from tf_maml import atomic, rundir
from tf_maml import distribute as distribute_lib
from tf_maml.errors import dangling_link_problem, tensorflow_pattern
from tf_maml.protocols import Learner
from tf_maml.rundir import CHECKPOINT_NAME

MAX_TO_KEEP = 10  # the original's (main.py:73-80): checkpoints kept, the newest ones

Change = tuple[str, object, object]  # (API name, value before, value now)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, or does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read (truncated or damaged)."""


def checkpoint_iteration(path: str) -> int:
    name = os.path.basename(path)
    prefix = CHECKPOINT_NAME + "-"
    return int(name[len(prefix):]) if name.startswith(prefix) and name[len(prefix):].isdigit() \
        else -1


class Checkpointer:
    """Saves and restores ``parts`` (trackable objects: the model, the optimizer, ...) and
    the iteration as ``<run_dir>/model-<iteration>``. ``fit_hint``: what a checkpoint that
    does not fit suggests; ``brief``: name at most a few of the variables it lacks (not
    TensorFlow's dump of them).

    ``settings`` maps an API name (``meta_lr``) to a variable that is saved with the
    checkpoint but belongs to the run's settings: :meth:`restore` for training keeps its
    current value and reports a difference as a change.

    In multi-worker training every worker saves (saving distributed variables may involve
    collective ops), but only the chief (``chief=True``) into ``run_dir``: the others write
    to a scratch directory, removed by :meth:`close`. All workers restore from ``run_dir``.
    """

    def __init__(self, run_dir: str, parts: dict, settings: dict | None = None,
                 chief: bool = True, fit_hint: str = "", optimizer_key: str = "optimizer",
                 brief: bool = False):
        self.run_dir, self.chief, self.fit_hint, self.brief = run_dir, chief, fit_hint, brief
        self.settings = dict(settings or {})
        self.saved_iteration: int | None = None  # of the checkpoint last saved or restored
        self.last_saved: str | None = None
        self._scratch: str | None = None
        # Iterations kept beyond the newest MAX_TO_KEEP: the ensemble's best validations
        # (tf_maml.ensemble.Pool).
        self.keep: set[int] = set()
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration")
        self.checkpoint = tf.train.Checkpoint(**parts, iteration=self.iteration)
        # The part holding the outer update's state (RL's is TRPO's, saved as "trpo").
        self._optimizer_key = optimizer_key if optimizer_key in parts else None

    # ------------------------------------------------------------------ what is on disk
    @property
    def checkpoints(self) -> list[str]:
        return [p for _, p in rundir.checkpoint_prefixes(self.run_dir)]

    @property
    def latest(self) -> str | None:
        found = self.checkpoints
        return found[-1] if found else None

    def path_for(self, iteration: int) -> str:
        return os.path.join(self.run_dir, f"{CHECKPOINT_NAME}-{iteration}")

    # ------------------------------------------------------------------ saving
    def save(self, iteration: int) -> str:
        """Writes ``model-<iteration>``; nothing if this very state was just saved or
        restored. An existing checkpoint is never overwritten (a :class:`CheckpointError`).
        A failed write (full disk, read-only) leaves no partial files and raises a
        :class:`~tf_maml.rundir.RunDirError` saying what was kept."""
        self.iteration.assign(iteration)
        if self.saved_iteration == iteration and self.last_saved is not None:
            return self.last_saved  # decided alike on every worker: they save together
        if not self.chief:
            if self._scratch is None:
                self._scratch = tempfile.mkdtemp(prefix="tf_maml_worker_")
            self.last_saved = self.checkpoint.write(os.path.join(self._scratch,
                                                                 CHECKPOINT_NAME))
            self.saved_iteration = iteration
            return self.last_saved
        path = self.path_for(iteration)
        if os.path.exists(path + ".index"):
            raise CheckpointError(f"{path} already exists and holds another state; it is "
                                  "left as it is. Use another `run_dir` for a new run.")
        previous = self.latest
        with rundir.writing(
                self.run_dir, f"save the checkpoint {os.path.basename(path)}",
                kept=lambda: (f"the latest checkpoint {os.path.basename(previous)} is intact"
                              if previous else "no checkpoint had been written yet"),
                cleanup=lambda: _remove_checkpoint_files(path)):
            self.last_saved = self.checkpoint.write(path)
            self.saved_iteration = iteration
            self.prune()
        return self.last_saved

    def prune(self) -> None:
        """Deletes all but the newest ``MAX_TO_KEEP`` checkpoints (the original's
        ``max_to_keep=10``) and those of :attr:`keep`, and rewrites TensorFlow's
        ``checkpoint`` state file for tools that read it (``tf.train.latest_checkpoint``)."""
        found = self.checkpoints
        for old in found[:-MAX_TO_KEEP]:
            if checkpoint_iteration(old) not in self.keep:
                _remove_checkpoint_files(old)
        kept = [os.path.basename(p) for p in self.checkpoints]
        lines = [f'model_checkpoint_path: "{kept[-1]}"']
        lines += [f'all_model_checkpoint_paths: "{name}"' for name in kept]
        atomic.write(os.path.join(self.run_dir, "checkpoint"), "\n".join(lines) + "\n")

    def remove_unfinished(self, log: Callable[[str], None] = print) -> None:
        """Removes the ``model-<i>_temp`` folders of saves that a crash interrupted (call it
        holding the run directory's lock: no other process is saving)."""
        if not self.chief:
            return
        for path in sorted(glob.glob(os.path.join(glob.escape(self.run_dir),
                                                  f"{CHECKPOINT_NAME}-*_temp"))):
            shutil.rmtree(path, ignore_errors=True)
            log(f"Removed {os.path.basename(path)}, left by an interrupted save.")

    def close(self) -> None:
        """Removes a non-chief worker's scratch checkpoints."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # ------------------------------------------------------------------ restoring
    def weights_only(self, path: str) -> bool:
        """Whether ``path`` lacks the optimizer state this checkpointer saves: the model zoo
        publishes a finished run as θ (and α) alone, a third of the size."""
        if self._optimizer_key is None:
            return False
        try:
            names = [name for name, _ in tf.train.list_variables(path)]
        except (tf.errors.OpError, ValueError):
            return False  # unreadable: restore() says so
        return not any(name.startswith(self._optimizer_key + "/") for name in names)

    def restore(self, path: str, expect_optimizer: bool = True) -> tuple[int, list[Change]]:
        """Loads ``path``; returns its iteration and the settings that differ from the
        checkpoint's (the current values are kept). Fails clearly on a missing file, a
        corrupt one or a checkpoint of another architecture."""
        if tensorflow_pattern(path):  # else "corrupt or truncated": replaced, or moved aside
            raise CheckpointError(f"the checkpoint {path} cannot be read where it is: "
                                  f"{tensorflow_pattern(os.path.dirname(path) or path)}")
        if not os.path.exists(path + ".index"):
            available = ", ".join(os.path.basename(p) for p in self.checkpoints) or "none"
            raise CheckpointError(f"no checkpoint at {path} (available in {self.run_dir}: "
                                  f"{available})")
        if expect_optimizer and self.weights_only(path):
            raise CheckpointError(
                f"{path} holds the model's weights only (a finished run as the model zoo "
                "keeps it, without the meta-optimizer's state), so training cannot resume "
                "from it. Evaluate it with `train=False`, or train a new run in another "
                "`logdir`.")
        wanted = {name: v.numpy() for name, v in self.settings.items()}
        try:
            status = self.checkpoint.read(path)
        except (tf.errors.OpError, IndexError) as err:
            # DataLossError, OutOfRangeError, a bare OpError ("file is too short to be an
            # sstable": a truncated .index), ... from the C++ reader; IndexError ("Read less
            # bytes than requested") from the Python one.
            detail = (getattr(err, "message", None) or str(err)).splitlines()[0]
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt or truncated: {detail} ({_damaged(path)})"
            ) from err
        except ValueError as err:  # a variable of another shape
            raise CheckpointError(f"checkpoint {path} does not fit this model ({err}); "
                                  f"{self.fit_hint}") from err
        try:
            if expect_optimizer:
                status.assert_existing_objects_matched()
            else:
                status.expect_partial()
        except AssertionError as err:
            detail = f" ({_unmatched(err)})" if self.brief else f" ({err})"
            raise CheckpointError(f"checkpoint {path} does not fit this model{detail}; "
                                  f"{self.fit_hint}") from err
        except (ValueError, tf.errors.InvalidArgumentError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {err}") from err
        changes = []
        for name, variable in self.settings.items():
            saved = variable.numpy()
            if not _same(saved, wanted[name]):
                changes.append((name, saved.item(), wanted[name].item()))
            variable.assign(wanted[name])
        self.saved_iteration, self.last_saved = int(self.iteration.numpy()), path
        return self.saved_iteration, changes

    def readable_before(self, iteration: int) -> str | None:
        """The newest checkpoint older than ``iteration`` that reads (the model is left
        with its state), for an error message to point at."""
        for path in reversed(self.checkpoints):
            if checkpoint_iteration(path) < iteration:
                try:
                    self.restore(path, expect_optimizer=False)
                    return path
                except CheckpointError:
                    continue
        return None

    def restore_latest_good(self, log: Callable[[str], None] = print,
                            ) -> tuple[str, int, list[Change]]:
        """Restores the newest checkpoint that reads, to continue training from it. A
        corrupt or truncated one (a crash or a full disk while it was written) is skipped
        with a warning and renamed ``corrupt-model-<i>...`` (kept, but out of the way of
        the checkpoint training will write at that iteration again)."""
        skipped = []
        for path in reversed(self.checkpoints):
            try:
                iteration, changes = self.restore(path)
            except CorruptCheckpointError as err:
                log(f"WARNING: {err}; trying the previous checkpoint.")
                skipped.append(path)
                continue
            for bad in skipped:
                kept = _move_aside(bad)
                log(f"Kept the unreadable {os.path.basename(bad)} as {kept}.")
            return path, iteration, changes
        raise CheckpointError(f"no readable checkpoint in {self.run_dir}; move the run "
                              "directory away to start afresh.")


def _damaged(prefix: str) -> str:
    """Which files of the unreadable checkpoint ``prefix`` are damaged, by name: its index,
    if TensorFlow cannot read it, else its data (TensorFlow's message names neither)."""
    try:
        tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError):
        return os.path.basename(prefix) + ".index"
    return ", ".join(os.path.basename(p) for p in rundir.checkpoint_files(prefix)[1:])


def _unmatched(err: AssertionError) -> str:
    """TensorFlow's list of the objects a checkpoint lacks, in a few words: how many, and the
    first of the learner's own variables (an optimizer's slots follow from them)."""
    text = str(err)
    names = re.findall(r"path=([^,\s>]+)", text)
    count = re.search(r"Found (\d+) Python objects", text)
    own = sorted(n for n in names if "/" not in n) or names
    if not (count and own):
        return text.splitlines()[0][:200]
    # TensorFlow shows 10 of them, any 10: name a few, as examples.
    return (f"{count.group(1)} of this learner's variables are not in it, e.g. "
            f"{', '.join(own[:2])}")


def _same(a, b) -> bool:
    import numpy as np

    return bool(np.allclose(a, b, rtol=1e-6, atol=0.0))


def _remove_checkpoint_files(prefix: str) -> None:
    for path in glob.glob(glob.escape(prefix) + ".*") + glob.glob(glob.escape(prefix) + "_temp*"):
        with contextlib.suppress(OSError):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def _move_aside(prefix: str) -> str:
    directory, name = os.path.split(prefix)
    target = "corrupt-" + name
    with atomic.stops_deferred():  # the index and data files go aside together
        for path in glob.glob(glob.escape(prefix) + ".*"):
            os.replace(path, os.path.join(directory, target + path[len(prefix):]))
    return target


# ---------------------------------------------------------------------- MetaLearner
ARCHITECTURE_HINT = ("was it written with other `datasource`/`num_classes`/`num_filters`/"
                     "`norm`/`conv` settings, or another model? Use another `run_dir` for a "
                     "new run.")


# The same for MetaLearner.fit, in its arguments (the command line's are flags).
API_HINT = ("was it written by another model (another architecture or number of outputs) or "
            "with other options (a MetaSGD or LSLR inner_lr, PerStepBatchNorm, their "
            "inner_steps)? Build the learner as that run did, or give another `run_dir` for a "
            "new run.")


def learner_checkpointer(learner: Learner, run_dir: str, optimizer_key: str = "optimizer",
                         fit_hint: str = ARCHITECTURE_HINT, brief: bool = False
                         ) -> Checkpointer:
    """The checkpointer of a :class:`~tf_maml.protocols.Learner`: θ (``model``), the
    outer update's state (``optimizer``, saved as ``optimizer_key``: Adam's moments and
    step, which the original lost on resume; RL's TRPO counters as ``trpo``), its
    ``extra_variables`` (Meta-SGD's and LSLR's learned rates, per-step batch norm's values)
    and the iteration. The optimizer's learning rate is a setting (``meta_lr``; none when it
    follows a schedule). ``fit_hint``, ``brief``: :class:`Checkpointer`'s."""
    parts = {"model": learner.model, optimizer_key: learner.optimizer}
    parts.update(learner.extra_variables)
    rates = [v for v in learner.optimizer.variables if v.name == "learning_rate"]
    settings = {"meta_lr": rates[-1]} if rates else {}
    return Checkpointer(run_dir, parts, settings,
                        chief=distribute_lib.is_chief(learner.strategy), fit_hint=fit_hint,
                        optimizer_key=optimizer_key, brief=brief)


def api_checkpointer(learner: Learner, run_dir: str) -> Checkpointer:
    """:func:`learner_checkpointer` for ``MetaLearner.fit``: a checkpoint that does not fit
    is described in the Python API's terms, briefly."""
    return learner_checkpointer(learner, run_dir, fit_hint=API_HINT, brief=True)


# ---------------------------------------------------------------------- resume
def describe_changes(changes: Sequence[Change], iteration: int) -> str:
    """One line: what a resumed run changed, and from when."""
    def fmt(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    parts = [f"`{name}` {fmt(old)} -> {fmt(new)}" + (" (Adam's moments kept)"
                                                     if name == "meta_lr" else "")
             for name, old, new in changes]
    return f"Changed on resume, from iteration {iteration}: " + ", ".join(parts)


def resume_or_start(checkpointer: Checkpointer, resume: bool, total: int,
                    on_start: Callable[[], None] | None = None, log=print,
                    changes: Sequence[Change] = ()) -> tuple[int, bool]:
    """The start of a training run (supervised and RL alike): restores the latest readable
    checkpoint if there is one and ``resume`` allows it (else a CheckpointError: nothing is
    overwritten), prints what changed since (``changes`` of the caller's settings, plus the
    checkpointer's), calls ``on_start`` and returns (start iteration, whether the run is
    already complete)."""
    start = 0
    checkpointer.remove_unfinished(log)
    latest = checkpointer.latest
    if latest is not None:
        if not resume:
            raise CheckpointError(
                f"{checkpointer.run_dir} already holds checkpoints ({os.path.basename(latest)}"
                "); pass `resume=True` to continue that run, or another `run_dir` for a new "
                "one. Nothing was overwritten.")
        problem = rundir.past_the_end(checkpoint_iteration(latest), total)
        if problem is not None:  # the command line refuses it before (tf_maml/runner.py)
            raise CheckpointError(
                f"`iterations`: the run in {checkpointer.run_dir} {problem}. Pass "
                f"`iterations={checkpoint_iteration(latest)}` or more to train it on, or "
                "another `run_dir` for a new run. Nothing was overwritten.")
        if checkpointer.weights_only(latest) and checkpoint_iteration(latest) >= total:
            # A finished zoo run: nothing left to train, so no optimizer state is needed.
            start = checkpointer.restore(latest, expect_optimizer=False)[0]
            log(f"Training already complete ({start}/{total} iterations; {latest} holds "
                "the weights only)")
            if on_start is not None:
                on_start()
            return start, True
        path, start, restored_changes = checkpointer.restore_latest_good(log)
        log(f"Resumed from {path} at iteration {start}")
        merged = dict((name, (old, new)) for name, old, new in restored_changes)
        merged.update((name, (old, new)) for name, old, new in changes)
        if merged:
            log(describe_changes([(n, o, w) for n, (o, w) in merged.items()], start))
    if on_start is not None:
        on_start()
    if start >= total:
        log(f"Training already complete ({start}/{total} iterations)")
        return start, True
    return start, False


def restore_for_test(checkpointer: Checkpointer, test_iter: int) -> tuple[str, int]:
    """The checkpoint evaluation uses: ``model-<test_iter>`` or the latest. A corrupt
    latest checkpoint is an error that names the newest readable one (`test_iter`): an
    evaluation must not silently report an older model."""
    run_dir = checkpointer.run_dir
    in_the_way = rundir.file_in_the_way(run_dir)
    if in_the_way:  # else "no checkpoint ... to evaluate. Train first", of a file
        what = (f"{run_dir} is a file, not a run directory" if in_the_way == run_dir else
                f"{run_dir} cannot be a run directory: {in_the_way} is a file, not a folder")
        raise CheckpointError(f"{what}, so there is no checkpoint to evaluate: give the "
                              "`logdir` training wrote the run into (or move that file away)")
    dangling = dangling_link_problem(run_dir)
    if dangling:  # else "no checkpoint ... to evaluate. Train first"
        raise CheckpointError(f"no checkpoint can be read in {run_dir}: {dangling}; mount or "
                              "create it, or give the `logdir` training wrote the run into")
    if test_iter > 0:
        path = checkpointer.path_for(test_iter)
    else:
        path = checkpointer.latest
        if path is None:
            raise CheckpointError(
                f"no checkpoint in {checkpointer.run_dir} to evaluate. Train first (the same "
                "settings with `train=True`), or check `logdir` and the settings that name "
                "the run directory (`train_update_batch_size`, `train_update_lr`, ...).")
    try:
        return path, checkpointer.restore(path, expect_optimizer=False)[0]
    except CorruptCheckpointError as err:
        # The damaged files are left as they are: a copy from a backup may mend them.
        mend = "replace the damaged file from a backup"
        if test_iter > 0:
            raise CorruptCheckpointError(f"{err}; {mend}, or give another `test_iter` "
                                         "(-1: the latest)") from err
        older = checkpointer.readable_before(checkpoint_iteration(path))
        fix = (f"`test_iter={checkpoint_iteration(older)}` evaluates the newest readable one "
               f"({os.path.basename(older)})" if older else
               f"no older checkpoint reads either: {mend}, or train again in another `logdir`")
        raise CorruptCheckpointError(f"{err}; {fix}") from err
