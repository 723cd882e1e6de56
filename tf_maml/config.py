"""The experiment configuration: one frozen dataclass, the original's flags plus a few.

Field names, defaults and meanings are those of cbfinn/maml main.py; ``main.py`` turns
absl flags into a :class:`Config` (:mod:`tf_maml.config_checks` checks it).
"""

from __future__ import annotations

import dataclasses
import json

# The option lists the flags offer (each owned by its library module) and the checks.
from tf_maml.config_checks import (  # noqa: F401
    ADAPT_LAYERS,
    ALGORITHMS,
    BASELINES,
    DATASET_BACKENDS,
    DATASOURCES,
    DISTRIBUTION_STRATEGIES,
    FIELD_TYPES,
    LOCOMOTION_FAMILIES,
    NAN_POLICIES,
    NORMS,
    PRETRAINED_BASELINES,
    RL_DATASOURCES,
    SAMPLE_BUDGETS,
    TASK_PARALLELISM,
    XENTS,
    ConfigChecks,
    ConfigError,
)
from tf_maml.errors import did_you_mean

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
                "first_order_iterations", "cosine_meta_lr", "xent", "num_query", "horizon",
                "sample_budget")
# Where the run is and what this invocation does: not a change of the run.
NOT_RUN_SETTINGS = ("logdir", "resume", "train", "test_iter")


# Keys a run's config.json holds beside its flags, as a record for people (a locomotion run's
# MuJoCo and Gymnasium versions): no flags, so not read back.
RECORD_ONLY_KEYS = ("versions",)
@dataclasses.dataclass(frozen=True)
class Config(ConfigChecks):
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
    # reinforcement learning (navigation, locomotion; tf_maml/rl): TRPO's KL limit δ, the
    # discount γ, the episode length (0: the task family's, navigation 100, locomotion 200),
    # and what is sampled per task and policy: update_batch_size trajectories, or whole
    # paths until update_batch_size × horizon steps ("steps": maml_rl's budget; locomotion)
    max_kl: float = 0.01
    discount: float = 0.99
    horizon: int = 0
    sample_budget: str = "trajectories"
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
    def is_rl(self) -> bool:
        """Reinforcement learning: navigation or a locomotion family (tf_maml/rl)."""
        return self.datasource in RL_DATASOURCES

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
        # baseline (reinforcement learning) is not trained at all.
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
        if self.horizon:
            s += f".horizon{self.horizon}"
        return s

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """The Config a run recorded as ``text`` (its config.json). A ValueError (JSON's) or
        a ConfigError naming the key if ``text`` is not the JSON object of the flags: a value
        not of its flag's type (a hand-edited ``"five"`` for a count, which was a traceback
        deep in the model), or a key no flag has (a misspelt flag, else read at its default).
        Its values are not checked against each other: :meth:`validate` does."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"it holds a JSON {type(data).__name__}, not the object of the "
                              "run's flags")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key in RECORD_ONLY_KEYS:
                continue
            if key not in fields:
                raise ConfigError(f"the key {key!r} is no flag of tf-maml"
                                  f"{did_you_mean(key, fields)}")
            expected, what, _ = FIELD_TYPES[fields[key].type]
            if not expected(value):
                raise ConfigError(f"the key {key!r} is {json.dumps(value)}, not {what}")
        return cls(**{k: v for k, v in data.items() if k not in RECORD_ONLY_KEYS})

    @classmethod
    def read(cls, path: str, fix: str) -> Config:
        """The Config a run saved in the file ``path`` (its config.json, or an evaluation's
        test_config.json): a ConfigError naming the file, why, and ``fix`` if it cannot be
        read or is not the object of the flags (:meth:`from_json`). The one reader of a
        run's saved flags: resuming, the figures, the zoo and ``rl.run`` differ only in the
        fix they offer."""
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except (OSError, ValueError) as err:  # ValueError: JSON's, or from_json's ConfigError
            why = getattr(err, "strerror", None) or err
            raise ConfigError(f"{path}, the flags the run was trained with, cannot be read "
                              f"({why}): {fix}") from None

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
