"""Meta-training speed: tf.map_fn over tasks vs the batched-task path (tf_maml.mapping.batched).

Both paths run the same full meta-step (meta-gradients + the learner's Adam update with
its non-finite guard) inside one ``tf.function``, on the same synthetic Omniglot-shaped
batches, in ONE process, in alternating timed windows (the order flips every window), so
that a busy shared machine slows both alike. Reported: the first call (trace + run), the
median seconds per meta-step over windows, it/s, and the ratio map/batched (the median of
the per-window ratios and the ratio of the medians).

Configurations (the original's Omniglot settings, conv4 with 64 filters, stride 2, batch
norm, summed cross-entropy / K, accuracy metric):

* ``omniglot5``: 5-way 1-shot, 32 tasks x (5 support + 5 query), 1 inner step, α=0.4,
  second order; ``omniglot5_fo``: the same, first order;
* ``omniglot20``: 20-way 1-shot, 16 tasks x (20 + 20), 5 inner steps, α=0.1, second order.

Usage::

    python -m benchmarks.batched_vs_map                     # all three
    python -m benchmarks.batched_vs_map --configs=omniglot5 --windows=10 --steps=5
    python -m benchmarks.batched_vs_map --intra=2 --inter=1 # threading (before TF starts)
    python -m benchmarks.batched_vs_map --jit               # also batched + XLA
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback

from benchmarks.common import names, run_main

CONFIGS = {
    "omniglot5": dict(ways=5, shots=1, queries=1, tasks=32, inner_steps=1, inner_lr=0.4,
                      first_order=False),
    "omniglot5_fo": dict(ways=5, shots=1, queries=1, tasks=32, inner_steps=1, inner_lr=0.4,
                         first_order=True),
    "omniglot20": dict(ways=20, shots=1, queries=1, tasks=16, inner_steps=5, inner_lr=0.1,
                       first_order=False),
}


def _summed_xent_with_per_task(shots: int):
    """losses.summed_xent(shots) plus a ``per_task`` form over [T, B] that tf_maml.mapping.batched
    uses instead of tf.vectorized_map (needed under XLA, see
    tf_maml.mapping.batched.per_task_values)."""
    import tensorflow as tf

    from tf_maml import losses

    base = losses.summed_xent(shots)

    def loss(y_true, logits):
        return base(y_true, logits)

    def per_task(y_true, logits):
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(y_true, tf.int32), logits=logits)
        return tf.reduce_sum(ce, axis=-1) / float(shots)

    loss.per_task = per_task
    return loss


def _learner(cfg, filters: int, seed: int, per_task_loss: bool = False, mode: str = "map"):
    import keras

    from tf_maml import losses, options
    from tf_maml.learners import MetaLearner
    from tf_maml.mapping import ExecutionPlan
    from tf_maml.models import conv4

    keras.utils.set_random_seed(seed)
    model = conv4((28, 28, 1), cfg["ways"], num_filters=filters)
    loss_fn = (_summed_xent_with_per_task(cfg["shots"]) if per_task_loss
               else losses.summed_xent(cfg["shots"]))
    return MetaLearner(model, loss_fn, inner_lr=cfg["inner_lr"], inner_steps=cfg["inner_steps"],
                       first_order=cfg["first_order"], objective=options.LastStep(losses.accuracy),
                       meta_optimizer=options.adam(1e-3)).use_plan(ExecutionPlan(mode))


def _batches(cfg, count: int, seed: int):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    t, n = cfg["tasks"], cfg["ways"]
    out = []
    for _ in range(count):
        out.append((
            tf.constant(rng.uniform(size=(t, n * cfg["shots"], 28, 28, 1)).astype("float32")),
            tf.constant(np.tile(np.arange(n, dtype="int32"), (t, cfg["shots"]))),
            tf.constant(rng.uniform(size=(t, n * cfg["queries"], 28, 28, 1)).astype("float32")),
            tf.constant(np.tile(np.arange(n, dtype="int32"), (t, cfg["queries"]))),
        ))
    return out


def _step(learner, grads_fn, jit: bool):
    import tensorflow as tf

    def step(batch):
        grads, metrics = grads_fn(batch)
        return dict(metrics, applied=learner.apply_gradients(grads, metrics["post_loss"]))

    return tf.function(step, jit_compile=jit)


def run(name: str, windows: int, steps: int, filters: int, jit: bool, jit_only: bool,
        per_task_loss: bool = False, verbose: bool = True) -> dict:
    cfg = CONFIGS[name]
    data = _batches(cfg, 4, seed=0)
    paths = {}
    if not jit_only:
        map_learner = _learner(cfg, filters, seed=1)
        paths["map"] = _step(map_learner, map_learner.meta_gradients, jit=False)
        b_learner = _learner(cfg, filters, seed=1, per_task_loss=per_task_loss, mode="batched")
        paths["batched"] = _step(b_learner, b_learner.meta_gradients, jit=False)
    if jit or jit_only:
        # The loss needs a per_task form under XLA (otherwise: a recompilation per step).
        j_learner = _learner(cfg, filters, seed=1, per_task_loss=True, mode="batched")
        paths["batched_xla"] = _step(j_learner, j_learner.meta_gradients, jit=True)

    result = {"config": name, **cfg, "filters": filters, "trace_s": {}, "errors": {}}
    for key, fn in list(paths.items()):
        start = time.perf_counter()
        try:
            fn(data[0])["post_loss"].numpy()
        except Exception as e:  # noqa: BLE001 (XLA failures are reported, not fatal)
            result["errors"][key] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            if verbose:
                traceback.print_exc(limit=3)
            del paths[key]
            continue
        result["trace_s"][key] = time.perf_counter() - start
        fn(data[1])["post_loss"].numpy()  # warm-up run after tracing

    per_step = {key: [] for key in paths}
    cpu_per_step = {key: [] for key in paths}
    order = list(paths)
    for w in range(windows):
        for key in (order if w % 2 == 0 else order[::-1]):
            fn = paths[key]
            start, cpu_start = time.perf_counter(), time.process_time()
            for i in range(steps):
                out = fn(data[i % len(data)])
            out["post_loss"].numpy()
            per_step[key].append((time.perf_counter() - start) / steps)
            cpu_per_step[key].append((time.process_time() - cpu_start) / steps)

    result["median_s"] = {k: statistics.median(v) for k, v in per_step.items()}
    # Process CPU time (all threads) per step: less sensitive to other processes on the
    # machine than wall time, though spinning worker threads count too.
    result["median_cpu_s"] = {k: statistics.median(v) for k, v in cpu_per_step.items()}
    result["it_per_s"] = {k: 1.0 / v for k, v in result["median_s"].items()}
    result["windows_s"] = per_step
    if "map" in per_step:
        for key in per_step:
            if key == "map":
                continue
            paired = [m / b for m, b in zip(per_step["map"], per_step[key])]
            cpu_paired = [m / b for m, b in zip(cpu_per_step["map"], cpu_per_step[key])]
            result[f"speedup_{key}"] = {
                "median_of_window_ratios": statistics.median(paired),
                "ratio_of_medians": result["median_s"]["map"] / result["median_s"][key],
                "min_window_ratio": min(paired), "max_window_ratio": max(paired),
                "cpu_median_of_window_ratios": statistics.median(cpu_paired),
            }
    if verbose:
        _print(result)
    return result


def _print(r: dict) -> None:
    print(f"\n== {r['config']}: {r['ways']}-way {r['shots']}-shot, T={r['tasks']}, "
          f"{r['inner_steps']} inner step(s), {'first' if r['first_order'] else 'second'} "
          f"order, conv4 {r['filters']} filters")
    for key, s in r["median_s"].items():
        print(f"  {key:12s} first call {r['trace_s'][key]:7.2f} s   median {s * 1e3:8.1f} "
              f"ms/step   {1 / s:6.2f} it/s   cpu {r['median_cpu_s'][key] * 1e3:8.1f} ms/step")
    for key, err in r["errors"].items():
        print(f"  {key:12s} FAILED: {err}")
    for key in r:
        if key.startswith("speedup_"):
            sp = r[key]
            print(f"  map / {key[8:]}: median window ratio {sp['median_of_window_ratios']:.2f}x"
                  f" (ratio of medians {sp['ratio_of_medians']:.2f}x, windows "
                  f"{sp['min_window_ratio']:.2f}..{sp['max_window_ratio']:.2f}); CPU time "
                  f"{sp['cpu_median_of_window_ratios']:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="omniglot5,omniglot5_fo,omniglot20")
    ap.add_argument("--windows", type=int, default=8, help="timed windows per path")
    ap.add_argument("--steps", type=int, default=5, help="meta-steps per window")
    ap.add_argument("--filters", type=int, default=64)
    ap.add_argument("--intra", type=int, default=0, help="intra-op threads (0: TF default)")
    ap.add_argument("--inter", type=int, default=0, help="inter-op threads (0: TF default)")
    ap.add_argument("--jit", action="store_true", help="also time batched with jit_compile")
    ap.add_argument("--jit-only", action="store_true", help="only batched with jit_compile")
    ap.add_argument("--per-task-loss", action="store_true",
                    help="batched (non-XLA) path: loss with a per_task form, not vectorized_map")
    ap.add_argument("--json", action="store_true", help="print one JSON line per config")
    args = ap.parse_args(argv)
    configs = names("configs", args.configs, CONFIGS, "configuration")

    import tensorflow as tf

    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    print(f"threads: intra={tf.config.threading.get_intra_op_parallelism_threads()} "
          f"inter={tf.config.threading.get_inter_op_parallelism_threads()} (0 = TF default)")
    for name in configs:
        r = run(name, args.windows, args.steps, args.filters, args.jit, args.jit_only,
                per_task_loss=args.per_task_loss, verbose=not args.json)
        if args.json:
            print(json.dumps({**r, "intra": args.intra, "inter": args.inter}))
    return 0


if __name__ == "__main__":
    run_main(main)
