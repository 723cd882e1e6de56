"""Running one row of the paper's table: its ``tf-maml`` processes, under a time budget.

:func:`execute` restores the row's run directory from the zoo, trains it in a ``tf-maml``
process (stopped with SIGTERM, which makes it save a checkpoint, when the budget runs out),
evaluates the latest checkpoint in another, and records the evaluation in the run
directory's state file, with the commands that made it and the machine that ran it.
"""

from __future__ import annotations

import csv
import errno
import os
import platform
import re
import shlex
import signal
import subprocess
import time

import numpy as np

from tf_maml import atomic, rundir, threads, zoo_check
from tf_maml import zoo as zoo_lib
from tf_maml.config import Config
from tf_maml.reproduce_table import (
    REPO,
    Plan,
    ReproduceError,
    as_reproduce_error,
    tf_maml_command,
    writing,
)

STATE_FILE = zoo_lib.RUN_STATE_FILE
MIN_TRAIN_SECONDS = 20  # below this, starting a training process is not worth it
STARTUP_GRACE_S = 180  # how long past the deadline a training process may take to start
# The lines of a ``tf-maml`` process that are shown as it runs (all go to its log file).
SHOWN = ("  [", "Validation", "Wrote", "Mean", "tf-maml:", "Interrupted", "Restored",
         "  evaluated", "(array")
# An RL run's line of every meta-iteration (tf_maml.rl.training.ReturnsLogger): shown too,
# and it says the training loop has started, as the supervised loop's "  [" lines do.
RL_PROGRESS = re.compile(r"(Pretrain )?Iteration \d+/\d+: return ")


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


def shell(cmd: list[str]) -> str:
    """The command as a user would type it (``tf-maml``, flagfiles relative to the
    repository when they are in it)."""
    shown = ["tf-maml"] + cmd[3:] if cmd[:3] == tf_maml_command() else list(cmd)
    for i, c in enumerate(shown):
        if c.startswith("--flagfile="):
            path = os.path.abspath(c.split("=", 1)[1])
            inside = path.startswith(REPO + os.sep)
            shown[i] = "--flagfile=" + (os.path.relpath(path, REPO) if inside else path)
    return " ".join(shlex.quote(c) for c in shown)


def stream(cmd: list[str], log_path: str, deadline: float | None, log,
           on_tick=None, evaluation: bool = False) -> tuple[int, bool, str]:
    """Runs ``cmd``, copying its output to ``log_path`` and its progress lines to ``log``;
    SIGTERM at ``deadline`` (a time.monotonic() reading: a jump of the wall clock neither
    spends nor extends a budget); calls ``on_tick()`` about once a second while it runs (the
    zoo's periodic publishing). Returns (exit code, whether the deadline stopped it, the
    last line it printed: a failed command's one-line error, which the console repeats).
    ``evaluation``: ``cmd`` evaluates (``--train=False``), for what an interrupt says."""
    import queue
    import threading

    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    stopped = started = False
    last = ""
    lines: queue.Queue = queue.Queue()
    with open(log_path, "a") as out:
        out.write(f"\n$ {shell(cmd)}\n")
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
                    last = line.strip() or last
                    progress = RL_PROGRESS.match(line) is not None
                    started = started or progress or line.startswith(("Iteration ", "  ["))
                    if progress or line.startswith(SHOWN):
                        log("    " + line.strip())
                # SIGTERM makes the training loop save a checkpoint; before the loop has
                # started it would just kill the process, so wait (a while) for the loop.
                if (deadline is not None and not stopped and time.monotonic() > deadline
                        and (started or time.monotonic() > deadline + STARTUP_GRACE_S)):
                    log("    budget reached: stopping training (it saves a checkpoint)")
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
            proc.wait()
        except KeyboardInterrupt:  # pass it on: the child saves a checkpoint and exits
            log("    interrupted: stopping the evaluation (its results are written whole "
                "or not at all)" if evaluation else
                "    interrupted: stopping the training process (it saves a checkpoint)")
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            reader.join(timeout=10)
            while not lines.empty():  # keep the child's last words in the log
                line = lines.get()
                if line:
                    out.write(line)
            raise
    return proc.returncode, stopped, last


def failure(code: int, last_line: str, log_path: str) -> str:
    """What the console says of a command that failed: its exit code, its last line (the
    one-line error of tf-maml, or a traceback's last line) and where the rest is."""
    said = f": {last_line}" if last_line else ""
    return f"exit code {code}{said}; see {log_path}"


def execute(p: Plan, deadline: float | None, train: bool, evaluate: bool, reevaluate: bool,
            eval_reserve_s: float, publish, log=print) -> dict:
    """Restores from the zoo, trains (unless finished, or out of budget), evaluates (unless
    up to date) and publishes back to the zoo. Training stops ``eval_reserve_s`` per model
    the evaluation adapts (:meth:`Plan.eval_reserve_s`) before ``deadline``."""
    if p.skip_reason:
        log(f"[{p.experiment.name}] skipped: {p.skip_reason}")
        return {"skipped": p.skip_reason}
    if (train and p.train_cmd) or evaluate or reevaluate:  # a report alone reads the zoo
        trains = train and p.train_cmd and max(zoo_lib.latest_iteration(p.run_dir),
                                               zoo_lib.latest_iteration(p.zoo_dir)) < p.target
        problem = getattr(publish, "enabled", False) and _zoo_folder_problem(p, trains)
        if problem:
            log(f"[{p.experiment.name}] {problem}")
        problem = problem or _restore(p, log)
        if problem:
            return {"restore_error": problem}
    status = _train(p, deadline, train, eval_reserve_s, publish, log)
    if p.train_cmd and zoo_lib.latest_iteration(p.run_dir) == 0:
        if evaluate or reevaluate:  # else not asked: a report alone says nothing of it
            log(f"[{p.experiment.name}] nothing to evaluate yet")
        return status
    status.update(_evaluate(p, evaluate, reevaluate, publish, log))
    return status


def _log_path(p: Plan) -> str:
    return os.path.join(p.run_dir, "reproduce.log")


def _restore(p: Plan, log) -> str | None:
    """Seeds the run directory from the zoo when the zoo is ahead; the problem, if the zoo
    lost a file of the state its record vouches for or its checkpoint is unreadable."""
    # A checkpoint the zoo's record vouches for, lost (and not in the run directory): the
    # zoo would read as behind, the row be trained from an earlier state (the start, in a
    # fresh run directory) and published over the zoo's log and record.
    problem = zoo_check.state_problem(p.zoo_dir, p.experiment.name, p.result_name,
                                      target=p.target, held_by=p.run_dir)
    problem = problem or other_run_problem(p)
    if problem:
        log(f"[{p.experiment.name}] {problem}")
        return problem
    # The zoo's state is about to seed the run directory (the zoo is ahead): a corrupt
    # checkpoint would be copied into it, and into every fresh one, so say which zoo
    # file it is instead.
    if zoo_lib.latest_iteration(p.zoo_dir) > zoo_lib.latest_iteration(p.run_dir):
        problem = zoo_check.checkpoint_problem(p.zoo_dir, p.experiment.name)
        if problem:
            log(f"[{p.experiment.name}] {problem}")
            return problem
    try:
        with writing(p.run_dir, "restore the zoo's state", f"{p.zoo_dir} is as it was",
                     "logdir_root"):
            zoo_lib.restore(p.zoo_dir, p.run_dir, log)
    except (ReproduceError, zoo_lib.ZooError) as err:  # a file in the way, a full or
        log(f"[{p.experiment.name}] {err}")  # read-only disk, a garbled record
        return str(err)
    return None


def other_run_problem(p: Plan) -> str | None:
    """Whether the zoo holds the state of another run than the one the row's flagfile makes
    now (a flag of the run directory's name changed since it was trained, as the baselines'
    pretraining went from 32 to 64 images). Restored into the new run's directory, it was
    taken for that run: a finished one was not trained again, and its old evaluations were
    reported as the new flags' numbers."""
    path = os.path.join(p.zoo_dir, "config.json")
    if (p.train_config is None or zoo_lib.latest_iteration(p.zoo_dir) == 0
            or not os.path.isfile(path)):
        return None
    try:
        with open(path) as f:
            zoo_run = Config.from_json(f.read()).exp_string()
    except (OSError, ValueError):  # ValueError: JSON's, and ConfigError is one
        return None  # an unreadable config.json: the resume's own check names it
    new_run = os.path.basename(p.run_dir)
    if zoo_run == new_run:
        return None
    return (f"{p.zoo_dir} holds the run {zoo_run}, but {p.experiment.train_flags}.flags now "
            f"makes the run {new_run}: its flags changed since the zoo's run was trained, and "
            "the zoo's checkpoints and numbers would be taken for the new run's. To train the "
            f"new run, move {p.zoo_dir} away (git keeps it) and run the same command again; to "
            "keep the zoo's run, put back the flags its config.json lists")


def _zoo_folder_problem(p: Plan, trains: bool) -> str | None:
    """Why the row's zoo folder cannot take what this run publishes (a file stands in its
    place; if the row ``trains``, it or the folder it would be made in cannot be written),
    said before hours of training: else only the first publish failed. (A finished row
    publishes only a new evaluation's numbers, if any: a read-only zoo serves it.)"""
    if os.path.exists(p.zoo_dir) and not os.path.isdir(p.zoo_dir):
        return (f"{p.zoo_dir}, this row's zoo folder, is a file, so nothing trained or "
                "evaluated could be published there: move that file away (or `git checkout "
                f"-- {p.zoo_dir}` if the repository's folder was replaced), then run the same "
                "command again")
    if not trains:
        return None
    try:
        rundir.check_writable_later(p.zoo_dir)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):  # a file in the way
            return str(as_reproduce_error(rundir.RunDirError(rundir.os_error_message(
                err, p.zoo_dir, "publish this row", "nothing was trained or published",
                "zoo_dir"))))
        folder = p.zoo_dir  # or the folder it would be made in
        while folder and not os.path.exists(folder):
            folder = os.path.dirname(folder)
        reason = os.strerror(err.errno)
        what = ("cannot be written" if folder == p.zoo_dir else
                f"cannot be made: {folder or os.curdir} cannot be written")
        return (f"{p.zoo_dir}, this row's zoo folder, {what} ({reason}), so nothing trained "
                f"or evaluated could be published there: make {folder or os.curdir} writable "
                "(or give another --zoo_dir), then run the same command again")
    return None


def _train(p: Plan, deadline: float | None, train: bool, eval_reserve_s: float, publish,
           log) -> dict:
    """Trains the run towards its target unless it is there, or the budget is spent."""
    e = p.experiment
    status: dict = {}
    done = zoo_lib.latest_iteration(p.run_dir)
    if train and p.train_cmd and done < p.target:
        remaining = (None if deadline is None
                     else deadline - p.eval_reserve_s(eval_reserve_s) - time.monotonic())
        if remaining is not None and remaining < MIN_TRAIN_SECONDS:
            log(f"[{e.name}] no training budget left ({done}/{p.target} iterations)")
        else:
            log(f"[{e.name}] training {done}/{p.target} -> {p.target}: {shell(p.train_cmd)}")
            stop_at = None if remaining is None else time.monotonic() + remaining
            code, stopped, last = stream(p.train_cmd, _log_path(p), stop_at, log,
                                         on_tick=lambda: publish(p))
            if code != 0 and not stopped:
                status["train_error"] = failure(code, last, _log_path(p))
                log(f"[{e.name}] training failed ({status['train_error']})")
    elif p.train_cmd:
        # The run directory; a report alone does not restore the zoo into it, which may hold
        # more (said, else "0/70000" read as if nothing had been trained).
        held = zoo_lib.latest_iteration(p.zoo_dir)
        log(f"[{e.name}] {done}/{p.target} iterations on disk"
            + (f" ({held} in the zoo)" if held > done else "")
            + ("" if max(done, held) >= p.target else " (training not requested)"))
    return status


def _evaluate(p: Plan, evaluate: bool, reevaluate: bool, publish, log) -> dict:
    """Evaluates the latest checkpoint unless its results are up to date (re-evaluating: the
    checkpoint of the published number) and records the numbers in the run's state.
    ``publish(p)`` is called as during training: a long evaluation's progress (the
    fine-tuning baseline's search, rundir.SELECTION_NAME) reaches the zoo meanwhile."""
    e = p.experiment
    done = zoo_lib.latest_iteration(p.run_dir)
    try:
        state = zoo_lib.run_state(p.run_dir)
    except zoo_lib.ZooError as err:  # else replaced by this evaluation's entry alone
        log(f"[{e.name}] {err}")
        return {"eval_error": str(err)}
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
        return {}
    if not (evaluate or reevaluate):
        return {}
    cmd = p.eval_cmd + ([f"--test_iter={iteration}"] if p.train_cmd else [])
    log(f"[{e.name}] evaluating: {shell(cmd)}")
    t0 = time.monotonic()
    code, _, last = stream(cmd, _log_path(p), None, log, on_tick=lambda: publish(p),
                           evaluation=True)
    if code != 0:
        error = failure(code, last, _log_path(p))
        log(f"[{e.name}] evaluation failed ({error})")
        return {"eval_error": error}
    means, ci = _read_summary(p)
    if recheck:
        was = f"{before['means'][-1]:.4f} ± {before['ci95'][-1]:.4f}"
        now = f"{means[-1]:.4f} ± {ci[-1]:.4f}"
        log(f"[{e.name}] re-evaluated iteration {iteration}: {now} (the zoo's: {was}"
            f"{', the same' if was == now else ''})")
    state = zoo_lib.run_state(p.run_dir)  # read again: the evaluation took its time
    state[key] = {"iteration": iteration, "eval_seconds": round(time.monotonic() - t0, 1),
                  "eval_command": shell(cmd), "train_command":
                  shell(p.train_cmd) if p.train_cmd else None,
                  "means": means.tolist(), "ci95": ci.tolist(), "date": zoo_lib.today(),
                  "machine": machine()}
    # The simulator a locomotion evaluation ran on (its flags' record, tf_maml.runner).
    flags = atomic.read_json(os.path.join(p.run_dir, "test_config.json"))
    versions = flags.get("versions") if isinstance(flags, dict) else None
    if versions:
        state[key]["versions"] = versions
    atomic.write_json(os.path.join(p.run_dir, STATE_FILE), state)
    return {}


def _read_summary(p: Plan) -> tuple[np.ndarray, np.ndarray]:
    """The mean and 95% half-width per number of steps of the evaluation the row's command
    just wrote: the original's CSV (rows update0.., means, stds, ci95), or an RL run's
    ``test_returns.csv`` (a row per number of steps: mean_return, ci95, ...)."""
    path = os.path.join(p.run_dir, p.result_name + ".csv")
    atomic.complete_interrupted(p.run_dir)  # a set its killed writer left half replaced
    with open(path) as f:
        if p.experiment.kind == "return":
            rows = list(csv.DictReader(f))
            return (np.array([r["mean_return"] for r in rows], dtype=float),
                    np.array([r["ci95"] for r in rows], dtype=float))
        rows = [line.strip().split(",") for line in f if line.strip()]
    return np.array(rows[1], dtype=float), np.array(rows[3], dtype=float)
