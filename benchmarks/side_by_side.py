"""Learner variants timed side by side in one process (ANIL, MAML++ against MAML).

Every variant gets the same synthetic batches (benchmarks.common.make_batch); their steps
are timed in alternating windows, so a drift in the machine's speed (a background load)
hits all alike, and each ratio to the first variant is the median of the per-window ratios.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

from benchmarks.common import make_batch
from benchmarks.meta_step import build_tf_learner


def cpu_name() -> str:
    """The processor, its widest vector ISA and the core count, for the speed tables."""
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


def side_by_side(name: str, variants: dict[str, dict], windows: int, steps: int) -> dict:
    """Meta-steps per second of each variant (``{label: MetaLearner kwargs}``) of benchmark
    configuration ``name``: ``{label: median it/s}`` and ``ratios`` ``{label: median
    per-window ratio to the first variant}``."""
    import tensorflow as tf

    batches = []
    for i in range(2):
        sx, sy, qx, qy = make_batch(name, seed=i)
        batches.append(tuple(tf.constant(a) for a in (sx, sy.astype("int32"), qx,
                                                       qy.astype("int32"))))
    learners = {label: build_tf_learner(name, **kwargs) for label, kwargs in variants.items()}
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
    first = next(iter(rates))
    result = {label: statistics.median(r) for label, r in rates.items()}
    result["ratios"] = {label: statistics.median(a / b for a, b in zip(r, rates[first]))
                        for label, r in rates.items()}
    return result
