"""The floors of the package: the library below the command line takes plain arguments and
owns its option lists, so no module of it imports the experiment configuration
(``tf_maml/config.py``), not even inside a function. Read from the source with ``ast``:
every ``import`` statement of every module, wherever it stands."""

from __future__ import annotations

import ast
import pathlib

import pytest

import tf_maml

PACKAGE = pathlib.Path(tf_maml.__file__).parent
# The command line: it reads flags into a Config and unpacks it.
COMMAND_LINE = {"__init__.py", "config.py", "experiment.py", "main.py", "reproduce.py",
                "reproduce_table.py", "reproduce_run.py", "reproduce_publish.py", "runner.py"}


def config_imports(source: str, module: str) -> list[int]:
    """The lines of ``source`` (the module ``module``, dotted) that import tf_maml.config."""
    package = module.split(".")[:-1]
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            names = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        else:
            continue
        if any(n == "tf_maml.config" or n.startswith("tf_maml.config.") for n in names):
            lines.append(node.lineno)
    return lines


def modules() -> dict[str, str]:
    """Every module of the package: its path relative to the package -> its dotted name."""
    return {path.relative_to(PACKAGE).as_posix():
            ".".join(("tf_maml",) + path.relative_to(PACKAGE).with_suffix("").parts)
            for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("source, module, found", [
    ("from tf_maml.config import Config", "tf_maml.zoo", [1]),
    ("from tf_maml import config, losses", "tf_maml.zoo", [1]),
    ("import tf_maml.config as c", "tf_maml.zoo", [1]),
    ("def f():\n    from tf_maml.config import Config", "tf_maml.zoo", [2]),
    ("from ..config import NORMS", "tf_maml.mapping.plan", [1]),
    ("from . import config", "tf_maml.zoo", [1]),
    ("from tf_maml.configure import x\nfrom tf_maml import experiment", "tf_maml.zoo", []),
    ("from .config import X", "tf_maml.mapping.plan", []),  # tf_maml.mapping.config
])
def test_the_check_sees_every_form_of_import(source, module, found):
    assert config_imports(source, module) == found


def test_nothing_below_the_command_line_imports_the_configuration():
    found = {path: config_imports((PACKAGE / path).read_text(), name)
             for path, name in modules().items() if path not in COMMAND_LINE}
    offenders = {path: lines for path, lines in found.items() if lines}
    assert not offenders, (
        "tf_maml/config.py is the command line's; these modules import it (path: lines): "
        f"{offenders}. Take plain arguments, and import option lists from the module that "
        "owns them.")
