"""Tests of the few-shot task samplers (tf_maml.tasks) on tiny prepared data."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tf_maml.data.miniimagenet import prepare_miniimagenet
from tf_maml.data.omniglot import prepare_omniglot
from tf_maml.tasks import image_tasks
from tf_maml.tasks.image_tasks import DataError, FewShotTasks
from tf_maml.tasks.miniimagenet import miniimagenet_tasks
from tf_maml.tasks.omniglot import omniglot_tasks, split_characters

# Omniglot: 3 alphabets x 5 characters x 20 drawings -> splits of 8 / 3 / 4 characters.
ALPHABETS, CHARS, DRAWINGS = ("Aleph", "Beth", "Gimel"), 5, 20
SIZES = {"num_train": 8, "num_val": 3}


def omniglot_drawing(rng: np.random.Generator) -> Image.Image:
    """105x105 mode "1" noise with black (stroke) corners and a white centre.

    After the 28x28 resize the four corner pixels are black and the centre white whatever the
    rotation, so strokes must come out as 1.0 and background as 0.0.
    """
    white = rng.random((105, 105)) < 0.7
    for rows in (slice(0, 8), slice(97, 105)):
        for cols in (slice(0, 8), slice(97, 105)):
            white[rows, cols] = False
    white[40:65, 40:65] = True
    return Image.fromarray(white)


@pytest.fixture(scope="module")
def omniglot_dirs(tmp_path_factory):
    """(prepared tree with npz cache, the same tree without cache)."""
    root = tmp_path_factory.mktemp("omniglot")
    rng = np.random.default_rng(0)
    char_id = 0
    for a, alphabet in enumerate(ALPHABETS):
        set_name = "images_background" if a < 2 else "images_evaluation"
        for c in range(1, CHARS + 1):
            char_id += 1
            folder = root / "src" / set_name / alphabet / f"character{c:02d}"
            folder.mkdir(parents=True)
            for d in range(1, DRAWINGS + 1):
                omniglot_drawing(rng).save(folder / f"{char_id:04d}_{d:02d}.png")
    prepare_omniglot(str(root / "src"), str(root / "prepared"), expect_counts=False)
    shutil.copytree(root / "prepared", root / "tree_only",
                    ignore=shutil.ignore_patterns("*.npz", ".complete"))
    return str(root / "prepared"), str(root / "tree_only")


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory):
    """Prepared MiniImageNet: train 6 classes, val 2, test 5, 12 images each."""
    root = tmp_path_factory.mktemp("mini")
    rng = np.random.default_rng(1)
    (root / "images").mkdir()
    counts = {"train": 6, "val": 2, "test": 5}
    for s, (split, num) in enumerate(counts.items()):
        rows = ["filename,label"]
        for c in range(num):
            label = f"n0{s}{c:06d}"
            for i in range(12):
                name = f"{label}{i:08d}.jpg"
                shape = (90, 100, 3) if i == 0 else (84, 84, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                    root / "images" / name)
                rows.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    out = root / "prepared"
    prepare_miniimagenet(str(root / "images"), str(root), str(out), expect_counts=False)
    return str(out)


def stored_omniglot(data_dir: str) -> dict[bytes, tuple[str, str, int]]:
    """Independent truth: {uint8 bytes of rot90(drawing, k): (character, file, k)}."""
    table = {}
    for alphabet in sorted(os.listdir(data_dir)):
        if not os.path.isdir(os.path.join(data_dir, alphabet)):
            continue
        for char in sorted(os.listdir(os.path.join(data_dir, alphabet))):
            folder = os.path.join(data_dir, alphabet, char)
            for fname in sorted(os.listdir(folder)):
                with Image.open(os.path.join(folder, fname)) as img:
                    pixels = np.asarray(img.convert("L"))
                for k in range(4):
                    key = np.ascontiguousarray(np.rot90(pixels, k)).tobytes()
                    assert key not in table
                    table[key] = (f"{alphabet}/{char}", fname, k)
    return table


def check_labels(y: np.ndarray, n: int, per_class: int) -> None:
    assert y.dtype == np.int32
    for row in y:
        np.testing.assert_array_equal(np.sort(row), np.repeat(np.arange(n), per_class))


def test_omniglot_split_is_deterministic_disjoint_and_like_the_original(omniglot_dirs):
    data_dir, _ = omniglot_dirs
    names = [f"{a}/character{c:02d}" for a in ALPHABETS for c in range(1, CHARS + 1)]
    splits = {s: split_characters(names[::-1], s, **SIZES) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 3, 4]
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(names)
    assert splits == {s: split_characters(names, s, **SIZES) for s in splits}
    state = random.getstate()
    try:  # what the original did with the global generator, on the sorted list
        expected = sorted(names)
        random.seed(1)
        random.shuffle(expected)
    finally:
        random.setstate(state)
    assert splits["train"] + splits["val"] + splits["test"] == expected
    for split, chars in splits.items():
        assert omniglot_tasks(data_dir, split, 3, 1, 1, **SIZES).class_names == chars
    full = [f"A{i:02d}/character{j:02d}" for i in range(50) for j in range(33)][:1623]
    assert [len(split_characters(full, s)) for s in ("train", "val", "test")] == [1100, 100, 423]


def test_omniglot_tasks_match_stored_drawings(omniglot_dirs):
    data_dir, _ = omniglot_dirs
    table = stored_omniglot(data_dir)
    n, k, q, t = 4, 2, 3, 5
    tasks = omniglot_tasks(data_dir, "train", n, k, q, **SIZES)
    assert (tasks.num_classes, tasks.num_support, tasks.num_query) == (n, k, q)
    assert tasks.image_shape == (28, 28, 1)
    train_chars = set(tasks.class_names)
    rng = np.random.default_rng(3)
    rotations_seen = set()
    for _ in range(8):
        sx, sy, qx, qy = tasks.sample_batch(t, rng)
        assert sx.shape == (t, n * k, 28, 28, 1) and qx.shape == (t, n * q, 28, 28, 1)
        assert sx.dtype == qx.dtype == np.float32
        assert sy.shape == (t, n * k) and qy.shape == (t, n * q)
        check_labels(sy, n, k)
        check_labels(qy, n, q)
        for x in (sx, qx):
            assert x.min() >= 0.0 and x.max() <= 1.0
            assert set(np.unique(x)) == {0.0, 1.0}  # binary drawings stay binary
            np.testing.assert_array_equal(x[:, :, [0, 0, -1, -1], [0, -1, 0, -1], 0], 1.0)
            np.testing.assert_array_equal(x[:, :, 14, 14, 0], 0.0)  # white centre -> 0
        for task in range(t):
            found = {}  # label -> list of (character, file, k, is_query)
            for x, y, is_query in ((sx, sy, False), (qx, qy, True)):
                for image, label in zip(x[task], y[task], strict=True):
                    stored = np.round((1.0 - image[..., 0]) * 255).astype(np.uint8)
                    char, fname, rot = table[stored.tobytes()]
                    found.setdefault(int(label), []).append((char, fname, rot, is_query))
            chars = set()
            for items in found.values():
                assert len({c for c, _, _, _ in items}) == 1  # one character per label
                assert len({r for _, _, r, _ in items}) == 1  # one rotation per class
                assert len({f for _, f, _, _ in items}) == k + q  # distinct drawings
                chars.add(items[0][0])
                rotations_seen.add(items[0][2])
            assert len(chars) == n and chars <= train_chars
    assert rotations_seen == {0, 1, 2, 3}


def test_cache_and_tree_give_identical_tasks(omniglot_dirs, monkeypatch):
    with_cache, tree_only = omniglot_dirs
    from_tree = omniglot_tasks(tree_only, "val", 3, 1, 2, **SIZES)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(image_tasks, "_decode_file", no_decoding)
    from_cache = omniglot_tasks(with_cache, "val", 3, 1, 2, **SIZES)
    a = from_tree.sample_batch(4, np.random.default_rng(7))
    b = from_cache.sample_batch(4, np.random.default_rng(7))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_stale_or_corrupt_cache_is_not_used(omniglot_dirs, tmp_path):
    with_cache, tree_only = omniglot_dirs
    work, reference = tmp_path / "omniglot", tmp_path / "reference"
    shutil.copytree(with_cache, work)
    shutil.copytree(tree_only, reference)
    for root in (work, reference):  # the cache no longer lists the same files (renamed:
        victim = root / "Beth" / "character03"  # one removed is refused, as not prepared)
        first = min(os.listdir(victim))
        os.rename(victim / first, victim / ("z" + first))
    a = omniglot_tasks(str(work), "train", 3, 1, 1, **SIZES).sample_batch(
        4, np.random.default_rng(0))
    b = omniglot_tasks(str(reference), "train", 3, 1, 1, **SIZES).sample_batch(
        4, np.random.default_rng(0))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # Same file names, new content (newer than the cache): the new pixels are loaded.
    drawing = work / "Aleph" / "character01" / "0001_01.png"
    Image.new("1", (28, 28), 1).save(drawing)
    os.utime(drawing, ns=(os.stat(drawing).st_atime_ns,
                          os.stat(work / "omniglot28.npz").st_mtime_ns + 10**9))
    listing, newest = image_tasks.list_tree(str(work), 2, (".png",), "Omniglot", "hint")
    images, counts = image_tasks.load_class_images(
        str(work), listing, ["Aleph/character01"], str(work / "omniglot28.npz"), newest,
        (28, 28, 1), "hint")
    assert counts == [20] and (images[0] == 255).all() and not (images[1] == 255).all()
    (work / "omniglot28.npz").write_bytes(b"not a zip")
    c = omniglot_tasks(str(work), "train", 3, 1, 1, **SIZES).sample_batch(
        4, np.random.default_rng(0))
    assert c[0].shape == a[0].shape


def test_miniimagenet_tasks(mini_dir):
    n, k, q, t = 5, 1, 3, 3
    tasks = miniimagenet_tasks(mini_dir, "train", n, k, q)
    assert tasks.image_shape == (84, 84, 3) and tasks.num_dataset_classes == 6
    truth = {}
    for label in sorted(os.listdir(os.path.join(mini_dir, "train"))):
        for fname in os.listdir(os.path.join(mini_dir, "train", label)):
            with Image.open(os.path.join(mini_dir, "train", label, fname)) as img:
                truth[np.asarray(img).tobytes()] = (label, fname)
    sx, sy, qx, qy = tasks.sample_batch(t, np.random.default_rng(0))
    assert sx.shape == (t, n * k, 84, 84, 3) and qx.shape == (t, n * q, 84, 84, 3)
    assert sx.dtype == np.float32 and 0.0 <= sx.min() and sx.max() <= 1.0
    check_labels(sy, n, k)
    check_labels(qy, n, q)
    for task in range(t):
        by_label = {}
        for x, y in ((sx, sy), (qx, qy)):
            for image, label in zip(x[task], y[task], strict=True):
                stored = np.round(image * 255).astype(np.uint8)
                by_label.setdefault(int(label), []).append(truth[stored.tobytes()])  # unrotated
        assert len({items[0][0] for items in by_label.values()}) == n
        for items in by_label.values():
            assert len({c for c, _ in items}) == 1 and len({f for _, f in items}) == k + q
    with pytest.raises(DataError, match="fewer than num_classes=5"):
        miniimagenet_tasks(mini_dir, "val", 5, 1, 1)
    assert miniimagenet_tasks(mini_dir, "test", 5, 1, 1).num_dataset_classes == 5


def test_miniimagenet_cache_matches_tree(mini_dir, tmp_path):
    tree_only = tmp_path / "mini"
    shutil.copytree(mini_dir, tree_only, ignore=shutil.ignore_patterns("*.npz"))
    a = miniimagenet_tasks(mini_dir, "test", 2, 2, 2).sample_batch(3, np.random.default_rng(5))
    b = miniimagenet_tasks(str(tree_only), "test", 2, 2, 2).sample_batch(
        3, np.random.default_rng(5))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def cut_short(path: str) -> bytes:
    """Cuts the file at ``path`` to half its length (an interrupted copy); returns its bytes."""
    with open(path, "rb") as f:
        good = f.read()
    with open(path, "wb") as f:
        f.write(good[:len(good) // 2])
    return good


def test_damaged_file_of_any_split_is_found_before_training(omniglot_dirs, mini_dir, tmp_path):
    """A cut-short image of the test split is named when the training split is loaded (it
    used to surface at evaluation, after training), with the data_prep command that then
    indeed repairs it."""
    omniglot, mini = tmp_path / "omniglot", tmp_path / "mini"
    shutil.copytree(omniglot_dirs[0], omniglot)
    shutil.copytree(mini_dir, mini)
    names = [f"{a}/character{c:02d}" for a in ALPHABETS for c in range(1, CHARS + 1)]
    folder = omniglot / split_characters(names, "test", **SIZES)[0]
    label = mini / "test" / sorted(os.listdir(mini / "test"))[1]
    cases = [(str(folder / sorted(os.listdir(folder))[3]), omniglot, "omniglot",
              lambda split: omniglot_tasks(str(omniglot), split, 3, 1, 1, **SIZES)),
             (str(label / sorted(os.listdir(label))[2]), mini, "miniimagenet",
              lambda split: miniimagenet_tasks(str(mini), split, 3, 1, 1))]
    goods = []
    for victim, data_dir, dataset, load in cases:
        goods.append(cut_short(victim))
        with pytest.raises(DataError) as info:
            load("train")
        message = str(info.value)
        assert "\n" not in message and f"{victim} (cut short" in message, message
        assert f"python -m data_prep.{dataset} " in message
        assert f"--output={data_dir}`" in message
    # Doing what the message says: data_prep's rerun checks the files and rewrites the bad one.
    source = os.path.join(os.path.dirname(omniglot_dirs[0]), "src")
    assert prepare_omniglot(source, str(omniglot), expect_counts=False)["files_written"] == 1
    source = os.path.dirname(mini_dir)
    assert prepare_miniimagenet(os.path.join(source, "images"), source, str(mini),
                                expect_counts=False)["files_written"] == 1
    for (victim, _, _, load), good in zip(cases, goods, strict=True):
        with open(victim, "rb") as f:
            assert f.read() == good
        load("test").sample_batch(2, np.random.default_rng(0))


def test_dataset_is_deterministic_with_static_shapes(omniglot_dirs):
    tasks = omniglot_tasks(omniglot_dirs[0], "test", 3, 2, 1, **SIZES)
    ds = tasks.dataset(2, seed=11, num_batches=3)
    assert [tuple(spec.shape) for spec in ds.element_spec] == [
        (2, 6, 28, 28, 1), (2, 6), (2, 3, 28, 28, 1), (2, 3)]
    first = [[v.numpy() for v in batch] for batch in ds]
    second = [[v.numpy() for v in batch] for batch in ds]
    assert len(first) == 3
    expected = list(tasks.batches(2, 11, 3))
    for a, b, c in zip(first, second, expected, strict=True):
        for x, y, z in zip(a, b, c, strict=True):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)
    other = next(iter(tasks.dataset(2, seed=12)))
    assert not np.array_equal(other[0].numpy(), first[0][0])


def test_errors_say_what_to_run(omniglot_dirs, mini_dir, tmp_path):
    data_dir, _ = omniglot_dirs
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"python -m data_prep\.omniglot .*--output=" + missing):
        omniglot_tasks(missing, "train", 5, 1, 1)
    with pytest.raises(DataError, match=r"python -m data_prep\.miniimagenet"):
        miniimagenet_tasks(missing, "train", 5, 1, 1)
    with pytest.raises(DataError, match=r"python -m data_prep\.miniimagenet"):
        miniimagenet_tasks(data_dir, "train", 5, 1, 1)  # no train/ folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        omniglot_tasks(str(tmp_path / "empty"), "train", 5, 1, 1)
    with pytest.raises(ValueError, match="unknown split"):
        omniglot_tasks(data_dir, "training", 5, 1, 1)
    with pytest.raises(DataError, match="fewer than num_classes=5"):
        omniglot_tasks(data_dir, "val", 5, 1, 1, **SIZES)  # 3 characters
    with pytest.raises(DataError, match="fewer images than num_support"):
        omniglot_tasks(data_dir, "train", 5, 10, 11, **SIZES)  # 20 drawings each
    with pytest.raises(DataError, match="holds 15 characters, not 1623"):
        omniglot_tasks(data_dir, "test", 5, 1, 1)  # the standard split needs the full set
    with pytest.raises(DataError, match="empty"):
        omniglot_tasks(data_dir, "test", 5, 1, 1, num_train=10, num_val=5)
    # Malformed: a tree of unresized drawings, and an undecodable file.
    bad = tmp_path / "bad" / "Alpha" / "character01"
    bad.mkdir(parents=True)
    Image.new("1", (105, 105), 1).save(bad / "0001_01.png")
    with pytest.raises(DataError, match=r"0001_01\.png is 105x105, expected 28x28"):
        omniglot_tasks(str(tmp_path / "bad"), "train", 1, 1, 1, num_train=1, num_val=0)
    (bad / "0001_01.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"1 image file is damaged: .*0001_01\.png \(not a PNG "
                                        r"file\); run `python -m data_prep\.omniglot "):
        omniglot_tasks(str(tmp_path / "bad"), "train", 1, 1, 1, num_train=1, num_val=0)
    # Whole to the cheap check (signature and end chunk), yet undecodable: only a full
    # decode finds it, and removing it is what makes data_prep's rerun rewrite it.
    (bad / "0001_01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken IEND\xaeB`\x82")
    with pytest.raises(DataError, match=r"cannot decode image .*0001_01\.png .*: delete it and "
                                        r"run `python -m data_prep\.omniglot "):
        omniglot_tasks(str(tmp_path / "bad"), "train", 1, 1, 1, num_train=1, num_val=0)


def make_synthetic(counts: list[int]) -> FewShotTasks:
    """Image i of class c is filled with c in channel 0 and i in channel 1 (no rotation)."""
    images = np.zeros((sum(counts), 2, 2, 2), np.uint8)
    row = 0
    for c, m in enumerate(counts):
        for i in range(m):
            images[row, ..., 0], images[row, ..., 1] = c, i
            row += 1
    return images


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(4, 9), min_size=3, max_size=8), n=st.integers(1, 3),
       k=st.integers(1, 2), q=st.integers(1, 2), t=st.integers(1, 3), seed=st.integers(0, 99))
def test_sampler_properties(counts, n, k, q, t, seed):
    tasks = FewShotTasks(make_synthetic(counts), counts, num_classes=n, num_support=k,
                         num_query=q)
    sx, sy, qx, qy = tasks.sample_batch(t, np.random.default_rng(seed))
    check_labels(sy, n, k)
    check_labels(qy, n, q)
    ids = [np.round(x * 255).astype(int)[:, :, 0, 0, :] for x in (sx, qx)]  # [T, M, 2]
    for task in range(t):
        classes = {}
        for (x, y) in zip(ids, (sy, qy), strict=True):
            for (c, i), label in zip(x[task], y[task], strict=True):
                assert i < counts[c]
                classes.setdefault(int(label), []).append((int(c), int(i)))
        assert len({items[0][0] for items in classes.values()}) == n
        for items in classes.values():
            assert len({c for c, _ in items}) == 1 and len(set(items)) == k + q
    again = tasks.sample_batch(t, np.random.default_rng(seed))
    np.testing.assert_array_equal(again[0], sx)


def test_sampler_argument_checks():
    images = make_synthetic([3, 3])
    with pytest.raises(DataError, match="fewer than num_classes=3"):
        FewShotTasks(images, [3, 3], num_classes=3, num_support=1, num_query=1)
    with pytest.raises(DataError, match=r"class 1 \(3\)"):
        FewShotTasks(images, [3, 3], num_classes=2, num_support=2, num_query=2)
    with pytest.raises(ValueError, match="num_support"):
        FewShotTasks(images, [3, 3], num_classes=2, num_support=0, num_query=1)
    tasks = FewShotTasks(images, [3, 3], num_classes=2, num_support=1, num_query=1)
    with pytest.raises(ValueError, match="meta_batch_size"):
        tasks.sample_batch(0, np.random.default_rng(0))


def test_pixels_are_exact_fractions():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    values = np.arange(256, dtype=np.float32) / np.float32(255)
    for invert, want in ((False, values), (True, np.float32(1) - values)):
        tasks = FewShotTasks(np.concatenate([images] * 4), [2, 2], num_classes=2,
                             num_support=1, num_query=1, invert=invert)
        sx, _, _, _ = tasks.sample_batch(1, np.random.default_rng(0))
        np.testing.assert_array_equal(sx[0, 0].ravel(), want)
