"""Meta-training step throughput of tf_maml against an independent PyTorch reference,
side by side in one run.

    python -m benchmarks.meta_step                       # every configuration, both frameworks
    python -m benchmarks.meta_step --configs=sinusoid --frameworks=tf
    python -m benchmarks.meta_step --config=omniglot5 --json --framework=tf   # one, as JSON
    python -m benchmarks.meta_step --configs=omniglot20 --task_parallelism=auto,accumulate:1

``--task_parallelism`` takes a comma-separated list: one tf_maml row per value (each in its
own process), beside the same reference run; ``accumulate:N`` is
``task_parallelism="accumulate", tasks_per_chunk=N``.

Each (configuration, framework) runs in a fresh process, so memory peaks do not mix, on the
same pre-generated synthetic batches (``benchmarks.common.make_batch``; the data pipeline is
not timed). Reported: meta-iterations/s (median over windows after warm-up), the first
step's wall time (trace + compile + run), and the increase of the process's peak RSS over its
RSS before the model was built. GFLOP/it is the reference's own count of one meta-iteration
(``torch.utils.flop_counter`` over every executed convolution and matmul, double backward
included): the same arithmetic both sides do, so it/s x GFLOP/it is each side's useful
GFLOP/s, to hold against the matmul peak printed at the top. tf_maml runs with the threads
the ``tf-maml`` command sets (``--intra_op_threads``, default 1 intra-op thread on a CPU-only
machine with several cores); the reference at ``--ref_threads`` (default 2, the machine's
cores; ``--ref_threads=1,2`` reports the faster). The PyTorch side needs
``pip install torch==2.13.0`` (benchmarks only; not a dependency of tf_maml).

Configurations (benchmarks/common.py): sinusoid (MLP 40-40, K=10+10, 25 tasks, 1 step),
omniglot5 / omniglot5_fo (conv4 64 filters stride 2 batch norm, 5-way 1-shot, 5+5, 32 tasks,
1 step, second / first order), omniglot20 (20-way 1-shot, 16 tasks, 5 steps), miniimagenet
(conv4 32 filters max-pool, 84x84x3, 5+75, 4 tasks, 5 steps).
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

from benchmarks.common import (
    CONFIGS,
    make_batch,
    names,
    peak_rss_kb,
    proc_status_kb,
    reset_peak_rss,
    run_json_child,
    run_main,
)

ROOT = Path(__file__).resolve().parents[1]


def build_tf_learner(name: str, task_parallelism: str = "auto", seed: int = 0,
                     parallel_chunks: int = 0, cache_body_features: bool = True,
                     lslr: bool = False, per_step_bn: bool = False, msl_iterations: int = 0,
                     cosine_iterations: int = 0, **learner_kwargs):
    """The MetaLearner of configuration ``name``; ``task_parallelism`` may be
    ``"accumulate:N"`` (N tasks per chunk); ``parallel_chunks`` 0: the default;
    ``cache_body_features``: the plan's;
    ``lslr``, ``per_step_bn``, ``msl_iterations`` and ``cosine_iterations`` turn MAML++'s
    options on (:mod:`tf_maml.options`); ``learner_kwargs`` go to MetaLearner (e.g.
    ``adapt="head"``; ``inner_steps`` replaces the configuration's)."""
    import keras

    from tf_maml import losses, models, options
    from tf_maml.learners import MetaLearner
    from tf_maml.mapping import ExecutionPlan

    cfg = CONFIGS[name]
    keras.utils.set_random_seed(seed)
    if cfg["net"] == "mlp":
        model = models.fc_net(cfg["input_shape"], cfg["hidden"], cfg["output_dim"], norm="None")
        loss_fn, metric_fn = losses.mse, None
    else:
        model = models.conv4(cfg["input_shape"], cfg["num_classes"],
                             num_filters=cfg["num_filters"], max_pool=cfg["max_pool"],
                             norm="batch_norm")
        loss_fn, metric_fn = losses.summed_xent(cfg["k_shot"]), losses.accuracy
    mode, _, chunk = task_parallelism.partition(":")
    inner_steps = learner_kwargs.pop("inner_steps", cfg["inner_steps"])
    clip = [options.ClipNetwork(cfg["clip_value"])] if cfg["clip_value"] is not None else []
    meta_lr = (options.cosine(cfg["meta_lr"], 1e-5, cosine_iterations) if cosine_iterations
               else cfg["meta_lr"])
    if per_step_bn:
        learner_kwargs["adapt"] = options.PerStepBatchNorm(learner_kwargs.get("adapt", "all"))
    learner = MetaLearner(
        model, loss_fn, inner_lr=options.LSLR(cfg["inner_lr"]) if lslr else cfg["inner_lr"],
        inner_steps=inner_steps, first_order=cfg["first_order"],
        objective=(options.MultiStepLoss(msl_iterations, metric_fn) if msl_iterations
                   else options.LastStep(metric_fn)),
        meta_optimizer=options.chain(*clip, options.adam(meta_lr)), **learner_kwargs)
    return learner.use_plan(ExecutionPlan(mode, tasks_per_chunk=int(chunk) if chunk else None,
                                          parallel_chunks=parallel_chunks or None,
                                          cache_body_features=cache_body_features))


def benchmark_tf(name: str, warmup: int = 3, windows: int = 5, steps_per_window: int = 5,
                 num_batches: int = 4, task_parallelism: str = "auto", seed: int = 0,
                 intra_op_threads: int = -1, parallel_chunks: int = 0) -> dict:
    import tensorflow as tf

    from tf_maml.threads import configure_threads

    # Before TensorFlow's first op, as the tf-maml command does (-1: its default).
    threads = configure_threads(intra_op_threads, CONFIGS[name]["meta_batch_size"])
    batches = []
    for i in range(num_batches):
        sx, sy, qx, qy = make_batch(name, seed=seed * 1000 + i)
        if sy.dtype.kind == "i":
            sy, qy = sy.astype("int32"), qy.astype("int32")
        batches.append(tuple(tf.constant(a) for a in (sx, sy, qx, qy)))
    load_start = os.getloadavg()[0]
    reset_ok = reset_peak_rss()
    base_kb = proc_status_kb("VmRSS")
    learner = build_tf_learner(name, task_parallelism, seed, parallel_chunks)
    step = 0

    def one():
        nonlocal step
        out = learner.train_step(batches[step % num_batches])
        step += 1
        return out

    t0 = time.perf_counter()
    first = float(one()["post_loss"])
    first_step_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        one()
    rates, last = [], first
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            out = one()
        last = float(out["post_loss"])  # waits for the window's last step
        rates.append(steps_per_window / (time.perf_counter() - t0))
    peak_kb = peak_rss_kb()
    return {
        "config": name, "framework": f"tf_maml (tensorflow {tf.__version__})",
        "task_parallelism": learner.task_mapping(batches[0]),
        "intra_op_threads": threads or "default",
        "its_per_s_median": statistics.median(rates), "its_per_s_windows": rates,
        "first_step_s": first_step_s, "peak_rss_mb": (peak_kb - base_kb) / 1024.0,
        "peak_reset": reset_ok, "loadavg_1m_start": load_start,
        "loadavg_1m_end": os.getloadavg()[0], "first_loss": first, "last_loss": last,
    }


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict:
    """What this machine's cores can do: the best of ``repeats`` float32 ``n x n`` matmuls
    in TensorFlow and PyTorch (each at its default threads; PyTorch at 2 like the
    reference), in GFLOP/s."""
    import tensorflow as tf

    out = {}
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    f = tf.function(tf.matmul)
    f(a, b).numpy()
    best = min(_timed(lambda: f(a, b).numpy()) for _ in range(repeats))
    out["tensorflow"] = 2 * n**3 / best / 1e9
    try:
        import torch
    except ImportError:
        return out
    torch.set_num_threads(2)
    x, y = torch.randn(n, n), torch.randn(n, n)
    x @ y
    best = min(_timed(lambda: x @ y) for _ in range(repeats))
    out["torch"] = 2 * n**3 / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_in_subprocess(framework: str, name: str, **kw) -> dict:
    if framework == "torch":
        from benchmarks.torch_reference import run_in_subprocess as torch_run

        return torch_run(name, **kw)
    cmd = [sys.executable, "-m", "benchmarks.meta_step", f"--config={name}", "--json",
           "--framework=tf"] + [f"--{k}={v}" for k, v in kw.items()]
    return run_json_child(cmd, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--frameworks", default="tf,torch")
    parser.add_argument("--config", help="run ONE configuration in this process")
    parser.add_argument("--framework", default="tf")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--peak", action="store_true", help="only the matmul peak, as JSON")
    parser.add_argument("--task_parallelism", default="auto",
                        help="comma-separated tf_maml modes, one row each; accumulate:N = "
                        "accumulate with N tasks per chunk")
    parser.add_argument("--intra_op_threads", type=int, default=-1,
                        help="tf_maml's intra-op threads as tf-maml's flag (-1: its default, "
                        "1 on a CPU-only machine with several cores; 0: TensorFlow's)")
    parser.add_argument("--parallel_chunks", type=int, default=0,
                        help="ExecutionPlan(parallel_chunks=...); 0: its default (one per core)")
    parser.add_argument("--ref_threads", default="2",
                        help="comma-separated torch.set_num_threads values for the reference; "
                        "the fastest is the row's reference (e.g. 1,2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps_per_window", type=int, default=5)
    args = parser.parse_args()
    configs = names("configs", args.configs, CONFIGS, "configuration")
    frameworks = names("frameworks", args.frameworks, ("tf", "torch"), "framework")
    if args.config:
        names("config", [args.config], CONFIGS, "configuration")
    if args.peak:
        print(json.dumps(matmul_peak()))
        return
    if args.config:
        result = benchmark_tf(args.config, args.warmup, args.windows, args.steps_per_window,
                              task_parallelism=args.task_parallelism,
                              intra_op_threads=args.intra_op_threads,
                              parallel_chunks=args.parallel_chunks)
        print(json.dumps(result))
        return
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.processor() or 'cpu'}; "
          f"load at start {os.getloadavg()[0]:.2f}")
    peak = run_json_child([sys.executable, "-m", "benchmarks.meta_step", "--peak"], ROOT)
    print("# float32 2048x2048 matmul, best of 5: " + ", ".join(
        f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))
    print("| config | tf_maml it/s | reference it/s | ratio | GFLOP/it | GFLOP/s tf / ref "
          "| first step tf / ref (s) | peak MB tf / ref | tf tasks via | ref threads |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    modes = args.task_parallelism.split(",")

    def cell(r, key, fmt):
        return format(r[key], fmt) if r else "-"

    for name in configs:
        kw = dict(warmup=args.warmup, windows=args.windows,
                  steps_per_window=args.steps_per_window)
        ref = None
        if "torch" in frameworks:
            runs = [run_in_subprocess("torch", name, num_threads=int(t), **kw)
                    for t in args.ref_threads.split(",")]
            ref = max(runs, key=lambda r: r["its_per_s_median"])
        for mode in modes if "tf" in frameworks else [None]:
            tf_r = (run_in_subprocess("tf", name, task_parallelism=mode,
                                      intra_op_threads=args.intra_op_threads,
                                      parallel_chunks=args.parallel_chunks, **kw)
                    if mode is not None else None)
            ratio = (f"{tf_r['its_per_s_median'] / ref['its_per_s_median']:.2f}x"
                     if tf_r and ref else "-")
            gflop = ref["gflop_per_it"] if ref else None
            rates = " / ".join("-" if r is None or gflop is None
                               else f"{r['its_per_s_median'] * gflop:.0f}" for r in (tf_r, ref))
            print(f"| {name} | {cell(tf_r, 'its_per_s_median', '.2f')} | "
                  f"{cell(ref, 'its_per_s_median', '.2f')} | {ratio} | "
                  f"{'-' if gflop is None else format(gflop, '.2f')} | {rates} | "
                  f"{cell(tf_r, 'first_step_s', '.1f')} / {cell(ref, 'first_step_s', '.1f')} | "
                  f"{cell(tf_r, 'peak_rss_mb', '.0f')} / {cell(ref, 'peak_rss_mb', '.0f')} | "
                  f"{tf_r['task_parallelism'] if tf_r else '-'} | "
                  f"{ref['num_threads'] if ref else '-'} |", flush=True)
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    run_main(main)
