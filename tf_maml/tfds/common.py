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
    """Base of the project's builders (not registered itself). A subclass sets
    ``EXPECTED_EXAMPLES`` (the full data set's) and ``_expect_counts`` (False: deliberately
    partial data), and may say the split sizes it builds with (:meth:`split_sizes`)."""

    EXPECTED_EXAMPLES = 0
    _expect_counts = True

    def split_sizes(self) -> dict[str, int] | None:
        """The sizes of the splits this builder builds with, as its metadata records them;
        None if none are asked."""
        return None

    def download_and_prepare(self, **kwargs) -> None:
        """TFDS's, which reuses a built version whatever the builder's arguments; a
        :class:`PrepError` if the build it reused is not the one asked
        (:meth:`reuse_problem`), whoever calls it: ``tfds.builder(...)``'s caller, or the
        project's build functions. (``tfds.load`` does not call it on a build it finds; a
        builder of split sizes refuses other sizes in ``as_dataset`` too.)"""
        already = self.data_path.exists()
        super().download_and_prepare(**kwargs)
        problem = self.reuse_problem(kwargs.get("download_config")) if already else None
        if problem:
            raise PrepError(problem)

    def reuse_problem(self, download_config=None) -> str | None:
        """Why the build at ``data_path`` is not the one this builder was asked for: built
        from partial data (``expect_counts=False``, read back as the full data set, said
        only by its counts) or with other split sizes (:meth:`sizes_problem`); None if it
        is."""
        path, name = self.data_path, self.info.full_name
        splits = {split: info.num_examples for split, info in self.info.splits.items()}
        if self._expect_counts and self.EXPECTED_EXAMPLES and (
                sum(splits.values()) != self.EXPECTED_EXAMPLES):
            manual_dir = getattr(download_config, "manual_dir", None)
            source = f"from {manual_dir}" if manual_dir else "from the full data"
            return (f"{path} holds {name} built earlier from partial data "
                    f"({sum(splits.values())} examples: {splits}), not the full data set's "
                    f"{self.EXPECTED_EXAMPLES}, and TFDS reuses a build as it is: delete {path} "
                    f"and run this again to build it {source}")
        return self.sizes_problem()

    def sizes_problem(self) -> str | None:
        """Why the build at ``data_path`` is not of the split sizes asked
        (:meth:`split_sizes`: it would be read as if it were); None if it is, or none are
        asked."""
        asked = self.split_sizes()
        if not asked:
            return None
        built = {key: (self.info.metadata or {}).get(key) for key in asked}
        if built == asked:
            return None
        path = self.data_path
        return (f"{path} holds {self.info.full_name} built earlier with {_sizes(built)}, not "
                f"the {_sizes(asked)} asked, and TFDS reuses a build as it is: delete {path} "
                "and run this again to build it with them (or ask for the sizes it was built "
                "with)")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 finds the builder's file through `importlib_resources`, which it only
        # declares as a dependency for Python < 3.9 (tensorflow/datasets#11212), so preparing
        # any dataset of an installed package fails with ModuleNotFoundError. The file that
        # defines the class is what TFDS's own fallback returns.
        return epath.Path(inspect.getfile(cls))


def _sizes(sizes: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in sizes.items())
