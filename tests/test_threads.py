"""tf_maml.threads: intra-op threads set before TensorFlow's first op (fresh processes, since
TensorFlow's threads cannot change once it runs), and the flags' checks."""

import os
import subprocess
import sys

import pytest

from tf_maml.config import Config, ConfigError

CHILD = """
import os, sys
import tensorflow as tf
from tf_maml.threads import available_cores, configure_threads
every_core = sorted(os.sched_getaffinity(0))
for case in sys.argv[1:]:  # cores,flag[,tasks]: no op runs, so the threads can still be set
    cores, flag, *tasks = (int(v) for v in case.split(","))
    os.sched_setaffinity(0, set(every_core[-cores:]))
    tf.config.threading.set_intra_op_parallelism_threads(0)  # the previous case's setting
    got = configure_threads(flag, tasks[0] if tasks else None)
    print(available_cores(), got, tf.config.threading.get_intra_op_parallelism_threads())
"""


def _children(*cases):
    """Each case (cores, flag[, tasks]) in one fresh process, in which TensorFlow never runs
    an op: its threads can be set again and again there, as in a fresh process each."""
    args = [",".join(str(v) for v in case) for case in cases]
    out = subprocess.run([sys.executable, "-c", CHILD, *args], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [tuple(int(v) for v in line.split()) for line in out.splitlines()[-len(cases):]]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_auto_is_one_thread_on_several_cores_and_default_on_one():
    assert _children((2, -1), (1, -1), (2, 0), (2, 3), (2, -1, 4), (2, -1, 3)) == [
        (2, 1, 1),  # CPU-only, 2 cores: 1 intra-op thread
        (1, 0, 0),  # one core: TensorFlow's default (0) kept
        (2, 0, 0),  # 0: TensorFlow's default
        (2, 3, 3),
        (2, 1, 1),  # MiniImageNet's 4 tasks: 2 per core
        (2, 0, 0),  # fewer: cores would idle, TensorFlow's default
    ]


@pytest.mark.parametrize("field, value", [("parallel_chunks", -1), ("intra_op_threads", -2)])
def test_bad_thread_flags_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        Config(datasource="sinusoid", **{field: value}).validate()


ALLOCATOR_CHILD = """
import keras, tensorflow as tf
import tf_maml
from tf_maml.threads import configure_threads, onednn_enabled, pool_tensors_without_onednn
configure_threads()
x = tf.random.normal([256, 256]) @ tf.random.normal([256, 256])
try:  # TensorFlow keeps statistics for pooling allocators only (BFC, oneDNN's), not malloc
    tf.config.experimental.get_memory_info("CPU:0")
    pooled = True
except ValueError:
    pooled = False
print(onednn_enabled(), pool_tensors_without_onednn(), pooled)
"""


@pytest.mark.parametrize("env, expected", [
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "False True True"),  # Eigen kernels: BFC turned on
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, "True False True"),  # oneDNN pools its own tensors
    ({"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPU_ALLOCATOR_USE_BFC": "false"}, "False False False"),
])
def test_tensors_are_pooled_where_onednn_is_off_unless_the_user_says_otherwise(env, expected):
    """configure_threads, after importing what the command imports and before the first op,
    turns on TensorFlow's BFC allocator exactly where oneDNN is off; TensorFlow's allocator
    statistics (kept only by pooling allocators) show which allocator the tensors came from."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC")}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_CHILD], check=True,
                         capture_output=True, text=True, timeout=120, env={**base, **env})
    assert out.stdout.split("\n")[-2] == expected, out.stdout + out.stderr


MALLOC_CHILD = """
import ctypes, resource, sys
import numpy as np
import tensorflow as tf
from tf_maml.tasks import task_stream

class Source:  # the smallest task source: one number per task
    def sample_batch(self, meta_batch_size, rng):
        return (np.zeros([meta_batch_size, 1], np.float32),)

if sys.argv[1] == "tf_maml":
    next(iter(task_stream(Source(), 2, seed=0)))
# TensorFlow's generator dataset alone (the control), or a second one after tf_maml's
ds = tf.data.Dataset.from_generator(lambda: iter([1]), output_signature=tf.TensorSpec([], tf.int32))
next(iter(ds))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 4 << 20  # a 4 MB temporary, like a convolution's packing buffer
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults_of_50_buffers(after):
    out = subprocess.run([sys.executable, "-c", MALLOC_CHILD, after], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_buffers_are_reused_after_the_task_stream_is_built():
    pages = 50 * (4 << 20) // os.sysconf("SC_PAGE_SIZE")
    # TensorFlow's generator dataset alone: each 4 MB buffer is mapped and faulted in anew.
    assert _faults_of_50_buffers("tensorflow") > pages // 2
    # tf_maml's task stream undoes that, for good: the buffer is faulted in once, then reused.
    assert _faults_of_50_buffers("tf_maml") < pages // 10


def test_the_task_stream_trains_on_the_batch_it_reads_its_shapes_from():
    # The stream drew batch `start` once for its shapes and again for the training: a task
    # source that ignores the generator it is given (its own state: a queue, a file of
    # tasks) lost a whole meta-batch, and every source drew batch `start` twice.
    import numpy as np

    from tf_maml.tasks import task_stream

    class Counted:  # task i is the number i, whatever the generator
        drawn = 0

        def sample_batch(self, meta_batch_size, rng):
            first, self.drawn = self.drawn, self.drawn + meta_batch_size
            return (np.arange(first, self.drawn, dtype=np.float32)[:, None],)

    batches = [b[0].numpy().ravel().tolist() for b in task_stream(Counted(), 2, 0).take(3)]
    assert batches == [[0, 1], [2, 3], [4, 5]]
