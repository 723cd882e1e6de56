"""Task losses and metrics with the original's scaling (cbfinn/maml utils.py).

A task loss maps ``(y_true, y_pred)`` of ONE task to a scalar.
"""

from __future__ import annotations

import tensorflow as tf


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
    if shots <= 0:
        raise ValueError(f"shots must be positive, got {shots}")

    def loss(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(y_true, tf.int32), logits=logits
        )
        return tf.reduce_sum(ce) / float(shots)

    loss.__name__ = f"summed_xent_k{shots}"
    return loss


def mean_xent(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy averaged over the examples: ordinary fine-tuning's loss (the
    fine-tuning baseline, :mod:`tf_maml.baselines`). Labels are integer class ids."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y_true, tf.int32), logits=logits))


def accuracy(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Fraction of examples whose argmax logit is the label (per task)."""
    hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y_true, tf.int32))
    return tf.reduce_mean(tf.cast(hits, tf.float32))
