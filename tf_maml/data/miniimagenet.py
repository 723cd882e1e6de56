"""MiniImageNet preparation: per-split class folders of 84x84 RGB JPEGs plus npz caches.

``prepare_miniimagenet(images, csv_dir, output)`` is what ``python -m data_prep.miniimagenet
--images=$DATA/miniimagenet/images.zip --csv_dir=$DATA/miniimagenet --output=<folder>`` runs.
``images`` is the ``images/`` folder of the Ravi & Larochelle split or its ``images.zip``;
``csv_dir`` holds ``train.csv``, ``val.csv`` and ``test.csv`` (header ``filename,label``).

Output (the documented interface read by ``tf_maml.tasks.miniimagenet``)::

    <output>/<split>/<label>/<filename>.jpg   84x84 RGB JPEG, one per CSV row
    <output>/<split>.npz     cache: images uint8 [classes, images, 84, 84, 3] (pixels decoded
                             with Pillow from the JPEGs written), names [sorted labels],
                             files [classes, images] (sorted file names)
    <output>/.complete       JSON with the counts, written last

Differences from the original ``proc_images.py``, which resized every image in place with
LANCZOS (re-encoding JPEGs that were already 84x84) and then *moved* them into the split
folders: the source is never modified, moved or deleted; JPEGs that are already 84x84 RGB are
copied byte for byte (no second lossy encoding) unless bytes follow their end marker (none do
in the real data); only other images are converted to RGB, resized with LANCZOS and saved as
JPEG with Pillow's default quality, like the original.

A rerun on a finished output checks the marker, the file counts and that every JPEG is whole
(its first and last bytes, ``tf_maml.data.prep.file_problem``: about 2 s for the 60000); if
one is missing, empty, foreign or cut short it rebuilds, which rewrites exactly the files whose
bytes are wrong.

Images that appear under two classes: a CSV row is (filename, label), and each row becomes its
own file, so a file name listed under two labels is copied into both class folders. (In the
real CSVs the seven ImageNet duplicates have distinct file names with identical bytes; each one
is simply copied into its own class folder.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
import zipfile

import numpy as np
from absl import logging
from PIL import Image

from tf_maml.data.prep import (
    FORMAT_VERSION,
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
    signature_problem,
    start_output,
    tree_is_intact,
    write_if_changed,
    write_marker,
    writing_output,
)
from tf_maml.errors import check_count

SPLITS = ("train", "val", "test")
EXPECTED_NUM_CLASSES = {"train": 64, "val": 16, "test": 20}
EXPECTED_IMAGES_PER_CLASS = 600
IMAGE_SIZE = 84
IMAGE_SUFFIXES = (".jpg", ".jpeg")
DEFAULT_PROGRESS_EVERY = 5000


def read_split_csv(path: str) -> dict[str, dict[str, int]]:
    """Reads one split file: {label: {filename: csv line number}}, labels in CSV order."""
    if not os.path.isfile(path):
        raise PrepError(f"split file {path} not found (--csv_dir must hold train.csv, val.csv "
                        f"and test.csv){csv_dir_hint(os.path.dirname(path))}")
    try:
        return _read_split_rows(path)
    except UnicodeDecodeError as e:  # Excel's "Unicode text" (UTF-16), a legacy code page
        raise PrepError(f"{path} is not UTF-8 text (byte {e.start} cannot be read as UTF-8): "
                        "save it as UTF-8 (Excel: \"CSV UTF-8\")") from e


def csv_dir_hint(csv_dir: str) -> str:
    """For a ``--csv_dir`` without the split files: "; give --csv_dir=X" naming the folder
    that holds all three, when it is ``csv_dir``'s parent (a split file given itself) or one
    of its subfolders; "" otherwise."""
    def holds_csvs(folder: str) -> bool:
        return all(os.path.isfile(os.path.join(folder, f"{s}.csv")) for s in SPLITS)

    candidates = [os.path.dirname(os.path.normpath(csv_dir))]
    if os.path.isdir(csv_dir):
        candidates += sorted(e.path for e in os.scandir(csv_dir)
                             if e.is_dir() and not e.name.startswith("."))
    found = [folder for folder in candidates if holds_csvs(folder)]
    return f"; {found[0]} holds them: give --csv_dir={found[0]}" if len(found) == 1 else ""


def _read_split_rows(path: str) -> dict[str, dict[str, int]]:
    classes: dict[str, dict[str, int]] = {}
    # utf-8-sig: a byte order mark (Excel's CSV UTF-8) is skipped; newline="": any line ends.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header] != ["filename", "label"]:
            raise PrepError(f"{path}: expected the header 'filename,label', got {header}"
                            f"{_separator_hint(header)}")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != 2 or not all(cell.strip() for cell in row):
                raise PrepError(f"{path} line {line}: expected 'filename,label', got {row}"
                                f"{_separator_hint(row)}")
            filename, label = (cell.strip() for cell in row)
            for value in (filename, label):
                if "/" in value or "\\" in value or value.startswith("."):
                    raise PrepError(f"{path} line {line}: {value!r} is not a plain name")
            files = classes.setdefault(label, {})
            if filename in files:
                raise PrepError(f"{path} line {line}: {filename} is listed twice under label "
                                f"{label} (first on line {files[filename]})")
            files[filename] = line
    if not classes:
        raise PrepError(f"{path} lists no images")
    return classes


_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}
# A row as Ravi & Larochelle's split files write one: the image, then its class's WordNet id.
_EXAMPLE_ROW = "n0153282900000005.jpg,n01532829"


def _separator_hint(row) -> str:
    """For a header or row read as one cell holding another separator (a spreadsheet's
    export in a locale whose list separator is ';', or a TSV): what the file should look
    like instead; "" for any other row."""
    if row is None or len(row) != 1:
        return ""
    for separator, name in _SEPARATORS.items():
        if separator in row[0]:
            return (f": the file is separated by {name}, not commas; save it as comma-separated "
                    f"CSV, header 'filename,label' and rows like '{_EXAMPLE_ROW}'")
    return ""


class ImageSource:
    """The flat ``images/`` folder or ``images.zip``; only ever read."""

    def __init__(self, path: str):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.index: dict[str, list[zipfile.ZipInfo]] = {}
        if os.path.isfile(path):
            self.zip = open_zip(path)
            for info in self.zip.infolist():
                parts = [p for p in info.filename.split("/") if p]
                if info.is_dir() or not parts or parts[0] == "__MACOSX":
                    continue
                self.index.setdefault(parts[-1], []).append(info)
        elif not os.path.isdir(path):
            raise PrepError(f"images not found: {path} is neither a folder nor a zip archive")

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def has(self, filename: str) -> bool:
        if self.zip is not None:
            return filename in self.index
        return os.path.isfile(os.path.join(self.path, filename))

    def origin(self, filename: str) -> str:
        if self.zip is not None:
            return f"{self.path}:{self.index[filename][0].filename}"
        return os.path.join(self.path, filename)

    def read(self, filename: str) -> bytes:
        if self.zip is not None:
            infos = self.index[filename]
            if len(infos) > 1:
                raise PrepError(f"{filename} is ambiguous in {self.path}: "
                                f"{', '.join(i.filename for i in infos)}")
            return read_zip_member(self.zip, infos[0])
        return read_file(os.path.join(self.path, filename))


def check_split_counts(split: str, classes: dict[str, dict[str, int]], expect_counts: bool,
                       csv_path: str) -> int:
    """Every class of a split must have the same number of images; returns it."""
    counts = {label: len(files) for label, files in classes.items()}
    per_class = max(counts.values())
    odd = [f"{label} ({n})" for label, n in sorted(counts.items()) if n != per_class]
    if odd:
        raise PrepError(f"{csv_path}: {len(odd)} classes have fewer than {per_class} images: "
                        f"{', '.join(odd[:5])}")
    if expect_counts and (len(classes) != EXPECTED_NUM_CLASSES[split]
                          or per_class != EXPECTED_IMAGES_PER_CLASS):
        raise PrepError(
            f"{csv_path}: {len(classes)} classes x {per_class} images, expected "
            f"{EXPECTED_NUM_CLASSES[split]} x {EXPECTED_IMAGES_PER_CLASS} (pass "
            "--expect_counts=false only for deliberately partial data)")
    return per_class


def read_splits(csv_dir: str, expect_counts: bool
                ) -> tuple[dict[str, dict[str, dict[str, int]]], dict[str, int]]:
    """Reads and checks ``train.csv``, ``val.csv`` and ``test.csv`` of ``csv_dir``: no label in
    two splits, and within a split every class with as many images as the others (64/16/20
    classes x 600 images unless ``expect_counts`` is False).

    Returns ({split: {label: {filename: CSV line}}}, {split: images per class}).
    """
    csv_paths = {split: os.path.join(csv_dir, f"{split}.csv") for split in SPLITS}
    splits = {split: read_split_csv(csv_paths[split]) for split in SPLITS}
    owner: dict[str, str] = {}
    for split, classes in splits.items():
        for label in classes:
            if label in owner:
                raise PrepError(f"label {label} is in both {owner[label]}.csv and {split}.csv")
            owner[label] = split
    per_class = {split: check_split_counts(split, splits[split], expect_counts, csv_paths[split])
                 for split in SPLITS}
    return splits, per_class


def check_images_present(splits: dict[str, dict[str, dict[str, int]]],
                         source: ImageSource) -> None:
    """Raises PrepError naming the first images the CSVs list that ``source`` lacks."""
    lacking = [(filename, split, line, label)
               for split, classes in splits.items() for label, files in classes.items()
               for filename, line in files.items() if not source.has(filename)]
    missing = [f"{filename} ({split}.csv line {line}, label {label})"
               for filename, split, line, label in lacking]
    if missing:
        shown = "; ".join(missing[:5])
        hint = images_hint(source.path, lacking[0][0], lacking[0][3])
        raise PrepError(f"{len(missing)} images listed in the CSVs are missing from "
                        f"{source.path}" + (f"{hint} (missing: {shown})" if hint else f": {shown}"))


def images_hint(path: str, filename: str = "", label: str = "") -> str:
    """For an ``--images`` folder without the listed images (the first, ``filename`` of
    ``label``): ", which holds X: give --images=X" when it holds ``images/`` or
    ``images.zip`` (the folder above the images was given); what to do when it holds them
    in a folder per label (a folder is read flat, a zip in any layout); else ""."""
    if not os.path.isdir(path):
        return ""
    for name in ("images", "images.zip"):
        inner = os.path.join(path, name)
        if os.path.isdir(inner) or os.path.isfile(inner):
            return f", which holds {name}: give --images={inner}"
    if filename and label and os.path.isfile(os.path.join(path, label, filename)):
        return (f", which holds them in a folder per label ({label}/{filename}): a folder is "
                "read flat, the images side by side as in Ravi & Larochelle's images/; move "
                f"them up into {path}, or give a zip of it (read in any layout)")
    return ""


def to_84_jpeg(data: bytes, origin: str) -> tuple[bytes, np.ndarray, bool]:
    """(JPEG bytes to write, their decoded uint8 pixels [84, 84, 3], whether re-encoded)."""
    img = decode_image(data, origin)
    # Copied only if whole by the loaders' cheap check too (no bytes after the end marker).
    if (img.format == "JPEG" and img.mode == "RGB" and img.size == (IMAGE_SIZE, IMAGE_SIZE)
            and signature_problem(data[:8], data[-8:], len(data), ".jpg") is None):
        return data, np.asarray(img, dtype=np.uint8), False
    img = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG")  # Pillow's default quality, as the original
    out = buf.getvalue()
    with Image.open(io.BytesIO(out)) as check:  # pixels as stored, not before encoding
        pixels = np.asarray(check.convert("RGB"), dtype=np.uint8)
    return out, pixels, True


def _already_complete(output: str, expect_counts: bool) -> dict | None:
    marker = read_marker(output, "miniimagenet")
    if marker is None:
        return None
    splits = marker.get("splits")
    if not isinstance(splits, dict) or sorted(splits) != sorted(SPLITS):
        return None
    for split in SPLITS:
        info = splits[split]
        if expect_counts and (info.get("num_classes"), info.get("images_per_class")) != (
                EXPECTED_NUM_CLASSES[split], EXPECTED_IMAGES_PER_CLASS):
            return None
        if not os.path.isfile(os.path.join(output, f"{split}.npz")):
            return None
        try:
            n_files = count_files(os.path.join(output, split), 1, IMAGE_SUFFIXES)
        except OSError:
            return None
        if n_files != info.get("num_files"):
            logging.warning("%s has a completion marker but %d images in %s instead of %s: "
                            "rebuilding", output, n_files, split, info.get("num_files"))
            return None
        if not tree_is_intact(os.path.join(output, split), 1, IMAGE_SUFFIXES):
            return None
    return marker


def check_no_foreign_folders(output: str) -> None:
    """Raises PrepError when ``output`` holds folders other than the splits: it is not a
    MiniImageNet output folder, and preparing would mix the two."""
    if os.path.isdir(output):
        foreign = sorted(e.name for e in os.scandir(output)
                         if e.is_dir() and e.name not in SPLITS)
        if foreign:
            raise PrepError(f"output folder {output} holds {len(foreign)} folders that are "
                            f"not MiniImageNet splits (e.g. {', '.join(foreign[:5])}); "
                            "remove them or use an empty --output")


def _marker(split_info: dict, total: int, resized: int, images: str, csv_dir: str) -> dict:
    """The completion marker's content: what was prepared, and from what."""
    return {
        "dataset": "miniimagenet",
        "format_version": FORMAT_VERSION,
        "splits": split_info,
        "num_files": total,
        "num_resized": resized,
        "num_copied": total - resized,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE, 3],
        "caches": [f"{split}.npz" for split in SPLITS],
        "source_images": os.path.abspath(images),
        "source_csv_dir": os.path.abspath(csv_dir),
    }


def prepare_miniimagenet(images: str, csv_dir: str, output: str, expect_counts: bool = True,
                         progress_every: int = DEFAULT_PROGRESS_EVERY) -> dict:
    """Builds the split folders, the npz caches and the marker; returns the marker's content.

    Returns (with ``already_complete: True``) when ``output`` is already finished and its
    files look whole (checked in seconds); rebuilds it otherwise.
    Raises ``PrepError`` naming the offending file on bad data.
    """
    # 0 or less logged every image, without a word (the log is the only sign of progress).
    check_count("progress_every", progress_every, 1, "a whole number of images")
    with writing_output(output):  # the output folder is a file, read-only, full
        return _prepare_miniimagenet(images, csv_dir, output, expect_counts, progress_every)


def _prepare_miniimagenet(images: str, csv_dir: str, output: str, expect_counts: bool = True,
                           progress_every: int = DEFAULT_PROGRESS_EVERY) -> dict:
    start = time.monotonic()
    check_output_outside(output, [images] if os.path.isdir(images) else [])
    marker = _already_complete(output, expect_counts)
    if marker is not None:
        logging.info("%s: already complete (%s)", output, ", ".join(
            f"{s} {marker['splits'][s]['num_classes']}x{marker['splits'][s]['images_per_class']}"
            for s in SPLITS))
        return {**marker, "already_complete": True}

    splits, per_class = read_splits(csv_dir, expect_counts)

    with contextlib.ExitStack() as stack:
        source = ImageSource(images)
        stack.callback(source.close)
        check_images_present(splits, source)

        check_no_foreign_folders(output)  # before anything in it is written or removed
        start_output(output)  # from here on incomplete until write_marker

        total = sum(len(splits[s]) * per_class[s] for s in SPLITS)
        progress = Progress("miniimagenet images", total, progress_every)
        written = resized = 0
        split_info = {}
        for split in SPLITS:
            labels = sorted(splits[split])
            pixels = np.empty((len(labels), per_class[split], IMAGE_SIZE, IMAGE_SIZE, 3),
                              np.uint8)
            names = np.empty((len(labels), per_class[split]), dtype=object)
            expected: set[str] = set()
            split_dir = os.path.join(output, split)
            for i, label in enumerate(labels):
                class_dir = os.path.join(split_dir, label)
                os.makedirs(class_dir, exist_ok=True)
                expected.add(label)
                for j, filename in enumerate(sorted(splits[split][label])):
                    out, pixels[i, j], was_resized = to_84_jpeg(source.read(filename),
                                                                source.origin(filename))
                    resized += was_resized
                    written += write_if_changed(os.path.join(class_dir, filename), out)
                    names[i, j] = filename
                    expected.add(f"{label}/{filename}")
                    progress.tick()
            check_no_extra_entries(split_dir, 1, expected, IMAGE_SUFFIXES)
            save_npz_atomic(os.path.join(output, f"{split}.npz"), images=pixels,
                            names=np.array(labels, dtype=str), files=names.astype(str))
            del pixels
            split_info[split] = {"num_classes": len(labels),
                                 "images_per_class": per_class[split],
                                 "num_files": len(labels) * per_class[split]}
            logging.info("%s: %d classes x %d images, cache %s.npz written", split, len(labels),
                         per_class[split], split)

    marker = _marker(split_info, total, resized, images, csv_dir)
    write_marker(output, marker)  # last: its presence means the output is complete
    logging.info("MiniImageNet done in %.1f s: %d images (%d copied byte for byte, %d resized; "
                 "%d written, %d already right) in %s", time.monotonic() - start, total,
                 total - resized, resized, written, total - written, output)
    return {**marker, "already_complete": False, "files_written": written}
