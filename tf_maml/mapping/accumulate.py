"""Meta-gradients accumulated over the tasks of a meta-batch, one chunk of tasks at a time.

The other mappings differentiate the mean query loss of the WHOLE meta-batch with one outer
tape, so the activations (and, second order, the recorded inner gradients) of every task
and every inner step are alive at once when the backward pass starts: for MiniImageNet
(4 tasks x 5 steps x 75 query images of 84x84) that is gigabytes. Here a ``tf.while_loop``
runs over chunks of tasks; each iteration takes the learner's meta-gradient of its chunk
(its own outer tape, the chunk's tasks run by an inner mapping: one task through the model
itself, or several through :mod:`tf_maml.mapping.batched`), and adds it, weighted by
chunk / T, to an accumulator. Only one chunk's tape is alive at a time, as in a PyTorch
loop that calls ``backward()`` task by task.

Because the meta-objective is a mean of per-task terms, the weighted sum of the chunks'
mean gradients is the gradient of the mean (Finn et al. 2017, eq. 1-2, the gradient of
Σ_i L_i); only the order of float additions differs from the other mappings.
``tests/test_mapping_accumulate.py`` checks that against the unrolled per-task loop.
"""

from __future__ import annotations

import tensorflow as tf

from tf_maml.mapping.base import Mapping


class Accumulate(Mapping):
    """Meta-gradients chunk by chunk: ``tasks_per_chunk`` tasks (dividing the meta-batch)
    per ``tf.while_loop`` iteration, run by ``inner`` (a per-task or batched mapping);
    ``parallel_chunks`` iterations may run at once (``parallel_iterations``): only the
    accumulator additions are sequential, in chunk order, so the result does not depend
    on it."""

    def __init__(self, inner, tasks_per_chunk: int = 1, parallel_chunks: int = 1):
        self.inner = inner
        self.tasks_per_chunk = int(tasks_per_chunk)
        self.parallel_chunks = max(int(parallel_chunks), 1)
        chunk = self.tasks_per_chunk
        self.name = (f"accumulate ({chunk} task{'s' if chunk > 1 else ''}/chunk"
                     f"{', batched' if inner.name == 'batched' else ''}"
                     f"{f', {self.parallel_chunks} at once' if self.parallel_chunks > 1 else ''})")

    def mean_gradients(self, gradients_fn, batch, variables, signature):
        """The mean over the batch of ``gradients_fn(chunk, self.inner)``'s (gradients,
        metrics), one chunk of tasks at a time; ``variables`` and ``signature`` give the
        accumulators' shapes and dtypes."""
        batch = tuple(tf.convert_to_tensor(t) for t in batch)
        num_tasks = batch[0].shape[0]
        chunk = self.tasks_per_chunk
        if chunk > 1 and (num_tasks is None or num_tasks % chunk):
            raise ValueError(f"tasks_per_chunk={chunk} must divide the number of tasks "
                             f"({num_tasks})")
        if num_tasks is None:
            num_tasks = tf.shape(batch[0])[0]
        num_chunks = num_tasks // chunk

        def share(dtype):
            """This chunk's weight in the mean over the meta-batch, chunk / T, in ``dtype``
            (a Python float through tf.cast would be rounded to float32 first)."""
            if isinstance(num_tasks, int):
                return tf.constant(chunk / num_tasks, dtype)
            return tf.cast(chunk, dtype) / tf.cast(num_tasks, dtype)

        def body(i, grads_acc, metrics_acc):
            part = tuple(tf.ensure_shape(t[i * chunk:(i + 1) * chunk], [chunk] + t.shape[1:])
                         for t in batch)
            grads, metrics = gradients_fn(part, self.inner)
            grads_acc = [a + g * share(g.dtype) for a, g in zip(grads_acc, grads)]
            metrics_acc = {k: metrics_acc[k] + tf.cast(metrics[k], metrics_acc[k].dtype)
                           * share(metrics_acc[k].dtype) for k in metrics_acc}
            return i + 1, grads_acc, metrics_acc

        grads0 = [tf.zeros(v.shape, v.dtype) for v in variables]
        metrics0 = {k: tf.zeros([], spec.dtype) for k, spec in signature.items()}
        # parallel_iterations=1: the next chunk starts only after this one's backward pass,
        # so one chunk's activations are alive at a time; p: up to p chunks run at once (one
        # per core: on 2 cores 1.45-1.6x faster, with p chunks' activations alive).
        _, grads, metrics = tf.while_loop(
            lambda i, *_: i < num_chunks, body, (tf.constant(0), grads0, metrics0),
            parallel_iterations=self.parallel_chunks,
        )
        return list(grads), dict(metrics)
