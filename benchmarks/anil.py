"""ANIL against MAML: the meta-step of each, side by side in one process.

    python -m benchmarks.anil --configs=miniimagenet,omniglot20

ANIL (``adapt="head"``) takes the inner gradient for the head's weights only, so the
inner loop's backward pass stops at the head instead of running through the four conv
layers. Both learners get the same synthetic batches, timed in alternating windows
(benchmarks.side_by_side); the ratio is the median of the per-window-pair ratios.

ANIL's inner loop runs the body once per task and the head alone at each step (the body
does not change there, :class:`tf_maml.adapt.Split`). A third learner runs the whole model at
every inner step instead (``ExecutionPlan(cache_body_features=False)``): the ratio of the
two medians is what that saves. A fourth, ANIL with one inner step, is the bound: it still
runs one support pass, as ANIL now does.
"""

from __future__ import annotations

from absl import app, flags

from benchmarks.common import CONFIGS, names, run_main
from benchmarks.side_by_side import cpu_name, side_by_side

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["miniimagenet", "omniglot20"], "benchmark configurations")
flags.DEFINE_integer("windows", 5, "timed windows per learner")
flags.DEFINE_integer("steps_per_window", 3, "meta-steps per window")


def main(argv):
    del argv
    names("configs", FLAGS.configs, CONFIGS, "configuration")
    print(f"# {cpu_name()}; {FLAGS.windows} alternating windows of {FLAGS.steps_per_window} "
          "meta-steps each")
    print("| config | MAML it/s | ANIL it/s | ANIL / MAML | ANIL, whole model at every "
          "step, it/s (ANIL / it) | ANIL, 1 inner step, it/s (/ ANIL) |")
    print("|---|---|---|---|---|---|")
    variants = {"maml": {}, "anil": {"adapt": "head"},
                "anil_whole": {"adapt": "head", "cache_body_features": False},
                "anil_1step": {"adapt": "head", "inner_steps": 1}}
    for name in FLAGS.configs:
        r = side_by_side(name, variants, FLAGS.windows, FLAGS.steps_per_window)
        saved, bound = r["anil"] / r["anil_whole"], r["anil_1step"] / r["anil"]
        print(f"| {name} | {r['maml']:.2f} | {r['anil']:.2f} | {r['ratios']['anil']:.2f}x "
              f"| {r['anil_whole']:.2f} ({saved:.2f}x) | {r['anil_1step']:.2f} ({bound:.2f}x) |",
              flush=True)


if __name__ == "__main__":
    run_main(app.run, main)
