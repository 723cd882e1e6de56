"""SavedModel export of a meta-learned initialisation θ, with adaptation inside the graph.

``export(learner, export_dir)`` writes a SavedModel that needs only TensorFlow to serve:

* ``serving_default(x)``: predictions of θ itself;
* ``adapt_and_predict(support_x, support_y, query_x[, num_steps][, inner_lr])``: ``num_steps``
  inner SGD steps on ONE task's support set with the learner's loss (Finn et al. 2017,
  eq. 1, by :func:`tf_maml.adapt.adapt`, the same code that trains and evaluates), then
  predictions of the fast weights θ' on the query set;
* ``metadata()``: the recorded defaults and shapes, also written to
  ``<export_dir>/assets.extra/maml_metadata.json``;

and beside it ``<export_dir>/model.keras``, the plain Keras model with θ, for
``keras.models.load_model``.

Every forward pass runs with ``training=True``: batch norm uses the statistics of the batch
it is given (the support set, the query set or ``x``), as the original evaluated at
meta-test time; moving statistics are never used nor updated. Predictions therefore depend
on what else is in the batch, exactly like ``MetaLearner.predict`` (and dropout, if the
model has any, is active).

Usage of the export, in a process that needs neither keras nor tf_maml::

    loaded = tf.saved_model.load(export_dir)
    logits = loaded.adapt_and_predict(support_x, support_y, query_x)
    logits = loaded.adapt_and_predict(support_x, support_y, query_x,
                                      num_steps=tf.constant(5), inner_lr=tf.constant(0.1))
    theta_logits = loaded.serving_default(query_x)      # = num_steps=0
    loaded.metadata()["num_steps"]

``loaded.adapt_and_predict`` accepts the two optional arguments (Python numbers or int32 /
float32 scalar tensors) in any combination. Serving signatures cannot have optional inputs, so
``loaded.signatures`` (what ``saved_model_cli`` and TF Serving see) holds
``serving_default``, ``adapt_and_predict`` (the three required inputs, recorded defaults),
``adapt_and_predict_with_options`` (all five inputs) and ``metadata``; each returns a dict
(``{"predictions": ...}`` or the metadata).

The step count is a tensor, so the inner loop is a ``tf.while_loop`` whose body is
``tf_maml.adapt.adapt(..., num_steps=1)``: one graph serves any number of steps, with no
unroll bound and no cost for steps not taken (a bounded unroll would fix a maximum and
compute, or at least trace, every step up to it). There is no outer gradient at serving
time, so first- and second-order MAML give the same fast weights.

Inputs are validated in the graph with ``tf.debugging`` assertions that say what is wrong
(wrong rank or feature shape, label outside ``[0, N)`` with N the model's output size,
empty support set, mismatched support sizes, negative ``num_steps``, a NaN or infinity in
``x``, ``support_x``, ``support_y`` or ``query_x``, ``inner_lr`` negative or not finite);
for that the signatures declare inputs of unknown shape, and the checks come before any
model op. A NaN must be refused, not passed on: on CPU, TensorFlow's graph optimizer fuses
MatMul + BiasAdd + Relu into one oneDNN kernel that computes max(x, 0), which is 0 for NaN
(Keras' own, unfused call gives NaN), so a NaN support example made θ' NaN and every query
prediction the same finite number, and a NaN query row got a finite prediction. For the same
reason fast weights that are no longer finite after the inner loop (a step size too large
for the task) are an error ("the inner loop diverged"), not a prediction.

Targets: integer class ids ``support_y`` [Ns] (int32 or int64, or float32 / float64 holding
whole numbers; int64 in the signatures)
for a classification loss such as :func:`tf_maml.losses.summed_xent`, or float32 [Ns, N]
regression targets for :func:`tf_maml.losses.mse`; ``targets="auto"`` tells them apart by
the loss. Examples are float32 (the model's input dtype).

Meta-SGD (``learner.inner_lrs`` non-empty): the learned per-parameter α tensors are used,
and the ``inner_lr`` input is a scale on them in the units of the learner's initial α:
α_eff = α_learned · inner_lr / learner.inner_lr. The default (``learner.inner_lr``) uses the
learned α unchanged, and doubling ``inner_lr`` doubles every step, as it does without
Meta-SGD. (With ``learner.inner_lr == 0`` the reference is 1.0 instead.)

MAML++'s learned per-step rates (LSLR) are scaled the same way, and step i of the while
loop uses step i's rates; per-step batch norm's values are exported too, step i running on
its own β (and γ). Steps beyond those meta-trained reuse the last step's values, as
training's evaluation does (:meth:`tf_maml.MetaLearner.step_lr`, ``step_params``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import keras
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import losses, rundir
from tf_maml.rundir import RunDirError

METADATA_FILE = "maml_metadata.json"
KERAS_FILE = "model.keras"
TARGETS = ("auto", "classes", "regression")
# Everything an export's directory holds: an earlier export is replaced whole, and a
# directory holding anything else is refused (replacing it would delete those files).
EXPORT_ENTRIES = frozenset({"saved_model.pb", "fingerprint.pb", "variables", "assets",
                            "assets.extra", KERAS_FILE})


def _infer_input_shape(model: keras.Model) -> tuple:
    """Shape of one example (without the batch axis) from the model's inputs or build."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        if len(inputs) != 1:
            raise ValueError("export supports models with a single input tensor")
        return tuple(inputs[0].shape[1:])
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if shape is not None and len(shape) >= 1:
            return tuple(shape[1:])
    raise ValueError(
        "Cannot infer the model's input shape; pass input_shape=(...) (one example, "
        "without the batch axis) to export."
    )


def _infer_targets(loss_fn) -> str:
    if loss_fn is losses.mse:
        return "regression"
    if getattr(loss_fn, "__name__", "").startswith("summed_xent"):
        return "classes"
    raise ValueError(
        f"Cannot tell whether the loss {loss_fn!r} takes class ids or regression targets; "
        "pass targets='classes' or targets='regression' to export."
    )


def _shape_str(feature_shape: tuple) -> str:
    return "[" + ", ".join(["n"] + ["?" if d is None else str(d) for d in feature_shape]) + "]"


def _dims(x: tf.Tensor, rank: int) -> tf.Tensor:
    """``tf.shape(x)`` padded with zeros to at least ``rank`` entries: safe to index even
    when ``x`` has the wrong rank."""
    return tf.concat([tf.shape(x), tf.zeros([rank], tf.int32)], 0)


class _Checks:
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
        the module docstring), so a bad value could come out as a finite, wrong prediction."""
        if x.dtype.is_floating:
            self.add(lambda: tf.debugging.assert_all_finite(
                x, message=f"{name} has a NaN or infinite value: adapt_and_predict needs "
                           f"finite {what}; check the data and its preprocessing",
            ), tf.reduce_all(tf.math.is_finite(x)))

    def gate(self, x: tf.Tensor, static_shape: tuple) -> tf.Tensor:
        passed = tf.reduce_all(tf.stack(self._passed)) if self._passed else tf.constant(True)
        empty = tuple(0 if i == 0 else (1 if d is None else d) for i, d in enumerate(static_shape))
        with tf.control_dependencies(self._last):
            x = tf.cond(passed, lambda: tf.identity(x), lambda: tf.zeros(empty, x.dtype))
        return tf.ensure_shape(x, static_shape)


def export(
    learner,  # a MetaLearner (not imported: MetaLearner.export calls this module)
    export_dir: str,
    num_steps: int = 10,
    input_shape: tuple | None = None,
    targets: str = "auto",
) -> str:
    """Writes the SavedModel (and ``model.keras``) of ``learner`` to ``export_dir``.

    Args:
      learner: a :class:`~tf_maml.learners.MetaLearner`; its current θ, loss, α (or
        Meta-SGD α tensors) and adapted-variable mask are recorded.
      export_dir: directory of the SavedModel; created if needed.
      num_steps: default number of inner steps of ``adapt_and_predict`` (the original's
        ``test_num_updates``).
      input_shape: shape of one example; inferred from the model's ``Input`` or build.
      targets: ``"classes"`` (int labels [Ns]), ``"regression"`` ([Ns, N] floats) or
        ``"auto"`` (from the loss: summed_xent or mse).

    Returns:
      ``export_dir``.
    """
    check_export_dir(export_dir)
    default_steps = int(num_steps)
    if default_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    model = learner.model
    feature_shape = tuple(input_shape) if input_shape is not None else _infer_input_shape(model)
    kind = _infer_targets(learner.loss_fn) if targets == "auto" else targets
    input_dtype = tf.float32
    if getattr(model, "inputs", None):
        input_dtype = tf.as_dtype(model.inputs[0].dtype)
    probe_shape = (2,) + tuple(1 if d is None else d for d in feature_shape)
    probe = adapt_lib.forward(model, [v.value for v in model.trainable_variables],
                              tf.zeros(probe_shape, input_dtype))
    if probe.shape.rank != 2:
        raise ValueError(f"export needs model outputs of shape [batch, N], got {probe.shape}")
    num_outputs = int(probe.shape[-1])
    output_dtype = probe.dtype

    meta_sgd = bool(learner.inner_lrs)
    # Meta-SGD: the inner_lr input scales the learned α (see the module docstring).
    default_lr = float(learner.inner_lr) if (learner.inner_lr != 0 or not meta_sgd) else 1.0
    mask = list(learner.mask)
    loss_fn = learner.loss_fn
    trainable = list(model.trainable_variables)
    non_trainable = list(model.non_trainable_variables)
    inner_lrs = list(learner.inner_lrs)
    bn_steps = list(learner.bn_steps)
    split = adapt_lib.model_split(model)

    def read(variables):
        return [tf.identity(v.value) for v in variables]

    def check_targets(checks, support_x, support_y):
        if kind == "classes":
            rank, what = 1, "integer class ids of shape [Ns]"
        else:
            rank, what = 2, f"regression targets of shape [Ns, {num_outputs}]"
        checks.add(lambda: tf.debugging.assert_equal(
            tf.rank(support_y), rank, message=f"support_y has the wrong rank: expected {what}",
        ), tf.equal(tf.rank(support_y), rank))
        count_x, count_y = _dims(support_x, 1)[0], _dims(support_y, 1)[0]
        checks.add(lambda: tf.debugging.assert_equal(
            count_y, count_x, message="support_y must have one target per support_x example",
        ), tf.equal(count_y, count_x))
        if kind == "classes":
            n = tf.constant(num_outputs, support_y.dtype)
            checks.add(lambda: tf.debugging.assert_non_negative(
                support_y, message="support_y has a negative class id",
            ), tf.reduce_all(support_y >= 0))
            checks.add(lambda: tf.debugging.assert_less(
                support_y, n,
                message=f"support_y has a class id >= N = {num_outputs}, the model's number "
                        "of outputs",
            ), tf.reduce_all(support_y < n))
        else:
            size = _dims(support_y, 2)[1]
            checks.add(lambda: tf.debugging.assert_equal(
                size, num_outputs,
                message=f"support_y has the wrong number of target values per example: "
                        f"expected {num_outputs}, the model's number of outputs",
            ), tf.equal(size, num_outputs))
            checks.finite(support_y, "support_y", "targets")

    def predict(x):
        checks = _Checks()
        checks.examples(x, feature_shape, "x")
        x = checks.gate(x, (None,) + feature_shape)
        return adapt_lib.forward(model, read(trainable), x, read(non_trainable))

    def adapt_and_predict(support_x, support_y, query_x, steps, lr):
        checks = _Checks()
        checks.examples(support_x, feature_shape, "support_x")
        num_support = _dims(support_x, 1)[0]
        checks.add(lambda: tf.debugging.assert_positive(
            num_support, message="the support set is empty (support_x has no examples)",
        ), num_support > 0)
        check_targets(checks, support_x, support_y)
        checks.examples(query_x, feature_shape, "query_x")
        checks.add(lambda: tf.debugging.assert_non_negative(
            steps, message="num_steps must be >= 0"), steps >= 0)
        checks.add(lambda: tf.debugging.assert_all_finite(
            lr, message="inner_lr must be finite"), tf.math.is_finite(lr))
        checks.add(lambda: tf.debugging.assert_non_negative(
            lr, message="inner_lr must be >= 0 (a step size; 0 leaves the weights unchanged)"),
            lr >= 0)
        support_x = checks.gate(support_x, (None,) + feature_shape)
        query_x = checks.gate(query_x, (None,) + feature_shape)
        support_y = checks.gate(
            support_y, (None,) if kind == "classes" else (None, num_outputs))
        steps = checks.gate(steps, ())
        weights = read(trainable)
        frozen = read(non_trainable)
        # α of each step, and per-step batch norm's values: the learner's own rules, with
        # the step a tensor (Meta-SGD, LSLR: the learned rates scaled by the inner_lr input).
        step_lr = (learner.step_lr([a * (lr / default_lr) for a in read(inner_lrs)])
                   if meta_sgd else lr)
        params_at = learner.step_params(weights, read(bn_steps))
        # ANIL: the body is the same at every step, so the support and query sets run
        # through it once here, and the steps run the head alone (adapt.Split).
        cut = split is not None and split.serves(mask, params_at)
        support_in = split.body(weights, support_x) if cut else support_x

        def body(i, fast):
            if params_at is not None:
                fast = params_at(fast, i)
            lr_i = step_lr(i) if callable(step_lr) else step_lr
            fast, _, _ = adapt_lib.adapt(model, fast, support_in, support_y, loss_fn, lr_i, 1,
                                         mask=mask, non_trainable=frozen,
                                         forward_fn=split.head if cut else None)
            return i + 1, fast

        _, fast = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), weights))
        # A step size too large for the task overflows θ'; its predictions, through a fused
        # Relu, could still look finite.
        diverged = tf.debugging.assert_equal(
            tf.reduce_all([tf.reduce_all(tf.math.is_finite(w)) for w in fast]), True,
            message="the inner loop diverged: the fast weights are not finite after "
                    "adaptation; use a smaller inner_lr or fewer num_steps")
        with tf.control_dependencies([diverged]):
            fast = [tf.identity(w) for w in fast]
        if cut:
            return split.head(fast, split.body(weights, query_x))
        return adapt_lib.forward(model, fast, query_x, frozen)

    metadata_values = {
        "num_steps": default_steps,
        "inner_lr": default_lr,
        "meta_sgd": meta_sgd,
        "lslr": bool(learner.lslr),
        "per_step_bn": bool(bn_steps),
        "num_outputs": num_outputs,
        "targets": kind,
        "input_shape": [-1 if d is None else int(d) for d in feature_shape],
        "loss": getattr(loss_fn, "__name__", type(loss_fn).__name__),
        "training_mode_forward": True,
    }

    def metadata():
        return {
            "num_steps": tf.constant(default_steps, tf.int32),
            "inner_lr": tf.constant(default_lr, tf.float32),
            "meta_sgd": tf.constant(meta_sgd),
            "num_outputs": tf.constant(num_outputs, tf.int32),
            "targets": tf.constant(kind),
            "input_shape": tf.constant(metadata_values["input_shape"], tf.int32),
        }

    def spec(name, dtype, shape=None):
        return tf.TensorSpec(shape, dtype, name=name)

    # Class ids are accepted as int32 or int64 (numpy's default) and checked as int64; as
    # float32 / float64 too (e.g. labels stored as floats), if they are whole numbers.
    y_dtypes = ((tf.int64, tf.int32, tf.float32, tf.float64) if kind == "classes"
                else (output_dtype,))
    x_spec = spec("x", input_dtype)
    steps_spec, lr_spec = spec("num_steps", tf.int32, []), spec("inner_lr", tf.float32, [])

    def task_specs(y_dtype):
        return (spec("support_x", input_dtype), spec("support_y", y_dtype),
                spec("query_x", input_dtype))

    # autograph=False: the inner loop's control flow is explicit (tf.while_loop, tf.cond).
    # The inner loop is traced once (`core`); the entry points below only fill in defaults.
    core = tf.function(adapt_and_predict, autograph=False,
                       input_signature=(*task_specs(y_dtypes[0]), steps_spec, lr_spec))

    def adapt_fn(support_x, support_y, query_x, num_steps=None, inner_lr=None):
        steps = tf.constant(default_steps, tf.int32) if num_steps is None else num_steps
        lr = tf.constant(default_lr, tf.float32) if inner_lr is None else inner_lr
        if kind == "classes" and support_y.dtype.is_floating:
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
                support_y = tf.identity(support_y)
        return core(support_x, tf.cast(support_y, y_dtypes[0]), query_x, steps, lr)

    module = tf.Module()
    # The captured variables, as plain tf.Variables: the loaded object needs no keras.
    module.model_variables = [v.value for v in model.variables]
    module.inner_lr_variables = [v.value for v in inner_lrs]
    module.bn_step_variables = [v.value for v in bn_steps]
    module.serving_default = tf.function(predict, autograph=False)
    module.serving_default.get_concrete_function(x_spec)
    module.adapt_and_predict = tf.function(adapt_fn, autograph=False)
    for y_dtype in y_dtypes:
        for options in ({}, {"num_steps": steps_spec}, {"inner_lr": lr_spec},
                        {"num_steps": steps_spec, "inner_lr": lr_spec}):
            module.adapt_and_predict.get_concrete_function(*task_specs(y_dtype), **options)
    module.metadata = tf.function(metadata, autograph=False)

    # Serving signatures: named dict outputs, every input required.
    def signature(fn, *specs):
        return tf.function(
            lambda *args: {"predictions": fn(*args)}, autograph=False
        ).get_concrete_function(*specs)

    signatures = {
        "serving_default": signature(module.serving_default, x_spec),
        "adapt_and_predict": signature(module.adapt_and_predict, *task_specs(y_dtypes[0])),
        "adapt_and_predict_with_options": signature(
            module.adapt_and_predict, *task_specs(y_dtypes[0]), steps_spec, lr_spec),
        "metadata": module.metadata.get_concrete_function(),
    }

    def write(directory):
        tf.saved_model.save(module, directory, signatures=signatures)
        extra_dir = os.path.join(directory, "assets.extra")
        os.makedirs(extra_dir, exist_ok=True)
        with open(os.path.join(extra_dir, METADATA_FILE), "w") as f:
            json.dump(metadata_values, f, indent=2)
        model.save(os.path.join(directory, KERAS_FILE))

    _write_whole(export_dir, write)
    return export_dir


def check_export_dir(export_dir: str) -> None:
    """A :class:`~tf_maml.rundir.RunDirError` naming the fix if ``export_dir`` cannot become
    an export: a file, or a directory holding other files than an earlier export's. Called
    before anything is computed or written (the command line calls it before training)."""
    if not export_dir:
        raise RunDirError("`export_dir` is empty: give the path of a new directory")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise RunDirError(
            f"`export_dir` {export_dir} is a file, not a directory: give the path of a new "
            "directory (or of an earlier export, which is replaced whole)")
    if os.path.isdir(export_dir):
        foreign = sorted(set(os.listdir(export_dir)) - EXPORT_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RunDirError(
                f"`export_dir` {export_dir} holds files that are not an export's ({shown}): "
                "give a new or empty directory (an earlier export there would be replaced "
                "whole)")


def _write_whole(export_dir: str, write) -> None:
    """Runs ``write(directory)`` on a new directory beside ``export_dir``, then puts it in
    ``export_dir``'s place by renames (which need no space): a failed write (a full or
    read-only disk) removes its partial files and leaves an earlier export as it was; the
    error is a :class:`~tf_maml.rundir.RunDirError` of one line. (A crash between the two
    renames would leave the earlier export as ``.<name>.*.old`` beside it.)"""
    target = os.path.realpath(export_dir)
    parent, name = os.path.split(target)
    shown_parent = os.path.dirname(os.path.abspath(export_dir))
    earlier = os.path.isdir(target) and bool(os.listdir(target))
    kept = (f"the earlier export in {export_dir} is intact" if earlier
            else "no partial export was left")
    # Not tempfile.mkdtemp: its mode 0700 would become the export's.
    tmp = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with rundir.writing(shown_parent, f"write the SavedModel export {name}",
                            kept=lambda: kept, arg="export_dir"):
            os.makedirs(parent, exist_ok=True)
            os.mkdir(tmp)
            write(tmp)
            if not earlier:
                os.replace(tmp, target)  # a new name, or an empty directory
                return
            old = tmp[:-len(".tmp")] + ".old"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_metadata(export_dir: str) -> dict:
    """The recorded defaults and shapes of an export (the JSON beside the SavedModel)."""
    with open(os.path.join(export_dir, "assets.extra", METADATA_FILE)) as f:
        return json.load(f)


__all__ = ["check_export_dir", "export", "load_metadata"]

