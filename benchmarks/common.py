"""Shapes, synthetic data and memory probes shared by the TensorFlow and PyTorch sides of
the benchmarks (torch-free, so the TensorFlow side never imports torch)."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# --------------------------------------------------------------------------
# Configurations (shapes of the original experiments)
# --------------------------------------------------------------------------

# Omniglot 5-way 1-shot; omniglot5_fo is the same with first-order meta-gradients.
_OMNIGLOT5: dict[str, Any] = {
    "net": "conv4",
    "input_shape": (28, 28, 1),
    "num_filters": 64,
    "max_pool": False,
    "num_classes": 5,
    "k_shot": 1,
    "support_size": 5,
    "query_size": 5,
    "meta_batch_size": 32,
    "inner_steps": 1,
    "inner_lr": 0.4,
    "meta_lr": 1e-3,
    "first_order": False,
    "loss": "xent",
    "clip_value": None,
}

CONFIGS: dict[str, dict[str, Any]] = {
    "sinusoid": {
        "net": "mlp",
        "input_shape": (1,),
        "hidden": (40, 40),
        "output_dim": 1,
        "num_classes": None,
        "k_shot": 10,
        "support_size": 10,
        "query_size": 10,
        "meta_batch_size": 25,
        "inner_steps": 1,
        "inner_lr": 0.01,
        "meta_lr": 1e-3,
        "first_order": False,
        "loss": "mse",
        "clip_value": None,
    },
    "omniglot5": _OMNIGLOT5,
    "omniglot5_fo": {**_OMNIGLOT5, "first_order": True},
    "omniglot20": {
        "net": "conv4",
        "input_shape": (28, 28, 1),
        "num_filters": 64,
        "max_pool": False,
        "num_classes": 20,
        "k_shot": 1,
        "support_size": 20,
        "query_size": 20,
        "meta_batch_size": 16,
        "inner_steps": 5,
        "inner_lr": 0.1,
        "meta_lr": 1e-3,
        "first_order": False,
        "loss": "xent",
        "clip_value": None,
    },
    "miniimagenet": {
        "net": "conv4",
        "input_shape": (84, 84, 3),
        "num_filters": 32,
        "max_pool": True,
        "num_classes": 5,
        "k_shot": 1,
        "support_size": 5,
        "query_size": 75,
        "meta_batch_size": 4,
        "inner_steps": 5,
        "inner_lr": 0.01,
        "meta_lr": 1e-3,
        "first_order": False,
        "loss": "xent",
        "clip_value": 10.0,
    },
}

BN_EPS = 1e-3


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _class_blocks(rng: np.random.Generator, n_way: int, n_per_class: int) -> np.ndarray:
    """Labels laid out as in the original: one block per shot, each holding
    every class once, in a freshly shuffled order."""
    return np.concatenate([rng.permutation(n_way) for _ in range(n_per_class)]).astype(np.int64)


def make_batch(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One meta-batch of synthetic tasks, deterministic in ``seed``.

    Returns ``(support_x, support_y, query_x, query_y)`` as numpy arrays.
    Sinusoid: x is ``[T, K, 1]`` float32 in [-5, 5], y = amp·sin(x − phase)
    ``[T, K, 1]`` float32.  Images: x is ``[T, N*K, H, W, C]`` (NHWC) float32
    in [0, 1] and y is ``[T, N*K]`` int64 class indices.
    """
    cfg = CONFIGS[name]
    rng = np.random.default_rng(seed)
    t = cfg["meta_batch_size"]
    ns, nq = cfg["support_size"], cfg["query_size"]
    if cfg["net"] == "mlp":
        amp = rng.uniform(0.1, 5.0, size=(t, 1, 1))
        phase = rng.uniform(0.0, math.pi, size=(t, 1, 1))
        x = rng.uniform(-5.0, 5.0, size=(t, ns + nq, 1))
        y = amp * np.sin(x - phase)
        x, y = x.astype(np.float32), y.astype(np.float32)
        return x[:, :ns], y[:, :ns], x[:, ns:], y[:, ns:]
    h, w, c = cfg["input_shape"]
    n = cfg["num_classes"]
    if c == 1:  # Omniglot-like: sparse strokes ≈ 1 on a 0 background
        sx = (rng.random((t, ns, h, w, c)) < 0.15).astype(np.float32)
        qx = (rng.random((t, nq, h, w, c)) < 0.15).astype(np.float32)
    else:
        sx = rng.random((t, ns, h, w, c), dtype=np.float32)
        qx = rng.random((t, nq, h, w, c), dtype=np.float32)
    sy = np.stack([_class_blocks(rng, n, ns // n) for _ in range(t)])
    qy = np.stack([_class_blocks(rng, n, nq // n) for _ in range(t)])
    return sx, sy, qx, qy


# --------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------


def proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_kb() -> int:
    hwm = proc_status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class UnknownName(Exception):
    """A flag names a configuration, experiment or family the benchmark does not know."""


def names(flag: str, value: str | Sequence[str], choices: Iterable[str], kind: str) -> list[str]:
    """The names flag ``--flag`` gives in ``value`` (comma-separated, or the list absl's
    ``DEFINE_list`` makes), each checked against ``choices`` before anything runs: an unknown
    one raises :class:`UnknownName`, which :func:`run_main` prints as one line naming the
    flag, the name and the valid choices (``kind``: what a name names, for that line)."""
    choices = list(choices)
    items = value.split(",") if isinstance(value, str) else list(value)
    for item in items:
        if item not in choices:
            raise UnknownName(f"--{flag}: unknown {kind} {item!r}; choose from "
                              f"{', '.join(choices)}")
    return items


def run_main(main, *args) -> None:
    """Runs a benchmark's ``main(*args)`` and exits with its code; Ctrl-C ends it with one
    line and exit code 130 instead of a traceback (a benchmark has nothing to save, and
    its children's output is captured, so only this process would print one), and a flag
    naming something unknown (:func:`names`) with one line and argparse's exit code 2."""
    try:
        code = main(*args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except UnknownName as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)


def run_json_child(cmd: list[str], root) -> dict:
    """Runs a benchmark child process from ``root`` and returns the last JSON line it printed
    (one configuration per fresh process, so memory peaks do not mix)."""
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
