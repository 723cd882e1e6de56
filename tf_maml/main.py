"""tf-maml: the absl command line of the original cbfinn/maml main.py, on TF2 / Keras 3.

Usage (the original's commands work unchanged, e.g.)::

    tf-maml --datasource=sinusoid --logdir=logs/sine/ --metatrain_iterations=70000 \\
        --norm=None --update_batch_size=10
    tf-maml --flagfile=flags/sinusoid_maml_k10.flags            # one file per paper experiment
    tf-maml --flagfile=flags/sinusoid_maml_k10.flags --train=False   # evaluate only
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

# The enum flags' choices are the Config's own tuples, so a new choice is added in one place.
from tf_maml.config import (  # noqa: E402
    ADAPT_LAYERS,
    ALGORITHMS,
    DATASET_BACKENDS,
    DISTRIBUTION_STRATEGIES,
    NAN_POLICIES,
    SAMPLE_BUDGETS,
    TASK_PARALLELISM,
    XENTS,
)

# The only module that reads this command's flags (the library takes a Config); the other
# command lines (reproduce, convert, figures, rl.run, rl.figure) define and read their own.
FLAGS = flags.FLAGS


def define_flags(values: flags.FlagValues) -> None:
    """Defines the command's flags in ``values``: the original's, then the added ones (README:
    "Flags"), by concern."""
    _define_original_flags(values)
    _define_algorithm_flags(values)
    _define_task_flags(values)
    _define_run_flags(values)
    _define_execution_flags(values)


def _define_original_flags(values: flags.FlagValues) -> None:
    """The original's flags: names, types, defaults and help texts of cbfinn/maml main.py."""
    flags.DEFINE_string("datasource", "sinusoid",
                        "sinusoid or omniglot or miniimagenet (or reinforcement learning: "
                        "navigation, 2D navigation; cheetah_vel, cheetah_dir, ant_vel, ant_dir, "
                        "MuJoCo locomotion with the rl extra)",
                        flag_values=values)
    flags.DEFINE_integer("num_classes", 5,
                         "number of classes used in classification (e.g. 5-way classification).",
                         flag_values=values)
    flags.DEFINE_string("baseline", None, "oracle, or None (RL datasources: also random; "
                        "miniimagenet: finetune or nearest_neighbor, the baselines of a "
                        "classifier pretrained on the training classes)", flag_values=values)
    flags.DEFINE_integer("pretrain_iterations", 0, "number of pre-training iterations.",
                         flag_values=values)
    flags.DEFINE_integer("metatrain_iterations", 15000, "number of metatraining iterations.",
                         flag_values=values)
    flags.DEFINE_integer("meta_batch_size", 25, "number of tasks sampled per meta-update",
                         flag_values=values)
    flags.DEFINE_float("meta_lr", 0.001, "the base learning rate of the generator",
                       flag_values=values)
    flags.DEFINE_integer("update_batch_size", 5,
                         "number of examples used for inner gradient update (K for K-shot "
                         "learning).",
                         flag_values=values)
    flags.DEFINE_float("update_lr", 1e-3, "step size alpha for inner gradient update.",
                       flag_values=values)
    flags.DEFINE_integer("num_updates", 1, "number of inner gradient updates during training.",
                         flag_values=values)
    flags.DEFINE_string("norm", "batch_norm", "batch_norm, layer_norm, or None", flag_values=values)
    flags.DEFINE_integer("num_filters", 64,
                         "number of filters for conv nets -- 32 for miniimagenet, 64 for omiglot.",
                         flag_values=values)
    flags.DEFINE_bool("conv", True, "whether or not to use a convolutional network, only "
                      "applicable in some cases", flag_values=values)
    flags.DEFINE_bool("max_pool", False,
                      "Whether or not to use max pooling rather than strided convolutions",
                      flag_values=values)
    flags.DEFINE_bool("stop_grad", False, "if True, do not use second derivatives in "
                      "meta-optimization (for speed)", flag_values=values)
    flags.DEFINE_bool("log", True, "if false, do not log summaries, for debugging code.",
                      flag_values=values)
    flags.DEFINE_string("logdir", "/tmp/data", "directory for summaries and checkpoints.",
                        flag_values=values)
    flags.DEFINE_bool("resume", True, "resume training if there is a model available",
                      flag_values=values)
    flags.DEFINE_bool("train", True, "True to train, False to test.", flag_values=values)
    flags.DEFINE_integer("test_iter", -1, "iteration to load model (-1 for latest model)",
                         flag_values=values)
    flags.DEFINE_bool("test_set", False, "Set to true to test on the the test set, False for the "
                      "validation set.", flag_values=values)
    flags.DEFINE_integer("train_update_batch_size", -1, "number of examples used for gradient "
                         "update during training (use if you want to test with a different "
                         "number).",
                         flag_values=values)
    flags.DEFINE_float("train_update_lr", -1, "value of inner gradient step step during training. "
                       "(use if you want to test with a different value)", flag_values=values)


def _define_algorithm_flags(values: flags.FlagValues) -> None:
    """What is meta-learned and how: the algorithm, its loss and options (ANIL, Meta-SGD,
    MAML++), and reinforcement learning's TRPO meta-update."""
    flags.DEFINE_enum("algorithm", "maml", list(ALGORITHMS),
                      "maml (second order, or first order with --stop_grad) or reptile.",
                      flag_values=values)
    flags.DEFINE_enum("xent", "summed", list(XENTS), "the classification loss of both "
                      "loops: summed (the original's sum of cross-entropies / K, N times the "
                      "mean) or mean (MAML++'s mean cross-entropy).", flag_values=values)
    flags.DEFINE_bool("adapt_norm", False, "also adapt normalisation offsets in the inner loop "
                      "(the original did not).", flag_values=values)
    flags.DEFINE_enum("adapt_layers", "all", list(ADAPT_LAYERS),
                      "which layers the inner loop adapts: all (MAML) or head (ANIL, Raghu et "
                      "al. 2020: only the last layer with weights).", flag_values=values)
    flags.DEFINE_bool("meta_sgd", False, "Meta-SGD: learn a per-parameter inner step size.",
                      flag_values=values)
    # MAML++ (Antoniou et al. 2019), docs/mamlpp.md
    flags.DEFINE_bool("lslr", False, "MAML++ LSLR: learn an inner step size per layer "
                      "(trainable variable) and inner step, initialised to --update_lr.",
                      flag_values=values)
    flags.DEFINE_bool("per_step_bn", False, "MAML++: batch norm offsets (and scales) of its "
                      "own at each inner step, meta-learned.", flag_values=values)
    flags.DEFINE_integer("msl_iterations", 0, "MAML++ multi-step loss: for this many "
                         "iterations the meta-loss weighs the query loss after every inner "
                         "step, annealed towards the last (0: off).", flag_values=values)
    flags.DEFINE_integer("first_order_iterations", 0, "MAML++ derivative-order annealing: "
                         "first-order meta-gradients for this many iterations, second order "
                         "after (0: off).", flag_values=values)
    flags.DEFINE_bool("cosine_meta_lr", False, "MAML++: anneal the meta learning rate along a "
                      "cosine from --meta_lr to --min_meta_lr over the training iterations.",
                      flag_values=values)
    flags.DEFINE_float("min_meta_lr", 1e-5, "with --cosine_meta_lr: the final meta learning "
                       "rate (MAML++: 1e-5).", flag_values=values)
    flags.DEFINE_float("max_kl", 0.01, "RL: TRPO's KL limit (delta) of the meta-update.",
                       flag_values=values)
    flags.DEFINE_float("discount", 0.99, "RL: discount factor (gamma) of the returns.",
                       flag_values=values)
    flags.DEFINE_enum("sample_budget", "trajectories", list(SAMPLE_BUDGETS),
                      "RL: what is sampled per task and policy: update_batch_size "
                      "trajectories, or (maml_rl's budget; locomotion only) whole paths until "
                      "update_batch_size x horizon steps.", flag_values=values)
    flags.DEFINE_integer("horizon", 0, "RL: the maximal episode length; 0: the task "
                         "family's (navigation 100, locomotion 200).", flag_values=values)


def _define_task_flags(values: flags.FlagValues) -> None:
    """The tasks: their data, seed and query size, and how many are evaluated, how."""
    flags.DEFINE_integer("seed", 0, "seed of the weights and of the task streams.",
                         flag_values=values)
    flags.DEFINE_string("data_dir", None, "prepared data: the --output folder of "
                        "data_prep.omniglot / data_prep.miniimagenet.", flag_values=values)
    flags.DEFINE_enum("dataset_backend", "folders", list(DATASET_BACKENDS),
                      "how --data_dir is read: folders (the tree of data_prep) or tfds (the TFDS "
                      "data_dir of data_prep --format=tfds); same tasks either way.",
                      flag_values=values)
    flags.DEFINE_integer("num_query", -1, "query images per class at training, validation "
                         "and test; -1: the original's (15 when training on MiniImageNet, K "
                         "otherwise).", flag_values=values)
    flags.DEFINE_integer("test_num_updates", 10,
                         "inner steps at evaluation (hard-coded to 10 in the original).",
                         flag_values=values)
    flags.DEFINE_integer("num_test_tasks", 600, "tasks evaluated by --train=False (original: 600).",
                         flag_values=values)
    flags.DEFINE_integer("ensemble", 0, "evaluate the ensemble of the N checkpoints with the "
                         "best accuracy on --num_test_tasks validation tasks, their query logits "
                         "averaged (MAML++'s protocol; training then validates every 500 "
                         "iterations and keeps the N best checkpoints); 0: one checkpoint, as "
                         "the original.", flag_values=values)


def _define_run_flags(values: flags.FlagValues) -> None:
    """What a run starts from and leaves behind, and what it does on a non-finite step."""
    flags.DEFINE_string("init_checkpoint", None, "initialise from an original TF1 MAML checkpoint "
                        "(prefix, e.g. .../model59000).", flag_values=values)
    flags.DEFINE_bool("test_after_train", True, "after training, evaluate as --train=False would.",
                      flag_values=values)
    flags.DEFINE_string("export_dir", None, "export a SavedModel here of the checkpoint "
                        "trained, or with --train=False of the one evaluated.",
                        flag_values=values)
    flags.DEFINE_bool("deterministic", False, "enable TensorFlow's deterministic ops, so that a "
                      "run resumed after a crash ends with the weights of an uninterrupted one.",
                      flag_values=values)
    flags.DEFINE_enum("nan_policy", "stop", list(NAN_POLICIES),
                      "on a NaN/Inf loss or meta-gradient: stop with a message, or skip the step.",
                      flag_values=values)


def _define_execution_flags(values: flags.FlagValues) -> None:
    """How the meta-batch runs on the machine: speed only, never a number."""
    flags.DEFINE_enum("task_parallelism", "auto",
                      list(TASK_PARALLELISM),
                      "how tasks of a meta-batch are mapped: vectorized (pfor), map (map_fn), loop "
                      "(unrolled), batched (all tasks through batched kernels), accumulate (a "
                      "while loop over chunks of tasks summing meta-gradients: least memory); "
                      "auto: vectorized for dense nets, map for RNNs, batched or accumulate for "
                      "conv nets (by the memory of their im2col patches).", flag_values=values)
    flags.DEFINE_integer("parallel_chunks", 0, "accumulated task chunks run at once (memory grows "
                         "with it); 0: one per CPU core (1 with a GPU).", flag_values=values)
    flags.DEFINE_integer("tasks_per_chunk", 0, "with --task_parallelism=accumulate: tasks per "
                         "chunk (must divide --meta_batch_size); 0: the most that fit the "
                         "memory budget.", flag_values=values)
    flags.DEFINE_bool("autotune", True, "with --task_parallelism=auto (and --tasks_per_chunk, "
                      "--parallel_chunks at 0): time the few candidate plans for a few steps at "
                      "the start of a run of 1000 iterations or more and keep the fastest, "
                      "cached in the run directory's plan.json; never changes a number.",
                      flag_values=values)
    flags.DEFINE_integer("intra_op_threads", -1, "TensorFlow's intra-op threads; -1: 1 on a "
                         "CPU-only machine with several cores and a meta-batch of 2 tasks per "
                         "core or more (task chunks run one per core, faster than splitting each "
                         "op over the cores), else TF's default; 0: TF's default.",
                         flag_values=values)
    flags.DEFINE_enum("distribution_strategy", "default",
                      list(DISTRIBUTION_STRATEGIES),
                      "tf.distribute strategy: the meta-batch is split over its replicas, "
                      "meta-gradients are all-reduced. mirrored: this machine's GPUs (or "
                      "--num_cpu_devices CPUs); multi_worker_mirrored: the machines of TF_CONFIG.",
                      flag_values=values)
    flags.DEFINE_integer("num_cpu_devices", 0, "with --distribution_strategy=mirrored: split the "
                         "CPU into this many logical devices, one replica each (for testing).",
                         flag_values=values)


# The command's flags are absl's global flags; tf-maml-reproduce defines them again in a
# FlagValues of its own to read a flagfile exactly as this command does.
define_flags(FLAGS)


# The library names its arguments in backticks (`run_dir`, `resume=True`); these are the
# flags that set them where the name differs. Any other Config field is its own flag.
FLAG_OF = {"run_dir": "logdir", "inner_lr": "update_lr", "inner_steps": "num_updates",
           "iterations": "metatrain_iterations"}


def to_flags(text: str) -> str:
    """A library message in the command line's terms: `name` and `name=value` of an
    argument become --flag and --flag=value."""
    import dataclasses
    import re

    from tf_maml.config import Config

    fields = {f.name for f in dataclasses.fields(Config)}

    def flag(match):
        name, value = match.group(1), match.group(2) or ""
        name = FLAG_OF.get(name, name)
        return f"--{name}{value}" if name in fields else match.group(0)

    return re.sub(r"`(\w+)(=[^`]*)?`", flag, text)


def config_from_flags(values=None):
    """The :class:`Config` of parsed flags (``values``: absl FlagValues, default the
    command line's): one flag per field, of the same name."""
    import dataclasses

    from tf_maml.config import Config

    values = FLAGS if values is None else values
    kwargs = {f.name: values[f.name].value for f in dataclasses.fields(Config)}
    if kwargs["baseline"] in ("None", ""):  # the original's command lines say --baseline=None
        kwargs["baseline"] = None
    return Config(**kwargs)


def given_flags(values=None) -> frozenset[str]:
    """The :class:`Config` fields whose flags the user set (``values``: absl FlagValues,
    default the command line's), on the command line or in a flagfile, whatever the value:
    absl's ``present``, which a flag left at its default lacks."""
    import dataclasses

    from tf_maml.config import Config

    values = FLAGS if values is None else values
    return frozenset(f.name for f in dataclasses.fields(Config) if values[f.name].present)


def checked_config(values=None):
    """The validated :class:`Config` of parsed flags (``values``, default the command
    line's), checked with the flags the user gave (:func:`given_flags`), as ``tf-maml``
    checks it before any work."""
    return config_from_flags(values).validate(given=given_flags(values))


def unexpected_arguments(args: list[str]) -> str:
    """The error for what the flag parser left over: words that are not flags; or a flag
    behind the invisible byte-order mark of a flagfile saved as "UTF-8 with BOM", which
    the parser cannot read as a flag."""
    marked = [a for a in args if a.startswith("\ufeff")]
    if marked:
        return (f"{marked[0][1:]!r} starts with an invisible byte-order mark: its flagfile was "
                "saved as 'UTF-8 with BOM' (as Notepad saves); save it as UTF-8 without one")
    return f"Unexpected arguments: {' '.join(args)}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(unexpected_arguments(argv[1:]))
    from absl import logging

    from tf_maml.config import ConfigError

    def fail(err, code):
        print(f"tf-maml: error: {to_flags(str(err))}", file=sys.stderr)
        return code

    if FLAGS.verbosity == 0:  # keep TF's INFO chatter (checkpoint sharding, ...) out of the way
        logging.set_verbosity(logging.WARNING)
    try:
        config = checked_config()
    except ConfigError as err:
        return fail(err, 2)
    from tf_maml import runner
    from tf_maml.checkpoint import CheckpointError
    from tf_maml.errors import BatchError
    from tf_maml.rundir import RunDirError
    from tf_maml.tasks.image_tasks import DataError
    from tf_maml.train import NonFiniteError

    # SIGTERM (a scheduler's or tf-maml-reproduce's stop) is Ctrl-C: training saves its
    # step (train.py's own handler), an evaluation says what is intact, and the exit is 130.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        runner.run(config, log=lambda line: print(to_flags(line), flush=True))
    except (BatchError, ConfigError, DataError, CheckpointError, NonFiniteError,
            RunDirError) as err:
        return fail(err, 1)
    except KeyboardInterrupt:
        # The command is ending (training saved and said so): more presses of Ctrl-C, or
        # more SIGTERMs, must not turn its exit into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return 130
    except Exception as err:
        import tensorflow as tf

        if not (config.distribution_strategy == "multi_worker_mirrored"
                and isinstance(err, tf.errors.UnavailableError)):
            raise
        print("tf-maml: error: lost contact with another worker (it stopped or crashed: "
              f"{err.message.splitlines()[0]}). Restart every worker with the same command to "
              "resume from the chief's latest checkpoint.", file=sys.stderr)
        return 1
    return 0


def run(argv=None):
    """Console entry point ``tf-maml`` (``argv``: the command line, default this
    process's)."""
    from tf_maml.errors import exit_on_flagfile_problem

    exit_on_flagfile_problem("tf-maml", argv)
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
