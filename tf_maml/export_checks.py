"""The in-graph input checks of the SavedModel export's serving functions.

Inputs of ``adapt_and_predict`` and ``serving_default`` (:mod:`tf_maml.export`) are
validated in the graph with ``tf.debugging`` assertions that say what is wrong (wrong rank
or feature shape, label outside ``[0, N)`` with N the model's output size, empty support
set, mismatched support sizes, a ``num_steps`` negative or above ``max_steps``, a NaN or
infinity in an input, ``inner_lr`` negative or not finite, fast weights that are no longer
finite after the inner loop). The signatures declare inputs of unknown shape, so the checks
come before any model op: :meth:`Checks.gate` hands an input on only once every check has
passed.
"""

from __future__ import annotations

import tensorflow as tf


def _shape_str(feature_shape: tuple) -> str:
    return "[" + ", ".join(["n"] + ["?" if d is None else str(d) for d in feature_shape]) + "]"


def _dims(x: tf.Tensor, rank: int) -> tf.Tensor:
    """``tf.shape(x)`` padded with zeros to at least ``rank`` entries: safe to index even
    when ``x`` has the wrong rank."""
    return tf.concat([tf.shape(x), tf.zeros([rank], tf.int32)], 0)


class Checks:
    """Run-time input checks whose first failure is the one reported.

    Each assertion is created under a control dependency on the previous one, so it runs
    only if all earlier checks passed, and computes nothing that can itself fail on a bad
    input. :meth:`gate` then returns an input only after every check: under a ``tf.cond``
    on the checks' outcome, which also hides the caller's (possibly wrong) static shape
    from the shape inference that runs when the saved function is called, so that a
    model op cannot fail on it before the assertions have said what is wrong.
    """

    def __init__(self):
        self._last: list = []
        self._passed: list[tf.Tensor] = []

    def add(self, make_assert, passed: tf.Tensor) -> None:
        with tf.control_dependencies(self._last):
            self._last = [make_assert()]
        self._passed.append(passed)

    def examples(self, x: tf.Tensor, feature_shape: tuple, name: str) -> None:
        rank = len(feature_shape) + 1
        expected = _shape_str(feature_shape)
        self.add(lambda: tf.debugging.assert_equal(
            tf.rank(x), rank, message=f"{name} has the wrong rank: expected shape {expected}",
        ), tf.equal(tf.rank(x), rank))
        known = [i + 1 for i, d in enumerate(feature_shape) if d is not None]
        if known:
            wanted = tf.constant([feature_shape[i - 1] for i in known], tf.int32)
            self.add(lambda: tf.debugging.assert_equal(
                tf.gather(_dims(x, rank), known), wanted,
                message=f"{name} has the wrong feature shape: expected {expected}",
            ), tf.reduce_all(tf.equal(tf.gather(_dims(x, rank), known), wanted)))
        self.finite(x, name, "examples")

    def finite(self, x: tf.Tensor, name: str, what: str) -> None:
        """Refuses a NaN or an infinity in ``x``: the model would not always pass it on (see
        :mod:`tf_maml.export`), so a bad value could come out as a finite, wrong prediction."""
        if x.dtype.is_floating:
            self.add(lambda: tf.debugging.assert_all_finite(
                x, message=f"{name} has a NaN or infinite value: adapt_and_predict needs "
                           f"finite {what}; check the data and its preprocessing",
            ), tf.reduce_all(tf.math.is_finite(x)))

    def targets(self, support_x, support_y, kind: str, num_outputs: int) -> None:
        """``support_y``: class ids in ``[0, num_outputs)`` (``kind == "classes"``) or
        regression targets ``[Ns, num_outputs]``, one per ``support_x`` example."""
        if kind == "classes":
            rank, what = 1, "integer class ids of shape [Ns]"
        else:
            rank, what = 2, f"regression targets of shape [Ns, {num_outputs}]"
        self.add(lambda: tf.debugging.assert_equal(
            tf.rank(support_y), rank, message=f"support_y has the wrong rank: expected {what}",
        ), tf.equal(tf.rank(support_y), rank))
        count_x, count_y = _dims(support_x, 1)[0], _dims(support_y, 1)[0]
        self.add(lambda: tf.debugging.assert_equal(
            count_y, count_x, message="support_y must have one target per support_x example",
        ), tf.equal(count_y, count_x))
        if kind == "classes":
            n = tf.constant(num_outputs, support_y.dtype)
            self.add(lambda: tf.debugging.assert_non_negative(
                support_y, message="support_y has a negative class id",
            ), tf.reduce_all(support_y >= 0))
            self.add(lambda: tf.debugging.assert_less(
                support_y, n,
                message=f"support_y has a class id >= N = {num_outputs}, the model's number "
                        "of outputs",
            ), tf.reduce_all(support_y < n))
        else:
            size = _dims(support_y, 2)[1]
            self.add(lambda: tf.debugging.assert_equal(
                size, num_outputs,
                message=f"support_y has the wrong number of target values per example: "
                        f"expected {num_outputs}, the model's number of outputs",
            ), tf.equal(size, num_outputs))
            self.finite(support_y, "support_y", "targets")

    def options(self, steps: tf.Tensor, lr: tf.Tensor, max_steps: int) -> None:
        """``num_steps`` in 0..``max_steps`` (else a client's 10**9 ran in the server
        without end), ``inner_lr`` finite and >= 0."""
        self.add(lambda: tf.debugging.assert_non_negative(
            steps, message="num_steps must be >= 0"), steps >= 0)
        self.add(lambda: tf.debugging.assert_less_equal(
            steps, tf.cast(max_steps, steps.dtype),
            message=f"num_steps must be <= {max_steps}, the most inner steps tf_maml takes"),
            steps <= max_steps)
        self.add(lambda: tf.debugging.assert_all_finite(
            lr, message="inner_lr must be finite"), tf.math.is_finite(lr))
        self.add(lambda: tf.debugging.assert_non_negative(
            lr, message="inner_lr must be >= 0 (a step size; 0 leaves the weights unchanged)"),
            lr >= 0)

    def gate(self, x: tf.Tensor, static_shape: tuple) -> tf.Tensor:
        passed = tf.reduce_all(tf.stack(self._passed)) if self._passed else tf.constant(True)
        empty = tuple(0 if i == 0 else (1 if d is None else d) for i, d in enumerate(static_shape))
        with tf.control_dependencies(self._last):
            x = tf.cond(passed, lambda: tf.identity(x), lambda: tf.zeros(empty, x.dtype))
        return tf.ensure_shape(x, static_shape)


def task(support_x, support_y, query_x, steps, lr, feature_shape: tuple, kind: str,
         num_outputs: int, max_steps: int) -> tuple[tf.Tensor, ...]:
    """``adapt_and_predict``'s inputs, each handed on only after every check has passed
    (:class:`Checks`): support_x, support_y, query_x, steps. ``lr`` is checked too (the
    gates wait for its checks)."""
    checks = Checks()
    checks.examples(support_x, feature_shape, "support_x")
    num_support = _dims(support_x, 1)[0]
    checks.add(lambda: tf.debugging.assert_positive(
        num_support, message="the support set is empty (support_x has no examples)",
    ), num_support > 0)
    checks.targets(support_x, support_y, kind, num_outputs)
    checks.examples(query_x, feature_shape, "query_x")
    checks.options(steps, lr, max_steps)
    examples = (None,) + feature_shape
    return (checks.gate(support_x, examples),
            checks.gate(support_y, (None,) if kind == "classes" else (None, num_outputs)),
            checks.gate(query_x, examples), checks.gate(steps, ()))


def examples(x, feature_shape: tuple, name: str = "x") -> tf.Tensor:
    """``x`` handed on once its shape and values are checked (``serving_default``)."""
    checks = Checks()
    checks.examples(x, feature_shape, name)
    return checks.gate(x, (None,) + feature_shape)


def whole_class_ids(support_y: tf.Tensor) -> tf.Tensor:
    """Float class ids handed on once they are finite and whole numbers."""
    finite = tf.debugging.assert_all_finite(
        support_y, message="support_y has a NaN or infinite value: classification "
                           "targets are class ids 0..N-1")
    with tf.control_dependencies([finite]):
        support_y = tf.identity(support_y)
    whole = tf.debugging.assert_equal(
        support_y, tf.round(support_y),
        message="support_y holds floats that are not whole numbers: classification "
                "targets are class ids 0..N-1 (int32, int64, or whole floats)")
    with tf.control_dependencies([whole]):
        return tf.identity(support_y)


def finite_weights(fast: list[tf.Tensor]) -> list[tf.Tensor]:
    """The fast weights handed on once all are finite: a step size too large for the task
    overflows θ', and its predictions, through a fused Relu, could still look finite."""
    diverged = tf.debugging.assert_equal(
        tf.reduce_all([tf.reduce_all(tf.math.is_finite(w)) for w in fast]), True,
        message="the inner loop diverged: the fast weights are not finite after "
                "adaptation; use a smaller inner_lr or fewer num_steps")
    with tf.control_dependencies([diverged]):
        return [tf.identity(w) for w in fast]
