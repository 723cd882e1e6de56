"""Task sources. Each has ``sample_batch(meta_batch_size, rng)`` returning numpy
``(support_x, support_y, query_x, query_y)`` with the task on the leading axis."""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from tf_maml.errors import check_count
from tf_maml.threads import undo_generator_malloc_patch

# AUTOTUNE_STREAM: the batch plans are timed on at the start of training (tf_maml.autotune),
# drawn from its own stream so that the training tasks are the same with or without it.
TRAIN_STREAM, VAL_STREAM, AUTOTUNE_STREAM = 0, 1, 3  # 2: evaluation (tf_maml.evaluate)


def batch_rng(seed: int, index: int, stream: int = TRAIN_STREAM) -> np.random.Generator:
    """The generator of meta-batch ``index`` of stream ``stream`` seeded ``seed``.

    Every batch has its own generator, so a run resumed at iteration i draws exactly the
    tasks an uninterrupted run would have drawn from i on; training, validation and test
    tasks come from different streams.
    """
    # Else numpy's "expected non-negative integer", naming no argument, and 2.5 taken as 2.
    check_count("seed", seed, 0, "a whole number")
    check_count("index", index, 0, "a whole number of meta-batches")
    check_count("stream", stream, 0, "a whole number")
    return np.random.default_rng([int(seed), int(index), int(stream)])


def task_stream(source, meta_batch_size: int, seed: int, start: int = 0,
                stream: int = TRAIN_STREAM) -> tf.data.Dataset:
    """Endless prefetching tf.data stream of meta-batches ``start, start+1, ...``."""
    example = source.sample_batch(meta_batch_size, batch_rng(seed, start, stream))
    signature = tuple(tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in example)
    # The batch the shapes are read from is batch `start` itself, trained on, not drawn
    # again: a source that ignores the generator (its own state: a queue, a file of tasks)
    # would lose it, and every source drew it twice. Only the stream's first iterator
    # takes it (a second one, e.g. a repeated dataset, draws it again from its generator).
    first = [example]

    def generate():
        for i in itertools.count(start):
            yield first.pop() if first and i == start else source.sample_batch(
                meta_batch_size, batch_rng(seed, i, stream))

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    undo_generator_malloc_patch()  # its mallopt made every step mmap
    return ds.prefetch(4)


def stream_of(rng) -> int | None:
    """The stream of a generator :func:`batch_rng` made (from its seed ``[seed, index,
    stream]``); None for any other generator."""
    entropy = getattr(getattr(rng, "bit_generator", None), "seed_seq", None)
    entropy = getattr(entropy, "entropy", None)
    return entropy[2] if isinstance(entropy, list) and len(entropy) == 3 else None


def follows_its_generator(source, first, rng: np.random.Generator) -> tuple[bool, tuple]:
    """Whether the task source ``source`` draws its tasks from the generator it is given
    (as tf_maml's do: the same generator, the same tasks), and the task that tells: one
    drawn from ``rng``, a new generator of the seed that ``first`` (a batch of one task)
    was drawn with, which such a source gives again. A source with its own state (a
    queue, a file of tasks read in order) gives another."""
    again = source.sample_batch(1, rng)
    same = all(np.array_equal(np.asarray(a), np.asarray(b),
                              equal_nan=np.asarray(a).dtype.kind in "fc")
               for a, b in zip(first, again))
    return same, again


class Replayed:
    """A task source with its own state (not :func:`follows_its_generator`) whose draws
    for anything but the training (a check's, autotune's: generators of other streams than
    :data:`TRAIN_STREAM`, or none of :func:`batch_rng`) are kept and handed to the training
    first, in the order drawn: else the training never saw those tasks. ``drawn``: the
    batches drawn from it so far. Any other attribute is the source's."""

    def __init__(self, source, drawn):
        self.source, self._kept = source, list(drawn)

    def __getattr__(self, name):
        if name == "source":  # not set yet (a copy being made): not the source's own
            raise AttributeError(name)
        return getattr(self.source, name)

    def sample_batch(self, meta_batch_size: int, rng: np.random.Generator):
        if stream_of(rng) != TRAIN_STREAM:
            batch = self.source.sample_batch(meta_batch_size, rng)
            self._kept.append(batch)
            return batch
        parts, need = [], meta_batch_size
        while need and self._kept:
            kept = self._kept[0]
            parts.append(tuple(np.asarray(part)[:need] for part in kept))
            left = tuple(np.asarray(part)[need:] for part in kept)
            need -= len(parts[-1][0])
            if len(left[0]):
                self._kept[0] = left
            else:
                self._kept.pop(0)
        if need:
            parts.append(self.source.sample_batch(need, rng))
        return tuple(np.concatenate(part, axis=0) for part in zip(*parts))
