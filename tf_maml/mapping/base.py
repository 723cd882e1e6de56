"""What every task mapping shares: the layout of a batch of tasks, its check, and the
:class:`Runner` through which a task function runs its task (or its stack of tasks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import tensorflow as tf

from tf_maml import adapt as adapt_lib

# A batch of tasks: (support_x, support_y, query_x, query_y), the task on the leading axis.
Batch = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]
BATCH_NAMES = ("support_x", "support_y", "query_x", "query_y")


@dataclass(frozen=True)
class Runner:
    """How a task function runs what a mapping hands it: one task, or a stack of tasks.

    ``forward(weights, x)`` is the forward pass for :func:`tf_maml.adapt.adapt`;
    ``weights(theta)`` lays out θ as ``forward`` takes it (θ itself, or one copy per task);
    ``per_task(fn)`` turns a loss or metric of ONE task into one over what is run (``fn``
    itself, or one value per task); ``split``: ``forward`` cut before the head, for ANIL's
    inner loop (:class:`tf_maml.adapt.Split`; None: the model cannot be cut); ``penalty``:
    the weight penalty R of weights laid out as ``forward`` takes them, one value per task
    run (:func:`tf_maml.adapt.weight_penalty`; None: the model has no regularizer).
    """

    forward: adapt_lib.ForwardFn
    weights: Callable[[list[tf.Tensor]], list[tf.Tensor]]
    per_task: Callable[[Callable], Callable]
    split: adapt_lib.Split | None = None
    penalty: adapt_lib.PenaltyFn | None = None


class Mapping:
    """What a task mapping offers; ``name`` says which it is, in words.

    ``map(fn, batch, signature)`` runs a task function ``fn(task, runner)`` over the tasks of
    ``batch`` and returns its outputs stacked on a leading task axis (``signature``: their
    structure, for ``tf.map_fn``). ``batch`` may carry a fifth tensor, every task's seed
    ``[T, 2]`` (meta-training a model with random layers, e.g. dropout): the mapping hands
    a task's seed to its runner (:func:`model_runner`), ``fn`` the task's four tensors
    (:func:`task_and_seed`). ``mean_gradients(gradients_fn, batch, variables,
    signature)`` returns the mean over the batch of ``gradients_fn(tasks, mapping)``'s
    (meta-gradients, metrics), where ``gradients_fn`` differentiates under its own outer
    tape what ``mapping.map`` computes for ``tasks``; by default every task under one tape.
    """

    name = ""

    def map(self, fn, batch, signature):
        raise NotImplementedError(f"the {self.name} mapping runs meta-gradients only")

    def mean_gradients(self, gradients_fn, batch, variables, signature):
        del variables, signature  # no accumulator: one tape over the whole batch
        return gradients_fn(batch, self)


def model_runner(model: keras.Model, seed: tf.Tensor | None = None) -> Runner:
    """One task through the Keras model itself (:func:`tf_maml.adapt.forward`). With the
    task's ``seed``, its random layers (dropout) draw a fresh mask at every forward pass
    (:func:`tf_maml.adapt.seeded_forward`), and the model runs whole at every inner step:
    ANIL's features cached once would hold one mask for all steps. Without, they draw
    nothing."""
    if seed is not None:
        return Runner(forward=adapt_lib.seeded_forward(model, seed), weights=list,
                      per_task=lambda fn: fn, split=None,
                      penalty=adapt_lib.weight_penalty(model))
    return Runner(forward=lambda weights, x: adapt_lib.forward(model, weights, x),
                  weights=list, per_task=lambda fn: fn, split=adapt_lib.model_split(model),
                  penalty=adapt_lib.weight_penalty(model))


def task_and_seed(task: Sequence) -> tuple[tuple, tf.Tensor | None]:
    """A task as a mapping hands it to a task function (its four tensors), and its seed
    (the optional fifth, see :class:`Mapping`; None without)."""
    task = tuple(task)
    return task[:4], (task[4] if len(task) > 4 else None)


def per_task_values(fn, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """[T] values of a per-task loss or metric ``fn(y_true_t, y_pred_t) -> scalar``.

    ``fn.per_task(y_true, y_pred) -> [T]``, if the function has it, computes all tasks at
    once; otherwise tf.vectorized_map turns the (simple) loss into a few batched ops over
    the task axis. (Under XLA, the gradient of the vectorized loss makes every variable a
    compile-time constant, i.e. a recompilation after each meta-update; a ``per_task``
    attribute avoids that.)
    """
    per_task = getattr(fn, "per_task", None)
    if per_task is not None:
        return per_task(y_true, y_pred)
    return tf.vectorized_map(lambda args: fn(args[0], args[1]), (y_true, y_pred))


def num_tasks(batch: Sequence) -> int | tf.Tensor:
    """The number of tasks of a batch: static if known, else a scalar tensor."""
    first = tf.convert_to_tensor(batch[0])
    return first.shape[0] if first.shape[0] is not None else tf.shape(first)[0]


def model_example_shape(model: keras.Model) -> tuple | None:
    """The shape of one example the model takes (None dims unknown), or None if the model
    does not say (several inputs, or a subclassed model without an input shape)."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if not isinstance(shape, tuple) or any(isinstance(d, (tuple, list)) for d in shape):
        return None
    return tuple(shape[1:])


def check_batch(batch, where: str, example_shape: tuple | None = None
                ) -> tuple[tf.Tensor, ...]:
    """``batch`` as 4 tensors, or a ValueError saying what is wrong with it (checked on the
    static shapes, so before any tracing). ``example_shape``: what one example of x must
    look like (the model's input shape without the batch axis; None dims match any)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 4:
        got = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
               else f"a {type(batch).__name__}")
        raise ValueError(f"{where} expects a batch (support_x, support_y, query_x, query_y) "
                         f"with the task on the leading axis, got {got}")
    tensors = tuple(tf.convert_to_tensor(t) for t in batch)
    shapes = {name: t.shape for name, t in zip(BATCH_NAMES, tensors)}
    for name, shape in shapes.items():
        if shape.rank is not None and shape.rank < 2:
            raise ValueError(f"{where}: {name} has shape {shape}; expected [tasks, examples, "
                             "...] (the task on the leading axis)")
        if shape.rank is not None and shape[1] == 0:  # the loss would be a NaN or a 0
            raise ValueError(f"{where}: {name} has shape {shape}, no examples per task; every "
                             "task needs at least one support and one query example")
    support_y, query_y = shapes["support_y"], shapes["query_y"]
    if support_y.rank is not None and query_y.rank is not None and \
            not support_y[2:].is_compatible_with(query_y[2:]):
        raise ValueError(f"{where}: support_y has shape {support_y} but query_y {query_y}; "
                         "the targets of one example must have one shape in both sets")
    tasks = {name: shape[0] for name, shape in shapes.items()
             if shape.rank is not None and shape[0] is not None}
    if len(set(tasks.values())) > 1:
        raise ValueError(f"{where}: the arrays of a batch must hold the same number of tasks, "
                         f"got {', '.join(f'{n} {c}' for n, c in tasks.items())}")
    for x_name, y_name in (("support_x", "support_y"), ("query_x", "query_y")):
        x_shape, y_shape = shapes[x_name], shapes[y_name]
        if x_shape.rank is None or y_shape.rank is None:
            continue
        if x_shape[1] is not None and y_shape[1] is not None and x_shape[1] != y_shape[1]:
            raise ValueError(f"{where}: {y_name} has {y_shape[1]} targets per task but "
                             f"{x_name} has {x_shape[1]} examples; every example needs one")
        problem = examples_problem(x_name, x_shape, example_shape, ("tasks", "examples"))
        if problem:
            missing = (" (is the task axis missing? a single task needs a leading axis "
                       "of 1)" if len(x_shape) == len(example_shape) + 1 else "")
            raise ValueError(f"{where}: {problem}{missing}")
    return tensors


def examples_problem(name: str, shape, example_shape: tuple | None,
                     axes: tuple[str, ...] = ("examples",)) -> str | None:
    """Why the array ``name`` of ``shape`` (its leading ``axes``, then one example) holds
    no examples of ``example_shape`` (the model's; None dims match any), e.g. "x has shape
    (3, 2), i.e. examples of shape (2,), but the model takes examples of shape (1); expected
    [examples, 1]"; None if it does, or either shape is unknown."""
    shape = tf.TensorShape(shape)
    if example_shape is None or shape.rank is None:
        return None
    got = tuple(shape[len(axes):])
    if len(got) == len(example_shape) and all(
            g is None or e is None or g == e for g, e in zip(got, example_shape)):
        return None
    want = ", ".join("?" if d is None else str(d) for d in example_shape)
    return (f"{name} has shape {shape}, i.e. examples of shape {got}, but the model takes "
            f"examples of shape ({want}); expected [{', '.join(axes)}, {want}]")
