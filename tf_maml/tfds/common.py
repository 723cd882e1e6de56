"""Pieces shared by the project's TFDS builders, their build functions and their readers."""

from __future__ import annotations

import inspect

import tensorflow_datasets as tfds
from etils import epath

from tf_maml.data.prep import PrepError

VERSION = "1.0.0"


class ManualDataError(PrepError):
    """A file the builder reads from the manual directory is missing or unusable.

    The message names the missing files and repeats the builder's
    ``MANUAL_DOWNLOAD_INSTRUCTIONS``. A ``PrepError``, so the ``data_prep`` commands print it
    as a one-line error instead of a stack trace.
    """


def missing_files_error(dataset: str, manual_dir: str, missing: list[str],
                        instructions: str, nearby: str = "") -> ManualDataError:
    """``nearby``: where the files are instead, if that is known (the data_prep readers'
    hints, "; X holds them: give --flag=X")."""
    listed = "\n".join(f"  - {name}" for name in missing)
    nearby = f"\n{nearby.removeprefix('; ')}" if nearby else ""
    return ManualDataError(
        f"{dataset}: the manual directory {manual_dir} lacks\n{listed}{nearby}\n"
        f"What to place there:\n{instructions.strip()}")


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the project's builders (not registered itself)."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 finds the builder's file through `importlib_resources`, which it only
        # declares as a dependency for Python < 3.9 (tensorflow/datasets#11212), so preparing
        # any dataset of an installed package fails with ModuleNotFoundError. The file that
        # defines the class is what TFDS's own fallback returns.
        return epath.Path(inspect.getfile(cls))
