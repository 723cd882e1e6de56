"""tf_maml.threads: intra-op threads set before TensorFlow's first op (fresh processes, since
TensorFlow's threads cannot change once it runs), and the flags' checks."""

import os
import subprocess
import sys

import pytest

from tf_maml.config import Config, ConfigError

CHILD = """
import os, sys
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[-int(sys.argv[1]):]))
import tensorflow as tf
from tf_maml.threads import available_cores, configure_threads
got = configure_threads(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
print(available_cores(), got, tf.config.threading.get_intra_op_parallelism_threads())
"""


def _child(cores, flag, tasks=None):
    args = [str(cores), str(flag)] + ([] if tasks is None else [str(tasks)])
    out = subprocess.run([sys.executable, "-c", CHILD, *args], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return tuple(int(v) for v in out.split()[-3:])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_auto_is_one_thread_on_several_cores_and_default_on_one():
    assert _child(2, -1) == (2, 1, 1)  # CPU-only, 2 cores: 1 intra-op thread
    assert _child(1, -1) == (1, 0, 0)  # one core: TensorFlow's default (0) kept
    assert _child(2, 0) == (2, 0, 0)  # 0: TensorFlow's default
    assert _child(2, 3) == (2, 3, 3)
    assert _child(2, -1, 4) == (2, 1, 1)  # MiniImageNet's 4 tasks: 2 per core
    assert _child(2, -1, 3) == (2, 0, 0)  # fewer: cores would idle, TensorFlow's default


@pytest.mark.parametrize("field, value", [("parallel_chunks", -1), ("intra_op_threads", -2)])
def test_bad_thread_flags_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        Config(datasource="sinusoid", **{field: value}).validate()
