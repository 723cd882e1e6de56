"""Task losses and metrics with the original's scaling (cbfinn/maml utils.py).

A task loss maps ``(y_true, y_pred)`` of ONE task to a scalar. The losses here, and the
Keras losses :func:`task_loss` knows, carry ``targets``: ``"classes"`` (integer class ids)
or ``"regression"`` (values), what an exported model's adapt-and-predict takes
(:mod:`tf_maml.export`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from tf_maml.errors import check_count

CLASSES, REGRESSION = "classes", "regression"
# Keras losses by the targets they take (the others, e.g. one-hot categorical
# cross-entropy, are left unmarked: export then asks for ``targets=``).
KERAS_TARGETS = {
    **dict.fromkeys(("sparse_categorical_crossentropy",), CLASSES),
    **dict.fromkeys(("mse", "mean_squared_error", "mae", "mean_absolute_error", "mape",
                     "mean_absolute_percentage_error", "msle", "mean_squared_logarithmic_error",
                     "huber", "log_cosh", "logcosh"), REGRESSION),
}


def targets(loss_fn) -> str | None:
    """What ``loss_fn`` takes as labels (``"classes"``/``"regression"``), None if unknown."""
    return getattr(loss_fn, "targets", None)


def _takes(kind: str):
    def mark(fn):
        fn.targets = kind
        return fn
    return mark


@_takes(REGRESSION)
def mse(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Mean squared error over the task's points (the original's ``mse``)."""
    return tf.reduce_mean(tf.square(y_pred - tf.cast(y_true, y_pred.dtype)))


def summed_xent(shots: int):
    """Softmax cross-entropy SUMMED over examples and divided by K (``shots``).

    The original's ``xent`` returned a per-example vector divided by
    ``update_batch_size``; ``tf.gradients`` of a vector sums it, so the effective loss is
    Σ CE / K = N · mean CE on an N-way K-shot support set. With a mean the inner step would
    be N times smaller. Labels are integer class ids.
    """
    # Else 2.5 divided by 2.5, "5" failed in a comparison.
    check_count("shots", shots, 1, "a whole number of examples per class (K)")

    def loss(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(y_true, tf.int32), logits=logits
        )
        return tf.reduce_sum(ce) / float(shots)

    loss.__name__ = f"summed_xent_k{shots}"
    loss.from_logits = True
    return _takes(CLASSES)(loss)


@_takes(CLASSES)
def mean_xent(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy averaged over the examples: ordinary fine-tuning's loss (the
    fine-tuning baseline, :mod:`tf_maml.baselines`) and MAML++'s (``--xent=mean``: its
    ``F.cross_entropy``, inner and outer loop). Labels are integer class ids."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y_true, tf.int32), logits=logits))


mean_xent.from_logits = True


def takes_logits(loss_fn) -> bool:
    """Whether ``loss_fn`` applies a softmax itself: this module's cross-entropies, and a
    Keras loss object made with ``from_logits=True``."""
    return getattr(loss_fn, "from_logits", False) is True


def accuracy(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Fraction of examples whose argmax logit is the label (per task)."""
    hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y_true, tf.int32))
    return tf.reduce_mean(tf.cast(hits, tf.float32))


def task_loss(loss) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """``loss`` as a task loss: a function is kept as it is; a Keras loss name (``"mse"``,
    ``"mae"``, ``"huber"``, ...) is that Keras loss averaged over the task's examples, as
    Keras' default reduction averages it. Anything else is a one-line ValueError."""
    if isinstance(loss, str):
        try:
            keras_loss = keras.losses.get(loss)
        except ValueError:
            keras_loss = None
        if not callable(keras_loss):
            raise ValueError(f"unknown loss {loss!r}: give a Keras loss name (e.g. 'mse') or a "
                             "function loss_fn(y_true, y_pred) -> scalar")

        def mean_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
            return tf.reduce_mean(keras_loss(y_true, y_pred))

        mean_loss.__name__ = f"mean_{getattr(keras_loss, '__name__', loss)}"
        kind = KERAS_TARGETS.get(loss) or KERAS_TARGETS.get(getattr(keras_loss, "__name__", ""))
        return _takes(kind)(mean_loss) if kind else mean_loss
    if not callable(loss):
        raise ValueError("loss_fn must be a function loss_fn(y_true, y_pred) -> scalar or a "
                         f"Keras loss name, got {loss!r}")
    return loss


def check_task_loss(loss_fn, y_true, y_pred, name: str = "support_y",
                    batch_targets: dict | None = None) -> int | None:
    """A one-line ValueError unless ``loss_fn`` can score ONE task's targets ``y_true``
    (``name``) against the model's outputs ``y_pred`` as meant: one class id in range per
    example for a loss that takes classes (the range also over ``batch_targets``, a batch's
    target arrays by name: a query set numbered otherwise is as wrong), no broadcasting of
    the targets against the outputs, and a scalar value (:func:`check_scalar`). Nothing of
    this fails later by itself: a regression loss broadcasts targets of another shape into a
    wrong but finite loss, and an out-of-range class id is NaN on a GPU. Returns the
    number of classes of a loss that takes class ids (for :func:`check_class_range` of
    later batches), else None."""
    if tf.nest.is_nested(y_pred):  # several outputs: the loss alone knows what it takes
        try:
            check_scalar(loss_fn, y_true, y_pred)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as err:
            first = repr(next(iter(y_pred))) if isinstance(y_pred, dict) else "0"
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ValueError(
                f"the model returns a {type(y_pred).__name__} of "
                f"{len(tf.nest.flatten(y_pred))} outputs, which loss_fn gets as it is, and "
                f"failed on ({reason}); give a loss_fn that takes the model's outputs as it "
                f"returns them, e.g. lambda y, outputs: loss(y, outputs[{first}])") from err
        return
    y_true, y_pred = tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred)
    got, out = tuple(y_true.shape), tuple(y_pred.shape)
    if targets(loss_fn) == CLASSES and len(out) >= 2:
        classes, examples = out[-1], out[:-1]
        if y_true.shape.num_elements() != tf.TensorShape(examples).num_elements():
            raise ValueError(
                f"{name} has shape {got} per task, the model's outputs {out}: loss_fn "
                f"takes one class id per example (shape {examples}); for one-hot labels give "
                "their argmax, or a loss for one-hot labels (e.g. "
                "keras.losses.CategoricalCrossentropy(from_logits=True))")
        for array, ids in {name: y_true, **(batch_targets or {})}.items():
            check_class_range(ids, classes, array)
        check_scalar(loss_fn, y_true, y_pred)
        return classes
    elif got != out and y_true.shape.num_elements() == y_pred.shape.num_elements():
        # Whether the loss broadcasts, asked of distinct values in (0, 1): on the model's own
        # outputs (near constant at initialisation) both readings can score the same.
        ramp = (tf.range(y_pred.shape.num_elements(), dtype=tf.float32) + 1) / (
            y_pred.shape.num_elements() + 1)
        outputs = tf.cast(tf.reshape(ramp, out), y_pred.dtype)
        value, meant = (float(tf.reduce_sum(tf.cast(loss_fn(y, outputs), tf.float32)))
                        for y in (tf.reshape(ramp[::-1], got), tf.reshape(ramp[::-1], out)))
        if abs(value - meant) > 1e-3 * max(1.0, abs(meant)):
            raise ValueError(
                f"{name} has shape {got} per task but the model's outputs {out}, and loss_fn "
                "broadcasts one against the other (a loss of every target against every "
                f"output): give the targets the outputs' shape {out}")
    elif targets(loss_fn) == REGRESSION and got != out:
        raise ValueError(
            f"{name} has shape {got} per task, the model's outputs {out}: loss_fn "
            "compares them element by element, so the targets need the outputs' shape "
            "(is the model's number of outputs right?)")
    check_scalar(loss_fn, y_true, y_pred)
    return None


def check_class_range(ids, classes: int, name: str) -> None:
    """A ValueError unless every class id of ``ids`` (``name``) is in 0..classes-1."""
    ids = tf.convert_to_tensor(ids)
    low, high = int(tf.reduce_min(ids)), int(tf.reduce_max(ids))
    if low < 0 or high >= classes:
        raise ValueError(
            f"{name} holds class {low if low < 0 else high} but the model outputs "
            f"{classes} logits per example (classes 0..{classes - 1}): give the model one "
            "output per class of a task (num_classes, e.g. N for N-way tasks) or number the "
            "classes of each task 0..N-1")


def check_scalar(loss_fn, y_true: tf.Tensor, y_pred: tf.Tensor) -> None:
    """A one-line ValueError unless ``loss_fn`` gives ONE task's examples (``y_true``,
    ``y_pred``) a scalar. A vector would not fail later: the gradient of a vector is the
    gradient of its sum, so a per-example loss silently takes a step K (N·K) times larger."""
    value = tf.convert_to_tensor(loss_fn(y_true, y_pred))
    if value.shape.rank != 0:
        raise ValueError(
            f"loss_fn returned shape {tuple(value.shape)} for one task's {y_pred.shape[0]} "
            "examples; it must return a scalar (e.g. the mean over the examples, or "
            "tf_maml.losses.summed_xent(K) for the original's Σ CE / K)")
