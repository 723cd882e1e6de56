"""The repository passes its linter, ruff, as pyproject.toml configures it (pyflakes'
unused and undefined names, import order, line length, flake8-bugbear's likely bugs,
pyupgrade), so that style and dead code do not drift from one engineer to the next."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                           "--output-format=concise", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
