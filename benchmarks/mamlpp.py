"""MAML++ against MAML: the meta-step of each, side by side in one process.

    python -m benchmarks.mamlpp --configs=miniimagenet,omniglot20

Three learners on the same synthetic batches (benchmarks.side_by_side): MAML; MAML++ during
its multi-step-loss phase (LSLR, per-step batch norm, MSL, cosine meta learning rate: one
extra query pass per inner step); MAML++ after it (LSLR and per-step batch norm only). Each
ratio is the median of the per-window ratios to MAML.

    python -m benchmarks.mamlpp --plans --configs=miniimagenet,omniglot20

times instead, with and without MSL, each of the execution plans autotuning chooses between
(tf_maml.autotune times the plain objective once per run; this checks that MSL's extra
query passes do not change which plan is fastest).
"""

from __future__ import annotations

from absl import app, flags

from benchmarks.common import CONFIGS, names, run_main
from benchmarks.side_by_side import cpu_name, side_by_side

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["miniimagenet", "omniglot20"], "benchmark configurations")
flags.DEFINE_integer("windows", 5, "timed windows per learner")
flags.DEFINE_integer("steps_per_window", 3, "meta-steps per window")
flags.DEFINE_bool("plans", False, "time autotuning's candidate plans with and without MSL")

TRICKS = {"lslr": True, "per_step_bn": True, "cosine_iterations": 50000}
VARIANTS = {
    "maml": {},
    "mamlpp_msl": dict(TRICKS, msl_iterations=10**9),  # MSL on for every timed step
    "mamlpp": TRICKS,
}


def plan_variants(name: str) -> dict[str, dict]:
    """Autotuning's candidate plans for configuration ``name`` as build_tf_learner kwargs,
    by their description."""
    from benchmarks.common import make_batch
    from benchmarks.meta_step import build_tf_learner

    learner = build_tf_learner(name, **TRICKS)
    batch = make_batch(name, seed=0)
    out = {}
    for plan in learner.plan.candidates(learner.model, batch):
        kwargs = dict(TRICKS)
        if plan.tasks_per_chunk is not None:
            kwargs.update(task_parallelism=f"accumulate:{plan.tasks_per_chunk}",
                          parallel_chunks=plan.parallel_chunks or 0)
        out[plan.describe(learner.model, batch)] = kwargs
    return out


def compare_plans() -> None:
    print("| config | plan | it/s with MSL | it/s without |")
    print("|---|---|---|---|")
    for name in FLAGS.configs:
        plans = plan_variants(name)
        with_msl = side_by_side(name, {k: dict(v, msl_iterations=10**9) for k, v in plans.items()},
                                FLAGS.windows, FLAGS.steps_per_window)
        without = side_by_side(name, plans, FLAGS.windows, FLAGS.steps_per_window)
        for plan in plans:
            print(f"| {name} | {plan} | {with_msl[plan]:.3f} | {without[plan]:.3f} |", flush=True)


def main(argv):
    del argv
    names("configs", FLAGS.configs, CONFIGS, "configuration")
    print(f"# {cpu_name()}; {FLAGS.windows} alternating windows of {FLAGS.steps_per_window} "
          "meta-steps each")
    if FLAGS.plans:
        compare_plans()
        return
    print("| config | MAML it/s | MAML++ with MSL it/s (/ MAML) | MAML++ after MSL it/s (/ MAML) |")
    print("|---|---|---|---|")
    for name in FLAGS.configs:
        r = side_by_side(name, VARIANTS, FLAGS.windows, FLAGS.steps_per_window)
        ratios = r["ratios"]
        print(f"| {name} | {r['maml']:.2f} | {r['mamlpp_msl']:.2f} "
              f"({ratios['mamlpp_msl']:.2f}x) | {r['mamlpp']:.2f} ({ratios['mamlpp']:.2f}x) |",
              flush=True)


if __name__ == "__main__":
    run_main(app.run, main)
