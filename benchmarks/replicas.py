"""Meta-training throughput on 1 vs 2 replicas (tf.distribute), on this machine.

    python -m benchmarks.replicas                          # sinusoid and omniglot5
    python -m benchmarks.replicas --configs=omniglot5 --windows=5 --window_seconds=3
    python -m benchmarks.replicas --config=sinusoid --json # one configuration, this process

Each configuration runs in a fresh process that splits its CPU into 2 logical devices
(``tf_maml.distribute.configure_cpu_devices``) and times, in ONE process, in alternating
timed windows (the order rotates every window, so that a busy shared machine slows all
alike), the full meta-step (``MetaLearner.train_step``: meta-gradients, all-reduce, the
Adam update with its non-finite guard) of three learners with the same model and batches:

* ``default``: no tf.distribute, one device: the path ``--distribution_strategy=default``
  runs (the baseline);
* ``mirrored x1``: MirroredStrategy over one CPU device (the cost of the strategy itself);
* ``mirrored x2``: MirroredStrategy over the 2 logical CPU devices, half the tasks each.

Batches are the synthetic ones of ``benchmarks.common.make_batch``, split over the replicas
once before timing (in training, the distributed tf.data pipeline does it ahead of the step).
Sinusoid uses 24 tasks (the paper's 25 do not split in 2). Reported: medians over windows
of it/s, and the ratio x2 / default. Logical CPU devices share the machine's cores: on a
2-core CPU, 2 replicas cannot be faster than one process already using both cores; the
numbers measure the overhead of the distributed step, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import names, run_json_child, run_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"sinusoid": 24, "omniglot5": 32}  # name in benchmarks.common: tasks per meta-batch
VARIANTS = ("default", "mirrored x1", "mirrored x2")


def run(name: str, windows: int, window_seconds: float, warmup: int, seed: int = 0) -> dict:
    """Times the three variants of ``name`` in this process (which must not have started
    TensorFlow yet: it splits the CPU into 2 logical devices first)."""
    from tf_maml import distribute

    devices = distribute.configure_cpu_devices(2)
    import tensorflow as tf

    from benchmarks.common import make_batch
    from benchmarks.meta_step import build_tf_learner

    tasks = CONFIGS[name]
    batches = []
    for i in range(4):
        sx, sy, qx, qy = (a[:tasks] for a in make_batch(name, seed=seed * 1000 + i))
        if sy.dtype.kind == "i":
            sy, qy = sy.astype("int32"), qy.astype("int32")
        batches.append(tuple(tf.constant(a) for a in (sx, sy, qx, qy)))
    strategies = {"default": None,
                  "mirrored x1": tf.distribute.MirroredStrategy(devices[:1]),
                  "mirrored x2": tf.distribute.MirroredStrategy(devices[:2])}
    learners, inputs, first_s = {}, {}, {}
    for key, strategy in strategies.items():
        if strategy is None:
            learners[key], inputs[key] = build_tf_learner(name, seed=seed), batches
        else:
            with strategy.scope():
                learners[key] = build_tf_learner(name, seed=seed)
            inputs[key] = [distribute.split_batch(strategy, b) for b in batches]
        start = time.perf_counter()
        float(learners[key].train_step(inputs[key][0])["post_loss"])
        first_s[key] = time.perf_counter() - start
        for i in range(warmup):
            out = learners[key].train_step(inputs[key][(i + 1) % len(batches)])
        float(out["post_loss"])

    rates: dict[str, list[float]] = {key: [] for key in VARIANTS}
    cpu_ms: dict[str, list[float]] = {key: [] for key in VARIANTS}
    load_start = os.getloadavg()[0]
    for w in range(windows):
        for key in VARIANTS[w % 3:] + VARIANTS[:w % 3]:
            learner, data = learners[key], inputs[key]
            steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
            while True:
                out = learner.train_step(data[steps % len(data)])
                steps += 1
                if steps % 5 == 0 and time.perf_counter() - start >= window_seconds:
                    break
            float(out["post_loss"])  # waits for the window's last step
            rates[key].append(steps / (time.perf_counter() - start))
            cpu_ms[key].append(1e3 * (time.process_time() - cpu_start) / steps)
    medians = {key: statistics.median(v) for key, v in rates.items()}
    return {
        "config": name, "tasks": tasks, "its_per_s_median": medians,
        "its_per_s_windows": rates, "first_step_s": first_s,
        # CPU time of the process (all threads) per step: what the step costs, less
        # sensitive than wall time to other processes competing for the cores.
        "cpu_ms_per_step_median": {key: statistics.median(v) for key, v in cpu_ms.items()},
        "ratio_x2_over_default": medians["mirrored x2"] / medians["default"],
        "ratio_x1_over_default": medians["mirrored x1"] / medians["default"],
        "tasks_via": learners["default"].task_mapping(batches[0]),
        "loadavg_1m_start": load_start, "loadavg_1m_end": os.getloadavg()[0],
        "tensorflow": tf.__version__,
    }


def run_in_subprocess(name: str, **kw) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.replicas", f"--config={name}", "--json"] + [
        f"--{k}={v}" for k, v in kw.items()]
    return run_json_child(cmd, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--config", help="run ONE configuration in this process")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window_seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    configs = names("configs", args.configs, CONFIGS, "configuration")
    if args.config:
        names("config", [args.config], CONFIGS, "configuration")
    kw = dict(windows=args.windows, window_seconds=args.window_seconds, warmup=args.warmup)
    if args.config:
        print(json.dumps(run(args.config, **kw)))
        return
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.processor() or 'cpu'}; "
          f"load at start {os.getloadavg()[0]:.2f}; medians of {args.windows} windows of "
          f"{args.window_seconds} s")
    print("| config | tasks | 1 replica (default) it/s | 1 replica (mirrored) it/s "
          "| 2 replicas (mirrored, 2 logical CPUs) it/s | 2 replicas / default "
          "| CPU ms/step default / x1 / x2 | first step default / x2 (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in configs:
        r = run_in_subprocess(name, **kw)
        m, c = r["its_per_s_median"], r["cpu_ms_per_step_median"]
        print(f"| {name} | {r['tasks']} ({r['tasks_via']}) | {m['default']:.2f} | "
              f"{m['mirrored x1']:.2f} | {m['mirrored x2']:.2f} | "
              f"{r['ratio_x2_over_default']:.2f}x | "
              f"{' / '.join(f'{c[k]:.1f}' for k in VARIANTS)} | "
              f"{r['first_step_s']['default']:.1f} / "
              f"{r['first_step_s']['mirrored x2']:.1f} |", flush=True)
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    run_main(main)
