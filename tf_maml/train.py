"""The meta-training loop: train steps, callbacks, the guard against non-finite losses, and
Ctrl-C / SIGTERM; plus the two ways into it, :func:`train` (a :class:`Config`, the command
line) and :func:`fit_learner` (``MetaLearner.fit``), which share the run directory's rules
(:mod:`tf_maml.rundir`) and the one resume path (:mod:`tf_maml.checkpoint`).
"""

from __future__ import annotations

import contextlib
import numbers
import os
import signal
from collections.abc import Callable, Iterator, Sequence

from tf_maml import autotune, rundir
from tf_maml import distribute as distribute_lib
from tf_maml.callbacks import (SAVE_INTERVAL, SUMMARY_INTERVAL, Callback, CheckpointSaver,
                               HistoryCSV, ProgressLogger, TensorBoard, Validation)
from tf_maml.checkpoint import (Change, Checkpointer, CheckpointError, checkpoint_iteration,
                                learner_checkpointer, resume_or_start)
from tf_maml.config import Config
from tf_maml.tasks import VAL_STREAM, task_stream

LOG_NAME = "training_log.csv"


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN or Inf during training."""


class StopRequest:
    """Set by Ctrl-C or SIGTERM (a scheduler's stop); the loop checks it after every step."""

    requested = False

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_at_step_end() -> Iterator[StopRequest]:
    """Inside the block Ctrl-C (SIGINT) and SIGTERM stop training at the end of the current
    step, where the loop's interrupt handling saves a checkpoint: the handler only sets a
    flag, since an exception raised at an arbitrary point inside TensorFlow's Python code
    may be swallowed there, and a second Ctrl-C during the save would cut it short."""
    stop = StopRequest()

    def on_signal(signum, frame):
        stop.requested = True

    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    except ValueError:  # not the main thread: signals keep their handlers
        pass
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------- the loop
def fit(
    learner,
    batches,
    total: int,
    start: int = 0,
    callbacks: Sequence[Callback] = (),
    pretrain_iterations: int = 0,
    nan_policy: str = "stop",
    check_interval: int = SUMMARY_INTERVAL,
    checkpointer: Checkpointer | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Runs train steps ``start+1 .. total`` of ``learner`` (a MetaLearner) on the iterator
    ``batches``; returns the last completed iteration.

    Iterations below ``pretrain_iterations`` are pretraining steps. Every
    ``check_interval`` iterations the steps since the last check are inspected: a step whose
    loss or meta-gradient was not finite was not applied (see MetaLearner.apply_gradients);
    ``nan_policy="stop"`` then raises :class:`NonFiniteError` naming it. Ctrl-C and SIGTERM
    end the current step, call ``on_interrupt`` (the checkpoint saver saves) and raise
    KeyboardInterrupt; pressing Ctrl-C again meanwhile changes nothing.
    """
    if nan_policy not in ("stop", "skip"):
        raise ValueError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")
    for cb in callbacks:
        cb.on_train_begin(learner, start, total)
    pending: list[tuple[int, dict]] = []
    done = start
    # The handlers stay inside the signals' block, so that the save on an interrupt is not
    # itself interrupted.
    with interrupt_at_step_end() as stop:
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
                stop.check()
        except KeyboardInterrupt:
            for cb in callbacks:
                cb.on_interrupt(done)
            raise
        except BaseException:
            for cb in callbacks:
                if isinstance(cb, HistoryCSV):
                    cb.on_train_end(done)
            raise
    for cb in callbacks:
        cb.on_train_end(done)
    return done


def _check_finite(pending, checkpointer: Checkpointer | None, nan_policy: str, log) -> None:
    for iteration, out in pending:
        if bool(out["applied"]):
            continue
        last = (checkpointer.latest if checkpointer is not None else None) or "none yet"
        message = (
            f"Non-finite loss or meta-gradient at iteration {iteration}: that step was not "
            f"applied. Last good checkpoint: {last} (left intact). Lower `meta_lr` or "
            "`inner_lr`, or check the data."
        )
        if nan_policy == "skip":
            log("WARNING: " + message + " Skipping it (`nan_policy=skip`).")
            continue
        raise NonFiniteError(message)


# ---------------------------------------------------------------------- run directories
def _start(learner, run_dir: str, resume: bool, total: int, on_start, log,
           changes: Sequence[Change] = ()) -> tuple[Checkpointer, int, bool]:
    """The checkpointer of ``run_dir`` and where training starts (the one resume path);
    every worker of a multi-worker run must see the same checkpoints."""
    checkpointer = learner_checkpointer(learner, run_dir)
    latest = checkpointer.latest
    seen = distribute_lib.values_on_all_workers(
        learner.strategy, checkpoint_iteration(latest) if latest else -1)
    if len(set(seen)) > 1:
        raise CheckpointError(
            f"the workers see different latest checkpoints in {run_dir} (iterations "
            f"{', '.join(map(str, seen))}; -1: none): every worker resumes from `run_dir`, so "
            "it must be a directory all of them share (NFS, a cloud bucket).")
    start, done = resume_or_start(checkpointer, resume, total, on_start, log, changes)
    return checkpointer, start, done


def _lock(learner, run_dir: str, log):
    """The run directory's lock; in multi-worker training only the chief writes there."""
    if distribute_lib.is_chief(learner.strategy):
        return rundir.lock(run_dir, log)
    return contextlib.nullcontext()


def _run_dir_callbacks(checkpointer: Checkpointer, run_dir: str, num_updates: int,
                       tensorboard: bool, log) -> list[Callback]:
    """The callbacks that write into ``run_dir``: the CSV log and TensorBoard (on the chief
    only), and the checkpoint saver (on every worker: saving may involve collective ops)."""
    callbacks: list[Callback] = []
    if checkpointer.chief:
        callbacks.append(HistoryCSV(os.path.join(run_dir, LOG_NAME), SUMMARY_INTERVAL))
        if tensorboard:
            callbacks.append(TensorBoard(run_dir, num_updates, SUMMARY_INTERVAL))
    callbacks.append(CheckpointSaver(checkpointer, SAVE_INTERVAL, log))
    return callbacks


def train(
    learner,
    config: Config,
    run_dir: str,
    train_source,
    val_source=None,
    log: Callable[[str], None] = print,
    on_start: Callable[[], None] | None = None,
    changes: Sequence[Change] = (),
    pool_source=None,
    eval_batch: int = 25,
) -> int:
    """Meta-trains ``learner`` as the original's main.py until ``config.total_iterations``;
    returns the last iteration.

    With ``config.ensemble`` and a ``pool_source`` (validation tasks as the ensemble's
    selection draws them), every epoch of MAML++ is validated on ``config.num_test_tasks``
    of them, ``eval_batch`` at a time, and the best checkpoints are kept
    (:class:`tf_maml.ensemble.Pool`).

    Pretraining iterations (the pretrained/oracle baselines) come first, as the original.
    With ``config.resume`` the latest readable checkpoint in ``run_dir`` is restored, Adam
    state and iteration included, and the task stream continues where it stopped;
    ``changes`` (of the config since the last run) are printed with the resume line.
    ``on_start`` is called once that restore succeeded, before anything else is written to
    ``run_dir``.

    Under a multi-worker strategy only the chief writes to ``run_dir`` (checkpoints,
    ``training_log.csv``, TensorBoard) and runs validation; every worker resumes from the
    checkpoints in ``run_dir``, which must therefore be on a file system they share.
    """
    with _lock(learner, run_dir, log):
        checkpointer, start, done = _start(learner, run_dir, config.resume,
                                           config.total_iterations, on_start, log, changes)
        if done:
            return start
        callbacks: list[Callback] = [ProgressLogger(config.print_interval, SUMMARY_INTERVAL,
                                                    log)]
        callbacks += _run_dir_callbacks(checkpointer, run_dir, config.num_updates,
                                        config.log, log)
        if val_source is not None and checkpointer.chief:
            history = next((c for c in callbacks if isinstance(c, HistoryCSV)), None)
            tensorboard = next((c for c in callbacks if isinstance(c, TensorBoard)), None)
            val_batches = iter(task_stream(val_source, config.meta_batch_size, config.seed,
                                           start, VAL_STREAM))
            validation = Validation(val_batches, config.test_print_interval,
                                    config.num_updates, log, tensorboard, history)
            callbacks.insert(len(callbacks) - 1, validation)  # before the saver, as before
        if config.ensemble and pool_source is not None and checkpointer.chief:
            callbacks.insert(len(callbacks) - 1, _ensemble_pool(
                learner, config, checkpointer, pool_source, eval_batch, log))
        autotune.tune(learner, train_source, config.meta_batch_size, config.seed,
                      config.total_iterations - start, run_dir if checkpointer.chief else None,
                      pretrain=start < config.effective_pretrain_iterations, log=log)
        batches = distribute_lib.task_batches(learner.strategy, train_source,
                                              config.meta_batch_size, config.seed, start)
        try:
            return fit(learner, batches, config.total_iterations, start, callbacks,
                       pretrain_iterations=config.effective_pretrain_iterations,
                       nan_policy=config.nan_policy, check_interval=SUMMARY_INTERVAL,
                       checkpointer=checkpointer, log=log)
        finally:
            checkpointer.close()


def _ensemble_pool(learner, config: Config, checkpointer: Checkpointer, source,
                   batch_size: int, log) -> Callback:
    from tf_maml import ensemble
    from tf_maml import evaluate as evaluate_lib

    steps, tasks = config.test_num_updates, config.num_test_tasks

    def score() -> float:
        values = evaluate_lib.evaluate(learner, source, tasks, steps,
                                       ensemble.VALIDATION_SEED, batch_size=batch_size)
        return ensemble.score(values, steps)

    return ensemble.Pool(checkpointer, score, config.ensemble, tasks, steps, log=log)


def fit_learner(learner, tasks, iterations: int, *, meta_batch_size: int, seed: int,
                run_dir: str | None, resume: bool, callbacks: Sequence[Callback],
                log_interval: int | None, pretrain_iterations: int, nan_policy: str,
                log: Callable[[str], None]) -> int:
    """``MetaLearner.fit`` (see there for the arguments and their defaults): the loop of
    :func:`fit`, with a run directory's lock, resume, checkpoints and log when ``run_dir``
    is given."""
    if isinstance(meta_batch_size, bool) or not isinstance(meta_batch_size, numbers.Integral) \
            or meta_batch_size < 1:  # else TensorFlow fails inside the first step
        raise ValueError(f"meta_batch_size must be a whole number of tasks >= 1, got "
                         f"{meta_batch_size}")
    callbacks = list(callbacks)
    if log_interval:
        callbacks.insert(0, ProgressLogger(log_interval, min(log_interval, 100), log))
    with contextlib.ExitStack() as stack:
        start, checkpointer = 0, None
        if run_dir is not None:
            stack.enter_context(_lock(learner, run_dir, log))
            checkpointer, start, done = _start(learner, run_dir, resume, iterations, None, log)
            stack.callback(checkpointer.close)
            if done:
                return start
            callbacks += _run_dir_callbacks(checkpointer, run_dir, learner.inner_steps, True,
                                            log)
        if hasattr(tasks, "sample_batch"):
            autotune.tune(learner, tasks, meta_batch_size, seed, iterations - start,
                          run_dir if checkpointer is None or checkpointer.chief else None,
                          pretrain=start < pretrain_iterations, log=log)
            batches = distribute_lib.task_batches(learner.strategy, tasks, meta_batch_size,
                                                  seed, start)
        else:
            batches = iter(tasks)
        return fit(learner, batches, iterations, start, callbacks,
                   pretrain_iterations=pretrain_iterations, nan_policy=nan_policy,
                   checkpointer=checkpointer, log=log)
