"""Tests of data_prep.omniglot and data_prep.miniimagenet on tiny data in the official layouts."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from tf_maml.data import miniimagenet as mprep
from tf_maml.data import omniglot as oprep
from tf_maml.data import prep
from tf_maml.data.prep import PrepError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Omniglot: 3 alphabets x 4 characters x 20 drawings, split over the two official archives.
OMNI_SETS = {"images_background": ["Alpha", "Beta_(b)"], "images_evaluation": ["Gamma"]}
OMNI_CHARS, OMNI_DRAWINGS = 4, 20


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def omniglot_files(seed: int = 0) -> dict[str, dict[str, bytes]]:
    """{set name: {path inside the zip: PNG bytes}} of 105x105 mode "1" drawings."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, bytes]] = {}
    char_id = 0
    for set_name, alphabets in OMNI_SETS.items():
        out[set_name] = {}
        for alphabet in alphabets:
            for c in range(1, OMNI_CHARS + 1):
                char_id += 1
                for d in range(1, OMNI_DRAWINGS + 1):
                    pixels = rng.random((105, 105)) < 0.8  # True = white background
                    img = Image.fromarray(pixels)  # bool -> mode "1"
                    assert img.mode == "1"
                    path = f"{set_name}/{alphabet}/character{c:02d}/{char_id:04d}_{d:02d}.png"
                    out[set_name][path] = png_bytes(img)
    return out


def write_zip(path: str, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        dirs = sorted({p.rsplit("/", i)[0] + "/" for p in files for i in (1, 2, 3)})
        for d in dirs:
            zf.writestr(d, b"")
        for p, data in files.items():
            zf.writestr(p, data)


def sha256_tree(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def mtimes(root: str) -> dict[str, int]:
    return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, files in os.walk(root) for n in files}


@pytest.fixture(scope="module")
def omni_files():
    return omniglot_files()


@pytest.fixture(scope="module")
def omni_zip_source(tmp_path_factory, omni_files):
    src = tmp_path_factory.mktemp("omniglot_src")
    for set_name, files in omni_files.items():
        write_zip(str(src / f"{set_name}.zip"), files)
    return str(src)


@pytest.fixture(scope="module")
def omni_built(tmp_path_factory, omni_zip_source):
    """(source, output, summary, hashes of the source before the run)."""
    before = sha256_tree(omni_zip_source)
    out = str(tmp_path_factory.mktemp("omniglot_out") / "omniglot")
    summary = oprep.prepare_omniglot(omni_zip_source, out, expect_counts=False)
    return omni_zip_source, out, summary, before


def test_omniglot_tree_cache_and_marker(omni_built, omni_files):
    src, out, summary, before = omni_built
    assert summary["already_complete"] is False
    assert sha256_tree(src) == before  # the source is only read
    names = sorted(f"{a}/character{c:02d}" for alphabets in OMNI_SETS.values()
                   for a in alphabets for c in range(1, OMNI_CHARS + 1))
    assert summary["num_characters"] == len(names) == 12
    assert summary["drawings_per_character"] == OMNI_DRAWINGS
    with np.load(os.path.join(out, oprep.CACHE_NAME)) as z:
        images, cache_names, files = z["images"], z["names"], z["files"]
    assert images.dtype == np.uint8 and images.shape == (12, OMNI_DRAWINGS, 28, 28)
    assert cache_names.tolist() == names
    all_sources = {p.split("/", 1)[1]: data for fs in omni_files.values() for p, data in fs.items()}
    for i, name in enumerate(names):
        char_dir = os.path.join(out, *name.split("/"))
        assert files[i].tolist() == sorted(os.listdir(char_dir))
        assert len(files[i]) == OMNI_DRAWINGS
        for j, fname in enumerate(files[i]):
            with Image.open(os.path.join(char_dir, fname)) as img:
                assert img.size == (28, 28)
                assert img.mode == "1"  # mode "1" in, mode "1" out: binary drawings
                stored = np.asarray(img.convert("L"))
            np.testing.assert_array_equal(images[i, j], stored)
            # Pillow resamples mode "1" with NEAREST even when LANCZOS is asked for.
            with Image.open(io.BytesIO(all_sources[f"{name}/{fname}"])) as src_img:
                nearest = np.asarray(src_img.resize((28, 28), Image.NEAREST).convert("L"))
            np.testing.assert_array_equal(stored, nearest)
    assert set(np.unique(images)) <= {0, 255}
    marker = prep.read_marker(out, "omniglot")
    assert marker["num_files"] == 12 * OMNI_DRAWINGS
    assert marker["source_modes"] == {"1": 12 * OMNI_DRAWINGS}


def test_omniglot_rerun_is_fast_and_touches_nothing(omni_built):
    src, out, _, _ = omni_built
    before = mtimes(out)
    start = time.monotonic()
    again = oprep.prepare_omniglot(src, out, expect_counts=False)
    assert again["already_complete"] is True
    assert time.monotonic() - start < 1.0
    assert mtimes(out) == before


def test_omniglot_expected_counts_by_default(omni_zip_source, tmp_path):
    with pytest.raises(PrepError, match="1623"):
        oprep.prepare_omniglot(omni_zip_source, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / prep.MARKER_NAME)


def test_omniglot_interrupted_run_completes(omni_built, tmp_path):
    src, out, _, _ = omni_built
    work = str(tmp_path / "omniglot")
    shutil.copytree(out, work)
    reference = sha256_tree(work)
    os.remove(os.path.join(work, prep.MARKER_NAME))
    victim = os.path.join(work, "Alpha", "character02")
    removed = sorted(os.listdir(victim))[3]
    os.remove(os.path.join(victim, removed))
    gamma = os.path.join(work, "Gamma", "character01")
    damaged = os.path.join(gamma, min(os.listdir(gamma)))
    with open(damaged, "r+b") as f:
        f.truncate(10)
    stale = os.path.join(victim, removed + ".123" + prep.PARTIAL_SUFFIX)
    with open(stale, "wb") as f:
        f.write(b"half a file")
    os.remove(os.path.join(work, oprep.CACHE_NAME))
    summary = oprep.prepare_omniglot(src, work, expect_counts=False)
    assert summary["already_complete"] is False
    assert summary["files_written"] == 2  # the missing and the damaged drawing
    assert not os.path.exists(stale)
    after = sha256_tree(work)
    assert after.pop(prep.MARKER_NAME)
    assert reference.pop(prep.MARKER_NAME)
    assert after == reference


def test_omniglot_marker_with_missing_files_rebuilds(omni_built, tmp_path):
    src, out, _, _ = omni_built
    work = str(tmp_path / "omniglot")
    shutil.copytree(out, work)
    path = os.path.join(work, "Beta_(b)", "character04")
    os.remove(os.path.join(path, min(os.listdir(path))))
    summary = oprep.prepare_omniglot(src, work, expect_counts=False)
    assert summary["already_complete"] is False and summary["files_written"] == 1


def damage(path: str, how: str) -> bytes:
    """Damages the image file at ``path`` as a bad copy or disk would; returns its old bytes."""
    with open(path, "rb") as f:
        good = f.read()
    bad = {"cut short": good[:len(good) // 2], "foreign bytes": b"<html>404</html>",
           "empty": b""}[how]
    with open(path, "wb") as f:
        f.write(bad)
    return good


@pytest.mark.parametrize("how", ["cut short", "foreign bytes", "empty"])
def test_omniglot_rerun_repairs_damaged_files(omni_built, tmp_path, how):
    # A finished output with a damaged drawing used to answer "already complete".
    src, out, _, _ = omni_built
    work = str(tmp_path / "omniglot")
    shutil.copytree(out, work)
    reference = sha256_tree(work)
    folder = os.path.join(work, "Gamma", "character03")
    damage(os.path.join(folder, sorted(os.listdir(folder))[5]), how)
    summary = oprep.prepare_omniglot(src, work, expect_counts=False)
    assert summary["already_complete"] is False and summary["files_written"] == 1
    assert sha256_tree(work) == reference


def test_omniglot_extracted_folders_give_the_same_output(omni_built, omni_files, tmp_path):
    _, out, _, _ = omni_built
    src = tmp_path / "src"
    for files in omni_files.values():
        for p, data in files.items():
            (src / p).parent.mkdir(parents=True, exist_ok=True)
            (src / p).write_bytes(data)
    before = sha256_tree(str(src))
    work = str(tmp_path / "out")
    oprep.prepare_omniglot(str(src), work, expect_counts=False)
    assert sha256_tree(str(src)) == before
    a, b = sha256_tree(out), sha256_tree(work)
    a.pop(prep.MARKER_NAME)
    b.pop(prep.MARKER_NAME)
    assert a == b


def test_omniglot_symlinked_alphabets_are_read_and_a_link_loop_named(omni_built, omni_files,
                                                                     tmp_path):
    # A user who linked alphabets into the extracted sets had them left out without a word
    # (the walk did not follow links): with --expect_counts=false, a smaller data set.
    _, out, _, _ = omni_built
    store, src = tmp_path / "store", tmp_path / "src"
    for files in omni_files.values():
        for p, data in files.items():
            (store / p).parent.mkdir(parents=True, exist_ok=True)
            (store / p).write_bytes(data)
    for set_name, alphabets in OMNI_SETS.items():
        (src / set_name).mkdir(parents=True)
        for alphabet in alphabets:
            (src / set_name / alphabet).symlink_to(store / set_name / alphabet)
    work = str(tmp_path / "out")
    oprep.prepare_omniglot(str(src), work, expect_counts=False)
    a, b = sha256_tree(out), sha256_tree(work)
    a.pop(prep.MARKER_NAME)
    b.pop(prep.MARKER_NAME)
    assert a == b
    # A link to nothing (a disk not mounted) is named, not left out.
    gone = src / "images_evaluation" / "Delta"
    gone.symlink_to(tmp_path / "unmounted" / "Delta")
    with pytest.raises(PrepError) as raised:
        oprep.prepare_omniglot(str(src), str(tmp_path / "out1"), expect_counts=False)
    assert str(raised.value) == (
        f"{gone} is a link to {tmp_path / 'unmounted' / 'Delta'}, which does not exist (a "
        "disk not mounted?): mount or create it, or remove the link")
    gone.unlink()
    # A link to a folder already read (here, a loop) is named, not walked forever.
    loop = src / "images_background" / "Alpha" / "character01" / "again"
    loop.symlink_to(src / "images_background")
    with pytest.raises(PrepError) as raised:
        oprep.prepare_omniglot(str(src), str(tmp_path / "out2"), expect_counts=False)
    assert str(raised.value) == (
        f"{loop} is a link to {src / 'images_background'}, a folder read already: remove "
        "that link (each alphabet once)")


def test_omniglot_corrupt_png_is_named(omni_files, tmp_path):
    files = {k: dict(v) for k, v in omni_files.items()}
    bad = "images_evaluation/Gamma/character03/0011_07.png"
    files["images_evaluation"][bad] = files["images_evaluation"][bad][:60]  # truncated
    for set_name, fs in files.items():
        write_zip(str(tmp_path / f"{set_name}.zip"), fs)
    with pytest.raises(PrepError, match=r"0011_07\.png"):
        oprep.prepare_omniglot(str(tmp_path), str(tmp_path / "out"), expect_counts=False)
    assert not os.path.exists(tmp_path / "out" / prep.MARKER_NAME)


def test_omniglot_truncated_zip_is_named(omni_zip_source, tmp_path):
    for name in ("images_background.zip", "images_evaluation.zip"):
        shutil.copy(os.path.join(omni_zip_source, name), tmp_path / name)
    path = tmp_path / "images_evaluation.zip"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PrepError, match=r"images_evaluation\.zip"):
        oprep.prepare_omniglot(str(tmp_path), str(tmp_path / "out"), expect_counts=False)


def test_omniglot_missing_source_and_uneven_counts(omni_files, tmp_path):
    with pytest.raises(PrepError, match="images_background"):
        oprep.prepare_omniglot(str(tmp_path), str(tmp_path / "out"), expect_counts=False)
    files = {k: dict(v) for k, v in omni_files.items()}
    del files["images_background"]["images_background/Alpha/character02/0002_05.png"]
    for set_name, fs in files.items():
        write_zip(str(tmp_path / f"{set_name}.zip"), fs)
    with pytest.raises(PrepError, match=r"Alpha/character02 \(19\)"):
        oprep.prepare_omniglot(str(tmp_path), str(tmp_path / "out"), expect_counts=False)


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


def test_omniglot_command_line(omni_zip_source, tmp_path):
    out = str(tmp_path / "out")
    args = (f"--source={omni_zip_source}", f"--output={out}", "--noexpect_counts",
            "--progress_every=100")
    first = run_module("data_prep.omniglot", *args)
    assert first.returncode == 0, first.stderr
    assert "12 characters x 20 drawings" in first.stdout
    assert "omniglot images: 100/240" in first.stderr  # progress lines
    second = run_module("data_prep.omniglot", *args)
    assert second.returncode == 0 and "already complete" in second.stdout
    failed = run_module("data_prep.omniglot", f"--source={tmp_path}", f"--output={out}2")
    assert failed.returncode != 0 and "images_background.zip" in failed.stderr


@pytest.mark.parametrize("every", [0, -5, 2.5])
def test_a_progress_interval_that_is_no_positive_whole_number_is_named(tmp_path, every):
    # 0 or less logged every image (2.5: every 2), without a word; refused before anything is
    # read or written (the command line's flags are bounded the same way, by absl).
    for prepare in (lambda out: oprep.prepare_omniglot(str(tmp_path / "none"), out,
                                                       progress_every=every),
                    lambda out: mprep.prepare_miniimagenet(str(tmp_path / "none.zip"),
                                                           str(tmp_path), out,
                                                           progress_every=every)):
        with pytest.raises(ValueError, match=rf"^progress_every must be a whole number of "
                                             rf"images >= 1, got {every}$"):
            prepare(str(tmp_path / "out"))
        assert not (tmp_path / "out").exists()


def test_a_path_flag_with_an_unexpanded_home_is_refused():
    # --output=~/... is not expanded by the shell: it made a folder named ~ in the current one.
    import data_prep

    assert data_prep.path_problem({"source": "src", "output": "~/omniglot"}) == (
        "--output: '~/omniglot' starts with ~, which only a shell expands (not a flagfile, "
        f"nor --flag=~/...): it would be a folder named ~ here; write "
        f"{os.path.expanduser('~/omniglot')}")
    assert data_prep.path_problem({"source": "src", "output": "out/~x"}) is None
    # An unset shell variable (--output=$OUT): was "cannot write : No such file or directory".
    assert data_prep.path_problem({"source": "src", "output": ""}) == (
        "--output: is empty (an unset shell variable, as in --output=$X?): give the path")


# ----------------------------------------------------------------------------------------------
# MiniImageNet: train 3 classes, val 2, test 2, 6 images each; some are 100x90 or grayscale.

MINI_CLASSES = {"train": ["n01000001", "n01000002", "n01000003"],
                "val": ["n02000001", "n02000002"], "test": ["n03000001", "n03000002"]}
MINI_PER_CLASS = 6


def mini_rows() -> dict[str, list[tuple[str, str]]]:
    return {split: [(f"{label}{i:08d}.jpg", label) for label in labels
                    for i in range(1, MINI_PER_CLASS + 1)]
            for split, labels in MINI_CLASSES.items()}


def mini_image(rng: np.random.Generator, index: int) -> bytes:
    if index % 5 == 0:  # not 84x84: resized
        return jpeg_bytes(Image.fromarray(rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)))
    if index % 7 == 0:  # grayscale 84x84: converted
        return jpeg_bytes(Image.fromarray(rng.integers(0, 256, (84, 84), dtype=np.uint8)))
    return jpeg_bytes(Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)))


def write_csvs(folder, rows: dict[str, list[tuple[str, str]]]) -> None:
    os.makedirs(folder, exist_ok=True)
    for split, split_rows in rows.items():
        with open(os.path.join(folder, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows(split_rows)


@pytest.fixture(scope="module")
def mini_source(tmp_path_factory):
    """A folder with images/, images.zip and the three CSVs."""
    root = tmp_path_factory.mktemp("mini_src")
    rng = np.random.default_rng(1)
    rows = mini_rows()
    images = {}
    for index, (filename, _) in enumerate(r for split in rows.values() for r in split):
        images[filename] = mini_image(rng, index)
    images["n09999999000001.jpg"] = mini_image(rng, 1)  # in no CSV: ignored
    os.makedirs(root / "images")
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)
    with zipfile.ZipFile(root / "images.zip", "w") as zf:
        zf.writestr("images/", b"")
        for name, data in images.items():
            zf.writestr(f"images/{name}", data)
    write_csvs(root, rows)
    return root


@pytest.fixture(scope="module")
def mini_built(tmp_path_factory, mini_source):
    before = sha256_tree(str(mini_source))
    out = str(tmp_path_factory.mktemp("mini_out") / "miniimagenet")
    summary = mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(mini_source), out,
                                         expect_counts=False)
    return out, summary, before


def test_miniimagenet_tree_cache_and_marker(mini_built, mini_source):
    out, summary, before = mini_built
    assert sha256_tree(str(mini_source)) == before  # nothing moved, deleted or rewritten
    assert summary["already_complete"] is False
    assert 0 < summary["num_resized"] < summary["num_files"] == 7 * MINI_PER_CLASS
    resized = 0
    for split, labels in MINI_CLASSES.items():
        assert sorted(os.listdir(os.path.join(out, split))) == labels
        with np.load(os.path.join(out, f"{split}.npz")) as z:
            images, names, files = z["images"], z["names"], z["files"]
        assert images.dtype == np.uint8
        assert images.shape == (len(labels), MINI_PER_CLASS, 84, 84, 3)
        assert names.tolist() == labels
        for i, label in enumerate(labels):
            class_dir = os.path.join(out, split, label)
            assert files[i].tolist() == sorted(os.listdir(class_dir))
            for j, fname in enumerate(files[i]):
                with open(os.path.join(class_dir, fname), "rb") as f:
                    data = f.read()
                source = (mini_source / "images" / fname).read_bytes()
                with Image.open(io.BytesIO(data)) as img:
                    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (84, 84))
                    np.testing.assert_array_equal(images[i, j], np.asarray(img))
                with Image.open(io.BytesIO(source)) as src_img:
                    as_is = src_img.mode == "RGB" and src_img.size == (84, 84)
                if as_is:
                    assert data == source  # copied byte for byte
                else:
                    resized += 1
                    assert data != source
    assert resized == summary["num_resized"]


def test_miniimagenet_folder_source_and_rerun(mini_built, mini_source, tmp_path):
    out, _, _ = mini_built
    before = sha256_tree(str(mini_source))
    work = str(tmp_path / "out")
    summary = mprep.prepare_miniimagenet(str(mini_source / "images"), str(mini_source), work,
                                         expect_counts=False)
    assert sha256_tree(str(mini_source)) == before
    a, b = sha256_tree(out), sha256_tree(work)
    assert a.pop(prep.MARKER_NAME)
    assert b.pop(prep.MARKER_NAME)
    assert a == b
    stamp = mtimes(work)
    start = time.monotonic()
    again = mprep.prepare_miniimagenet(str(mini_source / "images"), str(mini_source), work,
                                       expect_counts=False)
    assert again["already_complete"] is True and time.monotonic() - start < 1.0
    assert mtimes(work) == stamp
    assert summary["splits"] == again["splits"]


def test_miniimagenet_interrupted_run_completes(mini_built, mini_source, tmp_path):
    out, _, _ = mini_built
    work = str(tmp_path / "out")
    shutil.copytree(out, work)
    reference = sha256_tree(work)
    os.remove(os.path.join(work, prep.MARKER_NAME))
    os.remove(os.path.join(work, "val.npz"))
    class_dir = os.path.join(work, "test", "n03000002")
    os.remove(os.path.join(class_dir, sorted(os.listdir(class_dir))[2]))
    summary = mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(mini_source), work,
                                         expect_counts=False)
    assert summary["files_written"] == 1
    after = sha256_tree(work)
    after.pop(prep.MARKER_NAME)
    reference.pop(prep.MARKER_NAME)
    assert after == reference


def test_miniimagenet_rerun_repairs_damaged_files(mini_built, mini_source, tmp_path):
    out, _, _ = mini_built
    work = str(tmp_path / "out")
    shutil.copytree(out, work)
    reference = sha256_tree(work)
    class_dir = os.path.join(work, "val", "n02000001")
    damage(os.path.join(class_dir, sorted(os.listdir(class_dir))[1]), "cut short")
    summary = mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(mini_source), work,
                                         expect_counts=False)
    assert summary["already_complete"] is False and summary["files_written"] == 1
    assert sha256_tree(work) == reference


def test_miniimagenet_expected_counts_by_default(mini_source, tmp_path):
    with pytest.raises(PrepError, match="64 x 600"):
        mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(mini_source),
                                   str(tmp_path / "out"))


def test_miniimagenet_same_image_under_two_labels(mini_source, tmp_path):
    rows = mini_rows()
    shared = rows["train"][0][0]  # first image of n01000001, also listed under n01000002
    rows["train"] = [r for r in rows["train"] if r != rows["train"][MINI_PER_CLASS]]
    rows["train"].append((shared, "n01000002"))
    write_csvs(tmp_path / "csv", rows)
    out = tmp_path / "out"
    mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(tmp_path / "csv"), str(out),
                               expect_counts=False)
    first = (out / "train" / "n01000001" / shared).read_bytes()
    assert first == (out / "train" / "n01000002" / shared).read_bytes()
    assert len(os.listdir(out / "train" / "n01000002")) == MINI_PER_CLASS


def test_miniimagenet_missing_image_is_named(mini_source, tmp_path):
    rows = mini_rows()
    rows["val"][3] = ("n0200000100000999.jpg", rows["val"][3][1])
    write_csvs(tmp_path / "csv", rows)
    for images in ("images.zip", "images"):
        with pytest.raises(PrepError, match=r"n0200000100000999\.jpg \(val\.csv line 5"):
            mprep.prepare_miniimagenet(str(mini_source / images), str(tmp_path / "csv"),
                                       str(tmp_path / "out"), expect_counts=False)


def test_miniimagenet_undecodable_image_is_named(mini_source, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(mini_source / "images", images)
    bad = mini_rows()["test"][4][0]
    (images / bad).write_bytes((images / bad).read_bytes()[:200])
    with pytest.raises(PrepError, match=bad.replace(".", r"\.")):
        mprep.prepare_miniimagenet(str(images), str(mini_source), str(tmp_path / "out"),
                                   expect_counts=False)
    assert not (tmp_path / "out" / prep.MARKER_NAME).exists()


def test_miniimagenet_missing_or_bad_csv_is_named(mini_source, tmp_path):
    rows = mini_rows()
    del rows["val"]
    write_csvs(tmp_path / "csv", rows)
    with pytest.raises(PrepError, match=r"val\.csv"):
        mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(tmp_path / "csv"),
                                   str(tmp_path / "out"), expect_counts=False)
    (tmp_path / "csv" / "val.csv").write_text("file,class\na.jpg,n1\n")
    with pytest.raises(PrepError, match=r"val\.csv: expected the header"):
        mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(tmp_path / "csv"),
                                   str(tmp_path / "out"), expect_counts=False)
    # A spreadsheet's export with ';' (a locale's list separator) or a TSV was only "expected
    # the header 'filename,label', got ['filename;label']", which reads like a typo.
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):
        (tmp_path / "csv" / "val.csv").write_text(f"filename{separator}label\n"
                                                  f"a.jpg{separator}n1\n")
        with pytest.raises(PrepError, match=rf"val\.csv: expected the header 'filename,label', "
                           rf".*: the file is separated by {name}, not commas; save it as "
                           rf"comma-separated CSV, header 'filename,label' and rows like "
                           rf"'n\d+\.jpg,n\d+'$"):
            mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(tmp_path / "csv"),
                                       str(tmp_path / "out"), expect_counts=False)
    (tmp_path / "csv" / "val.csv").write_text("filename,label\na.jpg;n1\n")
    with pytest.raises(PrepError, match=r"val\.csv line 2: expected 'filename,label', got "
                                        r"\['a\.jpg;n1'\]: the file is separated by semicolons"):
        mprep.prepare_miniimagenet(str(mini_source / "images.zip"), str(tmp_path / "csv"),
                                   str(tmp_path / "out"), expect_counts=False)


def test_miniimagenet_command_line(mini_source, tmp_path):
    out = str(tmp_path / "out")
    args = (f"--images={mini_source / 'images.zip'}", f"--csv_dir={mini_source}",
            f"--output={out}", "--noexpect_counts")
    first = run_module("data_prep.miniimagenet", *args)
    assert first.returncode == 0, first.stderr
    assert "train 3 classes x 6, val 2 classes x 6, test 2 classes x 6" in first.stdout
    second = run_module("data_prep.miniimagenet", *args)
    assert second.returncode == 0 and "already complete" in second.stdout
