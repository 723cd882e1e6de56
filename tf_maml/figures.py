"""Figures like the paper's sinusoid Figures 2 and 3, from finished runs.

    tf-maml-figures --maml_run=logs/sine/<maml exp_string> \\
        --pretrained_run=logs/sine/<pretrained exp_string> --output_dir=docs/figures

Figure 2: one task: the true curve, the K support points, and the predictions of MAML and of
the pretrained model after 0, 1 and 10 gradient steps. Figure 3: query MSE against the
number of gradient steps (mean and 95% interval over the evaluated tasks), read from the
``test_ubs{K}_stepsize{α}.npy`` files that ``--train=False`` (or training) wrote.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from tf_maml import atomic


def load_run(run_dir: str):
    """(config, learner restored from the latest checkpoint) of a finished run."""
    from tf_maml import experiment
    from tf_maml.checkpoint import learner_checkpointer, restore_for_test

    config, learner = experiment.run_learner(os.path.join(run_dir, "config.json"))
    restore_for_test(learner_checkpointer(learner, run_dir), -1)
    return config, learner


def result_matrix(run_dir: str) -> tuple[np.ndarray, str]:
    """The per-task matrix of the run's evaluation and its name; a FigureError if there is
    none or it cannot be read."""
    paths = sorted(glob.glob(os.path.join(glob.escape(run_dir), "test_ubs*_stepsize*.npy")))
    if not paths:
        raise FigureError(f"no test_ubs*_stepsize*.npy in {run_dir}: evaluate the run "
                          "first (its training command with --train=False)")
    return (load_matrix(paths[0], "its training command with --train=False"),
            os.path.basename(paths[0])[:-4])


def read_matrix(path: str) -> np.ndarray:
    """The ``[tasks, steps + 1]`` numbers of an evaluation in the ``.npy`` at ``path``; a
    ValueError saying what is wrong (to follow the path; the fix is the caller's) if it is
    missing, cut short, garbled or not such a matrix. A result set a killed evaluation
    left half replaced in its folder is completed first (:func:`atomic.complete_interrupted`):
    else this read the earlier evaluation's matrix beside the new one's table."""
    atomic.complete_interrupted(os.path.dirname(path) or os.curdir)
    try:
        values = np.load(path)
    except (OSError, ValueError, EOFError) as err:  # EOFError: an empty file
        # NumPy's words for a garbled file would advise allow_pickle=True.
        why = getattr(err, "strerror", None) or "cut short or garbled"
        raise ValueError(f"cannot be read ({why})") from None
    if values.ndim != 2 or not values.size or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"holds a {values.dtype} array of shape {values.shape}, not the "
                         "numbers of [tasks, steps + 1]")
    return values


def load_matrix(path: str, again: str) -> np.ndarray:
    """:func:`read_matrix`, its error a FigureError naming the file and ``again``, the
    command that writes it again."""
    try:
        return read_matrix(path)
    except ValueError as err:
        raise FigureError(f"{path} {err}: evaluate the run again to write it ({again})") \
            from None


def figure2(runs: dict[str, str], path: str, seed: int = 3, steps=(0, 1, 10)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tf_maml.tasks.sinusoid import SinusoidTasks

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    grid = np.linspace(-5, 5, 200)[None, :, None]
    amp = phase = support_x = None
    for ax, (label, run_dir) in zip(axes[0], runs.items()):
        config, learner = load_run(run_dir)
        tasks = SinusoidTasks(config.update_batch_size, 1, oracle=config.baseline == "oracle")
        if amp is None:  # the same task and points for every panel
            amp, phase = tasks.sample_params(1, rng)
            support_x = rng.uniform(-5, 5, size=(1, config.update_batch_size, 1))
        support_y = (amp * np.sin(support_x - phase)).astype(np.float32)
        sx = tasks.inputs(support_x, amp, phase)[0]
        ax.plot(grid[0, :, 0], (amp * np.sin(grid - phase))[0, :, 0], "r", label="ground truth")
        ax.plot(support_x[0, :, 0], support_y[0, :, 0], "^", color="purple",
                label="used for grad")
        styles = {0: ":", 1: "--", 10: "-"}
        for step in steps:
            fast = learner.adapt(sx, support_y[0], num_steps=step)
            pred = learner.predict(tasks.inputs(grid, amp, phase)[0], fast).numpy()[:, 0]
            name = "pre-update" if step == 0 else f"{step} grad step" + ("s" if step > 1 else "")
            ax.plot(grid[0, :, 0], pred, styles.get(step, "-"), color="green", label=name)
        ax.set_title(f"{label}, K={config.update_batch_size}")
        ax.set_ylim(-5.5, 5.5)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic.replacing(path) as f:  # a kill mid-write leaves the old figure whole
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def figure3(runs: dict[str, str], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tf_maml.evaluate import summarize

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, run_dir in runs.items():
        values, name = result_matrix(run_dir)
        means, _, ci95 = summarize(values)
        steps = np.arange(len(means))
        ax.errorbar(steps, means, yerr=ci95, marker="o", ms=3, capsize=2,
                    label=f"{label} ({name.split('_', 1)[1]})")
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("mean squared error")
    ax.set_title("k-shot regression, meta-test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic.replacing(path) as f:  # a kill mid-write leaves the old figure whole
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def split_run(run: str) -> tuple[str, str]:
    """``RUN_DIR[@NAME]`` (an RL curve's run: its ``NAME.npy``, default test_returns) as
    (run_dir, name): a folder that exists is read whole, even if its path holds an ``@``;
    else the name is what follows the last ``@``."""
    if "@" not in run or os.path.isdir(run):
        return run, ""
    run_dir, _, name = run.rpartition("@")
    return run_dir, name


def split_curve(item: str) -> tuple[str, str]:
    """``LABEL=RUN_DIR`` (a curve flag's value) as (label, run): cut at the first ``=`` after
    which a path exists, since a label may hold one ("MAML K=5", as the report's), and so
    may a folder ("lr=0.1"); at the first ``=`` if none does. ("", "") without one."""
    cuts = [i for i, c in enumerate(item) if c == "="]
    for i in cuts:
        run = item[i + 1:]
        if os.path.exists(split_run(run)[0]):
            return item[:i], run
    return (item[:cuts[0]], item[cuts[0] + 1:]) if cuts else ("", "")


FIGURE_NAMES = ("sinusoid_figure2.png", "sinusoid_figure3.png")  # in --output_dir


class FigureError(ValueError):
    """A run directory the figures cannot be drawn from; the message names the flag and the
    fix."""


def check_run(flag: str, run_dir: str) -> dict:
    """Raises FigureError unless ``run_dir`` is a trained sinusoid run directory; returns its
    flags (its config.json, as :func:`tf_maml.experiment.run_config` reads and checks it)."""
    import dataclasses

    from tf_maml import experiment
    from tf_maml.errors import ConfigError, path_problem

    problem = path_problem(flag, run_dir)  # else "not a run directory", of one a shell lists
    if problem:
        raise FigureError(f"--{flag}: {problem}")
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FigureError(f"--{flag}={run_dir} is not a run directory (no readable "
                          "config.json in it): give the run directory of a trained sinusoid "
                          "run, logs/sine/<its exp_string>")
    try:  # the reader of every run's flags: a hand-edited file is named with its key
        config = dataclasses.asdict(experiment.run_config(path))
    except ConfigError as err:
        raise FigureError(f"--{flag}={run_dir}: {err}") from None
    datasource = config["datasource"]
    if datasource != "sinusoid":
        raise FigureError(f"--{flag}={run_dir} is a {datasource} run: the figures are of "
                          "sinusoid runs")
    if not glob.glob(os.path.join(glob.escape(run_dir), "model-*.index")):
        raise FigureError(f"--{flag}={run_dir} holds no checkpoint: train the run first")
    return config


def _meta_trained(config: dict) -> bool:
    """Whether a run's config.json meta-trained it (the oracle's iterations all pretrain)."""
    return config.get("baseline") in (None, "None", "") and config.get(
        "metatrain_iterations", 0) > 0


def check_roles(maml_run: str, maml: dict, pretrained_run: str, pretrained: dict) -> None:
    """Raises FigureError if the run given as MAML's was not meta-trained, or the pretrained
    baseline's was: the figures would label each curve with the other's name."""
    swapped = (f"; the two look swapped: --maml_run={pretrained_run} "
               f"--pretrained_run={maml_run}")
    if not _meta_trained(maml):
        raise FigureError(
            f"--maml_run={maml_run} was not meta-trained (--metatrain_iterations="
            f"{maml.get('metatrain_iterations')}, --baseline={maml.get('baseline')}): give a "
            "meta-trained run" + (swapped if _meta_trained(pretrained) else ""))
    if _meta_trained(pretrained):
        raise FigureError(
            f"--pretrained_run={pretrained_run} is meta-trained (--metatrain_iterations="
            f"{pretrained.get('metatrain_iterations')}): give the pretrained baseline's run "
            "(--pretrain_iterations=N --metatrain_iterations=0), and add this one to Figure 3 "
            f"with --extra_run=LABEL={pretrained_run} if you want its curve")


def draw(maml_run: str, pretrained_run: str, extra_runs, output_dir: str) -> list[str]:
    """Figures 2 and 3 into ``output_dir``; their paths. Every run directory is checked
    before anything is drawn or written."""
    from tf_maml.errors import path_problem

    problem = path_problem("output_dir", output_dir)
    if problem:
        raise FigureError(f"--output_dir: {problem}")
    runs = {"MAML": maml_run, "pretrained": pretrained_run}
    curves = dict(runs)
    for extra in extra_runs or []:
        label, run_dir = split_curve(extra)
        if not (label and run_dir):
            raise FigureError(f"--extra_run expects LABEL=RUN_DIR, got {extra!r}")
        if label in curves:  # else one curve replaced the other under its label
            raise FigureError(f"--extra_run={extra}: the label {label} is taken (by "
                              f"{curves[label]}): give each curve a label of its own")
        curves[label] = run_dir
    maml = check_run("maml_run", maml_run)
    pretrained = check_run("pretrained_run", pretrained_run)
    for run_dir in list(curves.values())[2:]:
        check_run("extra_run", run_dir)
    check_roles(maml_run, maml, pretrained_run, pretrained)
    for run_dir in curves.values():
        result_matrix(run_dir)  # there and whole: else Figure 2 was written, then a traceback
    paths = [os.path.join(output_dir, name) for name in FIGURE_NAMES]
    for path in paths:  # else Figure 2 was replaced, then Figure 3 could not be
        if os.path.isdir(path):
            raise FigureError(f"--output_dir={output_dir}: {path} is a folder, where the "
                              "figure goes: move it away, or give another --output_dir")
    import re

    from tf_maml import rundir
    from tf_maml.checkpoint import CheckpointError

    try:
        with rundir.writing(output_dir, "write the figures", arg="output_dir"):
            os.makedirs(output_dir, exist_ok=True)
            return [figure2(runs, paths[0]), figure3(curves, paths[1])]
    except rundir.RunDirError as err:  # a file in the way, a full or read-only disk
        raise FigureError(str(err).replace("`output_dir`", "--output_dir")) from None
    except CheckpointError as err:  # a run's checkpoint damaged: said before Figure 2 is
        # written; its fix names tf-maml's `flags`.
        raise FigureError(re.sub(r"`(\w+)`", r"--\1", str(err))) from None


def main(argv):
    import sys

    from absl import flags

    f = flags.FLAGS
    try:
        paths = draw(f.maml_run, f.pretrained_run, f.extra_run, f.output_dir)
    except FigureError as err:
        print(f"tf-maml-figures: error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print("wrote", path)
    return 0


def run():
    """Console entry point ``tf-maml-figures``."""
    from absl import app, flags

    flags.DEFINE_string("maml_run", None, "run directory of a finished MAML sinusoid run")
    flags.DEFINE_string("pretrained_run", None, "run directory of the pretrained baseline")
    flags.DEFINE_multi_string("extra_run", None, "LABEL=RUN_DIR, more curves for Figure 3")
    flags.DEFINE_string("output_dir", "docs/figures", "where to write the PNGs")
    flags.mark_flags_as_required(["maml_run", "pretrained_run"])
    from tf_maml.errors import exit_on_flagfile_problem

    exit_on_flagfile_problem("tf-maml-figures")
    app.run(main)


if __name__ == "__main__":
    run()
