"""The training loop, :func:`fit`, and the run directory around it: one loop for supervised
MAML (the command line and ``MetaLearner.fit``), the baselines' pretraining and RL
(:mod:`tf_maml.rl.training`), which differ only in their batches and callbacks
(:mod:`tf_maml.callbacks`).

Layers, each calling the one below: :func:`fit_learner` (``MetaLearner.fit``: takes the run
directory's lock) and the command line's runner (:mod:`tf_maml.runner`, which takes it
itself) -> :func:`train` (a :class:`~tf_maml.protocols.TaskLearner` on a task source: the
supervised callbacks, autotuning) or :func:`tf_maml.rl.training.train` -> :func:`fit_in_run_dir`
(the one resume path, :mod:`tf_maml.checkpoint`) -> :func:`fit`. The lock
(:func:`tf_maml.rundir.lock`) is taken once, at the top: nothing below takes it again.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Sequence

from tf_maml import autotune, fit_record, rundir
from tf_maml import distribute as distribute_lib
from tf_maml import threads as threads_lib
from tf_maml.callbacks import (
    SAVE_INTERVAL,
    SUMMARY_INTERVAL,
    Callback,
    CheckpointSaver,
    HistoryCSV,
    NonFiniteError,
    NonFiniteGuard,
    ProgressLogger,
    TensorBoard,
    Validation,
)
from tf_maml.checkpoint import (
    Change,
    Checkpointer,
    CheckpointError,
    api_checkpointer,
    checkpoint_iteration,
    learner_checkpointer,
    resume_or_start,
)
from tf_maml.errors import BatchError, check_count, check_switch, tensorflow_pattern
from tf_maml.protocols import Learner, TaskLearner, TunableLearner
from tf_maml.tasks import VAL_STREAM, task_stream

__all__ = ["BatchError", "Callback", "NonFiniteError", "fit", "fit_in_run_dir", "fit_learner",
           "train"]

LOG_NAME = "training_log.csv"


def _last_checkpoint(callbacks: Sequence[Callback]) -> str | None:
    """The latest checkpoint of the run's saver among ``callbacks`` (None: no run directory,
    or nothing saved yet)."""
    savers = [cb for cb in callbacks if isinstance(cb, CheckpointSaver)]
    return savers[0].checkpointer.latest if savers else None


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
    learner: Learner,
    batches: Iterator,
    total: int,
    start: int = 0,
    callbacks: Sequence[Callback] = (),
    pretrain_iterations: int = 0,
) -> int:
    """Runs train steps ``start+1 .. total`` of ``learner`` on the iterator ``batches``
    (one element per step); returns the last completed iteration.

    Iterations below ``pretrain_iterations`` are pretraining steps. Ctrl-C and SIGTERM end
    the current step, call ``on_interrupt`` (the checkpoint saver saves) and raise
    KeyboardInterrupt; pressing Ctrl-C again meanwhile changes nothing. During
    ``on_train_end`` (the final save) they wait for it, then raise KeyboardInterrupt.
    ``batches`` running out ends training as its end does (``on_train_end``), then raises a
    ValueError saying so. Any other exception (:class:`NonFiniteError` from
    :class:`~tf_maml.callbacks.NonFiniteGuard`, ...) calls ``on_error`` and propagates.
    """
    for cb in callbacks:
        cb.on_train_begin(learner, start, total)
    done = start
    ran_out = False
    # The handlers stay inside the signals' block, so that the save on an interrupt is not
    # itself interrupted.
    with interrupt_at_step_end() as stop:
        try:
            for itr in range(start, total):
                pretrain = itr < pretrain_iterations
                try:
                    batch = next(batches)
                except StopIteration:  # a finite dataset: ends as training ends, then says so
                    ran_out = True
                    break
                for cb in callbacks:
                    cb.on_step_begin(itr + 1)
                try:
                    out = learner.train_step(batch, pretrain=pretrain)
                except BatchError as err:  # the step failed before the meta-update
                    last = _last_checkpoint(callbacks) or "none yet"
                    raise BatchError(f"the batch of iteration {itr + 1} cannot be trained on: "
                                     f"{err}. That step was not applied. Last good checkpoint: "
                                     f"{last} (left intact).") from None
                done = itr + 1
                for cb in callbacks:
                    cb.on_step_end(done, out, pretrain)
                stop.check()
        except KeyboardInterrupt:
            for cb in callbacks:
                cb.on_interrupt(done)
            raise
        except BaseException:
            for cb in callbacks:
                cb.on_error(done)
            raise
        # The final save too: a stop meanwhile waits for it, then ends the command (it
        # would cut the save short, losing the iterations since the last checkpoint).
        for cb in callbacks:
            cb.on_train_end(done)
    stop.check()
    if ran_out:
        raise ValueError(
            f"the batches ran out after iteration {done} of {total} (training up to it is "
            "kept): give one batch per iteration, e.g. a tf.data.Dataset with .repeat(), or "
            "fewer iterations")
    return done


# ---------------------------------------------------------------------- run directories
def fit_in_run_dir(
    learner: Learner,
    checkpointer: Checkpointer,
    batches_from: Callable[[int], Iterator],
    total: int,
    callbacks_from: Callable[[int], Sequence[Callback]],
    *,
    resume: bool = True,
    pretrain_iterations: int = 0,
    on_start: Callable[[], None] | None = None,
    changes: Sequence[Change] = (),
    log: Callable[[str], None] = print,
) -> int:
    """:func:`fit` in ``checkpointer.run_dir``, whose lock the caller holds (taken once, at
    the top of the run): restores the latest readable checkpoint if ``resume`` allows it
    (Adam state and iteration included; ``changes`` of the caller's settings are printed
    with the resume line), calls ``on_start`` once that succeeded, before anything else is
    written (a ``training_log.csv`` that is not a log is refused first:
    :func:`tf_maml.rundir.read_csv_up_to`), then trains from that iteration ``start`` to
    ``total`` on ``batches_from(start)`` with ``callbacks_from(start)``. Returns the last
    iteration.

    Every worker of a multi-worker run must see the same checkpoints (a shared file
    system); ``checkpointer`` is closed at the end.
    """
    try:
        if checkpointer.chief:  # refused before anything is written (config.json, plan.json)
            rundir.read_csv_up_to(os.path.join(checkpointer.run_dir, LOG_NAME), 0)
        latest = checkpointer.latest
        seen = distribute_lib.values_on_all_workers(
            learner.strategy, checkpoint_iteration(latest) if latest else -1)
        if len(set(seen)) > 1:
            raise CheckpointError(
                f"the workers see different latest checkpoints in {checkpointer.run_dir} "
                f"(iterations {', '.join(map(str, seen))}; -1: none): every worker resumes "
                "from `run_dir`, so it must be a directory all of them share (NFS, a cloud "
                "bucket).")
        start, done = resume_or_start(checkpointer, resume, total, on_start, log, changes)
        if done:
            return start
        callbacks = callbacks_from(start)
        return fit(learner, batches_from(start), total, start, callbacks, pretrain_iterations)
    finally:
        checkpointer.close()


def train(
    learner: TaskLearner,
    tasks,
    iterations: int,
    *,
    meta_batch_size: int,
    seed: int = 0,
    run_dir: str | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    pretrain_iterations: int = 0,
    nan_policy: str = "stop",
    tensorboard: bool = True,
    num_updates: int = 0,
    validation: tuple | None = None,
    pool: Callable[[Checkpointer], Callback] | None = None,
    on_start: Callable[[], None] | None = None,
    changes: Sequence[Change] = (),
    checkpointer_for: Callable[[TaskLearner, str], Checkpointer] = learner_checkpointer,
    log: Callable[[str], None] = print,
) -> int:
    """Trains ``learner`` for ``iterations`` meta-batches of ``meta_batch_size`` tasks
    drawn from ``tasks`` (a task source, ``sample_batch(n, rng)``, meta-batch i from the
    seed ``(seed, i)``; or an iterable of batches); returns the last iteration.

    ``callbacks`` run after the non-finite guard (``nan_policy``) and before the run
    directory's. With ``run_dir`` (whose lock the caller holds): resume
    (:func:`fit_in_run_dir`), ``training_log.csv`` and, with ``tensorboard``, TensorBoard
    scalars (named with ``num_updates`` inner steps), then, with ``validation``
    (``(val_source, interval)``), a meta-batch of validation tasks every ``interval``
    iterations (:class:`~tf_maml.callbacks.Validation`), then ``pool(checkpointer)`` (the
    ensemble's), then the checkpoint saver (``checkpointer_for(learner, run_dir)``'s: its
    messages speak the caller's terms). Under a multi-worker strategy only the chief writes
    to ``run_dir`` and validates; every worker saves (collective ops). With a task source the
    plan is autotuned first (:mod:`tf_maml.autotune`, cached in ``run_dir``).
    """
    guard = NonFiniteGuard(nan_policy, SUMMARY_INTERVAL, log=log)
    callbacks = [guard, *callbacks]

    def batches_from(start: int) -> Iterator:
        if not hasattr(tasks, "sample_batch"):
            return iter(tasks)
        chief = run_dir is not None and distribute_lib.is_chief(learner.strategy)
        autotune.tune(learner, tasks, meta_batch_size, seed, iterations - start,
                      run_dir if chief else None, pretrain=start < pretrain_iterations,
                      log=log)
        return distribute_lib.task_batches(learner.strategy, tasks, meta_batch_size, seed,
                                           start)

    if run_dir is None:
        return fit(learner, batches_from(0), iterations, 0, callbacks, pretrain_iterations)
    guard.checkpointer = checkpointer = checkpointer_for(learner, run_dir)

    def callbacks_from(start: int) -> list[Callback]:
        out = list(callbacks)
        if checkpointer.chief:
            history = HistoryCSV(os.path.join(run_dir, LOG_NAME), SUMMARY_INTERVAL)
            board = TensorBoard(run_dir, num_updates, SUMMARY_INTERVAL) if tensorboard \
                else None
            out += [history] + ([board] if board else [])
            if validation is not None:
                source, interval = validation
                batches = iter(task_stream(source, meta_batch_size, seed, start, VAL_STREAM))
                out.append(Validation(batches, interval, num_updates, log, board, history))
            if pool is not None:
                out.append(pool(checkpointer))
        # On every worker: saving may involve collective ops.
        return out + [CheckpointSaver(checkpointer, SAVE_INTERVAL, log)]

    return fit_in_run_dir(learner, checkpointer, batches_from, iterations, callbacks_from,
                          resume=resume, pretrain_iterations=pretrain_iterations,
                          on_start=on_start, changes=changes, log=log)


def fit_learner(learner: TunableLearner, tasks, iterations: int, *, meta_batch_size: int,
                seed: int, run_dir: str | None, resume: bool, callbacks: Sequence[Callback],
                log_interval: int | None, pretrain_iterations: int, nan_policy: str,
                log: Callable[[str], None]) -> int:
    """``MetaLearner.fit`` (see there for the arguments and their defaults): :func:`train`,
    holding ``run_dir``'s lock when it is given (only the chief of a multi-worker run
    writes there, so only it locks)."""
    # Else TensorFlow fails inside the first step, numpy inside the task stream, or a
    # negative count trains nothing without a word.
    check_count("meta_batch_size", meta_batch_size, 1, "a whole number of tasks")
    check_count("iterations", iterations, 0, "a whole number of meta-batches")
    check_count("pretrain_iterations", pretrain_iterations, 0, "a whole number")
    check_count("seed", seed, 0, "a whole number")
    if log_interval is not None:  # else "10" failed inside the loop, 2.5 printed at 5, 10, ...
        check_count("log_interval", log_interval, 0, "None or a whole number of iterations")
    check_switch("resume", resume)  # else resume="no" resumed
    if not callable(log):  # else a TypeError at the first line logged
        raise ValueError(f"log must be a function of one line (print, list.append, ...), got "
                         f"{log!r}")
    if not hasattr(tasks, "sample_batch") and (isinstance(tasks, (str, bytes))
                                               or not hasattr(tasks, "__iter__")):
        # Else a TypeError "... is not iterable" from deep inside the loop.
        raise ValueError(
            f"fit takes a task source (an object with sample_batch(meta_batch_size, rng), e.g. "
            f"tf_maml.SinusoidTasks) or a tf.data.Dataset / iterable of batches (support_x, "
            f"support_y, query_x, query_y), got {tasks!r:.60}")
    if not isinstance(callbacks, (list, tuple)) or not all(isinstance(cb, Callback)
                                                           for cb in callbacks):
        raise ValueError(f"callbacks must be a list of tf_maml.callbacks.Callback objects (Keras "
                         f"callbacks do not apply: fit is not Keras' fit), got {callbacks!r}")
    if run_dir is not None and (not isinstance(run_dir, (str, os.PathLike))
                                or not str(run_dir).strip()):
        # Else "could not create the run directory in : No such file ...; check , then ...".
        raise ValueError(f"run_dir must be the path of a folder (None: no run directory, "
                         f"nothing written), got {run_dir!r}")
    if run_dir is not None and tensorflow_pattern(os.fspath(run_dir)):
        raise ValueError(f"run_dir {tensorflow_pattern(os.fspath(run_dir))}")
    if hasattr(tasks, "sample_batch"):
        tasks = _check_memory(tasks, meta_batch_size, seed)
    callbacks = list(callbacks)
    if log_interval:
        callbacks.insert(0, ProgressLogger(log_interval, min(log_interval, 100), log))
    writes = run_dir is not None and distribute_lib.is_chief(learner.strategy)
    record = fit_record.settings(learner)
    with rundir.lock(run_dir, log) if writes else contextlib.nullcontext():
        if writes and resume:  # another experiment's options: refused before any restore
            fit_record.check_resume(run_dir, record)
        return train(learner, tasks, iterations, meta_batch_size=meta_batch_size, seed=seed,
                     run_dir=run_dir, resume=resume, callbacks=callbacks,
                     pretrain_iterations=pretrain_iterations, nan_policy=nan_policy,
                     num_updates=learner.inner_steps, checkpointer_for=api_checkpointer,
                     on_start=(lambda: fit_record.write(run_dir, record)) if writes else None,
                     log=log)


def _check_memory(tasks, meta_batch_size: int, seed: int):
    """A ValueError naming ``meta_batch_size`` if a meta-batch of ``tasks`` (a task source)
    could not fit in this machine's memory (:func:`tf_maml.threads.memory_problem`), told
    from one task sampled on a stream of its own, before anything else is sampled or
    written: else the system kills the process, which says nothing, while it samples the
    first meta-batch (the command line's check: :func:`tf_maml.runner.run`). Returns the
    source to train on: ``tasks``, or for a source with its own state, which ignores the
    generator it is given, ``tasks`` :class:`~tf_maml.tasks.Replayed` (the tasks the check
    drew, and autotune's, are the training's first: else they were lost to it)."""
    import numpy as np

    from tf_maml.tasks import Replayed, follows_its_generator

    def rng():
        return np.random.default_rng([seed, 0x4D454D])  # "MEM"

    task = tasks.sample_batch(1, rng())
    needed = meta_batch_size * sum(np.asarray(part).nbytes for part in task)
    problem = threads_lib.memory_problem(needed, f"a meta-batch of {meta_batch_size} tasks")
    if problem:
        raise ValueError(f"meta_batch_size={meta_batch_size}: {problem}; give a smaller "
                         "meta_batch_size (or smaller tasks)")
    follows, again = follows_its_generator(tasks, task, rng())
    return tasks if follows else Replayed(tasks, [task, again])
