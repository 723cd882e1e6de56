"""From a :class:`~tf_maml.config.Config` to the objects of an experiment: the model, the
learner and the task sources. Used by the CLI, the figures and the benchmarks alike."""

from __future__ import annotations

import keras

from tf_maml import losses, models
from tf_maml import options as opt
from tf_maml.api import MetaLearner
from tf_maml.config import Config, ConfigError
from tf_maml.mapping import ExecutionPlan
from tf_maml.tasks.sinusoid import SinusoidTasks

OMNIGLOT_SHAPE = (28, 28, 1)
MINIIMAGENET_SHAPE = (84, 84, 3)


def input_shape(config: Config) -> tuple[int, ...]:
    if config.datasource == "sinusoid":
        return (3,) if config.baseline == "oracle" else (1,)
    return OMNIGLOT_SHAPE if config.datasource == "omniglot" else MINIIMAGENET_SHAPE


# The original's fully connected nets' hidden layers: the sinusoid's, and Omniglot's
# --conv=False.
SINUSOID_HIDDEN = (40, 40)
OMNIGLOT_FC_HIDDEN = (256, 128, 64, 64)


def build_model(config: Config) -> keras.Model:
    """The original's network for ``config`` (weights drawn from keras' global seed)."""
    shape = input_shape(config)
    if config.datasource == "sinusoid":
        return models.fc_net(shape, SINUSOID_HIDDEN, 1, norm=config.norm, name="sinusoid_mlp")
    if not config.conv:
        return models.fc_net(shape, OMNIGLOT_FC_HIDDEN, config.num_classes, norm=config.norm)
    return models.conv4(shape, config.num_classes, num_filters=config.num_filters,
                        max_pool=config.max_pool, norm=config.norm)


def _first_layer_units(config: Config) -> int:
    """Values of the net's first layer's output per example (:func:`build_model`)."""
    if config.is_rl:
        from tf_maml.rl.policy import POLICY_HIDDEN

        return POLICY_HIDDEN[0]
    if config.datasource == "sinusoid":
        return SINUSOID_HIDDEN[0]
    if not config.conv:
        return OMNIGLOT_FC_HIDDEN[0]
    height, width = input_shape(config)[:2]
    if not config.max_pool:  # stride 2
        height, width = -(-height // 2), -(-width // 2)
    return height * width * config.num_filters


def _weight_count(config: Config) -> int:
    """The kernels' values of the net of ``config`` (:func:`build_model`; the pretrained
    baselines' classifier alike), a lower bound of its weights (biases and normalisation
    left out)."""
    channels = input_shape(config)[-1]
    ways = config.num_classes if config.is_classification else 1
    if config.is_pretrained_baseline:
        from tf_maml.baselines import PRETRAIN_CLASSES

        ways = PRETRAIN_CLASSES
    if config.datasource == "sinusoid" or not config.conv:
        hidden = SINUSOID_HIDDEN if config.datasource == "sinusoid" else OMNIGLOT_FC_HIDDEN
        sizes = [_input_values(config), *hidden, ways]
        return sum(a * b for a, b in zip(sizes, sizes[1:]))
    filters = config.num_filters
    # 3x3 kernels of 4 convs; the head reads a 5x5 map flattened (max pool) or its mean.
    return 9 * filters * (channels + 3 * filters) + (25 if config.max_pool else 1) * filters * ways


def _input_values(config: Config) -> int:
    """Values of one example (its input shape's product)."""
    size = 1
    for d in input_shape(config):
        size *= d
    return size


def _values(count: int) -> str:
    return f"{count} value" + ("" if count == 1 else "s")


def least_memory(config: Config) -> list[tuple[int, str, tuple[str, ...]]]:
    """What the run of ``config`` holds at once, at the least: (bytes, what, the flags that
    set its size) for training and for the evaluation, each a lower bound (float32 inputs
    of what is sampled at once, plus one task's first-layer activations; reinforcement
    learning: 4 values and the policy's first layer per step of the pre- and post-update
    rollouts, all tasks at once, and of one test step's rollouts of a chunk of test tasks;
    a second-order meta-gradient: the first layer's activations of every inner step; the
    supervised net's kernels, four copies in training, two in an evaluation), so that one
    above the machine's memory cannot run."""
    phases = []
    inputs = _input_values(config)
    ways = config.num_classes if config.is_classification else 1
    units = _first_layer_units(config)
    if config.is_rl:
        horizon = config.horizon or (100 if config.datasource == "navigation" else 200)
        if config.train and config.baseline != "random":
            steps = config.meta_batch_size * config.update_batch_size * horizon * 2
            phases.append((4 * steps * (4 + units), f"training ({config.meta_batch_size} "
                           f"tasks x {config.update_batch_size} trajectories x {horizon} "
                           "steps, before and after the update)",
                           ("meta_batch_size", "update_batch_size", "horizon")))
        if not config.train or config.test_after_train or config.baseline == "random":
            from tf_maml.rl.training import EVAL_CHUNK

            # One inner step's rollouts at a time, for a chunk of the test tasks.
            tasks = min(EVAL_CHUNK, config.num_test_tasks)
            steps = tasks * config.update_batch_size * horizon
            phases.append((4 * steps * (4 + units), f"the evaluation's rollouts ({tasks} "
                           f"tasks x {config.update_batch_size} trajectories x {horizon} "
                           "steps at once)", ("update_batch_size", "horizon")))
        return phases
    # θ, its meta-gradient and Adam's two moments in training; θ and the fast weights in an
    # evaluation.
    copies = 4 if config.train else 2
    weights = _weight_count(config)
    phases.append((4 * copies * weights, f"the network's weights ({copies} x {weights} "
                   "values: " + ("θ, its meta-gradient and Adam's two moments)" if config.train
                                else "θ and the adapted weights)"),
                   ("num_filters", "num_classes")))
    if config.train and config.is_pretrained_baseline:
        phases.append((4 * config.meta_batch_size * (inputs + units),
                       f"pretraining (minibatches of {config.meta_batch_size} images)",
                       ("meta_batch_size",)))
    elif config.train:
        support = ways * config.update_batch_size
        per_task = support + ways * config.num_query_train
        # A second-order meta-gradient keeps every inner step's activations (first order,
        # Reptile and ANIL's body: one step's).
        kept = (config.num_updates if config.algorithm == "maml" and not config.stop_grad
                and config.adapt_layers != "head" else 1)
        phases.append((4 * (config.meta_batch_size * per_task * inputs
                            + units * (kept * support + per_task - support)),
                       f"a meta-batch ({config.meta_batch_size} tasks x {per_task} examples "
                       f"of {_values(inputs)}"
                       + (f", the activations of {kept} inner steps" if kept > 1 else "") + ")",
                       ("meta_batch_size", "update_batch_size", "num_query", "num_classes",
                        "num_updates")))
    if not config.train or config.test_after_train:
        per_task = ways * (config.update_batch_size + config.num_query_eval)
        phases.append((4 * per_task * (config.num_test_tasks * inputs + units),
                       f"the evaluation's tasks ({config.num_test_tasks} tasks x {per_task} "
                       f"examples of {_values(inputs)}, sampled before it starts)",
                       ("num_test_tasks", "update_batch_size", "num_query", "num_classes")))
    return phases


def build_learner(config: Config, model: keras.Model | None = None) -> MetaLearner:
    """Model and learner, seeded with ``config.seed``. The pretrained baselines' learner is
    the classifier they pretrain (:class:`tf_maml.baselines.Classifier`)."""
    if config.is_pretrained_baseline:
        from tf_maml import baselines

        model = model or baselines.build_classifier(
            seed=config.seed, num_filters=config.num_filters, max_pool=config.max_pool,
            norm=config.norm)
        return baselines.Classifier(model, config.meta_lr)
    if model is None:
        keras.utils.set_random_seed(config.seed)
        model = build_model(config)
    if config.is_classification:
        loss_fn = (losses.mean_xent if config.xent == "mean"
                   else losses.summed_xent(config.update_batch_size))
        metric_fn = losses.accuracy
    else:
        loss_fn, metric_fn = losses.mse, None
    learner = MetaLearner(
        model, loss_fn, inner_lr=inner_rate(config), inner_steps=config.num_updates,
        first_order=(True if config.stop_grad else
                     opt.FirstOrderUntil(config.first_order_iterations)
                     if config.first_order_iterations else False),
        adapt=adapt_choice(config), objective=objective(config, metric_fn),
        meta_optimizer=meta_optimizer(config))
    return learner.use_plan(execution_plan(config))


def inner_rate(config: Config) -> float | opt.InnerRate:
    """α: fixed, or learned per parameter (``--meta_sgd``), per step (``--lslr``) or both."""
    if config.lslr:
        return opt.LSLR(config.update_lr, per_parameter=config.meta_sgd)
    return opt.MetaSGD(config.update_lr) if config.meta_sgd else config.update_lr


def adapt_choice(config: Config) -> str | opt.PerStepBatchNorm:
    """Which weights adapt (``--adapt_layers``, ``--adapt_norm``), with per-step batch norm
    (``--per_step_bn``)."""
    adapt = ("head" if config.adapt_layers == "head" else
             "all+norm" if config.adapt_norm else "all")
    return opt.PerStepBatchNorm(adapt) if config.per_step_bn else adapt


def objective(config: Config, metric_fn) -> opt.objectives.Objective:
    """Reptile (``--algorithm=reptile``), MAML++'s multi-step loss (``--msl_iterations``) or
    MAML's last step."""
    if config.algorithm == "reptile":
        return opt.Reptile(metric_fn)
    if config.msl_iterations:
        return opt.MultiStepLoss(config.msl_iterations, metric_fn)
    return opt.LastStep(metric_fn)


def meta_optimizer(config: Config) -> opt.MetaOptimizer:
    """Adam at ``--meta_lr`` (along a cosine to ``--min_meta_lr`` over the run with
    ``--cosine_meta_lr``), MiniImageNet's network meta-gradients clipped at ±10."""
    rate = config.meta_lr
    if config.cosine_meta_lr and config.total_iterations:
        rate = opt.cosine(config.meta_lr, config.min_meta_lr, config.total_iterations)
    clip = [opt.ClipNetwork(config.meta_grad_clip)] if config.meta_grad_clip else []
    return opt.chain(*clip, opt.adam(rate))


def run_learner(config_json: str) -> tuple[Config, MetaLearner]:
    """The configuration a run saved (the path of its ``config.json``) and its learner (a
    reinforcement-learning run's :func:`rl_learner`), built as for training and not
    restored: for the modules below the command line (the model zoo, the figures) that read
    a run, so that only this layer unpacks a :class:`Config`."""
    config = run_config(config_json)
    return config, (rl_learner(config) if config.is_rl else build_learner(config))


def run_config(config_json: str) -> Config:
    """The configuration a run saved in the file ``config_json`` (its config.json, or an
    evaluation's test_config.json), checked as the flags that made it were: a ConfigError
    naming the file, the key and the fix if it cannot be read, or was edited into something
    the run cannot have been made with (a wrong type, a misspelt key, an impossible value),
    which would otherwise be a traceback from deep in the model, or a figure of another run."""
    fix = "fix it, or restore it from a copy of the run (the model zoo, a backup)"
    config = Config.read(config_json, fix)
    try:
        return config.validate()
    except ConfigError as err:
        raise ConfigError(f"{config_json}, the flags the run was trained with, hold a "
                          f"setting no run can have ({err}): {fix}") from None


def model_from_flags(flag_values: dict) -> keras.Model:
    """The network of the original's flags ``flag_values`` (``datasource``, ``num_classes``,
    ``norm``, ...; the others at their defaults), for the checkpoint converter."""
    return build_model(Config(**flag_values))


def rl_learner(config: Config):
    """The reinforcement-learning learner of ``config`` (:func:`tf_maml.rl.training.build_learner`):
    the task family ``datasource`` (navigation or a locomotion family) with ``horizon`` steps
    (0: the family's), ``update_lr`` α, ``num_updates`` inner steps, ``update_batch_size``
    trajectories per task and policy (``sample_budget``: or that many × the horizon steps),
    ``stop_grad`` first order; the oracle sees the task."""
    from tf_maml.rl import training as rl_training

    return rl_training.build_learner(
        task_family=config.datasource, horizon=config.horizon,
        oracle=config.baseline == "oracle", seed=config.seed, inner_lr=config.update_lr,
        inner_steps=config.num_updates, num_trajectories=config.update_batch_size,
        discount=config.discount, max_kl=config.max_kl, first_order=config.stop_grad,
        sample_budget=config.sample_budget)


def execution_plan(config: Config) -> ExecutionPlan:
    """The speed knobs of ``config`` (0 or None: automatic)."""
    return ExecutionPlan(task_parallelism=config.task_parallelism,
                         tasks_per_chunk=config.tasks_per_chunk or None,
                         parallel_chunks=config.parallel_chunks or None,
                         autotune=config.autotune)


def task_source(config: Config, split: str, num_query: int | None = None):
    """Tasks of ``split`` ('train', 'val' or 'test'); K support and ``num_query`` query
    examples per class (default: as the original trains). The pretrained baselines train
    on the training split's labelled images instead (minibatches, not tasks)."""
    k = config.update_batch_size
    q = config.num_query_train if num_query is None else num_query
    if config.datasource == "sinusoid":
        return SinusoidTasks(k, q, oracle=config.baseline == "oracle")
    if config.dataset_backend == "tfds":
        from tf_maml.tfds.tasks import miniimagenet_tasks_from_tfds, omniglot_tasks_from_tfds

        load = (omniglot_tasks_from_tfds if config.datasource == "omniglot"
                else miniimagenet_tasks_from_tfds)
        return load(config.data_dir, split, config.num_classes, k, q)
    if config.datasource == "omniglot":
        from tf_maml.tasks.omniglot import omniglot_tasks

        return omniglot_tasks(config.data_dir, split, config.num_classes, k, q)
    from tf_maml.tasks.miniimagenet import miniimagenet_tasks

    if config.is_pretrained_baseline and split == "train":
        from tf_maml.baselines import LabelledImages

        # Only its images are used: any class of two images will do.
        return LabelledImages(miniimagenet_tasks(config.data_dir, split, 1, 1, 1))
    return miniimagenet_tasks(config.data_dir, split, config.num_classes, k, q)


def eval_split(config: Config) -> str:
    return "test" if config.test_set else "val"


def test_num_query(config: Config) -> int:
    """Query size at evaluation: K per class, as the original's test (2K samples/class),
    unless ``--num_query`` sets it (:attr:`Config.num_query_eval`)."""
    return config.num_query_eval
