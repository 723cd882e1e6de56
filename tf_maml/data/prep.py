"""What the Omniglot and MiniImageNet preparations share: their error, the completion
marker, archive reading and image decoding; files are written whole (:mod:`tf_maml.atomic`).

Used by ``tf_maml.data.omniglot``, ``tf_maml.data.miniimagenet`` and the TFDS builders of
``tf_maml.tfds``; the ``data_prep`` commands are thin command lines over them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import time
import zipfile
from collections.abc import Callable

import numpy as np
from absl import logging
from PIL import Image

from tf_maml import atomic
from tf_maml.errors import dangling_link, dangling_link_problem

MARKER_NAME = ".complete"  # written last: its presence means a prepared folder is complete
FORMAT_VERSION = 1
PARTIAL_SUFFIX = atomic.TEMP_SUFFIX  # what an interrupted write leaves

class PrepError(RuntimeError):
    """A problem with the source data or the output folder, with a message for the user."""


@contextlib.contextmanager
def writing_output(output: str):
    """Turns an OSError inside the block (the output folder is a file, read-only, full: the
    source's read errors are PrepErrors already) into a :class:`PrepError` naming the file,
    the reason and the fix. Whatever was written stays: a rerun completes it."""
    try:
        yield
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        dangling = dangling_link(output)
        if dangling:  # else "File exists ... a file is in the way"
            raise PrepError(f"cannot write {output}: {dangling_link_problem(output)}; mount or "
                            f"create {os.readlink(dangling)}, or give another --output") from err
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = (f"free some space on the disk of {output}, then run the same command again "
                   "(it completes the output)")
        elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            fix = f"make {output} writable, or give another --output"
        elif err.errno in (errno.ENOTDIR, errno.EEXIST):
            fix = (f"{output} must be a folder, and a file is in the way (at that path or "
                   "above it): give another --output (a new folder, or one this command "
                   "prepared)")
        else:
            fix = f"check {output}, then run the same command again"
        raise PrepError(f"cannot write {err.filename or output}: {reason}; {fix}") from err



def check_output_outside(output: str, read_folders: list[str]) -> None:
    """Fails if ``output`` is one of the source folders ``read_folders`` or lies inside one:
    the prepared files keep the source's names (``<Alphabet>/<character>/<file>.png``,
    ``<file>.jpg``), so preparing there would overwrite the source, which is only read."""
    out = os.path.realpath(output)
    for folder in read_folders:
        src = os.path.realpath(folder)
        if out == src or out.startswith(src.rstrip(os.sep) + os.sep):
            raise PrepError(f"output folder {output} is inside the source folder {folder}: "
                            "preparing there would overwrite the source files, which are "
                            "only read; give an --output outside it")


def write_if_changed(path: str, data: bytes) -> bool:
    """Writes ``data`` atomically unless ``path`` already holds exactly these bytes."""
    try:
        if os.path.getsize(path) == len(data):
            with open(path, "rb") as f:
                if f.read() == data:
                    return False
    except OSError:
        pass
    atomic.write(path, data)
    return True


def save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
    """Writes an uncompressed ``.npz`` (readable by ``np.load``) whole, synced to the disk.

    Unlike ``np.savez`` the zip entries carry a fixed date, so the same arrays always give
    the same bytes (reproducible caches).
    """
    with atomic.replacing(path, fsync=True) as f, \
            zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def read_marker(output: str, dataset: str) -> dict | None:
    """The completion marker of ``output`` if it exists, is whole and belongs to this format
    (``dataset``, :data:`FORMAT_VERSION`); None otherwise."""
    try:
        with open(os.path.join(output, MARKER_NAME), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    if marker.get("dataset") != dataset or marker.get("format_version") != FORMAT_VERSION:
        return None
    # A damaged (hand-edited) marker is no marker: its readers take a split's entry as a dict.
    splits = marker.get("splits", {})
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
        return None
    return marker


def write_marker(output: str, marker: dict) -> None:
    data = (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode("utf-8")
    atomic.write(os.path.join(output, MARKER_NAME), data, fsync=True)


def remove_marker(output: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output, MARKER_NAME))


def remove_partials(output: str) -> int:
    """Deletes temporary files left in ``output`` by an interrupted run; returns how many."""
    removed = 0
    for root, _, files in os.walk(output):
        for name in files:
            if name.endswith(PARTIAL_SUFFIX):
                os.remove(os.path.join(root, name))
                removed += 1
    return removed


def start_output(output: str) -> None:
    """Creates ``output`` if needed and marks it incomplete (no marker) until the final
    ``write_marker``; deletes the temporary files of an interrupted run."""
    os.makedirs(output, exist_ok=True)
    remove_marker(output)
    if remove_partials(output):
        logging.info("removed temporary files of an interrupted run in %s", output)

def image_paths(root: str, depth: int, suffixes: tuple[str, ...]) -> list[str]:
    """The files ending in ``suffixes`` exactly ``depth`` folders below ``root``."""
    dirs = [root]
    for _ in range(depth):
        dirs = [e.path for d in dirs for e in os.scandir(d) if e.is_dir()]
    return [e.path for d in dirs for e in os.scandir(d)
            if e.is_file() and e.name.lower().endswith(suffixes) and not e.name.startswith(".")]


def count_files(root: str, depth: int, suffixes: tuple[str, ...]) -> int:
    """Number of files ending in ``suffixes`` exactly ``depth`` folders below ``root``."""
    return len(image_paths(root, depth, suffixes))


# What a whole image file starts and ends with, by file suffix: (format, first bytes, last
# bytes). Reading these few bytes finds empty, foreign and cut-short files in a whole prepared
# tree in seconds (MiniImageNet's 60000 files: docs/data.md), where decoding it would take
# minutes. Every file data_prep writes has both: Pillow writes them, and a source JPEG is
# copied byte for byte only if it has them (see ``to_84_jpeg``).
SIGNATURES = {".png": ("PNG", b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
              ".jpg": ("JPEG", b"\xff\xd8\xff", b"\xff\xd9"),
              ".jpeg": ("JPEG", b"\xff\xd8\xff", b"\xff\xd9")}


def signature_problem(head: bytes, tail: bytes, size: int, suffix: str) -> str | None:
    """What is wrong with an image file of ``size`` bytes that starts with ``head`` and ends
    with ``tail`` for its ``suffix`` (:data:`SIGNATURES`), or None if nothing visibly is."""
    kind, start, end = SIGNATURES[suffix.lower()]
    if size == 0:
        return "empty"
    if not head.startswith(start):
        return f"not a {kind} file"
    if size < len(start) + len(end) or not tail.endswith(end):
        return f"cut short: no {kind} end marker"
    return None


def file_problem(path: str) -> str | None:
    """:func:`signature_problem` of the image file at ``path`` (two small reads), or why it
    cannot be read."""
    suffix = os.path.splitext(path)[1]
    _, start, end = SIGNATURES[suffix.lower()]
    try:
        with open(path, "rb", buffering=0) as f:  # unbuffered: two small reads, 25% faster
            head = f.read(len(start))
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - len(end)))
            tail = f.read()
    except OSError as e:
        return f"unreadable: {e.strerror}"
    return signature_problem(head, tail, size, suffix)


def damaged_files(paths: list[str]) -> list[tuple[str, str]]:
    """(path, what is wrong) for each image file of ``paths`` that :func:`file_problem`
    finds damaged."""
    return [(path, problem) for path in paths if (problem := file_problem(path)) is not None]


def describe_damaged(damaged: list[tuple[str, str]]) -> str:
    """E.g. "2 image files are damaged, e.g. a.png (empty), b.png (not a PNG file)"."""
    shown = ", ".join(f"{path} ({problem})" for path, problem in damaged[:3])
    if len(damaged) == 1:
        return f"1 image file is damaged: {shown}"
    return f"{len(damaged)} image files are damaged, e.g. {shown}"


def tree_is_intact(root: str, depth: int, suffixes: tuple[str, ...]) -> bool:
    """Whether every image file ``depth`` folders below ``root`` looks whole
    (:func:`file_problem`); logs the damaged ones, which a rebuild rewrites from the source."""
    damaged = damaged_files(image_paths(root, depth, suffixes))
    if damaged:
        logging.warning("%s has a completion marker but %s: rewriting them from the source",
                        root, describe_damaged(damaged))
    return not damaged


def check_no_extra_entries(
    root: str, depth: int, expected: set[str], suffixes: tuple[str, ...]
) -> None:
    """Fails if ``root`` holds class folders or image files that this build did not write.

    ``expected`` holds paths relative to ``root`` with "/" separators: the class folders
    (``depth`` levels) and the image files inside them. Stray entries would make the tree
    disagree with the npz cache, so they are reported instead of silently kept.
    """
    extra = []
    level = [""]
    for _ in range(depth):
        nxt = []
        for rel in level:
            for e in os.scandir(os.path.join(root, rel) if rel else root):
                if e.is_dir():
                    child = f"{rel}/{e.name}" if rel else e.name
                    (nxt if child in expected else extra).append(child)
        level = nxt
    for rel in level:
        for e in os.scandir(os.path.join(root, rel)):
            child = f"{rel}/{e.name}"
            if e.name.lower().endswith(suffixes) and child not in expected:
                extra.append(child)
    if extra:
        shown = ", ".join(sorted(extra)[:5])
        raise PrepError(
            f"output folder {root} holds {len(extra)} entries that this build did not write "
            f"(e.g. {shown}); remove them or use an empty --output"
        )


class Progress:
    """Logs ``what: done/total`` every ``every`` items and at the end."""

    def __init__(self, what: str, total: int, every: int):
        self.what, self.total, self.every = what, total, max(1, every)
        self.done = 0
        self.start = time.monotonic()

    def tick(self) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            pct = 100.0 * self.done / max(1, self.total)
            elapsed = time.monotonic() - self.start
            logging.info("%s: %d/%d (%.0f%%, %.1f s)", self.what, self.done, self.total, pct,
                         elapsed)


def open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise PrepError(f"cannot open zip archive {path} (missing, truncated or corrupt?): "
                        f"{e}") from e


def read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return zf.read(info)
    except Exception as e:  # BadZipFile (CRC), zlib.error, EOFError on truncation, OSError
        raise PrepError(f"cannot read {info.filename} from zip archive {zf.filename} "
                        f"(truncated or corrupt?): {e}") from e


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PrepError(f"cannot read {path}: {e}") from e


def decode_image(data: bytes, origin: str) -> Image.Image:
    """Fully decodes an image (so truncation is detected) or names ``origin`` in the error."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        raise PrepError(f"cannot decode image {origin} (truncated or corrupt?): {e}") from e
    return img


@dataclasses.dataclass(frozen=True)
class Member:
    """One source file: where it goes and how to read it."""

    rel: tuple[str, ...]  # output path components
    origin: str  # for messages
    read: Callable[[], bytes]
