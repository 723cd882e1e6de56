"""TensorFlow's start-up notices on a machine without a GPU stay out of the commands' output
(tf_maml.tf_startup); every other line on stderr is kept."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

from tf_maml import tf_startup

# Lines TensorFlow 2.21 printed on this CPU-only machine, verbatim (the notices), and lines
# that must never be dropped.
BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = (b"I0000 00:00:1796524795.458571    5998 port.cc:153] oneDNN custom operations are on. "
          b"You may see slightly different numerical results due to floating-point round-off "
          b"errors from different computation orders. To turn them off, set the environment "
          b"variable `TF_ENABLE_ONEDNN_OPTS=0`.")
NO_DRIVER = (b"I0000 00:00:1796524795.459069    5998 cudart_stub.cc:31] Could not find cuda "
             b"drivers on your machine, GPU will not be used.")
CPU_GUARD = (b"I0000 00:00:1796524795.521143    5998 cpu_feature_guard.cc:227] This TensorFlow "
             b"binary is optimized to use available CPU instructions in performance-critical "
             b"operations.")
CPU_GUARD_2 = (b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, "
               b"rebuild TensorFlow with the appropriate compiler flags.")
CUINIT = (b"E0000 00:00:1796524799.313473    5998 cuda_platform.cc:52] failed call to cuInit: "
          b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
REAL = [b"E0000 00:00:1796524799.5    5998 some_kernel.cc:12] a real error",
        b"W0000 00:00:1796524799.6    5998 other.cc:3] a real warning",
        b"Traceback (most recent call last):"]
NOISE = re.compile(r"^E0000|cuInit|Could not find cuda|oneDNN custom operations|cpu_feature_guard",
                   re.MULTILINE)


def _write_lines(lines):
    os.write(2, b"".join(line + b"\n" for line in lines))


def test_notices_are_dropped_and_every_other_line_kept_in_order(capfd):
    lines = [BANNER, ONEDNN, REAL[0], NO_DRIVER, CPU_GUARD, CPU_GUARD_2, REAL[1], CUINIT,
             REAL[2]]
    capfd.readouterr()
    with tf_startup.stderr_without(tf_startup.notices_to_drop(environ={}, driver=False)):
        _write_lines(lines)
    assert capfd.readouterr().err.encode().splitlines() == REAL
    # With a CUDA driver, a failed cuInit is a real error: kept.
    with tf_startup.stderr_without(tf_startup.notices_to_drop(environ={}, driver=True)):
        _write_lines(lines)
    assert capfd.readouterr().err.encode().splitlines() == [REAL[0], REAL[1], CUINIT, REAL[2]]
    # TF_CPP_MIN_LOG_LEVEL=0 asks for all of TensorFlow's messages: nothing is dropped.
    assert tf_startup.notices_to_drop(environ={"TF_CPP_MIN_LOG_LEVEL": "0"}, driver=False) == []


def test_a_command_on_a_machine_without_a_gpu_prints_no_cuda_errors(tmp_path):
    # The condition of the test (true here and in CI): no NVIDIA device and no CUDA driver.
    assert not glob.glob("/dev/nvidia*") and not tf_startup.cuda_driver_present()
    command = os.path.join(os.path.dirname(sys.executable), "tf-maml")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # a newcomer's
    # --helpfull imports TensorFlow (and lists its devices, where the cuInit call is made)
    # before it prints the flags.
    proc = subprocess.run([command, "--helpfull"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert "--export_dir" in proc.stdout, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not NOISE.findall(proc.stderr), proc.stderr
