"""Import a checkpoint of the original TensorFlow 1 MAML code (cbfinn/maml) into our Keras nets.

    python -m tf_maml.convert \\
        --checkpoint=$DATA/maml_original_checkpoint/miniimagenet1shot/model59000 \\
        --output=/tmp/maml59000

The original kept its weights as explicit ``tf.Variable``\\ s in a dict inside
``tf.variable_scope('model')`` and saved only the trainable variables, so a checkpoint holds
(names as TensorFlow 1 made them unique):

conv net (``--conv=True``, ``construct_conv_weights``)
    ``model/conv1..conv4``     3x3 HWIO kernels            -> ``conv1..conv4`` kernels
    ``model/Variable``, ``model/Variable_1``, ``_2``, ``_3``
                               the conv biases b1..b4 (unnamed ``tf.Variable``\\ s, created
                               in that order)              -> ``conv1..conv4`` biases
    ``model/w5``, ``model/b5`` the output layer            -> ``logits``
fully connected net (``--conv=False`` and sinusoid, ``construct_fc_weights``)
    ``model/Variable``, ``model/Variable_1``, ... ``model/Variable_<2L-1>``: all unnamed, created
                               w1, b1, w2, b2, ..., wL, bL -> ``dense1..denseL``
normalisation (``tf.contrib.layers.batch_norm`` / ``layer_norm`` with ``scope=<s>``)
    ``model/<s>/beta``         batch norm: the offset only (no scale, ``center=True,
                               scale=False``); its moving statistics are not saved
    ``model/<s>/beta``, ``model/<s>/gamma``   layer norm: per-channel offset and scale
    The conv net's scopes are ``0, 1, 2, 3`` (``norm1..norm4``); the fc net's are ``0, 2, 3,
    4, ...`` (the original skipped ``1``).

:func:`load_original_checkpoint` checks every name and shape before it assigns anything, and
raises :class:`ConversionError` naming the variable when the checkpoint does not fit.
"""

from __future__ import annotations

import json
import os
import re
import sys

import keras
import numpy as np
import tensorflow as tf

from tf_maml.checkpoint import CheckpointError
from tf_maml.models import ContribLayerNorm

# What a TF1 checkpoint may hold besides the model's trainable weights; never imported.
_IGNORED = re.compile(
    r"(^|/)(Adam(_\d+)?|moving_mean|moving_variance|beta1_power|beta2_power|global_step)$"
)
_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


class ConversionError(CheckpointError, ValueError):
    """An original checkpoint is missing or does not fit the model; the message names the
    variable (and, when it can tell, the flag that differs)."""


def _unnamed(index: int) -> str:
    """The name TF1 gave the ``index``-th unnamed ``tf.Variable`` in scope ``model``."""
    return "model/Variable" if index == 0 else f"model/Variable_{index}"


def _layer(model: keras.Model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _norm_entries(layer, scope: str) -> list[tuple[keras.Variable, str]]:
    """(variable, checkpoint name) pairs of one normalisation layer."""
    if layer is None:
        return []
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.scale or not layer.center:
            raise ConversionError(
                f"layer {layer.name} is BatchNormalization(center={layer.center}, "
                f"scale={layer.scale}); the original's batch norm had an offset beta and no "
                "scale (center=True, scale=False)"
            )
        return [(layer.beta, f"model/{scope}/beta")]
    if isinstance(layer, ContribLayerNorm):
        return [(layer.beta, f"model/{scope}/beta"), (layer.gamma, f"model/{scope}/gamma")]
    raise ConversionError(
        f"layer {layer.name} is a {type(layer).__name__}; the original's normalisations are "
        "batch_norm (BatchNormalization, offset only) and layer_norm (ContribLayerNorm)"
    )


def variable_map(model: keras.Model) -> list[tuple[keras.Variable, str]]:
    """(Keras variable, original checkpoint name) for every trainable weight of ``model``.

    ``model`` must be one of :func:`tf_maml.models.conv4` or :func:`tf_maml.models.fc_net`
    (layers ``conv1..conv4, norm1..norm4, logits`` or ``dense1..denseL, norm1..norm<L-1>``).
    """
    if not model.built:
        raise ConversionError(f"model {model.name} is not built: build it before importing")
    entries: list[tuple[keras.Variable, str]] = []
    if isinstance(_layer(model, "conv1"), keras.layers.Conv2D):
        for i in range(1, 5):
            conv = _layer(model, f"conv{i}")
            if not isinstance(conv, keras.layers.Conv2D) or not conv.use_bias:
                raise ConversionError(f"model {model.name} has no Conv2D layer conv{i} with a "
                                      "bias; the original conv net has four (conv1..conv4)")
            entries += [(conv.kernel, f"model/conv{i}"), (conv.bias, _unnamed(i - 1))]
            entries += _norm_entries(_layer(model, f"norm{i}"), str(i - 1))
        head = _layer(model, "logits")
        if not isinstance(head, keras.layers.Dense):
            raise ConversionError(f"model {model.name} has no Dense layer 'logits' (the "
                                  "original's w5/b5)")
        entries += [(head.kernel, "model/w5"), (head.bias, "model/b5")]
    elif isinstance(_layer(model, "dense1"), keras.layers.Dense):
        depth = 1
        while isinstance(_layer(model, f"dense{depth + 1}"), keras.layers.Dense):
            depth += 1
        for j in range(1, depth + 1):
            dense = _layer(model, f"dense{j}")
            entries += [(dense.kernel, _unnamed(2 * j - 2)), (dense.bias, _unnamed(2 * j - 1))]
            if j < depth:
                entries += _norm_entries(_layer(model, f"norm{j}"), "0" if j == 1 else str(j))
    else:
        raise ConversionError(
            f"model {model.name} is neither the original's conv net (layers conv1..conv4, "
            "logits) nor its fully connected net (layers dense1..denseL): only models built "
            "by tf_maml.models.conv4 / fc_net can take an original checkpoint"
        )
    covered = {id(v) for v, _ in entries}
    extra = [v.path for v in model.trainable_variables if id(v) not in covered]
    if extra:
        raise ConversionError(f"model {model.name} has trainable weights the original net does "
                              f"not have: {', '.join(extra)}")
    return entries


def resolve_prefix(prefix: str) -> str:
    """The checkpoint prefix ``prefix`` names (a prefix, one of its files, or a folder holding
    a ``checkpoint`` state file or a single ``*.index``); raises ConversionError if absent."""
    if not prefix:
        raise ConversionError("no checkpoint given (expected a prefix such as "
                              ".../model59000)")
    if tf.io.gfile.isdir(prefix):
        latest = tf.train.latest_checkpoint(prefix)
        if latest:
            return latest
        indexes = sorted(f[:-len(".index")] for f in tf.io.gfile.listdir(prefix)
                         if f.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(prefix, indexes[0])
        raise ConversionError(
            f"{prefix} is a folder without a 'checkpoint' state file and with "
            f"{len(indexes)} checkpoints ({', '.join(indexes) or 'no *.index file'}): give "
            "the checkpoint prefix, e.g. " + os.path.join(prefix, indexes[-1] if indexes
                                                            else "model59000")
        )
    for suffix in (".index", ".meta"):
        if prefix.endswith(suffix) and tf.io.gfile.exists(prefix[:-len(suffix)] + ".index"):
            return prefix[:-len(suffix)]
    if _DATA_SUFFIX.search(prefix):
        stripped = _DATA_SUFFIX.sub("", prefix)
        if tf.io.gfile.exists(stripped + ".index"):
            return stripped
    if not tf.io.gfile.exists(prefix + ".index"):
        where = "" if os.path.isabs(prefix) else f" (relative to {os.getcwd()})"
        raise ConversionError(
            f"no original checkpoint at {prefix}{where}: expected the files {prefix}.index "
            f"and {prefix}.data-00000-of-00001 (give the prefix without a suffix, e.g. "
            ".../miniimagenet1shot/model59000)"
        )
    return prefix


def _refuse_tf2(path: str, names) -> None:
    """Raises ConversionError if ``path`` is an object-based TensorFlow 2 checkpoint (a
    tf_maml run's ``model-N``, say): its names are object paths, none of the original's."""
    if "_CHECKPOINTABLE_OBJECT_GRAPH" not in names:
        return
    from tf_maml.zoo import RESULTS_FILE

    run_dir = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(os.path.join(run_dir, RESULTS_FILE)):
        # Not a run directory: a zoo folder is not named as its run, so its --logdir would
        # start a new run of the same flags inside the zoo.
        instead = (f"it is a folder of the model zoo ({run_dir}), which tf-maml-reproduce "
                   "restores into a run directory: `tf-maml-reproduce --experiments=<its row>` "
                   "resumes it, and with --train=False --reevaluate evaluates it again "
                   "(docs/reproducing.md)")
    elif os.path.isfile(os.path.join(run_dir, "config.json")):
        instead = (f"it belongs to the tf_maml run directory {run_dir}: to continue that run, "
                   f"rerun its training command with --logdir={os.path.dirname(run_dir)} "
                   "(--resume is on by default and continues from its latest checkpoint); "
                   "to evaluate it, add --train=False (and --test_iter=N for model-N)")
    else:
        instead = ("to continue a tf_maml run, rerun its training command with the same "
                   "--logdir (--resume is on by default); to start from other TF2 weights, "
                   "load them into the model in Python (MetaLearner(model, ...))")
    raise ConversionError(
        f"{path} is a TensorFlow 2 checkpoint, not one of the original TF1 MAML code: "
        "--init_checkpoint (and tf_maml.convert) accept only the original's checkpoints, "
        f"such as its miniimagenet1shot/model59000; {instead}")


def _hint(name: str, want: tuple[int, ...], have: tuple[int, ...]) -> str:
    """Which flag probably differs when ``name`` has shape ``have`` instead of ``want``."""
    if len(want) != len(have):
        return " (a conv checkpoint for an fc net or the other way round? check --conv)"
    if name.startswith("model/conv"):
        if want[2] != have[2] and name == "model/conv1":
            return " (input channels differ: check --datasource)"
        return " (check --num_filters)"
    if name == "model/w5":
        if want[1] != have[1]:
            return " (check --num_classes)"
        return " (check --num_filters, --max_pool and --datasource)"
    if name == "model/b5":
        return " (check --num_classes)"
    if len(want) == 1:
        return " (check --num_filters, --num_classes and --conv)"
    return ""


def read_original_checkpoint(model: keras.Model, prefix: str
                             ) -> tuple[str, list[tuple[keras.Variable, str, np.ndarray]]]:
    """Checks ``prefix`` against ``model`` and reads the values, assigning nothing.

    Returns (resolved prefix, [(variable, checkpoint name, value)]). Raises ConversionError
    listing every missing, misshapen or left-over variable, or naming one that holds a NaN
    or an infinity.
    """
    entries = variable_map(model)
    path = resolve_prefix(prefix)
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as err:
        raise ConversionError(f"cannot read the checkpoint {path} (expected {path}.index and "
                              f"its .data-* files): {err}") from err
    shapes = reader.get_variable_to_shape_map()
    _refuse_tf2(path, shapes)
    dtypes = reader.get_variable_to_dtype_map()
    problems = []
    for var, name in entries:
        want = tuple(int(d) for d in var.shape)
        if name not in shapes:
            problems.append(f"{name} (for {var.path}, shape {list(want)}) is missing")
            continue
        have = tuple(int(d) for d in shapes[name])
        if have != want:
            problems.append(f"{name} has shape {list(have)} in the checkpoint but {var.path} "
                            f"is {list(want)}{_hint(name, want, have)}")
        elif not dtypes[name].is_floating:
            problems.append(f"{name} is {dtypes[name].name}, not a float")
    used = {name for _, name in entries}
    leftover = sorted(n for n in shapes if n not in used and not _IGNORED.search(n))
    if leftover:
        norm_hint = ""
        if any(n.endswith("/gamma") for n in leftover):
            norm_hint = " (a layer_norm checkpoint? use --norm=layer_norm)"
        elif any(n.endswith("/beta") for n in leftover):
            norm_hint = " (a batch_norm checkpoint? check --norm)"
        problems.append(f"the model has no place for {', '.join(leftover)}{norm_hint}")
    if problems:
        more = f"; and {len(problems) - 4} more" if len(problems) > 5 else ""
        raise ConversionError(f"the checkpoint {path} does not fit model {model.name}: "
                              + "; ".join(problems[:4] if more else problems) + more)
    values = []
    for var, name in entries:
        try:
            value = reader.get_tensor(name)
        except (tf.errors.OpError, IndexError) as err:  # IndexError: a .data-* cut short
            detail = (getattr(err, "message", None) or str(err)).splitlines()[0]
            raise ConversionError(f"cannot read {name} from {path}: its .data-* file is cut "
                                  f"short or damaged ({detail}); copy the checkpoint again "
                                  "from its source") from err
        value = np.asarray(value, dtype=var.dtype)
        if not np.isfinite(value).all():
            # A diverged or damaged save: every evaluation from it was NaN, written as the
            # result, and training stopped at its first step.
            raise ConversionError(
                f"{name} in the checkpoint {path} holds {np.size(value) - np.isfinite(value).sum()}"
                f" NaN or infinite values of {np.size(value)}: the run that saved it diverged "
                "or the file is damaged; give a checkpoint of finite weights (an earlier one of "
                "that run, or a fresh copy from its source)")
        values.append((var, name, value))
    return path, values


def load_original_checkpoint(model: keras.Model, prefix: str) -> dict[str, str]:
    """Loads an original cbfinn/maml checkpoint into ``model`` (a built conv4 or fc_net).

    Every variable is checked (name and shape) before any is assigned, so on an error the
    model is unchanged. Returns ``{checkpoint name: Keras variable path}`` of what was loaded,
    in the model's order. Normalisation statistics (the BatchNormalization moving mean and
    variance) are left alone: the original never used them.
    """
    _, values = read_original_checkpoint(model, prefix)
    loaded: dict[str, str] = {}
    for var, name, value in values:
        var.assign(value)
        loaded[name] = var.path
    return loaded


# --------------------------------------------------------------------------- architecture
def infer_flags(prefix: str) -> dict:
    """The original's flags that give the network of checkpoint ``prefix``: ``datasource``,
    ``conv``, ``num_classes``, ``num_filters``, ``max_pool``, ``norm`` (and ``baseline`` for
    the sinusoid oracle), as :class:`tf_maml.config.Config` fields."""
    path = resolve_prefix(prefix)
    try:
        shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as err:
        raise ConversionError(f"cannot read the checkpoint {path}: {err}") from err
    _refuse_tf2(path, shapes)

    def norm_of(scope: str) -> str:
        if f"model/{scope}/gamma" in shapes:
            return "layer_norm"
        return "batch_norm" if f"model/{scope}/beta" in shapes else "None"

    if "model/conv1" in shapes:
        kernel = shapes["model/conv1"]
        if "model/w5" not in shapes:
            raise ConversionError(f"{path} has model/conv1 but no model/w5")
        channels, filters = int(kernel[2]), int(kernel[3])
        fan_in, classes = (int(d) for d in shapes["model/w5"])
        if channels == 3:
            if fan_in != filters * 25:
                raise ConversionError(f"{path}: model/w5 is {list(shapes['model/w5'])}; the "
                                      f"MiniImageNet head needs {filters * 25} inputs")
            return dict(datasource="miniimagenet", conv=True, num_classes=classes,
                        num_filters=filters, max_pool=True, norm=norm_of("0"))
        if channels == 1:
            return dict(datasource="omniglot", conv=True, num_classes=classes,
                        num_filters=filters, max_pool=False, norm=norm_of("0"))
        raise ConversionError(f"{path}: model/conv1 has {channels} input channels; the "
                              "original's conv nets take 1 (Omniglot) or 3 (MiniImageNet)")
    if _unnamed(0) in shapes:
        sizes = []
        while _unnamed(2 * len(sizes)) in shapes:
            sizes.append(tuple(int(d) for d in shapes[_unnamed(2 * len(sizes))]))
        fan_in, classes = sizes[0][0], sizes[-1][1]
        if fan_in in (1, 3) and classes == 1:
            out = dict(datasource="sinusoid", norm=norm_of("0"))
            if fan_in == 3:
                out["baseline"] = "oracle"
            return out
        if fan_in == 784:
            return dict(datasource="omniglot", conv=False, num_classes=classes,
                        norm=norm_of("0"))
        raise ConversionError(f"{path}: an fc net with {fan_in} inputs and {classes} outputs "
                              "is none of the original's (sinusoid 1 or 3 -> 1, Omniglot 784 "
                              "-> N)")
    raise ConversionError(f"{path} holds neither model/conv1 nor model/Variable: not a "
                          f"checkpoint of the original MAML code (it has "
                          f"{', '.join(sorted(shapes)[:8])}{'...' if len(shapes) > 8 else ''})")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("checkpoint", None, "prefix of the original TF1 checkpoint, e.g. "
                        ".../miniimagenet1shot/model59000", required=True)
    flags.DEFINE_string("output", None, "folder for model.weights.h5 and summary.json",
                        required=True)


def convert(prefix: str, output: str) -> dict:
    """Builds our network for checkpoint ``prefix``, loads it and writes
    ``<output>/model.weights.h5`` (Keras) and ``<output>/summary.json``; returns the summary."""
    from tf_maml import experiment
    from tf_maml.errors import path_problem

    for name, value in (("checkpoint", prefix), ("output", output)):
        problem = path_problem(name, value)
        if problem:
            raise ConversionError(f"--{name}: {problem}")
    path = resolve_prefix(prefix)
    flag_values = infer_flags(path)
    model = experiment.model_from_flags(flag_values)
    loaded = load_original_checkpoint(model, path)
    weights_path = os.path.join(output, "model.weights.h5")
    by_path = {v.path: v for v in model.trainable_variables}
    summary = {
        "checkpoint": os.path.abspath(path),
        "weights": os.path.abspath(weights_path),
        "flags": " ".join(f"--{k}={v}" for k, v in flag_values.items()),
        "variables": {name: {"keras": kpath, "shape": list(by_path[kpath].shape)}
                      for name, kpath in loaded.items()},
        "num_floats": int(sum(np.prod(by_path[k].shape) for k in loaded.values())),
    }
    _write_output(model, output, summary)
    return summary


def _write_output(model: keras.Model, output: str, summary: dict) -> None:
    """``model.weights.h5`` and ``summary.json`` into ``output``, both written under
    temporary names first, so that a failed write (a full disk) keeps an earlier conversion
    there whole; an OSError becomes a :class:`ConversionError` naming ``--output`` and the
    fix."""
    from tf_maml import atomic, rundir

    files = {os.path.join(output, "model.weights.h5"):
             os.path.join(output, f".model.{os.getpid()}{atomic.TEMP_SUFFIX}.weights.h5"),
             os.path.join(output, "summary.json"):
             atomic.temporary_name(os.path.join(output, "summary.json"))}
    try:
        os.makedirs(output, exist_ok=True)
        try:
            weights_tmp, summary_tmp = files.values()
            model.save_weights(weights_tmp)
            with open(summary_tmp, "w") as f:
                json.dump(summary, f, indent=2)
            for path, tmp in files.items():
                os.replace(tmp, path)
        finally:
            for tmp in files.values():
                if os.path.exists(tmp):
                    os.remove(tmp)
    except OSError as err:
        message = rundir.os_error_message(
            err, output, "write the converted weights",
            "any earlier conversion there is as it was", arg="output")
        raise ConversionError(re.sub(r"`(\w+)`", r"--\1", message)) from err


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        summary = convert(flags.FLAGS.checkpoint, flags.FLAGS.output)
    except ConversionError as err:
        print(f"tf_maml.convert: error: {err}", file=sys.stderr)
        return 1
    print(f"Loaded {len(summary['variables'])} variables ({summary['num_floats']} floats) "
          f"from {summary['checkpoint']}")
    for name, info in summary["variables"].items():
        print(f"  {name:22s} -> {info['keras']:20s} {info['shape']}")
    print(f"Wrote {summary['weights']}")
    print(f"Evaluate with: tf-maml --train=False {summary['flags']} "
          f"--init_checkpoint={summary['checkpoint']} ...")
    return 0


if __name__ == "__main__":
    from absl import app

    from tf_maml.errors import exit_on_flagfile_problem

    _define_flags()
    exit_on_flagfile_problem("tf_maml.convert")
    app.run(main)
