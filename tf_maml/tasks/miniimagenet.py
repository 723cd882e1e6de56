"""MiniImageNet few-shot tasks from the folders written by ``data_prep.miniimagenet``.

Classes are the sorted subfolders of ``<data_dir>/<split>/`` (64 / 16 / 20 with 600 images each
in the Ravi & Larochelle split), pixels ``value / 255`` in [0, 1], 84x84x3, no normalisation and
no augmentation, like the original.
"""

from __future__ import annotations

import os

from absl import logging

from tf_maml.data.miniimagenet import IMAGE_SUFFIXES
from tf_maml.tasks.image_tasks import (
    SPLITS,
    DataError,
    FewShotTasks,
    check_against_marker,
    check_files,
    check_split,
    list_tree,
    load_class_images,
    warn_if_incomplete,
)
from tf_maml.tasks.prepared import check_data_dir, prep_hint

IMAGE_SHAPE = (84, 84, 3)


def miniimagenet_tasks(data_dir: str, split: str, num_classes: int, num_support: int,
                       num_query: int) -> FewShotTasks:
    """N-way tasks over the classes of ``<data_dir>/<split>``.

    Uses the cache ``<data_dir>/<split>.npz`` when it matches the folders.
    Raises ``DataError`` if the folders are missing or malformed or the split too small.
    """
    check_split(split)
    hint = prep_hint("miniimagenet", "folders", data_dir)
    check_data_dir(data_dir, "miniimagenet", "folders")
    if not os.path.isdir(data_dir):
        raise DataError(f"MiniImageNet data not found at {data_dir}: {hint}")
    root = os.path.join(data_dir, split)
    listing, newest = list_tree(root, 1, IMAGE_SUFFIXES, "MiniImageNet", hint)
    warn_if_incomplete(data_dir, "miniimagenet", hint)
    check_against_marker(data_dir, "miniimagenet", root, listing,
                         f"the MiniImageNet {split} split", hint, split)
    # Every split's files, so that a damaged test image is found before training.
    for other in SPLITS:
        other_root = os.path.join(data_dir, other)
        if other == split:
            check_files(root, listing, newest, "MiniImageNet", hint)
        elif os.path.isdir(other_root):
            check_files(other_root, *list_tree(other_root, 1, IMAGE_SUFFIXES, "MiniImageNet",
                                               hint), "MiniImageNet", hint)
        else:  # moved away since data_prep wrote it: said now, not after training
            check_against_marker(data_dir, "miniimagenet", other_root, {},
                                 f"the MiniImageNet {other} split", hint, other)
    classes = list(listing)
    images, counts = load_class_images(root, listing, classes,
                                       os.path.join(data_dir, f"{split}.npz"), newest,
                                       IMAGE_SHAPE, hint)
    logging.info("MiniImageNet %s: %d classes, %d images", split, len(classes), len(images))
    return FewShotTasks(images, counts, num_classes=num_classes, num_support=num_support,
                        num_query=num_query, class_names=classes, rotate=False, invert=False,
                        description=f"the MiniImageNet {split} split of {data_dir}")
