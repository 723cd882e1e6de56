"""Omniglot few-shot tasks from the tree written by ``data_prep.omniglot``.

Characters are the ``<Alphabet>/<character>`` folders of the prepared tree in sorted order
(deliberate deviation: the original shuffled the unsorted ``os.listdir`` order, which depends
on the file system and cannot be reproduced), shuffled like the original's
``random.seed(1); random.shuffle(...)``, then split train ``[:1100]``, val ``[1100:1200]``,
test ``[1200:]`` (423 characters), alphabets mixed across splits.

Pixels are ``1 - value / 255`` (strokes 1, background 0), 28x28x1, and every class of a task
gets one random 90-degree rotation applied to all its images, in train, val and test alike.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

from absl import logging

from tf_maml.data.omniglot import CACHE_NAME, IMAGE_SUFFIXES
from tf_maml.tasks.image_tasks import (
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

NUM_CHARACTERS = 1623
NUM_TRAIN = 1100
NUM_VAL = 100
SPLIT_SEED = 1
IMAGE_SHAPE = (28, 28, 1)


def split_characters(names: Sequence[str], split: str, num_train: int = NUM_TRAIN,
                     num_val: int = NUM_VAL) -> list[str]:
    """The characters of ``split``: sorted, shuffled with seed 1, then sliced."""
    check_split(split)
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    chars = sorted(names)
    # Same permutation as the original's global `random.seed(1); random.shuffle(chars)`.
    random.Random(SPLIT_SEED).shuffle(chars)
    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val),
              "test": (num_train + num_val, len(chars))}
    start, stop = bounds[split]
    return chars[start:stop]


def omniglot_tasks(data_dir: str, split: str, num_classes: int, num_support: int,
                   num_query: int, *, num_train: int | None = None,
                   num_val: int | None = None) -> FewShotTasks:
    """N-way tasks over the characters of ``split`` (see the module docstring).

    ``num_train`` and ``num_val`` set the split sizes for other trees than the full Omniglot
    (small test trees); left at None they are 1100 and 100 and the tree must hold all 1623
    characters, since the standard split is only defined on the full set.
    Raises ``DataError`` if the tree is missing or malformed or the split too small.
    """
    check_split(split)
    check_data_dir(data_dir, "omniglot", "folders")
    hint = prep_hint("omniglot", "folders", data_dir)
    listing, newest = list_tree(data_dir, 2, IMAGE_SUFFIXES, "Omniglot", hint)
    warn_if_incomplete(data_dir, "omniglot", hint)
    check_against_marker(data_dir, "omniglot", data_dir, listing, "Omniglot", hint)
    check_files(data_dir, listing, newest, "Omniglot", hint)  # every split's, one tree
    if num_train is None and num_val is None and len(listing) != NUM_CHARACTERS:
        raise DataError(f"Omniglot tree {data_dir} holds {len(listing)} characters, not "
                        f"{NUM_CHARACTERS}: the standard split needs the full data set "
                        f"(pass num_train and num_val for other trees): {hint}")
    num_train = NUM_TRAIN if num_train is None else num_train
    num_val = NUM_VAL if num_val is None else num_val
    chars = split_characters(list(listing), split, num_train, num_val)
    if not chars:
        raise DataError(f"the Omniglot {split} split of {data_dir} is empty: the tree has "
                        f"{len(listing)} characters, train {num_train}, val {num_val}: {hint}")
    images, counts = load_class_images(data_dir, listing, chars,
                                       os.path.join(data_dir, CACHE_NAME), newest, IMAGE_SHAPE,
                                       hint)
    logging.info("Omniglot %s: %d of %d characters, %d drawings", split, len(chars),
                 len(listing), len(images))
    return FewShotTasks(images, counts, num_classes=num_classes, num_support=num_support,
                        num_query=num_query, class_names=chars, rotate=True, invert=True,
                        description=f"the Omniglot {split} split of {data_dir}")
