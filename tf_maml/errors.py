"""The error of a setting that cannot be used: the command line's :class:`~tf_maml.config.Config`
raises it, and so do the library modules that check settings of their own (the distribution
strategy, the meta-batch's split over replicas), so that the command line turns either into
its one-line message. The standard library only: any module may import it.
"""


class ConfigError(ValueError):
    """An impossible setting value or combination; the message names the setting (``--flag``,
    or the library's `argument`, which the command line turns into its flag) and the fix."""


def is_count(value, minimum: int = 0) -> bool:
    """Whether ``value`` is a whole number >= ``minimum``, as an argument that counts
    (iterations, steps, tasks) must be: a float would be truncated without a word (2.5
    iterations run 2) and a bool is an int to Python but never meant as a count."""
    import numbers

    return (not isinstance(value, bool) and isinstance(value, numbers.Integral)
            and value >= minimum)


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


def empty_path(name: str, path) -> str | None:
    """Why the value ``path`` of the path flag ``--name`` cannot be meant as written: empty
    or blank, as an unset shell variable leaves it (``--name=$X``), it would read as unset or
    as the current folder; None for any other value (None, an unset flag, included)."""
    if not isinstance(path, str) or path.strip():
        return None
    return f"is empty (an unset shell variable, as in --{name}=$X?): give the path"


def path_problem(name: str, path) -> str | None:
    """Why the value ``path`` of the path flag ``--name`` cannot be meant as written (the
    first of :func:`empty_path` and :func:`unexpanded_home`); None if it can."""
    return empty_path(name, path) or unexpanded_home(path)


def unexpanded_home(path) -> str | None:
    """Why ``path`` (a path flag's value) cannot be meant as written: a leading ``~`` is
    expanded by a shell only, not in a flagfile nor after ``--flag=``, so it would name a
    folder called ``~`` in the current directory; None for any other value."""
    import os

    if not isinstance(path, str) or not (path == "~" or path.startswith(("~/", "~" + os.sep))):
        return None
    return (f"{path!r} starts with ~, which only a shell expands (not a flagfile, nor "
            f"--flag=~/...): it would be a folder named ~ here; write {os.path.expanduser(path)}")
