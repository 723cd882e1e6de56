"""The table of the paper's rows (``flags/experiments.json``) and the plan of each row.

A row names its flagfiles (training, evaluation) and its zoo folder; :func:`plan` resolves it,
with the invocation's folders, into its ``tf-maml`` commands, their configurations and the run
directory they share, reading each flagfile exactly as ``tf-maml --flagfile=...`` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterator

from tf_maml.config import RL_DATASOURCES, Config
from tf_maml.errors import did_you_mean

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = "experiments.json"
DATA_GROUPS = ("omniglot", "miniimagenet")  # the groups whose rows need prepared data
# A reinforcement-learning row's group is its task family (its flagfiles' --datasource).
GROUPS = ("sinusoid", *DATA_GROUPS, *RL_DATASOURCES)
# The keys of a row of the table, and what a row needs.
ROW_KEYS = ("name", "group", "label", "train", "eval", "zoo", "paper", "note", "seeds_of",
            "overrides")
ROW_HELP = ("a row is an object with 'name', 'group', 'label', 'zoo' and its flagfiles "
            "'train' and/or 'eval' (names without .flags), as the other rows")


class ReproduceError(ValueError):
    """A bad selection or a missing input; the message names the fix."""


def as_reproduce_error(err: Exception) -> ReproduceError:
    """The library's error (a RunDirError, ...) in this command's terms: its `name` of an
    argument becomes --name, the flag of the same name."""
    return ReproduceError(re.sub(r"`(\w+)`", r"--\1", str(err)))


@contextlib.contextmanager
def writing(folder: str, action: str, kept: str, flag: str) -> Iterator[None]:
    """An OSError inside the block (a file in the way, a full or read-only disk) becomes a
    ReproduceError naming ``action`` in ``folder``, what was ``kept`` and the fix (``flag``:
    the flag that chose the folder)."""
    from tf_maml import rundir

    try:
        with rundir.writing(folder, action, kept=lambda: kept, arg=flag):
            yield
    except rundir.RunDirError as err:
        raise as_reproduce_error(err) from None


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One row of ``flags/experiments.json``: train ``train_flags`` (unless None), evaluate
    with ``eval_flags``, keep the model in ``zoo/<zoo>``."""

    name: str
    group: str  # one of GROUPS: sinusoid, omniglot, miniimagenet or an RL task family
    label: str
    eval_flags: str
    zoo: str
    train_flags: str | None = None
    paper: tuple[float, float] | None = None  # accuracy % (mean, 95% half-width)
    note: str = ""
    seeds_of: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        """What the row's numbers are, per number of test steps: ``accuracy`` (a fraction,
        reported in percent), ``mse`` (the sinusoid's query MSE) or ``return`` (a
        reinforcement-learning row's average return, Figure 5)."""
        if self.group in RL_DATASOURCES:
            return "return"
        return "mse" if self.group == "sinusoid" else "accuracy"


def load_experiments(flags_dir: str) -> list[Experiment]:
    """The rows of ``<flags_dir>/experiments.json``, in table order."""
    path = os.path.join(flags_dir, TABLE)
    try:
        with open(path) as f:
            table = json.load(f)["experiments"]
    except FileNotFoundError:
        raise ReproduceError(f"{path} not found: --flags_dir names the folder of the "
                             "experiment flagfiles and their table (the repository's flags/)"
                             ) from None
    except (ValueError, KeyError, TypeError) as err:  # TypeError: a list, not an object
        raise ReproduceError(f"{path} is not an experiment table ({err})") from None
    if not isinstance(table, list):
        raise ReproduceError(f"{path} is not an experiment table ('experiments' is not a list "
                             "of rows)")
    out = []
    for number, row in enumerate(table, 1):
        _check_row(row, f"{path}: row {number}")
        group = row.get("group")
        if group not in GROUPS:
            raise ReproduceError(f"{path}: row {row.get('name')!r} has group {group!r}; "
                                 f"choose one of {', '.join(GROUPS)}")
        train = row.get("train")
        out.append(Experiment(
            name=row["name"], group=group, label=row["label"],
            eval_flags=f"{row.get('eval') or train}.flags", zoo=row["zoo"],
            train_flags=f"{train}.flags" if train else None,
            paper=tuple(row["paper"]) if row.get("paper") else None,
            note=row.get("note", ""), seeds_of=row.get("seeds_of"),
            overrides=tuple(sorted(row.get("overrides", {}).items()))))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ReproduceError(f"{path}: experiment names repeat")
    return out


def _check_row(row, where: str) -> None:
    """Raises ReproduceError naming what a row of the table, edited by hand, lacks or
    misspells (a missing key was a traceback, a misspelt one silently ignored)."""
    if not isinstance(row, dict):
        raise ReproduceError(f"{where} is not a JSON object: {ROW_HELP}")
    if isinstance(row.get("name"), str):
        where += f" ({row['name']!r})"
    missing = [key for key in ("name", "label", "zoo") if not row.get(key)]
    if missing:
        raise ReproduceError(f"{where} lacks {', '.join(map(repr, missing))}: {ROW_HELP}")
    unknown = sorted(set(row) - set(ROW_KEYS))
    if unknown:
        raise ReproduceError(f"{where} has the unknown key {unknown[0]!r}"
                             f"{did_you_mean(unknown[0], ROW_KEYS)}: {ROW_HELP}")
    if not (row.get("train") or row.get("eval")):
        raise ReproduceError(f"{where} has no flagfile: give 'train' and/or 'eval': {ROW_HELP}")


# ---------------------------------------------------------------------------- flagfiles
def _cli_flag_values():
    """A fresh absl FlagValues holding the ``tf-maml`` command's flags at their defaults,
    so that a flagfile is read exactly as ``tf-maml --flagfile=...`` reads it."""
    from absl import flags

    from tf_maml import main as cli

    values = flags.FlagValues()
    cli.define_flags(values)
    return values


def config_for(flagfile: str, overrides: dict[str, str] | None = None) -> Config:
    """The :class:`Config` that ``tf-maml --flagfile=F --k=v ...`` would build."""
    from absl import flags

    from tf_maml import main as cli

    if not os.path.exists(flagfile):
        raise ReproduceError(f"flagfile {flagfile} not found (--flags_dir names the folder of "
                             "the experiment flagfiles; the repository's is flags/)")
    values = _cli_flag_values()
    try:
        rest = values(["tf-maml", f"--flagfile={flagfile}"]
                      + [f"--{k}={v}" for k, v in (overrides or {}).items()])
    except flags.Error as err:
        raise ReproduceError(f"{flagfile}: {err}") from None
    if len(rest) > 1:  # tf-maml refuses them: the row must not be planned without them
        raise ReproduceError(f"{flagfile}: {cli.unexpected_arguments(rest[1:])}")
    return cli.config_from_flags(values)


# ---------------------------------------------------------------------------- planning
@dataclasses.dataclass
class Plan:
    experiment: Experiment
    train_cmd: list[str] | None
    eval_cmd: list[str]
    train_config: Config | None
    eval_config: Config
    run_dir: str
    zoo_dir: str
    result_name: str
    skip_reason: str | None = None

    @property
    def target(self) -> int:
        c = self.train_config
        return 0 if c is None else c.pretrain_iterations + c.metatrain_iterations

    @property
    def models_evaluated(self) -> int:
        """How many models one evaluation of the row adapts on every test task: the
        ensemble's members (MAML++'s protocol), or the one."""
        return max(1, self.eval_config.ensemble)

    def eval_reserve_s(self, per_model_s: float) -> float:
        """The time kept before a deadline for the evaluation after training: once per
        model it adapts."""
        return per_model_s * self.models_evaluated


def tf_maml_command() -> list[str]:
    """The ``tf-maml`` command, as this interpreter runs it."""
    return [sys.executable, "-m", "tf_maml.main"]


def plan(experiment: Experiment, logdir_root: str, data_dirs: dict[str, str | None],
         original_checkpoint: str | None, flags_dir: str, zoo_root: str) -> Plan:
    eval_file = os.path.join(flags_dir, experiment.eval_flags)
    extra = dict(experiment.overrides)
    base = config_for(eval_file, extra)
    sub = os.path.basename(os.path.normpath(base.logdir or experiment.name))
    overrides = {**extra, "logdir": os.path.join(logdir_root, sub) + os.sep}
    skip = None
    if experiment.group in DATA_GROUPS:
        data_dir = data_dirs.get(experiment.group)
        if not data_dir:
            skip = (f"needs --{experiment.group}_dir (prepare it with `python -m data_prep."
                    f"{experiment.group} ...`, see docs/data.md)")
        else:
            overrides["data_dir"] = data_dir
    # A row that trains nothing evaluates the original authors' checkpoint, or (RL's random
    # baseline) the randomly initialised policy, which needs none.
    untrained = experiment.train_flags is None and base.baseline != "random"
    if untrained and (original_checkpoint or base.init_checkpoint):
        ckpt = original_checkpoint or base.init_checkpoint
        overrides["init_checkpoint"] = ckpt
        if not skip and not os.path.exists(ckpt + ".index"):
            skip = (f"needs the original checkpoint ({ckpt}.index not found): pass "
                    "--original_checkpoint=$DATA/maml_original_checkpoint/miniimagenet1shot/"
                    "model59000")
    elif untrained and not skip:
        skip = ("needs the original checkpoint: pass --original_checkpoint=$DATA/"
                "maml_original_checkpoint/miniimagenet1shot/model59000")
    eval_config = config_for(eval_file, {**overrides, "train": "False"})
    train_cmd = train_config = None
    if experiment.train_flags:
        train_file = os.path.join(flags_dir, experiment.train_flags)
        train_over = {**overrides, "test_after_train": "False"}
        train_config = config_for(train_file, train_over)
        train_cmd = tf_maml_command() + [f"--flagfile={train_file}"] + [
            f"--{k}={v}" for k, v in train_over.items()]
    run_dir = os.path.join(eval_config.logdir, eval_config.exp_string())
    if train_config is not None:
        train_dir = os.path.join(train_config.logdir, train_config.exp_string())
        if train_dir != run_dir:
            raise ReproduceError(f"{experiment.name}: training writes {train_dir} but "
                                 f"evaluation reads {run_dir}; fix the flagfiles")
    eval_cmd = tf_maml_command() + [f"--flagfile={eval_file}"] + [
        f"--{k}={v}" for k, v in overrides.items()] + ["--train=False"]
    if eval_config.is_rl:
        from tf_maml.rl.training import RESULTS_NAME as name
    else:
        from tf_maml.evaluate import result_name

        name = result_name(eval_config.update_batch_size, eval_config.update_lr,
                           eval_config.baseline, eval_config.ensemble)
    return Plan(experiment, train_cmd, eval_cmd, train_config, eval_config, run_dir,
                os.path.join(zoo_root, experiment.zoo), name, skip)


def select(spec: str, experiments: list[Experiment]) -> list[Experiment]:
    """``all``, group names and experiment names, comma separated, in table order."""
    by_name = {e.name: e for e in experiments}
    wanted: set[str] = set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item == "all":
            wanted.update(by_name)
        elif item in GROUPS:
            wanted.update(e.name for e in experiments if e.group == item)
        elif item in by_name:
            wanted.add(item)
        elif len(parts := re.split(r"[\s;]+", item)) > 1 and all(
                part in (*by_name, *GROUPS, "all") for part in parts):
            commas = ",".join(p for p in re.split(r"[\s;,]+", spec) if p)
            raise ReproduceError(f"--experiments={spec}: separate the names with commas, "
                                 f"--experiments={commas}")
        else:
            raise ReproduceError(f"unknown experiment {item!r}"
                                 f"{did_you_mean(item, list(by_name) + list(GROUPS))}: choose "
                                 f"from all, {', '.join(GROUPS)}, {', '.join(by_name)}")
    if not wanted:
        raise ReproduceError("--experiments is empty")
    return [e for e in experiments if e.name in wanted]
