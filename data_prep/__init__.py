"""Command lines that prepare the image datasets (``python -m data_prep.omniglot``,
``python -m data_prep.miniimagenet``) over :mod:`tf_maml.data`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, logging

from tf_maml.data.prep import PrepError


def run(define_flags: Callable[[], None], prepare: Callable[[], str]) -> None:
    """A preparation command: defines its flags, then prints what ``prepare()`` returns, or
    one ``ERROR:`` line (exit status 1) for a :class:`~tf_maml.data.prep.PrepError`."""
    define_flags()

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            print(prepare())
        except PrepError as e:
            logging.error("%s", e)
            sys.exit(f"ERROR: {e}")

    app.run(main)
