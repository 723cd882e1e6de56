"""MAML++ against MAML: the meta-step of each, side by side in one process.

    python -m benchmarks.mamlpp --configs=miniimagenet,omniglot20

Three learners on the same synthetic batches (benchmarks.side_by_side): MAML; MAML++ during
its multi-step-loss phase (LSLR, per-step batch norm, MSL, cosine meta learning rate: one
extra query pass per inner step); MAML++ after it (LSLR and per-step batch norm only). Each
ratio is the median of the per-window ratios to MAML.
"""

from __future__ import annotations

from absl import app, flags

from benchmarks.side_by_side import cpu_name, side_by_side

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["miniimagenet", "omniglot20"], "benchmark configurations")
flags.DEFINE_integer("windows", 5, "timed windows per learner")
flags.DEFINE_integer("steps_per_window", 3, "meta-steps per window")

TRICKS = {"lslr": True, "per_step_bn": True, "cosine_annealing_iterations": 50000}
VARIANTS = {
    "maml": {},
    "mamlpp_msl": dict(TRICKS, msl_iterations=10**9),  # MSL on for every timed step
    "mamlpp": TRICKS,
}


def main(argv):
    del argv
    print(f"# {cpu_name()}; {FLAGS.windows} alternating windows of {FLAGS.steps_per_window} "
          "meta-steps each")
    print("| config | MAML it/s | MAML++ with MSL it/s (/ MAML) | MAML++ after MSL it/s (/ MAML) |")
    print("|---|---|---|---|")
    for name in FLAGS.configs:
        r = side_by_side(name, VARIANTS, FLAGS.windows, FLAGS.steps_per_window)
        ratios = r["ratios"]
        print(f"| {name} | {r['maml']:.2f} | {r['mamlpp_msl']:.2f} "
              f"({ratios['mamlpp_msl']:.2f}x) | {r['mamlpp']:.2f} ({ratios['mamlpp']:.2f}x) |",
              flush=True)


if __name__ == "__main__":
    app.run(main)
