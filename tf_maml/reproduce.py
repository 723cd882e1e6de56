"""tf-maml-reproduce: the paper's tables, reproduced by this code, with the models kept.

    tf-maml-reproduce --experiments=sinusoid                       # every sinusoid row
    tf-maml-reproduce --experiments=omniglot5_1shot,omniglot5_5shot \\
        --omniglot_dir=$DATA/omniglot --logdir_root=$LOGDIR --run_budget_minutes=120
    tf-maml-reproduce --train=False --evaluate=False               # docs/RESULTS.md from zoo/

The rows are the table ``flags/experiments.json``. For every selected row it restores the
run's latest state from the model zoo (``zoo/<run>/``, see :mod:`tf_maml.zoo`) when the zoo is
ahead of the run directory, trains the row's flagfile with ``tf-maml`` (a finished run is left
alone, an unfinished one resumes), evaluates the latest checkpoint on 600 test tasks with
``--train=False`` (only when that checkpoint has not been evaluated yet, or with
``--reevaluate``: the checkpoint of the published number), publishes the run back into the
zoo (the latest state and the checkpoints of its evaluations; every
``--publish_every_minutes`` during training too), and writes ``docs/RESULTS.md`` from the zoo
alone (:mod:`tf_maml.report`).

``--budget_minutes`` bounds the training (``--run_budget_minutes`` each run's): when it runs
out the training process gets SIGTERM, which makes it save a checkpoint and stop; that
checkpoint is evaluated and reported as partial with its iteration count, and the next
invocation resumes it. Each run is its own ``tf-maml`` process, so a failure in one is
reported and the others go on. ``--export_dir`` exports the selected zoo model as a SavedModel
with in-graph adaptation instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_maml import report, threads, zoo_check  # noqa: E402
from tf_maml import zoo as zoo_lib  # noqa: E402
from tf_maml.config import Config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = "experiments.json"
STATE_FILE = zoo_lib.RUN_STATE_FILE
MIN_TRAIN_SECONDS = 20  # below this, starting a training process is not worth it
STARTUP_GRACE_S = 180  # how long past the deadline a training process may take to start
GROUPS = ("sinusoid", "omniglot", "miniimagenet")


class ReproduceError(ValueError):
    """A bad selection or a missing input; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One row of ``flags/experiments.json``: train ``train_flags`` (unless None), evaluate
    with ``eval_flags``, keep the model in ``zoo/<zoo>``."""

    name: str
    group: str  # sinusoid | omniglot | miniimagenet
    label: str
    eval_flags: str
    zoo: str
    train_flags: str | None = None
    paper: tuple[float, float] | None = None  # accuracy % (mean, 95% half-width)
    note: str = ""
    seeds_of: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()


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
    except (ValueError, KeyError) as err:
        raise ReproduceError(f"{path} is not an experiment table ({err})") from None
    out = []
    for row in table:
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
        values(["tf-maml", f"--flagfile={flagfile}"]
               + [f"--{k}={v}" for k, v in (overrides or {}).items()])
    except flags.Error as err:
        raise ReproduceError(f"{flagfile}: {err}") from None
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


def _cli() -> list[str]:
    return [sys.executable, "-m", "tf_maml.main"]


def plan(experiment: Experiment, logdir_root: str, data_dirs: dict[str, str | None],
         original_checkpoint: str | None, flags_dir: str, zoo_root: str) -> Plan:
    eval_file = os.path.join(flags_dir, experiment.eval_flags)
    extra = dict(experiment.overrides)
    base = config_for(eval_file, extra)
    sub = os.path.basename(os.path.normpath(base.logdir or experiment.name))
    overrides = {**extra, "logdir": os.path.join(logdir_root, sub) + os.sep}
    skip = None
    if experiment.group != "sinusoid":
        data_dir = data_dirs.get(experiment.group)
        if not data_dir:
            skip = (f"needs --{experiment.group}_dir (prepare it with `python -m data_prep."
                    f"{experiment.group} ...`, see docs/data.md)")
        else:
            overrides["data_dir"] = data_dir
    if experiment.train_flags is None and (original_checkpoint or base.init_checkpoint):
        ckpt = original_checkpoint or base.init_checkpoint
        overrides["init_checkpoint"] = ckpt
        if not skip and not os.path.exists(ckpt + ".index"):
            skip = (f"needs the original checkpoint ({ckpt}.index not found): pass "
                    "--original_checkpoint=$DATA/maml_original_checkpoint/miniimagenet1shot/"
                    "model59000")
    elif experiment.train_flags is None and not skip:
        skip = ("needs the original checkpoint: pass --original_checkpoint=$DATA/"
                "maml_original_checkpoint/miniimagenet1shot/model59000")
    eval_config = config_for(eval_file, {**overrides, "train": "False"})
    train_cmd = train_config = None
    if experiment.train_flags:
        train_file = os.path.join(flags_dir, experiment.train_flags)
        train_over = {**overrides, "test_after_train": "False"}
        train_config = config_for(train_file, train_over)
        train_cmd = _cli() + [f"--flagfile={train_file}"] + [
            f"--{k}={v}" for k, v in train_over.items()]
    run_dir = os.path.join(eval_config.logdir, eval_config.exp_string())
    if train_config is not None:
        train_dir = os.path.join(train_config.logdir, train_config.exp_string())
        if train_dir != run_dir:
            raise ReproduceError(f"{experiment.name}: training writes {train_dir} but "
                                 f"evaluation reads {run_dir}; fix the flagfiles")
    eval_cmd = _cli() + [f"--flagfile={eval_file}"] + [
        f"--{k}={v}" for k, v in overrides.items()] + ["--train=False"]
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
        else:
            raise ReproduceError(f"unknown experiment {item!r}: choose from all, "
                                 f"{', '.join(GROUPS)}, {', '.join(by_name)}")
    if not wanted:
        raise ReproduceError("--experiments is empty")
    return [e for e in experiments if e.name in wanted]


def machine() -> str:
    """The processor, its widest vector ISA and the core count: what a speed depends on."""
    fields = threads.cpuinfo()
    cpu = fields.get("model name") or platform.machine()
    if fields.get("cpu family"):
        cpu += f" (family {fields['cpu family']})"
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    if isa and "amx_tile" in flags:  # the matrix tiles oneDNN may use beside the vectors
        isa += " + AMX"
    return f"{cpu}, {isa + ', ' if isa else ''}{os.cpu_count()} cores"


# ---------------------------------------------------------------------------- running
def _shell(cmd: list[str]) -> str:
    """The command as a user would type it (``tf-maml``, flagfiles relative to the
    repository when they are in it)."""
    shown = ["tf-maml"] + cmd[3:] if cmd[:3] == _cli() else list(cmd)
    for i, c in enumerate(shown):
        if c.startswith("--flagfile="):
            path = os.path.abspath(c.split("=", 1)[1])
            inside = path.startswith(REPO + os.sep)
            shown[i] = "--flagfile=" + (os.path.relpath(path, REPO) if inside else path)
    return " ".join(shlex.quote(c) for c in shown)


def _stream(cmd: list[str], log_path: str, deadline: float | None, log,
            on_tick=None) -> tuple[int, bool]:
    """Runs ``cmd``, copying its output to ``log_path`` and its progress lines to ``log``;
    SIGTERM at ``deadline``; calls ``on_tick()`` about once a second while it runs (the
    zoo's periodic publishing). Returns (exit code, whether the deadline stopped it)."""
    import queue
    import threading

    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    stopped = started = False
    lines: queue.Queue = queue.Queue()
    with open(log_path, "a") as out:
        out.write(f"\n$ {_shell(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)

        def pump():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            while True:
                try:
                    line = lines.get(timeout=1.0)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                if on_tick is not None:
                    on_tick()
                if line:
                    out.write(line)
                    out.flush()
                    started = started or line.startswith(("Iteration ", "  ["))
                    if line.startswith(SHOWN):
                        log("    " + line.strip())
                # SIGTERM makes the training loop save a checkpoint; before the loop has
                # started it would just kill the process, so wait (a while) for the loop.
                if (deadline is not None and not stopped and time.time() > deadline
                        and (started or time.time() > deadline + STARTUP_GRACE_S)):
                    log("    budget reached: stopping training (it saves a checkpoint)")
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
            proc.wait()
        except KeyboardInterrupt:  # pass it on: the child saves a checkpoint and exits
            log("    interrupted: stopping the training process (it saves a checkpoint)")
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            reader.join(timeout=10)
            while not lines.empty():  # keep the child's last words in the log
                line = lines.get()
                if line:
                    out.write(line)
            raise
    return proc.returncode, stopped


SHOWN = ("  [", "Validation", "Wrote", "Mean", "tf-maml:", "Interrupted", "Restored",
         "  evaluated", "(array")


def execute(p: Plan, deadline: float | None, train: bool, evaluate: bool, reevaluate: bool,
            eval_reserve_s: float, publish, log=print) -> dict:
    """Restores from the zoo, trains (unless finished, or out of budget), evaluates (unless
    up to date) and publishes back to the zoo. Training stops ``eval_reserve_s`` per model
    the evaluation adapts (:meth:`Plan.eval_reserve_s`) before ``deadline``."""
    e = p.experiment
    log_path = os.path.join(p.run_dir, "reproduce.log")
    status: dict = {}
    if p.skip_reason:
        log(f"[{e.name}] skipped: {p.skip_reason}")
        return {"skipped": p.skip_reason}
    if (train and p.train_cmd) or evaluate or reevaluate:  # a report alone reads the zoo
        # The zoo's state is about to seed the run directory (the zoo is ahead): a corrupt
        # checkpoint would be copied into it, and into every fresh one, so say which zoo
        # file it is instead.
        if zoo_lib.latest_iteration(p.zoo_dir) > zoo_lib.latest_iteration(p.run_dir):
            problem = zoo_check.checkpoint_problem(p.zoo_dir, e.name)
            if problem:
                log(f"[{e.name}] {problem}")
                return {"restore_error": problem}
        zoo_lib.restore(p.zoo_dir, p.run_dir, log)
    done = zoo_lib.latest_iteration(p.run_dir)
    if train and p.train_cmd and done < p.target:
        remaining = (None if deadline is None
                     else deadline - p.eval_reserve_s(eval_reserve_s) - time.time())
        if remaining is not None and remaining < MIN_TRAIN_SECONDS:
            log(f"[{e.name}] no training budget left ({done}/{p.target} iterations)")
        else:
            log(f"[{e.name}] training {done}/{p.target} -> {p.target}: {_shell(p.train_cmd)}")
            stop_at = None if remaining is None else time.time() + remaining
            code, stopped = _stream(p.train_cmd, log_path, stop_at, log,
                                    on_tick=lambda: publish(p))
            if code != 0 and not stopped:
                status["train_error"] = f"exit code {code}; see {log_path}"
                log(f"[{e.name}] training failed ({status['train_error']})")
    elif p.train_cmd:
        log(f"[{e.name}] {done}/{p.target} iterations on disk"
            + ("" if done >= p.target else " (training not requested)"))
    done = zoo_lib.latest_iteration(p.run_dir)
    if p.train_cmd and done == 0:
        log(f"[{e.name}] nothing to evaluate yet")
        return status
    state = zoo_lib.read_json(os.path.join(p.run_dir, STATE_FILE))
    key = f"{p.result_name}|{e.name}"
    before = state.get(key)
    fresh = (before is not None and before.get("iteration") == done
             and os.path.exists(os.path.join(p.run_dir, p.result_name + ".csv")))
    # A re-evaluation checks the published number against the checkpoint it was made of,
    # which the zoo keeps beside a later state (a partial row evaluated, then trained on).
    recheck = reevaluate and before is not None and (
        before.get("iteration") == done
        or before.get("iteration") in zoo_lib.checkpoint_iterations(p.run_dir))
    iteration = before["iteration"] if recheck else done
    if fresh and not reevaluate:
        log(f"[{e.name}] results of iteration {done} already evaluated")
    elif evaluate or reevaluate:
        cmd = p.eval_cmd + ([f"--test_iter={iteration}"] if p.train_cmd else [])
        log(f"[{e.name}] evaluating: {_shell(cmd)}")
        t0 = time.time()
        code, _ = _stream(cmd, log_path, None, log)
        if code != 0:
            status["eval_error"] = f"exit code {code}; see {log_path}"
            log(f"[{e.name}] evaluation failed ({status['eval_error']})")
            return status
        import numpy as np

        with open(os.path.join(p.run_dir, p.result_name + ".csv")) as f:
            rows = [line.strip().split(",") for line in f if line.strip()]
        means, ci = np.array(rows[1], dtype=float), np.array(rows[3], dtype=float)
        if recheck:
            was = f"{before['means'][-1]:.4f} ± {before['ci95'][-1]:.4f}"
            now = f"{means[-1]:.4f} ± {ci[-1]:.4f}"
            log(f"[{e.name}] re-evaluated iteration {iteration}: {now} (the zoo's: {was}"
                f"{', the same' if was == now else ''})")
        state = zoo_lib.read_json(os.path.join(p.run_dir, STATE_FILE))
        state[key] = {"iteration": iteration, "eval_seconds": round(time.time() - t0, 1),
                      "eval_command": _shell(cmd), "train_command":
                      _shell(p.train_cmd) if p.train_cmd else None,
                      "means": means.tolist(), "ci95": ci.tolist(), "date": zoo_lib.today(),
                      "machine": machine()}
        zoo_lib.write_json(os.path.join(p.run_dir, STATE_FILE), state)
    return status


def export(p: Plan, export_dir: str, log=print) -> str:
    """Exports the zoo model of ``p`` as a SavedModel with in-graph adaptation."""
    from tf_maml import experiment
    from tf_maml.checkpoint import CheckpointError, learner_checkpointer, restore_for_test
    from tf_maml.export import export as export_saved_model

    iteration = zoo_lib.latest_iteration(p.zoo_dir)
    if iteration == 0:
        raise ReproduceError(f"{p.zoo_dir} holds no model to export: train "
                             f"{p.experiment.name} first")
    problem = zoo_check.checkpoint_problem(p.zoo_dir, p.experiment.name)
    if problem:
        raise ReproduceError(problem)
    learner = experiment.build_learner(p.eval_config)
    try:
        path, iteration = restore_for_test(learner_checkpointer(learner, p.zoo_dir), -1)
    except CheckpointError as err:  # e.g. a zoo model of other settings than the flagfile's
        raise ReproduceError(f"cannot export {p.zoo_dir}: {err}") from None
    out = export_saved_model(learner, export_dir, num_steps=p.eval_config.test_num_updates)
    log(f"[{p.experiment.name}] exported iteration {iteration} of {p.zoo_dir} to {out}")
    return out


# ---------------------------------------------------------------------------- CLI
def main(argv, F):
    """Runs the selected rows with the parsed flags ``F``; returns the exit code."""
    if len(argv) > 1:
        raise ReproduceError(f"unexpected arguments: {' '.join(argv[1:])}")
    log = lambda s: print(s, flush=True)  # noqa: E731

    def on_sigterm(signum, frame):  # stop the training child cleanly (it saves), then exit
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    table = load_experiments(F.flags_dir)
    experiments = select(F.experiments, table)
    data_dirs = {"omniglot": F.omniglot_dir, "miniimagenet": F.miniimagenet_dir}
    for group, d in data_dirs.items():
        if d and not os.path.isdir(d):
            raise ReproduceError(f"--{group}_dir={d} is not a folder: prepare it with "
                                 f"`python -m data_prep.{group} ...` (docs/data.md)")

    def plan_of(e):
        return plan(e, F.logdir_root, data_dirs, F.original_checkpoint, F.flags_dir, F.zoo_dir)

    if F.export_dir:
        if len(experiments) != 1:
            raise ReproduceError("--export_dir exports one model: name one experiment in "
                                 "--experiments")
        export(plan_of(experiments[0]), F.export_dir, log)
        return 0
    plans = [plan_of(e) for e in experiments]
    # What a path of this machine becomes in the zoo and the report.
    paths = {F.logdir_root: "$LOGDIR", F.omniglot_dir: "$DATA/omniglot",
             F.miniimagenet_dir: "$DATA/miniimagenet", F.flags_dir: "flags", REPO: ".",
             F.original_checkpoint: "$DATA/maml_original_checkpoint/miniimagenet1shot/model59000"}
    last_publish = [time.time()]
    publish_errors: dict[str, str] = {}  # the rows whose latest publishing failed

    def publish(p: Plan, force: bool = False) -> None:
        if not F.publish or p.skip_reason:
            return
        if not force and time.time() - last_publish[0] < 60 * F.publish_every_minutes:
            return
        last_publish[0] = time.time()
        finished = p.train_cmd is None or zoo_lib.latest_iteration(p.run_dir) >= p.target
        try:
            zoo_lib.publish(p.run_dir, p.zoo_dir, finished, paths, machine(), log)
        except (OSError, ValueError, RuntimeError) as err:
            # The run directory keeps everything (publishing only reads it), so the next
            # invocation publishes it; but the zoo is behind, and the command must say so.
            publish_errors[p.experiment.name] = (
                f"could not publish to {p.zoo_dir}: {err}; {p.run_dir} keeps the run: fix "
                "the zoo folder and run the same command again to publish it")
            log(f"[{p.experiment.name}] {publish_errors[p.experiment.name]}")
        else:
            publish_errors.pop(p.experiment.name, None)

    deadline = None if F.budget_minutes is None else time.time() + 60 * F.budget_minutes
    log(f"tf-maml-reproduce: {len(plans)} experiments, runs under {F.logdir_root}, models "
        f"in {F.zoo_dir}" + ("" if deadline is None else
                            f", training budget {F.budget_minutes} min"))
    failures = {}
    seen_train = set()
    for p in plans:
        # Two rows may share one training run (1-shot and 5-shot evaluation): train it once.
        train = F.train and p.run_dir not in seen_train
        seen_train.add(p.run_dir)
        run_deadline = deadline
        if F.run_budget_minutes is not None and train and p.train_cmd:
            own = (time.time() + 60 * F.run_budget_minutes
                   + p.eval_reserve_s(60 * F.eval_reserve_minutes))
            run_deadline = own if deadline is None else min(deadline, own)
        try:
            status = execute(p, run_deadline, train, F.evaluate, F.reevaluate,
                             60 * F.eval_reserve_minutes, publish, log)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: the training child has saved its checkpoint; keep it in the
            # zoo too, so that a stop is never worse than the periodic publishing.
            publish(p, force=True)
            raise
        publish(p, force=True)
        if any(k.endswith("error") for k in status):
            failures[p.experiment.name] = status
    for name, error in publish_errors.items():
        failures.setdefault(name, {})["publish_error"] = error
    # The report covers every row, from the zoo alone, once each row agrees with the files
    # it is made from (a deleted or edited file must not change a published number).
    rows, problems = [], []
    for e in table:
        try:
            p = next((q for q in plans if q.experiment.name == e.name), None) or plan_of(e)
        except ReproduceError:  # e.g. a --flags_dir holding only some flagfiles
            continue
        rows.append(report.collect(e, p.zoo_dir, p.target, p.eval_config.num_test_tasks))
        problem = zoo_check.row_problem(p.zoo_dir, e.name, p.result_name, target=p.target,
                                        tasks=p.eval_config.num_test_tasks,
                                        percent=e.group != "sinusoid")
        if problem and problem not in problems:  # rows sharing a folder find it once
            problems.append(problem)
    if problems:
        for name, status in failures.items():
            log(f"FAILED {name}: {status}")
        for problem in problems[1:]:
            log(problem)
        raise ReproduceError(f"{problems[0]} ({F.output} was not rewritten)")
    figures = report.figure_paths(rows, F.figures_dir)
    if F.figures:
        report.draw_figures(rows, F.figures_dir, log)
    figures = [f for f in figures if os.path.exists(f)]
    path = report.write(rows, F.output, figures)
    log(f"wrote {path}")
    for name, status in failures.items():
        log(f"FAILED {name}: {status}")
    return 1 if failures else 0


def define_flags(values) -> None:
    """The command's flags, in ``values`` (its own absl FlagValues: it reads the ``tf-maml``
    flagfiles with that command's flags, some of which share these names)."""
    from absl import flags

    def d(kind, name, default, text):
        getattr(flags, f"DEFINE_{kind}")(name, default, text, flag_values=values)

    d("string", "experiments", "all", "comma-separated: all, sinusoid, omniglot, "
      "miniimagenet, or experiment names (the rows of flags/experiments.json)")
    d("float", "budget_minutes", None, "training time budget of this invocation (unlimited "
      "if unset); runs cut short are partial and resume next time")
    d("float", "run_budget_minutes", None, "training time budget of each run (so one long "
      "run cannot take the whole --budget_minutes)")
    d("float", "eval_reserve_minutes", 5, "part of the budget kept for evaluation (an "
      "ensemble of N keeps N times it: each member adapts on every test task)")
    d("string", "logdir_root", "logs", "runs go to <logdir_root>/<the flagfile's logdir "
      "name>/<exp_string>")
    d("string", "omniglot_dir", None, "prepared Omniglot (data_prep.omniglot output)")
    d("string", "miniimagenet_dir", None, "prepared MiniImageNet")
    d("string", "original_checkpoint", None, "the original MiniImageNet 1-shot checkpoint "
      "prefix, $DATA/maml_original_checkpoint/miniimagenet1shot/model59000")
    d("string", "flags_dir", os.path.join(REPO, "flags"), "the experiment flagfiles and "
      "their table, experiments.json")
    d("string", "zoo_dir", os.path.join(REPO, "zoo"), "the model zoo: the latest state of "
      "every run and its evaluations")
    d("bool", "train", True, "train unfinished runs (False: only evaluate and report)")
    d("bool", "evaluate", True, "evaluate checkpoints not evaluated yet")
    d("bool", "reevaluate", False, "evaluate again the checkpoint of the published number "
      "(the latest if there is none), and say whether the number is the zoo's")
    d("bool", "publish", True, "copy each run's latest state and evaluations into the zoo")
    d("float", "publish_every_minutes", 30, "during training, publish this often")
    d("string", "export_dir", None, "export the selected experiment's zoo model as a "
      "SavedModel here (and do nothing else)")
    d("bool", "figures", True, "draw the PNG figures")
    d("string", "output", os.path.join(REPO, "docs", "RESULTS.md"), "the results file")
    d("string", "figures_dir", os.path.join(REPO, "docs", "figures"), "where the PNGs go")


def run(argv=None):
    """Console entry point ``tf-maml-reproduce``."""
    from absl import app, flags

    values = flags.FlagValues()
    define_flags(values)

    def parse(argv):
        if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
            print(__doc__ + "\n" + values.get_help())
            sys.exit(0)
        try:
            rest = values(argv)
        except flags.Error as err:
            print(f"tf-maml-reproduce: error: {err} (--help lists the flags)", file=sys.stderr)
            sys.exit(2)
        flags.FLAGS(rest[:1])  # absl's own flags keep their defaults
        return rest

    def main_(argv):
        try:
            return main(argv, values)
        except ReproduceError as err:
            print(f"tf-maml-reproduce: error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # Said of a run that was training; an interrupted evaluation just runs again.
            kept = " and the zoo holds it" if values.publish else ""
            print("tf-maml-reproduce: interrupted; a run that was training saved a checkpoint"
                  f"{kept}: the same command resumes.", file=sys.stderr)
            return 130

    app.run(main_, argv=argv, flags_parser=parse)


if __name__ == "__main__":
    run()
