"""TensorFlow's start-up notices on a machine without a GPU, kept out of the output.

Importing TensorFlow 2.21 on a CPU-only machine prints, from C++ to the process's stderr::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use ...
    To enable the following instructions: AVX2 ... rebuild TensorFlow with the appropriate ...
    E0000 ... cuda_platform.cc:52] failed call to cuInit: ... UNKNOWN ERROR (303)

(the first three twice, once per TensorFlow library that logs them), the last an "error"
that only says that the machine has no GPU. Most are logged before TensorFlow reads
TF_CPP_MIN_LOG_LEVEL, so no level hides them, and a level that hid the cuInit line (3) would
hide every real error too; CUDA_VISIBLE_DEVICES does not stop the cuInit call either.

So :func:`import_tensorflow` (the first thing ``import tf_maml`` does, and with it every
console command) imports TensorFlow, and lists its devices (when the cuInit call is made),
with the stderr file descriptor sent to a temporary file, then writes back every line in
order except these notices; the cuInit line only when
the machine has no CUDA driver (no ``/dev/nvidia*`` and no libcuda to load): with a driver a
failed cuInit is a real error. Any other line, warning or error, is kept. With
``TF_CPP_MIN_LOG_LEVEL=0`` (all of TensorFlow's messages) nothing is dropped.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import glob
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

# One pattern per notice line (bytes: the lines come from C++, in whatever encoding).
NOTICES = tuple(re.compile(p) for p in (
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    rb"STDERR\r?$",
    rb"I\d{4} [^\]]* port\.cc:\d+\] oneDNN custom operations are on\.",
    rb"I\d{4} [^\]]* cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    rb"I\d{4} [^\]]* cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    rb"To enable the following instructions: .* rebuild TensorFlow with the appropriate "
    rb"compiler flags\.\r?$",
))
NO_GPU_CUINIT = re.compile(rb"E\d{4} [^\]]* cuda_platform\.cc:\d+\] failed call to cuInit: ")


def cuda_driver_present() -> bool:
    """Whether the machine may have a CUDA GPU: an NVIDIA device node (or WSL's GPU
    device), or a CUDA driver library the dynamic loader finds."""
    if glob.glob("/dev/nvidia*") or os.path.exists("/dev/dxg"):
        return True
    return ctypes.util.find_library("cuda") is not None


def notices_to_drop(environ=os.environ, driver: bool | None = None) -> list[re.Pattern]:
    """The patterns of the lines :func:`import_tensorflow` drops (none if the user asked for
    all of TensorFlow's messages with ``TF_CPP_MIN_LOG_LEVEL=0``)."""
    if environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":
        return []
    if driver is None:
        driver = cuda_driver_present()
    return list(NOTICES) + ([] if driver else [NO_GPU_CUINIT])


@contextlib.contextmanager
def stderr_without(drop: Sequence[re.Pattern]) -> Iterator[None]:
    """Inside the block, what is written to file descriptor 2 (C++ and Python alike) is
    held back; after it, every line that matches none of ``drop`` is written there, in
    order. A process whose stderr cannot be duplicated runs the block unfiltered."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):
        saved = None
    if saved is None or not drop:
        if saved is not None:
            os.close(saved)
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held.read().splitlines(keepends=True)
                            if not any(p.match(line) for p in drop))
            while kept:
                kept = kept[os.write(2, kept):]


def import_tensorflow() -> None:
    """Imports TensorFlow without its start-up notices (see the module docstring); nothing
    to do if it is imported already."""
    if "tensorflow" in sys.modules:
        return
    drop = notices_to_drop()
    with stderr_without(drop):
        import tensorflow as tf

        if NO_GPU_CUINIT in drop:
            # The cuInit call comes when the devices are first listed: here, held back. (This
            # leaves threads and logical devices configurable: it starts no runtime.)
            tf.config.list_physical_devices()
