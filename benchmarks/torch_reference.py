"""Independent PyTorch reference for MAML meta-training steps (benchmark-only).

This module re-implements one MAML meta-iteration (inner SGD loop per task,
query loss, meta-gradient, Adam step) in PyTorch, with the networks, losses and
shapes of the original code (see ``docs/original-maml.md`` section 3 in the
shared docs). It is used only by the benchmarks, to compare speed and memory
of the TensorFlow engine with an idiomatic PyTorch implementation on the very
same data.  PyTorch is *not* a dependency of the project: install it by hand
into the benchmark environment.

Implementation notes
--------------------
* Tasks are looped over in Python.  Each task starts from the meta-parameters
  θ, takes ``inner_steps`` plain SGD steps with per-task fast weights, and
  evaluates the query loss with ``torch.func.functional_call``.
* Second order: ``torch.autograd.grad(..., create_graph=True)``.  First order:
  ``create_graph=False`` and the inner gradients are detached, so the
  meta-gradient is the query gradient evaluated at the fast weights.
* The query loss of each task is back-propagated right away (``(L_q/T)
  .backward()``), accumulating into ``.grad``; this is mathematically the same
  as one backward pass on the mean over tasks, and frees each task's graph
  early (the usual way to write it in PyTorch).
* Batch norm uses batch statistics always (no running stats), no scale, an
  offset β and eps=1e-3.  The β are *not* adapted in the inner loop but are
  meta-trained by Adam.
* Stride-2 convolutions reproduce TensorFlow's ``SAME`` padding exactly
  (asymmetric zero padding, extra row/column at the bottom/right) when
  ``exact_same_padding`` is true (the default); otherwise PyTorch's symmetric
  ``padding=1`` is used, which gives the same output sizes (28→14→7→4→2) but
  a one-pixel shift of the sampling grid on even-sized inputs.
* The MiniImagenet head flattens in NHWC order, so that its weight layout
  matches a TensorFlow ``[800, N]`` kernel.
* Adam uses PyTorch's defaults (β1=0.9, β2=0.999, eps=1e-8), lr=1e-3.  (TF1's
  Adam puts eps outside the bias correction; the difference is negligible.)

Usage::

    python -m benchmarks.torch_reference --config=omniglot5 --json
    python -m benchmarks.torch_reference --selfcheck

or from Python: ``benchmark(name)``, ``run_in_subprocess(name)``,
``selfcheck()``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from benchmarks.common import (  # noqa: E402
    BN_EPS,
    CONFIGS,
    make_batch,
    peak_rss_kb,
    proc_status_kb,
    reset_peak_rss,
    run_main,
)


def to_torch(batch, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """numpy batch → torch tensors; NHWC images become contiguous NCHW."""
    sx, sy, qx, qy = batch

    def conv_x(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
        if x.dim() == 5:
            x = x.permute(0, 1, 4, 2, 3).contiguous()
        return x

    def conv_y(a: np.ndarray) -> torch.Tensor:
        y = torch.from_numpy(np.ascontiguousarray(a))
        return y if y.dtype == torch.int64 else y.to(dtype)

    return conv_x(sx), conv_y(sy), conv_x(qx), conv_y(qy)


# --------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear → ReLU hidden layers, linear output (no normalisation)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        dims = (in_dim, *hidden, out_dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        for layer in self.layers:  # truncated normal (2σ), σ=0.01; zero bias
            nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def _tf_same_pads(size: int, stride: int, k: int = 3) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class Conv4(nn.Module):
    """Four blocks conv3x3(+bias) → BN(batch stats, β only) → ReLU [→ maxpool2].

    Strided variant (Omniglot): stride 2, TF SAME padding, head = spatial mean
    → linear.  Max-pool variant (MiniImagenet): stride 1, pad 1, 2x2 max-pool,
    head = NHWC flatten → linear.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_filters: int,
        num_classes: int,
        max_pool: bool,
        exact_same_padding: bool = True,
    ):
        super().__init__()
        h, w, c = in_shape
        self.max_pool = max_pool
        self.exact_same_padding = exact_same_padding
        self.convs = nn.ModuleList(
            nn.Conv2d(c if i == 0 else num_filters, num_filters, 3) for i in range(4)
        )
        self.bn_beta = nn.ParameterList(nn.Parameter(torch.zeros(num_filters)) for _ in range(4))
        for conv in self.convs:  # Glorot uniform, fans = 9·Cin, 9·F
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        if max_pool:
            for _ in range(4):
                h, w = h // 2, w // 2
            self.head = nn.Linear(num_filters * h * w, num_classes)
            nn.init.xavier_uniform_(self.head.weight)
        else:
            self.head = nn.Linear(num_filters, num_classes)
            nn.init.normal_(self.head.weight, std=1.0)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, beta in zip(self.convs, self.bn_beta):
            if self.max_pool:
                x = F.conv2d(x, conv.weight, conv.bias, stride=1, padding=1)
            elif self.exact_same_padding:
                ph = _tf_same_pads(x.shape[-2], 2)
                pw = _tf_same_pads(x.shape[-1], 2)
                if ph[0] == ph[1] and pw[0] == pw[1]:
                    x = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=(ph[0], pw[0]))
                else:
                    x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
                    x = F.conv2d(x, conv.weight, conv.bias, stride=2)
            else:
                x = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
            x = F.batch_norm(x, None, None, weight=None, bias=beta, training=True, eps=BN_EPS)
            x = F.relu(x)
            if self.max_pool:
                x = F.max_pool2d(x, 2, 2)
        if self.max_pool:
            x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC order, like TF's reshape
        else:
            x = x.mean(dim=(2, 3))
        return self.head(x)


def build_model(
    name: str, seed: int = 0, exact_same_padding: bool = True, **overrides
) -> nn.Module:
    cfg = {**CONFIGS[name], **overrides}
    torch.manual_seed(seed)
    if cfg["net"] == "mlp":
        return MLP(cfg["input_shape"][0], tuple(cfg["hidden"]), cfg["output_dim"])
    return Conv4(
        tuple(cfg["input_shape"]),
        cfg["num_filters"],
        cfg["num_classes"],
        cfg["max_pool"],
        exact_same_padding=exact_same_padding,
    )


def adapted_names(model: nn.Module) -> list[str]:
    """Parameters adapted in the inner loop: every conv/linear weight and bias
    (BN offsets are excluded)."""
    return [n for n, _ in model.named_parameters() if not n.startswith("bn_beta")]


# --------------------------------------------------------------------------
# MAML
# --------------------------------------------------------------------------


def task_loss(cfg: dict[str, Any], out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if cfg["loss"] == "mse":
        return F.mse_loss(out, y)
    # Original: per-example softmax CE / K, summed by tf.gradients / reduce_sum.
    return F.cross_entropy(out, y, reduction="sum") / cfg["k_shot"]


def adapt(model, cfg, names, xs, ys, first_order: bool, create_graph: bool | None = None):
    """Inner loop for one task; returns the fast-weight dict."""
    params = dict(model.named_parameters())
    fast = {n: params[n] for n in names}
    if create_graph is None:
        create_graph = not first_order
    for _ in range(cfg["inner_steps"]):
        loss = task_loss(cfg, functional_call(model, fast, (xs,)), ys)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        if first_order:
            grads = [g.detach() for g in grads]
        fast = {n: w - cfg["inner_lr"] * g for (n, w), g in zip(fast.items(), grads)}
    return fast


def accumulate_meta_gradients(
    model, cfg, batch, names=None, backward_per_task: bool = True
) -> float:
    """Add ∇θ of (1/T)·Σ_t L_query(task t) into ``.grad``; returns the loss.

    ``backward_per_task`` (default) back-propagates each task's query loss as
    soon as it is computed, so only one task's graph is alive at a time;
    otherwise all task graphs are kept and one backward runs on the mean
    (same gradients, higher peak memory, closer to an engine that maps over
    all tasks at once)."""
    sx, sy, qx, qy = batch
    names = adapted_names(model) if names is None else names
    n_tasks = sx.shape[0]
    losses = []
    for t in range(n_tasks):
        fast = adapt(model, cfg, names, sx[t], sy[t], cfg["first_order"])
        loss_q = task_loss(cfg, functional_call(model, fast, (qx[t],)), qy[t]) / n_tasks
        if backward_per_task:
            loss_q.backward()
            loss_q = loss_q.detach()
        losses.append(loss_q)
    total = torch.stack(losses).sum()
    if not backward_per_task:
        total.backward()
    return total.item()


def meta_step(model, opt, cfg, batch, names=None, backward_per_task: bool = True) -> float:
    """One full meta-iteration: forward + inner loops + backward + Adam."""
    opt.zero_grad(set_to_none=True)
    loss = accumulate_meta_gradients(model, cfg, batch, names, backward_per_task)
    clip = cfg.get("clip_value")
    if clip is not None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.clamp_(-clip, clip)
    opt.step()
    return loss


def benchmark(
    name: str,
    warmup: int = 3,
    windows: int = 5,
    steps_per_window: int = 5,
    num_threads: int = 2,
    num_batches: int = 4,
    seed: int = 0,
    exact_same_padding: bool = True,
    backward_per_task: bool = True,
) -> dict[str, Any]:
    """Time meta-iterations of configuration ``name`` on pre-generated data.

    ``warmup`` includes the first step (reported as ``first_step_s``).
    ``peak_rss_mb`` is the increase of the process's peak RSS over the RSS
    just before the model is built (data already generated and converted);
    ``peak_rss_abs_mb`` is the absolute peak since then.  Run each config in a
    fresh process (``run_in_subprocess``) so that peaks do not mix.
    """
    cfg = CONFIGS[name]
    torch.set_num_threads(num_threads)
    batches = [to_torch(make_batch(name, seed=seed * 1000 + i)) for i in range(num_batches)]

    load_start = os.getloadavg()[0]
    reset_ok = reset_peak_rss()
    base_kb = proc_status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    model = build_model(name, seed=seed, exact_same_padding=exact_same_padding)
    names = adapted_names(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["meta_lr"])

    step = 0

    def one() -> float:
        nonlocal step
        batch = batches[step % num_batches]
        loss = meta_step(model, opt, cfg, batch, names, backward_per_task)
        step += 1
        return loss

    t0 = time.perf_counter()
    first_loss = one()
    first_step_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        one()
    rates = []
    last_loss = first_loss
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            last_loss = one()
        rates.append(steps_per_window / (time.perf_counter() - t0))
    peak_kb = peak_rss_kb()
    if not math.isfinite(last_loss):
        raise RuntimeError(f"{name}: non-finite meta-loss {last_loss}")
    # The work of one meta-iteration, counted by PyTorch itself over every executed
    # convolution and matmul (forward, backward and, second order, double backward) of
    # one more step, after the timing and the memory peak.
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        one()
    return {
        "gflop_per_it": counter.get_total_flops() / 1e9,
        "config": name,
        "framework": f"torch {torch.__version__}",
        "num_threads": num_threads,
        "warmup": warmup,
        "windows": windows,
        "steps_per_window": steps_per_window,
        "its_per_s_median": statistics.median(rates) if rates else float("nan"),
        "its_per_s_windows": rates,
        "first_step_s": first_step_s,
        "peak_rss_mb": (peak_kb - base_kb) / 1024.0,
        "peak_rss_abs_mb": peak_kb / 1024.0,
        "baseline_rss_mb": base_kb / 1024.0,
        "peak_reset": reset_ok,
        "loadavg_1m_start": load_start,
        "loadavg_1m_end": os.getloadavg()[0],
        "first_loss": first_loss,
        "last_loss": last_loss,
        "exact_same_padding": exact_same_padding,
        "backward_per_task": backward_per_task,
    }


def run_in_subprocess(name: str, timeout: float | None = None, **kw) -> dict[str, Any]:
    """Run ``benchmark(name, **kw)`` in a fresh Python process; returns its dict."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.torch_reference",
        f"--config={name}",
        "--json",
    ]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            cmd.append(f"{flag}={value}")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    proc = subprocess.run(
        cmd,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    return json.loads(lines[-1])


# --------------------------------------------------------------------------
# Self-check: meta-gradient vs. central finite differences (float64)
# --------------------------------------------------------------------------


def _meta_objective(model, cfg, batch, names) -> float:
    """(1/T)·Σ_t L_q(φ_t(θ)) evaluated without building a second-order graph."""
    sx, sy, qx, qy = batch
    n_tasks = sx.shape[0]
    total = 0.0
    for t in range(n_tasks):
        fast = adapt(model, cfg, names, sx[t], sy[t], first_order=True)
        with torch.no_grad():
            total += task_loss(cfg, functional_call(model, fast, (qx[t],)), qy[t]).item()
    return total / n_tasks


def _fd_check(model, cfg, batch, coords, eps, rtol, atol, label, directions: int = 2) -> float:
    names = adapted_names(model)
    model.zero_grad(set_to_none=True)
    accumulate_meta_gradients(model, cfg, batch, names)
    params = dict(model.named_parameters())
    worst = 0.0
    for pname, idx in coords:
        p = params[pname]
        analytic = p.grad.reshape(-1)[idx].item()
        flat = p.data.reshape(-1)
        orig = flat[idx].item()
        flat[idx] = orig + eps
        plus = _meta_objective(model, cfg, batch, names)
        flat[idx] = orig - eps
        minus = _meta_objective(model, cfg, batch, names)
        flat[idx] = orig
        numeric = (plus - minus) / (2 * eps)
        err = abs(analytic - numeric)
        tol = atol + rtol * max(abs(analytic), abs(numeric))
        worst = max(worst, err / tol)
        if err > tol:
            raise AssertionError(
                f"{label}: {pname}[{idx}] autograd {analytic:.10g} vs FD {numeric:.10g}"
            )
    # Directional derivatives along random directions touching every parameter.
    gen = torch.Generator().manual_seed(len(coords))
    plist = list(params.values())
    for k in range(directions):
        vs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in plist]
        analytic = sum((p.grad * v).sum().item() for p, v in zip(plist, vs))
        origs = [p.data.clone() for p in plist]
        vals = []
        for sign in (1.0, -1.0):
            for p, o, v in zip(plist, origs, vs):
                p.data.copy_(o + sign * eps * v)
            vals.append(_meta_objective(model, cfg, batch, names))
        for p, o in zip(plist, origs):
            p.data.copy_(o)
        numeric = (vals[0] - vals[1]) / (2 * eps)
        err = abs(analytic - numeric)
        tol = atol + rtol * max(abs(analytic), abs(numeric))
        worst = max(worst, err / tol)
        if err > tol:
            raise AssertionError(
                f"{label}: direction {k} autograd {analytic:.10g} vs FD {numeric:.10g}"
            )
    return worst


def selfcheck(verbose: bool = True) -> dict[str, float]:
    """Second-order meta-gradients agree with central finite differences of
    θ ↦ (1/T)·Σ_t L_q(θ − α∇L_s(θ)) in float64, and first-order ones with the
    query gradient at the fast weights.  Raises AssertionError on mismatch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny float64 ops; threads only add overhead
    try:
        return _selfcheck(verbose)
    finally:
        torch.set_num_threads(threads)


def _selfcheck(verbose: bool) -> dict[str, float]:
    results: dict[str, float] = {}
    gen = torch.Generator().manual_seed(123)

    # Sinusoid MLP 1-40-40-1, 2 tasks, all parameters checked.
    cfg = {**CONFIGS["sinusoid"], "meta_batch_size": 2}
    model = build_model("sinusoid", seed=1).double()
    with torch.no_grad():  # larger weights than the 0.01 init, for a sharper test
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    sx, sy, qx, qy = to_torch(make_batch("sinusoid", seed=7), torch.float64)
    batch = (sx[:2], sy[:2], qx[:2], qy[:2])
    # every coordinate of the output layer, 40 random ones of every other tensor
    pick = np.random.default_rng(11)
    coords = [
        (n, int(i))
        for n, p in model.named_parameters()
        for i in (
            range(p.numel())
            if n.startswith("layers.2")
            else pick.choice(p.numel(), size=min(40, p.numel()), replace=False)
        )
    ]
    results["sinusoid_second_order"] = _fd_check(
        model, cfg, batch, coords, eps=1e-5, rtol=1e-5, atol=1e-8, label="sinusoid SO"
    )
    so_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    accumulate_meta_gradients(model, cfg, batch, backward_per_task=False)
    joint_err = max((p.grad - so_grads[n]).abs().max().item() for n, p in model.named_parameters())
    assert joint_err < 1e-12, f"per-task vs joint backward differ by {joint_err}"
    results["sinusoid_joint_vs_per_task_backward_max_abs"] = joint_err

    # First order: meta-gradient == ∇ L_q at the (detached) fast weights.
    cfg_fo = {**cfg, "first_order": True}
    names = adapted_names(model)
    model.zero_grad(set_to_none=True)
    accumulate_meta_gradients(model, cfg_fo, batch, names)
    fo_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for t in range(2):
        fast = adapt(model, cfg_fo, names, batch[0][t], batch[1][t], first_order=True)
        fast = {n: w.detach().requires_grad_(True) for n, w in fast.items()}
        lq = task_loss(cfg_fo, functional_call(model, fast, (batch[2][t],)), batch[3][t]) / 2
        for n, g in zip(fast, torch.autograd.grad(lq, list(fast.values()))):
            ref[n] += g
    fo_err = max((fo_grads[n] - ref[n]).abs().max().item() for n in ref)
    assert fo_err < 1e-12, f"first-order meta-gradient mismatch {fo_err}"
    so_minus_fo = max((fo_grads[n] - so_grads[n]).abs().max().item() for n in ref)
    results["sinusoid_first_order_max_abs_err"] = fo_err

    # Small conv net (strided + TF SAME, BN β, 2 inner steps), random coordinates.
    cfg_c = {
        **CONFIGS["omniglot5"],
        "num_filters": 4,
        "num_classes": 3,
        "support_size": 3,
        "query_size": 3,
        "meta_batch_size": 2,
        "inner_steps": 2,
        "inner_lr": 0.1,
        "input_shape": (10, 10, 1),
    }
    arch = ("num_filters", "num_classes", "input_shape")
    model_c = build_model("omniglot5", seed=2, **{k: cfg_c[k] for k in arch}).double()
    rng = np.random.default_rng(3)
    batch_c = to_torch(
        (
            rng.random((2, 3, 10, 10, 1)),
            np.stack([rng.permutation(3) for _ in range(2)]).astype(np.int64),
            rng.random((2, 3, 10, 10, 1)),
            np.stack([rng.permutation(3) for _ in range(2)]).astype(np.int64),
        ),
        torch.float64,
    )
    named = list(model_c.named_parameters())
    coords_c = []
    for n, p in named:
        for i in rng.choice(p.numel(), size=min(4, p.numel()), replace=False):
            coords_c.append((n, int(i)))
    results["conv_second_order"] = _fd_check(
        model_c,
        cfg_c,
        batch_c,
        coords_c,
        eps=1e-6,
        rtol=1e-5,
        atol=1e-8,
        label="conv SO",
    )

    # Max-pool variant (MiniImagenet-like) with clipping irrelevant here.
    cfg_m = {
        **CONFIGS["miniimagenet"],
        "num_filters": 3,
        "num_classes": 2,
        "support_size": 2,
        "query_size": 4,
        "meta_batch_size": 2,
        "inner_steps": 2,
        "inner_lr": 0.05,
        "input_shape": (16, 16, 2),
    }
    model_m = build_model("miniimagenet", seed=4, **{k: cfg_m[k] for k in arch}).double()
    batch_m = to_torch(
        (
            rng.random((2, 2, 16, 16, 2)),
            np.stack([rng.permutation(2) for _ in range(2)]).astype(np.int64),
            rng.random((2, 4, 16, 16, 2)),
            np.stack([np.tile(rng.permutation(2), 2) for _ in range(2)]).astype(np.int64),
        ),
        torch.float64,
    )
    coords_m = []
    for n, p in model_m.named_parameters():
        for i in rng.choice(p.numel(), size=min(4, p.numel()), replace=False):
            coords_m.append((n, int(i)))
    results["maxpool_second_order"] = _fd_check(
        model_m,
        cfg_m,
        batch_m,
        coords_m,
        eps=1e-6,
        rtol=1e-5,
        atol=1e-8,
        label="maxpool SO",
    )

    # Shapes of the real networks.
    for name in ("omniglot5", "miniimagenet"):
        m = build_model(name)
        sx = to_torch(make_batch(name, 0))[0]
        out = m(sx[0])
        assert out.shape == (
            CONFIGS[name]["support_size"],
            CONFIGS[name]["num_classes"],
        ), out.shape
    results["sinusoid_so_minus_fo_max_abs"] = so_minus_fo
    if verbose:
        for k, v in results.items():
            print(f"selfcheck {k}: {v:.3g}")
        print("selfcheck OK")
    return results


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS))
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--selfcheck", action="store_true")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--steps-per-window", type=int, default=5)
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--num-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exact-same-padding", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--backward-per-task", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    if args.selfcheck:
        selfcheck()
        if not args.config:
            return 0
    if not args.config:
        ap.error("--config or --selfcheck is required")
    res = benchmark(
        args.config,
        warmup=args.warmup,
        windows=args.windows,
        steps_per_window=args.steps_per_window,
        num_threads=args.num_threads,
        num_batches=args.num_batches,
        seed=args.seed,
        exact_same_padding=args.exact_same_padding,
        backward_per_task=args.backward_per_task,
    )
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    run_main(main)
