"""The options that make a ``MetaLearner.fit`` run the experiment it is, recorded in its run
directory (``learner.json``), so that resuming it with others is refused rather than
continuing it silently as another experiment: a plain learner would drop a Meta-SGD run's
learned rates, another ``inner_steps`` change the meta-objective. The command line compares
its ``config.json`` the same way (:meth:`tf_maml.config.Config.resume_changes`).
"""

from __future__ import annotations

import os

from tf_maml import atomic, rundir
from tf_maml.errors import ConfigError

RECORD_NAME = "learner.json"


def settings(learner) -> dict:
    """The learner's run-defining options, each as its argument is written (``inner_lr``'s
    number when fixed: a learned rate's start is in the checkpoint)."""
    rate = learner.rate
    adapt = learner.per_step_bn if learner.per_step_bn is not None else learner.adapted
    return {"inner_lr": repr(rate) if rate.learned else rate.value,
            "inner_steps": learner.inner_steps, "first_order": repr(learner.order),
            "adapt": repr(adapt), "objective": repr(learner.objective)}


def check_resume(run_dir: str, now: dict) -> None:
    """A ConfigError naming every option ``now`` changes in the run ``run_dir`` holds (its
    checkpoints, trained with the options of its record); nothing for a run without either."""
    if not rundir.checkpoint_prefixes(run_dir):
        return
    before = _read(os.path.join(run_dir, RECORD_NAME))
    changed = [name for name in now if name in before and before[name] != now[name]]
    if changed:
        def args(values):
            return ", ".join(f"{name}={values[name]}" for name in changed)

        raise ConfigError(
            f"{run_dir} holds a run trained with {args(before)}, but this learner has "
            f"{args(now)}; resuming would continue it as another experiment. Build the "
            f"learner with {args(before)} to continue it, or give another `run_dir` for a new "
            "run (nothing was changed).")


def _read(path: str) -> dict:
    """The record at ``path`` ({} if there is none: a run from before records); a
    ConfigError if it is there but garbled or not an object, edited by hand (it is only
    ever replaced whole): else the check was skipped without a word and the record
    replaced by this learner's."""
    try:
        return atomic.read_record(path) or {}
    except ValueError as err:
        raise ConfigError(
            f"{path}, the options the run was trained with, {err}, so resuming cannot compare "
            "them with this learner's: fix it or restore it from a copy, or delete it to "
            "resume without comparing them (fit writes it again); nothing was changed") \
            from None


def write(run_dir: str, now: dict) -> None:
    """Records ``now`` as the run's options (replaced whole; left as it is if the same)."""
    path = os.path.join(run_dir, RECORD_NAME)
    if atomic.read_json(path) != now:
        with rundir.writing(run_dir, f"write {RECORD_NAME}"):
            atomic.write_json(path, now)
