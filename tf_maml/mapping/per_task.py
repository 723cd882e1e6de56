"""One task at a time through the Keras model: an unrolled loop, ``tf.map_fn`` or
``tf.vectorized_map`` over the task axis.

``"loop"`` is the straightforward reference (the tests check every other mapping against
it); ``"map"`` runs tasks in parallel iterations of a ``tf.map_fn`` (convolutional and
recurrent nets: per-task filter gradients and RNN while loops have no vectorised kernel);
``"vectorized"`` turns the per-task graph into batched ops with ``pfor`` (dense nets,
fastest for them). Each task keeps its own batch-norm statistics and fast weights.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_maml.mapping.base import Mapping, model_runner, task_and_seed

MODES = ("loop", "map", "vectorized")


class PerTask(Mapping):
    """Maps a task function over the tasks of a batch, one task each call.

    ``parallel_iterations`` (``"map"`` only): tasks in flight at once; None: all of them.
    """

    def __init__(self, model: keras.Model, mode: str, parallel_iterations: int | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model, self.mode, self.parallel_iterations = model, mode, parallel_iterations
        self.name = mode

    def map(self, fn, batch, signature):
        """``fn(task, runner)`` for every task, its outputs stacked on a leading task axis.
        ``signature``: the structure of ``fn``'s output (``tf.map_fn`` needs it)."""
        runner = model_runner(self.model)

        def task_fn(task):
            task, seed = task_and_seed(task)  # (a seeded task: its own runner, see Mapping)
            return fn(task, runner if seed is None else model_runner(self.model, seed))

        num_tasks = batch[0].shape[0]
        if self.mode == "vectorized":
            return tf.vectorized_map(task_fn, batch, fallback_to_while_loop=True)
        if self.mode == "map":
            parallel = self.parallel_iterations or num_tasks or 10
            return tf.map_fn(task_fn, batch, fn_output_signature=signature,
                             parallel_iterations=parallel)
        if num_tasks is None:
            raise ValueError("task_parallelism='loop' needs a static number of tasks")
        outs = [task_fn(tuple(t[i] for t in batch)) for i in range(num_tasks)]
        return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outs)
