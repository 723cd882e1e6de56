"""Prepare Omniglot for tf_maml: a 28x28 PNG tree plus a compact npz cache.

    python -m data_prep.omniglot --source=../shared/data/omniglot --output=/path/to/omniglot

``--source`` holds ``images_background.zip`` and ``images_evaluation.zip`` (the archives of
Lake et al.) or the folders ``images_background/`` and ``images_evaluation/`` extracted from
them; for each of the two sets the zip is used when present, else the folder. The source is
only read, never modified.

Output (the documented interface read by ``tf_maml.tasks.omniglot``)::

    <output>/<Alphabet>/<characterNN>/<NNNN_MM>.png   28x28, both sets merged in one tree
    <output>/omniglot28.npz   cache: images uint8 [characters, drawings, 28, 28] (the pixel
                              values stored in the PNGs), names ["Alphabet/characterNN", sorted],
                              files [characters, drawings] (sorted file names)
    <output>/.complete        JSON with the counts, written last

Like the original ``resize_images.py`` every drawing goes through
``Image.resize((28, 28), resample=Image.LANCZOS)``. The Omniglot PNGs are 1-bit (mode "1"),
and for modes "1" and "P" Pillow silently replaces the filter by NEAREST (checked with
Pillow 13: LANCZOS and NEAREST give identical images for these files), so the 28x28 drawings
are nearest-neighbour samples and stay binary: 0 (black stroke) or 255 (white background) once
decoded to 8 bits, which is also what the original's ``tf.image.decode_png`` saw. Deviation: a
source in another mode than "1"/"L" is converted to "L" first (none exists in the real data).

Every file is written to a temporary name and moved into place with ``os.replace``; files whose
bytes are already right are left alone, so a rerun after an interruption completes the tree.
A rerun on a finished output only checks the marker and the file count.

With ``--format=tfds`` the output is instead a TensorFlow Datasets ``data_dir`` holding
``tf_maml_omniglot/maml_28`` (the same 28x28 drawings, MAML's 1100/100/423 character split as
splits train/validation/test) and ``tf_maml_omniglot/full_105`` (the original drawings, splits
background/evaluation), built offline by ``tf_maml.tfds.build.build_omniglot``; read them with
``tfds.load("tf_maml_omniglot/maml_28", data_dir=<output>)`` after ``import tf_maml.tfds``, or
train on them with ``--dataset_backend=tfds``. A rerun reuses the built datasets.

This module also holds the small helpers shared with ``data_prep.miniimagenet``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterable

import numpy as np
from absl import app, flags, logging
from PIL import Image

EXPECTED_NUM_CHARACTERS = 1623
EXPECTED_DRAWINGS_PER_CHARACTER = 20
IMAGE_SIZE = 28
SETS = ("images_background", "images_evaluation")
CACHE_NAME = "omniglot28.npz"
MARKER_NAME = ".complete"
FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".partial"
DEFAULT_PROGRESS_EVERY = 4000

FLAGS = flags.FLAGS


class PrepError(RuntimeError):
    """A problem with the source data or the output folder, with a message for the user."""


# ----------------------------------------------------------------------------------------------
# Helpers shared with data_prep.miniimagenet.


def atomic_write_bytes(path: str, data: bytes, fsync: bool = False) -> None:
    """Writes ``data`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = f"{path}.{os.getpid()}{PARTIAL_SUFFIX}"
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_if_changed(path: str, data: bytes) -> bool:
    """Writes ``data`` atomically unless ``path`` already holds exactly these bytes."""
    try:
        if os.path.getsize(path) == len(data):
            with open(path, "rb") as f:
                if f.read() == data:
                    return False
    except OSError:
        pass
    atomic_write_bytes(path, data)
    return True


def save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
    """Writes an uncompressed ``.npz`` (readable by ``np.load``) through a temporary file.

    Unlike ``np.savez`` the zip entries carry a fixed date, so the same arrays always give
    the same bytes (reproducible caches).
    """
    tmp = f"{path}.{os.getpid()}{PARTIAL_SUFFIX}"
    with open(tmp, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array),
                                              allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_marker(output: str, dataset: str) -> dict | None:
    """The completion marker of ``output`` if it exists and belongs to this format."""
    try:
        with open(os.path.join(output, MARKER_NAME), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    if marker.get("dataset") != dataset or marker.get("format_version") != FORMAT_VERSION:
        return None
    return marker


def write_marker(output: str, marker: dict) -> None:
    data = (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode("utf-8")
    atomic_write_bytes(os.path.join(output, MARKER_NAME), data, fsync=True)


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


def count_files(root: str, depth: int, suffixes: tuple[str, ...]) -> int:
    """Number of files ending in ``suffixes`` exactly ``depth`` folders below ``root``."""
    dirs = [root]
    for _ in range(depth):
        dirs = [e.path for d in dirs for e in os.scandir(d) if e.is_dir()]
    return sum(
        1
        for d in dirs
        for e in os.scandir(d)
        if e.is_file() and e.name.lower().endswith(suffixes) and not e.name.startswith(".")
    )


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


# ----------------------------------------------------------------------------------------------
# Omniglot.


def _set_members(source: str, set_name: str, zips: list[zipfile.ZipFile]) -> list[Member]:
    """Lists ``<Alphabet>/<character>/<file>.png`` of one set, from its zip or folder."""
    zip_path = os.path.join(source, set_name + ".zip")
    dir_path = os.path.join(source, set_name)
    members = []
    if os.path.isfile(zip_path):
        zf = open_zip(zip_path)
        zips.append(zf)
        logging.info("reading %s", zip_path)
        for info in zf.infolist():
            parts = [p for p in info.filename.split("/") if p]
            if info.is_dir() or not parts or parts[0] == "__MACOSX":
                continue
            if parts[-1].startswith(".") or not parts[-1].lower().endswith(".png"):
                continue
            if parts[0] == set_name:
                parts = parts[1:]
            if len(parts) != 3:
                raise PrepError(f"unexpected path {info.filename} in {zip_path}: expected "
                                f"{set_name}/<Alphabet>/<character>/<file>.png")
            members.append(Member(tuple(parts), f"{zip_path}:{info.filename}",
                                  lambda zf=zf, info=info: read_zip_member(zf, info)))
    elif os.path.isdir(dir_path):
        logging.info("reading %s", dir_path)
        for root, dirs, files in os.walk(dir_path):
            dirs.sort()
            rel = os.path.relpath(root, dir_path)
            parts = [] if rel == "." else rel.split(os.sep)
            for name in sorted(files):
                if name.startswith(".") or not name.lower().endswith(".png"):
                    continue
                path = os.path.join(root, name)
                if len(parts) != 2:
                    raise PrepError(f"unexpected file {path}: expected "
                                    f"{dir_path}/<Alphabet>/<character>/<file>.png")
                members.append(Member((*parts, name), path,
                                      lambda path=path: read_file(path)))
    else:
        raise PrepError(f"Omniglot source not found: neither {zip_path} nor {dir_path} exists "
                        "(--source must hold images_background.zip and images_evaluation.zip "
                        "or the folders extracted from them)")
    if not members:
        where = zip_path if os.path.isfile(zip_path) else dir_path
        raise PrepError(f"no PNG drawings found in {where}")
    return members


def _group_characters(members: Iterable[Member]) -> dict[str, list[Member]]:
    """Maps "Alphabet/characterNN" (sorted) to its drawings (sorted by file name)."""
    chars: dict[str, list[Member]] = {}
    seen: dict[tuple[str, ...], str] = {}
    for m in members:
        if m.rel in seen:
            raise PrepError(f"{m.origin} and {seen[m.rel]} would both become "
                            f"{'/'.join(m.rel)}")
        seen[m.rel] = m.origin
        chars.setdefault(f"{m.rel[0]}/{m.rel[1]}", []).append(m)
    return {name: sorted(chars[name], key=lambda m: m.rel[2]) for name in sorted(chars)}


def check_counts(chars: dict[str, list[Member]], expect_counts: bool) -> int:
    """Every character must have the same number of drawings; returns it."""
    counts = {name: len(ms) for name, ms in chars.items()}
    per_char = collections.Counter(counts.values()).most_common(1)[0][0]
    odd = [f"{n} ({c})" for n, c in counts.items() if c != per_char]
    if odd:
        raise PrepError(f"{len(odd)} characters do not have {per_char} drawings like the "
                        f"others: {', '.join(odd[:5])}")
    if expect_counts and (len(chars) != EXPECTED_NUM_CHARACTERS
                          or per_char != EXPECTED_DRAWINGS_PER_CHARACTER):
        raise PrepError(
            f"found {len(chars)} characters x {per_char} drawings, expected "
            f"{EXPECTED_NUM_CHARACTERS} x {EXPECTED_DRAWINGS_PER_CHARACTER} (incomplete "
            "source? pass --expect_counts=false only for deliberately partial data)")
    return per_char


def resize_drawing(data: bytes, origin: str) -> tuple[bytes, np.ndarray, str]:
    """The 28x28 PNG bytes of one drawing, the uint8 pixels stored in them, the source mode."""
    img = decode_image(data, origin)
    mode = img.mode
    if img.mode not in ("1", "L"):
        img = img.convert("L")
    # For mode "1" Pillow uses NEAREST whatever filter is asked (see the module docstring).
    small = img.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    png = buf.getvalue()
    # Pixels as a reader of the PNG sees them (mode "1" -> 0/255), from the bytes written.
    with Image.open(io.BytesIO(png)) as check:
        pixels = np.asarray(check.convert("L"), dtype=np.uint8)
    return png, pixels, mode


def _already_complete(output: str, expect_counts: bool) -> dict | None:
    marker = read_marker(output, "omniglot")
    if marker is None or not os.path.isfile(os.path.join(output, CACHE_NAME)):
        return None
    n_chars, per_char = marker.get("num_characters"), marker.get("drawings_per_character")
    if expect_counts and (n_chars, per_char) != (EXPECTED_NUM_CHARACTERS,
                                                 EXPECTED_DRAWINGS_PER_CHARACTER):
        return None
    try:
        n_files = count_files(output, 2, (".png",))
    except OSError:
        return None
    if n_files != marker.get("num_files"):
        logging.warning("%s has a completion marker but %d PNG files instead of %s: rebuilding",
                        output, n_files, marker.get("num_files"))
        return None
    return marker


def prepare_omniglot(source: str, output: str, expect_counts: bool = True,
                     progress_every: int = DEFAULT_PROGRESS_EVERY) -> dict:
    """Builds the 28x28 tree, the npz cache and the marker; returns the marker's content.

    Returns at once (with ``already_complete: True``) when ``output`` is already finished.
    Raises ``PrepError`` naming the offending file on bad data.
    """
    start = time.monotonic()
    marker = _already_complete(output, expect_counts)
    if marker is not None:
        logging.info("%s: already complete (%d characters x %d drawings)", output,
                     marker["num_characters"], marker["drawings_per_character"])
        return {**marker, "already_complete": True}

    with contextlib.ExitStack() as stack:
        zips: list[zipfile.ZipFile] = []
        stack.callback(lambda: [zf.close() for zf in zips])
        members = []
        for set_name in SETS:
            members += _set_members(source, set_name, zips)
        chars = _group_characters(members)
        per_char = check_counts(chars, expect_counts)
        total = len(chars) * per_char
        logging.info("Omniglot: %d characters x %d drawings from %s", len(chars), per_char,
                     source)
        expected = {part for name in chars for part in (name.split("/")[0], name)}
        expected |= {f"{name}/{m.rel[2]}" for name, drawings in chars.items() for m in drawings}
        if os.path.isdir(output):  # before anything in it is written or removed
            check_no_extra_entries(output, 2, expected, (".png",))

        os.makedirs(output, exist_ok=True)
        remove_marker(output)  # from here on the output is incomplete until the end
        if remove_partials(output):
            logging.info("removed temporary files of an interrupted run in %s", output)

        images = np.empty((len(chars), per_char, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        files = np.empty((len(chars), per_char), dtype=object)
        written = 0
        modes: collections.Counter[str] = collections.Counter()
        progress = Progress("omniglot images", total, progress_every)
        for i, (name, drawings) in enumerate(chars.items()):
            char_dir = os.path.join(output, *name.split("/"))
            os.makedirs(char_dir, exist_ok=True)
            for j, m in enumerate(drawings):
                png, images[i, j], mode = resize_drawing(m.read(), m.origin)
                modes[mode] += 1
                written += write_if_changed(os.path.join(char_dir, m.rel[2]), png)
                files[i, j] = m.rel[2]
                progress.tick()

    check_no_extra_entries(output, 2, expected, (".png",))
    save_npz_atomic(os.path.join(output, CACHE_NAME), images=images,
                    names=np.array(list(chars), dtype=str), files=files.astype(str))
    marker = {
        "dataset": "omniglot",
        "format_version": FORMAT_VERSION,
        "num_characters": len(chars),
        "num_alphabets": len({n.split("/")[0] for n in chars}),
        "drawings_per_character": per_char,
        "num_files": total,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        # Source PIL modes; mode "1" means the LANCZOS resize was in fact NEAREST.
        "source_modes": dict(sorted(modes.items())),
        "cache": CACHE_NAME,
        "source": os.path.abspath(source),
    }
    write_marker(output, marker)  # last: its presence means the output is complete
    logging.info("Omniglot done in %.1f s: %d files (%d written, %d already right) in %s",
                 time.monotonic() - start, total, written, total - written, output)
    return {**marker, "already_complete": False, "files_written": written}


# ----------------------------------------------------------------------------------------------
# Command line. Flags are defined only when the command runs, so that importing this module
# (tests, data_prep.miniimagenet) registers no global flags that could clash.


def _define_flags() -> None:
    flags.DEFINE_string("source", None, "Folder with images_background.zip and "
                        "images_evaluation.zip, or the extracted images_background/ and "
                        "images_evaluation/ folders.")
    flags.DEFINE_string("output", None, "Output folder (created if missing).")
    flags.DEFINE_enum("format", "folders", ["folders", "tfds"],
                      "folders: the 28x28 PNG tree the original reads; tfds: a TensorFlow "
                      "Datasets data_dir with tf_maml_omniglot/maml_28 and /full_105.")
    flags.DEFINE_enum("tfds_config", "all", ["all", "maml_28", "full_105"],
                      "With --format=tfds: the config(s) to build.")
    flags.DEFINE_bool("expect_counts", True, f"Require {EXPECTED_NUM_CHARACTERS} characters x "
                      f"{EXPECTED_DRAWINGS_PER_CHARACTER} drawings (false only for small test "
                      "data).")
    flags.DEFINE_integer("progress_every", DEFAULT_PROGRESS_EVERY,
                         "Log progress every this many images.")
    flags.mark_flags_as_required(["source", "output"])


def _run_tfds() -> None:
    from tf_maml.tfds import build  # TFDS is imported only for --format=tfds

    try:
        results = build.build_omniglot(FLAGS.source, FLAGS.output, FLAGS.tfds_config,
                                       expect_counts=FLAGS.expect_counts)
    except build.PrepError as e:  # not this module's PrepError when run as __main__
        logging.error("%s", e)
        sys.exit(f"ERROR: {e}")
    for summary in results.values():
        print(f"Omniglot TFDS {build.describe(summary)}")


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.format == "tfds":
        _run_tfds()
        return
    try:
        result = prepare_omniglot(FLAGS.source, FLAGS.output, FLAGS.expect_counts,
                                  FLAGS.progress_every)
    except PrepError as e:
        logging.error("%s", e)
        sys.exit(f"ERROR: {e}")
    state = "already complete" if result["already_complete"] else "done"
    print(f"Omniglot {state}: {result['num_characters']} characters x "
          f"{result['drawings_per_character']} drawings in {FLAGS.output}")


def main() -> None:
    """Console entry point (``tf-maml-prep-omniglot``)."""
    _define_flags()
    app.run(_run)


if __name__ == "__main__":
    main()
