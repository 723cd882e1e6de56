"""The error of a setting that cannot be used: the command line's :class:`~tf_maml.config.Config`
raises it, and so do the library modules that check settings of their own (the distribution
strategy, the meta-batch's split over replicas), so that the command line turns either into
its one-line message; the error of a batch TensorFlow refused inside a compiled step; and the
checks of the paths and flagfiles a command is given (why one cannot be meant as written, or
used). The standard library only: any module may import it.
"""

import os
import re
import sys


class ConfigError(ValueError):
    """An impossible setting value or combination; the message names the setting (``--flag``,
    or the library's `argument`, which the command line turns into its flag) and the fix."""


class BatchError(ValueError):
    """A later batch than the first (checked in full before a step; checking every batch
    would slow every step) that ``train_step``, ``evaluate_batch`` or ``adapt`` cannot run:
    a classifier's class id out of range (checked in every batch: a min and a max), or one
    TensorFlow refused inside the compiled step (e.g. a token id outside an embedding),
    caught as it happens, at no cost to the steps, and said in one line
    (:func:`tensorflow_reason`); ``fit`` adds the iteration and the last checkpoint."""


def tensorflow_reason(message: str) -> str:
    """The line of a TensorFlow error ``message`` that says what is wrong ("Received a label
    value of 7 which is outside the valid range of [0, 3). ..."), without the graph node and
    the Python stack around it."""
    lines = [line.strip() for line in message.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(
        ("[[", "File ", "Graph execution error", "Detected at node"))]
    reason = reasons[-1] if reasons else (lines[0] if lines else message)
    # An eager op's message is one line: "{{function_node ...}} <reason> [Op:...] name: ".
    reason = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", reason)
    return " ".join(re.split(r" \[\[| \[Op:", reason)[0].split())


def flagfile_problem(argv) -> str | None:
    """Why a flagfile that the command line ``argv`` names (or that one of them names, on
    a ``--flagfile=`` line) cannot be read, as absl's parser reads it: a folder (which absl
    reports in its own words), or a file that is not text in this system's encoding, UTF-16
    as Notepad's "Unicode" saves it (on which absl fails with a traceback). None if all
    read; a missing one is absl's to name."""
    def named(args):
        args = iter(args)
        for arg in args:
            if arg.startswith("--flagfile="):
                yield arg.split("=", 1)[1]
            elif arg == "--flagfile":
                yield next(args, "")

    todo, seen = list(named(argv[1:])), set()
    while todo:
        path = todo.pop(0)
        if not path or path in seen:
            continue
        seen.add(path)
        if os.path.isdir(path):
            return f"--flagfile={path} is a folder, not a flagfile: give a file of flags"
        try:
            with open(path) as f:  # as absl opens it
                lines = f.readlines()
        except UnicodeDecodeError as err:
            with open(path, "rb") as f:
                utf16 = f.read(2) in (b"\xff\xfe", b"\xfe\xff")
            what = ("it is UTF-16, as Notepad's 'Unicode' saves" if utf16 else
                    f"its byte {err.start} is not {err.encoding}")
            return f"--flagfile={path} cannot be read as text ({what}): save it as UTF-8"
        except OSError:
            continue
        todo += named(line.strip() for line in lines)
    return None


def exit_on_flagfile_problem(command: str, argv=None) -> None:
    """Ends ``command`` (exit status 2) with its one-line error if :func:`flagfile_problem`
    finds one in ``argv`` (default: this process's)."""
    problem = flagfile_problem(sys.argv if argv is None else argv)
    if problem:
        print(f"{command}: error: {problem}", file=sys.stderr)
        sys.exit(2)


def is_count(value, minimum: int = 0) -> bool:
    """Whether ``value`` is a whole number >= ``minimum``, as an argument that counts
    (iterations, steps, tasks) must be: a float would be truncated without a word (2.5
    iterations run 2) and a bool is an int to Python but never meant as a count."""
    import numbers

    return (not isinstance(value, bool) and isinstance(value, numbers.Integral)
            and value >= minimum)


def check_switch(name: str, value) -> None:
    """A ValueError unless ``value`` is True or False, as an argument that switches
    something on must be: ``bool("False")`` and ``bool("no")`` are True, and so a switch
    given a string (read from a config or a command line) was on without a word."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_count(name: str, value, minimum: int, what: str) -> None:
    """A ValueError unless ``value`` is an integer >= ``minimum`` (``what`` it counts)."""
    if not is_count(value, minimum):
        raise ValueError(f"{name} must be {what} >= {minimum}, got {value!r}")


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean X?)`` (or ``X or Y``) for a misspelt ``word`` among ``choices``; ""
    if none is close. Letter case is no difference (SINUSOID: sinusoid)."""
    import difflib

    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=2, cutoff=0.7)
    return f" (did you mean {' or '.join(by_lower[c] for c in close)}?)" if close else ""


def dangling_link(path: str) -> str | None:
    """The first folder of ``path`` (as it names them) that is a symbolic link to nothing,
    e.g. to a disk not mounted: writing below it fails "No such file or directory", and
    reading finds nothing there. None if there is none."""
    parts = path.split(os.sep)
    for end in range(1, len(parts) + 1):
        prefix = os.sep.join(parts[:end])
        if not prefix:
            continue
        if os.path.islink(prefix) and not os.path.exists(prefix):
            return prefix
        if not os.path.lexists(prefix):
            return None
    return None


def dangling_link_problem(path: str) -> str | None:
    """"<link> is a link to <target>, which does not exist (...)" for the
    :func:`dangling_link` of ``path``; None if there is none."""
    link = dangling_link(path)
    if link is None:
        return None
    return (f"{link} is a link to {os.readlink(link)}, which does not exist (a disk not "
            "mounted?)")


def empty_path(name: str, path) -> str | None:
    """Why the value ``path`` of the path flag ``--name`` cannot be meant as written: empty
    or blank, as an unset shell variable leaves it (``--name=$X``), it would read as unset or
    as the current folder; None for any other value (None, an unset flag, included)."""
    if not isinstance(path, str) or path.strip():
        return None
    return f"is empty (an unset shell variable, as in --{name}=$X?): give the path"


def path_problem(name: str, path) -> str | None:
    """Why the value ``path`` of the path flag ``--name`` cannot be meant as written (the
    first of :func:`empty_path`, :func:`quoted_path` and :func:`unexpanded_home`); None if
    it can."""
    return empty_path(name, path) or quoted_path(path) or unexpanded_home(path)


def tensorflow_pattern(path) -> str | None:
    """Why TensorFlow could not read back what it writes under ``path`` (a path flag's value
    or argument, as given): a ``[``, which its file reading takes for the start of a
    pattern, as a shell's glob does, so that it finds no file (a checkpoint, a SavedModel's
    variables, a TFDS build) where it wrote one; None for any other value."""
    if not isinstance(path, str) or "[" not in path:
        return None
    return (f"{path} holds '[', which TensorFlow takes for the start of a pattern: it would "
            "not find what it writes there (checkpoints, TFDS data); give a path without '[' "
            "(renaming a folder keeps what it holds)")


def quoted_path(path) -> str | None:
    """Why ``path`` (a path flag's value) cannot be meant as written, as a flagfile line
    written for a shell leaves it: in quotes, which only a shell removes
    (``--logdir="/data/runs"``: a folder ``"`` in the current directory), or with a comment
    after it (``--logdir=logs/sine  # runs``: a flagfile comments whole lines only); None
    for any other value."""
    if not isinstance(path, str):
        return None
    if " #" in path:
        return (f"{path!r} holds a comment, which a flagfile does not strip (only a line "
                f"starting with # is a comment): write {path.split(' #')[0].rstrip()}")
    if len(path) < 2 or path[0] != path[-1] or path[0] not in "'\"":
        return None
    return (f"{path} is in quotes, which only a shell removes (not a flagfile): they would be "
            f"part of the folder's name; write {path[1:-1]}")


def unexpanded_home(path) -> str | None:
    """Why ``path`` (a path flag's value) cannot be meant as written: a leading ``~`` is
    expanded by a shell only, not in a flagfile nor after ``--flag=``, so it would name a
    folder called ``~`` in the current directory; None for any other value."""
    if not isinstance(path, str) or not (path == "~" or path.startswith(("~/", "~" + os.sep))):
        return None
    return (f"{path!r} starts with ~, which only a shell expands (not a flagfile, nor "
            f"--flag=~/...): it would be a folder named ~ here; write {os.path.expanduser(path)}")
