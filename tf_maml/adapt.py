"""The inner loop of MAML: fast weights for any built Keras model.

This module is THE one implementation of adaptation in tf_maml. Training, evaluation,
SavedModel export and the RL learner all call :func:`adapt`, whichever task mapping runs
them (:mod:`tf_maml.mapping`): a fast path that runs several tasks at once hands it another
forward function (every task's weights stacked), never its own SGD step.

For a model with trainable weights θ, one inner step on a task's support set is

    θ' = θ − α ∇θ L(f(support_x; θ), support_y)            (Finn et al. 2017, eq. 1)

and ``num_steps`` steps repeat it from the previous fast weights. A model with weight
regularizers descends L + R(θ') instead, its penalties at the fast weights
(:func:`weight_penalty`), as Keras' ``fit`` adds ``model.losses``. The model's own code is
never changed: it is called with substituted weights inside a ``keras.StatelessScope`` (the
mechanism of ``model.stateless_call``, see :func:`forward`); its dropout-like layers draw
from a seed the caller gives each pass (meta-training), or nothing without one (evaluation,
inference, export). The gradient of the support loss is taken with an inner
``tf.GradientTape``; when an outer tape watches θ, the meta-gradient flows back *through*
that inner gradient (second order). With ``first_order=True`` the inner gradient is wrapped
in ``tf.stop_gradient``, which is exactly the original code's ``--stop_grad`` (first-order
MAML).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence

import keras
import tensorflow as tf

from tf_maml import keras_internals

ADAPT_LAYERS = ("all", "head")  # MAML adapts every layer; ANIL only the head

# The most inner steps a compiled step (training's meta-gradient, evaluation) unrolls: each
# step adds its own ops to the traced graph, about 0.1 s of tracing a step even for a
# 3-layer MLP (1000 steps: minutes), so that 10**9 traced without end, with no tensor large
# enough for a memory check to see. The paper takes at most 10, the baselines 15.
MAX_UNROLLED_STEPS = 1000


# What each inner step costs, as :func:`unrolled_steps_problem` says it: a compiled step's
# (supervised training and evaluation, and RL's meta-gradient, which unrolls its inner steps
# from θ), or RL evaluation's, which runs a step at a time but samples a fresh batch of
# trajectories of every task for each: 10**9 of them ran for years, with no tensor large
# enough for a memory check to see either.
UNROLLED = ("would each be unrolled into the traced graph (its ops and tracing time grow "
            "with every step: hours before the first task)")
SAMPLED = ("would each sample a fresh batch of trajectories of every task (the run's time "
           "grows with every step: 10**9 would not end)")
# An export's steps run in a loop of the graph, at every call (tf_maml.export).
SERVED = ("would each run in every call of the export's adapt_and_predict (its time grows "
          "with every step: 10**9 would not return)")


def unrolled_steps_problem(num_steps: int, each: str = UNROLLED) -> str | None:
    """Why ``num_steps`` inner steps, which ``each`` cost what it says (:data:`UNROLLED`,
    :data:`SAMPLED`, :data:`SERVED`), cannot be taken: more than
    :data:`MAX_UNROLLED_STEPS`; None if they can."""
    if num_steps <= MAX_UNROLLED_STEPS:
        return None
    return (f"{num_steps} inner steps {each}, more than the {MAX_UNROLLED_STEPS} tf_maml "
            f"takes; give at most {MAX_UNROLLED_STEPS}")


LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
# R(w), the weight penalty, over weights laid out as a forward pass takes them: a scalar for
# one task's, one value per task for a fast path's (e.g. stacked), see :func:`weight_penalty`.
PenaltyFn = Callable[[Sequence[tf.Tensor]], tf.Tensor]
# A forward pass over weights laid out like ``model.trainable_variables``: one task's
# (the default, :func:`forward`), or a fast path's, e.g. every task's weights stacked.
ForwardFn = Callable[[Sequence[tf.Tensor], tf.Tensor], tf.Tensor]

# Layers whose weights the original code keeps out of the inner loop: its `weights` dict
# held only conv/dense kernels and biases; batch/layer-norm offsets were meta-trained by
# Adam but never adapted (cbfinn/maml issue #43).
NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def _normalization_variable_ids(model: keras.Model) -> set[int]:
    ids: set[int] = set()
    for layer in keras_internals.layers_of(model):
        if isinstance(layer, NORMALIZATION_LAYERS) or getattr(layer, "_maml_normalization", False):
            ids.update(id(v) for v in layer.trainable_variables)
    return ids


def head_layer(model: keras.Model) -> keras.layers.Layer:
    """The model's head: the layer with trainable weights nearest its output, e.g. the
    final Dense of a conv4 classifier. Read from the graph, Sequential and functional
    models' (nested ones followed, :func:`_graph_head`), or else from the traced call
    (:func:`_weight_nearest_output`): Keras' flattened layer order is no guide, as it
    lists a nested model's layers last to first (so the first Dense of a nested head was
    taken) and a subclassed model's in the order of its attributes (``self.classifier``
    set before ``self.features`` made a feature layer the head)."""
    layers = [layer for layer in keras_internals.layers_of(model)
              if layer.trainable_variables and not getattr(layer, "layers", None)]
    if not layers:
        raise ValueError(f"model {model.name} has no layer with trainable weights")
    head = _graph_head(model)
    if head is not None:
        return head
    nearest = id(_weight_nearest_output(model))
    return next(layer for layer in layers
                if any(id(v) == nearest for v in layer.trainable_variables))


def _trainable(layer: keras.layers.Layer) -> bool:
    return bool(layer.trainable_variables)


def _graph_head(model: keras.layers.Layer, weighted=_trainable) -> keras.layers.Layer | None:
    """The ``weighted`` layer (default: with trainable weights) nearest the output of a
    Sequential (its last such layer) or functional model (breadth first back from its
    outputs), nested models followed; None for any other model, or one whose graph leads
    to no such layer."""
    if isinstance(model, keras.Sequential):
        for layer in reversed(model.layers):
            if weighted(layer):
                return _graph_head(layer, weighted) if getattr(layer, "layers", None) else layer
        return None
    if not keras_internals.is_functional(model):
        return None
    frontier, seen = list(model.outputs), set()
    while frontier:
        found = []
        for tensor in frontier:
            call = keras_internals.producer(tensor)
            if call is not None and weighted(call[0]):
                found.append(call[0])
        if found:
            layer = found[0]
            return _graph_head(layer, weighted) if getattr(layer, "layers", None) else layer
        seen.update(id(t) for t in frontier)
        frontier = [t for tensor in frontier
                    for t in (keras_internals.producer(tensor) or (None, []))[1]
                    if id(t) not in seen]
    return None


def _frozen_head(model: keras.Model) -> keras.layers.Layer | None:
    """The layer with weights nearest the output of a Sequential or functional model if it
    is frozen (``trainable=False``), where :func:`head_layer`, which takes trainable weights
    only, finds the next layer back; None if it is not, or the model is subclassed (its
    call is opaque). A frozen normalisation layer is a fixed transform after the head (its
    statistics kept), no head itself."""
    def weighted(layer):
        if getattr(layer, "layers", None):
            return bool(layer.weights)
        normalization = isinstance(layer, NORMALIZATION_LAYERS) or getattr(
            layer, "_maml_normalization", False)
        return bool(layer.weights) and (layer.trainable or not normalization)

    nearest = _graph_head(model, weighted)
    return nearest if nearest is not None and not nearest.trainable_variables else None


def _weight_nearest_output(model: keras.Model):
    """The trainable variable of ``model`` fewest ops away from its output in the graph of
    :func:`forward` (traced once on the shape it was built with), e.g. the head's bias."""
    dtype = tf.float32
    if keras_internals.is_functional(model) and len(model.inputs) == 1:
        # (a graph whose nearest weighted layer is an opaque, subclassed model)
        shape, dtype = tuple(model.inputs[0].shape), tf.as_dtype(model.inputs[0].dtype)
    else:
        shape = (model.get_build_config() or {}).get("input_shape")
    if not isinstance(shape, (list, tuple)) or not shape or any(
            isinstance(d, (list, tuple, dict)) for d in shape):
        raise ValueError(f"cannot tell the head of model {model.name}: it was not built on "
                         "one tensor; give a Sequential or functional model")
    variables = model.trainable_variables

    def traced(x, *weights):
        # Not the graph's root scope, which may not begin with "_" (as Keras names the model
        # of a class `_Net`, "__net").
        with tf.name_scope("forward"):
            return forward(model, weights, x)

    try:
        concrete = tf.function(traced, autograph=False).get_concrete_function(
            tf.TensorSpec((None, *shape[1:]), dtype),
            *[tf.TensorSpec(v.shape, v.dtype) for v in variables])
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot tell the head of model {model.name}: its call failed on "
                         f"{dtype.name} examples of shape {tuple(shape[1:])} ({e}); "
                         "give a Sequential or functional model") from None
    placeholders = {id(t.op): i for i, t in enumerate(concrete.inputs[1:len(variables) + 1])}
    frontier, seen = [t.op for t in concrete.outputs], set()
    while frontier:  # breadth first from the output, towards the inputs
        found = [placeholders[id(op)] for op in frontier if id(op) in placeholders]
        if found:
            return variables[min(found)]
        seen.update(id(op) for op in frontier)
        frontier = list({id(t.op): t.op for op in frontier for t in op.inputs
                         if id(t.op) not in seen}.values())
    raise ValueError(f"model {model.name}'s output reads none of its trainable weights")


def weight_penalty(model: keras.Model) -> PenaltyFn | None:
    """R(w) = Σ_v v.regularizer(w_v) over the trainable variables v of ``model`` that have a
    regularizer (``Dense(kernel_regularizer=...)``, ``add_weight(regularizer=...)``), for
    one task's weights ``w`` laid out like ``model.trainable_variables``; None if no
    trainable variable has one.

    What Keras' ``fit`` adds to the loss it minimises (``model.losses``' weight terms), but
    evaluated on the given weights (the fast weights θ' in the inner loop, θ in the outer)
    rather than the variables. A penalty is a function of the weights alone, so no forward
    pass is needed and every task mapping computes it the same way."""
    terms = [(i, v.regularizer) for i, v in enumerate(model.trainable_variables)
             if getattr(v, "regularizer", None) is not None]
    if not terms:
        return None

    def penalty(weights: Sequence[tf.Tensor]) -> tf.Tensor:
        return tf.add_n([tf.cast(regularizer(weights[i]), weights[i].dtype)
                         for i, regularizer in terms])

    return penalty


def activity_regularized_layers(model: keras.Model) -> list[str]:
    """The names of ``model``'s layers with an activity regularizer: a penalty on their
    outputs, which Keras collects in ``model.losses`` during a forward pass, and which no
    loss here adds (:func:`weight_penalty` is of the weights alone)."""
    names = [layer.name for layer in keras_internals.layers_of(model)
             if getattr(layer, "activity_regularizer", None) is not None]
    return list(dict.fromkeys(names))


# The layers that draw random numbers in training mode which tf_maml runs (dropout-like), with
# the attribute that sets their strength: each draws nothing when it is 0 (their call reads
# ``training and self.rate > 0``), which is how :func:`forward` switches them off.
# SpatialDropout1D/2D/3D are Dropouts.
RANDOM_LAYERS = (
    (keras.layers.Dropout, "rate"),
    (keras.layers.GaussianDropout, "rate"),
    (keras.layers.AlphaDropout, "rate"),
    (keras.layers.GaussianNoise, "stddev"),
)
_RANDOM_RATES = ("rate", "dropout", "recurrent_dropout", "stddev")


def draws_random_numbers(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` holds a ``keras.random.SeedGenerator`` and may draw from it in
    training mode: all such but those whose rates (dropout's ``rate``, a recurrent cell's
    ``dropout`` and ``recurrent_dropout``, noise's ``stddev``) are all 0."""
    if not any(isinstance(v, keras.random.SeedGenerator) for v in vars(layer).values()):
        return False
    rates = [getattr(layer, a) for a in _RANDOM_RATES if hasattr(layer, a)]
    return not rates or any(float(r or 0) > 0 for r in rates)


def _rate_attribute(layer: keras.layers.Layer) -> str | None:
    return next((attribute for kind, attribute in RANDOM_LAYERS
                 if isinstance(layer, kind)), None)


def random_layers(model: keras.Model) -> list:
    """The layers of ``model`` that draw random numbers in training mode and that tf_maml
    runs (:data:`RANDOM_LAYERS`: dropout, Gaussian noise), in the model's layer order."""
    return [layer for layer in keras_internals.layers_of(model)
            if draws_random_numbers(layer) and _rate_attribute(layer) is not None
            and getattr(layer, "seed_generator", None) is not None]


def drawing_layers(model: keras.Model, unsupported_only: bool = False) -> list[str]:
    """The names of ``model``'s layers that draw random numbers in training mode
    (:func:`draws_random_numbers`), for what runs none of them (RL, the baselines); with
    ``unsupported_only``, those but :func:`random_layers` (a recurrent layer's
    ``dropout=``, random augmentation, a layer of one's own), whose draws could be neither
    seeded per forward pass nor switched off."""
    supported = {id(layer) for layer in random_layers(model)} if unsupported_only else set()
    names = [layer.name for layer in keras_internals.layers_of(model)
             if draws_random_numbers(layer) and id(layer) not in supported]
    return list(dict.fromkeys(names))


def fold_seed(seed: tf.Tensor, *data) -> tf.Tensor:
    """The stateless seed ``seed`` ([2] integers) with each of ``data`` (integers, Python or
    scalar tensors) folded in, in order: a new seed, independent of the others."""
    seed = tf.cast(seed, tf.int64)
    for value in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


@contextlib.contextmanager
def _random_layers_off(layers: Sequence) -> Iterator[None]:
    """Every one of ``layers`` (:func:`random_layers`) draws nothing while this is open:
    its rate set to 0, so a call (or the graph traced) in training mode passes its input
    through, as in inference, while batch norm still runs on batch statistics. The layers
    themselves change for that while: a training pass traced at the same time in another
    thread would lose its dropout (tf_maml traces in one thread)."""
    saved = [(layer, _rate_attribute(layer)) for layer in layers]
    saved = [(layer, attribute, getattr(layer, attribute)) for layer, attribute in saved]
    try:
        for layer, attribute, _ in saved:
            setattr(layer, attribute, 0.0)
        yield
    finally:
        for layer, attribute, rate in saved:
            setattr(layer, attribute, rate)


def _seeded_state(model: keras.Model, non_trainable: list, seed: tf.Tensor | None,
                  layers: Sequence) -> list:
    """``non_trainable`` with the seed state of each of ``layers`` (their SeedGenerator's,
    a non-trainable variable of the model) replaced by one drawn from the pass's ``seed``:
    the layer's own state with ``seed`` and its place among ``layers`` folded in, so that
    the layers of one pass, and every pass, draw apart, and ``Dropout(seed=...)`` still
    matters. Unchanged without a seed."""
    if seed is None:
        return non_trainable
    at = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    out = list(non_trainable)
    for j, layer in enumerate(layers):
        i = at[id(layer.seed_generator.state)]
        out[i] = tf.cast(fold_seed(out[i], seed[0], seed[1], j), out[i].dtype)
    return out


def adapted_mask(model: keras.Model, adapt_norm: bool = False,
                 adapt_layers: str = "all") -> list[bool]:
    """Which of ``model.trainable_variables`` the inner loop adapts.

    By default every trainable variable except normalisation parameters (the original's
    behaviour); ``adapt_norm=True`` adapts all of them. A custom layer can mark itself as a
    normalisation layer by setting ``_maml_normalization = True``.

    ``adapt_layers="head"`` is ANIL (Raghu et al., ICLR 2020, "Almost No Inner Loop"): only
    the head (:func:`head_layer`) adapts; the body is meta-trained through the outer loop
    alone. The inner gradient is then taken for the head's weights only, so its backward
    pass stops at the head.
    """
    if adapt_layers not in ADAPT_LAYERS:
        raise ValueError(f"adapt_layers must be one of {ADAPT_LAYERS}, got {adapt_layers!r}")
    if adapt_layers == "head":
        head = head_layer(model)
        frozen = _frozen_head(model)
        if frozen is not None:
            raise ValueError(
                f"adapt='head' (ANIL) adapts the model's head, the layer with weights nearest "
                f"its output, but that layer, {frozen.name}, is frozen (trainable=False): "
                f"{head.name} would adapt in its place. Unfreeze it (trainable = True, on a "
                "frozen model that holds it too), or pick another adaptation (adapt='all')")
        head_ids = {id(v) for v in head.trainable_variables}
        return [id(v) in head_ids for v in model.trainable_variables]
    if adapt_norm:
        return [True] * len(model.trainable_variables)
    norm_ids = _normalization_variable_ids(model)
    return [id(v) not in norm_ids for v in model.trainable_variables]


def forward(
    model: keras.Model,
    weights: Sequence[tf.Tensor],
    inputs: tf.Tensor,
    non_trainable: Sequence[tf.Tensor] | None = None,
    training: bool = True,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """Runs ``model`` on ``inputs`` with ``weights`` in place of its trainable variables.

    ``seed`` ([2] integers): the random layers (:func:`random_layers`, e.g. dropout) draw
    from it, a mask of their own for each seed (meta-training gives each forward pass its
    own, see :func:`tf_maml.mapping.base.model_runner`). Without a seed they draw nothing:
    evaluation, inference and export are deterministic, dropout off as in Keras' inference
    mode, while batch norm keeps the batch's statistics.

    ``training=True`` by default, as the original always ran batch norm in training mode
    (batch statistics at meta-train and meta-test alike). Updated non-trainable state (batch
    norm moving statistics) is discarded, like the original, which never ran those updates.

    The model is called as Keras calls it, ``model(inputs, training=...)``, inside a
    ``keras.StatelessScope`` mapping its variables to the given tensors. This is what
    ``model.stateless_call`` does, except that ``stateless_call`` runs ``call()`` directly:
    it passes ``training`` to a ``call()`` that has no such argument, and skips Keras'
    propagation of ``training`` to nested layers, so a subclassed model that leaves that to
    Keras ran its batch norm on moving statistics.

    Every ``keras.layers.BatchNormalization`` of the model computes its batch statistics
    exactly to every order (:func:`tf_maml.keras_internals.use_exact_moments`), so
    second-order meta-gradients through it are exact.
    """
    trainable_vars = model.trainable_variables
    non_trainable_vars = model.non_trainable_variables
    if non_trainable is None:
        non_trainable = [v.value for v in non_trainable_vars]
    weights, non_trainable = list(weights), list(non_trainable)
    if len(weights) != len(trainable_vars) or len(non_trainable) != len(non_trainable_vars):
        raise ValueError(
            f"forward needs {len(trainable_vars)} trainable and {len(non_trainable_vars)} "
            f"non-trainable tensors, got {len(weights)} and {len(non_trainable)}"
        )
    keras_internals.use_exact_moments(model)
    noisy = random_layers(model)
    non_trainable = _seeded_state(model, non_trainable, seed, noisy)
    mapping = list(zip(trainable_vars, weights)) + list(zip(non_trainable_vars, non_trainable))
    off = _random_layers_off(noisy) if seed is None else contextlib.nullcontext()
    with off, keras.StatelessScope(state_mapping=mapping):
        return model(inputs, training=training)


def seeded_forward(model: keras.Model, seed: tf.Tensor) -> ForwardFn:
    """:func:`forward` of one task whose random layers draw afresh at every call: the k-th
    call (each inner step's support pass, then the query passes, in the order they are
    traced) from ``seed`` with k folded in, so no two passes share a mask, and the same
    ``seed`` gives the same masks again."""
    passes = itertools.count()

    def forward_fn(weights, x):
        return forward(model, weights, x, seed=fold_seed(seed, next(passes)))

    return forward_fn


@dataclasses.dataclass(frozen=True)
class HeadCut:
    """A model cut just before its head (:func:`head_layer`): its graph is a chain of layers,
    ``body + head``, calling them one after the other is calling the model, and only the
    ``head`` layers read the trainable variables at ``head_indices`` (indices into
    ``model.trainable_variables``). The one cut of a model at its head in tf_maml: the
    per-task and batched forward passes run its two parts (:meth:`split`), and the
    baselines take the features at the head's input."""

    body: tuple
    head: tuple
    head_indices: frozenset[int]

    @property
    def head_layer(self) -> keras.layers.Layer:
        return self.head[0]

    def split(self, run: Callable[[Sequence], ForwardFn]) -> Split:
        """The forward pass in two parts, ``run(layers)`` giving the pass of a sub-chain."""
        return Split(run(self.body), run(self.head), self.head_indices)


def _cut_or_reason(model: keras.Model) -> HeadCut | str:
    try:
        chain = [layer for layer in keras_internals.layer_chain(model)
                 if not isinstance(layer, keras.layers.InputLayer)]
    except keras_internals.NotAChain as e:
        return str(e)
    head = head_layer(model)
    at = [i for i, layer in enumerate(chain) if layer is head]
    if len(at) != 1:
        return f"its head {head.name!r} is not called exactly once"
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    reads = [{index[id(v)] for v in layer.trainable_variables if id(v) in index}
             for layer in chain]
    body, head_side = set().union(*reads[:at[0]]), set().union(*reads[at[0]:])
    if body & head_side:
        return "a weight is read both before and after the head's input"
    if body | head_side != set(range(len(model.trainable_variables))):
        return "some trainable variables are not read by its chain of layers"
    return HeadCut(tuple(chain[:at[0]]), tuple(chain[at[0]:]), frozenset(head_side))


def head_cut(model: keras.Model, required: bool = False) -> HeadCut | None:
    """The :class:`HeadCut` of a model whose graph is a chain of layers (Sequential or
    functional) with the head in it once, each weight read on one side of the cut; None for
    any other model (a subclassed one: its call is opaque), or with ``required`` a
    ValueError saying why."""
    cut = _cut_or_reason(model)
    if isinstance(cut, HeadCut):
        return cut
    if required:
        raise ValueError(f"model {model.name} cannot be cut before its head: {cut}; give a "
                         "Sequential or functional model whose layers form one chain")
    return None


@dataclasses.dataclass(frozen=True)
class Split:
    """A forward pass cut just before the model's head (:class:`HeadCut`):
    ``forward(w, x) == head(w, body(w, x))``, where ``body`` reads none of the weights at
    ``head_indices`` (indices into ``model.trainable_variables``).

    When the inner loop adapts only those weights (ANIL), the body's features are the same
    at every inner step, so they are computed once (:func:`trajectory_forward`) and only
    the head runs at each step. The outer tape records that one body pass, and the
    meta-gradient reaches the body's weights through the features, as before."""

    body: ForwardFn
    head: ForwardFn
    head_indices: frozenset[int]

    def serves(self, mask: Sequence[bool] | None, step_params=None) -> bool:
        """Whether the body is the same at every inner step: every weight the mask adapts
        is the head's, and no step changes another (no ``step_params``, see :func:`adapt`)."""
        return step_params is None and mask is not None and all(
            i in self.head_indices for i, adapted in enumerate(mask) if adapted)


def model_split(model: keras.Model) -> Split | None:
    """The :class:`Split` of :func:`forward`'s unseeded pass of one task through the
    model's :class:`HeadCut`; None for a model without one, which then runs whole."""
    cut = head_cut(model)
    if cut is None:
        return None
    noisy = random_layers(model)

    def run(layers):
        def part(weights, x):
            keras_internals.use_exact_moments(model)
            mapping = (list(zip(model.trainable_variables, weights))
                       + [(v, v.value) for v in model.non_trainable_variables])
            # Unseeded, as forward without a seed: its random layers draw nothing (a seeded
            # pass, meta-training's, runs whole: see tf_maml.mapping.base.model_runner).
            with _random_layers_off(noisy), keras.StatelessScope(state_mapping=mapping):
                for layer in layers:  # what the model's call does, in two parts
                    x = layer(x, training=True)
            return x
        return part

    return cut.split(run)


def trajectory_forward(forward_fn: ForwardFn, x: tf.Tensor,
                       weights: Sequence[tf.Tensor] | Callable[[], Sequence[tf.Tensor]],
                       split: Split | None = None, mask: Sequence[bool] | None = None,
                       step_params=None) -> tuple[ForwardFn, tf.Tensor]:
    """``(f, inputs)`` with ``f(w, inputs) == forward_fn(w, x)`` for the weights ``w`` of
    every inner-loop trajectory from ``weights`` (:func:`adapt` with ``mask`` and
    ``step_params``). ANIL's feature caching, written once: when ``split`` serves the
    trajectory (:meth:`Split.serves`), ``inputs`` are the body's features of ``x``,
    computed here once from ``weights``, and ``f`` is the head; else ``forward_fn`` and
    ``x`` themselves. ``weights`` may be a function returning them, called only for the
    cut (laying θ out per task costs ops that nothing else would use)."""
    if split is not None and split.serves(mask, step_params):
        return split.head, split.body(weights() if callable(weights) else weights, x)
    return forward_fn, x


def inner_step(
    forward_fn: ForwardFn,
    weights: Sequence[tf.Tensor],
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    loss_fn: LossFn,
    inner_lr: float | tf.Tensor | Sequence[tf.Tensor],
    first_order: bool = False,
    mask: Sequence[bool] | None = None,
    penalty_fn: PenaltyFn | None = None,
) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """One SGD step on the support loss, with predictions ``forward_fn(weights, x)``.
    Returns (new weights, support loss, support predictions).

    ``penalty_fn``: the weight penalty R (:func:`weight_penalty`), added to the loss the
    step descends, R at ``weights`` (the fast weights), as Keras' ``fit`` adds
    ``model.losses``: θ' − α(∇L + ∇R(θ')). The support loss returned is L alone.

    ``inner_lr`` is α: a scalar, or one tensor per trainable variable, broadcast against
    it (Meta-SGD: its shape; MAML++'s LSLR: a scalar).
    ``forward_fn`` and a vector-valued ``loss_fn``: see :func:`adapt`.
    """
    weights = list(weights)
    mask = [True] * len(weights) if mask is None else list(mask)
    adapted = [w for w, m in zip(weights, mask) if m]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(adapted)
        preds = forward_fn(weights, support_x)
        loss = loss_fn(support_y, preds)
        descended = loss
        if penalty_fn is not None:  # (one value per task, as the loss, on a fast path)
            descended = loss + tf.cast(penalty_fn(weights), loss.dtype)
    # For a vector of per-task losses this is the gradient of their sum, i.e. each task's
    # own gradient for its own (stacked) weights.
    grads = tape.gradient(descended, adapted, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # An embedding lookup's gradient is sparse (tf.IndexedSlices), which `lr * g` cannot take:
    # made dense, it is the step on every row (zero for the rows no token used).
    grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
    if first_order:
        grads = [tf.stop_gradient(g) for g in grads]
    per_var_lr = isinstance(inner_lr, (list, tuple))
    new_weights, gi = [], 0
    for i, (w, m) in enumerate(zip(weights, mask)):
        if m:
            lr = inner_lr[i] if per_var_lr else inner_lr
            new_weights.append(w - lr * grads[gi])
            gi += 1
        else:
            new_weights.append(w)
    return new_weights, loss, preds


def adapt(
    model: keras.Model,
    weights: Sequence[tf.Tensor],
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    loss_fn: LossFn,
    inner_lr: float | tf.Tensor | Sequence[tf.Tensor] | Callable[[int], object],
    num_steps: int | tf.Tensor,
    first_order: bool = False,
    mask: Sequence[bool] | None = None,
    non_trainable: Sequence[tf.Tensor] | None = None,
    return_all: bool = False,
    forward_fn: ForwardFn | None = None,
    step_params: Callable[[list[tf.Tensor], int], list[tf.Tensor]] | None = None,
    split: Split | None = None,
    penalty_fn: PenaltyFn | None = None,
):
    """``num_steps`` inner SGD steps from ``weights`` on one task's support set.

    Returns the fast weights after the last step, or with ``return_all=True`` a list of
    ``num_steps + 1`` weight lists (index 0 is ``weights`` itself), plus, in both cases, the
    pre-update support loss and predictions (``(fast, pre_loss, pre_preds)``). With
    ``num_steps=0`` the pre-update values come from one plain forward pass.

    ``num_steps`` a Python int unrolls the steps (training and evaluation: one traced
    graph per step count). ``num_steps`` a scalar integer tensor runs them in a
    ``tf.while_loop`` (the SavedModel's ``adapt_and_predict``: one graph serves any step
    count, no cost for steps not taken); ``return_all`` then needs an int, the pre-update
    values come from one plain forward pass, and a callable ``inner_lr`` or
    ``step_params`` receives the step as an int32 tensor.

    ``forward_fn(weights, x)`` replaces :func:`forward` (``model`` and ``non_trainable``
    are then unused): a fast path runs several tasks at once this way, e.g. every task's
    weights stacked on a leading task axis (:mod:`tf_maml.mapping.batched`). ``loss_fn``
    then returns one loss per task; tasks do not share weights, so the gradient of their
    sum is, for each task's weights, that task's own gradient: the same step as here.

    Per-step values (MAML++, Antoniou et al. 2019): ``inner_lr`` may be a function of the
    step index (0-based) returning α for that step (LSLR: a learned rate per variable and
    step); ``step_params(weights, step)`` returns ``weights`` with the entries that the
    inner loop does not adapt replaced by their values for that step (per-step batch norm).
    Step s then runs on ``step_params(θ_s, s)``, so ``θ_{s+1}`` carries step s's values,
    the ones its query pass uses (as MAML++ indexes them), and index 0 of the trajectory
    is ``step_params(weights, 0)``.

    ``split`` (:class:`Split`, of ``forward_fn``): when ``mask`` adapts only the head's
    weights and no step changes others (no ``step_params``), the body runs once on the
    support set and the inner steps run the head alone on its features (ANIL,
    :func:`trajectory_forward`); otherwise it is not used. The values are the same either
    way, up to float rounding.

    ``penalty_fn``: the weight penalty R(θ') each step adds to the support loss it descends
    (:func:`weight_penalty`; one value per task for a ``forward_fn`` of several tasks);
    the support losses returned are the data loss L alone.
    """
    if forward_fn is None:
        def forward_fn(w, x):
            return forward(model, w, x, non_trainable)

    forward_fn, support_x = trajectory_forward(forward_fn, support_x, weights, split, mask,
                                               step_params)

    def lr_at(step):
        return inner_lr(step) if callable(inner_lr) else inner_lr

    def params_at(w, step):
        return list(w) if step_params is None else step_params(list(w), step)

    start = params_at(weights, 0)
    if not tf.is_tensor(num_steps):
        return _unrolled_steps(forward_fn, start, support_x, support_y, loss_fn, lr_at,
                               params_at, num_steps, first_order, mask, return_all, penalty_fn)
    if return_all:
        raise ValueError("adapt: return_all=True needs num_steps as a Python int (the "
                         "trajectory's length); a tensor num_steps returns the last step")
    fast = _while_steps(forward_fn, start, support_x, support_y, loss_fn, lr_at, params_at,
                        num_steps, first_order, mask, penalty_fn)
    pre_preds = forward_fn(start, support_x)
    return fast, loss_fn(support_y, pre_preds), pre_preds


def _unrolled_steps(forward_fn, start, support_x, support_y, loss_fn, lr_at, params_at,
                    num_steps: int, first_order, mask, return_all, penalty_fn=None):
    """:func:`adapt`'s steps unrolled over a Python step count (training's hot path: each
    step its own ops in the traced graph)."""
    trajectory = [start]
    pre_loss = pre_preds = None
    for step in range(num_steps):
        current = trajectory[-1] if step == 0 else params_at(trajectory[-1], step)
        new, loss, preds = inner_step(
            forward_fn, current, support_x, support_y, loss_fn, lr_at(step),
            first_order=first_order, mask=mask, penalty_fn=penalty_fn,
        )
        if pre_loss is None:
            pre_loss, pre_preds = loss, preds
        trajectory.append(new)
    if pre_loss is None:
        pre_preds = forward_fn(trajectory[0], support_x)
        pre_loss = loss_fn(support_y, pre_preds)
    return (trajectory if return_all else trajectory[-1]), pre_loss, pre_preds


def _while_steps(forward_fn, start, support_x, support_y, loss_fn, lr_at, params_at,
                 num_steps, first_order, mask, penalty_fn=None) -> list[tf.Tensor]:
    """:func:`adapt`'s steps in a ``tf.while_loop`` over a step-count tensor: step s runs on
    ``params_at(θ_s, s)`` (for s = 0 that is ``start`` again: it holds step 0's values)."""
    def body(step, fast):
        new, _, _ = inner_step(forward_fn, params_at(fast, step), support_x, support_y,
                               loss_fn, lr_at(step), first_order=first_order, mask=mask,
                               penalty_fn=penalty_fn)
        return step + 1, new

    num_steps = tf.cast(num_steps, tf.int32)
    _, fast = tf.while_loop(lambda step, _: step < num_steps, body,
                            (tf.constant(0, tf.int32), list(start)))
    return list(fast)
