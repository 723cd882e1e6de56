"""The experiment configuration: one frozen dataclass, the original's flags plus a few.

Field names, defaults and meanings are those of cbfinn/maml main.py; ``main.py`` turns
absl flags into a :class:`Config` and nothing else reads flags.
"""

from __future__ import annotations

import dataclasses
import json
import math

# The option lists of the library's modules, which own them: the flags offer them.
from tf_maml.adapt import ADAPT_LAYERS
from tf_maml.distribute import STRATEGIES as DISTRIBUTION_STRATEGIES
from tf_maml.distribute import check_meta_batch_size
from tf_maml.errors import ConfigError
from tf_maml.evaluate import PRETRAINED_BASELINES
from tf_maml.mapping.plan import TASK_PARALLELISM
from tf_maml.models import NORMS
from tf_maml.options.objectives import ALGORITHMS

DATASOURCES = ("sinusoid", "omniglot", "miniimagenet", "navigation")
DATASET_BACKENDS = ("folders", "tfds")
NAN_POLICIES = ("stop", "skip")
# The classification loss: the original's Σ CE / K (N times the mean on an N-way support set,
# cbfinn/maml utils.py `xent`), or the mean cross-entropy (MAML++'s `F.cross_entropy`).
XENTS = ("summed", "mean")
# The MiniImageNet table's two pretrained baselines (tf_maml.evaluate.PRETRAINED_BASELINES)
# evaluate ONE conv4 pretrained as an ordinary classifier of the training classes, so their
# run directory and run-defining flags are the pretraining's.
BASELINES = ("oracle", "random") + PRETRAINED_BASELINES
# What the test-time flags of those baselines may change in a resumed pretraining: the
# evaluation (which baseline, K, N-way, fine-tuning step) and its length (iterations).
PRETRAINING_FREE = ("baseline", "num_classes", "update_batch_size", "update_lr",
                    "num_updates", "pretrain_iterations")

# The flags that define what a run is. A resume that changed one would continue another
# experiment's checkpoints (another net, other tasks, another objective), so it is refused;
# every other flag changes only how training proceeds from the resumed iteration (meta_lr,
# iterations, speed, logging) or what happens after it (evaluation, export). The run
# directory's name already holds most of these; the others (seed, datasource, ...) are
# compared with the config.json of the run.
RUN_DEFINING = ("datasource", "num_classes", "baseline", "pretrain_iterations",
                "meta_batch_size", "update_batch_size", "update_lr", "num_updates", "norm",
                "num_filters", "conv", "max_pool", "stop_grad", "algorithm", "seed",
                "adapt_norm", "meta_sgd", "discount", "lslr", "per_step_bn", "msl_iterations",
                "first_order_iterations", "cosine_meta_lr", "xent", "num_query")
# Where the run is and what this invocation does: not a change of the run.
NOT_RUN_SETTINGS = ("logdir", "resume", "train", "test_iter")


@dataclasses.dataclass(frozen=True)
class Config:
    # ---- the original's flags (main.py:40-70), same names, defaults and meaning
    datasource: str = "sinusoid"
    num_classes: int = 5
    baseline: str | None = None
    pretrain_iterations: int = 0
    metatrain_iterations: int = 15000
    meta_batch_size: int = 25
    meta_lr: float = 0.001
    update_batch_size: int = 5
    update_lr: float = 1e-3
    num_updates: int = 1
    norm: str = "batch_norm"
    num_filters: int = 64
    conv: bool = True
    max_pool: bool = False
    stop_grad: bool = False
    log: bool = True
    logdir: str = "/tmp/data"
    resume: bool = True
    train: bool = True
    test_iter: int = -1
    test_set: bool = False
    train_update_batch_size: int = -1
    train_update_lr: float = -1.0
    # ---- added (documented in the README)
    algorithm: str = "maml"
    test_num_updates: int = 10
    num_test_tasks: int = 600
    # query images per class at training, validation and test; -1: the original's (15 when
    # training on MiniImageNet, K otherwise); MAML++'s MiniImageNet code used 15 throughout
    num_query: int = -1
    # the classification loss of the inner and the outer loop (XENTS)
    xent: str = "summed"
    # evaluate the ensemble of the N checkpoints with the best validation score (MAML++'s
    # test protocol, tf_maml/ensemble.py); 0: the one checkpoint, as the original
    ensemble: int = 0
    seed: int = 0
    data_dir: str | None = None
    dataset_backend: str = "folders"
    # navigation (reinforcement learning, tf_maml/rl): TRPO's KL limit δ, the discount γ
    max_kl: float = 0.01
    discount: float = 0.99
    adapt_norm: bool = False
    adapt_layers: str = "all"
    meta_sgd: bool = False
    # MAML++ (Antoniou et al. 2019), each trick its own option, off by default
    # (docs/mamlpp.md): learned per-layer per-step inner rates, per-step batch norm, the
    # multi-step loss and derivative-order annealing over their first N iterations, and
    # the meta learning rate annealed along a cosine to min_meta_lr over the run.
    lslr: bool = False
    per_step_bn: bool = False
    msl_iterations: int = 0
    first_order_iterations: int = 0
    cosine_meta_lr: bool = False
    min_meta_lr: float = 1e-5
    task_parallelism: str = "auto"
    test_after_train: bool = True
    init_checkpoint: str | None = None
    export_dir: str | None = None
    deterministic: bool = False
    # on a NaN/Inf loss or meta-gradient: "stop" with a message, or "skip" the step
    nan_policy: str = "stop"
    # tf.distribute (tf_maml/distribute.py); not part of the run name: a run can be resumed
    # with another strategy.
    distribution_strategy: str = "default"
    num_cpu_devices: int = 0
    # CPU speed (not part of the run name either): chunks of accumulated tasks run at once
    # (0: one per core) and TensorFlow's intra-op threads (-1: 1 on a CPU-only machine
    # with several cores and 2 tasks per core or more, where the chunks are the
    # parallelism; 0: TensorFlow's default).
    parallel_chunks: int = 0
    intra_op_threads: int = -1
    # with task_parallelism="accumulate": tasks per chunk (0: chosen by memory)
    tasks_per_chunk: int = 0
    # with task_parallelism="auto" (and the two above at 0): time the candidate plans at
    # the start of a run of at least 1000 iterations and keep the fastest (tf_maml.autotune)
    autotune: bool = True

    # ------------------------------------------------------------------ derived values
    @property
    def is_classification(self) -> bool:
        return self.datasource in ("omniglot", "miniimagenet")

    @property
    def effective_train_update_batch_size(self) -> int:
        if self.train_update_batch_size == -1:
            return self.update_batch_size
        return self.train_update_batch_size

    @property
    def effective_train_update_lr(self) -> float:
        return self.update_lr if self.train_update_lr == -1 else self.train_update_lr

    @property
    def is_pretrained_baseline(self) -> bool:
        """The fine-tuning or nearest-neighbour baseline: a classifier pretrained on the
        training classes (``pretrain_iterations`` minibatches of ``meta_batch_size``
        images), evaluated on the same test tasks as MAML."""
        return self.baseline in PRETRAINED_BASELINES

    @property
    def effective_pretrain_iterations(self) -> int:
        # The oracle baseline turns every iteration into pretraining (main.py); the random
        # baseline (navigation) is not trained at all.
        if self.baseline == "random":
            return 0
        if self.baseline == "oracle":
            return self.pretrain_iterations + self.metatrain_iterations
        return self.pretrain_iterations

    @property
    def effective_metatrain_iterations(self) -> int:
        if self.baseline in ("oracle", "random") or self.is_pretrained_baseline:
            return 0
        return self.metatrain_iterations

    @property
    def total_iterations(self) -> int:
        return self.effective_pretrain_iterations + self.effective_metatrain_iterations

    @property
    def print_interval(self) -> int:
        return 1000 if self.datasource == "sinusoid" else 100

    @property
    def test_print_interval(self) -> int:
        return 5 * self.print_interval

    @property
    def meta_grad_clip(self) -> float | None:
        return 10.0 if self.datasource == "miniimagenet" else None

    @property
    def num_query_train(self) -> int:
        """Query examples per class (per task for sinusoid) during meta-training."""
        if self.num_query > 0:
            return self.num_query
        return 15 if self.datasource == "miniimagenet" else self.update_batch_size

    @property
    def num_query_eval(self) -> int:
        """Query examples per class at validation and test: K, as the original's test
        (2K samples per class), unless ``num_query`` sets them."""
        return self.num_query if self.num_query > 0 else self.update_batch_size

    def exp_string(self) -> str:
        """The run directory name, built exactly as the original's main.py builds it, plus
        suffixes for runs the original could not tell apart (see README, Deviations).

        The pretrained baselines' run is the pretraining, shared by both baselines and every
        K: its name holds only what defines the classifier, and starts with ``classifier``,
        never the ``cls_`` of a MAML run."""
        if self.is_pretrained_baseline:
            norm = {"batch_norm": "batchnorm", "layer_norm": "layernorm",
                    "None": "nonorm"}[self.norm]
            return (f"classifier.mbs_{self.meta_batch_size}hidden{self.num_filters}"
                    + ("maxpool" if self.max_pool else "") + norm)
        s = (
            f"cls_{self.num_classes}.mbs_{self.meta_batch_size}"
            f".ubs_{self.effective_train_update_batch_size}.numstep{self.num_updates}"
            f".updatelr{self.effective_train_update_lr}"
        )
        if self.num_filters != 64:
            s += f"hidden{self.num_filters}"
        if self.max_pool:
            s += "maxpool"
        if self.stop_grad:
            s += "stopgrad"
        if self.baseline:
            s += self.baseline
        s += {"batch_norm": "batchnorm", "layer_norm": "layernorm", "None": "nonorm"}[self.norm]
        # Deviation: the original gave the pretrained baseline the MAML run's directory.
        pretrained_only = self.pretrain_iterations > 0 and self.metatrain_iterations == 0
        if self.baseline is None and pretrained_only:
            s += ".pretrained"
        if self.is_classification and not self.conv:
            s += ".nonconv"
        if self.algorithm != "maml":
            s += f".{self.algorithm}"
        if self.meta_sgd:
            s += ".metasgd"
        if self.adapt_norm:
            s += ".adaptnorm"
        if self.adapt_layers == "head":
            s += ".anil"
        # MAML++'s options: a run with any of them never shares a MAML run's directory.
        if self.lslr:
            s += ".lslr"
        if self.per_step_bn:
            s += ".perstepbn"
        if self.msl_iterations:
            s += f".msl{self.msl_iterations}"
        if self.first_order_iterations:
            s += f".firstorder{self.first_order_iterations}"
        if self.cosine_meta_lr:
            s += ".cosine"
        if self.xent != "summed":
            s += f".{self.xent}xent"
        if self.num_query > 0:
            s += f".query{self.num_query}"
        return s

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resume_changes(self, previous: Config) -> list[tuple[str, object, object]]:
        """The flags this config changes on resuming a run trained with ``previous``:
        ``(name, before, now)``. A :class:`ConfigError` names a flag that would make the
        run another one (:data:`RUN_DEFINING`), and the two ways out."""
        changes = []
        free = NOT_RUN_SETTINGS
        if self.is_pretrained_baseline and previous.is_pretrained_baseline:
            free += PRETRAINING_FREE
        for field in dataclasses.fields(self):
            name = field.name
            before, now = getattr(previous, name), getattr(self, name)
            if before == now or name in free:
                continue
            if name in RUN_DEFINING:
                raise ConfigError(
                    f"--{name}: the run in {self.exp_string()} was trained with "
                    f"--{name}={before}; resuming it with {now} would continue it as another "
                    f"experiment. Pass --{name}={before} to continue it, or another --logdir "
                    "for a new run.")
            changes.append((name, before, now))
        return changes

    # ------------------------------------------------------------------ validation
    def _validate_mamlpp(self, fail) -> None:
        for name in ("msl_iterations", "first_order_iterations"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0 (0: off), got {getattr(self, name)}")
        # The cosine schedule is only a meta learning rate: Reptile may use it too.
        on = [name for name in ("lslr", "per_step_bn", "msl_iterations",
                                "first_order_iterations", "cosine_meta_lr")
              if getattr(self, name)]
        of_maml = [name for name in on if name != "cosine_meta_lr"]
        if on and self.datasource == "navigation":
            fail(on[0], "MAML++'s options are for the supervised datasources (navigation's "
                 "meta-update is TRPO's)")
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

    def validate(self) -> Config:
        """Raises :class:`ConfigError` naming the flag for an impossible value (the first the
        checks below find, in their order)."""

        def fail(flag: str, why: str):
            raise ConfigError(f"--{flag}: {why}")

        self._validate_choices(fail)
        self._validate_baselines(fail)
        self._validate_lengths(fail)
        self._validate_classification(fail)
        self._validate_evaluation(fail)
        self._validate_rates(fail)
        self._validate_data(fail)
        self._validate_mamlpp(fail)
        self._validate_reptile(fail)
        self._validate_execution(fail)
        return self

    def _validate_choices(self, fail) -> None:
        """Every option spelled as a word is one of its choices (and ANIL's is
        supervised)."""
        if self.datasource not in DATASOURCES:
            fail("datasource", f"{self.datasource!r} is not one of {', '.join(DATASOURCES)}")
        if self.norm not in NORMS:
            fail("norm", f"{self.norm!r} is not one of {', '.join(NORMS)} (the string 'None' "
                 "means no normalisation)")
        if self.algorithm not in ALGORITHMS:
            fail("algorithm", f"{self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if self.dataset_backend not in DATASET_BACKENDS:
            fail("dataset_backend", f"{self.dataset_backend!r} is not one of "
                 f"{', '.join(DATASET_BACKENDS)}")
        if self.adapt_layers not in ADAPT_LAYERS:
            fail("adapt_layers", f"{self.adapt_layers!r} is not one of {', '.join(ADAPT_LAYERS)} "
                 "(all: MAML; head: ANIL, only the last layer adapts)")
        if self.adapt_layers == "head" and self.datasource == "navigation":
            fail("adapt_layers", "ANIL (--adapt_layers=head) is for the supervised "
                 "datasources; the navigation policy adapts all its layers")
        if self.task_parallelism not in TASK_PARALLELISM:
            fail("task_parallelism", f"{self.task_parallelism!r} is not one of "
                 f"{', '.join(TASK_PARALLELISM)}")
        if self.baseline not in (None, *BASELINES):
            fail("baseline", f"{self.baseline!r} is not one of {', '.join(BASELINES)} or "
                 "unset")

    def _validate_baselines(self, fail) -> None:
        """A baseline exists for its datasource."""
        if self.is_pretrained_baseline:
            self._validate_pretrained_baseline(fail)
        if self.baseline == "oracle" and self.datasource not in ("sinusoid", "navigation"):
            fail("baseline", "the oracle baseline exists only for --datasource=sinusoid or "
                 "navigation")
        if self.baseline == "random" and self.datasource != "navigation":
            fail("baseline", "the random baseline exists only for --datasource=navigation")

    def _validate_lengths(self, fail) -> None:
        """Iterations, batch sizes, filters, test tasks and inner steps: counts that
        make a run."""
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

    def _validate_classification(self, fail) -> None:
        """The loss and query size of classification tasks."""
        if self.xent not in XENTS:
            fail("xent", f"{self.xent!r} is not one of {', '.join(XENTS)}")
        if self.xent != "summed" and not self.is_classification:
            fail("xent", "is the cross-entropy of --datasource=omniglot or miniimagenet; drop "
                 "it")
        if self.num_query != -1 and (self.num_query < 1 or not self.is_classification):
            fail("num_query", f"query images per class of omniglot or miniimagenet tasks: -1 "
                 f"(the original's) or >= 1, got {self.num_query}")

    def _validate_evaluation(self, fail) -> None:
        """The ensemble, the export and the evaluation's inner steps."""
        if self.ensemble < 0:
            fail("ensemble", f"must be >= 0 (0: no ensemble), got {self.ensemble}")
        if self.ensemble and (self.baseline or self.init_checkpoint
                              or self.datasource == "navigation"):
            fail("ensemble", "an ensemble is made of a supervised run's own checkpoints: it "
                 "does not apply to --baseline, --init_checkpoint or navigation; drop one of "
                 "them")
        if self.export_dir and self.ensemble and not self.train:
            fail("export_dir", f"exports one checkpoint, and --ensemble={self.ensemble} "
                 "evaluates an ensemble of them: drop --ensemble to export the checkpoint "
                 "--test_iter names (default: the latest)")
        if self.export_dir and self.datasource == "navigation":
            fail("export_dir", "the navigation policy has no SavedModel export (it adapts on "
                 "an environment's rollouts, not on a support set); drop --export_dir")
        if self.test_num_updates < 0:
            fail("test_num_updates", f"must be >= 0, got {self.test_num_updates}")

    def _validate_rates(self, fail) -> None:
        """Step sizes, and navigation's TRPO meta-update."""
        for name in ("meta_lr", "update_lr"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                fail(name, f"must be a positive finite number, got {value}")
        if self.train_update_batch_size != -1 and self.train_update_batch_size < 1:
            fail("train_update_batch_size", "must be -1 (same as --update_batch_size) or >= 1")
        if self.train_update_lr != -1 and not self.train_update_lr > 0:
            fail("train_update_lr", "must be -1 (same as --update_lr) or positive")
        if not (math.isfinite(self.max_kl) and self.max_kl > 0):
            fail("max_kl", f"TRPO's KL limit must be a positive finite number, got "
                 f"{self.max_kl}")
        if not 0 < self.discount <= 1:
            fail("discount", f"must be in (0, 1], got {self.discount}")
        if self.datasource == "navigation" and (self.algorithm != "maml" or self.meta_sgd):
            fail("algorithm", "--datasource=navigation trains MAML with TRPO (or the "
                 "baselines); Reptile and Meta-SGD are not implemented for it")

    def _validate_data(self, fail) -> None:
        """Classification data, and the net it is read into."""
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
            fail("distribution_strategy", f"{self.distribution_strategy!r} is not one of "
                 f"{', '.join(DISTRIBUTION_STRATEGIES)}")
        if self.nan_policy not in NAN_POLICIES:
            fail("nan_policy", f"{self.nan_policy!r} is not one of {', '.join(NAN_POLICIES)}")
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
        if self.distribution_strategy != "default" and self.datasource == "navigation":
            fail("distribution_strategy", "navigation (reinforcement learning) trains on one "
                 "device; drop the flag")
        if self.num_cpu_devices and self.distribution_strategy != "mirrored":
            fail("num_cpu_devices", "splits the CPU into replicas for "
                 "--distribution_strategy=mirrored; add that flag (or drop this one)")
        if self.distribution_strategy == "mirrored" and self.num_cpu_devices > 1:
            # Known before TensorFlow starts; other strategies are checked once they exist.
            check_meta_batch_size(self.meta_batch_size, self.num_cpu_devices, "mirrored")

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
        for flag, value, default in (("algorithm", self.algorithm, "maml"),
                                     ("meta_sgd", self.meta_sgd, False),
                                     ("stop_grad", self.stop_grad, False),
                                     ("adapt_layers", self.adapt_layers, "all"),
                                     ("adapt_norm", self.adapt_norm, False),
                                     ("init_checkpoint", self.init_checkpoint, None),
                                     ("export_dir", self.export_dir, None),
                                     ("distribution_strategy", self.distribution_strategy,
                                      "default")):
            if value != default:
                fail(flag, f"{name} has no meta-learning (a classifier is pretrained, then "
                     f"fine-tuned or used as features): drop --{flag}={value}")
        if self.metatrain_iterations not in (0, Config.metatrain_iterations):
            fail("metatrain_iterations", f"{name} does not meta-train; its length is "
                 "--pretrain_iterations (drop --metatrain_iterations or set it to 0)")
