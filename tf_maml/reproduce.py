"""tf-maml-reproduce: the paper's tables, reproduced by this code, with the models kept.

    tf-maml-reproduce --experiments=sinusoid                       # every sinusoid row
    tf-maml-reproduce --experiments=omniglot5_1shot,omniglot5_5shot \\
        --omniglot_dir=$DATA/omniglot --logdir_root=$LOGDIR --run_budget_minutes=120
    tf-maml-reproduce --experiments=cheetah_vel --logdir_root=$LOGDIR \
        --run_budget_minutes=240                                   # Figure 5, half-cheetah
    tf-maml-reproduce --train=False --evaluate=False               # docs/RESULTS.md from zoo/

The rows are the table ``flags/experiments.json``. For every selected row it restores the
run's latest state from the model zoo (``zoo/<run>/``, see :mod:`tf_maml.zoo`) when the zoo is
ahead of the run directory, trains the row's flagfile with ``tf-maml`` (a finished run is left
alone, an unfinished one resumes), evaluates the latest checkpoint on 600 test tasks with
``--train=False`` (only when that checkpoint has not been evaluated yet, or with
``--reevaluate``: the checkpoint of the published number; a reinforcement-learning row, Figure
5, evaluates its flagfile's test tasks: average return after 0..3 policy-gradient steps),
publishes the run back into the zoo (the latest state and the checkpoints of its
evaluations; every ``--publish_every_minutes`` during training too), and writes
``docs/RESULTS.md`` from the zoo alone (:mod:`tf_maml.report`).

``--budget_minutes`` bounds the training (``--run_budget_minutes`` each run's): when it runs
out the training process gets SIGTERM, which makes it save a checkpoint and stop; that
checkpoint is evaluated and reported as partial with its iteration count, and the next
invocation resumes it. Each run is its own ``tf-maml`` process, so a failure in one is
reported and the others go on. ``--export_dir`` exports the selected zoo model as a SavedModel
with in-graph adaptation instead.
"""

from __future__ import annotations

import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_maml import rundir, zoo_check  # noqa: E402
from tf_maml import zoo as zoo_lib  # noqa: E402
from tf_maml.errors import path_problem, tensorflow_pattern  # noqa: E402
from tf_maml.reproduce_publish import Publisher, write_report  # noqa: E402
from tf_maml.reproduce_run import execute, machine, other_run_problem  # noqa: E402
from tf_maml.reproduce_table import (  # noqa: E402
    REPO,
    Experiment,
    Plan,
    ReproduceError,
    as_reproduce_error,
    config_for,
    load_experiments,
    plan,
    select,
    writing,
)

# This module is the command line (its --help prints the docstring above). The rows and their
# plans are reproduce_table's, running one reproduce_run's, publishing reproduce_publish's;
# their parts are also importable from here, by the names the command's users know.
__all__ = ["Experiment", "Plan", "ReproduceError", "config_for", "define_flags", "execute",
           "export", "load_experiments", "machine", "main", "plan", "run", "select"]


def export(p: Plan, export_dir: str, log=print) -> str:
    """Exports the zoo model of ``p`` as a SavedModel with in-graph adaptation."""
    from tf_maml import experiment
    from tf_maml.checkpoint import CheckpointError, learner_checkpointer, restore_for_test
    from tf_maml.export import export as export_saved_model
    from tf_maml.rundir import RunDirError

    if p.experiment.kind == "return":
        raise ReproduceError(f"{p.experiment.name} is a reinforcement-learning row: its policy "
                             "has no SavedModel export (its zoo folder holds the checkpoint)")
    iteration = zoo_lib.latest_iteration(p.zoo_dir)
    if iteration == 0:  # not "train it first" if the zoo lost the checkpoint it records
        raise ReproduceError(zoo_check.state_problem(p.zoo_dir, p.experiment.name,
                                                     p.result_name, target=p.target)
                             or f"{p.zoo_dir} holds no model to export: train "
                             f"{p.experiment.name} first")
    # The zoo's run must be the flagfile's (a changed flag made another run): else its model
    # was exported as the row's.
    problem = (other_run_problem(p)
               or zoo_check.checkpoint_problem(p.zoo_dir, p.experiment.name))
    if problem:
        raise ReproduceError(problem)
    learner = experiment.build_learner(p.eval_config)
    try:
        path, iteration = restore_for_test(learner_checkpointer(learner, p.zoo_dir), -1)
    except CheckpointError as err:  # e.g. a zoo model of other settings than the flagfile's
        raise ReproduceError(f"cannot export {p.zoo_dir}: {err}") from None
    try:
        out = export_saved_model(learner, export_dir, num_steps=p.eval_config.test_num_updates)
    except RunDirError as err:  # a file in the way, a folder of other files, a full disk
        raise as_reproduce_error(err) from None
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
    for name in ("logdir_root", "omniglot_dir", "miniimagenet_dir", "original_checkpoint",
                 "flags_dir", "zoo_dir", "output", "figures_dir", "export_dir"):
        problem = path_problem(name, F[name].value)
        if name in ("logdir_root", "original_checkpoint", "zoo_dir", "export_dir"):
            problem = problem or tensorflow_pattern(F[name].value)
        if problem:
            raise ReproduceError(f"--{name}: {problem}")
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
    if not os.path.isdir(F.zoo_dir) and not (F.publish and (F.train or F.evaluate)):
        # Nothing will be published into it: the report would list every row "not run".
        raise ReproduceError(f"--zoo_dir={F.zoo_dir} is not a folder: the report is made from "
                             "the model zoo (the repository's zoo/), and this invocation "
                             f"publishes nothing into it; {F.output} was not rewritten")
    _check_outputs(F)
    plans = [plan_of(e) for e in experiments]
    if not (F.publish and (F.train or F.evaluate or any(os.path.isdir(p.run_dir)
                                                        for p in plans))):
        _check_zoo_holds_rows(F.zoo_dir, table, F.output)  # else all "not run"
    # What a path of this machine becomes in the zoo and the report.
    paths = {F.logdir_root: "$LOGDIR", F.omniglot_dir: "$DATA/omniglot",
             F.miniimagenet_dir: "$DATA/miniimagenet", F.flags_dir: "flags", REPO: ".",
             F.original_checkpoint: "$DATA/maml_original_checkpoint/miniimagenet1shot/model59000"}
    publish = Publisher(F.publish, F.publish_every_minutes, paths, log)
    deadline = None if F.budget_minutes is None else time.monotonic() + 60 * F.budget_minutes
    log(f"tf-maml-reproduce: {len(plans)} experiments, runs under {F.logdir_root}, models "
        f"in {F.zoo_dir}" + ("" if deadline is None else
                            f", training budget {F.budget_minutes} min"))
    failures = _run_rows(plans, F, deadline, publish, log)
    # The report covers every row, from the zoo alone.
    path = write_report(table, plans, plan_of, F.output, F.figures_dir, F.figures, failures,
                        log)
    log(f"wrote {path}")
    for name, status in failures.items():
        log(f"FAILED {name}: {status}")
    return 1 if failures else 0


def _check_zoo_holds_rows(zoo_dir: str, table: list, output: str) -> None:
    """A ReproduceError if ``zoo_dir``, which nothing will be published into, holds no row's
    folder (one row's own, or an empty folder): the report made from it would list every row
    "not run", over the numbers of the earlier one."""
    if any(os.path.isdir(os.path.join(zoo_dir, e.zoo)) for e in table):
        return
    hint = (f" (it is one row's folder, holding {zoo_lib.RESULTS_FILE}: give the zoo, "
            f"--zoo_dir={os.path.dirname(os.path.abspath(zoo_dir))})"
            if os.path.exists(os.path.join(zoo_dir, zoo_lib.RESULTS_FILE)) else "")
    raise ReproduceError(f"--zoo_dir={zoo_dir} holds no row's folder{hint}: the report made "
                         "from it would list every row not run, and this invocation "
                         f"publishes nothing into it; {output} was not rewritten")


def _check_outputs(F) -> None:
    """A ReproduceError if the report could not be written where the flags say: found at the
    end, after hours of training, it failed only then ("Is a directory")."""
    _check_report_is_of_the_zoo(F)
    if os.path.isdir(F.output):
        raise ReproduceError(f"--output={F.output} is a folder: give the path of the results "
                             f"file, e.g. --output={os.path.join(F.output, 'RESULTS.md')}")
    from tf_maml import report

    if os.path.isfile(F.output) and not report.is_replaceable(F.output):
        raise ReproduceError(f"--output={F.output} is a file this command did not write (it "
                             f"has no \"{report.MARK}\" line), which the report would replace: "
                             "give the path of the results file (e.g. docs/RESULTS.md), or "
                             "move that file away")
    if F.figures and os.path.exists(F.figures_dir) and not os.path.isdir(F.figures_dir):
        raise ReproduceError(f"--figures_dir={F.figures_dir} is a file: give the folder for "
                             "the PNG figures (or --figures=False)")
    # A file above them, a link to nothing, a read-only folder: else said at the end, after
    # the hours of training (reproduce_publish.write_report's messages, now).
    kept = f"any earlier {F.output} is as it was"
    with writing(os.path.dirname(os.path.abspath(F.output)),
                 f"write {os.path.basename(F.output)}", kept, "output"):
        rundir.check_writable_later(os.path.dirname(os.path.abspath(F.output)))
    if F.figures:
        with writing(F.figures_dir, "draw the figures", kept, "figures_dir"):
            rundir.check_writable_later(F.figures_dir)


def _check_report_is_of_the_zoo(F) -> None:
    """A ReproduceError if the report of another zoo than this checkout's would replace this
    checkout's docs/RESULTS.md or figures (the defaults), made from its own zoo/: a zoo of a
    few rows of one's own turned every other row of the repository's report "not run"."""
    if os.path.realpath(F.zoo_dir) == os.path.realpath(os.path.join(REPO, "zoo")):
        return
    defaults = [f"--{name}" for name in ("output", "figures_dir")
                if not F[name].present and (name == "output" or F.figures)]
    if defaults:
        parent = os.path.dirname(os.path.abspath(F.zoo_dir))
        raise ReproduceError(
            f"--zoo_dir={F.zoo_dir} is not this checkout's zoo, but {' and '.join(defaults)} "
            "would replace this checkout's report of its own zoo: give the report of "
            f"{F.zoo_dir} its own place, e.g. --output={os.path.join(parent, 'RESULTS.md')}"
            + (f" --figures_dir={os.path.join(parent, 'figures')}" if F.figures else ""))


def _run_rows(plans: list[Plan], F, deadline: float | None, publish: Publisher,
              log) -> dict[str, dict]:
    """Executes each row's plan within the budgets of ``F``, publishing it after; returns the
    failures of each row that failed."""
    failures = {}
    seen_train = set()
    for p in plans:
        # Two rows may share one training run (1-shot and 5-shot evaluation): train it once.
        train = F.train and p.run_dir not in seen_train
        seen_train.add(p.run_dir)
        run_deadline = deadline
        if F.run_budget_minutes is not None and train and p.train_cmd:
            own = (time.monotonic() + 60 * F.run_budget_minutes
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
    for name, error in publish.errors.items():
        failures.setdefault(name, {})["publish_error"] = error
    return failures


def define_flags(values) -> None:
    """The command's flags, in ``values`` (its own absl FlagValues: it reads the ``tf-maml``
    flagfiles with that command's flags, some of which share these names)."""
    from absl import flags

    def d(kind, name, default, text):
        getattr(flags, f"DEFINE_{kind}")(name, default, text, flag_values=values)

    def minutes(name, default, text):  # refused at parsing, before anything is written
        d("float", name, default, text)
        unset = "; leave it unset for no limit" if default is None else ""
        flags.register_validator(name, lambda m: m is None or m >= 0,
                                 f"must be >= 0 minutes{unset}", flag_values=values)

    d("string", "experiments", "all", "comma-separated: all, sinusoid, omniglot, "
      "miniimagenet, an RL task family (navigation, cheetah_vel, cheetah_dir, ant_vel, "
      "ant_dir: its MAML, pretrained, random and oracle rows), or experiment names (the rows "
      "of flags/experiments.json)")
    minutes("budget_minutes", None, "training time budget of this invocation (unlimited "
      "if unset); runs cut short are partial and resume next time")
    minutes("run_budget_minutes", None, "training time budget of each run (so one long "
      "run cannot take the whole --budget_minutes)")
    minutes("eval_reserve_minutes", 5, "part of the budget kept for evaluation (an "
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
    minutes("publish_every_minutes", 30, "during training, publish this often")
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

    from tf_maml.errors import exit_on_flagfile_problem

    exit_on_flagfile_problem("tf-maml-reproduce", argv)
    app.run(main_, argv=argv, flags_parser=parse)


if __name__ == "__main__":
    run()
