"""The meta-training loop: progress, TensorBoard summaries, checkpoints, resume, and a guard
against non-finite losses.

Console output follows the original (``Iteration i: <pre>, <post>`` every print interval,
means of the values sampled every 100 iterations; accuracies for classification, losses for
regression; ``Validation results: <pre>, <post>`` for image data), plus a progress line with
the speed and the time left.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tf_maml import distribute as distribute_lib
from tf_maml.config import MAX_TO_KEEP, SAVE_INTERVAL, SUMMARY_INTERVAL, Config
from tf_maml.learners import MetaLearner
from tf_maml.tasks import VAL_STREAM, task_stream

CHECKPOINT_NAME = "model"


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN or Inf during training."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, or does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read (truncated or damaged)."""


class Checkpointer:
    """θ, Adam's state (the original lost it on resume), Meta-SGD's α and the iteration, as
    ``<run_dir>/model-<iteration>``; the last ``MAX_TO_KEEP`` are kept.

    In multi-worker training every worker saves (saving distributed variables may involve
    collective ops), but only the chief into ``run_dir``: the others write to a scratch
    directory, removed by :meth:`close`. All workers restore from ``run_dir``.
    """

    def __init__(self, learner: MetaLearner, run_dir: str):
        self.learner = learner
        self.run_dir = run_dir
        self.chief = distribute_lib.is_chief(learner.strategy)
        self.saved_iteration: int | None = None  # of the checkpoint last saved or restored
        self.last_saved: str | None = None
        self._scratch: tf.train.CheckpointManager | None = None
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration")
        parts = {"model": learner.model, "optimizer": learner.optimizer,
                 "iteration": self.iteration}
        if learner.inner_lrs:
            parts["inner_lrs"] = list(learner.inner_lrs)
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, run_dir, max_to_keep=MAX_TO_KEEP, checkpoint_name=CHECKPOINT_NAME
        )

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self, iteration: int) -> str:
        self.iteration.assign(iteration)
        if self.chief:
            manager = self.manager
        else:
            if self._scratch is None:
                self._scratch = tf.train.CheckpointManager(
                    self.checkpoint, tempfile.mkdtemp(prefix="tf_maml_worker_"), max_to_keep=1,
                    checkpoint_name=CHECKPOINT_NAME)
            manager = self._scratch
        self.last_saved = manager.save(checkpoint_number=iteration)
        self.saved_iteration = iteration
        return self.last_saved

    def close(self) -> None:
        """Removes a non-chief worker's scratch checkpoints."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch.directory, ignore_errors=True)
            self._scratch = None

    def path_for(self, iteration: int) -> str:
        return os.path.join(self.run_dir, f"{CHECKPOINT_NAME}-{iteration}")

    def restore(self, path: str, expect_optimizer: bool = True) -> int:
        """Loads ``path``; returns its iteration. Fails clearly on a missing file or a
        checkpoint of another architecture."""
        if not tf.io.gfile.exists(path + ".index"):
            available = sorted(self.manager.checkpoints)
            raise CheckpointError(
                f"no checkpoint at {path} (available in {self.run_dir}: "
                f"{', '.join(os.path.basename(p) for p in available) or 'none'})"
            )
        try:
            status = self.checkpoint.read(path)
        except (tf.errors.OpError, IndexError) as err:
            # DataLossError, OutOfRangeError, a bare OpError ("file is too short to be an
            # sstable": a truncated .index), ... from the C++ reader; IndexError ("Read less
            # bytes than requested") from the Python one.
            detail = (getattr(err, "message", None) or str(err)).splitlines()[0]
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt or truncated: {detail}") from err
        except ValueError as err:  # a variable of another shape
            raise CheckpointError(
                f"checkpoint {path} does not fit this model ({err}); was it written with "
                "other --datasource/--num_classes/--num_filters/--norm/--conv flags? Use "
                "another --logdir for a new run."
            ) from err
        try:
            if expect_optimizer:
                status.assert_existing_objects_matched()
            else:
                status.expect_partial()
        except AssertionError as err:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model ({err}); was it written with "
                "other --datasource/--num_classes/--num_filters/--norm/--conv flags?"
            ) from err
        except (ValueError, tf.errors.InvalidArgumentError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {err}") from err
        self.saved_iteration = int(self.iteration.numpy())
        return self.saved_iteration

    def restore_latest_good(self, log=print) -> tuple[str, int]:
        """Restores the newest checkpoint that reads; a corrupt or truncated one (a crash or
        a full disk while it was written) is skipped with a warning and left in place."""
        for path in reversed(self.manager.checkpoints):
            try:
                return path, self.restore(path)
            except CorruptCheckpointError as err:
                log(f"WARNING: {err}; trying the previous checkpoint.")
        raise CheckpointError(f"no readable checkpoint in {self.run_dir}; move the run "
                              "directory away to start afresh.")


def restore_for_test(checkpointer: Checkpointer, test_iter: int) -> tuple[str, int]:
    """The checkpoint ``--train=False`` evaluates: ``model-<test_iter>`` or the latest."""
    if test_iter > 0:
        path = checkpointer.path_for(test_iter)
    else:
        path = checkpointer.latest
        if path is None:
            raise CheckpointError(
                f"no checkpoint in {checkpointer.run_dir} to evaluate. Train first (same flags "
                "with --train=True), or check --logdir and the flags that name the run "
                "directory (--train_update_batch_size, --train_update_lr, ...)."
            )
    return path, checkpointer.restore(path, expect_optimizer=False)


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Interrupted(Exception):
    pass


# ---------------------------------------------------------------------- callbacks
class Callback:
    """Hooks of :func:`fit`. ``metrics`` are the tensors a train step returned; fetching one
    (``float(...)``) waits for the step, so callbacks do it only at their interval."""

    def on_train_begin(self, learner: MetaLearner, start: int, total: int) -> None:
        pass

    def on_step_end(self, iteration: int, metrics: dict, pretrain: bool) -> None:
        pass

    def on_interrupt(self, iteration: int) -> None:
        pass

    def on_train_end(self, iteration: int) -> None:
        pass


class ProgressLogger(Callback):
    """The original's ``Iteration i: <pre>, <post>`` lines (means of the values sampled every
    ``summary_interval``; metric if the learner has one, else loss) plus speed and ETA."""

    def __init__(self, print_interval: int = 100, summary_interval: int = SUMMARY_INTERVAL,
                 log: Callable[[str], None] = print):
        self.print_interval, self.summary_interval, self.log = (
            print_interval, summary_interval, log)

    def on_train_begin(self, learner, start, total):
        self.key = "metric" if learner.metric_fn is not None else "loss"
        self.total, self.pre, self.post = total, [], []
        self.t_start = self.t_window = time.time()
        self.itr_window = start

    def on_step_end(self, iteration, metrics, pretrain):
        if iteration % self.summary_interval == 0 or iteration == self.total:
            self.pre.append(float(metrics[f"pre_{self.key}"]))
            self.post.append(float(metrics[f"post_{self.key}"]))
        if iteration % self.print_interval == 0 or iteration == self.total:
            prefix = "Pretrain Iteration" if pretrain else "Iteration"
            if self.pre:
                self.log(f"{prefix} {iteration}: {np.mean(self.pre)}, {np.mean(self.post)}")
            self.pre, self.post = [], []
            now = time.time()
            rate = (iteration - self.itr_window) / max(now - self.t_window, 1e-9)
            self.t_window, self.itr_window = now, iteration
            self.log(f"  [{iteration}/{self.total} {100.0 * iteration / self.total:.1f}%] "
                     f"{rate:.1f} it/s, elapsed {_format_duration(now - self.t_start)}, "
                     f"ETA {_format_duration((self.total - iteration) / max(rate, 1e-9))}")


class TensorBoard(Callback):
    """Scalars named as the original's summaries, every ``summary_interval`` iterations."""

    def __init__(self, logdir: str, num_updates: int, summary_interval: int = SUMMARY_INTERVAL):
        self.writer = tf.summary.create_file_writer(logdir)
        self.num_updates, self.summary_interval = num_updates, summary_interval

    def on_train_begin(self, learner, start, total):
        self.classification = learner.metric_fn is not None
        self.total = total

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        with self.writer.as_default(step=iteration):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def on_step_end(self, iteration, metrics, pretrain):
        if iteration % self.summary_interval and iteration != self.total:
            return
        j = self.num_updates
        values = {"metatrain_Pre-update loss": metrics["pre_loss"],
                  f"metatrain_Post-update loss, step {j}": metrics["post_loss"]}
        if self.classification:
            values["metatrain_Pre-update accuracy"] = metrics["pre_metric"]
            values[f"metatrain_Post-update accuracy, step {j}"] = metrics["post_metric"]
        self.scalars(iteration, values)

    def on_train_end(self, iteration):
        self.writer.flush()


class HistoryCSV(Callback):
    """``training_log.csv``: iteration, phase, pre, post, val_pre, val_post, seconds."""

    COLUMNS = ["iteration", "phase", "pre", "post", "val_pre", "val_post", "seconds"]

    def __init__(self, path: str, summary_interval: int = SUMMARY_INTERVAL):
        self.path, self.summary_interval = path, summary_interval

    def on_train_begin(self, learner, start, total):
        self.key = "metric" if learner.metric_fn is not None else "loss"
        self.total, self.t_start = total, time.time()
        new = not os.path.exists(self.path)
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 (closed in on_train_end)
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(self.COLUMNS)

    def row(self, iteration, phase, pre="", post="", val_pre="", val_post=""):
        self.writer.writerow([iteration, phase, pre, post, val_pre, val_post,
                              round(time.time() - self.t_start, 2)])

    def on_step_end(self, iteration, metrics, pretrain):
        if iteration % self.summary_interval == 0 or iteration == self.total:
            self.row(iteration, "pretrain" if pretrain else "metatrain",
                     float(metrics[f"pre_{self.key}"]), float(metrics[f"post_{self.key}"]))
        if iteration % SAVE_INTERVAL == 0:
            self.file.flush()

    def on_train_end(self, iteration):
        self.file.close()

    on_interrupt = on_train_end


class Validation(Callback):
    """``Validation results: <pre>, <post>`` on one meta-batch of validation tasks every
    ``interval`` iterations (the original's TEST_PRINT_INTERVAL), after ``num_steps``."""

    def __init__(self, batches, interval: int, num_steps: int, log=print,
                 tensorboard: TensorBoard | None = None, history: HistoryCSV | None = None):
        self.batches, self.interval, self.num_steps = batches, interval, num_steps
        self.log, self.tensorboard, self.history = log, tensorboard, history

    def on_train_begin(self, learner, start, total):
        self.learner = learner

    def on_step_end(self, iteration, metrics, pretrain):
        if iteration % self.interval:
            return
        out = self.learner.evaluate_batch(next(self.batches), self.num_steps)
        values = out["metric"] if "metric" in out else out["loss"]
        pre, post = float(np.mean(values[:, 0])), float(np.mean(values[:, -1]))
        self.log(f"Validation results: {pre}, {post}")
        if self.history is not None:
            self.history.row(iteration, "val", val_pre=pre, val_post=post)
        if self.tensorboard is not None:
            what = "accuracy" if "metric" in out else "loss"
            self.tensorboard.scalars(iteration, {
                f"metaval_Pre-update {what}": pre,
                f"metaval_Post-update {what}, step {self.num_steps}": post})


class CheckpointSaver(Callback):
    """Saves every ``interval`` iterations, at the end, and on Ctrl-C / SIGTERM."""

    def __init__(self, checkpointer: Checkpointer, interval: int = SAVE_INTERVAL,
                 log=print):
        self.checkpointer, self.interval, self.log = checkpointer, interval, log

    def on_step_end(self, iteration, metrics, pretrain):
        if iteration % self.interval == 0:
            self.checkpointer.save(iteration)

    def on_interrupt(self, iteration):
        path = self.checkpointer.save(iteration)
        if self.checkpointer.chief:
            self.log(f"Interrupted at iteration {iteration}: saved {path}; rerun the same "
                     "command (--resume=True) to continue.")

    def on_train_end(self, iteration):
        # Decided on iteration numbers only, so that all workers save together.
        if self.checkpointer.saved_iteration != iteration:
            self.checkpointer.save(iteration)
        if self.checkpointer.chief:
            self.log(f"Saved {self.checkpointer.last_saved or self.checkpointer.latest}")


# ---------------------------------------------------------------------- the loop
def fit(
    learner: MetaLearner,
    batches,
    total: int,
    start: int = 0,
    callbacks: list[Callback] = (),
    pretrain_iterations: int = 0,
    nan_policy: str = "stop",
    check_interval: int = SUMMARY_INTERVAL,
    checkpointer: Checkpointer | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Runs train steps ``start+1 .. total`` on the iterator ``batches``; returns the last
    completed iteration.

    Iterations below ``pretrain_iterations`` are pretraining steps. Every
    ``check_interval`` iterations the steps since the last check are inspected: a step whose
    loss or meta-gradient was not finite was not applied (see MetaLearner.apply_gradients);
    ``nan_policy="stop"`` then raises :class:`NonFiniteError` naming it. Ctrl-C and SIGTERM
    call ``on_interrupt`` (the checkpoint saver saves) and re-raise KeyboardInterrupt.
    """
    if nan_policy not in ("stop", "skip"):
        raise ValueError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")

    def on_sigterm(signum, frame):
        raise _Interrupted()

    previous_handler = None
    try:
        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        pass
    for cb in callbacks:
        cb.on_train_begin(learner, start, total)
    pending: list[tuple[int, dict]] = []
    done = start
    try:
        for itr in range(start, total):
            pretrain = itr < pretrain_iterations
            out = learner.train_step(next(batches), pretrain=pretrain)
            done = itr + 1
            pending.append((done, out))
            if done % check_interval == 0 or done == total:
                _check_finite(pending, checkpointer, nan_policy, log)
                pending.clear()
            for cb in callbacks:
                cb.on_step_end(done, out, pretrain)
    except (KeyboardInterrupt, _Interrupted):
        for cb in callbacks:
            cb.on_interrupt(done)
        raise KeyboardInterrupt from None
    except BaseException:
        for cb in callbacks:
            if isinstance(cb, HistoryCSV):
                cb.on_train_end(done)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    for cb in callbacks:
        cb.on_train_end(done)
    return done


def resume_or_start(latest: str | None, config, run_dir: str, restore, on_start=None,
                    log=print) -> tuple[int, bool]:
    """The start of a training run (supervised and RL alike): restores the latest
    checkpoint with ``restore() -> (path, iteration)`` if there is one and ``config.resume``
    allows it (else a CheckpointError: nothing is overwritten), calls ``on_start``, and
    returns (start iteration, whether the run is already complete)."""
    start = 0
    if latest is not None:
        if not config.resume:
            raise CheckpointError(
                f"{run_dir} already holds checkpoints ({os.path.basename(latest)}); "
                "pass --resume=True to continue that run, or another --logdir for a new one. "
                "Nothing was overwritten."
            )
        path, start = restore()
        log(f"Resumed from {path} at iteration {start}")
    if on_start is not None:
        on_start()
    total = config.total_iterations
    if start >= total:
        log(f"Training already complete ({start}/{total} iterations)")
        return start, True
    return start, False


def train(
    learner: MetaLearner,
    config: Config,
    run_dir: str,
    train_source,
    val_source=None,
    log: Callable[[str], None] = print,
    nan_policy: str = "stop",
    on_start: Callable[[], None] | None = None,
) -> int:
    """Meta-trains as the original's main.py until ``config.total_iterations``; returns the
    last iteration.

    Pretraining iterations (the pretrained/oracle baselines) come first, as the original.
    With ``config.resume`` the latest checkpoint in ``run_dir`` is restored, Adam state and
    iteration included, and the task stream continues where it stopped. ``on_start`` is
    called once that restore succeeded, before anything is written to ``run_dir``.

    Under a multi-worker strategy only the chief writes to ``run_dir`` (checkpoints,
    ``training_log.csv``, TensorBoard) and runs validation; every worker resumes from the
    checkpoints in ``run_dir``, which must therefore be on a file system they share.
    """
    checkpointer = Checkpointer(learner, run_dir)
    if checkpointer.chief:
        os.makedirs(run_dir, exist_ok=True)
    latest = checkpoint_iteration(checkpointer.latest) if checkpointer.latest else -1
    seen = distribute_lib.values_on_all_workers(learner.strategy, latest)
    if len(set(seen)) > 1:
        raise CheckpointError(
            f"the workers see different latest checkpoints in {run_dir} (iterations "
            f"{', '.join(map(str, seen))}; -1: none): every worker resumes from --logdir, so "
            "it must be a directory all of them share (NFS, a cloud bucket)."
        )
    start, done = resume_or_start(checkpointer.latest, config, run_dir,
                                  lambda: checkpointer.restore_latest_good(log), on_start, log)
    if done:
        return start
    total = config.total_iterations

    callbacks: list[Callback] = [ProgressLogger(config.print_interval, SUMMARY_INTERVAL, log)]
    if checkpointer.chief:
        history = HistoryCSV(os.path.join(run_dir, "training_log.csv"), SUMMARY_INTERVAL)
        tensorboard = (TensorBoard(run_dir, config.num_updates, SUMMARY_INTERVAL) if config.log
                       else None)
        callbacks.append(history)
        if tensorboard is not None:
            callbacks.append(tensorboard)
        if val_source is not None:
            val_batches = iter(task_stream(val_source, config.meta_batch_size, config.seed,
                                           start, VAL_STREAM))
            callbacks.append(Validation(val_batches, config.test_print_interval,
                                        config.num_updates, log, tensorboard, history))
    callbacks.append(CheckpointSaver(checkpointer, SAVE_INTERVAL, log))
    batches = distribute_lib.task_batches(learner.strategy, train_source,
                                          config.meta_batch_size, config.seed, start)
    try:
        return fit(learner, batches, total, start, callbacks,
                   pretrain_iterations=config.effective_pretrain_iterations,
                   nan_policy=nan_policy, check_interval=SUMMARY_INTERVAL,
                   checkpointer=checkpointer, log=log)
    finally:
        checkpointer.close()


def _check_finite(pending, checkpointer: Checkpointer | None, nan_policy: str, log) -> None:
    for iteration, out in pending:
        if bool(out["applied"]):
            continue
        last = (checkpointer.latest if checkpointer is not None else None) or "none yet"
        message = (
            f"Non-finite loss or meta-gradient at iteration {iteration}: that step was not "
            f"applied. Last good checkpoint: {last} (left intact). Lower --meta_lr or "
            "--update_lr, or check the data."
        )
        if nan_policy == "skip":
            log("WARNING: " + message + " Skipping it (--nan_policy=skip).")
            continue
        raise NonFiniteError(message)


def checkpoint_iteration(path: str) -> int:
    match = re.search(rf"{CHECKPOINT_NAME}-(\d+)$", path)
    return int(match.group(1)) if match else -1
