"""N-way K-shot image classification tasks, shared by the Omniglot and MiniImageNet loaders.

The data sets are small enough to keep in memory as uint8 (Omniglot 25 MB, MiniImageNet's
train split 0.8 GB). Only the images of a sampled meta-batch are converted to float32.

Task sampling follows the original MAML data generator (see docs of the project): N distinct
classes per task with labels 0..N-1 assigned at random, K support and Q query images per class
drawn without replacement, an optional random 90-degree rotation per class (Omniglot) applied
to all of that class's images, and the support and query sets each in random order.
"""

from __future__ import annotations

import itertools
import os
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from tf_maml.data.prep import MARKER_NAME as COMPLETE_MARKER
from tf_maml.data.prep import damaged_files, describe_damaged, read_marker
from tf_maml.errors import check_count
from tf_maml.threads import undo_generator_malloc_patch

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Missing or malformed prepared data, or a split that cannot provide the tasks asked for.

    The message says what to run to (re)create the data.
    """


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def list_tree(root: str, depth: int, suffixes: tuple[str, ...], what: str,
              hint: str) -> tuple[dict[str, list[str]], int]:
    """Lists the class folders ``depth`` levels below ``root`` and their image files.

    Returns ({"a/b": sorted image file names} with classes in sorted order, the newest
    modification time of those files in ns). Hidden entries are ignored.
    """
    if not os.path.isdir(root):
        raise DataError(f"{what} data not found at {root}: {hint}")
    level = [""]
    for _ in range(depth):
        nxt = []
        for rel in level:
            folder = os.path.join(root, rel) if rel else root
            nxt += [f"{rel}/{e.name}" if rel else e.name for e in os.scandir(folder)
                    if e.is_dir() and not e.name.startswith(".")]
        level = nxt
    if not level:
        raise DataError(f"{what} data at {root} is malformed: no class folders "
                        f"{'/'.join(['*'] * depth)} found: {hint}")
    listing: dict[str, list[str]] = {}
    newest = 0
    for name in sorted(level):
        folder = os.path.join(root, *name.split("/"))
        files = []
        for e in os.scandir(folder):
            if (e.name.lower().endswith(suffixes) and not e.name.startswith(".")
                    and e.is_file()):
                files.append(e.name)
                newest = max(newest, e.stat().st_mtime_ns)
        if not files:
            raise DataError(f"{what} data at {root} is malformed: class folder {folder} holds "
                            f"no {'/'.join(suffixes)} images: {hint}")
        listing[name] = sorted(files)
    return listing, newest


# (root, newest modification time, number of files) of the trees checked whole in this
# process: the training and validation splits of one tree are checked once.
_WHOLE: set[tuple[str, int, int]] = set()


def check_files(root: str, listing: dict[str, list[str]], newest_ns: int, what: str,
                hint: str) -> None:
    """Raises DataError naming the image files of ``listing`` (from :func:`list_tree`) that
    are empty, foreign or cut short, judged from their first and last bytes
    (:func:`tf_maml.data.prep.file_problem`: seconds for MiniImageNet's 60000). A loader
    checks every split's files so that damage is found before training, not at the
    evaluation after it; ``hint``'s data_prep run checks them the same way and rewrites them."""
    paths = [os.path.join(root, *name.split("/"), f) for name, files in listing.items()
             for f in files]
    key = (os.path.abspath(root), newest_ns, len(paths))
    if key in _WHOLE:
        return
    damaged = damaged_files(paths)
    if damaged:
        raise DataError(f"{what} data at {root}: {describe_damaged(damaged)}; {hint} to "
                        "rewrite them from the source")
    _WHOLE.add(key)


def check_against_marker(data_dir: str, dataset: str, root: str,
                         listing: dict[str, list[str]], what: str, hint: str,
                         split: str | None = None) -> None:
    """Raises DataError when the class folders and images of ``listing`` (of ``root``, or of
    the ``split`` subfolder) are not as many as the preparation's completion marker records:
    some were removed, moved or added since (a deleted damaged image, a class folder moved
    away), and training or evaluating on them would silently be another benchmark."""
    marker = read_marker(data_dir, dataset)
    if marker is None:  # no marker: warn_if_incomplete says so
        return
    if split is None:
        recorded = (marker.get("num_characters"), marker.get("num_files"))
    else:
        counts = (marker.get("splits") or {}).get(split) or {}
        recorded = (counts.get("num_classes"), counts.get("num_files"))
    held = (len(listing), sum(len(files) for files in listing.values()))
    if all(isinstance(n, int) for n in recorded) and held != recorded:
        raise DataError(f"{what} at {root} holds {held[0]} classes and {held[1]} images, but "
                        f"data_prep wrote {recorded[0]} and {recorded[1]} (its "
                        f"{COMPLETE_MARKER} says): files were removed, moved or added since; "
                        f"{hint} to restore them")


def warn_if_incomplete(data_dir: str, dataset: str, hint: str) -> None:
    """Logs a warning when ``data_dir`` has no completion marker of the preparation scripts,
    or one that cannot be read: either way the files cannot be checked against the counts
    data_prep wrote (:func:`check_against_marker`), and its rerun rewrites the marker."""
    if not os.path.isfile(os.path.join(data_dir, COMPLETE_MARKER)):
        logging.warning("%s has no %s marker: the data may be incomplete (unfinished "
                        "preparation?); to rebuild, %s", data_dir, COMPLETE_MARKER, hint)
    elif read_marker(data_dir, dataset) is None:
        logging.warning("%s's %s marker is damaged (not the JSON data_prep writes) or of "
                        "another version: the files cannot be checked against the counts it "
                        "records; to check them and rewrite it, %s", data_dir,
                        COMPLETE_MARKER, hint)


def _load_cache(cache_path: str, listing: dict[str, list[str]], newest_ns: int,
                image_shape: tuple[int, ...]) -> np.ndarray | None:
    """The cache's images [classes, per_class, *image_shape] if it matches ``listing``."""
    if not os.path.isfile(cache_path):
        return None
    reason = None
    try:
        if os.stat(cache_path).st_mtime_ns < newest_ns:
            reason = "some images are newer than the cache"
        else:
            with np.load(cache_path, allow_pickle=False) as z:
                names, files = z["names"], z["files"]
                per_class = {len(f) for f in listing.values()}
                if names.tolist() != list(listing):
                    reason = "its class names differ from the folders"
                elif (len(per_class) != 1 or files.shape != (len(listing), per_class.pop())
                      or any(files[i].tolist() != fs
                             for i, fs in enumerate(listing.values()))):
                    reason = "its file lists differ from the folders"
                else:
                    images = z["images"]
                    want = (*files.shape, *image_shape)
                    if (images.dtype != np.uint8 or images.shape[:2] != files.shape
                            or images.size != np.prod(want)):
                        reason = f"its images are {images.dtype} {images.shape}, not {want}"
                    else:
                        return images.reshape(want)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        reason = f"it cannot be read ({type(e).__name__}: {e})"
    logging.warning("not using the cache %s: %s; decoding the image files instead", cache_path,
                    reason)
    return None


def decode_image(source, origin: str, image_shape: tuple[int, ...], hint: str) -> np.ndarray:
    """uint8 pixels of one image (a path or a file object; ``origin`` names it in errors),
    decoded with Pillow; a wrong size or undecodable data raises DataError."""
    height, width, channels = image_shape
    try:
        with Image.open(source) as img:
            if img.size != (width, height):
                raise DataError(f"{origin} is {img.size[0]}x{img.size[1]}, expected "
                                f"{width}x{height}: {hint}")
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        raise DataError(f"cannot decode image {origin} ({e}): {hint}") from e
    return arr.reshape(image_shape)


def _decode_file(path: str, image_shape: tuple[int, ...], hint: str) -> np.ndarray:
    # A file that looks whole (check_files) but does not decode to the right size is one
    # that data_prep's rerun cannot tell from a good one: removed, it is rewritten.
    return decode_image(path, path, image_shape, f"delete it and {hint}")


def load_class_images(root: str, listing: dict[str, list[str]], wanted: Sequence[str],
                      cache_path: str, newest_ns: int, image_shape: tuple[int, ...],
                      hint: str) -> tuple[np.ndarray, list[int]]:
    """uint8 images [total, *image_shape] of the ``wanted`` classes and their counts.

    Uses the npz cache (covering every class of ``listing``) when it is consistent with the
    folders, else decodes the files with Pillow.
    """
    counts = [len(listing[name]) for name in wanted]
    cached = _load_cache(cache_path, listing, newest_ns, image_shape)
    if cached is not None:
        if list(wanted) != list(listing):  # a subset: copy its rows (else no copy)
            index = {name: i for i, name in enumerate(listing)}
            cached = cached[[index[name] for name in wanted]]
        return cached.reshape((-1, *image_shape)), counts
    images = np.empty((sum(counts), *image_shape), np.uint8)
    paths = [os.path.join(root, *name.split("/"), f) for name in wanted for f in listing[name]]
    for i, path in enumerate(paths):
        images[i] = _decode_file(path, image_shape, hint)
    return images, counts


class FewShotTasks:
    """Samples meta-batches of N-way classification tasks from in-memory uint8 images.

    Args:
      images: uint8 [total, H, W, C], the images of every class one after the other.
      counts: number of images of each class, in the order of ``images``.
      num_classes: N, classes per task.
      num_support: K, support images per class.
      num_query: Q, query images per class.
      class_names: names of the classes, for messages.
      rotate: draw one rotation k in {0, 1, 2, 3} (np.rot90) per class and task.
      invert: pixels are ``1 - value / 255`` instead of ``value / 255``.
      description: what these classes are, for messages.
    """

    def __init__(self, images: np.ndarray, counts: Sequence[int], *, num_classes: int,
                 num_support: int, num_query: int, class_names: Sequence[str] | None = None,
                 rotate: bool = False, invert: bool = False, description: str = "data set"):
        for arg, value in (("num_classes", num_classes), ("num_support", num_support),
                           ("num_query", num_query)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [total, H, W, C], got {images.dtype} "
                             f"{images.shape}")
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 1 or counts.sum() != len(images) or (counts < 0).any():
            raise ValueError(f"counts {counts.tolist()} do not add up to {len(images)} images")
        if rotate and images.shape[1] != images.shape[2]:
            raise ValueError(f"rotations need square images, got {images.shape[1:3]}")
        names = list(class_names) if class_names is not None else [
            f"class {i}" for i in range(len(counts))]
        # Too few classes or images is a property of the split, not damage: preparing the
        # data again cannot help, so these errors name the limit instead of the hint.
        if len(counts) < num_classes:
            raise DataError(f"{description} has only {len(counts)} classes, fewer than "
                            f"num_classes={num_classes}: an N-way task draws N different "
                            f"classes of one split, so num_classes must be at most "
                            f"{len(counts)} here (--num_classes)")
        per_class = num_support + num_query
        short = [f"{names[i]} ({counts[i]})" for i in np.flatnonzero(counts < per_class)]
        if short:
            raise DataError(f"{description}: {len(short)} classes have fewer images than "
                            f"num_support + num_query = {per_class}: {', '.join(short[:5])}; "
                            f"num_support + num_query must be at most {int(counts.min())} "
                            f"here (num_support is K, --update_batch_size)")
        self.num_classes = int(num_classes)
        self.num_support = int(num_support)
        self.num_query = int(num_query)
        self.image_shape = tuple(int(d) for d in images.shape[1:])
        self.class_names = names
        self.description = description
        self.rotate = rotate
        self.invert = invert
        self._images = images
        self._counts = counts
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        lut = np.arange(256, dtype=np.float32) / np.float32(255)
        self._lut = (np.float32(1) - lut) if invert else lut

    @property
    def num_dataset_classes(self) -> int:
        """Number of classes available to draw tasks from."""
        return len(self._counts)

    def __repr__(self) -> str:
        return (f"FewShotTasks({self.description}: {self.num_dataset_classes} classes, "
                f"{self.num_classes}-way {self.num_support}-shot, {self.num_query} query, "
                f"image_shape={self.image_shape}, rotate={self.rotate}, invert={self.invert})")

    def labelled_images(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image of the data set and its class: uint8 [total, H, W, C] (not a copy)
        and int32 [total] class indices in the order of ``class_names``. For ordinary
        classification over the classes (the baselines' pretraining)."""
        labels = np.repeat(np.arange(len(self._counts), dtype=np.int32), self._counts)
        return self._images, labels

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """float32 pixels of uint8 ``images``, as tasks give them (``invert`` applied)."""
        return self._lut[images]

    def sample_indices(self, meta_batch_size: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The choices behind one meta-batch, without touching the images.

        Returns (classes [T, N]: dataset class of label n; images [T, N, K+Q]: image indices
        into ``images``, the first K support; rotations [T, N]: k for np.rot90;
        orders: (support permutation [T, N*K], query permutation [T, N*Q])).
        """
        check_count("meta_batch_size", meta_batch_size, 1, "a whole number of tasks")
        t, n, k, q = meta_batch_size, self.num_classes, self.num_support, self.num_query
        # N distinct classes in random order: the position in the order is the label.
        classes = np.argsort(rng.random((t, len(self._counts))), axis=1)[:, :n]
        # K+Q distinct images per chosen class: random keys, invalid positions sort last.
        counts = self._counts[classes]
        keys = rng.random((t, n, int(counts.max())))
        keys[np.arange(keys.shape[2]) >= counts[..., None]] = 2.0
        picks = np.argsort(keys, axis=2)[..., :k + q]
        indices = self._offsets[classes][..., None] + picks
        rotations = (rng.integers(0, 4, size=(t, n)) if self.rotate
                     else np.zeros((t, n), np.int64))
        support_order = np.argsort(rng.random((t, n * k)), axis=1)
        query_order = np.argsort(rng.random((t, n * q)), axis=1)
        return classes, indices, rotations, (support_order, query_order)

    def sample_batch(self, meta_batch_size: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One meta-batch of T tasks.

        Returns support_x float32 [T, N*K, H, W, C] in [0, 1], support_y int32 [T, N*K] in
        0..N-1, query_x float32 [T, N*Q, H, W, C], query_y int32 [T, N*Q].
        """
        _, indices, rotations, (support_order, query_order) = self.sample_indices(
            meta_batch_size, rng)
        t, n, k, q = meta_batch_size, self.num_classes, self.num_support, self.num_query
        x = self._images[indices]  # [T, N, K+Q, H, W, C] uint8
        for r in (1, 2, 3):
            mask = rotations == r
            if mask.any():
                x[mask] = np.rot90(x[mask], r, axes=(2, 3))
        rows = np.arange(t)[:, None]
        labels = np.arange(n, dtype=np.int32)

        def assemble(part: np.ndarray, per_class: int, order: np.ndarray):
            images = part.reshape((t, n * per_class, *self.image_shape))[rows, order]
            y = np.broadcast_to(np.repeat(labels, per_class), (t, n * per_class))
            return self._lut[images], np.take_along_axis(y, order, axis=1)

        support_x, support_y = assemble(x[:, :, :k], k, support_order)
        query_x, query_y = assemble(x[:, :, k:], q, query_order)
        return support_x, support_y, query_x, query_y

    def batches(self, meta_batch_size: int, seed: int, num_batches: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """numpy meta-batches from ``np.random.default_rng(seed)`` (endless if None)."""
        rng = np.random.default_rng(seed)
        for _ in itertools.count() if num_batches is None else range(num_batches):
            yield self.sample_batch(meta_batch_size, rng)

    def dataset(self, meta_batch_size: int, seed: int, num_batches: int | None = None
                ) -> tf.data.Dataset:
        """The meta-batches of ``batches`` as a prefetching tf.data.Dataset.

        Every iteration of the dataset restarts from ``seed``, so it is deterministic; the
        shapes are static.
        """
        t, n, k, q = meta_batch_size, self.num_classes, self.num_support, self.num_query
        signature = (
            tf.TensorSpec((t, n * k, *self.image_shape), tf.float32),
            tf.TensorSpec((t, n * k), tf.int32),
            tf.TensorSpec((t, n * q, *self.image_shape), tf.float32),
            tf.TensorSpec((t, n * q), tf.int32),
        )
        ds = tf.data.Dataset.from_generator(
            lambda: self.batches(meta_batch_size, seed, num_batches), output_signature=signature)
        undo_generator_malloc_patch()  # its mallopt made every step mmap
        if num_batches is not None:
            ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
        return ds.prefetch(tf.data.AUTOTUNE)
