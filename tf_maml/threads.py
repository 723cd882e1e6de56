"""CPU threads: how many cores this process has, and TensorFlow's intra-op threads."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def has_accelerator() -> bool:
    """Whether TensorFlow sees a GPU or TPU (physical devices: safe before its first op)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def configure_threads(intra_op_threads: int = -1, meta_batch_size: int | None = None) -> int:
    """Sets TensorFlow's intra-op threads before its first op; returns the number set (0:
    left at TensorFlow's default). -1: 1 on a CPU-only machine with several cores, if the
    meta-batch (when given) has at least 2 tasks per core; else TensorFlow's default.

    A meta-step there is many small ops: split over 2 cores each (TensorFlow's default),
    they wait on each other; run whole (one thread each) while ``parallel_chunks`` chunks
    of tasks run side by side, one per core, the same meta-step ran 7-27% faster
    (Omniglot, MiniImageNet; README, Performance). With fewer chunks than cores (many
    cores, few tasks) whole ops would leave cores idle, so the default is kept there.
    """
    import tensorflow as tf

    threads = intra_op_threads
    if threads == -1:
        cpu_only = not has_accelerator()
        cores = available_cores()
        enough_tasks = meta_batch_size is None or meta_batch_size >= 2 * cores
        threads = 1 if cpu_only and cores > 1 and enough_tasks else 0
    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already running (e.g. a second run in-process)
            return 0
    return threads
