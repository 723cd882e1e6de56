"""Builds the project's TFDS datasets offline into a TFDS ``data_dir``.

Used by ``python -m data_prep.omniglot --format=tfds`` and
``python -m data_prep.miniimagenet --format=tfds``; the result is read with
``tfds.load("tf_maml_omniglot/maml_28", data_dir=...)`` after ``import tf_maml.tfds``, or by
``tf_maml.tfds.tasks``.

Nothing is downloaded: the sources are given as TFDS's manual directory, GCS lookups are off
(``try_download_gcs=False``), no checksums are registered and no statistics computed. A
dataset that is already built is reused (``REUSE_DATASET_IF_EXISTS``), so a rerun returns at
once; TFDS writes into a temporary folder that it renames at the end, so an interrupted build
leaves no half dataset behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import logging

from tf_maml.data import miniimagenet as mprep
from tf_maml.data.prep import PrepError
from tf_maml.tfds import miniimagenet as mini
from tf_maml.tfds import omniglot as omni
from tf_maml.tfds.common import ManualDataError, missing_files_error

# The errors the build functions raise for bad sources (ManualDataError is a PrepError).
__all__ = ["ManualDataError", "PrepError", "build_miniimagenet", "build_omniglot", "describe",
           "download_config", "prepare"]

OMNIGLOT_CONFIGS = tuple(c.name for c in omni.TfMamlOmniglot.BUILDER_CONFIGS)


def download_config(manual_dir: str) -> tfds.download.DownloadConfig:
    """Offline: the manual directory only, no GCS, no checksums, no statistics."""
    return tfds.download.DownloadConfig(
        manual_dir=manual_dir,
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
        try_download_gcs=False,
        register_checksums=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str) -> dict:
    """Runs ``download_and_prepare`` offline; returns a summary of the built dataset."""
    start = time.monotonic()
    already = builder.data_path.exists()  # what download_and_prepare checks to reuse it
    # TFDS's download folder (empty here: nothing is downloaded) goes to a temporary place
    # instead of <data_dir>/downloads.
    with tempfile.TemporaryDirectory(prefix="tf_maml_tfds_") as tmp:
        builder.download_and_prepare(download_dir=tmp,
                                     download_config=download_config(manual_dir))
    seconds = time.monotonic() - start
    # A reused build that is not the one asked was refused by the builder
    # (OfflineBuilder.reuse_problem).
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    logging.info("%s %s in %.1f s: %s in %s", builder.info.full_name,
                 "already built" if already else "built", seconds, splits, builder.data_dir)
    return {"name": builder.info.full_name, "path": os.fspath(builder.data_dir),
            "splits": splits, "already_complete": already, "seconds": seconds}


def check_data_dir_free(data_dir: str) -> None:
    """Raises PrepError if ``data_dir`` holds a prepared folder tree (data_prep's default
    format) or the files data_prep reads: TFDS would write its data set folder among them,
    and the folder tree would read it as one more class (and fail on it: "holds no .png
    images") without a data_prep run that could mend it. Called before TFDS creates
    anything."""
    from tf_maml.errors import dangling_link, dangling_link_problem, tensorflow_pattern
    from tf_maml.tasks.prepared import BACKENDS, NAMES, contents

    if tensorflow_pattern(data_dir):  # else built, then "not built" by every reader
        raise PrepError(f"--output: {tensorflow_pattern(data_dir)}")
    if dangling_link(data_dir):  # else a FileNotFoundError from TFDS's first folder
        raise PrepError(f"cannot write {data_dir}: {dangling_link_problem(data_dir)}; mount or "
                        f"create {os.readlink(dangling_link(data_dir))}, or give another "
                        "--output")
    held = sorted((d, b) for d, b in contents(data_dir) if b != "tfds")
    if held:
        what = " and ".join(f"{NAMES[d]} ({BACKENDS[b]})" for d, b in held)
        raise PrepError(f"{data_dir} holds {what}: a TFDS data_dir there would mix with it; "
                        "give the TFDS data a folder of its own, e.g. "
                        f"--output={os.path.normpath(data_dir)}_tfds")


def build_omniglot(source: str, data_dir: str, config: str | Sequence[str] = "maml_28", *,
                   expect_counts: bool = True, num_train: int | None = None,
                   num_val: int | None = None) -> dict[str, dict]:
    """Builds ``tf_maml_omniglot/<config>`` from ``source`` into ``data_dir``.

    ``source`` holds ``images_background.zip`` and ``images_evaluation.zip`` (or the folders
    extracted from them). ``config`` is a config name, a list of them or ``"all"``
    (``maml_28`` and ``full_105``). ``expect_counts``, ``num_train`` and ``num_val`` are for
    deliberately partial data only (see ``TfMamlOmniglot``). Returns {config: summary}.
    Raises ``tf_maml.data.prep.PrepError`` (``ManualDataError`` for missing files, with the
    instructions) on bad sources.
    """
    names = OMNIGLOT_CONFIGS if config == "all" else (
        (config,) if isinstance(config, str) else tuple(config))
    unknown = [c for c in names if c not in OMNIGLOT_CONFIGS]
    if unknown:
        raise ValueError(f"unknown Omniglot config(s) {', '.join(unknown)}: expected "
                         f"{', '.join(OMNIGLOT_CONFIGS)} or 'all'")
    source = os.path.abspath(source)
    omni.check_manual_dir(source)  # before TFDS creates anything
    check_data_dir_free(data_dir)
    results = {}
    for name in names:
        builder = omni.TfMamlOmniglot(config=name, data_dir=data_dir,
                                      expect_counts=expect_counts, num_train=num_train,
                                      num_val=num_val)
        results[name] = prepare(builder, source)
    return results


def build_miniimagenet(images: str, csv_dir: str, data_dir: str, *,
                       expect_counts: bool = True) -> dict:
    """Builds ``tf_maml_miniimagenet`` into ``data_dir``; returns its summary.

    ``images`` is ``images.zip`` or the ``images/`` folder, ``csv_dir`` holds ``train.csv``,
    ``val.csv`` and ``test.csv``. When they are not already laid out as one manual directory
    (``<dir>/images.zip`` or ``<dir>/images/`` beside the CSVs), a temporary manual directory
    of symbolic links is used. ``expect_counts=False`` only for deliberately partial data.
    Raises ``tf_maml.data.prep.PrepError`` (``ManualDataError`` for missing files) on bad
    sources.
    """
    images, csv_dir = os.path.abspath(images), os.path.abspath(csv_dir)
    csvs = {split: os.path.join(csv_dir, f"{split}.csv") for split in mini.SPLITS.values()}
    missing_csvs = [path for path in csvs.values() if not os.path.isfile(path)]
    missing = ([] if os.path.exists(images) else [images]) + missing_csvs
    if missing:
        raise missing_files_error("MiniImageNet", csv_dir, missing,
                                  mini.MANUAL_DOWNLOAD_INSTRUCTIONS,
                                  mprep.csv_dir_hint(csv_dir) if missing_csvs else "")
    check_data_dir_free(data_dir)
    builder = mini.TfMamlMiniimagenet(data_dir=data_dir, expect_counts=expect_counts)
    layout = mini.images_path(csv_dir)
    if layout is not None and os.path.samefile(layout, images):
        return prepare(builder, csv_dir)
    with tempfile.TemporaryDirectory(prefix="tf_maml_manual_") as manual_dir:
        link = "images.zip" if os.path.isfile(images) else "images"
        os.symlink(images, os.path.join(manual_dir, link))
        for split, path in csvs.items():
            os.symlink(path, os.path.join(manual_dir, f"{split}.csv"))
        return prepare(builder, manual_dir)


def describe(summary: dict) -> str:
    """One line for a summary of ``prepare`` (printed by the ``data_prep`` commands)."""
    state = "already built" if summary["already_complete"] else (
        f"built in {summary['seconds']:.1f} s")
    splits = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
    return f"{summary['name']} {state}: {splits} examples in {summary['path']}"
