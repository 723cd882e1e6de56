"""The paper's Figure 5 analogue (2D navigation, or a locomotion family with ``--title``):
average return against the number of gradient steps at test, for MAML and the baselines,
from the ``test_returns.npy`` files the runs wrote.

    python -m tf_maml.rl.figure --run="MAML=logs/navigation/<maml run>" \\
        --run="pretrained=logs/navigation/<...>.pretrained" \\
        --run="random=logs/navigation/<...>random..." --oracle=logs/navigation/<...oracle...> \\
        --output=docs/figures/navigation_return.png

``--run="LABEL=RUN_DIR@NAME"`` plots ``NAME.npy`` of the run instead (dashed), e.g. a
re-evaluation by ``python -m tf_maml.rl.run --step_sizes=...``.

Each curve is the mean over the test tasks with its 95% interval (1.96·std/√n); the oracle,
which needs no adaptation, is drawn as a horizontal band at its 0-step return, as the
paper draws it.
"""

from __future__ import annotations

import os

import numpy as np

from tf_maml import atomic
from tf_maml.errors import did_you_mean, path_problem, unexpanded_home
from tf_maml.figures import load_matrix, split_curve, split_run


def load_returns(run: str) -> np.ndarray:
    """The ``[tasks, steps + 1]`` returns of ``RUN_DIR`` (its ``test_returns.npy``) or of
    ``RUN_DIR@NAME`` (its ``NAME.npy``, e.g. a re-evaluation with other step sizes)."""
    run_dir, name = split_run(run)
    path = os.path.join(run_dir, (name or "test_returns") + ".npy")
    evaluate = (f"python -m tf_maml.rl.run --run_dir={run_dir} --step_sizes=..." if name
                else "tf-maml --flagfile=... --train=False")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a folder: give the run directory of an "
                                "evaluated RL run, e.g. logs/navigation/<run>")
    if not os.path.exists(path):
        held = sorted(n[:-4] for n in os.listdir(run_dir)
                      if n.startswith("test_returns") and n.endswith(".npy"))
        said = (f"; it holds {', '.join(held)}{did_you_mean(name, held)}" if name and held
                else "")
        raise FileNotFoundError(f"no {os.path.basename(path)} in {run_dir}{said}: evaluate "
                                f"the run first ({evaluate})")
    return load_matrix(path, evaluate)


def mean_ci(returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return returns.mean(0), 1.96 * returns.std(0) / np.sqrt(returns.shape[0])


def plot(runs: dict[str, str], path: str, oracle: str | None = None,
         title: str = "2D navigation, meta-test") -> str:
    """Writes the figure to ``path`` (PNG); ``runs`` maps curve labels to run directories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    num_steps, colors = 0, {}
    for label, run in runs.items():
        mean, ci = mean_ci(load_returns(run))
        steps = np.arange(len(mean))
        num_steps = max(num_steps, len(mean) - 1)
        # Curves of one run (same label before " (") share a colour; re-evaluations dash.
        base = label.split(" (")[0]
        style = dict(ls="--", mfc="white") if "@" in run else {}
        line = ax.errorbar(steps, mean, yerr=ci, marker="o", ms=4, capsize=3, label=label,
                           color=colors.get(base), **style)
        colors.setdefault(base, line[0].get_color())
    if oracle is not None:
        mean, ci = mean_ci(load_returns(oracle))
        ax.axhline(mean[0], color="k", ls="--", label="oracle (0 steps)")
        ax.axhspan(mean[0] - ci[0], mean[0] + ci[0], color="k", alpha=0.1)
    ax.set_xticks(range(num_steps + 1))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    return _save(fig, ax, title, path)


def _save(fig, ax, title: str, path: str) -> str:
    """Titles ``ax``, puts its legend right of it, writes ``fig`` to ``path`` (PNG) and
    closes it: a file in the way, a full or read-only disk is one line, and the earlier
    figure stays whole."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()

    from tf_maml import rundir

    kept = f"the earlier {path} is intact" if os.path.exists(path) else ""
    try:
        with rundir.writing(os.path.dirname(path) or ".", f"write {os.path.basename(path)}",
                            kept=lambda: kept, arg="output"):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with atomic.replacing(path) as f:  # a kill mid-write leaves the old figure whole
                fig.savefig(f, format="png", dpi=120)
    except rundir.RunDirError as err:
        raise ValueError(str(err).replace("`output`", "--output")) from None
    finally:
        plt.close(fig)
    return path


def training_returns(run_dir: str) -> dict[str, np.ndarray]:
    """The meta-training record of an RL run (its ``training_log.csv``): ``iteration``, and
    the average return of each iteration's sampled trajectories, ``pre_return`` with the
    policy as it is and ``post_return`` after the inner step (for a pretrained or oracle
    run, which takes no inner step, the two are the same); rows cut short are left out."""
    from tf_maml.training_log import read_training_log

    out: dict[str, list] = {"iteration": [], "pre_return": [], "post_return": []}
    for row in read_training_log(run_dir):
        try:
            values = [float(row[key]) for key in out]
        except (KeyError, ValueError):
            continue
        for key, value in zip(out, values):
            out[key].append(value)
    order = np.argsort(out["iteration"], kind="stable")
    return {key: np.asarray(values)[order] for key, values in out.items()}


def plot_training(runs: dict[str, str], path: str, title: str) -> str | None:
    """Writes the meta-training curves of ``runs`` (label: run directory) to ``path`` (PNG):
    each run's average return per meta-iteration, a MAML run's before its inner step
    (dashed) and after it (solid), in one colour; None if no run has logged an iteration."""
    curves = {label: training_returns(run) for label, run in runs.items()}
    curves = {label: c for label, c in curves.items() if len(c["iteration"])}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for label, c in curves.items():
        adapts = not np.array_equal(c["pre_return"], c["post_return"])
        line, = ax.plot(c["iteration"], c["post_return"], lw=1,
                        label=f"{label}, after the inner step" if adapts else label)
        if adapts:
            ax.plot(c["iteration"], c["pre_return"], lw=1, ls="--", color=line.get_color(),
                    label=f"{label}, before it")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("average return of the sampled trajectories")
    return _save(fig, ax, title, path)


def check_output(path: str) -> None:
    """A ValueError naming the fix if ``--output`` cannot be the PNG's path (checked before
    any run is read): empty, with an unexpanded ~, a folder, not named .png, or a file that
    is not a PNG (which the figure would replace)."""
    problem = path_problem("output", path)
    if problem:
        raise ValueError(f"--output: {problem}")
    if os.path.isdir(path):
        raise ValueError(f"--output={path} is a folder: give the path of the PNG, e.g. "
                         f"--output={os.path.join(path, 'navigation_return.png')}")
    if not path.lower().endswith(".png"):  # else a PNG under another name (.pdf, .md)
        raise ValueError(f"--output={path}: the figure is a PNG; give a path ending in .png")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return  # not there yet (or unreadable: the write says why)
    if head and head != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"--output={path} is a file that is no PNG, which the figure would "
                         "replace: give another --output, or move that file away")


def parse_runs(items: list[str]) -> dict[str, str]:
    """The curves of the ``--run`` flags, ``LABEL=RUN_DIR`` each: label -> run; a ValueError
    names an item without a label, or a label given twice."""
    runs: dict[str, str] = {}
    for item in items:
        label, run_dir = split_curve(item)
        if not label or not run_dir:
            raise ValueError(f"--run expects LABEL=RUN_DIR, got {item!r}")
        problem = unexpanded_home(split_run(run_dir)[0])  # else "no ...npy in ~/..."
        if problem:
            raise ValueError(f"--run={item}: {problem}")
        if label in runs:  # else the later curve replaced the earlier one
            raise ValueError(f"--run={item}: the label {label} is taken (by {runs[label]}): "
                             "give each curve a label of its own")
        runs[label] = run_dir
    return runs


def check_oracle(run: str) -> None:
    """A ValueError if the ``--oracle`` run's config.json says it is not the oracle
    baseline (the band would be drawn at another policy's return, labelled oracle)."""
    import json

    run_dir = split_run(run)[0]
    problem = path_problem("oracle", run_dir)
    if problem:
        raise ValueError(f"--oracle: {problem}")
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return  # no record to tell: the returns alone are read
    if isinstance(config, dict) and config.get("baseline") != "oracle":
        raise ValueError(f"--oracle={run} is not an oracle run (its config.json has "
                         f"--baseline={config.get('baseline')}): give the run of the oracle "
                         "flagfile (flags/<family>_oracle.flags), or draw this one as a "
                         f"curve with --run=LABEL={run}")


def check_family(runs: dict[str, str], oracle: str | None = None) -> None:
    """A ValueError if the curves (and the oracle) are runs of different task families, as
    their flags say (config.json, or an evaluation's test_config.json; a run without either
    is not compared): their returns are of other tasks, on other scales."""
    given = [(f"--run={label}={run}", run) for label, run in runs.items()]
    seen: dict[str, str] = {}  # task family -> the flag of its first run
    for flag, run in given + ([(f"--oracle={oracle}", oracle)] if oracle else []):
        run_dir = split_run(run)[0]
        family = (atomic.read_json(os.path.join(run_dir, "config.json"))
                  or atomic.read_json(os.path.join(run_dir, "test_config.json"))
                  ).get("datasource")
        if not isinstance(family, str):
            continue
        seen.setdefault(family, flag)
        if len(seen) > 1:
            (first, first_flag), (other, other_flag) = seen.items()
            raise ValueError(f"{other_flag} is a {other} run, but {first_flag} a {first} "
                             "run: a figure compares the runs of one task family; draw each "
                             "family in a figure of its own")


def check_flags(run: list[str], output: str, oracle: str | None) -> dict[str, str]:
    """The curves of the ``--run`` flags, once every flag is checked (before any run's
    returns are read): a ValueError names the first that cannot be drawn or written."""
    check_output(output)
    runs = parse_runs(run)
    if oracle is not None:  # an empty --oracle (an unset variable) is named, not skipped
        check_oracle(oracle)
    check_family(runs, oracle)
    return runs


def main(argv):
    import sys

    from absl import flags

    try:
        runs = check_flags(flags.FLAGS.run, flags.FLAGS.output, flags.FLAGS.oracle)
        path = plot(runs, flags.FLAGS.output, flags.FLAGS.oracle, flags.FLAGS.title)
    except (ValueError, OSError) as err:  # a run not evaluated, a file in the way, ...
        print(f"tf_maml.rl.figure: error: {err}", file=sys.stderr)
        return 1
    print("wrote", path)
    return 0


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_multi_string("run", None, "LABEL=RUN_DIR or LABEL=RUN_DIR@RESULT_NAME, one "
                              "curve each")
    flags.DEFINE_string("oracle", None, "run directory of the oracle (a horizontal line)")
    flags.DEFINE_string("output", "docs/figures/navigation_return.png", "the PNG to write")
    flags.DEFINE_string("title", "2D navigation, meta-test", "the figure's title, e.g. "
                        "\"half-cheetah, goal velocity, meta-test\"")
    flags.mark_flag_as_required("run")
    from tf_maml.errors import exit_on_flagfile_problem

    exit_on_flagfile_problem("tf_maml.rl.figure")
    app.run(main)
