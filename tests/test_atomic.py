"""The one atomic write (tf_maml.atomic) and the one checkpoint lister
(tf_maml.rundir.checkpoint_prefixes), on files made here by hand: what a reader finds after a
write that a full disk or an exception cut short is the old file, whole, and no temporary;
the checkpoints listed are the ``model-<i>.index`` files present, in the order of their
iterations (not of their names)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

import pytest

from tf_maml import atomic, rundir, zoo


def _full_disk_at(failing: int, opened: list):
    """``open`` on a disk that fills up at the ``failing``-th file opened for writing."""
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode:
            opened.append(path)
            if len(opened) == failing:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    return full_disk


def test_a_set_of_files_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    old = {str(tmp_path / name): f"old {name}" for name in ("a.csv", "b.npy", "c.json")}
    atomic.write_all(old)
    new = {path: ("new " + text).encode() for path, text in old.items()}
    for failing in (1, 2, 3):  # the disk fills up at the first, second, third file
        opened: list = []
        monkeypatch.setattr(atomic, "open", _full_disk_at(failing, opened), raising=False)
        with pytest.raises(OSError, match="No space"):
            atomic.write_all(new)
        assert len(opened) == failing
        assert {p: open(p).read() for p in old} == old, failing
        assert sorted(os.listdir(tmp_path)) == ["a.csv", "b.npy", "c.json"], failing
    monkeypatch.undo()
    atomic.write_all(new)
    assert {p: open(p, "rb").read() for p in old} == new
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "b.npy", "c.json"]


@contextlib.contextmanager
def _stopped_after_each(monkeypatch, rename: str, signum: str):
    """``os.<rename>`` sends ``signum`` to this process after each call, SIGTERM raising
    KeyboardInterrupt as Ctrl-C does; the block must end in that KeyboardInterrupt."""
    real = getattr(os, rename)

    def renamed_then_stopped(src, dst):
        real(src, dst)
        signal.raise_signal(getattr(signal, signum))

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    monkeypatch.setattr(os, rename, renamed_then_stopped)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_stop_between_the_renames_of_a_set_leaves_the_set_whole(tmp_path, monkeypatch,
                                                                  signum):
    # Ctrl-C landing after the first rename left the new csv beside the old npy and json.
    old = {str(tmp_path / name): f"old {name}" for name in ("a.csv", "b.npy", "c.json")}
    atomic.write_all(old)
    new = {path: "new " + text for path, text in old.items()}
    with _stopped_after_each(monkeypatch, "replace", signum):
        atomic.write_all(new)
    assert {p: open(p).read() for p in old} == new
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "b.npy", "c.json"]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_stop_while_the_zoo_takes_a_checkpoint_leaves_a_whole_one(tmp_path, monkeypatch,
                                                                     signum):
    # The zoo moved a checkpoint's files in one at a time: a second Ctrl-C during the publish
    # left the new index beside the old data (a finished run's weights over its full state).
    run_dir, zoo_dir = tmp_path / "run", tmp_path / "zoo"
    run_dir.mkdir()
    zoo_dir.mkdir()
    names = ("model-5.index", "model-5.data-00000-of-00001")
    for name in names:
        (run_dir / name).write_bytes(b"new " + name.encode())
        (zoo_dir / name).write_bytes(b"old " + name.encode())
    with _stopped_after_each(monkeypatch, "replace", signum):
        zoo._copy_checkpoint(str(run_dir), 5, str(zoo_dir), weights_only=False)
    assert {n: (zoo_dir / n).read_bytes() for n in names} == {
        n: b"new " + n.encode() for n in names}
    assert sorted(os.listdir(tmp_path)) == ["run", "zoo"]  # no half-moved folder left


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_stop_while_an_export_replaces_the_earlier_one_leaves_a_whole_export(
        tmp_path, monkeypatch, signum):
    # Replacing an export is two renames (the earlier one aside, the new one in): a stop
    # between them left no export at the target, the earlier one under a hidden ".old" name.

    from tf_maml import export as export_lib

    target = tmp_path / "model"
    target.mkdir()
    (target / "saved_model.pb").write_bytes(b"earlier")
    real_rename = os.rename
    renames = []

    def stopped_after_the_first(src, dst):
        real_rename(src, dst)
        renames.append(dst)
        if len(renames) == 1:
            signal.raise_signal(getattr(signal, signum))

    def stop(signum, frame):
        raise KeyboardInterrupt

    def write(directory):
        with open(os.path.join(directory, "saved_model.pb"), "wb") as f:
            f.write(b"new")

    previous = signal.signal(signal.SIGTERM, stop)
    monkeypatch.setattr(os, "rename", stopped_after_the_first)
    try:
        with pytest.raises(KeyboardInterrupt):
            export_lib._write_whole(str(target), write)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(renames) == 2  # the stop waited for the second rename
    assert (target / "saved_model.pb").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["model"]  # nothing left beside it


def test_a_stop_while_a_damaged_checkpoint_is_moved_aside_moves_all_its_files(tmp_path,
                                                                             monkeypatch):
    # A damaged checkpoint's files are renamed corrupt-model-N.* one at a time: a Ctrl-C
    # after the first left the other under its old name, read again as a checkpoint.

    from tf_maml import checkpoint

    names = ("model-7.index", "model-7.data-00000-of-00001")
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    real_replace = os.replace

    def stopped_after_the_first(src, dst):
        real_replace(src, dst)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", stopped_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        checkpoint._move_aside(str(tmp_path / "model-7"))
    assert sorted(os.listdir(tmp_path)) == sorted("corrupt-" + n for n in names)


def test_a_streamed_write_that_fails_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "cache.npz")
    atomic.write(path, b"old")
    with pytest.raises(RuntimeError), atomic.replacing(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("interrupted")
    assert open(path, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["cache.npz"]
    with atomic.replacing(path, binary=False) as f:
        f.write("new")
        assert open(path).read() == "old"  # replaced only once the block ends
    assert open(path).read() == "new"


def test_fsync_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """With ``fsync=True`` every file is synced, and before it replaces the target (a power
    cut after the rename must not find an empty file); without it, none is."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"),
                                                     real_replace(a, b)))
    atomic.write_all({str(tmp_path / "x"): "1", str(tmp_path / "y"): b"2"}, fsync=True)
    # The set's journal (synced and put in place before the set's renames) is one more.
    assert events == ["fsync", "fsync", "fsync", "replace", "replace", "replace"]
    events.clear()
    with atomic.replacing(str(tmp_path / "z"), fsync=True) as f:
        f.write(b"3")
    assert events == ["fsync", "replace"]
    events.clear()
    atomic.write(str(tmp_path / "x"), "4")
    assert events == ["replace"]


def test_checkpoints_are_listed_from_their_files_in_iteration_order(tmp_path):
    for name in ("model-5.index", "model-5.data-00000-of-00001",
                 "model-10.index", "model-10.data-00000-of-00002",
                 "model-10.data-00001-of-00002",
                 "model-200.index",  # its data not (yet) there
                 "corrupt-model-7.index", "model-x.index", "model-3.data-00000-of-00001",
                 "model-4_temp", "checkpoint", "other-6.index",
                 # What copies killed by SIGKILL leave (tf_maml.atomic's temporaries): no shard
                 # of model-10, nor the data that would make model-200 complete.
                 "model-10.data-00001-of-00002.4242.tmp", "model-200.data-00000-of-00001.4242.tmp"):
        (tmp_path / name).write_text("")
    d = str(tmp_path)
    assert rundir.checkpoint_prefixes(d) == [(5, f"{d}/model-5"), (10, f"{d}/model-10"),
                                             (200, f"{d}/model-200")]
    assert rundir.checkpoint_prefixes(d, complete=True) == [(5, f"{d}/model-5"),
                                                            (10, f"{d}/model-10")]
    assert rundir.checkpoint_prefixes(d, name="other") == [(6, f"{d}/other-6")]
    assert rundir.checkpoint_files(f"{d}/model-10") == [
        f"{d}/model-10.index", f"{d}/model-10.data-00000-of-00002",
        f"{d}/model-10.data-00001-of-00002"]
    assert rundir.checkpoint_prefixes(str(tmp_path / "missing")) == []
    assert zoo.checkpoint_iterations(d) == [5, 10] and zoo.latest_iteration(d) == 10


def _left_by_a_killed_write(path, pid: int, stale: bool = True) -> None:
    """``path``'s temporary as process ``pid``, killed midway an hour ago (before this
    process started) if ``stale``, left it; else as a write in progress now."""
    with open(f"{path}.{pid}{atomic.TEMP_SUFFIX}", "w") as f:
        f.write("half")
    if stale:
        os.utime(f.name, (time.time() - 3600, time.time() - 3600))


def test_the_next_write_removes_the_temporaries_killed_writes_left(tmp_path):
    # A SIGKILL mid-write leaves <path>.<pid>.tmp, which no later write removed: a partial
    # copy of a checkpoint shard stayed beside the run for good.
    target, other = tmp_path / "log.csv", tmp_path / "other.csv"
    _left_by_a_killed_write(target, os.getpid() + 1)
    _left_by_a_killed_write(other, os.getpid() + 1)  # another target's: kept
    _left_by_a_killed_write(target, os.getpid() + 2, stale=False)  # another writer's: kept
    atomic.write(str(target), "whole\n")
    assert sorted(os.listdir(tmp_path)) == [
        "log.csv", f"log.csv.{os.getpid() + 2}.tmp", f"other.csv.{os.getpid() + 1}.tmp"]
    with atomic.replacing(str(other), binary=False) as f:  # the streamed writer too
        f.write("whole\n")
    assert sorted(os.listdir(tmp_path)) == [
        "log.csv", f"log.csv.{os.getpid() + 2}.tmp", "other.csv"]
    assert target.read_text() == other.read_text() == "whole\n"


@pytest.mark.parametrize("text", ["[]", "70000", "null", '{"run": {"finished": tr'])
def test_a_json_record_that_is_not_an_object_reads_as_missing(tmp_path, text):
    # JSON that is not an object (a state file edited by hand) was returned as it was: the
    # callers' .get() then failed with a traceback (reproduce.json, ensemble.json, ...).
    (tmp_path / "record.json").write_text(text)
    assert atomic.read_json(str(tmp_path / "record.json")) == {}
    assert (tmp_path / "record.json").read_text() == text


# Loads atomic.py alone (standard library only): importing the package would start
# TensorFlow, seconds per killed writer.
KILLED_BETWEEN_RENAMES = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv.pop(1))
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
renames, replace = [], os.replace
JOURNAL = getattr(atomic, "JOURNAL_SUFFIX", ()) or ()  # none before sets had journals
def replace_then_die(src, dst):
    if dst.endswith(JOURNAL):  # the set's journal, written before its renames
        return replace(src, dst)
    if renames:  # the second rename: a SIGKILL (a power cut, the OOM killer) comes first
        os.kill(os.getpid(), signal.SIGKILL)
    renames.append(dst)
    replace(src, dst)
os.replace = replace_then_die
folder, new = sys.argv[1], {"r.npy": open(sys.argv[2], "rb").read()} if sys.argv[2:] else {}
atomic.write_all({os.path.join(folder, n): new.get(n, "new " + n)
                  for n in ("r.csv", "r.pkl", "r.npy")})
"""


def _killed_between_renames(folder, *args, aged: bool = True) -> None:
    """A write of r.csv, r.pkl and r.npy into ``folder`` (r.npy the file ``args`` names, if
    any), killed between its first two renames; ``aged``: its files dated an hour ago
    (before this process started)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, atomic.__file__,
                    str(folder), *args], check=False)
    if not aged:
        return
    hour_ago = time.time() - 3600
    for entry in os.scandir(folder):
        os.utime(entry.path, (hour_ago, hour_ago))


def test_a_set_whose_writer_was_killed_between_its_renames_is_completed_before_use(tmp_path):
    # A SIGKILL between two renames of a set (which no handler can defer) left the new
    # r.csv beside the old r.pkl and r.npy, and their new versions as temporaries that the
    # next write deleted: the next evaluation kept that mix in earlier_results/ as "the
    # earlier set", and every reader read the mix until then.
    names = ("r.csv", "r.pkl", "r.npy")
    atomic.write_all({str(tmp_path / n): "old " + n for n in names})
    _killed_between_renames(tmp_path)
    assert (tmp_path / "r.csv").read_text() == "new r.csv"  # killed after the first rename
    assert (tmp_path / "r.pkl").read_text() == "old r.pkl"
    kept = rundir.write_result_set(str(tmp_path), {str(tmp_path / n): "newer " + n
                                                   for n in names},
                                   str(tmp_path / "r.npy"), log=lambda line: None)
    assert {n: (tmp_path / n).read_text() for n in names} == {n: "newer " + n for n in names}
    assert {n: open(os.path.join(kept, n)).read() for n in names} == {
        n: "new " + n for n in names}  # the killed write's set, whole
    assert sorted(os.listdir(tmp_path)) == [rundir.EARLIER_RESULTS, *sorted(names)]


def test_a_reader_of_a_set_a_killed_writer_left_half_replaced_reads_the_new_set(tmp_path):
    # The per-task matrix (figures, zoo_check, the RL figure) was the earlier evaluation's,
    # beside the new evaluation's table.
    import numpy as np

    from tf_maml.figures import read_matrix

    np.save(tmp_path / "new.npy", np.ones((2, 3)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    np.save(run_dir / "r.npy", np.zeros((2, 3)))
    _killed_between_renames(run_dir, str(tmp_path / "new.npy"))
    assert (run_dir / "r.csv").read_text() == "new r.csv"
    np.testing.assert_array_equal(read_matrix(str(run_dir / "r.npy")), np.ones((2, 3)))
    assert sorted(os.listdir(run_dir)) == ["r.csv", "r.npy", "r.pkl"]


def test_a_journal_naming_a_file_outside_its_folder_moves_nothing(tmp_path):
    # A journal is a list of names in its own folder: one that names another folder's file
    # (written by hand, or by a checkout of someone else's files) is no set of ours.
    folder, pid = tmp_path / "run", 2**22 + 12345  # above any Linux process id
    folder.mkdir()
    (tmp_path / "victim").write_text("mine")
    (tmp_path / f"victim.{pid}{atomic.TEMP_SUFFIX}").write_text("theirs")
    journal = folder / f".r.csv.{pid}{atomic.JOURNAL_SUFFIX}"
    journal.write_text('{"files": ["../victim"]}')
    hour_ago = time.time() - 3600
    os.utime(journal, (hour_ago, hour_ago))
    assert atomic.complete_interrupted(str(folder)) == []
    assert (tmp_path / "victim").read_text() == "mine" and journal.exists()


def test_a_set_its_writer_left_is_completed_by_the_process_that_ran_the_writer(tmp_path):
    # tf-maml-reproduce reads the table of an evaluation it ran: a set the killed child
    # left, newer than the parent, is completed all the same once the child is gone.
    names = ("r.csv", "r.pkl", "r.npy")
    atomic.write_all({str(tmp_path / n): "old " + n for n in names})
    _killed_between_renames(tmp_path, aged=False)
    assert atomic.complete_interrupted(str(tmp_path)) == [str(tmp_path / "r.pkl"),
                                                          str(tmp_path / "r.npy")]
    assert {n: (tmp_path / n).read_text() for n in names} == {n: "new " + n for n in names}
    assert sorted(os.listdir(tmp_path)) == sorted(names)
