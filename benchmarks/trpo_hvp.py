"""TRPO's Hessian-vector product of the KL, old against new, side by side in one process: the
third-order product it replaced (the gradient of (∇θ KL)·v, a tape around a tape around the
inner step's tape) against :meth:`tf_maml.rl.learner.RLMetaLearner.kl_hvp` (the exact
Gauss-Newton product Jᵀ F J v at θ_old, forward over reverse), and whole meta-iterations
with each.

    python -m benchmarks.trpo_hvp                                # half-cheetah, 40 tasks
    python -m benchmarks.trpo_hvp --families=cheetah_vel,navigation --iterations=3

Per family: one batch collected as a meta-iteration collects it, then ``--hvps`` products
with each implementation on the same random vector, alternated (the first call of each,
which traces its graph, not timed), their medians, their ratio and the largest difference
between the two products relative to the largest entry; then ``--iterations`` whole
meta-iterations (``train_step``: sampling twice, the inner step, the TRPO update) of two
learners built identically, one with each product, alternated, after a first that traces.
The two learners take the same steps up to float rounding: their step fractions and KLs are
printed side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import names, run_main  # noqa: E402
from tf_maml.reproduce_run import machine  # noqa: E402
from tf_maml.rl import training  # noqa: E402
from tf_maml.tasks import locomotion  # noqa: E402


def third_order_hvp(learner):
    """The product ``learner.kl_hvp`` replaced, for comparison only: the gradient of
    (∇θ KL)·v, nested tapes around the inner step's tape (third order)."""
    def fn(params, vector, batch):
        with tf.GradientTape(watch_accessed_variables=False) as outer_tape:
            outer_tape.watch(params)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(params)
                _, kl = learner._outer_terms(params, batch, with_surrogate=False)
            grads = tape.gradient(kl, params,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grad_dot_v = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
        return outer_tape.gradient(grad_dot_v, params,
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO)

    compiled = tf.function(fn, autograph=False)
    return lambda params, vector, batch: compiled(params, vector, batch)


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    if isinstance(out, list):
        out = [np.asarray(t) for t in out]  # wait for the values
    return time.perf_counter() - start, out


def compare(family: str, num_tasks: int, num_trajectories: int, hvps: int,
            iterations: int) -> None:
    def build():
        return training.build_learner(task_family=family, num_trajectories=num_trajectories)

    new, old = build(), build()
    old.kl_hvp = third_order_hvp(old)  # every other method is the learner's own
    rng = np.random.default_rng(0)
    tasks = new.env.sample_tasks(num_tasks, rng)
    start = time.perf_counter()
    batch, _ = new.collect(tasks, rng)
    print(f"{family}: {num_tasks} tasks x {num_trajectories} trajectories; collecting one "
          f"batch {time.perf_counter() - start:.1f} s")
    params = new.params()
    vector = new.unflat(np.random.default_rng(1).normal(size=sum(new._sizes)))
    fns = {"third-order": old.kl_hvp, "Gauss-Newton": new.kl_hvp}
    first, times, products = {}, {k: [] for k in fns}, {}
    for name, fn in fns.items():
        first[name], products[name] = timed(fn, params, vector, batch)
    for _ in range(hvps):
        for name, fn in fns.items():
            times[name].append(timed(fn, params, vector, batch)[0])
    a, b = (new.flat(products[k]) for k in fns)
    med = {k: statistics.median(t) for k, t in times.items()}
    for k in fns:
        print(f"  HVP {k}: median {med[k]:.3f} s over {hvps} (range {min(times[k]):.3f}-"
              f"{max(times[k]):.3f}; first call, tracing included, {first[k]:.1f} s)")
    ratio = med["third-order"] / med["Gauss-Newton"]
    print(f"  HVP ratio third-order / Gauss-Newton: {ratio:.1f}x; max |difference| / "
          f"max |entry| = {np.max(np.abs(a - b)) / np.max(np.abs(a)):.1e}")

    learners = {"third-order": old, "Gauss-Newton": new}
    seconds = {k: [] for k in learners}
    for it in range(iterations + 1):
        stats = {}
        for name, learner in learners.items():
            # Both learners see the same tasks and sampling noise in each iteration.
            it_rng = np.random.default_rng(100 + it)
            t, stats[name] = timed(learner.train_step,
                                   (learner.env.sample_tasks(num_tasks, it_rng), it_rng))
            if it:
                seconds[name].append(t)
        print(f"  iteration {it}{' (traces)' if not it else ''}: " + "; ".join(
            f"{k} {s['step_fraction']:.4f} of the step, KL {s['kl']:.6f}"
            for k, s in stats.items()))
    if iterations:
        med = {k: statistics.median(t) for k, t in seconds.items()}
        for k in learners:
            print(f"  meta-iteration {k}: median {med[k]:.1f} s over {iterations} (range "
                  f"{min(seconds[k]):.1f}-{max(seconds[k]):.1f})")
        print(f"  meta-iteration ratio: {med['third-order'] / med['Gauss-Newton']:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="cheetah_vel")
    ap.add_argument("--tasks", type=int, default=0,
                    help="tasks per meta-iteration (0: 20 for navigation, 40 otherwise)")
    ap.add_argument("--trajectories", type=int, default=20)
    ap.add_argument("--hvps", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=3)
    args = ap.parse_args(argv)
    families = names("families", args.families, ["navigation", *locomotion.TASK_FAMILIES],
                     "family")
    print(machine())
    for family in families:
        tasks = args.tasks or (20 if family == "navigation" else 40)
        compare(family, tasks, args.trajectories, args.hvps, args.iterations)
    return 0


if __name__ == "__main__":
    run_main(main)
