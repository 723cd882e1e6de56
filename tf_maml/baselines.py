"""The MiniImageNet table's two baselines (Finn et al. 2017, Table 1, quoting Ravi &
Larochelle 2017): a fine-tuning baseline and a nearest-neighbour baseline.

Both start from ONE network: MAML's MiniImageNet conv4 (:func:`tf_maml.models.conv4`, 32
filters, max-pool) trained as an ordinary classifier of the training split's classes
(:data:`PRETRAIN_CLASSES`, 64 for MiniImageNet) with Adam on random minibatches of images
(:class:`Classifier`; the pretraining is a run of the training loop of
:mod:`tf_maml.train`, so it checkpoints, resumes and logs like a MAML run). Then, on the
test tasks MAML is evaluated on (:mod:`tf_maml.evaluate`, same tasks, same interval):

* **nearest neighbour** (:meth:`Classifier.evaluate_batch`): every support and query image
  is embedded by the body (the flattened output of the last conv block, the head's input,
  with batch norm's moving statistics), and each query takes the label of the support
  example with the highest cosine similarity, as the authors' code did;
* **fine-tuning** (:func:`finetune_learner`): the body with a new N-way head, every weight
  fine-tuned with plain gradient steps on the task's support set (mean cross-entropy), then
  evaluated on its query set. Its step size and number of steps are chosen on validation
  tasks (:func:`select_finetuning`), as Ravi & Larochelle searched theirs on the
  meta-validation set. The fine-tuning is :func:`tf_maml.adapt.adapt`, the one inner loop.

docs/baselines.md lists what the papers specify, what they leave open, and our choices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml import evaluate as evaluate_lib
from tf_maml import losses, models
from tf_maml.config import Config
from tf_maml.data.miniimagenet import EXPECTED_NUM_CLASSES
from tf_maml.learners import ORIGINAL_ADAM_EPSILON, MetaLearner, apply_if_finite
from tf_maml.mapping import ExecutionPlan
from tf_maml.tasks.image_tasks import DataError, FewShotTasks
from tf_maml.tasks.miniimagenet import IMAGE_SHAPE

# The classifier's outputs: MiniImageNet's 64 training classes. A training split with fewer
# classes (a small test copy) uses the first outputs; one with more is refused.
PRETRAIN_CLASSES = EXPECTED_NUM_CLASSES["train"]
# Fine-tuning step sizes tried on validation tasks: Ravi & Larochelle's grid of SGD learning
# rates (their released code's config for this baseline).
FINETUNE_LRS = (0.5, 0.1, 0.01, 0.001, 0.0001, 0.00001)
# Validation tasks the choice is made on (their code's nValidationEpisode).
NUM_SELECTION_TASKS = 100
# The selection tasks: the validation split's evaluation stream with MAML's test seed, i.e.
# the first tasks `--test_set=False` evaluates.
SELECTION_SEED = evaluate_lib.TEST_SEEDS["miniimagenet"]


# ---------------------------------------------------------------------------- the network
def build_classifier(config: Config, num_classes: int = PRETRAIN_CLASSES) -> keras.Model:
    """MAML's MiniImageNet conv4 of ``config`` (filters, pooling, norm) with a
    ``num_classes``-way head, its weights drawn from ``config.seed``."""
    keras.utils.set_random_seed(config.seed)
    return models.conv4(IMAGE_SHAPE, num_classes,
                        num_filters=config.num_filters, max_pool=config.max_pool,
                        norm=config.norm, name="classifier")


def body(model: keras.Model) -> keras.Model:
    """The model up to its head's input (the features; for conv4 with max-pool the
    flattened 5x5xF map), sharing the model's layers."""
    head = adapt_lib.head_layer(model)
    return keras.Model(model.inputs, head.input, name=f"{model.name}_body")


def with_new_head(classifier: keras.Model, num_classes: int, seed: int) -> keras.Model:
    """``classifier``'s body (its layers, shared: their weights are the pretrained ones)
    under a new ``num_classes``-way head, configured and initialised as the old head was
    (MAML's conv4: Glorot-uniform kernel, zero bias), drawn from ``seed``. A learner reads
    these weights as its θ and never writes them, so the classifier stays as it was."""
    head = adapt_lib.head_layer(classifier)
    keras.utils.set_random_seed(seed)
    new_head = type(head).from_config({**head.get_config(), "units": num_classes,
                                       "name": f"{head.name}_{num_classes}way"})
    return keras.Model(classifier.inputs, new_head(head.input),
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
    ``(images, labels)``. It offers what the training loop, the checkpoints and the
    evaluation ask of a :class:`~tf_maml.learners.MetaLearner` (``train_step``,
    ``evaluate_batch``, ``model``, ``optimizer``), so the pretraining runs in
    :func:`tf_maml.train.train` as it is; ``evaluate_batch`` is the nearest-neighbour
    baseline (also the validation shown during pretraining)."""

    inner_lrs: list = []
    extra_variables: dict = {}  # no meta-learned variables beyond the model's (checkpoint, zoo)
    plan = None  # minibatches of images, not tasks: no execution plan to autotune
    inner_steps = 0
    strategy = None
    metric_fn = staticmethod(losses.accuracy)

    def __init__(self, model: keras.Model, meta_lr: float = 1e-3):
        self.model = model
        self.features = body(model)
        self.optimizer = keras.optimizers.Adam(meta_lr, epsilon=ORIGINAL_ADAM_EPSILON)
        self.optimizer.build(model.trainable_variables)
        self._train_fn = tf.function(self._train, reduce_retracing=True)
        self._nn_fn = tf.function(self._nearest_neighbor, reduce_retracing=True)

    def _train(self, x, y):
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)  # also updates batch norm's moving moments
            loss = losses.mean_xent(y, logits)
        variables = self.model.trainable_variables
        applied = apply_if_finite(self.optimizer, tape.gradient(loss, variables), variables,
                                  loss)
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
def finetune_learner(classifier: Classifier, config: Config, inner_lr: float,
                     plan: ExecutionPlan | None = None) -> MetaLearner:
    """The fine-tuning baseline as a learner whose θ is the pretrained body with a new
    ``config.num_classes``-way head: its evaluation (:meth:`MetaLearner.evaluate_batch`)
    takes gradient steps of size ``inner_lr`` on the support set's mean cross-entropy,
    every weight (batch norm's offsets too), batch norm in training mode as MAML's
    evaluation, and gives the query accuracy after every step. ``plan``: how its tasks run
    (speed only; the command line's is that of the flags)."""
    model = with_new_head(classifier.model, config.num_classes, config.seed)
    return MetaLearner(model, losses.mean_xent, inner_lr=inner_lr, inner_steps=1,
                       metric_fn=losses.accuracy, adapt_norm=True, plan=plan)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The fine-tuning's step size and number of steps, chosen on validation tasks, and the
    mean validation accuracy of every (step size, steps) tried: ``accuracy[lr]`` has one
    value per number of steps, 0 to the most tried."""

    inner_lr: float
    num_steps: int
    accuracy: dict[float, list[float]]

    def describe(self) -> str:
        best = self.accuracy[self.inner_lr][self.num_steps]
        return (f"Fine-tuning chosen on validation tasks: step size "
                f"{self.inner_lr}, {self.num_steps} steps (validation accuracy "
                f"{100 * best:.2f}%)")


def select_finetuning(classifier: Classifier, config: Config, val_source, lrs=FINETUNE_LRS,
                      plan: ExecutionPlan | None = None,
                      log: Callable[[str], None] = print) -> Selection:
    """The step size (of ``lrs``) and number of steps (1 to ``config.test_num_updates``)
    with the best mean query accuracy on :data:`NUM_SELECTION_TASKS` validation tasks (as
    many as the test tasks if fewer: a short evaluation selects on as few); ties go to the
    fewer steps, then to the earlier step size."""
    num_tasks = min(NUM_SELECTION_TASKS, config.num_test_tasks)
    accuracy: dict[float, list[float]] = {}
    best = (-1.0, 0.0, 0)
    # One learner, its step size a variable: every step size runs the graph traced once.
    learner = finetune_learner(classifier, config, lrs[0], plan)
    step_size = tf.Variable(float(lrs[0]), trainable=False, name="finetune_step_size")
    learner.inner_lr = step_size
    for lr in lrs:
        step_size.assign(float(lr))
        out = evaluate_lib.evaluate(learner, val_source, num_tasks, config.test_num_updates,
                                    SELECTION_SEED, batch_size=min(10, num_tasks))
        means = np.mean(out["metric"], axis=0)
        accuracy[lr] = [float(m) for m in means]
        steps = 1 + int(np.argmax(means[1:]))
        log(f"  validation, step size {lr}: {100 * means[steps]:.2f}% after {steps} steps")
        if means[steps] > best[0]:
            best = (float(means[steps]), lr, steps)
    return Selection(inner_lr=best[1], num_steps=best[2], accuracy=accuracy)


def evaluator(classifier: Classifier, config: Config, val_source=None,
              plan: ExecutionPlan | None = None, log: Callable[[str], None] = print):
    """What the evaluation of ``config.baseline`` runs on the test tasks: (learner, number
    of steps). Nearest neighbour: the classifier itself, no steps. Fine-tuning: the
    fine-tuning learner with the step size and steps chosen on ``val_source``."""
    if config.baseline == "nearest_neighbor":
        return classifier, 0
    selection = select_finetuning(classifier, config, val_source, plan=plan, log=log)
    log(selection.describe())
    return (finetune_learner(classifier, config, selection.inner_lr, plan),
            selection.num_steps)
