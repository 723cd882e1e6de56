"""Shared by tests/test_mapping_accumulate.py, tests/test_mapping_batched.py and
tests/test_fused_batch_norm.py: Keras' float policy for a test, and the small strided conv4
with batch norm (and its tasks) that test_mapping_accumulate.py and test_fused_batch_norm.py
both differentiate; by tests/test_zoo_check.py and tests/test_export.py: a folder that
refuses new files. Import the helpers with ``from conftest import ...`` (pytest puts tests/
on sys.path: it has no __init__.py)."""

import contextlib
import os
import tempfile

import keras
import numpy as np
import pytest

from tf_maml.models import conv4


@contextlib.contextmanager
def keras_float(dtype):
    """Keras' floatx and dtype policy set to ``dtype``; both restored on exit."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)


@pytest.fixture
def float64():
    """float64 Keras policy for the test (modules use it with ``pytest.mark.usefixtures``)."""
    with keras_float("float64"):
        yield


SMALL_CONV_SHAPE = (12, 12, 1)


def small_conv4():
    """conv4 with tf_maml.models.BatchNormalization (exact second derivatives), strided,
    4 filters, 5 ways, 12x12 inputs: 12 -> 6 -> 3 -> 2 -> 1."""
    return conv4(SMALL_CONV_SHAPE, 5, num_filters=4)


def five_way_batch(rng, shape=SMALL_CONV_SHAPE, tasks=3):
    """5-way 1-shot tasks with 2 queries per class, inputs uniform in [0, 1) as float64 (drawn
    support then query): (support_x, support_y, query_x, query_y)."""
    labels = np.tile(np.arange(5, dtype="int32"), (tasks, 1))
    return (rng.uniform(size=(tasks, 5) + shape), labels,
            rng.uniform(size=(tasks, 10) + shape), np.tile(labels, (1, 2)))


def refuse_files_below(monkeypatch, folder, code: int) -> None:
    """Makes a new file in ``folder`` (or below it) fail with the OSError ``code`` (EROFS: a
    read-only mount; EACCES: permissions), as the writability checks make one: as root,
    chmod cannot show it."""
    create = tempfile.TemporaryFile

    def refused(*args, dir=None, **kwargs):
        if dir is not None and os.path.realpath(dir).startswith(str(folder)):
            raise OSError(code, os.strerror(code))
        return create(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
