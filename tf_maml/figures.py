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


def load_run(run_dir: str):
    """(config, learner restored from the latest checkpoint) of a finished run."""
    from tf_maml import experiment
    from tf_maml.checkpoint import learner_checkpointer, restore_for_test

    config, learner = experiment.run_learner(os.path.join(run_dir, "config.json"))
    restore_for_test(learner_checkpointer(learner, run_dir), -1)
    return config, learner


def result_matrix(run_dir: str) -> tuple[np.ndarray, str]:
    paths = sorted(glob.glob(os.path.join(run_dir, "test_ubs*_stepsize*.npy")))
    if not paths:
        raise FileNotFoundError(f"no test_ubs*_stepsize*.npy in {run_dir}: evaluate the run "
                                "first (--train=False)")
    return np.load(paths[0]), os.path.basename(paths[0])[:-4]


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
    fig.savefig(path, dpi=120)
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv):
    from absl import flags

    flags_ = flags.FLAGS
    os.makedirs(flags_.output_dir, exist_ok=True)
    runs = {"MAML": flags_.maml_run, "pretrained": flags_.pretrained_run}
    print("wrote", figure2(runs, os.path.join(flags_.output_dir, "sinusoid_figure2.png")))
    curves = dict(runs)
    for extra in flags_.extra_run or []:
        label, _, run_dir = extra.partition("=")
        curves[label] = run_dir
    print("wrote", figure3(curves, os.path.join(flags_.output_dir, "sinusoid_figure3.png")))


def run():
    """Console entry point ``tf-maml-figures``."""
    from absl import app, flags

    flags.DEFINE_string("maml_run", None, "run directory of a finished MAML sinusoid run")
    flags.DEFINE_string("pretrained_run", None, "run directory of the pretrained baseline")
    flags.DEFINE_multi_string("extra_run", None, "LABEL=RUN_DIR, more curves for Figure 3")
    flags.DEFINE_string("output_dir", "docs/figures", "where to write the PNGs")
    flags.mark_flags_as_required(["maml_run", "pretrained_run"])
    app.run(main)


if __name__ == "__main__":
    run()
