"""CPU threads and memory: how many cores this process has and which processor it is,
TensorFlow's intra-op threads, its CPU allocator where oneDNN is off, and glibc's malloc
thresholds after TensorFlow's generator-dataset patch."""

from __future__ import annotations

import ctypes
import os
import sys

from tf_maml.errors import is_count

# glibc's mallopt parameters (malloc.h) and the values its adaptive rule converges to on a
# 64-bit machine once large buffers have been freed: mmap only above 32 MB
# (DEFAULT_MMAP_THRESHOLD_MAX), trim the heap top above twice that.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


_generator_patch_undone = False


def undo_generator_malloc_patch() -> bool:
    """Gives glibc's malloc back large thresholds after TensorFlow's generator-dataset patch
    (call it when building a ``tf.data.Dataset.from_generator``); returns whether it could
    (glibc only).

    When the first generator dataset of a process starts, TensorFlow calls
    ``mallopt(M_TRIM_THRESHOLD, 128 KB)`` (once). A fixed trim threshold also switches off
    glibc's adaptive mmap threshold, which stays at 128 KB: every larger buffer malloc'd
    outside TensorFlow's allocators (the Eigen kernels' packing buffers, used when oneDNN is
    off, e.g. on AVX2-only processors) is then mmap'd, page-faulted and unmapped, hundreds of
    times per meta-step (docs/performance.md). So: make TensorFlow apply its patch now, with
    a one-element generator dataset, then fix both thresholds at the values glibc's adaptive
    rule converges to, and such buffers are reused from the heap.
    """
    global _generator_patch_undone
    if _generator_patch_undone:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing was patched
        return False
    import tensorflow as tf

    if not tf.executing_eagerly():  # e.g. a dataset function traced in a graph: next time
        return False
    one = tf.data.Dataset.from_generator(lambda: iter([0]),
                                         output_signature=tf.TensorSpec([], tf.int32))
    next(iter(one))  # TensorFlow's mallopt runs here, when the iterator starts
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _generator_patch_undone = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
                                   and mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_BYTES))
    return _generator_patch_undone


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN kernels in this process: its own decision (on by
    default only with AVX-512 VNNI/BF16 or AMX; ``TF_ENABLE_ONEDNN_OPTS`` overrides), read
    through its private ``IsMklEnabled``; None where that is not available."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    is_enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return bool(is_enabled()) if is_enabled is not None else None


_BFC_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
_bfc_set_here = False


def pool_tensors_without_onednn() -> bool:
    """Where TensorFlow's oneDNN kernels are off (every AVX2-only x86-64 processor), turns
    on its BFC allocator for CPU tensors, before its first op; returns whether this process
    did (now or before). A value the user set is left as it is.

    Without oneDNN, tensors come from plain ``malloc``, and glibc maps every buffer above its
    mmap ceiling (32 MB on 64-bit, not raisable) afresh: MiniImageNet's first-layer maps of
    75 query images are 68 MB each, mapped, page-faulted and unmapped on every step. The
    BFC pool reuses them: the MiniImageNet meta-step 24% faster and its system CPU 5x lower
    with oneDNN off (docs/performance.md). With oneDNN on, its own pooling allocator
    already does this, and BFC cost 3.5% user CPU there, so it is left off.
    """
    global _bfc_set_here
    if not _bfc_set_here and _BFC_VARIABLE not in os.environ and onednn_enabled() is False:
        os.environ[_BFC_VARIABLE] = "true"  # read when TensorFlow makes its CPU allocator
        _bfc_set_here = True
    return _bfc_set_here


def physical_memory() -> int | None:
    """Bytes of this machine's memory (RAM); None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


# The memory limit of this process's container (cgroup v2, then v1): a container (Docker's
# --memory, a Kubernetes pod, a CI job) sees the host's RAM in sysconf, but is killed at
# its limit, without a word.
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max",
                        "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def container_memory() -> int | None:
    """Bytes of this process's container memory limit; None if there is none (``max``, or
    v1's "unlimited", a number above any machine's) or the system does not say."""
    for path in CGROUP_MEMORY_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() and int(text) < 2**60 else None
    return None


def memory_problem(needed: int, what: str) -> str | None:
    """Why ``what``, which holds at least ``needed`` bytes at once, cannot run here: more
    than this machine's memory (or its container's limit, if lower), where the system kills
    the process without a word (the command line's and ``MetaLearner.fit``'s checks, each
    with its own fix); None if it may fit, or the system does not say how much memory it
    has."""
    memory, limit = physical_memory(), container_memory()
    if limit and (not memory or limit < memory):
        have = f"the {limit / 2**30:.1f} GB this container may use (its cgroup memory limit)"
        memory = limit
    elif memory:
        have = f"this machine's {memory / 2**30:.1f} GB"
    if not memory or needed <= memory:
        return None
    return (f"{what} would take at least {needed / 2**30:.1f} GB of memory, more than {have}: "
            "the system would kill the process without a word")


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
    """Sets TensorFlow's intra-op threads before its first op (and its CPU allocator where
    oneDNN is off: :func:`pool_tensors_without_onednn`); returns the number of threads set
    (0: left at TensorFlow's default). -1: 1 on a CPU-only machine with several cores, if
    the meta-batch (when given) has at least 2 tasks per core; else TensorFlow's default.

    A meta-step there is many small ops: split over 2 cores each (TensorFlow's default),
    they wait on each other; run whole (one thread each) while ``parallel_chunks`` chunks
    of tasks run side by side, one per core, the same meta-step ran 7-27% faster
    (Omniglot, MiniImageNet; README, Performance). With fewer chunks than cores (many
    cores, few tasks) whole ops would leave cores idle, so the default is kept there.
    """
    import tensorflow as tf

    if not is_count(intra_op_threads, -1):  # else -5 set nothing and 2.5 failed in TF
        raise ValueError(f"intra_op_threads must be -1 (auto), 0 (TensorFlow's default) or a "
                         f"whole number of threads, got {intra_op_threads!r}")
    pool_tensors_without_onednn()
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


# The vector extensions that decide which kernels TensorFlow runs (oneDNN is on by default
# only with AVX-512 VNNI/BF16 or AMX) and how fast they are.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` ("model name", "cpu family",
    "flags", ...); empty where there is no such file."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_identity() -> dict:
    """This processor as far as speed goes: its model name with family and model numbers
    (a virtual machine may call Zen 3 and Zen 5 alike "AMD EPYC"), the vector extensions
    among :data:`VECTOR_FLAGS` it has (``/proc/cpuinfo`` on Linux) and the cores this
    process may use."""
    fields = cpuinfo()
    model = fields.get("model name", "")
    if not model:
        import platform

        model = platform.processor() or platform.machine()
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    return {"model": model, "isa": [f for f in VECTOR_FLAGS if f in flags],
            "cores": available_cores()}
