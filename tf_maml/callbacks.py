"""The hooks of the training loop (:func:`tf_maml.train.fit`): progress lines, TensorBoard
scalars, the CSV log (``training_log.csv``), validation, the guard against non-finite steps
and the checkpoint saver; supervised training, the baselines' pretraining and RL
(:mod:`tf_maml.rl.training`) all write through them.

Console output follows the original (``Iteration i: <pre>, <post>`` every print interval,
means of the values sampled every 100 iterations; accuracies for classification, losses for
regression; ``Validation results: <pre>, <post>`` for image data), plus a progress line with
the speed and the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tf_maml.checkpoint import Checkpointer
from tf_maml.protocols import Learner, TaskLearner
from tf_maml.rundir import CSVLog

# The original's hard-coded intervals (main.py:73-80).
SUMMARY_INTERVAL = 100
SAVE_INTERVAL = 1000


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN or Inf during training."""


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Callback:
    """Hooks of :func:`fit`, called in the order of the callbacks. ``metrics`` are the
    tensors a train step returned; fetching one (``float(...)``) waits for the step, so
    callbacks do it only at their interval. ``iteration`` counts completed steps: step
    ``iteration`` runs between ``on_step_begin`` and ``on_step_end``."""

    def on_train_begin(self, learner: Learner, start: int, total: int) -> None:
        pass

    def on_step_begin(self, iteration: int) -> None:
        pass

    def on_step_end(self, iteration: int, metrics: dict, pretrain: bool) -> None:
        pass

    def on_interrupt(self, iteration: int) -> None:
        """Ctrl-C or SIGTERM ended training after ``iteration``."""

    def on_error(self, iteration: int) -> None:
        """An exception ended training after ``iteration``: release what is open, write
        nothing more."""

    def on_train_end(self, iteration: int) -> None:
        pass


class NonFiniteGuard(Callback):
    """Every ``interval`` iterations (and at the end) inspects the steps since the last
    check, so that it waits for no step in between: a step whose loss or meta-gradient was
    not finite was not applied (``applied`` False, see MetaLearner.apply_gradients).
    ``nan_policy="stop"`` then raises :class:`NonFiniteError` naming it and the last good
    checkpoint of ``checkpointer``; ``"skip"`` warns and goes on. Put it first: the check
    comes before the other callbacks see the step."""

    def __init__(self, nan_policy: str = "stop", interval: int = SUMMARY_INTERVAL,
                 checkpointer: Checkpointer | None = None, log: Callable[[str], None] = print):
        if nan_policy not in ("stop", "skip"):
            raise ValueError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")
        self.nan_policy, self.interval = nan_policy, interval
        self.checkpointer, self.log = checkpointer, log

    def on_train_begin(self, learner, start, total):
        self.total, self.pending = total, []

    def on_step_end(self, iteration, metrics, pretrain):
        self.pending.append((iteration, metrics["applied"]))
        if iteration % self.interval == 0 or iteration == self.total:
            pending, self.pending = self.pending, []
            for step, applied in pending:
                if not bool(applied):
                    self._report(step)

    def _report(self, iteration: int) -> None:
        last = (self.checkpointer.latest if self.checkpointer is not None else None) \
            or "none yet"
        message = (
            f"Non-finite loss or meta-gradient at iteration {iteration}: that step was not "
            f"applied. Last good checkpoint: {last} (left intact). Lower `meta_lr` or "
            "`inner_lr`, or check the data."
        )
        if self.nan_policy == "stop":
            raise NonFiniteError(message)
        self.log("WARNING: " + message + " Skipping it (`nan_policy=skip`).")


class ProgressLogger(Callback):
    """The original's ``Iteration i: <pre>, <post>`` lines (means of the values sampled every
    ``summary_interval``; metric if the learner has one, else loss) plus speed and ETA."""

    def __init__(self, print_interval: int = 100, summary_interval: int = SUMMARY_INTERVAL,
                 log: Callable[[str], None] = print):
        self.print_interval, self.summary_interval, self.log = (
            print_interval, summary_interval, log)

    def on_train_begin(self, learner: TaskLearner, start, total):
        self.key = "metric" if learner.metric_fn is not None else "loss"
        self.total, self.pre, self.post = total, [], []
        self.t_start = self.t_window = time.monotonic()
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
            now = time.monotonic()
            rate = (iteration - self.itr_window) / max(now - self.t_window, 1e-9)
            self.t_window, self.itr_window = now, iteration
            self.log(f"  [{iteration}/{self.total} {100.0 * iteration / self.total:.1f}%] "
                     f"{rate:.1f} it/s, elapsed {_format_duration(now - self.t_start)}, "
                     f"ETA {_format_duration((self.total - iteration) / max(rate, 1e-9))}")


class TensorBoard(Callback):
    """Scalars every ``summary_interval`` iterations (and at the end): the metrics ``keys``
    under their own names, or without ``keys`` a :class:`TaskLearner`'s named as the
    original's summaries (``num_updates``: the inner steps, in the names)."""

    def __init__(self, logdir: str, num_updates: int = 0,
                 summary_interval: int = SUMMARY_INTERVAL, keys: tuple[str, ...] = ()):
        self.writer = tf.summary.create_file_writer(logdir)
        self.num_updates, self.summary_interval, self.keys = (num_updates, summary_interval,
                                                              tuple(keys))

    def on_train_begin(self, learner, start, total):
        if not self.keys:
            self.classification = learner.metric_fn is not None
        self.total = total

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        with self.writer.as_default(step=iteration):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def on_step_end(self, iteration, metrics, pretrain):
        if iteration % self.summary_interval and iteration != self.total:
            return
        if self.keys:
            self.scalars(iteration, {key: metrics[key] for key in self.keys})
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


class CSVHistory(Callback):
    """A CSV log of ``columns`` (:class:`~tf_maml.rundir.CSVLog`): a row of
    :meth:`fields` every ``interval`` iterations and at the end, each iteration once (a
    resumed run first drops the rows after the iteration it resumes from: they are written
    again). ``t_start``: when this session began; ``t_step``: when the current step did."""

    def __init__(self, path: str, columns, interval: int):
        self.columns, self.interval = list(columns), interval
        self.log = CSVLog(path, self.columns)

    def on_train_begin(self, learner, start, total):
        self.total, self.t_start = total, time.monotonic()
        self.log.start(start)

    def on_step_begin(self, iteration):
        self.t_step = time.monotonic()

    def fields(self, iteration: int, metrics: dict, pretrain: bool) -> dict:
        raise NotImplementedError

    def write(self, fields: dict) -> None:
        """One row: ``fields`` by column, empty where missing."""
        self.log.row([fields.get(column, "") for column in self.columns])

    def on_step_end(self, iteration, metrics, pretrain):
        if iteration % self.interval == 0 or iteration == self.total:
            self.write(self.fields(iteration, metrics, pretrain))

    def on_train_end(self, iteration):
        self.log.close()

    on_interrupt = on_error = on_train_end


class HistoryCSV(CSVHistory):
    """``training_log.csv`` of a :class:`TaskLearner`: iteration, phase, pre, post, val_pre,
    val_post, seconds (since the session began); the train rows every
    ``summary_interval`` iterations, the validation rows from :class:`Validation`."""

    COLUMNS = ["iteration", "phase", "pre", "post", "val_pre", "val_post", "seconds"]

    def __init__(self, path: str, summary_interval: int = SUMMARY_INTERVAL):
        super().__init__(path, self.COLUMNS, summary_interval)

    def on_train_begin(self, learner: TaskLearner, start, total):
        self.key = "metric" if learner.metric_fn is not None else "loss"
        super().on_train_begin(learner, start, total)

    def row(self, iteration, phase, pre="", post="", val_pre="", val_post=""):
        self.write({"iteration": iteration, "phase": phase, "pre": pre, "post": post,
                    "val_pre": val_pre, "val_post": val_post,
                    "seconds": round(time.monotonic() - self.t_start, 2)})

    def fields(self, iteration, metrics, pretrain):
        return {"iteration": iteration, "phase": "pretrain" if pretrain else "metatrain",
                "pre": float(metrics[f"pre_{self.key}"]),
                "post": float(metrics[f"post_{self.key}"]),
                "seconds": round(time.monotonic() - self.t_start, 2)}


class Validation(Callback):
    """``Validation results: <pre>, <post>`` on one meta-batch of validation tasks every
    ``interval`` iterations (the original's TEST_PRINT_INTERVAL), after ``num_steps``."""

    def __init__(self, batches, interval: int, num_steps: int, log=print,
                 tensorboard: TensorBoard | None = None, history: HistoryCSV | None = None):
        self.batches, self.interval, self.num_steps = batches, interval, num_steps
        self.log, self.tensorboard, self.history = log, tensorboard, history

    def on_train_begin(self, learner: TaskLearner, start, total):
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
            self.log(f"Interrupted at iteration {iteration}: saved {path}; run the same "
                     "command again to continue.")

    def on_train_end(self, iteration):
        # Decided on iteration numbers only, so that all workers save together.
        if self.checkpointer.saved_iteration != iteration:
            self.checkpointer.save(iteration)
        if self.checkpointer.chief:
            self.log(f"Saved {self.checkpointer.last_saved or self.checkpointer.latest}")
