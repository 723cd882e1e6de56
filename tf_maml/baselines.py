"""The MiniImageNet table's two baselines (Finn et al. 2017, Table 1, quoting Ravi &
Larochelle 2017): a fine-tuning baseline and a nearest-neighbour baseline.

Both start from ONE network: MAML's MiniImageNet conv4 (:func:`tf_maml.models.conv4`, 32
filters, max-pool) trained as an ordinary classifier of the training split's classes
(:data:`PRETRAIN_CLASSES`, 64 for MiniImageNet) with Adam on random minibatches of images
(:class:`Classifier`, a :class:`~tf_maml.protocols.TaskLearner`: the pretraining is a run
of the training loop of :mod:`tf_maml.train`, so it checkpoints, resumes and logs like a
MAML run). Then, on the
test tasks MAML is evaluated on (:mod:`tf_maml.evaluate`, same tasks, same interval):

* **nearest neighbour** (:meth:`Classifier.evaluate_batch`): every support and query image
  is embedded by the body (the flattened output of the last conv block, the head's input,
  with batch norm's moving statistics), and each query takes the label of the support
  example with the highest cosine similarity, as the authors' code did;
* **fine-tuning** (:class:`FineTuner`): the body with a new N-way head, every weight
  fine-tuned with ``--test_num_updates`` (15) full-batch SGD steps on the task's support
  set (mean cross-entropy, batch norm in training mode), then its queries predicted with
  batch norm in inference mode, as the authors' code did. The learning rate and its decay
  are chosen on validation tasks (:func:`select_finetuning`) from the authors' grid. The
  steps are :func:`tf_maml.adapt.adapt`, the one inner loop.

docs/baselines.md lists what the papers specify, what they leave open, and our choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import atomic, keras_internals, losses, models
from tf_maml import evaluate as evaluate_lib
from tf_maml.data.miniimagenet import EXPECTED_NUM_CLASSES
from tf_maml.errors import check_switch
from tf_maml.mamlpp import check_meta_lr
from tf_maml.options import rates
from tf_maml.options.meta_optimizer import ORIGINAL_ADAM_EPSILON, apply_if_finite
from tf_maml.tasks.image_tasks import DataError, FewShotTasks
from tf_maml.tasks.miniimagenet import IMAGE_SHAPE

# The classifier's outputs: MiniImageNet's 64 training classes. A training split with fewer
# classes (a small test copy) uses the first outputs; one with more is refused.
PRETRAIN_CLASSES = EXPECTED_NUM_CLASSES["train"]
# The fine-tuning's grid, searched on validation tasks: Ravi & Larochelle's SGD learning rates
# and learning-rate decays (config/baselines/train-pre-trained-SGD.lua, learningRates and
# learningRateDecays; their nUpdates, 15, is the flagfiles' --test_num_updates).
FINETUNE_LRS = (0.5, 0.1, 0.01, 0.001, 0.0001, 0.00001)
FINETUNE_DECAYS = (1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001, 0.0)
# Validation tasks the choice is made on (their code's nValidationEpisode).
NUM_SELECTION_TASKS = 100
# Torch's batch norm moves its running statistics this far towards each batch's (its
# default momentum; Keras' 0.99 keeps the complement).
TORCH_BN_MOMENTUM = 0.1
# The selection tasks: the validation split's evaluation stream with MAML's test seed, i.e.
# the first tasks `--test_set=False` evaluates.
SELECTION_SEED = evaluate_lib.TEST_SEEDS["miniimagenet"]


# ---------------------------------------------------------------------------- the network
def build_classifier(*, seed: int = 0, num_filters: int = 32, max_pool: bool = True,
                     norm: str = "batch_norm", num_classes: int = PRETRAIN_CLASSES
                     ) -> keras.Model:
    """MAML's MiniImageNet conv4 (``num_filters`` filters, ``max_pool``, ``norm``) with a
    ``num_classes``-way head, its weights drawn from ``seed``."""
    keras.utils.set_random_seed(seed)
    return models.conv4(IMAGE_SHAPE, num_classes, num_filters=num_filters,
                        max_pool=max_pool, norm=norm, name="classifier")


def body(model: keras.Model) -> keras.Model:
    """The model up to its head's input (the features; for conv4 with max-pool the
    flattened 5x5xF map), sharing the model's layers: cut at the head as the inner loop
    cuts it (:func:`tf_maml.adapt.head_cut`)."""
    head = adapt_lib.head_cut(model, required=True).head_layer
    return keras.Model(model_input(model), head.input, name=f"{model.name}_body")


def model_input(model: keras.Model):
    """The symbolic input of a chain model (one input, :func:`tf_maml.adapt.head_cut`).
    ``model.inputs``, not ``model.input``: a Sequential model, however built, has no
    ``input`` until it is called on a symbolic tensor."""
    return model.inputs[0]


def with_new_head(classifier: keras.Model, num_classes: int, seed: int) -> keras.Model:
    """``classifier``'s body (its layers, shared: their weights are the pretrained ones)
    under a new ``num_classes``-way head, configured and initialised as the old head was
    (MAML's conv4: Glorot-uniform kernel, zero bias), drawn from ``seed``. A learner reads
    these weights as its θ and never writes them, so the classifier stays as it was."""
    head = adapt_lib.head_cut(classifier, required=True).head_layer
    keras.utils.set_random_seed(seed)
    new_head = type(head).from_config({**head.get_config(), "units": num_classes,
                                       "name": f"{head.name}_{num_classes}way"})
    return keras.Model(model_input(classifier), new_head(head.input),
                       name=f"{classifier.name}_{num_classes}way")


# ---------------------------------------------------------------------------- pretraining
class LabelledImages:
    """The training split as (image, class) pairs: the pretraining's minibatches.

    ``sample_batch(batch_size, rng)`` draws ``batch_size`` distinct images uniformly (an
    ordinary i.i.d. minibatch; the authors' code drew a random subset every iteration), so
    that minibatch i depends only on the seed and i, and a resumed run sees the minibatches
    an uninterrupted one would have.
    """

    def __init__(self, tasks: FewShotTasks):
        self.images, self.labels = tasks.labelled_images()
        self.tasks = tasks
        if tasks.num_dataset_classes > PRETRAIN_CLASSES:
            raise DataError(f"{tasks.description} has {tasks.num_dataset_classes} classes; "
                            f"the baselines' classifier has {PRETRAIN_CLASSES} outputs "
                            "(MiniImageNet's training classes)")

    def sample_batch(self, batch_size: int, rng: np.random.Generator):
        if batch_size > len(self.labels):
            raise DataError(f"a minibatch of {batch_size} images (--meta_batch_size) is more "
                            f"than the {len(self.labels)} training images")
        picks = rng.choice(len(self.labels), size=batch_size, replace=False)
        return self.tasks.pixels(self.images[picks]), self.labels[picks]


def nearest_neighbor_labels(support_features: tf.Tensor, support_y: tf.Tensor,
                            query_features: tf.Tensor) -> tf.Tensor:
    """Each query's label: that of the support example of highest cosine similarity
    (features [..., n, d]; a leading task axis is allowed). Ties go to the first."""
    s = tf.math.l2_normalize(support_features, axis=-1)
    q = tf.math.l2_normalize(query_features, axis=-1)
    similarity = tf.linalg.matmul(q, s, transpose_b=True)  # [..., queries, support]
    nearest = tf.argmax(similarity, axis=-1, output_type=tf.int32)
    return tf.gather(support_y, nearest, axis=-1, batch_dims=len(support_y.shape) - 1)


class Classifier:
    """The pretraining's learner: ``model`` (a :data:`PRETRAIN_CLASSES`-way conv4) trained
    with Adam (``meta_lr``, ε as the original's) on the mean cross-entropy of minibatches
    ``(images, labels)``. A :class:`~tf_maml.protocols.TaskLearner` (what the training
    loop, its callbacks, the checkpoints and the evaluation use), so the pretraining runs
    in :func:`tf_maml.train.train` as MAML does; ``evaluate_batch`` is the nearest-neighbour
    baseline (also the validation shown during pretraining). It has no execution plan
    (minibatches of images, not tasks): autotuning passes it by."""

    def __init__(self, model: keras.Model, meta_lr: float = 1e-3):
        activity = adapt_lib.activity_regularized_layers(model)
        if activity:  # weight regularizers are added (_train), activity ones would not be
            raise ValueError(f"Classifier: model {model.name} has activity regularizers "
                             f"(layers {', '.join(activity)}), whose penalties the "
                             "pretraining and fine-tuning do not add to their losses: remove "
                             "them (weight regularizers are supported)")
        random = adapt_lib.drawing_layers(model)
        if random:  # pretraining would run them (Keras' own call), fine-tuning not
            raise ValueError(f"Classifier: model {model.name} has layers that draw random "
                             f"numbers in training mode ({', '.join(random)}), e.g. dropout, "
                             "which the baselines do not support (their fine-tuning runs "
                             "without them): remove them, or set their rate to 0 "
                             "(MetaLearner supports dropout)")
        self.model = model
        self.metric_fn = losses.accuracy
        self.strategy = None  # one device: the baselines are not distributed
        self.features = body(model)
        # Else Keras takes a negative rate and ascends the loss, as the meta-optimiser would.
        meta_lr = check_meta_lr(meta_lr, "Classifier's meta_lr")
        self.optimizer = keras.optimizers.Adam(meta_lr, epsilon=ORIGINAL_ADAM_EPSILON)
        self.optimizer.build(model.trainable_variables)
        self._train_fn = tf.function(self._train, reduce_retracing=True)
        self._nn_fn = tf.function(self._nearest_neighbor, reduce_retracing=True)

    @property
    def extra_variables(self) -> dict:
        """No state beyond the model's and Adam's (checkpoints, the zoo)."""
        return {}

    def _train(self, x, y):
        variables = self.model.trainable_variables
        penalty = adapt_lib.weight_penalty(self.model)
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)  # also updates batch norm's moving moments
            loss = losses.mean_xent(y, logits)
            # The weight regularizers' penalty, as Keras' fit adds it (reported: the loss).
            minimised = loss if penalty is None else loss + penalty(
                [v.value for v in variables])
        applied = apply_if_finite(self.optimizer, tape.gradient(minimised, variables),
                                  variables, loss)
        accuracy = losses.accuracy(y, logits)
        # The loop's callbacks print the original's "pre, post" pair: here both the
        # minibatch's values (there is no adaptation).
        return {"pre_loss": loss, "post_loss": loss, "pre_metric": accuracy,
                "post_metric": accuracy, "applied": applied}

    def train_step(self, batch, pretrain: bool = True) -> dict:
        """One Adam step on a minibatch ``(images, labels)``."""
        x, y = batch[0], batch[1]
        return self._train_fn(tf.convert_to_tensor(x), tf.convert_to_tensor(y))

    def _nearest_neighbor(self, support_x, support_y, query_x, query_y):
        t, n_support, n_query = (tf.shape(support_x)[0], tf.shape(support_x)[1],
                                 tf.shape(query_x)[1])
        images = tf.concat([tf.reshape(support_x, [-1, *support_x.shape[2:]]),
                            tf.reshape(query_x, [-1, *query_x.shape[2:]])], axis=0)
        # Inference mode (batch norm's moving statistics), as the authors' code embedded.
        features = self.features(images, training=False)
        features = tf.reshape(features, [-1, features.shape[-1]])
        support_f = tf.reshape(features[:t * n_support], [t, n_support, -1])
        query_f = tf.reshape(features[t * n_support:], [t, n_query, -1])
        predicted = nearest_neighbor_labels(support_f, tf.cast(support_y, tf.int32), query_f)
        hits = tf.cast(tf.equal(predicted, tf.cast(query_y, tf.int32)), tf.float32)
        return tf.reduce_mean(hits, axis=1, keepdims=True)

    def evaluate_batch(self, batch, num_steps: int = 0) -> dict:
        """Nearest-neighbour accuracy of each task of ``batch``, shape [T, 1] (there are no
        steps: ``num_steps`` is ignored)."""
        return {"metric": self._nn_fn(*(tf.convert_to_tensor(b) for b in batch))}


# ---------------------------------------------------------------------------- fine-tuning
def _index_by_id(variables, among) -> list[int]:
    """Where each of ``variables`` sits in ``among`` (compared by identity)."""
    position = {id(v): i for i, v in enumerate(among)}
    return [position[id(v)] for v in variables]


class FineTuner:
    """The fine-tuning baseline as Ravi & Larochelle's code fine-tunes each episode
    (model/baselines/pre-trained-SGD.lua): the pretrained network under a new
    ``num_classes``-way head, every weight (batch norm's offsets too) taking
    ``num_steps`` plain SGD steps on the WHOLE support set's mean cross-entropy, of size
    ``inner_lr / (1 + i * lr_decay)`` at step i (Torch optim.sgd's learning-rate decay);
    the network in training mode meanwhile, so batch norm normalises with the support set's
    statistics and, as Torch's does, moves its running statistics towards them (momentum
    :data:`TORCH_BN_MOMENTUM`, unbiased variance) at each step; then the queries predicted
    in inference mode (``network:evaluate()``), with those running statistics: a query's
    prediction does not depend on the other queries.

    The steps are :func:`tf_maml.adapt.adapt`, the one inner loop; ``evaluate_batch`` gives
    what :func:`tf_maml.evaluate.evaluate` asks of a learner, the query accuracy and loss
    after every step. ``inner_lr`` and ``lr_decay`` are variables, so a search over them
    runs the graph traced once. The new head's weights are drawn from ``seed``.
    ``every_step=False``: the queries are predicted after the last step only, and
    ``evaluate_batch`` gives that one column (the search reads no other, and predicting
    after each of 15 steps was a fifth of its work)."""

    metric_fn = staticmethod(losses.accuracy)

    def __init__(self, classifier: Classifier, num_classes: int, inner_lr: float,
                 lr_decay: float = 0.0, seed: int = 0, every_step: bool = True):
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise TypeError(f"FineTuner: num_classes must be the tasks' number of classes, "
                            f"got {type(num_classes).__name__}; from a Config pass "
                            "config.num_classes (and seed=config.seed)")
        if num_classes < 2:  # else a head of 0 or 1 logits, whose loss is 0
            raise ValueError(f"FineTuner: num_classes must be N >= 2 of N-way tasks, got "
                             f"{num_classes}")
        inner_lr = rates.InnerRate(inner_lr).value  # finite, >= 0: else steps up the loss
        if not (math.isfinite(float(lr_decay)) and float(lr_decay) >= 0):
            # Else the step size α / (1 + step · decay) grew, or was infinite at one step.
            raise ValueError(f"FineTuner: lr_decay must be a finite number >= 0 (0: a fixed "
                             f"step size), got {lr_decay}")
        self.num_classes = int(num_classes)
        check_switch("FineTuner's every_step", every_step)
        self.every_step = every_step
        self.model = with_new_head(classifier.model, self.num_classes, seed)
        self.inner_lr = tf.Variable(float(inner_lr), trainable=False, name="finetune_lr")
        self.lr_decay = tf.Variable(float(lr_decay), trainable=False, name="finetune_decay")
        norms = [layer for layer in keras_internals.layers_of(self.model, include_self=False)
                 if isinstance(layer, keras.layers.BatchNormalization)]
        nt = self.model.non_trainable_variables
        self._moving = [(*_index_by_id([n.moving_mean, n.moving_variance], nt), n.axis)
                        for n in norms]
        # The input of every batch norm: the statistics a training-mode step normalises with.
        self._norm_inputs = (keras.Model(model_input(self.model), [n.input for n in norms])
                             if norms else None)
        if norms:
            self._weights_of_inputs = _index_by_id(self._norm_inputs.trainable_variables,
                                                   self.model.trainable_variables)
            self._state_of_inputs = _index_by_id(self._norm_inputs.non_trainable_variables,
                                                 nt)
        self._eval_fns: dict = {}

    def step_size(self, step: int) -> tf.Tensor:
        return self.inner_lr / (1.0 + step * self.lr_decay)

    def _track(self, weights, moving, support_x):
        """The running statistics after one training-mode pass over the support set with
        ``weights``: Torch's update, running <- (1 - m) running + m batch."""
        if self._norm_inputs is None:
            return moving
        inputs = adapt_lib.forward(self._norm_inputs,
                                   [weights[i] for i in self._weights_of_inputs], support_x,
                                   [moving[i] for i in self._state_of_inputs])
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        moving = list(moving)
        for x, (mean_at, var_at, axis) in zip(inputs, self._moving):
            axes = [a for a in range(len(x.shape)) if a != axis % len(x.shape)]
            count = tf.cast(tf.size(x) // tf.shape(x)[axis], x.dtype)
            mean, var = tf.nn.moments(x, axes)
            var = var * count / tf.maximum(count - 1.0, 1.0)  # Torch keeps the unbiased one
            m = TORCH_BN_MOMENTUM
            moving[mean_at] = (1.0 - m) * moving[mean_at] + m * mean
            moving[var_at] = (1.0 - m) * moving[var_at] + m * var
        return moving

    def finetune(self, support_x, support_y, query_x, num_steps: int) -> tf.Tensor:
        """One task: the query logits before and after each of ``num_steps`` steps,
        ``[num_steps + 1, queries, classes]`` (``every_step=False``: after the last,
        ``[1, queries, classes]``)."""
        support_y = tf.convert_to_tensor(support_y)
        self._check_classes(support_y, support_y)
        weights = [v.value for v in self.model.trainable_variables]
        moving = [v.value for v in self.model.non_trainable_variables]
        trajectory, _, _ = adapt_lib.adapt(self.model, weights, support_x, support_y,
                                           losses.mean_xent, self.step_size, int(num_steps),
                                           non_trainable=moving, return_all=True,
                                           penalty_fn=adapt_lib.weight_penalty(self.model))
        logits = []
        for step in range(-1, int(num_steps)):
            if step >= 0:  # the running statistics move at every step, predicted or not
                moving = self._track(trajectory[step], moving, support_x)
            if self.every_step or step == int(num_steps) - 1:
                logits.append(adapt_lib.forward(self.model, trajectory[step + 1], query_x,
                                                moving, training=False))
        return tf.stack(logits)

    def _evaluate(self, support_x, support_y, query_x, query_y, num_steps: int):
        columns = num_steps + 1 if self.every_step else 1

        def task(inputs):
            sx, sy, qx, qy = inputs
            logits = self.finetune(sx, sy, qx, num_steps)
            # tf.shape: a retrace for another number of queries relaxes it to None.
            qy = tf.broadcast_to(qy, tf.concat([[columns], tf.shape(qy)], 0))
            return {"metric": tf.vectorized_map(lambda a: losses.accuracy(*a), (qy, logits)),
                    "loss": tf.vectorized_map(lambda a: losses.mean_xent(*a), (qy, logits))}

        signature = {"metric": tf.TensorSpec([columns], tf.float32),
                     "loss": tf.TensorSpec([columns], tf.float32)}
        return tf.map_fn(task, (support_x, support_y, query_x, query_y),
                         fn_output_signature=signature)

    def _check_classes(self, support_y, query_y) -> None:
        """A ValueError unless every class id fits the head (0..num_classes-1): TensorFlow
        fails deep inside the cross-entropy (a NaN on a GPU) otherwise. Cheap: ids only."""
        if not tf.executing_eagerly():
            return
        # int() each: support and query labels of two integer types (int32 and numpy's
        # int64) could not be compared as tensors.
        low = min(int(tf.reduce_min(support_y)), int(tf.reduce_min(query_y)))
        high = max(int(tf.reduce_max(support_y)), int(tf.reduce_max(query_y)))
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"FineTuner: the tasks hold class {low if low < 0 else high}, but the head was "
                f"built for num_classes={self.num_classes} (classes 0..{self.num_classes - 1})"
                f": build it with the tasks' number of classes, FineTuner(classifier, "
                f"num_classes=N, ...) for N-way tasks, or number each task's classes 0..N-1")

    def evaluate_batch(self, batch, num_steps: int) -> dict:
        """Per task and step (0..num_steps) query accuracy and loss, shape [T, S+1]
        (``every_step=False``: after the last step, [T, 1])."""
        num_steps = int(num_steps)
        if num_steps not in self._eval_fns:
            self._eval_fns[num_steps] = tf.function(
                lambda *b: self._evaluate(*b, num_steps), reduce_retracing=True)
        x = [tf.convert_to_tensor(b) for b in batch]
        self._check_classes(x[1], x[3])
        return self._eval_fns[num_steps](x[0], tf.cast(x[1], tf.int32), x[2],
                                         tf.cast(x[3], tf.int32))


@dataclasses.dataclass(frozen=True)
class Selection:
    """The fine-tuning's learning rate and decay, chosen on validation tasks, and the mean
    validation accuracy after the steps of every (learning rate, decay) tried."""

    inner_lr: float
    lr_decay: float
    accuracy: dict[tuple[float, float], float]

    def describe(self) -> str:
        best = self.accuracy[(self.inner_lr, self.lr_decay)]
        return (f"Fine-tuning chosen on validation tasks: learning rate {self.inner_lr}, "
                f"decay {self.lr_decay} (validation accuracy {100 * best:.2f}%)")


def fingerprint(model: keras.Model) -> str:
    """A digest of every weight of ``model`` (batch norm's moving statistics included, which
    fine-tuning reads): a selection record is reused only for the classifier it measured."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(variable.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def _recorded(record: str | None, measured: dict, log) -> dict[tuple[float, float], float]:
    """The accuracies ``record`` holds of the selection ``measured`` describes; none if there
    is no record, or it cannot be read, or it is of another classifier or other settings
    (it is then measured again, and the record replaced)."""
    if record is None:
        return {}
    try:
        held = atomic.read_record(record)
    except ValueError as err:
        log(f"  {record} {err}: the search starts again and replaces it")
        return {}
    if held is None:
        return {}
    if held.get("measured") != measured:
        log(f"  {record} is of another classifier or other settings: the search starts "
            "again and replaces it")
        return {}
    found = {}
    for entry in held.get("accuracy", []):
        if not (isinstance(entry, list) and len(entry) == 3
                and all(isinstance(x, (int, float)) and math.isfinite(x) for x in entry)
                and 0 <= entry[2] <= 1):
            log(f"  {record} holds {entry!r}, not [learning rate, decay, accuracy]: the "
                "search starts again and replaces it")
            return {}
        found[(float(entry[0]), float(entry[1]))] = float(entry[2])
    return found


def _keep(record: str | None, measured: dict, accuracy: dict, log) -> str | None:
    """Writes ``accuracy`` so far into ``record``; returns the record, or None once it could
    not be written (the search goes on without one: its hours are worth more)."""
    if record is None:
        return None
    try:
        atomic.write_json(record, {"measured": measured, "accuracy": [
            [float(lr), float(decay), value] for (lr, decay), value in accuracy.items()]})
    except OSError as err:
        log(f"  could not write {record} ({err.strerror or err}): the search goes on, but "
            "an interruption would start it again")
        return None
    return record


def select_finetuning(classifier: Classifier, val_source, *, num_classes: int, num_steps: int,
                      num_tasks: int = NUM_SELECTION_TASKS, seed: int = 0, lrs=FINETUNE_LRS,
                      decays=FINETUNE_DECAYS, record: str | None = None,
                      measured: dict | None = None,
                      log: Callable[[str], None] = print) -> Selection:
    """The learning rate (of ``lrs``) and decay (of ``decays``) whose ``num_steps`` steps
    give the best mean query accuracy on :data:`NUM_SELECTION_TASKS` ``num_classes``-way
    validation tasks of ``val_source`` (``num_tasks`` if fewer: a short evaluation selects
    on as few as it tests); ties go to the earlier pair, in the order the authors' grid
    search visits them (rate, then decay). ``seed``: the new head's.

    ``record``: a JSON file that keeps each pair's accuracy as soon as it is measured, so a
    search stopped midway (Ctrl-C, a kill, a machine lost with the file published) resumes
    at the next pair. It is reused only for the same classifier (:func:`fingerprint`) and
    settings, ``measured`` included (what else shapes the tasks: K, the number of queries).
    """
    num_tasks = min(NUM_SELECTION_TASKS, num_tasks)
    steps = num_steps
    measured = {**(measured or {}), "classifier": fingerprint(classifier.model),
                "num_classes": int(num_classes), "num_steps": int(steps),
                "num_tasks": int(num_tasks), "seed": int(seed)}
    held = _recorded(record, measured, log)
    accuracy: dict[tuple[float, float], float] = {}
    tuner = FineTuner(classifier, num_classes, lrs[0], decays[0], seed, every_step=False)
    best = None
    for lr in lrs:
        for decay in decays:
            pair = (float(lr), float(decay))
            if pair in held:
                accuracy[(lr, decay)] = held[pair]
                source = f" (measured before: {record})"
            else:
                tuner.inner_lr.assign(float(lr))
                tuner.lr_decay.assign(float(decay))
                out = evaluate_lib.evaluate(tuner, val_source, num_tasks, steps,
                                            SELECTION_SEED, batch_size=min(10, num_tasks))
                accuracy[(lr, decay)] = float(np.mean(out["metric"][:, -1]))
                source = ""
                record = _keep(record, measured, accuracy, log)
            log(f"  validation, learning rate {lr}, decay {decay}: "
                f"{100 * accuracy[(lr, decay)]:.2f}% after {steps} steps{source}")
            if best is None or accuracy[(lr, decay)] > accuracy[best]:
                best = (lr, decay)
    return Selection(inner_lr=best[0], lr_decay=best[1], accuracy=accuracy)


def evaluator(classifier: Classifier, baseline: str, val_source=None, *, num_classes: int,
              num_steps: int, num_tasks: int, seed: int = 0, record: str | None = None,
              measured: dict | None = None, log: Callable[[str], None] = print):
    """What the evaluation of ``baseline`` runs on ``num_tasks`` ``num_classes``-way test
    tasks: (learner, number of steps). ``"nearest_neighbor"``: the classifier itself, no
    steps. ``"finetune"``: a :class:`FineTuner` (its head drawn from ``seed``) with the
    learning rate and decay chosen on ``val_source`` (:func:`select_finetuning`),
    ``num_steps`` steps; ``record`` and ``measured``: the search's record
    (:func:`select_finetuning`)."""
    if baseline == "nearest_neighbor":
        return classifier, 0
    selection = select_finetuning(classifier, val_source, num_classes=num_classes,
                                  num_steps=num_steps, num_tasks=num_tasks, seed=seed,
                                  record=record, measured=measured, log=log)
    log(selection.describe())
    return (FineTuner(classifier, num_classes, selection.inner_lr, selection.lr_decay, seed),
            num_steps)
