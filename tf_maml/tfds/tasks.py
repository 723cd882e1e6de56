"""Few-shot tasks read from the project's TFDS datasets (``--dataset_backend=tfds``).

``omniglot_tasks_from_tfds`` and ``miniimagenet_tasks_from_tfds`` return the same
``FewShotTasks`` as ``tf_maml.tasks.omniglot.omniglot_tasks`` and
``tf_maml.tasks.miniimagenet.miniimagenet_tasks`` on the same source data: same classes in the
same order, same images in the same order within a class, same pixel values, hence the same
meta-batches for the same generator. To guarantee the pixels, the stored PNG / JPEG bytes
(equal to the files of the folder tree) are decoded with Pillow, as the folder backend does,
rather than with TensorFlow's decoders.

Class order: Omniglot, ``split_characters`` of all characters with the split sizes stored
in the dataset's metadata (the shuffled order of the folder backend); MiniImageNet, the sorted
class names of the split. Images of a class: sorted by file name.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from tf_maml.tasks.image_tasks import DataError, FewShotTasks, check_split, decode_image
from tf_maml.tasks.miniimagenet import IMAGE_SHAPE as MINIIMAGENET_SHAPE
from tf_maml.tasks.omniglot import IMAGE_SHAPE as OMNIGLOT_SHAPE
from tf_maml.tasks.omniglot import split_characters
from tf_maml.tasks.prepared import check_data_dir, prep_hint
from tf_maml.tfds.miniimagenet import TfMamlMiniimagenet
from tf_maml.tfds.omniglot import TfMamlOmniglot

TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # project -> TFDS
OMNIGLOT_CONFIG = "maml_28"
READ_BATCH = 1024


def _builder(cls, data_dir: str, what: str, hint: str, **kwargs) -> tfds.core.DatasetBuilder:
    if not os.path.isdir(data_dir):
        raise DataError(f"{what} TFDS data_dir {data_dir} not found: {hint}")
    builder = cls(data_dir=data_dir, **kwargs)
    if not builder.is_prepared():
        raise DataError(f"{builder.info.full_name} is not built in the TFDS data_dir "
                        f"{data_dir}: {hint}")
    return builder


def read_split(builder: tfds.core.DatasetBuilder, split: str
               ) -> dict[int, list[tuple[str, bytes]]]:
    """{label id: [(file name, encoded image bytes)] sorted by file name} of a TFDS split."""
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(try_autocache=False))
    ds = ds.map(lambda ex: (ex["label"], ex["filename"], ex["image"]),
                num_parallel_calls=tf.data.AUTOTUNE).batch(READ_BATCH)
    groups: dict[int, list[tuple[str, bytes]]] = {}
    for labels, filenames, images in ds.as_numpy_iterator():
        for label, filename, data in zip(labels, filenames, images, strict=True):
            groups.setdefault(int(label), []).append((filename.decode("utf-8"), data))
    for items in groups.values():
        items.sort(key=lambda item: item[0])
    return groups


def decode(data: bytes, image_shape: tuple[int, int, int], origin: str, hint: str
           ) -> np.ndarray:
    """uint8 pixels of one stored image, decoded with Pillow like the folder backend."""
    return decode_image(io.BytesIO(data), origin, image_shape, hint)


def _stack(groups: dict[int, list[tuple[str, bytes]]], order: list[int], names: list[str],
           image_shape: tuple[int, int, int], where: str, hint: str
           ) -> tuple[np.ndarray, list[int]]:
    counts = [len(groups[i]) for i in order]
    images = np.empty((sum(counts), *image_shape), np.uint8)
    row = 0
    for i in order:
        for filename, data in groups[i]:
            images[row] = decode(data, image_shape, f"{where}:{names[i]}/{filename}", hint)
            row += 1
    return images, counts


def omniglot_tasks_from_tfds(data_dir: str, split: str, num_classes: int, num_support: int,
                             num_query: int) -> FewShotTasks:
    """N-way tasks over the characters of ``split`` ('train', 'val' or 'test') of
    ``tf_maml_omniglot/maml_28`` in the TFDS ``data_dir``, as ``omniglot_tasks`` gives them.

    Raises ``DataError`` if the dataset is not built there or is inconsistent.
    """
    check_split(split)
    hint = prep_hint("omniglot", "tfds", data_dir)
    check_data_dir(data_dir, "omniglot", "tfds")
    start = time.monotonic()
    builder = _builder(TfMamlOmniglot, data_dir, "Omniglot", hint, config=OMNIGLOT_CONFIG)
    # A rerun of data_prep reuses a built dataset, so rebuilding starts by moving it away.
    rebuild = f"move {builder.data_dir} away, then {hint}"
    names = builder.info.features["label"].names
    metadata = builder.info.metadata or {}
    if "num_train" not in metadata or "num_val" not in metadata:
        raise DataError(f"{builder.data_dir} has no MAML split sizes in its metadata.json "
                        f"(built by another version?): {rebuild}")
    chars = split_characters(names, split, int(metadata["num_train"]),
                             int(metadata["num_val"]))
    groups = read_split(builder, TFDS_SPLITS[split])
    index = {name: i for i, name in enumerate(names)}
    if sorted(groups) != sorted(index[c] for c in chars):
        raise DataError(f"the {TFDS_SPLITS[split]} split of {builder.data_dir} does not hold "
                        f"the characters of the MAML split ({len(groups)} characters found, "
                        f"{len(chars)} expected): {rebuild}")
    images, counts = _stack(groups, [index[c] for c in chars], names, OMNIGLOT_SHAPE,
                            os.fspath(builder.data_dir), rebuild)
    logging.info("Omniglot %s (tfds %s): %d characters, %d drawings in %.1f s", split,
                 builder.data_dir, len(chars), len(images), time.monotonic() - start)
    return FewShotTasks(images, counts, num_classes=num_classes, num_support=num_support,
                        num_query=num_query, class_names=chars, rotate=True, invert=True,
                        description=f"the Omniglot {split} split of the TFDS data_dir "
                                    f"{data_dir}")


def miniimagenet_tasks_from_tfds(data_dir: str, split: str, num_classes: int,
                                 num_support: int, num_query: int) -> FewShotTasks:
    """N-way tasks over the classes of ``split`` ('train', 'val' or 'test') of
    ``tf_maml_miniimagenet`` in the TFDS ``data_dir``, as ``miniimagenet_tasks`` gives them.

    Raises ``DataError`` if the dataset is not built there.
    """
    check_split(split)
    hint = prep_hint("miniimagenet", "tfds", data_dir)
    check_data_dir(data_dir, "miniimagenet", "tfds")
    start = time.monotonic()
    builder = _builder(TfMamlMiniimagenet, data_dir, "MiniImageNet", hint)
    rebuild = f"move {builder.data_dir} away, then {hint}"  # see omniglot_tasks_from_tfds
    names = builder.info.features["label"].names
    groups = read_split(builder, TFDS_SPLITS[split])
    order = sorted(groups, key=lambda i: names[i])
    images, counts = _stack(groups, order, names, MINIIMAGENET_SHAPE,
                            os.fspath(builder.data_dir), rebuild)
    classes = [names[i] for i in order]
    logging.info("MiniImageNet %s (tfds %s): %d classes, %d images in %.1f s", split,
                 builder.data_dir, len(classes), len(images), time.monotonic() - start)
    return FewShotTasks(images, counts, num_classes=num_classes, num_support=num_support,
                        num_query=num_query, class_names=classes, rotate=False, invert=False,
                        description=f"the MiniImageNet {split} split of the TFDS data_dir "
                                    f"{data_dir}")
