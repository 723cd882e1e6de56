"""All tasks of a meta-batch in one pass of batched kernels: the weights stacked per task.

The per-task mappings (:mod:`tf_maml.mapping.per_task`) run the inner loop once per task.
For small conv nets on a CPU that is dominated by op dispatch: 32 tasks times a few hundred
tiny ops per meta-step. Here every tensor carries the task as a leading axis instead. The
weights are stacked, one copy per task (``[T, *w.shape]``), the inputs are ``[T, B, ...]``,
and each layer of a *linear chain* is rewritten as one batched kernel:

* ``Conv2D`` by im2col: the ``k*k`` (strided) taps of the SAME/VALID-padded input, taken
  by ONE gather of precomputed pixel rows, multiplied with the per-task kernels in one
  batched matmul ``[T, B*H'*W', k*k*C] @ [T, k*k*C, F]``;
* ``Dense`` as a batched matmul ``[T, B*, in] @ [T, in, out]``;
* ``BatchNormalization`` (always batch statistics, like the original) with the moments of
  each task over its own B, H, W, and :class:`tf_maml.models.ContribLayerNorm` per example;
* layers without weights (ReLU, pooling, flatten, ...) run unchanged on ``[T*B, ...]``.

This module supplies only that forward pass (:func:`batched_forward`), and the
:class:`Batched` mapping hands it to the learner's task functions. The inner loop is still
:func:`tf_maml.adapt.adapt`: because task t's loss depends only on task t's copy of the
weights, the gradient of the SUM of the per-task support losses w.r.t. the stacked weights
is exactly the stack of the per-task gradients (Finn et al. 2017, eq. 1 for each task). θ
enters as ``tf.broadcast_to(θ, [T, ...])`` inside the outer tape, whose gradient sums the
per-task meta-gradients back onto θ. The values are those of the per-task path up to float
rounding; ``tests/test_mapping_batched.py`` checks them against the unrolled loop.

im2col costs memory: :func:`patch_bytes` estimates it so a plan can keep large images
(MiniImageNet's 84x84, 75 query images per task) on the per-task path.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import keras_internals
from tf_maml import models as tf_maml_models
from tf_maml.mapping.base import Mapping, Runner, num_tasks, per_task_values
from tf_maml.models import ContribLayerNorm

# Activations that act on each element (or, for softmax, each last-axis row) alone, so they
# run unchanged on a [T, B, ..., C] tensor.
_ELEMENTWISE_ACTIVATIONS = tuple(
    getattr(keras.activations, name)
    for name in (
        "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
        "mish", "tanh", "sigmoid", "hard_sigmoid", "hard_silu", "softplus", "softsign",
        "exponential", "log_sigmoid", "softmax", "log_softmax",
    )
    if hasattr(keras.activations, name)
)

# Layers without weights that treat each example alone: run on [T*B, ...] unchanged.
_PER_EXAMPLE_LAYERS = (
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
)


class Unsupported(ValueError):
    """The model is not a linear chain of layers this module can batch over tasks."""


@dataclass(frozen=True)
class _Step:
    kind: str  # "conv", "dense", "batch_norm", "layer_norm" or "per_example"
    layer: keras.layers.Layer
    weights: tuple[int | None, ...]  # indices into model.trainable_variables


# ---------------------------------------------------------------------------- the layer steps
def _activation_ok(fn) -> bool:
    return fn is None or any(fn is a for a in _ELEMENTWISE_ACTIVATIONS)


def _check_layer(layer: keras.layers.Layer) -> str:
    """The kind of a supported layer; raises :class:`Unsupported` otherwise."""
    name = f"{type(layer).__name__} {layer.name!r}"
    if layer.weights and layer.compute_dtype != layer.variable_dtype:
        raise Unsupported(f"{name}: mixed precision ({layer.dtype_policy.name}) is not supported")
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise Unsupported(f"{name}: LoRA / quantized layers are not supported")
    if adapt_lib.draws_random_numbers(layer):
        # Meta-training draws a fresh mask per task and forward pass, through the layer's
        # own call (tf_maml.adapt.seeded_forward), which these stacked kernels do not run.
        raise Unsupported(f"{name} draws random numbers in training mode (e.g. dropout), "
                          "which the batched kernels do not: use task_parallelism='auto' "
                          "(which picks another mapping for it), 'vectorized', 'map' or "
                          "'loop'")
    if type(layer) is keras.layers.Conv2D:
        if layer.data_format != "channels_last":
            raise Unsupported(f"{name}: only channels_last")
        if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            raise Unsupported(f"{name}: dilation and groups are not supported")
        if layer.padding not in ("same", "valid"):
            raise Unsupported(f"{name}: padding {layer.padding!r}")
        if not _activation_ok(layer.activation):
            raise Unsupported(f"{name}: activation {layer.activation!r}")
        return "conv"
    if type(layer) is keras.layers.Dense:
        if not _activation_ok(layer.activation):
            raise Unsupported(f"{name}: activation {layer.activation!r}")
        return "dense"
    if type(layer) in (keras.layers.BatchNormalization, tf_maml_models.BatchNormalization):
        rank = len(layer.input.shape) if _has_input(layer) else None
        axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            raise Unsupported(f"{name}: only the last axis as the channel axis")
        if layer.renorm or layer.synchronized:
            raise Unsupported(f"{name}: renorm / synchronized batch norm")
        if not layer.trainable:
            raise Unsupported(f"{name}: a frozen batch norm runs in inference mode")
        return "batch_norm"
    if type(layer) is ContribLayerNorm:
        return "layer_norm"
    if type(layer) is keras.layers.InputLayer:
        return "input"
    if type(layer) in _PER_EXAMPLE_LAYERS:
        if isinstance(layer, keras.layers.Activation) and not _activation_ok(layer.activation):
            raise Unsupported(f"{name}: activation {layer.activation!r}")
        return "per_example"
    raise Unsupported(f"{name} is not supported by the batched path")


def _has_input(layer) -> bool:
    try:
        layer.input  # noqa: B018 (raises for a layer that was never called)
    except (AttributeError, ValueError):
        return False
    return True


def _layer_steps(model: keras.Model) -> list[_Step]:
    if not model.built:
        raise Unsupported("the model is not built")
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    steps, used = [], set()
    try:
        chain = keras_internals.layer_chain(model)
    except keras_internals.NotAChain as e:
        raise Unsupported(str(e)) from None
    for layer in chain:
        kind = _check_layer(layer)
        if kind == "input":
            continue
        if kind == "conv" or kind == "dense":
            owned = [layer.kernel, layer.bias if layer.use_bias else None]
        elif kind == "batch_norm":
            owned = [layer.gamma if layer.scale else None, layer.beta if layer.center else None]
        elif kind == "layer_norm":
            owned = [layer.gamma, layer.beta]
        else:
            owned = []
        idx = []
        for v in owned:
            if v is not None and id(v) not in index:
                raise Unsupported(f"layer {layer.name!r} has a frozen (non-trainable) weight")
            idx.append(None if v is None else index[id(v)])
        used.update(i for i in idx if i is not None)
        steps.append(_Step(kind, layer, tuple(idx)))
    if used != set(range(len(model.trainable_variables))):
        raise Unsupported("some trainable variables are not used by the layer chain")
    return steps


def unsupported_reason(model: keras.Model) -> str | None:
    """Why :func:`supports` is False for ``model`` (None if it is supported)."""
    try:
        _layer_steps(model)
    except Unsupported as e:
        return str(e)
    return None


def supports(model: keras.Model) -> bool:
    """Whether ``model`` is a linear chain of layers the batched path implements exactly:
    InputLayer, Conv2D (any kernel size and stride, same/valid padding, channels_last, no
    dilation/groups), Dense, BatchNormalization (last axis; batch statistics always),
    ContribLayerNorm, and weight-free per-example layers (ReLU, Activation, Max/Average
    pooling 2D, global pooling 2D, Flatten), with element-wise activations."""
    return unsupported_reason(model) is None


# ---------------------------------------------------------------------------- forward
def _dim(x: tf.Tensor, axis: int):
    d = x.shape[axis]
    return d if d is not None else tf.shape(x)[axis]


def _per_task_broadcast(w: tf.Tensor, rank: int) -> tf.Tensor:
    """[T, C] -> [T, 1, ..., 1, C] for a [T, ...] tensor of the given rank."""
    return tf.reshape(w, [_dim(w, 0)] + [1] * (rank - 2) + [w.shape[-1]])


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(output size, pad before, pad after) of TF's SAME padding."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def _conv_geometry(layer, height: int, width: int):
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    if layer.padding == "same":
        oh, pt, pb = _same_padding(height, kh, sh)
        ow, pl, pr = _same_padding(width, kw, sw)
    else:
        oh, ow = (height - kh) // sh + 1, (width - kw) // sw + 1
        pt = pb = pl = pr = 0
    return oh, ow, (pt, pb, pl, pr)


def _patch_index(height: int, width: int, layer, padded_width: int) -> np.ndarray:
    """Flat positions in the padded [Hp*Wp] image of every (output pixel, kernel tap), in
    the order (oh, ow, i, j): row-major (i, j, c) patches, like kernel.reshape([kh*kw*C, F])."""
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    oh, ow, _ = _conv_geometry(layer, height, width)
    rows = (np.arange(oh) * sh)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    cols = (np.arange(ow) * sw)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    return (rows * padded_width + cols).reshape(-1).astype(np.int32)


def _conv(layer, x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor | None) -> tf.Tensor:
    """Per-task Conv2D: x [T, B, H, W, C], kernel [T, kh, kw, C, F] -> [T, B, H', W', F].

    im2col, then one batched matmul ``[T, B*H'*W', kh*kw*C] @ [T, kh*kw*C, F]``. The patches
    come from ONE tf.gather of precomputed pixel rows of the padded images flattened to
    ``[T*B*Hp*Wp, C]``; its gradient (col2im) is one segment sum over rows. This is several
    times faster, forward and backward, than kh*kw strided slices concatenated on channels
    (CPU strided-slice kernels and their gradients are slow: 5x slower meta-step measured)
    or tf.image.extract_patches.
    """
    t, b = _dim(x, 0), _dim(x, 1)
    height, width, channels = x.shape[2], x.shape[3], x.shape[4]
    if height is None or width is None or channels is None:
        raise Unsupported("the batched conv needs static H, W, C")
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    oh, ow, (pt, pb, pl, pr) = _conv_geometry(layer, height, width)
    filters = kernel.shape[-1]
    images = tf.reshape(x, [-1, height, width, channels])
    if pt or pb or pl or pr:
        images = tf.pad(images, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
    if (kh, kw, sh, sw) == (1, 1, 1, 1):
        patches = images
    else:
        padded_width = width + pl + pr
        pixels = (height + pt + pb) * padded_width
        index = _patch_index(height, width, layer, padded_width)
        if isinstance(t, int) and isinstance(b, int):
            index = (np.arange(t * b, dtype=np.int32)[:, None] * pixels + index).reshape(-1)
        else:
            index = tf.reshape(tf.range(t * b)[:, None] * pixels + index, [-1])
        patches = tf.gather(tf.reshape(images, [-1, channels]), index)
    patches = tf.reshape(patches, [t, -1, kh * kw * channels])
    y = tf.matmul(patches, tf.reshape(kernel, [t, kh * kw * channels, filters]))
    y = tf.reshape(y, [t, b, oh, ow, filters])
    if bias is not None:
        y = y + _per_task_broadcast(bias, 5)
    return layer.activation(y) if layer.activation is not None else y


def _dense(layer, x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor | None) -> tf.Tensor:
    """Per-task Dense on the last axis: x [T, B, ..., in], kernel [T, in, out]."""
    t = _dim(x, 0)
    units = kernel.shape[-1]
    flat = tf.reshape(x, [t, -1, x.shape[-1]])
    y = tf.matmul(flat, kernel)
    y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [units]], 0) if None in x.shape[:-1]
                   else list(x.shape[:-1]) + [units])
    if bias is not None:
        y = y + _per_task_broadcast(bias, len(x.shape))
    return layer.activation(y) if layer.activation is not None else y


def _batch_norm(layer, x: tf.Tensor, gamma, beta) -> tf.Tensor:
    """Training-mode batch norm with each task's own statistics over B (and H, W)."""
    rank = len(x.shape)
    # Exact moments (what the per-task path runs for every Keras batch norm layer, see
    # tf_maml.keras_internals), then tf.nn.batch_normalization.
    axes = list(range(1, rank - 1))
    mean, variance = keras_internals.exact_moments(x, axes, keepdims=True)
    return tf.nn.batch_normalization(
        x, mean, variance,
        offset=None if beta is None else _per_task_broadcast(beta, rank),
        scale=None if gamma is None else _per_task_broadcast(gamma, rank),
        variance_epsilon=layer.epsilon,
    )


def _layer_norm(layer, x: tf.Tensor, gamma, beta) -> tf.Tensor:
    """ContribLayerNorm per example (all non-batch axes), per-task γ and β."""
    rank = len(x.shape)
    axes = list(range(2, rank))
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    var = tf.reduce_mean(tf.square(x - mean), axis=axes, keepdims=True)
    normed = (x - mean) * tf.math.rsqrt(var + 1e-12)
    return normed * _per_task_broadcast(gamma, rank) + _per_task_broadcast(beta, rank)


def _per_example(layer, x: tf.Tensor) -> tf.Tensor:
    if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation)):
        return layer.call(x)  # element-wise: no need to fold the task axis
    t, b = _dim(x, 0), _dim(x, 1)
    y = layer.call(tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)
                              if None in x.shape[2:] else [-1] + list(x.shape[2:])))
    out_shape = y.shape[1:]
    if None in out_shape:
        return tf.reshape(y, tf.concat([[t, b], tf.shape(y)[1:]], 0))
    return tf.reshape(y, [t, b] + list(out_shape))


def _run(steps: Sequence[_Step], stacked: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    for step in steps:
        layer = step.layer
        w = [None if i is None else stacked[i] for i in step.weights]
        dtype = tf.as_dtype(layer.compute_dtype)
        if x.dtype.is_floating and x.dtype != dtype:
            x = tf.cast(x, dtype)  # what Keras' autocasting of layer inputs does
        if step.kind == "conv":
            x = _conv(layer, x, *w)
        elif step.kind == "dense":
            x = _dense(layer, x, *w)
        elif step.kind == "batch_norm":
            x = _batch_norm(layer, x, *w)
        elif step.kind == "layer_norm":
            x = _layer_norm(layer, x, *w)
        else:
            x = _per_example(layer, x)
    return x


def batched_forward(model: keras.Model, stacked_weights: Sequence[tf.Tensor],
                    x: tf.Tensor) -> tf.Tensor:
    """Every task's forward pass at once, in training mode (batch norm batch statistics).

    ``stacked_weights[i]`` is ``[T, *model.trainable_variables[i].shape]`` (task t's
    weights), ``x`` is ``[T, B, ...]``. Returns ``[T, B, ...]`` whose slice t equals
    ``tf_maml.adapt.forward(model, [w[t] for w in stacked_weights], x[t])``.
    """
    steps = _layer_steps(model)
    stacked = [tf.convert_to_tensor(w) for w in stacked_weights]
    for w, v in zip(stacked, model.trainable_variables):
        if tuple(w.shape[1:]) != tuple(v.shape):
            raise ValueError(f"stacked weight {w.shape} does not match {v.path} {v.shape}")
    return _run(steps, stacked, tf.convert_to_tensor(x))


# ---------------------------------------------------------------------------- memory
def patch_bytes(model: keras.Model, batch_shapes: Sequence[Sequence[int]]) -> int:
    """Bytes of the im2col patch tensors of one forward pass of each input shape given.

    ``batch_shapes`` are shapes ``[T, B, *input_shape]`` of the inputs that are run, e.g.
    ``(support_x.shape, query_x.shape)``. A meta-step keeps the patches of every forward
    pass on the tape (``inner_steps`` support passes and one query pass) and, second order,
    as much again for the recorded inner gradients. A budget on this number for the
    support and query shapes (e.g. 256 MB) keeps large images on the per-task path:

    * Omniglot conv4-64, 32 tasks x (5 + 5): 51 MB; 16 tasks x (20 + 20): 101 MB. Peak RSS
      of a second-order meta-step measured 8% above map_fn's (980 vs 909 MB; 5 steps:
      2151 vs 1987 MB).
    * MiniImageNet conv4-32 84x84, 4 tasks x (5 + 75), 5 steps: 1043 MB; peak RSS 6.0 GB
      vs 3.2 GB with map_fn, and slower than map_fn (convolutions this size are not
      dispatch-bound).
    """
    steps = _layer_steps(model)
    total = 0
    for shape in batch_shapes:
        shape = [int(d) for d in shape]
        per_example = tuple(shape[2:])
        examples = shape[0] * shape[1]
        for step in steps:
            layer = step.layer
            if step.kind == "conv":
                height, width, channels = per_example
                oh, ow, _ = _conv_geometry(layer, height, width)
                kh, kw = layer.kernel_size
                itemsize = tf.as_dtype(layer.compute_dtype).size
                total += examples * oh * ow * kh * kw * channels * itemsize
                per_example = (oh, ow, layer.filters)
            elif step.kind in ("batch_norm", "layer_norm"):
                continue
            else:
                per_example = tuple(layer.compute_output_shape((1,) + per_example))[1:]
    return int(total)


# ---------------------------------------------------------------------------- the mapping
def _stack(params: Sequence[tf.Tensor], count) -> list[tf.Tensor]:
    # Inside the outer tape: its gradient sums the per-task meta-gradients back onto θ.
    # Static shapes where known: under XLA a shape computed with tf.shape(θ) made the
    # variables compile-time constants (a recompilation after every meta-update).
    out = []
    for p in params:
        if isinstance(count, int) and p.shape.is_fully_defined():
            out.append(tf.broadcast_to(p[None], [count, *p.shape]))
        else:
            out.append(tf.broadcast_to(p[None], tf.concat([[count], tf.shape(p)], 0)))
    return out


def _split(model: keras.Model, steps: Sequence[_Step]) -> adapt_lib.Split | None:
    """The batched forward pass cut before the head: the model's one cut
    (:func:`tf_maml.adapt.head_cut`), each part run as its layers' batched steps."""
    cut = adapt_lib.head_cut(model)
    if cut is None:
        return None
    step_of = {id(step.layer): step for step in steps}
    return cut.split(lambda layers: functools.partial(_run, [step_of[id(x)] for x in layers]))


def _per_task_penalty(penalty: adapt_lib.PenaltyFn | None) -> adapt_lib.PenaltyFn | None:
    """R of each task's weights ``[T]`` from stacked weights ``[T, ...]``: the penalty
    mapped over the task axis. Not the penalty of the stacks themselves: that one sums
    over the tasks, whose sum's gradient is right for L1 or L2 only by luck of their
    being sums of elements (a norm's, say, would mix the tasks)."""
    if penalty is None:
        return None
    return lambda stacked: tf.vectorized_map(penalty, list(stacked))


class Batched(Mapping):
    """The mapping that runs every task of a batch at once through :func:`batched_forward`.

    A task function receives the whole batch (each tensor ``[T, ...]``) and a
    :class:`~tf_maml.mapping.base.Runner` whose ``weights(θ)`` stacks θ per task and whose
    ``per_task(fn)`` returns one loss (or metric) per task; its outputs are ``[T]``.
    """

    name = "batched"

    def __init__(self, model: keras.Model):
        self.model = model

    def runner(self, batch) -> Runner:
        steps, count = _layer_steps(self.model), num_tasks(batch)
        return Runner(forward=lambda weights, x: _run(steps, weights, x),
                      weights=lambda theta: _stack(theta, count),
                      per_task=lambda fn: lambda y_true, y_pred: per_task_values(
                          fn, y_true, y_pred),
                      split=_split(self.model, steps),
                      penalty=_per_task_penalty(adapt_lib.weight_penalty(self.model)))

    def map(self, fn, batch, signature):
        """``fn(batch, runner)`` once, for every task at once."""
        del signature  # the outputs are already stacked
        batch = tuple(tf.convert_to_tensor(t) for t in batch)
        return fn(batch, self.runner(batch))


__all__ = [
    "Batched", "Unsupported", "batched_forward", "patch_bytes", "per_task_values",
    "supports",
    "unsupported_reason",
]
