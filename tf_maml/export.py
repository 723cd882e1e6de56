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

``loaded.adapt_and_predict`` accepts the two optional arguments in any combination, as
Python numbers or scalars (numpy's or tensors) that are both 32-bit (int32, float32) or both
64-bit (int64, float64, numpy's defaults); a loaded function matches only the dtypes it was
traced for, and each traced dtype combination costs export time (:data:`OPTION_DTYPES`).
Serving signatures cannot have optional inputs, so ``loaded.signatures`` (what
``saved_model_cli`` and TF Serving see) holds
``serving_default``, ``adapt_and_predict`` (the three required inputs, recorded defaults),
``adapt_and_predict_with_options`` (all five inputs) and ``metadata``; each returns a dict
(``{"predictions": ...}`` or the metadata).

The step count is a tensor, so the inner loop is :func:`tf_maml.adapt.adapt`'s
``tf.while_loop`` mode (the same steps as training's, α and per-step values from the
learner's own ``step_lr`` and ``step_params``): one graph serves any number of steps, with
no unroll bound and no cost for steps not taken (a bounded unroll would fix a maximum and
compute, or at least trace, every step up to it). There is no outer gradient at serving
time, so first- and second-order MAML give the same fast weights.

Inputs are validated in the graph with ``tf.debugging`` assertions that say what is wrong
(wrong rank or feature shape, label outside ``[0, N)`` with N the model's output size,
empty support set, mismatched support sizes, negative ``num_steps``, a NaN or infinity in
``x``, ``support_x``, ``support_y`` or ``query_x``, ``inner_lr`` negative or not finite);
for that the signatures declare inputs of unknown shape, and the checks
(:mod:`tf_maml.export_checks`) come before any model op. A NaN must be refused, not passed
on: on CPU, TensorFlow's graph optimizer fuses MatMul + BiasAdd + Relu into one oneDNN
kernel that computes max(x, 0), which is 0 for NaN
(Keras' own, unfused call gives NaN), so a NaN support example made θ' NaN and every query
prediction the same finite number, and a NaN query row got a finite prediction. For the same
reason fast weights that are no longer finite after the inner loop (a step size too large
for the task) are an error ("the inner loop diverged"), not a prediction.

Targets: integer class ids ``support_y`` [Ns] (int32 or int64, or float32 / float64 holding
whole numbers; int64 in the signatures)
for a classification loss such as :func:`tf_maml.losses.summed_xent`, or float32 [Ns, N]
regression targets for :func:`tf_maml.losses.mse`; ``targets="auto"`` tells them apart by
the loss. Examples are float32 (the model's input dtype); float64 examples and targets
(numpy's default) are accepted too and cast, support_x and query_x of either width
(``_Serving._task_dtypes`` lists the combinations traced). A model whose Input is int32
(token ids into an Embedding) takes its ids as int32 or int64 (numpy's default) alike.

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
import re
import shutil

import keras
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import atomic, export_checks, keras_internals, losses, rundir
from tf_maml.errors import (
    check_count,
    dangling_link,
    dangling_link_problem,
    is_count,
    tensorflow_pattern,
)
from tf_maml.mapping.base import model_example_shape
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


def _given_input_shape(model: keras.Model, input_shape) -> tuple:
    """``input_shape`` as a tuple, or a ValueError if it is no shape of positive sizes (None:
    any), or does not fit the one the model declares: else Keras' multi-line error from
    deep in tracing the export."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or not all(d is None or is_count(d, 1) for d in shape):
        raise ValueError(f"input_shape must be the shape of one example (without the batch "
                         f"axis), sizes >= 1 or None, got {input_shape!r}")
    known = model_example_shape(model)
    if known is not None and (len(known) != len(shape) or any(
            k is not None and d is not None and k != d for k, d in zip(known, shape))):
        want = ", ".join("None" if d is None else str(d) for d in known)
        raise ValueError(f"input_shape={shape} does not fit model {model.name}, which takes "
                         f"examples of shape ({want}{',' if len(known) == 1 else ''}): give "
                         "that shape, or leave input_shape out to read it from the model")
    return shape


def _infer_targets(loss_fn) -> str:
    kind = losses.targets(loss_fn)
    if kind is None:
        raise ValueError(
            f"Cannot tell whether the loss {loss_fn!r} takes class ids or regression targets; "
            "pass targets='classes' or targets='regression' to export.")
    return kind


def _outputs(model: keras.Model, feature_shape: tuple, input_dtype) -> tuple[int, tf.DType]:
    """(N, dtype) of the model's outputs [batch, N], from one forward pass of zeros."""
    probe_shape = (2,) + tuple(1 if d is None else d for d in feature_shape)
    probe = adapt_lib.forward(model, _read(model.trainable_variables),
                              tf.zeros(probe_shape, input_dtype))
    if probe.shape.rank != 2:
        raise ValueError(f"export needs model outputs of shape [batch, N], got {probe.shape}")
    return int(probe.shape[-1]), probe.dtype


# The width a caller's numpy array may have instead of the model input's: numpy's defaults
# are float64 and int64 (a model on int32 token ids was given np.int64 ids: no trace matched).
_OTHER_WIDTH = {tf.float32: tf.float64, tf.float64: tf.float32,
                tf.int32: tf.int64, tf.int64: tf.int32}


def _with_other_width(dtype: tf.DType) -> tuple[tf.DType, ...]:
    """``dtype``, then the same kind of number in the other width (:data:`_OTHER_WIDTH`)."""
    other = _OTHER_WIDTH.get(dtype)
    return (dtype,) if other is None else (dtype, other)


# (num_steps, inner_lr) dtypes traced: 32-bit as tf.constant makes them, 64-bit as numpy
# does (np.int64(3), np.float64(0.1), an element of np.arange). A Python number fits either.
OPTION_DTYPES = ((tf.int32, tf.float32), (tf.int64, tf.float64))


def _read(variables) -> list[tf.Tensor]:
    return [tf.identity(v.value) for v in variables]


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
    # Else 2.5 steps were exported as 2 without a word.
    check_count("num_steps", num_steps, 0, "a whole number of inner steps")
    too_many = adapt_lib.unrolled_steps_problem(num_steps, adapt_lib.SERVED)
    if too_many:  # the default of every call
        raise ValueError(f"num_steps={num_steps}: {too_many}")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    model = learner.model
    _check_policy(model)
    _check_name(model)
    feature_shape = (_given_input_shape(model, input_shape) if input_shape is not None
                     else _infer_input_shape(model))
    serving = _Serving(learner, feature_shape, int(num_steps),
                       _infer_targets(learner.loss_fn) if targets == "auto" else targets)
    module, signatures = serving.module()

    def write(directory):
        tf.saved_model.save(module, directory, signatures=signatures)
        extra_dir = os.path.join(directory, "assets.extra")
        os.makedirs(extra_dir, exist_ok=True)
        with open(os.path.join(extra_dir, METADATA_FILE), "w") as f:
            json.dump(serving.metadata_values(), f, indent=2)
        model.save(os.path.join(directory, KERAS_FILE))

    _write_whole(export_dir, write)
    return export_dir


def _check_name(model) -> None:
    """A ValueError for a model whose name TensorFlow cannot open a graph with (its scope,
    and its variables' names, begin with it): e.g. "__net", Keras' name for a model of a
    class `_Net`, failed deep in saving on "not a valid root scope name"."""
    if not re.fullmatch(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*", model.name):
        raise ValueError(
            f"export cannot save model {model.name!r}: TensorFlow's graphs take no name "
            "that begins with '_' or holds characters other than letters, digits and "
            "'_.-/>'. Name the model when it is made, e.g. keras.Model(..., name='net') or "
            "super().__init__(name='net') in a subclass")


def _check_policy(model) -> None:
    """A ValueError for a model that computes in another dtype than its variables' (a mixed
    precision policy): saving its functions failed deep in TensorFlow, on deleted variables."""
    mixed = sorted({layer.dtype_policy.name for layer in keras_internals.layers_of(model)
                    if layer.dtype_policy.compute_dtype != layer.dtype_policy.variable_dtype})
    if mixed:
        raise ValueError(
            f"export does not support mixed precision: model {model.name} has layers with the "
            f"dtype policy {', '.join(mixed)}. Export a float32 copy: set "
            "keras.mixed_precision.set_global_policy('float32'), rebuild the model, copy the "
            "weights (set_weights) and wrap it in a MetaLearner of the same options")


class _Serving:
    """The exported functions of one learner: what they compute, and their signatures."""

    def __init__(self, learner, feature_shape: tuple, default_steps: int, kind: str):
        self.learner, self.model = learner, learner.model
        self.feature_shape, self.default_steps, self.kind = feature_shape, default_steps, kind
        self.input_dtype = tf.float32
        if getattr(self.model, "inputs", None):
            self.input_dtype = tf.as_dtype(self.model.inputs[0].dtype)
        self.num_outputs, self.output_dtype = _outputs(self.model, feature_shape,
                                                       self.input_dtype)
        self.meta_sgd = bool(learner.inner_lrs)
        # Meta-SGD: the inner_lr input scales the learned α (see the module docstring).
        self.default_lr = (float(learner.inner_lr)
                           if (learner.inner_lr != 0 or not self.meta_sgd) else 1.0)
        self.split = adapt_lib.model_split(self.model)
        # Class ids are accepted as int32 or int64 (numpy's default) and checked as int64; as
        # float32 / float64 too (e.g. labels stored as floats), if they are whole numbers.
        # Floats are accepted in the other width too (numpy arrays are float64 by default)
        # and cast: a restored function matches only the dtypes it was traced for, and its
        # error for any other lists the traced signatures, not the fix.
        self.y_dtypes = ((tf.int64, tf.int32, tf.float32, tf.float64) if kind == "classes"
                         else (self.output_dtype,))
        self.task_dtypes = self._task_dtypes()

    def _task_dtypes(self) -> list[tuple[tf.DType, tf.DType, tf.DType]]:
        """The (support_x, query_x, support_y) dtypes traced (each adds len(OPTION_DTYPES)
        traces to the export, about 0.05 s each): every y of ``y_dtypes`` with the model's
        input dtype; the other width (numpy's float64 or int64) with float64 targets or
        integer class ids; and support and query of different widths (a float32 data set's
        support set, a query built with numpy), with integer class ids or targets of the
        support set's dtype."""
        native, numpy_y = self.input_dtype, tf.float64
        triples = [(native, native, y) for y in self.y_dtypes]
        for other in _with_other_width(native)[1:]:
            if self.kind == "classes":
                triples += [(other, other, y) for y in (tf.int64, tf.int32, tf.float64)]
                triples += [(s, q, y) for s, q in ((native, other), (other, native))
                            for y in (tf.int64, tf.int32)]
            else:
                triples += [(other, other, numpy_y), (native, other, self.output_dtype),
                            (other, native, numpy_y)]
        return triples

    def predict(self, x):
        x = export_checks.examples(tf.cast(x, self.input_dtype), self.feature_shape)
        return adapt_lib.forward(self.model, _read(self.model.trainable_variables), x,
                                 _read(self.model.non_trainable_variables))

    def adapt_and_predict(self, support_x, support_y, query_x, steps, lr):
        """θ' after ``steps`` inner steps of size ``lr`` on the support set (by
        :func:`tf_maml.adapt.adapt`), then its predictions of the query set."""
        support_x, support_y, query_x, steps = export_checks.task(
            support_x, support_y, query_x, steps, lr, self.feature_shape, self.kind,
            self.num_outputs, adapt_lib.MAX_UNROLLED_STEPS)
        learner, model = self.learner, self.model
        weights, frozen = _read(model.trainable_variables), _read(model.non_trainable_variables)
        # α of each step, and per-step batch norm's values: the learner's own, as training
        # takes them, with the step a tensor (Meta-SGD, LSLR: the learned rates scaled by
        # the inner_lr input).
        step_lr = (learner.step_lr([a * (lr / self.default_lr)
                                    for a in _read(learner.inner_lrs)])
                   if self.meta_sgd else lr)
        step_params = learner.step_params(weights, _read(learner.bn_steps))
        fast, _, _ = adapt_lib.adapt(model, weights, support_x, support_y, learner.loss_fn,
                                     step_lr, steps, mask=learner.mask, non_trainable=frozen,
                                     step_params=step_params, split=self.split,
                                     penalty_fn=adapt_lib.weight_penalty(model))
        fast = export_checks.finite_weights(fast)
        forward_fn, inputs = adapt_lib.trajectory_forward(
            lambda w, x: adapt_lib.forward(model, w, x, frozen), query_x, weights, self.split,
            learner.mask, step_params)
        return forward_fn(fast, inputs)

    def metadata_values(self) -> dict:
        return {
            "num_steps": self.default_steps,
            "inner_lr": self.default_lr,
            "meta_sgd": self.meta_sgd,
            "lslr": bool(self.learner.lslr),
            "per_step_bn": bool(self.learner.bn_steps),
            "num_outputs": self.num_outputs,
            "targets": self.kind,
            "input_shape": [-1 if d is None else int(d) for d in self.feature_shape],
            "loss": getattr(self.learner.loss_fn, "__name__",
                            type(self.learner.loss_fn).__name__),
            "training_mode_forward": True,
        }

    def metadata(self):
        values = self.metadata_values()
        return {
            "num_steps": tf.constant(self.default_steps, tf.int32),
            "inner_lr": tf.constant(self.default_lr, tf.float32),
            "meta_sgd": tf.constant(self.meta_sgd),
            "num_outputs": tf.constant(self.num_outputs, tf.int32),
            "targets": tf.constant(self.kind),
            "input_shape": tf.constant(values["input_shape"], tf.int32),
        }

    def task_specs(self, y_dtype, support_dtype=None, query_dtype=None):
        support_dtype = support_dtype or self.input_dtype
        return (tf.TensorSpec(None, support_dtype, name="support_x"),
                tf.TensorSpec(None, y_dtype, name="support_y"),
                tf.TensorSpec(None, query_dtype or support_dtype, name="query_x"))

    def module(self) -> tuple[tf.Module, dict]:
        """The tf.Module to save, and its serving signatures."""
        x_spec = tf.TensorSpec(None, self.input_dtype, name="x")
        steps_spec = tf.TensorSpec([], tf.int32, name="num_steps")
        lr_spec = tf.TensorSpec([], tf.float32, name="inner_lr")
        y_dtype = self.y_dtypes[0]
        # autograph=False: the inner loop's control flow is explicit (tf.while_loop, tf.cond).
        # The inner loop is traced once (`core`); the entry points below only fill in defaults.
        core = tf.function(self.adapt_and_predict, autograph=False,
                           input_signature=(*self.task_specs(y_dtype), steps_spec, lr_spec))

        # The defaults are Python numbers, not None: the loaded function fills them in and
        # converts them to either option dtype, so one trace per dtype serves calls with
        # and without each option (None would need a trace per combination given).
        def adapt_fn(support_x, support_y, query_x, num_steps=self.default_steps,
                     inner_lr=self.default_lr):
            if self.kind == "classes" and support_y.dtype.is_floating:
                support_y = export_checks.whole_class_ids(support_y)
            # A 64-bit count clipped to just outside 0..MAX_UNROLLED_STEPS first, which the
            # checks refuse: else int32's cast cut 2**32 + 1 to 1 step, without a word.
            num_steps = tf.convert_to_tensor(num_steps)
            limit = tf.cast(adapt_lib.MAX_UNROLLED_STEPS + 1, num_steps.dtype)
            num_steps = tf.clip_by_value(num_steps, -tf.ones_like(limit), limit)
            return core(tf.cast(support_x, self.input_dtype), tf.cast(support_y, y_dtype),
                        tf.cast(query_x, self.input_dtype),
                        tf.cast(num_steps, tf.int32), tf.cast(inner_lr, tf.float32))

        module = tf.Module()
        # The captured variables, as plain tf.Variables: the loaded object needs no keras.
        module.model_variables = [v.value for v in self.model.variables]
        module.inner_lr_variables = [v.value for v in self.learner.inner_lrs]
        module.bn_step_variables = [v.value for v in self.learner.bn_steps]
        module.serving_default = tf.function(self.predict, autograph=False)
        for x in _with_other_width(self.input_dtype):
            module.serving_default.get_concrete_function(tf.TensorSpec(None, x, name="x"))
        module.adapt_and_predict = tf.function(adapt_fn, autograph=False)
        for support, query, y in self.task_dtypes:
            for steps_dtype, lr_dtype in OPTION_DTYPES:
                module.adapt_and_predict.get_concrete_function(
                    *self.task_specs(y, support, query),
                    num_steps=tf.TensorSpec([], steps_dtype, name="num_steps"),
                    inner_lr=tf.TensorSpec([], lr_dtype, name="inner_lr"))
        module.metadata = tf.function(self.metadata, autograph=False)

        # Serving signatures: named dict outputs, every input required.
        def signature(fn, *specs):
            return tf.function(
                lambda *args: {"predictions": fn(*args)}, autograph=False
            ).get_concrete_function(*specs)

        def with_defaults(*task):  # the defaults as tensors: the traces above, no other
            return module.adapt_and_predict(*task, tf.constant(self.default_steps, tf.int32),
                                            tf.constant(self.default_lr, tf.float32))

        return module, {
            "serving_default": signature(module.serving_default, x_spec),
            "adapt_and_predict": signature(with_defaults, *self.task_specs(y_dtype)),
            "adapt_and_predict_with_options": signature(
                module.adapt_and_predict, *self.task_specs(y_dtype), steps_spec, lr_spec),
            "metadata": module.metadata.get_concrete_function(),
        }


def check_export_dir(export_dir: str) -> None:
    """A :class:`~tf_maml.rundir.RunDirError` naming the fix if ``export_dir`` cannot become
    an export: a file, or a directory holding other files than an earlier export's. Called
    before anything is computed or written (the command line calls it before training)."""
    if not export_dir:
        raise RunDirError("`export_dir` is empty: give the path of a new directory")
    if tensorflow_pattern(export_dir):  # else loading the export fails: no variables found
        raise RunDirError(f"`export_dir` {tensorflow_pattern(export_dir)}")
    parent, name = os.path.split(os.path.realpath(export_dir))
    too_long = atomic.temporary_name_problem(os.path.join(parent, "." + name))
    if too_long:  # else "File name too long" after the whole export was computed
        raise RunDirError(
            f"`export_dir` {export_dir}: its name is too long for the export, which is written "
            f"beside it as .{name[:20]}...{atomic.TEMP_SUFFIX} first ({too_long}): give a "
            "shorter name")
    dangling = dangling_link_problem(export_dir)
    if dangling:  # else the export made the link's target, or its parent folders
        raise RunDirError(
            f"`export_dir` {export_dir} cannot be written: {dangling}; mount or create "
            f"{os.readlink(dangling_link(export_dir))}, or give another directory")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise RunDirError(
            f"`export_dir` {export_dir} is a file, not a directory: give the path of a new "
            "directory (or of an earlier export, which is replaced whole)")
    above = rundir.file_in_the_way(os.path.dirname(os.path.abspath(export_dir)))
    if above:  # else found only when the export is written, after the training
        raise RunDirError(
            f"`export_dir` {export_dir} cannot be made: {above} is a file, not a directory; "
            "give the path of a new directory elsewhere")
    try:  # the export is written beside it: a read-only parent failed after the training
        rundir.check_writable_later(parent)
    except OSError as err:
        folder = os.path.dirname(os.path.abspath(export_dir))
        while folder and not os.path.isdir(folder):  # the folder that refused it
            folder = os.path.dirname(folder)
        raise RunDirError(rundir.os_error_message(
            err, folder, "write the SavedModel export "
            f"{os.path.basename(os.path.normpath(export_dir))}", "nothing was written",
            arg="export_dir")) from None
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
    error is a :class:`~tf_maml.rundir.RunDirError` of one line. Ctrl-C or SIGTERM wait for
    the two renames (:func:`tf_maml.atomic.stops_deferred`); only a crash between them would
    leave the earlier export as ``.<name>.<pid>.old`` beside it, which is never removed.
    The new directory is ``.<name>.<pid>.tmp``, a temporary of :mod:`tf_maml.atomic`'s:
    one that a killed process left (SIGKILL) is removed by the next export to ``export_dir``
    (:func:`tf_maml.atomic.remove_stale`)."""
    target = os.path.realpath(export_dir)
    parent, name = os.path.split(target)
    shown_parent = os.path.dirname(os.path.abspath(export_dir))
    earlier = os.path.isdir(target) and bool(os.listdir(target))
    kept = (f"the earlier export in {export_dir} is intact" if earlier
            else "no partial export was left")
    # Not tempfile.mkdtemp: its mode 0700 would become the export's. Hidden, with the pid
    # that tells a killed process's leftover from another export in progress.
    hidden = os.path.join(parent, "." + name)
    tmp = atomic.temporary_name(hidden)
    try:
        with rundir.writing(shown_parent, f"write the SavedModel export {name}",
                            kept=lambda: kept, arg="export_dir"):
            os.makedirs(parent, exist_ok=True)
            atomic.remove_stale(hidden)
            os.mkdir(tmp)
            write(tmp)
            if not earlier:
                os.replace(tmp, target)  # a new name, or an empty directory
                return
            old = tmp[:-len(".tmp")] + ".old"
            # A stop between the renames would leave no export at the target; it waits for
            # them and for the earlier export's removal (milliseconds).
            with atomic.stops_deferred():
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
    try:
        f = open(os.path.join(export_dir, "assets.extra", METADATA_FILE))
    except (FileNotFoundError, NotADirectoryError):
        # Else the error named a file inside it, as if only that one were lost.
        raise FileNotFoundError(
            f"{export_dir} is not a tf_maml export (no assets.extra/{METADATA_FILE} in it): "
            "give the directory that MetaLearner.export or tf-maml --export_dir wrote"
        ) from None
    with f:
        try:
            metadata = json.load(f)
        except ValueError as err:  # else JSON's words alone, without the file
            metadata = err
    if not isinstance(metadata, dict):
        why = metadata if isinstance(metadata, ValueError) else "not a JSON object"
        raise ValueError(f"{f.name} is not the export's record of its defaults (cut short, "
                         f"garbled or edited: {why}): export the model again into {export_dir}")
    return metadata


__all__ = ["check_export_dir", "export", "load_metadata"]

