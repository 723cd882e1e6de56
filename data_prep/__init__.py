"""Command lines that prepare the image datasets (``python -m data_prep.omniglot``,
``python -m data_prep.miniimagenet``) over :mod:`tf_maml.data`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags, logging

from tf_maml import errors
from tf_maml.data.prep import PrepError

PATH_FLAGS = ("source", "images", "csv_dir", "output")


def path_problem(values: dict[str, str | None]) -> str | None:
    """The first path flag of ``values`` (flag -> value) that cannot be meant as written,
    with why; checked before anything is read or written."""
    for name, value in values.items():
        problem = errors.path_problem(name, value)
        if problem:
            return f"--{name}: {problem}"
    return None


def run(define_flags: Callable[[], None], prepare: Callable[[], str]) -> None:
    """A preparation command: defines its flags, then prints what ``prepare()`` returns, or
    one ``ERROR:`` line (exit status 1) for a :class:`~tf_maml.data.prep.PrepError`."""
    define_flags()
    problem = errors.flagfile_problem(sys.argv)
    if problem:
        sys.exit(f"ERROR: {problem}")

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        problem = path_problem({name: flags.FLAGS[name].value for name in PATH_FLAGS
                                if name in flags.FLAGS})
        if problem:
            sys.exit(f"ERROR: {problem}")
        try:
            print(prepare())
        except PrepError as e:
            logging.error("%s", e)
            sys.exit(f"ERROR: {e}")

    app.run(main)
