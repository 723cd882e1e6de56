"""The checks of a :class:`~tf_maml.config.Config`: every impossible value of a flag, named
with the flag and the fix (:class:`ConfigError`), in the order :meth:`ConfigChecks.validate`
runs them; and the option lists the flags offer."""

from __future__ import annotations

import math
from collections.abc import Collection

# The option lists of the library's modules, which own them: the flags offer them.
from tf_maml.adapt import ADAPT_LAYERS, SAMPLED, UNROLLED, unrolled_steps_problem
from tf_maml.distribute import STRATEGIES as DISTRIBUTION_STRATEGIES
from tf_maml.distribute import check_meta_batch_size
from tf_maml.errors import (
    ConfigError,
    did_you_mean,
    empty_path,
    path_problem,
    tensorflow_pattern,
)
from tf_maml.evaluate import PRETRAINED_BASELINES
from tf_maml.mapping.plan import TASK_PARALLELISM
from tf_maml.models import NORMS
from tf_maml.options.objectives import ALGORITHMS
from tf_maml.rl.sampler import SAMPLE_BUDGETS
from tf_maml.tasks.locomotion import TASK_FAMILIES as LOCOMOTION_FAMILIES

# What a value of a Config field of each annotation is: its test, and its name in a run's
# config.json (JSON) and in Python. A bool is an int to Python (and JSON's true is no count),
# an int a float (JSON writes 1.0 as 1.0, but a hand-edited 1 is one).
FIELD_TYPES = {
    "bool": (lambda v: isinstance(v, bool), "true or false", "True or False"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number",
            "a whole number"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number",
              "a number"),
    "str": (lambda v: isinstance(v, str), "a string", "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null",
                   "a string or None"),
}

# Reinforcement learning (tf_maml/rl): 2D navigation and the MuJoCo locomotion families.
RL_DATASOURCES = ("navigation", *LOCOMOTION_FAMILIES)
DATASOURCES = ("sinusoid", "omniglot", "miniimagenet", *RL_DATASOURCES)
DATASET_BACKENDS = ("folders", "tfds")
NAN_POLICIES = ("stop", "skip")
# The classification loss: the original's Σ CE / K (N times the mean on an N-way support set,
# cbfinn/maml utils.py `xent`), or the mean cross-entropy (MAML++'s `F.cross_entropy`).
XENTS = ("summed", "mean")
# The MiniImageNet table's two pretrained baselines (tf_maml.evaluate.PRETRAINED_BASELINES)
# evaluate ONE conv4 pretrained as an ordinary classifier of the training classes, so their
# run directory and run-defining flags are the pretraining's.
BASELINES = ("oracle", "random") + PRETRAINED_BASELINES
SEED_MAX = 2**32 - 1  # keras.utils.set_random_seed refuses anything outside [0, 2**32 - 1]
# The flags of supervised meta-learning that reinforcement learning never reads (its learner
# takes what experiment.rl_learner passes, and runner.run's RL branch returns before the speed
# settings are applied), with what does that job there. Given (even at its default) or set to
# anything but its default, one would change nothing but, for some, the run directory's name:
# it is refused instead.
_POLICY = "the policy is the paper's MLP (two hidden layers of 100 ReLU units)"
_ENVIRONMENT = "its tasks are sampled from the environment, not read from files"
_SPEED = ("a speed setting of supervised meta-training; reinforcement learning runs each "
          "iteration's tasks as one batch, on TensorFlow's default threads")
RL_UNUSED = {
    "meta_lr": "TRPO's step is bounded by --max_kl",
    "min_meta_lr": "TRPO's step is bounded by --max_kl",
    "num_classes": "the task family sets the policy's actions",
    "num_filters": _POLICY,
    "conv": _POLICY,
    "max_pool": _POLICY,
    # --norm=None is not refused: the RL flagfiles set it, to name their runs ...nonorm.
    "norm": _POLICY + ", without normalisation",
    "adapt_norm": _POLICY + ", without normalisation to adapt",
    "data_dir": _ENVIRONMENT,
    "dataset_backend": _ENVIRONMENT,
    "test_set": "its evaluation always adapts the fixed test tasks (--num_test_tasks)",
    "task_parallelism": _SPEED,
    "parallel_chunks": _SPEED,
    "intra_op_threads": _SPEED,
    "autotune": _SPEED,
    # rllab's TRPO line search rejects a step whose surrogate or KL is not finite (tf_maml.rl:
    # a non-finite meta-gradient too): the step is counted as rejected and training goes on.
    "nan_policy": ("reinforcement learning always rejects a non-finite step, as rllab's line "
                   "search does (counted as rejected; training goes on)"),
}

# Reinforcement learning's flags of its TRPO meta-update and returns, which supervised
# meta-learning never reads (its meta-update is Adam's, on losses, not returns).
SUPERVISED_UNUSED = {
    "max_kl": "it is TRPO's KL limit of reinforcement learning; supervised meta-learning "
              "takes Adam steps of --meta_lr",
    "discount": "it discounts the returns of reinforcement learning; supervised tasks have "
                "losses, not returns",
}


def not_one_of(value, choices, note: str = "") -> str:
    """The complaint about ``value``, which is none of ``choices``: all of them (and
    ``note``), then the closest as a did-you-mean, for a typo such as omniglott."""
    return (f"{value!r} is not one of {', '.join(choices)}{note}"
            f"{did_you_mean(str(value), choices)}")


class ConfigChecks:
    """``validate()`` and its checks, for :class:`~tf_maml.config.Config` (a frozen dataclass
    of the flags), which derives from this class."""

    def _validate_mamlpp(self, fail, given: frozenset[str]) -> None:
        for name in ("msl_iterations", "first_order_iterations"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0 (0: off), got {getattr(self, name)}")
        # The cosine schedule is only a meta learning rate: Reptile may use it too.
        on = [name for name in ("lslr", "per_step_bn", "msl_iterations",
                                "first_order_iterations", "cosine_meta_lr")
              if getattr(self, name)]
        of_maml = [name for name in on if name != "cosine_meta_lr"]
        if on and self.is_rl:
            fail(on[0], f"MAML++'s options are for the supervised datasources ({self.datasource}"
                 "'s meta-update is TRPO's)")
        if of_maml and self.algorithm != "maml":
            fail(of_maml[0], f"a MAML++ option of the meta-gradient; --algorithm="
                 f"{self.algorithm} has none")
        if self.per_step_bn and self.norm != "batch_norm":
            fail("per_step_bn", f"per-step batch norm needs --norm=batch_norm, got "
                 f"--norm={self.norm}")
        if self.per_step_bn and self.adapt_norm:
            fail("per_step_bn", "batch norm has its own values at each inner step, so the "
                 "inner loop cannot also adapt them: drop --adapt_norm")
        if self.first_order_iterations and self.stop_grad:
            fail("first_order_iterations", "anneals from first to second order; with "
                 "--stop_grad every step is first order: drop one of them")
        if self.cosine_meta_lr and not (math.isfinite(self.min_meta_lr)
                                        and 0 <= self.min_meta_lr <= self.meta_lr):
            fail("min_meta_lr", f"the cosine's minimum must be in [0, --meta_lr={self.meta_lr}]"
                 f", got {self.min_meta_lr}")
        if not self.cosine_meta_lr and (self.min_meta_lr != type(self).min_meta_lr
                                        or "min_meta_lr" in given):
            # Else ignored: the meta learning rate stays --meta_lr throughout (given at its
            # default, 1e-5, too: a forgotten --cosine_meta_lr).
            fail("min_meta_lr", "is where --cosine_meta_lr anneals the meta learning rate "
                 "to; without it the rate stays --meta_lr: add --cosine_meta_lr or drop "
                 "--min_meta_lr")

    def validate(self, given: Collection[str] = ()):
        """The config itself; raises :class:`ConfigError` naming the flag for an impossible
        value (the first the checks below find, in their order). ``given``: the flags the
        user set (on the command line or in a flagfile), whatever their values: one that the
        datasource never reads (or --min_meta_lr without the cosine) is refused even at its
        default."""

        def fail(flag: str, why: str):
            raise ConfigError(f"--{flag}: {why}")

        self._validate_types(fail)
        self._validate_paths(fail)
        self._validate_choices(fail)
        self._validate_baselines(fail)
        self._validate_lengths(fail)
        self._validate_classification(fail)
        self._validate_evaluation(fail)
        self._validate_rates(fail)
        self._validate_data(fail)
        self._validate_rl_unused(fail, frozenset(given))
        self._validate_supervised_unused(fail, frozenset(given))
        self._validate_mamlpp(fail, frozenset(given))
        self._validate_reptile(fail)
        self._validate_execution(fail)
        return self

    def _validate_paths(self, fail) -> None:
        """The folders and files the flags name, as a shell would not have left them."""
        for name in ("logdir", "data_dir", "init_checkpoint", "export_dir"):
            value = getattr(self, name)
            # Else read as unset: --init_checkpoint=$CKPT with CKPT unset trained from
            # scratch, --export_dir= exported nothing, --logdir= wrote into the current
            # folder, all without a word.
            problem = path_problem(name, value)
            if problem and empty_path(name, value):
                drop = " (its default: /tmp/data)" if name == "logdir" else ", or drop the flag"
                problem += drop
            if name != "data_dir" or self.dataset_backend == "tfds":
                problem = problem or tensorflow_pattern(value)
            if problem:
                fail(name, problem)

    def _validate_choices(self, fail) -> None:
        """Every option spelled as a word is one of its choices (and ANIL's is
        supervised)."""
        if self.datasource not in DATASOURCES:
            fail("datasource", not_one_of(self.datasource, DATASOURCES))
        if self.norm not in NORMS:
            fail("norm", not_one_of(self.norm, NORMS, " (the string 'None' means no "
                                    "normalisation)"))
        if self.algorithm not in ALGORITHMS:
            fail("algorithm", not_one_of(self.algorithm, ALGORITHMS))
        if self.dataset_backend not in DATASET_BACKENDS:
            fail("dataset_backend", not_one_of(self.dataset_backend, DATASET_BACKENDS))
        if self.adapt_layers not in ADAPT_LAYERS:
            fail("adapt_layers", not_one_of(self.adapt_layers, ADAPT_LAYERS, " (all: MAML; "
                                            "head: ANIL, only the last layer adapts)"))
        if self.adapt_layers == "head" and self.is_rl:
            fail("adapt_layers", "ANIL (--adapt_layers=head) is for the supervised "
                 f"datasources; the {self.datasource} policy adapts all its layers")
        # Else ignored (the inner loop adapts no normalisation), but named .adaptnorm.
        if self.adapt_norm and self.adapt_layers == "head" and not self.is_rl:
            fail("adapt_norm", "ANIL (--adapt_layers=head) adapts only the last layer with "
                 "weights, never normalisation: drop --adapt_norm")
        if self.adapt_norm and self.norm == "None" and not self.is_rl:
            fail("adapt_norm", "adapts the normalisation offsets, and --norm=None has none: "
                 "drop --adapt_norm, or give --norm=batch_norm or layer_norm")
        if self.task_parallelism not in TASK_PARALLELISM:
            fail("task_parallelism", not_one_of(self.task_parallelism, TASK_PARALLELISM))
        if self.baseline not in (None, *BASELINES):
            fail("baseline", not_one_of(self.baseline, BASELINES, " or unset"))

    def _validate_baselines(self, fail) -> None:
        """A baseline exists for its datasource."""
        if self.is_pretrained_baseline:
            self._validate_pretrained_baseline(fail)
        if self.baseline == "oracle" and not (self.datasource == "sinusoid" or self.is_rl):
            fail("baseline", "the oracle baseline exists only for --datasource=sinusoid and "
                 f"the reinforcement-learning datasources ({', '.join(RL_DATASOURCES)})")
        if self.baseline == "random" and not self.is_rl:
            fail("baseline", "the random baseline exists only for the reinforcement-learning "
                 f"datasources ({', '.join(RL_DATASOURCES)})")
        if (self.train and not self.is_rl and not self.is_pretrained_baseline
                and self.effective_metatrain_iterations == 0):
            # Else ignored (every iteration is pretraining: a regression on the training
            # tasks, no meta-gradient), yet the run directory was named .reptile or .fo.
            what = ("--baseline=oracle pretrains on every iteration" if self.baseline == "oracle"
                    else "--metatrain_iterations=0 only pretrains")
            self._refuse_unless_default(
                fail, ("algorithm", "stop_grad", "msl_iterations", "first_order_iterations"),
                f"{what}, with no meta-gradient for this option of it to change (only the run "
                "directory's name would)")

    def _refuse_unless_default(self, fail, flags, why: str) -> None:
        """Fails each of ``flags`` given a value other than its default, as meaningless
        for this run (``why``), naming the value to drop."""
        for flag in flags:
            value = getattr(self, flag)
            if value != getattr(type(self), flag):  # the dataclass field's default
                fail(flag, f"{why}: drop --{flag}={value}")

    def _validate_types(self, fail) -> None:
        """Every field of its flag's type: a Config made in Python (``tf_maml.Config``)
        takes any value, and "5" for a count was a TypeError from a comparison, "False" for
        a bool trained (a non-empty string is true) and 2.5 steps ran 2."""
        import dataclasses

        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected, _, what = FIELD_TYPES[field.type]
            if value is None and field.name == "norm":
                continue  # its choices say that the string 'None' means none
            if not expected(value):
                fail(field.name, f"{value!r} is not {what}")

    def _validate_lengths(self, fail) -> None:
        """Iterations, batch sizes, filters, test tasks and inner steps: counts that
        make a run; and the seed."""
        if not 0 <= self.seed <= SEED_MAX:
            fail("seed", f"must be in [0, {SEED_MAX}] (the range of Keras' and NumPy's "
                 f"seeds), got {self.seed}")
        for name in ("pretrain_iterations", "metatrain_iterations"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}")
        if self.train and self.total_iterations == 0 and self.is_pretrained_baseline:
            fail("pretrain_iterations", f"--baseline={self.baseline} pretrains a classifier "
                 "for --pretrain_iterations minibatches: give a positive number (or "
                 "--train=False to evaluate a pretrained one)")
        if self.train and self.total_iterations == 0 and self.baseline != "random":
            fail("metatrain_iterations", "pretrain_iterations + metatrain_iterations is 0: "
                 "there is nothing to train (use --train=False to evaluate)")
        for name in ("meta_batch_size", "update_batch_size", "num_filters", "num_test_tasks"):
            if getattr(self, name) < 1:
                fail(name, f"must be >= 1, got {getattr(self, name)}")
        if self.num_updates < 1:
            fail("num_updates", f"must be >= 1, got {self.num_updates}")
        # Supervised steps are unrolled in the compiled meta-step and evaluation, and so are
        # RL's in its meta-gradient; RL's evaluation runs a step at a time, each sampling.
        for name in ("num_updates", "test_num_updates"):
            each = SAMPLED if self.is_rl and name == "test_num_updates" else UNROLLED
            problem = unrolled_steps_problem(getattr(self, name), each)
            if problem:
                fail(name, problem)

    def _validate_classification(self, fail) -> None:
        """The loss and query size of classification tasks."""
        if self.xent not in XENTS:
            fail("xent", not_one_of(self.xent, XENTS))
        if self.xent != "summed" and not self.is_classification:
            fail("xent", "is the cross-entropy of --datasource=omniglot or miniimagenet; drop "
                 "it")
        if self.num_query != -1 and (self.num_query < 1 or not self.is_classification):
            fail("num_query", f"query images per class of omniglot or miniimagenet tasks: -1 "
                 f"(the original's) or >= 1, got {self.num_query}")

    def _validate_evaluation(self, fail) -> None:
        """The ensemble, the export, the original's checkpoint and the evaluation's inner
        steps."""
        if self.ensemble < 0:
            fail("ensemble", f"must be >= 0 (0: no ensemble), got {self.ensemble}")
        if self.ensemble and (self.baseline or self.init_checkpoint or self.is_rl):
            fail("ensemble", "an ensemble is made of a supervised run's own checkpoints: it "
                 "does not apply to --baseline, --init_checkpoint or reinforcement learning "
                 f"(--datasource={self.datasource}); drop one of them")
        if self.export_dir and self.ensemble and not self.train:
            fail("export_dir", f"exports one checkpoint, and --ensemble={self.ensemble} "
                 "evaluates an ensemble of them: drop --ensemble to export the checkpoint "
                 "--test_iter names (default: the latest)")
        if self.export_dir and self.is_rl:
            fail("export_dir", f"the {self.datasource} policy has no SavedModel export (it "
                 "adapts on an environment's rollouts, not on a support set); drop --export_dir")
        if self.init_checkpoint and self.is_rl:  # else ignored: the policy trained from scratch
            fail("init_checkpoint", f"initialises a supervised net from an original TF1 "
                 f"checkpoint; the {self.datasource} policy starts from its own initialisation: "
                 "drop --init_checkpoint")
        if self.test_num_updates < 0:
            fail("test_num_updates", f"must be >= 0, got {self.test_num_updates}")
        if self.test_iter < -1:  # the original's <= 0 is the latest: -7 is a typo for 7
            fail("test_iter", "-1 (the latest checkpoint) or the iteration N of a checkpoint "
                 f"model-N, got {self.test_iter}")
        if self.train and self.test_iter > 0:
            # Else ignored: the evaluation after training took the last checkpoint, and its
            # test_config.json recorded this test_iter beside that checkpoint's numbers.
            fail("test_iter", f"picks the checkpoint model-{self.test_iter} that --train=False "
                 "evaluates; training evaluates and exports the checkpoint it ends with: add "
                 f"--train=False to evaluate model-{self.test_iter}, or drop --test_iter")

    def _validate_rates(self, fail) -> None:
        """Step sizes, and reinforcement learning's TRPO meta-update and horizon."""
        for name in ("meta_lr", "update_lr"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                fail(name, f"must be a positive finite number, got {value}")
        if self.train_update_batch_size != -1 and self.train_update_batch_size < 1:
            fail("train_update_batch_size", "must be -1 (same as --update_batch_size) or >= 1")
        if self.train_update_lr != -1 and not self.train_update_lr > 0:
            fail("train_update_lr", "must be -1 (same as --update_lr) or positive")
        for name, used in (("train_update_batch_size", "update_batch_size"),
                           ("train_update_lr", "update_lr")):
            value, trained = getattr(self, name), getattr(self, used)
            if self.train and value not in (-1, trained):
                # Else trained with the one, into the run directory named for the other,
                # where an evaluation of the other would take it for its own.
                fail(name, f"names the --{used} a run was trained with, to evaluate it with "
                     f"another (--train=False); training uses --{used}={trained}, into a run "
                     f"directory named for {value}: drop --{name}, or add --train=False")
        if not (math.isfinite(self.max_kl) and self.max_kl > 0):
            fail("max_kl", f"TRPO's KL limit must be a positive finite number, got "
                 f"{self.max_kl}")
        if not 0 < self.discount <= 1:
            fail("discount", f"must be in (0, 1], got {self.discount}")
        if self.is_rl and (self.algorithm != "maml" or self.meta_sgd):
            fail("algorithm", f"--datasource={self.datasource} trains MAML with TRPO (or the "
                 "baselines); Reptile and Meta-SGD are not implemented for it")
        if self.sample_budget not in SAMPLE_BUDGETS:
            fail("sample_budget", not_one_of(self.sample_budget, SAMPLE_BUDGETS))
        if self.sample_budget == "steps" and self.datasource not in LOCOMOTION_FAMILIES:
            fail("sample_budget", f"a budget of steps applies to the locomotion datasources "
                 f"({', '.join(LOCOMOTION_FAMILIES)}), whose Python-stepped samplers run it; "
                 f"--datasource={self.datasource} samples --update_batch_size trajectories "
                 "per task: drop --sample_budget")
        if self.horizon < 0 or (self.horizon and not self.is_rl):
            fail("horizon", f"the episode length of the reinforcement-learning datasources: 0 "
                 f"(the task family's: navigation 100, locomotion 200) or >= 1, got "
                 f"{self.horizon} for --datasource={self.datasource}")

    def _validate_data(self, fail) -> None:
        """Classification data, and the net it is read into; none for the sinusoid."""
        if self.datasource == "sinusoid":
            # Else ignored: --data_dir=data/omniglot without --datasource=omniglot trained a
            # sinusoid, the default datasource, without a word.
            for name, fix in (("data_dir", "add --datasource=omniglot or miniimagenet to "
                                           "train on that data, or drop --data_dir"),
                              ("dataset_backend", "drop --dataset_backend"),
                              ("test_set", "drop --test_set")):
                if getattr(self, name) != getattr(type(self), name):
                    fail(name, "--datasource=sinusoid reads no data: its tasks are drawn "
                         f"from the family of sine waves, without splits; {fix}")
        # Else ignored but for the run directory's name (cls_3, hidden32, maxpool): the net
        # is the sinusoid's MLP, or Omniglot's fully connected one (experiment.build_model).
        net = ("--datasource=sinusoid trains the original's MLP (two hidden layers of 40 "
               "units, one output)" if self.datasource == "sinusoid" else
               "--conv=False trains the original's fully connected net (256, 128, 64, 64 "
               "units)" if self.is_classification and not self.conv else None)
        unused = (("num_classes", "num_filters", "conv", "max_pool")
                  if self.datasource == "sinusoid" else ("num_filters", "max_pool"))
        for name in unused if net else ():
            value = getattr(self, name)
            if value != getattr(type(self), name):
                fail(name, f"{net}, which it does not change; drop --{name}={value}")
        if self.is_classification:
            if self.num_classes < 2:
                fail("num_classes", f"N-way classification needs N >= 2, got {self.num_classes}")
            if not self.data_dir:
                script = "omniglot" if self.datasource == "omniglot" else "miniimagenet"
                fmt = " --format=tfds" if self.dataset_backend == "tfds" else ""
                fail("data_dir", f"--datasource={self.datasource} needs --data_dir, the --output "
                     f"folder of `python -m data_prep.{script}{fmt}`")
        if self.datasource == "miniimagenet" and self.conv and not self.max_pool:
            fail("max_pool", "the MiniImageNet conv net's head assumes --max_pool=True "
                 "(as the original, whose dense layer is sized for 5x5 maps)")

    def _validate_supervised_unused(self, fail, given: frozenset[str]) -> None:
        """Supervised meta-learning: neither of reinforcement learning's TRPO flags
        (:data:`SUPERVISED_UNUSED`) is given or set, as it would be ignored (--horizon and
        --sample_budget are refused where they are checked)."""
        if self.is_rl:
            return
        for name, why in SUPERVISED_UNUSED.items():
            value = getattr(self, name)
            if value != getattr(type(self), name) or name in given:
                fail(name, f"has no effect with --datasource={self.datasource}: {why}; drop "
                     f"--{name}={value}")

    def _validate_rl_unused(self, fail, given: frozenset[str]) -> None:
        """Reinforcement learning: no flag it never reads (:data:`RL_UNUSED`) is set, as the
        user would expect it to act: neither given (``given``, even at its default value)
        nor away from its default; except --norm=None, which the RL flagfiles set."""
        if not self.is_rl:
            return
        for name, why in RL_UNUSED.items():
            value = getattr(self, name)
            if name == "norm" and value == "None":
                continue
            if value == getattr(type(self), name) and name not in given:
                continue
            fix = ("use --norm=None, as the RL flagfiles do (it only names the run "
                   "...nonorm)" if name == "norm" else f"drop --{name}={value}")
            fail(name, f"has no effect with --datasource={self.datasource}: {why}; {fix}")

    def _validate_reptile(self, fail) -> None:
        """What Reptile, first order by construction, cannot combine with."""
        if self.meta_sgd and self.algorithm == "reptile":
            fail("meta_sgd", "Meta-SGD learns inner step sizes through the meta-gradient; "
                 "Reptile has none")
        if self.algorithm == "reptile" and self.stop_grad:
            fail("stop_grad", "Reptile is first-order by construction; drop --stop_grad")

    def _validate_execution(self, fail) -> None:
        """How the meta-batch runs: strategy, chunks, threads, devices, non-finite
        steps."""
        if self.distribution_strategy not in DISTRIBUTION_STRATEGIES:
            fail("distribution_strategy", not_one_of(self.distribution_strategy,
                                                     DISTRIBUTION_STRATEGIES))
        if self.nan_policy not in NAN_POLICIES:
            fail("nan_policy", not_one_of(self.nan_policy, NAN_POLICIES))
        if self.parallel_chunks < 0:
            fail("parallel_chunks", f"must be >= 0 (0: one per CPU core), got "
                 f"{self.parallel_chunks}")
        if self.tasks_per_chunk < 0 or (self.tasks_per_chunk
                                        and self.task_parallelism != "accumulate"):
            fail("tasks_per_chunk", f"needs --task_parallelism=accumulate and a number >= 0 "
                 f"(0: chosen by memory), got {self.tasks_per_chunk}")
        if self.intra_op_threads < -1:
            fail("intra_op_threads", f"must be >= -1 (-1: auto, 0: TensorFlow's default), "
                 f"got {self.intra_op_threads}")
        if self.num_cpu_devices < 0:
            fail("num_cpu_devices", f"must be >= 0 (0: do not split the CPU), got "
                 f"{self.num_cpu_devices}")
        if self.distribution_strategy != "default" and self.is_rl:
            fail("distribution_strategy", f"{self.datasource} (reinforcement learning) trains "
                 "on one device; drop the flag")
        if self.num_cpu_devices and self.distribution_strategy != "mirrored":
            fail("num_cpu_devices", "splits the CPU into replicas for "
                 "--distribution_strategy=mirrored; add that flag (or drop this one)")
        if self.distribution_strategy == "mirrored" and self.num_cpu_devices > 1:
            # Known before TensorFlow starts; other strategies are checked once they exist.
            check_meta_batch_size(self.meta_batch_size, self.num_cpu_devices, "mirrored")
        # Training cuts each replica's share of the meta-batch into chunks (the replicas are
        # known here only for --num_cpu_devices; other strategies split as they run).
        replicas = self.num_cpu_devices if self.distribution_strategy == "mirrored" else 1
        tasks = self.meta_batch_size // max(replicas, 1)
        if self.train and self.tasks_per_chunk > 1 and tasks % self.tasks_per_chunk:
            divisors = [d for d in range(1, tasks + 1) if tasks % d == 0]
            of = (f"the {tasks} tasks of each of the {replicas} replicas" if replicas > 1
                  else f"--meta_batch_size={tasks}")
            fail("tasks_per_chunk", f"{self.tasks_per_chunk} tasks per chunk do not divide "
                 f"{of}; use one of {', '.join(map(str, divisors))} (or 0: chosen by memory)")

    def _validate_pretrained_baseline(self, fail) -> None:
        """The fine-tuning and nearest-neighbour baselines: a plain classifier, pretrained
        and evaluated without meta-learning, so the meta-learning options mean nothing."""
        name = f"--baseline={self.baseline}"
        if self.datasource != "miniimagenet":
            fail("baseline", f"{name} is the MiniImageNet table's baseline: use "
                 "--datasource=miniimagenet")
        if not self.conv:
            fail("conv", f"{name} pretrains MAML's conv4; drop --conv=False")
        if self.dataset_backend != "folders":
            fail("dataset_backend", f"{name} reads the folders of data_prep; use "
                 "--dataset_backend=folders")
        self._refuse_unless_default(
            fail, ("algorithm", "meta_sgd", "stop_grad", "adapt_layers", "adapt_norm",
                   "init_checkpoint", "export_dir", "distribution_strategy"),
            f"{name} has no meta-learning (a classifier is pretrained, then fine-tuned or used "
            "as features)")
        if self.metatrain_iterations not in (0, type(self).metatrain_iterations):
            fail("metatrain_iterations", f"{name} does not meta-train; its length is "
                 "--pretrain_iterations (drop --metatrain_iterations or set it to 0)")
