"""Publishing what ``tf-maml-reproduce`` ran: each run into the model zoo, then the report.

A run directory is copied into its zoo folder (:func:`tf_maml.zoo.publish`) after its row
and, while it trains, every few minutes; ``docs/RESULTS.md`` is then written from the zoo
alone (:mod:`tf_maml.report`), once every row agrees with the files it is made of.
"""

from __future__ import annotations

import os
import time

from tf_maml import report, zoo_check
from tf_maml import zoo as zoo_lib
from tf_maml.reproduce_run import machine
from tf_maml.reproduce_table import Experiment, Plan, ReproduceError, writing


class Publisher:
    """Publishes a row's run into its zoo folder: ``publisher(plan, force=True)`` now,
    ``publisher(plan)`` (called about once a second while it trains) every
    ``every_minutes``. ``paths`` maps the paths of this machine to what the zoo says."""

    def __init__(self, enabled: bool, every_minutes: float, paths: dict[str, str], log):
        self.enabled, self.every_minutes, self.paths, self.log = (
            enabled, every_minutes, paths, log)
        self.last = time.monotonic()
        self.errors: dict[str, str] = {}  # the rows whose latest publishing failed

    def __call__(self, p: Plan, force: bool = False) -> None:
        if not self.enabled or p.skip_reason:
            return
        if not force and time.monotonic() - self.last < 60 * self.every_minutes:
            return
        self.last = time.monotonic()
        finished = p.train_cmd is None or zoo_lib.latest_iteration(p.run_dir) >= p.target
        try:
            zoo_lib.publish(p.run_dir, p.zoo_dir, finished, self.paths, machine(), self.log)
        except (OSError, ValueError, RuntimeError) as err:
            # The run directory keeps everything (publishing only reads it), so the next
            # invocation publishes it; but the zoo is behind, and the command must say so.
            self.errors[p.experiment.name] = (
                f"could not publish to {p.zoo_dir}: {err}; {p.run_dir} keeps the run: fix "
                "the zoo folder and run the same command again to publish it")
            self.log(f"[{p.experiment.name}] {self.errors[p.experiment.name]}")
        else:
            self.errors.pop(p.experiment.name, None)


def write_report(table: list[Experiment], plans: list[Plan], plan_of, output: str,
                 figures_dir: str, draw_figures: bool, failures: dict, log) -> str:
    """Writes ``output`` from the zoo of every row of ``table`` (``plans`` of the rows run,
    ``plan_of(experiment)`` of the others); returns its path. Raises
    :class:`ReproduceError`, leaving ``output`` as it was, when a row disagrees with the files
    it is made of (a deleted or edited file must not change a published number)."""
    rows, problems = [], []
    for e in table:
        try:
            p = next((q for q in plans if q.experiment.name == e.name), None) or plan_of(e)
        except ReproduceError:  # e.g. a --flags_dir holding only some flagfiles
            continue
        rows.append(report.collect(e, p.zoo_dir, p.target, p.eval_config.num_test_tasks))
        problem = zoo_check.row_problem(p.zoo_dir, e.name, p.result_name, target=p.target,
                                        tasks=p.eval_config.num_test_tasks, kind=e.kind)
        if problem and problem not in problems:  # rows sharing a folder find it once
            problems.append(problem)
    if problems:
        for name, status in failures.items():
            log(f"FAILED {name}: {status}")
        for problem in problems[1:]:
            log(problem)
        raise ReproduceError(f"{problems[0]} ({output} was not rewritten)")
    figures = report.figure_paths(rows, figures_dir)
    if draw_figures:
        with writing(figures_dir, "draw the figures", f"any earlier {output} is as it was",
                     "figures_dir"):
            report.draw_figures(rows, figures_dir, log)
    figures = [f for f in figures if os.path.exists(f)]
    with writing(os.path.dirname(os.path.abspath(output)), f"write {os.path.basename(output)}",
                 f"any earlier {output} is as it was", "output"):
        return report.write(rows, output, figures)
