"""Every use of Keras' private API in tf_maml, in one place.

Keras 3 has no public way to do these few things, and each is needed for a number to be
right or a fast path to exist. ``tests/test_keras_internals.py`` exercises each one on a
known model, so a Keras release that renames or changes one fails there, loudly, rather
than somewhere deep in a meta-gradient.

* :func:`layers_of`: every layer of a model, nested ones included (``_flatten_layers``).
* :func:`is_functional`, :func:`producer` and :func:`layer_chain`: walk a functional
  model's graph from its output back to its input (``Functional``, ``_keras_history``,
  ``_inbound_nodes``). The batched-task path rewrites such a linear chain of layers, and
  ANIL's inner loop runs it in two parts, body and head (:class:`tf_maml.adapt.Split`).
* :func:`use_exact_moments`: batch statistics that are exact to every order of derivative
  for a ``keras.layers.BatchNormalization`` (its ``_moments`` and ``_reduction_axes``).
  ``tf.nn.moments``, what Keras' layer uses on TensorFlow, computes the variance as
  mean((x − stop_gradient(mean))²): the same values and first derivatives, but its second
  derivatives miss the mean's dependence on x, so a second-order MAML meta-gradient through
  a plain Keras batch norm is off (e.g. non-zero for a bias that batch norm cancels, where
  finite differences give 0). This is the one mechanism for exact batch-norm second
  derivatives in tf_maml; :func:`exact_moments` is the one formula (the batched-task path
  computes its per-task statistics with it too).
"""

from __future__ import annotations

import types

import keras
from keras import ops


# ---------------------------------------------------------------------------- layers
def layers_of(model: keras.layers.Layer, include_self: bool = True) -> list:
    """Every layer of ``model``, recursively (nested models and layers of layers)."""
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def is_functional(model: keras.Model) -> bool:
    """Whether ``model`` is a functional model, built by ``keras.Model(inputs, outputs)``
    (its class is not public)."""
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def producer(tensor) -> tuple[keras.layers.Layer, list, tuple, dict] | None:
    """The call that produced a symbolic tensor of a functional model: ``(layer, input
    tensors, positional arguments, keyword arguments)``, or None for a tensor no layer
    call produced (a model input)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None
    layer = history.operation
    node = layer._inbound_nodes[history.node_index]
    return layer, list(node.input_tensors), tuple(node.arguments.args), dict(node.arguments.kwargs)


class NotAChain(ValueError):
    """The model's graph is not one chain of layers, each called on the previous output."""


def layer_chain(model: keras.Model) -> list:
    """The layers of ``model`` in order (nested models flattened), if its graph is a single
    chain: calling them one after the other on the input is calling the model. Raises
    :class:`NotAChain` saying why not."""
    if isinstance(model, keras.Sequential):
        layers = []
        for layer in model.layers:
            layers.extend(layer_chain(layer) if isinstance(layer, keras.Model) else [layer])
        return layers
    if not is_functional(model):
        raise NotAChain(f"{type(model).__name__} is a subclassed model: its call is opaque")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NotAChain("the model has several inputs or outputs")
    layers, tensor = [], model.outputs[0]
    while tensor is not model.inputs[0]:
        call = producer(tensor)
        if call is None or isinstance(call[0], keras.layers.InputLayer):
            raise NotAChain("the graph does not lead back to the model's input")
        op, inputs, args, kwargs = call
        # Keras records e.g. mask=None; a set keyword (training=False, ...) is not ours.
        set_kwargs = [k for k, v in kwargs.items() if v is not None]
        if set_kwargs or len(args) != 1 or len(inputs) != 1:
            raise NotAChain(f"layer {op.name!r} is not called on one tensor alone")
        layers.extend(reversed(layer_chain(op)) if isinstance(op, keras.Model) else [op])
        tensor = inputs[0]
    return layers[::-1]


# ---------------------------------------------------------------------------- batch norm
def exact_moments(x, axes, keepdims: bool = False):
    """Mean and (biased) variance of ``x`` over ``axes``, both differentiated exactly, to
    any order: var = mean((x − mean(x))²) with nothing stopped."""
    mean = ops.mean(x, axis=axes, keepdims=True)
    variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
    if not keepdims:
        mean, variance = ops.squeeze(mean, axis=axes), ops.squeeze(variance, axis=axes)
    return mean, variance


def _exact_layer_moments(layer, inputs, mask):
    """``BatchNormalization._moments`` with :func:`exact_moments` (a mask, or statistics
    synchronised over replicas, keep Keras' own: neither is what MAML's per-task batch
    statistics are)."""
    if mask is not None or layer.synchronized:
        return type(layer)._moments(layer, inputs, mask)
    return exact_moments(inputs, layer._reduction_axes)


def use_exact_moments(model: keras.layers.Layer) -> None:
    """Every ``keras.layers.BatchNormalization`` in ``model`` (subclasses included) computes
    its training-mode batch statistics with :func:`exact_moments` from now on.

    Same forward values as Keras' own; only the second derivatives change (they become
    exact). The layers of this model alone are affected: an attribute of each layer
    instance, set once (calling this again changes nothing). No Keras global is touched.
    """
    for layer in layers_of(model):
        if (isinstance(layer, keras.layers.BatchNormalization)
                and not isinstance(layer.__dict__.get("_moments"), types.MethodType)):
            layer._moments = types.MethodType(_exact_layer_moments, layer)
