"""ANIL against MAML: the meta-step of each, side by side in one process.

    python -m benchmarks.anil --configs=miniimagenet,omniglot20

ANIL (``adapt_layers="head"``) takes the inner gradient for the head's weights only, so the
inner loop's backward pass stops at the head instead of running through the four conv
layers. Both learners get the same synthetic batches (benchmarks.common.make_batch); their
steps are timed in alternating windows, so a drift in the machine's speed hits both alike,
and the ratio is the median of the per-window-pair ratios.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

from absl import app, flags

from benchmarks.common import make_batch
from benchmarks.meta_step import build_tf_learner

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["miniimagenet", "omniglot20"], "benchmark configurations")
flags.DEFINE_integer("windows", 5, "timed windows per learner")
flags.DEFINE_integer("steps_per_window", 3, "meta-steps per window")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), platform.machine())
    flags_line = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    isa = "AVX-512" if " avx512f" in flags_line else "AVX2" if " avx2" in flags_line else ""
    return f"{name}, {isa}, {os.cpu_count()} cores"


def compare(name: str, windows: int, steps: int) -> dict:
    import tensorflow as tf

    batches = []
    for i in range(2):
        sx, sy, qx, qy = make_batch(name, seed=i)
        batches.append(tuple(tf.constant(a) for a in (sx, sy.astype("int32"), qx,
                                                       qy.astype("int32"))))
    learners = {"maml": build_tf_learner(name), "anil": build_tf_learner(name,
                                                                        adapt_layers="head")}
    for learner in learners.values():  # compile and warm up
        for b in batches:
            float(learner.train_step(b)["post_loss"])
    rates: dict[str, list[float]] = {k: [] for k in learners}
    for _ in range(windows):
        for key, learner in learners.items():
            t0 = time.perf_counter()
            for i in range(steps):
                out = learner.train_step(batches[i % 2])
            float(out["post_loss"])
            rates[key].append(steps / (time.perf_counter() - t0))
    ratios = [a / m for a, m in zip(rates["anil"], rates["maml"])]
    return {"config": name, "maml": statistics.median(rates["maml"]),
            "anil": statistics.median(rates["anil"]), "ratio": statistics.median(ratios)}


def main(argv):
    del argv
    print(f"# {cpu_name()}; {FLAGS.windows} alternating windows of {FLAGS.steps_per_window} "
          "meta-steps each")
    print("| config | MAML it/s | ANIL it/s | ANIL / MAML |")
    print("|---|---|---|---|")
    for name in FLAGS.configs:
        r = compare(name, FLAGS.windows, FLAGS.steps_per_window)
        print(f"| {name} | {r['maml']:.2f} | {r['anil']:.2f} | {r['ratio']:.2f}x |", flush=True)


if __name__ == "__main__":
    app.run(main)
