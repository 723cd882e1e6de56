"""Files replaced whole: a reader, or a crash, sees a file's old contents or its new ones,
never a mix. The one implementation of it for the run directory, the model zoo, the report
and the data preparations.

Every write goes to a temporary name beside its target (``<path>.<pid>.tmp``, on the same file
system, so that the final ``os.replace`` is atomic; a folder written whole, a SavedModel
export, has one too) and is renamed over the target only once it is whole. A process killed
mid-write (SIGKILL, a power cut) cannot remove its temporary: the next process to write the
same target does. ``fsync=True`` also flushes the data to the disk before the rename, for
files that must survive a power cut, not only a crash of the process (a data set's
completion marker, its caches).

The standard library only: the bottom floor, which ``tf_maml.data`` imports without pulling
in the rest of the package.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from typing import IO

TEMP_SUFFIX = ".tmp"  # what a write interrupted by a crash leaves: <path>.<pid>.tmp
# Before this process's first write: a temporary last written earlier is no write of ours,
# nor one another process is making now.
_STARTED = time.time()


def temporary_name(path: str) -> str:
    """Where ``path`` is written before the rename; the process id keeps two processes that
    write the same file from writing into each other's temporary."""
    return f"{path}.{os.getpid()}{TEMP_SUFFIX}"


def temporary_name_problem(path: str) -> str | None:
    """Why ``path`` cannot be written whole in its folder: its :func:`temporary_name` is
    longer than a file name may be there (the file system's limit where it says, else 255
    bytes), though ``path``'s own name may not be ("<n> bytes while it is written, over the
    <limit> a file name may have"); None if it fits."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):  # the folder it would be made in
        folder = os.path.dirname(folder)
    try:
        limit = os.pathconf(folder or os.curdir, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such query here (Windows)
        limit = 255
    longest = len(os.path.basename(temporary_name(path)).encode())
    if longest <= limit:
        return None
    return f"{longest} bytes while it is written, over the {limit} a file name may have"


def write(path: str, data: str | bytes, fsync: bool = False) -> None:
    """Replaces ``path`` whole with ``data`` (text or bytes)."""
    write_all({path: data}, fsync)


def write_all(files: dict[str, str | bytes], fsync: bool = False) -> None:
    """Replaces the files of ``files`` (path -> contents) as one set, so that they never mix
    two versions (an evaluation's csv, pkl and npy): every file is written under its
    temporary name first, and only when all of them are on disk are they renamed over the
    old ones. A failed write (a full disk) leaves every old file as it was and no temporary;
    the renames need no space. Ctrl-C and SIGTERM wait for the renames; a SIGKILL or a
    power cut between two of them leaves the set's journal (:func:`complete_interrupted`),
    by which the next writer or reader of the folder completes it."""
    temporaries, journal = [], None
    try:
        for path, data in files.items():
            remove_stale(path)
            temporaries.append(temporary_name(path))
            with open(temporaries[-1], "wb" if isinstance(data, bytes) else "w") as f:
                f.write(data)
                _sync(f, fsync)
        with stops_deferred():  # Ctrl-C between two renames would mix the versions
            if len(files) > 1 and len({os.path.dirname(os.path.abspath(p))
                                       for p in files}) == 1:
                # Every new file is whole: the set can be completed from here.
                journal = _write_journal(list(files), fsync)
            for path, tmp in zip(files, temporaries):
                os.replace(tmp, path)
            if journal:
                _remove([journal])
    except BaseException:
        _remove(temporaries + ([journal] if journal else []))
        raise


# A set's renames, until they are done: .<first file's name>.<pid>.set beside it, the name
# cut to 100 characters (its own temporary must fit where the set's files' names fit).
JOURNAL_SUFFIX = ".set"


def _write_journal(paths: list[str], fsync: bool) -> str:
    """The journal of the renames of a set of files ``paths`` of one folder, beside them
    (their names alone: nothing outside the folder can be named), written whole; returns
    its path."""
    folder = os.path.dirname(os.path.abspath(paths[0]))
    journal = os.path.join(folder, f".{os.path.basename(paths[0])[:100]}.{os.getpid()}"
                                   f"{JOURNAL_SUFFIX}")
    tmp = temporary_name(journal)
    try:
        with open(tmp, "w") as f:
            json.dump({"files": [os.path.basename(p) for p in paths]}, f)
            _sync(f, fsync)
        os.replace(tmp, journal)
    except BaseException:
        _remove([tmp])
        raise
    return journal


def complete_interrupted(folder: str) -> list[str]:
    """Completes the sets of files (:func:`write_all`) that a process killed between their
    renames left half replaced in ``folder`` (a SIGKILL, a power cut: no handler can defer
    them), from their journals: the new files not yet renamed (``<name>.<pid>.tmp``, of
    the journal's process) are renamed over the old ones, so that the set is the new one,
    whole. A journal names files of its folder only (one naming any other is left, as is
    everything it names). A journal of a process still running is a write in progress:
    left (its renames take microseconds; a process that ran a set's writer, as
    tf-maml-reproduce runs its commands, completes the set as soon as the writer is gone).
    Returns the paths completed (none if the folder cannot be changed: a read-only copy,
    left as it is)."""
    pattern = re.compile(r"\.(.+)\.(\d+)" + re.escape(JOURNAL_SUFFIX))
    completed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return completed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or int(match.group(2)) == os.getpid() or _running(int(match.group(2))):
            continue
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            with open(entry.path) as f:
                names = json.load(f)["files"]
            if not all(isinstance(n, str) and n and os.path.basename(n) == n
                       and n not in (os.curdir, os.pardir) for n in names):
                continue
            for name in names:
                path = os.path.join(folder, name)
                tmp = f"{path}.{match.group(2)}{TEMP_SUFFIX}"
                if os.path.isfile(tmp):  # else renamed before the kill
                    os.replace(tmp, path)
                    completed.append(path)
            os.remove(entry.path)
    return completed


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (True where the system does not say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block has run (the renames of a set: no space, no
    time), then reach the handler they would have reached: the one way to make several
    renames one step (:func:`write_all`, a checkpoint moved into the model zoo). Outside
    the main thread, where Python cannot change handlers (or if one was set outside
    Python), the block runs as it is."""
    caught: list = []
    previous = {}
    stops = (signal.SIGINT, signal.SIGTERM)
    # None: a handler set outside Python, which could not be put back.
    if all(signal.getsignal(signum) is not None for signum in stops):
        try:
            for signum in stops:
                previous[signum] = signal.signal(signum, lambda *stop: caught.append(stop))
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum, frame in caught[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


@contextlib.contextmanager
def replacing(path: str, binary: bool = True, fsync: bool = False) -> Iterator[IO]:
    """A file to write ``path``'s new contents into, for writers that stream (a zip, a JSON
    dump): it replaces ``path`` when the block ends, and an error inside the block leaves
    ``path`` as it was and no temporary."""
    remove_stale(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb" if binary else "w") as f:
            yield f
            _sync(f, fsync)
        os.replace(tmp, path)
    except BaseException:
        _remove([tmp])
        raise


def remove_stale(path: str) -> None:
    """Deletes the temporaries of ``path`` that killed processes left (a copy of a checkpoint
    shard, or a SavedModel export's folder, would otherwise stay, taking its size, for
    good). Its folder is listed once per process: no temporary older than the process can
    appear later."""
    directory, name = os.path.split(os.path.abspath(path))
    if directory not in _stale:
        _stale[directory] = _stale_in(directory)
    for tmp in _stale[directory].pop(name, []):
        tmp = os.path.join(directory, tmp)
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _remove([tmp])


_stale: dict[str, dict[str, list[str]]] = {}  # folder -> target -> its stale temporaries


def _stale_in(directory: str) -> dict[str, list[str]]:
    """The temporaries in ``directory`` (files, or folders a whole tree is written into), by
    their target's name, that killed processes left: of another process id and last written
    before this process started (a newer one may be another process's write in progress)."""
    # A set a killed process left half replaced is completed first: its new files are
    # among these temporaries, and its old ones would be taken for the set.
    complete_interrupted(directory)
    pattern = re.compile(r"(.+)\.(\d+)" + re.escape(TEMP_SUFFIX))
    found: dict[str, list[str]] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return found  # not made yet: nothing left in it
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        with contextlib.suppress(OSError):
            if match and int(match.group(2)) != os.getpid() \
                    and _last_written(entry) < _STARTED:
                found.setdefault(match.group(1), []).append(entry.name)
    return found


def _last_written(entry: os.DirEntry) -> float:
    """When the file ``entry``, or the newest entry of the folder ``entry``, was written (a
    folder's own time changes only with its direct entries, not with a file written deeper
    in it); infinity for anything else (a link), which is never taken for stale."""
    if entry.is_file(follow_symlinks=False):
        return entry.stat(follow_symlinks=False).st_mtime
    if not entry.is_dir(follow_symlinks=False):
        return math.inf
    times = [entry.stat(follow_symlinks=False).st_mtime]
    for folder, names, files in os.walk(entry.path):
        times += [os.lstat(os.path.join(folder, n)).st_mtime for n in names + files]
    return max(times)


def _sync(f: IO, fsync: bool) -> None:
    if fsync:
        f.flush()
        os.fsync(f.fileno())


def _remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


def read_json(path: str) -> dict:
    """The JSON object at ``path``; {} if it is missing or garbled (a record that is only
    ever written whole, by :func:`write_json`, so a garbled one was never finished), or not
    an object (edited by hand)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def read_record(path: str) -> dict | None:
    """The JSON object at ``path``, None if there is no such file, or a ValueError saying
    why it cannot be used ("cannot be read (<why>)": unreadable, garbled, or not an object):
    for a record whose loss :func:`read_json` would hide from a decision that rests on it
    (a run's options, the checkpoints an ensemble keeps); the caller names the file and
    the fix."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # ValueError: JSON's, or not UTF-8
        raise ValueError(f"cannot be read ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"cannot be read (it holds a JSON {type(record).__name__}, not an "
                         "object)")
    return record


def write_json(path: str, value: dict) -> None:
    """``value`` as indented, key-sorted JSON at ``path``, replaced whole (its folder made)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
