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
import signal
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tf_maml.config import MAX_TO_KEEP, SAVE_INTERVAL, SUMMARY_INTERVAL, Config
from tf_maml.learners import MetaLearner
from tf_maml.tasks import VAL_STREAM, task_stream

CHECKPOINT_NAME = "model"


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN or Inf during training."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, or does not fit the model."""


class Checkpointer:
    """θ, Adam's state (the original lost it on resume), Meta-SGD's α and the iteration, as
    ``<run_dir>/model-<iteration>``; the last ``MAX_TO_KEEP`` are kept."""

    def __init__(self, learner: MetaLearner, run_dir: str):
        self.learner = learner
        self.run_dir = run_dir
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
        return self.manager.save(checkpoint_number=iteration)

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
        status = self.checkpoint.read(path)
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
        return int(self.iteration.numpy())


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


def train(
    learner: MetaLearner,
    config: Config,
    run_dir: str,
    train_source,
    val_source=None,
    log: Callable[[str], None] = print,
    nan_policy: str = "stop",
) -> int:
    """Meta-trains until ``config.total_iterations``; returns the last iteration.

    Pretraining iterations (the pretrained/oracle baselines) come first, as the original.
    With ``config.resume`` the latest checkpoint in ``run_dir`` is restored, Adam state and
    iteration included, and the task stream continues where it stopped.
    """
    os.makedirs(run_dir, exist_ok=True)
    checkpointer = Checkpointer(learner, run_dir)
    start = 0
    if checkpointer.latest is not None:
        if not config.resume:
            raise CheckpointError(
                f"{run_dir} already holds checkpoints ({os.path.basename(checkpointer.latest)}); "
                "pass --resume=True to continue that run, or another --logdir for a new one. "
                "Nothing was overwritten."
            )
        start = checkpointer.restore(checkpointer.latest)
        log(f"Resumed from {checkpointer.latest} at iteration {start}")
    total = config.total_iterations
    if start >= total:
        log(f"Training already complete ({start}/{total} iterations)")
        return start

    writer = tf.summary.create_file_writer(run_dir) if config.log else None
    history_path = os.path.join(run_dir, "training_log.csv")
    new_history = not os.path.exists(history_path)
    history = open(history_path, "a", newline="")
    history_writer = csv.writer(history)
    if new_history:
        history_writer.writerow(["iteration", "phase", "pre", "post", "val_pre", "val_post",
                                 "seconds"])
    metric_name = "accuracy" if learner.metric_fn is not None else "loss"
    stream = iter(task_stream(train_source, config.meta_batch_size, config.seed, start))
    val_stream = (iter(task_stream(val_source, config.meta_batch_size, config.seed, start,
                                   VAL_STREAM)) if val_source is not None else None)

    # SIGTERM behaves like Ctrl-C: save a checkpoint, then stop.
    def on_sigterm(signum, frame):
        raise _Interrupted()

    previous_handler = None
    try:
        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        pass

    pre_values: list[float] = []
    post_values: list[float] = []
    pending: list[tuple[int, dict]] = []
    t_start = time.time()
    t_window, itr_window = t_start, start
    done = start
    try:
        for itr in range(start, total):
            pretrain = itr < config.effective_pretrain_iterations
            out = learner.train_step(next(stream), pretrain=pretrain)
            done = itr + 1
            pending.append((done, out))
            if done % SUMMARY_INTERVAL == 0 or done == total:
                _check_finite(pending, checkpointer, nan_policy, log)
                pending.clear()
                key = "metric" if learner.metric_fn is not None else "loss"
                pre, post = float(out[f"pre_{key}"]), float(out[f"post_{key}"])
                pre_values.append(pre)
                post_values.append(post)
                if writer is not None:
                    _write_summaries(writer, "metatrain_", out, config, done, learner)
                history_writer.writerow([done, "pretrain" if pretrain else "metatrain",
                                         pre, post, "", "", round(time.time() - t_start, 2)])
            if done % config.print_interval == 0 or done == total:
                prefix = "Pretrain Iteration" if pretrain else "Iteration"
                if pre_values:
                    log(f"{prefix} {done}: {np.mean(pre_values)}, {np.mean(post_values)}")
                pre_values, post_values = [], []
                now = time.time()
                rate = (done - itr_window) / max(now - t_window, 1e-9)
                t_window, itr_window = now, done
                log(f"  [{done}/{total} {100.0 * done / total:.1f}%] {rate:.1f} it/s, "
                    f"elapsed {_format_duration(now - t_start)}, "
                    f"ETA {_format_duration((total - done) / max(rate, 1e-9))}")
            if val_stream is not None and (done % config.test_print_interval == 0):
                val = learner.evaluate_batch(next(val_stream), config.num_updates)
                values = val["metric"] if "metric" in val else val["loss"]
                val_pre = float(np.mean(values[:, 0]))
                val_post = float(np.mean(values[:, -1]))
                log(f"Validation results: {val_pre}, {val_post}")
                history_writer.writerow([done, "val", "", "", val_pre, val_post,
                                         round(time.time() - t_start, 2)])
                if writer is not None:
                    with writer.as_default(step=done):
                        tf.summary.scalar(f"metaval_Pre-update {metric_name}", val_pre)
                        tf.summary.scalar(
                            f"metaval_Post-update {metric_name}, step {config.num_updates}",
                            val_post)
            if done % SAVE_INTERVAL == 0:
                history.flush()
                checkpointer.save(done)
    except (KeyboardInterrupt, _Interrupted):
        path = checkpointer.save(done)
        log(f"Interrupted at iteration {done}: saved {path}; rerun the same command "
            "(--resume=True) to continue.")
        raise KeyboardInterrupt from None
    finally:
        history.close()
        if writer is not None:
            writer.flush()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    if checkpointer.latest != checkpointer.path_for(done):
        checkpointer.save(done)
    log(f"Saved {checkpointer.latest}")
    return done


def _check_finite(pending, checkpointer: Checkpointer, nan_policy: str, log) -> None:
    for iteration, out in pending:
        if bool(out["applied"]):
            continue
        last = checkpointer.latest or "none yet"
        message = (
            f"Non-finite loss or meta-gradient at iteration {iteration}: that step was not "
            f"applied. Last good checkpoint: {last} (left intact). Lower --meta_lr or "
            "--update_lr, or check the data."
        )
        if nan_policy == "skip":
            log("WARNING: " + message + " Skipping it (--nan_policy=skip).")
            continue
        raise NonFiniteError(message)


def _write_summaries(writer, prefix: str, out: dict, config: Config, step: int,
                     learner: MetaLearner) -> None:
    """Scalars named as the original's summaries."""
    with writer.as_default(step=step):
        tf.summary.scalar(f"{prefix}Pre-update loss", out["pre_loss"])
        tf.summary.scalar(f"{prefix}Post-update loss, step {config.num_updates}", out["post_loss"])
        if learner.metric_fn is not None:
            tf.summary.scalar(f"{prefix}Pre-update accuracy", out["pre_metric"])
            tf.summary.scalar(
                f"{prefix}Post-update accuracy, step {config.num_updates}", out["post_metric"])


def checkpoint_iteration(path: str) -> int:
    match = re.search(rf"{CHECKPOINT_NAME}-(\d+)$", path)
    return int(match.group(1)) if match else -1
