"""Omniglot preparation: the 28x28 PNG tree plus a compact npz cache, from Lake et al.'s archives.

``prepare_omniglot(source, output)`` is what ``python -m data_prep.omniglot
--source=$DATA/omniglot --output=<folder>`` runs. ``source`` holds ``images_background.zip``
and ``images_evaluation.zip`` (the archives of Lake et al.) or the folders
``images_background/`` and ``images_evaluation/`` extracted from them (also when extracted
into a folder of their own name: ``images_background/images_background/<Alphabet>/``); for
each of the two sets the zip is used when present, else the folder. The source is only read,
never modified. A ``source`` one level off (a clone whose ``python/`` holds the archives, or
an archive given itself) is named with the folder to give.

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
A rerun on a finished output checks the marker, the file count and that every PNG is whole
(its first and last bytes, ``tf_maml.data.prep.file_problem``); if one is missing, empty,
foreign or cut short it rebuilds, which rewrites exactly the files whose bytes are wrong.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import time
import zipfile
from collections.abc import Iterable

import numpy as np
from absl import logging
from PIL import Image

from tf_maml.data.prep import (
    FORMAT_VERSION,
    Member,
    PrepError,
    Progress,
    check_no_extra_entries,
    check_output_outside,
    count_files,
    decode_image,
    open_zip,
    read_file,
    read_marker,
    read_zip_member,
    save_npz_atomic,
    start_output,
    tree_is_intact,
    write_if_changed,
    write_marker,
    writing_output,
)
from tf_maml.errors import check_count, dangling_link_problem

EXPECTED_NUM_CHARACTERS = 1623
EXPECTED_DRAWINGS_PER_CHARACTER = 20
IMAGE_SIZE = 28
SETS = ("images_background", "images_evaluation")
CACHE_NAME = "omniglot28.npz"
IMAGE_SUFFIXES = (".png",)
DEFAULT_PROGRESS_EVERY = 4000


def set_members(source: str, set_name: str, zips: list[zipfile.ZipFile]) -> list[Member]:
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
        dir_path = extracted_set_folder(dir_path, set_name)
        logging.info("reading %s", dir_path)
        read: set[str] = set()
        # Alphabets linked in are read too; a link to a folder read already (a loop, or
        # an alphabet twice) is named rather than walked.
        for root, dirs, files in os.walk(dir_path, followlinks=True):
            dirs.sort()
            real = os.path.realpath(root)
            if real in read:
                raise PrepError(f"{root} is a link to {real}, a folder read already: remove "
                                "that link (each alphabet once)")
            read.add(real)
            rel = os.path.relpath(root, dir_path)
            parts = [] if rel == "." else rel.split(os.sep)
            for name in sorted(files):
                path = os.path.join(root, name)
                if not os.path.exists(path) and dangling_link_problem(path):
                    # An alphabet linked in from a disk not mounted: else left out unsaid.
                    raise PrepError(f"{dangling_link_problem(path)}: mount or create it, or "
                                    "remove the link")
                if name.startswith(".") or not name.lower().endswith(".png"):
                    continue
                if len(parts) != 2:
                    raise PrepError(f"unexpected file {path}: expected "
                                    f"{dir_path}/<Alphabet>/<character>/<file>.png")
                members.append(Member((*parts, name), path,
                                      lambda path=path: read_file(path)))
    else:
        raise PrepError(f"Omniglot source not found: neither {zip_path} nor {dir_path} exists "
                        "(--source must hold images_background.zip and images_evaluation.zip "
                        f"or the folders extracted from them){source_hint(source)}")
    if not members:
        where = zip_path if os.path.isfile(zip_path) else dir_path
        raise PrepError(f"no PNG drawings found in {where}")
    return members


def extracted_set_folder(dir_path: str, set_name: str) -> str:
    """The folder holding the alphabets of an extracted set: ``dir_path`` itself, or
    ``dir_path/<set_name>`` when that is all it holds (the zip extracted into a folder of its
    own name, as "extract to images_background/" does; the zip reader skips that prefix
    too). Hidden entries and macOS's ``__MACOSX`` are not counted."""
    entries = [e for e in os.listdir(dir_path) if not e.startswith(".") and e != "__MACOSX"]
    inner = os.path.join(dir_path, set_name)
    return inner if entries == [set_name] and os.path.isdir(inner) else dir_path


def source_hint(source: str) -> str:
    """For a ``--source`` without the two sets: "; give --source=X" naming the folder that
    holds them (one level down, e.g. a clone's ``python/``, or the folder above an archive
    or set folder given itself), or "" if none is near."""
    def holds_sets(folder: str) -> bool:
        return all(os.path.isfile(os.path.join(folder, s + ".zip"))
                   or os.path.isdir(os.path.join(folder, s)) for s in SETS)

    candidates = []
    if os.path.basename(os.path.normpath(source)) in SETS + tuple(s + ".zip" for s in SETS):
        candidates.append(os.path.dirname(os.path.normpath(source)))  # a set given itself
    if os.path.isdir(source):
        candidates += sorted(os.path.join(source, e.name) for e in os.scandir(source)
                             if e.is_dir() and not e.name.startswith("."))
    found = [folder for folder in candidates if holds_sets(folder)]
    if len(found) == 1:
        return f"; {found[0]} holds them: give --source={found[0]}"
    alphabets = [os.path.basename(folder) for folder in candidates if _holds_characters(folder)]
    if alphabets and not found:  # e.g. both sets merged, or a prepared (resized) tree
        return (f"; {source} holds alphabets directly ({', '.join(alphabets[:3])}"
                f"{', ...' if len(alphabets) > 3 else ''}), not the two sets: give the folder "
                "holding images_background and images_evaluation as downloaded (the zips in "
                "the python/ folder of github.com/brendenlake/omniglot)")
    return ""


def _holds_characters(folder: str) -> bool:
    """Whether ``folder`` looks like an alphabet: it holds ``character<NN>`` folders."""
    try:
        return any(e.is_dir() and re.fullmatch(r"character\d+", e.name)
                   for e in os.scandir(folder))
    except OSError:
        return False


def group_characters(members: Iterable[Member]) -> dict[str, list[Member]]:
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
        n_files = count_files(output, 2, IMAGE_SUFFIXES)
    except OSError:
        return None
    if n_files != marker.get("num_files"):
        logging.warning("%s has a completion marker but %d PNG files instead of %s: rebuilding",
                        output, n_files, marker.get("num_files"))
        return None
    if not tree_is_intact(output, 2, IMAGE_SUFFIXES):
        return None
    return marker


def prepare_omniglot(source: str, output: str, expect_counts: bool = True,
                     progress_every: int = DEFAULT_PROGRESS_EVERY) -> dict:
    """Builds the 28x28 tree, the npz cache and the marker; returns the marker's content.

    Returns (with ``already_complete: True``) when ``output`` is already finished and its
    files look whole (checked in seconds); rebuilds it otherwise.
    Raises ``PrepError`` naming the offending file on bad data.
    """
    # 0 or less logged every image, without a word (the log is the only sign of progress).
    check_count("progress_every", progress_every, 1, "a whole number of images")
    with writing_output(output):  # the output folder is a file, read-only, full
        return _prepare_omniglot(source, output, expect_counts, progress_every)


def _prepare_omniglot(source: str, output: str, expect_counts: bool = True,
                      progress_every: int = DEFAULT_PROGRESS_EVERY) -> dict:
    start = time.monotonic()
    # An extracted set folder is read even when its zip is used: no output inside it either.
    check_output_outside(output, [os.path.join(source, set_name) for set_name in SETS])
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
            members += set_members(source, set_name, zips)
        chars = group_characters(members)
        per_char = check_counts(chars, expect_counts)
        total = len(chars) * per_char
        logging.info("Omniglot: %d characters x %d drawings from %s", len(chars), per_char,
                     source)
        expected = {part for name in chars for part in (name.split("/")[0], name)}
        expected |= {f"{name}/{m.rel[2]}" for name, drawings in chars.items() for m in drawings}
        if os.path.isdir(output):  # before anything in it is written or removed
            check_no_extra_entries(output, 2, expected, IMAGE_SUFFIXES)

        start_output(output)  # from here on incomplete until write_marker

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

    check_no_extra_entries(output, 2, expected, IMAGE_SUFFIXES)
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
