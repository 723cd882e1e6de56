"""README.md's Layout lists the package as it is: every module of tf_maml/ (and every
subpackage, as ``name/``), and nothing that does not exist.

The Layout's tf_maml/ block is read as written: an entry line is indented by two spaces and
starts with its module names (``a.py``, ``a.py, b.py,`` or ``pkg/``), a line indented by four
continues the names of the entry above, and a line indented further continues its text.
"""

from __future__ import annotations

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "tf_maml")
NAME = re.compile(r"(\w+(?:\.py|/))(?:,\s*|\s+|$)")


def package_modules(package: str) -> set[str]:
    """The modules of ``package`` (``a.py``) and its subpackages (``pkg/``)."""
    return ({n for n in os.listdir(package) if n.endswith(".py")}
            | {f"{n}/" for n in os.listdir(package)
               if os.path.isfile(os.path.join(package, n, "__init__.py"))})


def layout_modules(readme: str) -> list[str]:
    """The module names of the tf_maml/ block of README's Layout section, in their order."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1].split("\n")
    start = block.index("tf_maml/")
    names = []
    for line in block[start + 1:]:
        indent = len(line) - len(line.lstrip(" "))
        if line and indent == 0:  # the next top-level folder: the package's block is over
            break
        if not line.strip() or indent > 4:  # an entry's text, continued
            continue
        text, found = line.strip(), []
        while match := NAME.match(text):
            found.append(match.group(1))
            text = text[match.end():]
        assert indent in (2, 4) and found, (
            f"README.md's Layout: cannot read the module names of {line.strip()!r} (an entry "
            "is indented by 2 and starts with its names, e.g. `a.py, b.py  text`; names "
            "continue on a line indented by 4, text on one indented further)")
        names += found
    return names


def layout_problems(readme: str, modules: set[str]) -> str:
    """What the Layout gets wrong about ``modules``, in one line ('' when nothing)."""
    listed = layout_modules(readme)
    missing = sorted(modules - set(listed))
    extra = sorted(set(listed) - modules)
    repeated = sorted({n for n in listed if listed.count(n) > 1})
    problems = ([f"it does not list {', '.join(missing)}"] if missing else []) + (
        [f"it lists {', '.join(extra)}, which tf_maml/ does not have"] if extra else []) + (
        [f"it lists {', '.join(repeated)} more than once"] if repeated else [])
    return ("README.md's Layout is out of date: " + "; ".join(problems)
            + " (one line each under tf_maml/: `name.py   what it is`)") if problems else ""


def test_readme_layout_lists_every_module_of_the_package_and_no_other():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    problems = layout_problems(readme, package_modules(PACKAGE))
    assert not problems, problems


def test_the_layout_check_names_what_is_missing_and_what_is_extra(tmp_path):
    readme = ("# x\n\n## Layout\n\n```\ntf_maml/\n  __init__.py        the API\n"
              "  a.py, gone.py      two\n    b.py               continued names\n"
              "                     continued text, c.py\n  pkg/               a package\n"
              "docs/                not the package: d.py\n```\n\n## Citing\n")
    assert layout_modules(readme) == ["__init__.py", "a.py", "gone.py", "b.py", "pkg/"]
    package = tmp_path / "pkg_root"
    (package / "pkg").mkdir(parents=True)
    (package / "data").mkdir()  # a folder that is no package is not a module
    for name in ("__init__.py", "a.py", "b.py", "c.py", "pkg/__init__.py", "sub.txt"):
        (package / name).write_text("")
    modules = package_modules(str(package))
    assert modules == {"__init__.py", "a.py", "b.py", "c.py", "pkg/"}
    assert layout_problems(readme, modules) == (
        "README.md's Layout is out of date: it does not list c.py; it lists gone.py, which "
        "tf_maml/ does not have (one line each under tf_maml/: `name.py   what it is`)")
    assert layout_problems(readme, modules - {"c.py"} | {"gone.py"}) == ""
