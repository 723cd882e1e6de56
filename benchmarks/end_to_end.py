"""The whole training command, end to end: ``tf-maml --flagfile=flags/<experiment>.flags``
for 500 meta-iterations on the real data (sinusoid: 5000, as it prints every 1000), data
loading, validation and checkpointing included, as a user runs it.

    python -m benchmarks.end_to_end --omniglot_dir=data/omniglot_resized \\
        --miniimagenet_dir=data/miniimagenet
    python -m benchmarks.end_to_end --experiments=sinusoid_maml_k10,omniglot_5way_1shot \\
        --omniglot_dir=... --extra=--intra_op_threads=0     # compare a flag

Each experiment runs in a fresh process in a temporary log directory (deleted after). The
parent timestamps the command's progress lines as they arrive: reported are the wall time
of the whole command (Python and TensorFlow start-up, data loading, tracing, 500
iterations, the validation and checkpoints the original's schedule makes), the time until
the first progress line (iteration 100; sinusoid 1000), and the meta-iterations/s from
there to the last (what decides a long run: 60000 iterations at that rate are the last
column). Beside them: the command's user and system CPU seconds (the operating system's
accounting of the finished child; system time is the kernel's, e.g. page faults of buffers
mapped and unmapped every step), its peak RSS (the whole process: Python, TensorFlow, the
data, the prefetched meta-batches) and, unless ``--meta_step=False``, the same configuration's
meta-step alone (``benchmarks/meta_step.py``: synthetic batches, no data pipeline, fresh
process) and the ratio end to end / meta-step: what the data pipeline, logging, validation
and the process around the step cost. Experiments whose data folder is not given are
skipped, with a line saying so. Environment variables reach both children, e.g.
``TF_ENABLE_ONEDNN_OPTS=0 python -m benchmarks.end_to_end ...``: TensorFlow's kernels on a
processor without AVX-512 VNNI/BF16 (oneDNN off by default there).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import names, run_main

ROOT = Path(__file__).resolve().parents[1]
DATA_FLAG = {"omniglot": "omniglot_dir", "miniimagenet": "miniimagenet_dir"}
PROGRESS = re.compile(r"^\s*\[(\d+)/(\d+) ")
# The benchmarks/meta_step.py configuration of each paper flagfile (same shapes and plan).
META_STEP_CONFIG = {"sinusoid_maml_k10": "sinusoid", "omniglot_5way_1shot": "omniglot5",
                    "omniglot_20way_1shot": "omniglot20",
                    "miniimagenet_5way_1shot": "miniimagenet"}


def _datasource(flagfile: Path) -> str:
    for line in flagfile.read_text().splitlines():
        if line.startswith("--datasource="):
            return line.split("=", 1)[1].strip()
    return "sinusoid"


def run_one(experiment: str, iterations: int, data_dir: str | None, extra: list[str]) -> dict:
    flagfile = ROOT / "flags" / f"{experiment}.flags"
    logdir = tempfile.mkdtemp(prefix="tf_maml_e2e_")
    cmd = [sys.executable, "-m", "tf_maml.main", f"--flagfile={flagfile}",
           f"--metatrain_iterations={iterations}", f"--logdir={logdir}",
           "--test_after_train=False"] + ([f"--data_dir={data_dir}"] if data_dir else []) + extra
    seen: dict[int, float] = {}
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        tail = []
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            match = PROGRESS.match(line)
            if match:
                seen[int(match.group(1))] = time.perf_counter() - t0
        # This child's own accounting (CPU times, peak RSS), as the kernel kept it.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}:\n{''.join(tail)}")
    first = min(seen, default=None)
    last = max(seen, default=None)
    rate = ((last - first) / (seen[last] - seen[first])
            if first is not None and last is not None and last > first else None)
    return {"experiment": experiment, "wall_s": wall, "iterations": last,
            "to_first_s": seen.get(first), "first": first, "its_per_s": rate,
            "user_s": usage.ru_utime, "system_s": usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024.0}


def meta_step_rate(experiment: str) -> float | None:
    """it/s of the experiment's configuration in benchmarks/meta_step.py (tf_maml side, the
    tf-maml command's default threads and plan), in a fresh process."""
    from benchmarks.meta_step import run_in_subprocess

    name = META_STEP_CONFIG.get(experiment)
    return run_in_subprocess("tf", name)["its_per_s_median"] if name else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="sinusoid_maml_k10,omniglot_5way_1shot,"
                        "omniglot_20way_1shot,miniimagenet_5way_1shot")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--sinusoid_iterations", type=int, default=5000)
    parser.add_argument("--omniglot_dir")
    parser.add_argument("--miniimagenet_dir")
    parser.add_argument("--extra", action="append", default=[],
                        help="a flag passed on to every tf-maml command (repeatable)")
    parser.add_argument("--meta_step", default="True", choices=["True", "False"],
                        help="also run the meta-step alone (benchmarks/meta_step.py, the "
                        "default plan and threads: --extra flags do not reach it) for the "
                        "ratio end to end / meta-step")
    args = parser.parse_args()
    experiments = names("experiments", args.experiments,
                        sorted(p.stem for p in (ROOT / "flags").glob("*.flags")), "experiment")
    print(f"# {platform.node()}: {os.cpu_count()} cores, load at start "
          f"{os.getloadavg()[0]:.2f}; extra flags: {' '.join(args.extra) or 'none'}; "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}")
    print("| experiment | iterations | wall time (s) | until the first progress line (s) "
          "| it/s from there on | user / system CPU (s) | system / user | peak RSS (MiB) "
          "| meta-step it/s | end to end / meta-step | 60000 iterations at that rate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for experiment in experiments:
        source = _datasource(ROOT / "flags" / f"{experiment}.flags")
        data_dir = getattr(args, DATA_FLAG[source]) if source in DATA_FLAG else None
        if source in DATA_FLAG and not data_dir:
            print(f"| {experiment} | skipped: pass --{DATA_FLAG[source]} |" + " |" * 9,
                  flush=True)
            continue
        iterations = args.sinusoid_iterations if source == "sinusoid" else args.iterations
        r = run_one(experiment, iterations, data_dir, args.extra)
        rate = r["its_per_s"]
        step_rate = meta_step_rate(experiment) if args.meta_step == "True" else None
        eta = "-" if not rate else f"{60000 / rate / 3600:.2f} h"
        print(f"| {experiment} | {r['iterations']} | {r['wall_s']:.0f} | "
              f"{'-' if r['to_first_s'] is None else format(r['to_first_s'], '.1f')} | "
              f"{'-' if rate is None else format(rate, '.2f')} | "
              f"{r['user_s']:.0f} / {r['system_s']:.1f} | "
              f"{r['system_s'] / max(r['user_s'], 1e-9):.1%} | {r['peak_rss_mb']:.0f} | "
              f"{'-' if step_rate is None else format(step_rate, '.2f')} | "
              f"{'-' if not (rate and step_rate) else format(rate / step_rate, '.0%')} | "
              f"{eta} |", flush=True)
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    run_main(main)
