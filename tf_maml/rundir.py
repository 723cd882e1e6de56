"""The run directory's safety rules, shared by supervised training, RL and
``MetaLearner.fit(run_dir=...)``: one writer at a time (a lock file), files replaced whole
(a temporary and a rename), checkpoints found from their files, a log that holds each
iteration once, and an error that says what was kept when the disk refuses a write.

Messages name the library's arguments in backticks (`run_dir`, `resume=True`); the command
line turns them into its flag names.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from tf_maml import atomic
from tf_maml.errors import dangling_link, dangling_link_problem

LOCK_NAME = "run.lock"
# Held only while an evaluation replaces its set of result files: training holds run.lock
# for hours, so an evaluation beside it cannot take that one, yet two evaluations (or one and
# the evaluation after training) renaming the same set at once would mix it.
RESULTS_LOCK_NAME = "results.lock"
RESULTS_WAIT_S = 120.0  # writing a result set takes seconds; a holder past this is stuck
CHECKPOINT_NAME = "model"
ENSEMBLE_NAME = "ensemble.json"  # an ensemble's members (tf_maml/ensemble.py)
EARLIER_RESULTS = "earlier_results"  # result sets another evaluation replaced
# The fine-tuning baseline's search of its learning rate and decay on validation tasks
# (tf_maml/baselines.py), K in the name: the accuracy of every pair measured, written after
# each, so that an interrupted search (hours for 5-shot on a 2-core machine) resumes where it
# stopped. The zoo keeps it beside the evaluation it chose the step size of.
SELECTION_NAME = "finetune_selection_ubs{}.json"


class RunDirError(RuntimeError):
    """The run directory (or a SavedModel export's directory) cannot be used (in use by
    another process, not writable, full); the message names the directory and the fix, and
    what was kept."""


# ---------------------------------------------------------------------- lock
def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (Linux), so that a recycled pid is not taken for the
    process that wrote a lock; None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    started = owner.get("started_ticks")
    return started is None or _process_start(pid) in (None, started)


def _read_owner(path: str) -> dict:
    try:
        with open(path) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    when = owner.get("since")
    since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}" if when else ""
    command = f" ({owner['command']})" if owner.get("command") else ""
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')}{since}{command}"


def _makedirs(path: str) -> list[str]:
    """``os.makedirs`` that returns the directories it created, outermost first."""
    created = []
    head = os.path.abspath(path)
    while not os.path.exists(head):
        created.append(head)
        head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    return created[::-1]


@contextlib.contextmanager
def lock(run_dir: str, log: Callable[[str], None] = print, name: str = LOCK_NAME,
         wait: float = 0.0) -> Iterator[None]:
    """Holds ``<run_dir>/run.lock`` while the block runs: a second process that wants the
    same run directory is refused with a message naming the first. A lock left by a process
    that no longer runs on this host (SIGKILL, a crash) is taken over with a warning. The
    lock is taken once, at the top of a run (the command line's runner, or
    ``MetaLearner.fit(run_dir=...)``): a second one on the same directory, from this process
    too (another thread, or a ``fit`` inside a run), is refused. Directories created for the
    lock, and the lock itself, are removed on exit, so that a run refused early leaves no
    trace. ``name`` and ``wait``: another lock file of the directory, and how many seconds
    to wait for a live holder before refusing (:func:`results_lock`)."""
    try:
        created = _makedirs(run_dir)
    except OSError as err:
        raise RunDirError(os_error_message(err, run_dir, "create the run directory")) from err
    path = os.path.join(run_dir, name)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
          "started_ticks": _process_start(os.getpid()),
          "command": " ".join(os.path.basename(a) if i == 0 else a
                              for i, a in enumerate(sys.argv))[:200]}
    try:
        _create_lock(path, me, run_dir, log, wait)
    except BaseException:
        _remove_created(created)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        _remove_created(created)


def results_lock(run_dir: str,
                 log: Callable[[str], None] = print) -> contextlib.AbstractContextManager:
    """Held while an evaluation writes its result set (:func:`tf_maml.atomic.write_all`), so
    that two sets written at once come one after the other, never mixed: a second writer
    waits for the first (seconds) rather than being refused after its evaluation ran."""
    return lock(run_dir, log, RESULTS_LOCK_NAME, RESULTS_WAIT_S)


def write_result_set(run_dir: str, files: dict[str, str | bytes], numbers: str,
                     log: Callable[[str], None] = print) -> str | None:
    """Writes an evaluation's result set ``files`` (path -> contents, all in ``run_dir``) as
    one set (:func:`tf_maml.atomic.write_all`), under :func:`results_lock`. The original
    names a result after K and the step size only, so another evaluation of the same run
    (a 10-task check after the 600-task evaluation, another ``test_iter``) would replace the
    earlier numbers: if the earlier set's ``numbers`` file (the per-task matrix) differs from
    the new one, that set is first copied whole into ``earlier_results/<its UTC time>/`` and
    said. Returns that folder, or None (no earlier set, or the same numbers)."""
    with results_lock(run_dir, log):
        # A set a killed writer left half replaced is completed first: else its mix of
        # two versions was kept as "the earlier set".
        atomic.complete_interrupted(run_dir)
        kept = _keep_earlier(run_dir, files, numbers)
        try:
            atomic.write_all(files)
        except BaseException:  # the earlier set is still in place: no copy of it is needed
            if kept:
                shutil.rmtree(kept, ignore_errors=True)
                with contextlib.suppress(OSError):  # if it holds no other earlier set
                    os.rmdir(os.path.dirname(kept))
            raise
    if kept:
        log(f"The earlier results, with other numbers, are kept in {kept}")
    return kept


def _keep_earlier(run_dir: str, files: dict[str, str | bytes], numbers: str) -> str | None:
    try:
        with open(numbers, "rb") as f:
            earlier = f.read()
    except FileNotFoundError:
        return None
    new = files[numbers]
    if earlier == (new.encode() if isinstance(new, str) else new):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(os.path.getmtime(numbers)))
    folder = os.path.join(run_dir, EARLIER_RESULTS, stamp)
    n = 1
    while os.path.exists(folder):  # two sets written within a second
        n += 1
        folder = os.path.join(run_dir, EARLIER_RESULTS, f"{stamp}-{n}")
    # Copied under a temporary name and renamed: a crash leaves the folder whole or absent
    # (and the earlier set itself is untouched until the copy is done).
    tmp = atomic.temporary_name(folder)
    os.makedirs(tmp)
    try:
        for path in files:
            if os.path.exists(path):
                shutil.copy2(path, os.path.join(tmp, os.path.basename(path)))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _create_lock(path: str, me: dict, run_dir: str, log, wait: float = 0.0) -> None:
    # The lock appears whole or not at all: written under a private name, then hard-linked
    # to run.lock, which fails if it exists (atomic, on NFS too).
    tmp = f"{path}.{me['host']}.{me['pid']}.{threading.get_ident()}"  # threads: their own
    until = time.monotonic() + wait
    try:
        with open(tmp, "w") as f:
            json.dump(me, f)
        tries = 0
        while tries < 3:
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                pass
            owner = _read_owner(path)
            same_host = owner.get("host") == me["host"]
            if owner and (not same_host or _alive(owner)):
                if time.monotonic() < until:  # a holder that is about to let go
                    time.sleep(0.1)
                    continue
                if wait:
                    raise RunDirError(
                        f"{path} has been held by {_describe(owner)} for over {wait:.0f} s; "
                        f"wait for it to finish, or if it no longer runs, delete {path} and "
                        "run the same command again.")
                fix = ("wait for it to finish, or stop it, or use another `run_dir`"
                       if same_host else
                       f"if it no longer runs, delete {path}; else use another `run_dir`")
                if same_host and owner.get("pid") == me["pid"]:
                    fix = ("this process already trains there: one run at a time per "
                           "directory; use another `run_dir`")
                raise RunDirError(f"{run_dir} is in use by {_describe(owner)}: two writers "
                                  f"would mix their checkpoints and logs; {fix}.")
            tries += 1
            if not owner and time.time() - _mtime(path) < 5:  # being written right now
                time.sleep(1)
                continue
            log(f"WARNING: removing the stale lock {path} of {_describe(owner)}, which no "
                "longer runs.")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        raise RunDirError(f"could not take the lock {path}; delete it if no other process "
                          "uses the run directory")
    except OSError as err:
        raise RunDirError(os_error_message(err, run_dir, "write the lock "
                                           + os.path.basename(path))) from err
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _remove_created(created: list[str]) -> None:
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # only if still empty


# ---------------------------------------------------------------------- writing
def os_error_message(err: OSError, run_dir: str, action: str, kept: str = "",
                     arg: str = "run_dir") -> str:
    """One line for an OSError while writing into ``run_dir``: what failed, why, what was
    kept, and the fix (``arg``: the argument that chose the directory)."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    dangling = (dangling_link_problem(run_dir)
                if err.errno in (errno.ENOENT, errno.EEXIST) else None)
    if dangling:  # else "No such file or directory ... check <run_dir>"
        kept = kept or "nothing already written was changed"
        return (f"could not {action} in {run_dir}: {dangling}. Nothing was lost: {kept}; "
                f"mount or create {os.readlink(dangling_link(run_dir))}, or use another "
                f"`{arg}`, then run the same command again.")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free some space on the disk of {run_dir}"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f"make {run_dir} writable, or use another `{arg}`"
    elif err.errno == errno.EISDIR and err.filename:
        kept = kept or "nothing already written was changed"
        return (f"could not {action} in {run_dir}: {err.filename} is a folder, where a file "
                f"goes. Nothing was lost: {kept}; move that folder away, then run the same "
                "command again.")
    elif err.errno == errno.ENOTDIR and _file_below(err.filename, run_dir):
        kept = kept or "nothing already written was changed"
        return (f"could not {action} in {run_dir}: {_file_below(err.filename, run_dir)} is a "
                f"file, where a folder goes. Nothing was lost: {kept}; move that file away, "
                "then run the same command again.")
    elif err.errno in (errno.ENOTDIR, errno.EEXIST):
        kept = kept or "nothing already written was changed"
        return (f"could not {action} in {run_dir}: {reason}. Nothing was lost: {kept}; a file "
                f"stands where {run_dir} or a directory above it should be: use another "
                f"`{arg}` (or move that file away and run the same command again).")
    else:
        fix = f"check {run_dir}"
    kept = kept or "nothing already written was changed"
    return (f"could not {action} in {run_dir}: {reason}. Nothing was lost: {kept}; {fix}, "
            "then run the same command again.")


def _file_below(path, run_dir: str) -> str | None:
    """The file in ``run_dir`` (below it, not above) that stands where ``path`` needs a
    folder (:func:`file_in_the_way`: e.g. a file named earlier_results); None if none."""
    in_the_way = file_in_the_way(os.fspath(path)) if path else None
    if in_the_way and os.path.abspath(in_the_way).startswith(
            os.path.join(os.path.abspath(run_dir), "")):
        return in_the_way
    return None


@contextlib.contextmanager
def writing(run_dir: str, action: str, kept: Callable[[], str] | None = None,
            cleanup: Callable[[], None] | None = None, arg: str = "run_dir") -> Iterator[None]:
    """Turns an OSError (or TensorFlow's error for one) inside the block into a
    :class:`RunDirError` naming ``action``, after ``cleanup`` removed any partial file."""
    try:
        yield
    except Exception as err:
        os_err = _as_os_error(err)
        if os_err is None:
            raise
        if cleanup is not None:
            cleanup()
        raise RunDirError(os_error_message(os_err, run_dir, action,
                                           kept() if kept else "", arg)) from err


def check_writable(directory: str, names: Sequence[str] = ()) -> None:
    """Raises now the OSError that writing a file into ``directory`` would raise (a
    read-only mount, permissions changed since training; a folder where one of the files
    ``names`` goes), before the minutes or hours of an evaluation whose results could not
    be kept. A directory not made yet passes: its writer makes it, and says so if it
    cannot."""
    import tempfile

    if os.path.isdir(directory):
        with tempfile.TemporaryFile(dir=directory):  # removed on close; no name is left
            pass
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)


def check_results_writable(directory: str, names: Sequence[str],
                           action: str = "write the evaluation results") -> None:
    """A RunDirError now if an evaluation's result set, the files ``names``, could not be
    written into ``directory`` (:func:`check_writable`: read-only, a folder where one of
    them goes), saying what is kept (:func:`kept_results`): said before the evaluation, and
    before the training a run evaluates after, not after them. The supervised and the RL
    evaluations' one check."""
    with writing(directory, action, kept=lambda: kept_results(directory, names)):
        check_writable(directory, names)
        # An earlier set with other numbers is kept in earlier_results/ (write_result_set):
        # a file of that name failed the write after the whole evaluation.
        earlier = os.path.join(directory, EARLIER_RESULTS)
        if (any(os.path.isfile(os.path.join(directory, name)) for name in names)
                and file_in_the_way(earlier)):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), earlier)


def kept_results(directory: str, names: Sequence[str]) -> str:
    """What a failed write of the result set ``names`` in ``directory`` left: the earlier
    files of the set, all of them (:func:`write_result_set` replaces none of them unless it
    replaces all), named with one stem per name ("test_returns.csv/.npy")."""
    stems: dict[str, list[str]] = {}
    for name in names:
        if os.path.isfile(os.path.join(directory, name)):
            stem, ext = os.path.splitext(name)
            stems.setdefault(stem, []).append(ext)
    if not stems:
        return "the checkpoints are intact and no result file was written"
    held = ", ".join(stem + "/".join(exts) for stem, exts in stems.items())
    return f"the checkpoints and the earlier results ({held}) are intact"


def check_writable_later(folder: str) -> None:
    """Raises now the OSError that writing a file into ``folder``, made when it is written
    (perhaps hours later), would raise: a file standing at it or above it, a link to
    nothing, or the nearest folder that exists refusing a new file (:func:`check_writable`:
    a read-only mount, permissions)."""
    in_the_way = file_in_the_way(folder)
    if in_the_way:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), in_the_way)
    if dangling_link(folder):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), folder)
    existing = folder
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    check_writable(existing or os.curdir)


def _as_os_error(err: Exception) -> OSError | None:
    if isinstance(err, OSError):
        return err
    # TensorFlow's file system reports errno only in the text of its OpError.
    text = getattr(err, "message", "") if type(err).__module__.startswith("tensorflow") else ""
    for code, words in ((errno.ENOSPC, "No space left on device"),
                        (errno.EROFS, "Read-only file system"),
                        (errno.EACCES, "Permission denied"),
                        (errno.EDQUOT, "Disk quota exceeded")):
        if words in text:
            return OSError(code, words)
    return None


# ---------------------------------------------------------------------- checkpoints
def checkpoint_prefixes(directory: str, name: str = CHECKPOINT_NAME, complete: bool = False,
                        ) -> list[tuple[int, str]]:
    """``(iteration, prefix)`` of every ``<name>-<iteration>.index`` in ``directory``, oldest
    first: the one lister of checkpoints (training, resume, the ensemble, the model zoo). The
    files are the truth, not TensorFlow's ``checkpoint`` state file, which a crash, a copy or
    a user can lose or garble. ``complete``: only those whose data files are there beside
    the index (what a copy may take)."""
    pattern = re.compile(rf"{re.escape(name)}-(\d+)\.index$")
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    found = sorted((int(m.group(1)), os.path.join(directory, e[:-len(".index")]))
                   for e in entries if (m := pattern.match(e)))
    return [(i, prefix) for i, prefix in found if not complete or _data_files(prefix)]


def file_in_the_way(path: str) -> str | None:
    """The file that stands at ``path`` or where a folder above it would be (as ``path``
    names it: relative if it is), so that ``path`` can be no folder; None if there is none
    (``path`` a folder, or missing below a folder)."""
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return path if path and not os.path.isdir(path) else None


def past_the_end(latest: int, total: int) -> str | None:
    """Why a run whose newest checkpoint is at iteration ``latest`` cannot be trained to
    ``total`` iterations (the words after "the run in <run>"): training does not go back,
    and stopping at once would record the smaller number as the run's length. None if
    ``latest`` is not past ``total``. The command line's and ``fit``'s refusal alike."""
    if latest <= total:
        return None
    return (f"is at iteration {latest} (model-{latest}), past the {total} asked; training "
            "does not go back")


def checkpoint_files(prefix: str) -> list[str]:
    """The files of a listed checkpoint: its ``.index``, then its ``.data-*`` shards."""
    return [prefix + ".index"] + _data_files(prefix)


# TensorFlow's shard names: not ``<shard>.<pid>.tmp``, the temporary a copy killed midway
# (SIGKILL, a power cut) leaves, which would make a checkpoint without its data look
# complete, and be copied with it into the model zoo.
_SHARD = re.compile(r"\.data-\d+-of-\d+")


def _data_files(prefix: str) -> list[str]:
    return sorted(path for path in glob.glob(glob.escape(prefix) + ".data-*")
                  if _SHARD.fullmatch(path[len(prefix):]))


# ---------------------------------------------------------------------- the log
class CSVLog:
    """A CSV file of rows keyed by ``iteration``. :meth:`start` keeps the rows up to the
    iteration training resumes from (the rest will be written again) and :meth:`row`
    appends one row, flushed at once, so the file holds each iteration once whatever
    happened before: a crash, a fallback to an older checkpoint, a resume."""

    def __init__(self, path: str, columns: Sequence[str]):
        self.path, self.columns, self.file = path, list(columns), None

    def start(self, iteration: int) -> None:
        _, rows = read_csv_up_to(self.path, iteration)
        run_dir = os.path.dirname(self.path) or "."
        with writing(run_dir, f"write {os.path.basename(self.path)}"):
            atomic.write(self.path, csv_text(self.columns, rows))
            self.file = open(self.path, "a", newline="")  # noqa: SIM115 (closed in close())
        self.writer = csv.writer(self.file)

    def row(self, values: Sequence) -> None:
        with writing(os.path.dirname(self.path) or ".",
                     f"append to {os.path.basename(self.path)}"):
            self.writer.writerow(values)
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None


def read_csv_up_to(path: str, iteration: int) -> tuple[list[str], list[dict]]:
    """The columns of the :class:`CSVLog` at ``path`` and its rows up to ``iteration`` (none
    if there is no file; a line a crash cut short is skipped). A file that is not such a log
    (not UTF-8 text, or no ``iteration`` column: edited, saved by a spreadsheet, replaced)
    raises :class:`RunDirError`: the log is rewritten from these rows, so reading it as
    empty would lose every row."""
    if not os.path.exists(path):
        return [], []
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                try:
                    if int(row["iteration"]) <= iteration:
                        rows.append(row)
                except (KeyError, TypeError, ValueError):
                    continue
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        problem = f"not a CSV text file ({err})"
    except OSError as err:  # a folder in its place
        problem = f"it cannot be opened ({err.strerror})"
    else:
        if not columns or "iteration" in columns:
            return columns, rows
        problem = f"its first line has no column 'iteration' (it reads {','.join(columns)[:60]})"
    raise RunDirError(f"{path} cannot be read as the run's log: {problem}. Training would "
                      "rewrite it and lose its rows: restore it, or move it away to start a "
                      "new log, then run the same command again.")


def csv_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    import io

    out = io.StringIO()
    csv.writer(out).writerows([list(columns)] + [[r.get(c, "") for c in columns]
                                                 for r in rows])
    return out.getvalue()
