"""What a prepared ``data_dir`` holds, and what to run when it is missing or damaged.

The ``data_prep`` commands leave visible traces: the folder tree ends with a ``.complete``
marker naming its data set and holds the npz caches (``omniglot28.npz``; ``train.npz``,
``val.npz``, ``test.npz``); a TFDS ``data_dir`` holds ``tf_maml_omniglot/`` or
``tf_maml_miniimagenet/``. The loaders check a ``data_dir`` against them before reading it, so
that the wrong folder gets an error naming what it holds, not advice to prepare the data into
it. The commands in the hints name the user's ``data_dir`` and placeholders for the sources,
never a folder of the machine they were written on.
"""

from __future__ import annotations

import json
import os

from tf_maml.data import miniimagenet as mini_prep
from tf_maml.data import omniglot as omni_prep
from tf_maml.data.prep import MARKER_NAME
from tf_maml.tasks.image_tasks import DataError

NAMES = {"omniglot": "Omniglot", "miniimagenet": "MiniImageNet"}
BACKENDS = {"folders": "the folder tree of data_prep",
            "tfds": "a TFDS data_dir of data_prep --format=tfds",
            "raw": "the unprepared files data_prep reads"}
TFDS_FOLDERS = {"omniglot": "tf_maml_omniglot", "miniimagenet": "tf_maml_miniimagenet"}
CACHES = {"omniglot": {omni_prep.CACHE_NAME},
          "miniimagenet": {f"{split}.npz" for split in mini_prep.SPLITS}}
SOURCES = {
    "omniglot": "--source=<folder with images_background.zip and images_evaluation.zip>",
    "miniimagenet": "--images=<images.zip or the images/ folder> "
                    "--csv_dir=<folder with train.csv, val.csv and test.csv>",
}


def _source_flags(dataset: str, source: str) -> str:
    """The source flags of ``data_prep`` for the raw files in the folder ``source``: the
    folder holding the archives or the split CSVs, or an extracted Omniglot set folder, or
    the flat MiniImageNet ``images/`` folder (:func:`_is_raw_folder`)."""
    parent = os.path.dirname(os.path.normpath(source))
    if dataset == "omniglot":
        return f"--source={parent if _is_raw_folder(dataset, source) else source}"
    if _is_raw_folder(dataset, source):
        has_csvs = os.path.isfile(os.path.join(parent, "train.csv"))
        csv_dir = parent if has_csvs else "<folder with train.csv, val.csv and test.csv>"
        return f"--images={source} --csv_dir={csv_dir}"
    images = "images.zip" if os.path.isfile(os.path.join(source, "images.zip")) else "images"
    return f"--images={os.path.join(source, images)} --csv_dir={source}"


def _is_raw_folder(dataset: str, folder: str, entries: set[str] | None = None) -> bool:
    """Whether ``folder`` is itself a folder of source images that data_prep reads: an
    extracted Omniglot set (``images_background/``, ``images_evaluation/``: the same
    ``<Alphabet>/<character>/`` layout as the prepared tree, with 105x105 drawings), or
    MiniImageNet's flat ``images/`` folder (a prepared folder holds no JPEG at its top)."""
    if dataset == "omniglot":
        return os.path.basename(os.path.normpath(folder)) in omni_prep.SETS
    if entries is None:
        try:
            entries = set(os.listdir(folder))
        except OSError:
            return False
    return any(name.lower().endswith(mini_prep.IMAGE_SUFFIXES) for name in entries)


def prep_command(dataset: str, backend: str, output: str, source: str | None = None) -> str:
    """The ``data_prep`` command that writes ``dataset`` for ``backend`` into ``output``, from
    the raw files in ``source`` (placeholders when None)."""
    fmt = " --format=tfds" if backend == "tfds" else ""
    sources = SOURCES[dataset] if source is None else _source_flags(dataset, source)
    return f"python -m data_prep.{dataset}{fmt} {sources} --output={output}"


def prep_hint(dataset: str, backend: str, data_dir: str) -> str:
    """What to run to (re)build ``dataset`` in ``data_dir``, for the end of an error."""
    return f"run `{prep_command(dataset, backend, data_dir)}`"


def contents(data_dir: str) -> set[tuple[str, str]]:
    """The (data set, backend) pairs ``data_dir`` visibly holds, backend 'raw' for the files
    that ``data_prep`` reads (the archives, the split CSVs); empty if it cannot tell."""
    found = set()
    try:
        with open(os.path.join(data_dir, MARKER_NAME), encoding="utf-8") as f:
            marker = json.load(f)
        if isinstance(marker, dict) and marker.get("dataset") in NAMES:
            found.add((marker["dataset"], "folders"))
    except (OSError, ValueError):
        pass
    try:
        entries = set(os.listdir(data_dir))
    except OSError:
        return found
    for dataset in NAMES:
        if TFDS_FOLDERS[dataset] in entries:
            found.add((dataset, "tfds"))
        if CACHES[dataset] <= entries:
            found.add((dataset, "folders"))
    if not found:
        if (entries & {f"{s}{ext}" for s in omni_prep.SETS for ext in (".zip", "")}
                or _is_raw_folder("omniglot", data_dir)):
            found.add(("omniglot", "raw"))
        if (("train.csv" in entries and entries & {"images.zip", "images"})
                or _is_raw_folder("miniimagenet", data_dir, entries)):
            found.add(("miniimagenet", "raw"))
    return found


# How far a data_dir given one level off (or a few, inside a prepared tree: an alphabet or
# character folder of Omniglot, a split or class folder of MiniImageNet, a dataset or version
# folder of a TFDS data_dir) is looked for the prepared data set it misses.
NEARBY_LEVELS = 3


def _nearby(data_dir: str, dataset: str, backend: str) -> tuple[str, str] | None:
    """("inside" or "beside", folder) of the prepared ``dataset`` for ``backend`` nearest to
    ``data_dir`` when ``data_dir`` itself holds nothing recognisable: an enclosing folder
    (``data_dir`` is inside it), else a subfolder (``data_dir`` is its parent)."""
    folder = os.path.abspath(data_dir)
    for _ in range(NEARBY_LEVELS):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
        if (dataset, backend) in contents(folder):
            return "inside", folder
    try:
        children = sorted(e.path for e in os.scandir(data_dir)
                          if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return None
    for child in children:
        if (dataset, backend) in contents(child):
            return "beside", child
    return None


def check_data_dir(data_dir: str, dataset: str, backend: str) -> None:
    """Raises DataError if ``data_dir`` visibly holds other data than ``dataset`` prepared for
    ``backend`` ('folders' or 'tfds'): another data set, the same one in the other format, or
    the unprepared files (then the hint prepares them from this very folder), or nothing
    while the folder above or below it (:func:`_nearby`) holds the data. A missing,
    empty or unmarked folder passes otherwise, and so does a TFDS data_dir holding only other data
    sets (the loader's own errors say what to run)."""
    name = NAMES[dataset]
    if os.path.isfile(data_dir):  # an archive, say: "data not found" advised --output=<it>
        raise DataError(f"{data_dir} is a file, not a folder: give the folder of the prepared "
                        f"{name} data as --data_dir (to prepare it into a new folder, run "
                        f"`{prep_command(dataset, backend, '<new folder>')}`)")
    found = contents(data_dir)
    if (dataset, backend) in found:
        return
    # Nothing prepared here (a MiniImageNet class folder holds JPEGs, like the raw images/):
    # perhaps the folder above or below it.
    if all(b == "raw" for _, b in found):
        nearby = _nearby(data_dir, dataset, backend)
        if nearby is not None:
            where, folder = nearby
            what = "a folder inside" if where == "inside" else "the folder above"
            raise DataError(f"{data_dir} is {what} the prepared {name} data at {folder} "
                            f"({BACKENDS[backend]}): give {folder} as --data_dir")
    if not found:
        return
    if backend == "tfds" and all(b == "tfds" for _, b in found):
        return  # a TFDS data_dir holds several data sets: building this one there is right
    if (dataset, "raw") in found:
        raise DataError(f"{data_dir} holds the {name} files that data_prep reads, not prepared "
                        f"data: prepare them into a new folder with "
                        f"`{prep_command(dataset, backend, '<new folder>', source=data_dir)}` "
                        "and give that folder as --data_dir")
    other_formats = sorted(b for d, b in found if d == dataset)
    if other_formats:
        other = other_formats[0]
        raise DataError(f"{data_dir} holds {name} as {BACKENDS[other]}, not as "
                        f"{BACKENDS[backend]}: read it with --dataset_backend={other}")
    held = " and ".join(f"{NAMES[d]} ({BACKENDS[b]})" for d, b in sorted(found))
    raise DataError(f"{data_dir} holds {held}, not {name}: give the folder of the prepared "
                    f"{name} data as --data_dir (to prepare it into a new folder, run "
                    f"`{prep_command(dataset, backend, '<new folder>')}`)")
