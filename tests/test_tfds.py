"""Tests of the TFDS builders (tf_maml.tfds) and the tfds task backend on tiny official-layout
data built here: Omniglot archives of 3 alphabets x 4 characters x 20 drawings, MiniImageNet
of 3 / 2 / 2 classes x 6 images (some not 84x84 or grayscale)."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import tf_maml.tfds  # noqa: F401  (registers the builders)
from tests.test_data_prep import (
    MINI_CLASSES,
    MINI_PER_CLASS,
    OMNI_DRAWINGS,
    mini_image,
    mini_rows,
    omniglot_files,
    run_module,
    write_csvs,
    write_zip,
)
from tf_maml.data.miniimagenet import prepare_miniimagenet, to_84_jpeg
from tf_maml.data.omniglot import prepare_omniglot, resize_drawing
from tf_maml.data.prep import PrepError
from tf_maml.tasks.image_tasks import DataError
from tf_maml.tasks.miniimagenet import miniimagenet_tasks
from tf_maml.tasks.omniglot import omniglot_tasks, split_characters
from tf_maml.tfds import build
from tf_maml.tfds import miniimagenet as mini_builder
from tf_maml.tfds import omniglot as omni_builder
from tf_maml.tfds.common import ManualDataError
from tf_maml.tfds.tasks import miniimagenet_tasks_from_tfds, omniglot_tasks_from_tfds

SIZES = {"num_train": 6, "num_val": 2}  # 12 characters -> 6 / 2 / 4
SPLITS = ("train", "val", "test")
TFDS_SPLIT = {"train": "train", "val": "validation", "test": "test"}


@contextlib.contextmanager
def no_network():
    """Refuses (and records) every Python-level attempt to resolve a name or connect."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during an offline TFDS build")

    with pytest.MonkeyPatch.context() as mp:
        for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                            (socket, "getaddrinfo"), (socket, "create_connection")):
            mp.setattr(owner, name, refuse)
        yield attempts


def decode_pillow(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert(mode))


def read_all(name: str, split: str, data_dir: str, **kwargs) -> list[dict]:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False, try_gcs=False,
                   **kwargs)
    return list(tfds.as_numpy(ds))


def assert_same_tasks(a, b, seeds=(0, 1, 2), meta_batch_size=4):
    assert a.class_names == b.class_names
    assert a.image_shape == b.image_shape
    np.testing.assert_array_equal(a._images, b._images)
    np.testing.assert_array_equal(a._counts, b._counts)
    for seed in seeds:
        x = a.sample_batch(meta_batch_size, np.random.default_rng(seed))
        y = b.sample_batch(meta_batch_size, np.random.default_rng(seed))
        for u, v in zip(x, y, strict=True):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


# ----------------------------------------------------------------------------------------------
# Omniglot


@pytest.fixture(scope="module")
def omni_files():
    return omniglot_files()


@pytest.fixture(scope="module")
def omni(tmp_path_factory, omni_files):
    """(source folder with the two zips, TFDS data_dir with both configs, build summary,
    network attempts during the build, folder-backend tree of the same source)."""
    root = tmp_path_factory.mktemp("omni")
    src = root / "src"
    src.mkdir()
    for set_name, files in omni_files.items():
        write_zip(str(src / f"{set_name}.zip"), files)
    data_dir = str(root / "tfds")
    with no_network() as attempts:
        summary = build.build_omniglot(str(src), data_dir, "all", expect_counts=False, **SIZES)
        for config in ("maml_28", "full_105"):  # reading back is offline too
            read_all(f"tf_maml_omniglot/{config}", "all", data_dir)
    tree = str(root / "folders")
    prepare_omniglot(str(src), tree, expect_counts=False)
    return str(src), data_dir, summary, attempts, tree


def all_drawings(omni_files) -> dict[str, bytes]:
    """{"Alphabet/characterNN/NNNN_MM.png": original PNG bytes}."""
    return {p.split("/", 1)[1]: data for files in omni_files.values() for p, data in files.items()}


def test_omniglot_builds_offline_with_both_configs(omni):
    _, data_dir, summary, attempts, _ = omni
    assert attempts == []
    assert summary["maml_28"]["splits"] == {"train": 6 * OMNI_DRAWINGS,
                                            "validation": 2 * OMNI_DRAWINGS,
                                            "test": 4 * OMNI_DRAWINGS}
    assert summary["full_105"]["splits"] == {"background": 8 * OMNI_DRAWINGS,
                                             "evaluation": 4 * OMNI_DRAWINGS}
    assert not summary["maml_28"]["already_complete"]
    assert sorted(os.listdir(data_dir)) == ["tf_maml_omniglot"]  # no downloads/ folder
    assert tfds.builder_cls("tf_maml_omniglot") is omni_builder.TfMamlOmniglot
    assert tfds.builder_cls("tf_maml_miniimagenet") is mini_builder.TfMamlMiniimagenet


def test_omniglot_maml_28_features_and_pixels(omni, omni_files):
    _, data_dir, _, _, _ = omni
    builder = tfds.builder("tf_maml_omniglot/maml_28", data_dir=data_dir)
    names = builder.info.features["label"].names
    assert names == sorted(f"{a}/character{c:02d}" for a in ("Alpha", "Beta_(b)", "Gamma")
                           for c in range(1, 5))
    assert builder.info.features["alphabet"].names == ["Alpha", "Beta_(b)", "Gamma"]
    assert builder.info.features["image"].shape == (28, 28, 1)
    assert dict(builder.info.metadata) == {"num_characters": 12, "drawings_per_character": 20,
                                           "num_train": 6, "num_val": 2, "split_seed": 1}
    sources = all_drawings(omni_files)
    alphabets = builder.info.features["alphabet"].names
    for split in SPLITS:
        examples = read_all("tf_maml_omniglot/maml_28", TFDS_SPLIT[split], data_dir)
        chars = {names[ex["label"]] for ex in examples}
        assert chars == set(split_characters(names, split, **SIZES))
        for ex in examples:
            name, fname = names[ex["label"]], ex["filename"].decode()
            assert alphabets[ex["alphabet"]] == name.split("/")[0]
            assert ex["alphabet_char_id"] == int(name[-2:])
            assert f"{ex['character_id']:04d}_{ex['drawer_id']:02d}.png" == fname
            assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
            origin = f"{name}/{fname}"
            png, pixels, _ = resize_drawing(sources[origin], origin)
            # TensorFlow's decoding (what tfds.load gives) = the folder tree's pixels.
            np.testing.assert_array_equal(ex["image"][..., 0], pixels)
    # Supervised form for users outside the project.
    image, label = next(iter(tfds.as_numpy(tfds.load(
        "tf_maml_omniglot/maml_28", split="train", data_dir=data_dir, as_supervised=True))))
    assert image.shape == (28, 28, 1) and label.shape == ()


def test_omniglot_full_105_is_the_original(omni, omni_files):
    _, data_dir, _, _, _ = omni
    builder = tfds.builder("tf_maml_omniglot/full_105", data_dir=data_dir)
    names = builder.info.features["label"].names
    assert names == tfds.builder("tf_maml_omniglot/maml_28",
                                 data_dir=data_dir).info.features["label"].names
    sources = all_drawings(omni_files)
    for split, alphabets in (("background", {"Alpha", "Beta_(b)"}), ("evaluation", {"Gamma"})):
        examples = read_all("tf_maml_omniglot/full_105", split, data_dir)
        assert len(examples) == 4 * len(alphabets) * OMNI_DRAWINGS
        assert {names[ex["label"]].split("/")[0] for ex in examples} == alphabets
        for ex in examples:
            original = sources[f"{names[ex['label']]}/{ex['filename'].decode()}"]
            assert ex["image"].shape == (105, 105, 1)
            np.testing.assert_array_equal(ex["image"][..., 0], decode_pillow(original, "L"))


def test_omniglot_tfds_tasks_equal_folder_tasks(omni):
    _, data_dir, _, _, tree = omni
    for split in SPLITS:
        folders = omniglot_tasks(tree, split, 2, 1, 3, **SIZES)
        from_tfds = omniglot_tasks_from_tfds(data_dir, split, 2, 1, 3)
        assert from_tfds.rotate and from_tfds.invert
        assert_same_tasks(folders, from_tfds)


def test_rebuild_is_reused_quickly(omni):
    src, data_dir, _, _, _ = omni
    start = time.monotonic()
    again = build.build_omniglot(src, data_dir, "maml_28", expect_counts=False, **SIZES)
    assert again["maml_28"]["already_complete"] is True
    assert time.monotonic() - start < 5.0


def test_a_build_from_partial_data_is_not_reused_as_the_full_data_set(omni, mini):
    # TFDS reuses a built version whatever the builder's arguments: one built from a partial
    # source (--expect_counts=false) was taken for the full data set on a rerun with the
    # full one, said only by the split counts it printed.
    src, data_dir = omni[0], omni[1]
    before = sorted(p for p in os.listdir(data_dir))
    with pytest.raises(PrepError, match=(
            r"tf_maml_omniglot/maml_28/1\.0\.0 holds tf_maml_omniglot/maml_28/1\.0\.0 built "
            r"earlier from partial data \(\d+ examples: .*\), not the full data set's 32460, "
            r"and TFDS reuses a build as it is: delete .*maml_28/1\.0\.0 and run this again")):
        build.build_omniglot(src, data_dir, "maml_28")
    assert sorted(p for p in os.listdir(data_dir)) == before
    msrc, mdata_dir = mini[0], mini[1]
    with pytest.raises(PrepError, match=r"not the full data set's 60000"):
        build.build_miniimagenet(str(msrc / "images.zip"), str(msrc), mdata_dir)


def test_a_build_with_other_split_sizes_is_not_reused_as_the_one_asked(omni):
    # TFDS reuses a built version whatever the builder's arguments: the build of 6 / 2
    # training / validation characters was returned for 8 / 1 as if it held them.
    src, data_dir = omni[0], omni[1]
    before = sorted(os.listdir(data_dir))
    with pytest.raises(PrepError) as raised:
        build.build_omniglot(src, data_dir, "maml_28", expect_counts=False, num_train=8,
                             num_val=1)
    path = os.path.join(data_dir, "tf_maml_omniglot", "maml_28", "1.0.0")
    assert str(raised.value) == (
        f"{path} holds tf_maml_omniglot/maml_28/1.0.0 built earlier with num_train=6, "
        "num_val=2, not the num_train=8, num_val=1 asked, and TFDS reuses a build as it is: "
        f"delete {path} and run this again to build it with them (or ask for the sizes it "
        "was built with)")
    assert sorted(os.listdir(data_dir)) == before
    # full_105 has no MAML split: any sizes reuse it.
    again = build.build_omniglot(src, data_dir, "full_105", expect_counts=False, num_train=8,
                                 num_val=1)
    assert again["full_105"]["already_complete"] is True


@pytest.mark.parametrize("how", ["builder", "load"])
def test_tfds_own_entry_points_refuse_a_build_that_is_not_the_one_asked(omni, how):
    # The refusals were in build_omniglot's path only: tfds.builder(...).download_and_prepare
    # and tfds.load reused the build of 6 / 2 characters for 8 / 1, and the partial build
    # for the full data set, without a word.
    src, data_dir = omni[0], omni[1]
    path = os.path.join(data_dir, "tf_maml_omniglot", "maml_28", "1.0.0")
    before = sorted(os.listdir(path))
    config = build.download_config(src)
    cases = [
            (dict(expect_counts=False, num_train=8, num_val=1),
             f"{path} holds tf_maml_omniglot/maml_28/1.0.0 built earlier with num_train=6, "
             "num_val=2, not the num_train=8, num_val=1 asked, and TFDS reuses a build as it "
             f"is: delete {path} and run this again to build it with them (or ask for the "
             "sizes it was built with)"),
            ({}, f"{path} holds tf_maml_omniglot/maml_28/1.0.0 built earlier from partial "
                 f"data (240 examples: {{'train': 120, 'validation': 40, 'test': 80}}), not "
                 "the full data set's 32460, and TFDS reuses a build as it is: delete "
                 f"{path} and run this again to build it from {src}")]
    # tfds.load reads a build without download_and_prepare, its partial build included.
    for kwargs, message in cases if how == "builder" else cases[:1]:
        with pytest.raises(PrepError) as raised:
            if how == "builder":
                tfds.builder("tf_maml_omniglot/maml_28", data_dir=data_dir,
                             **kwargs).download_and_prepare(download_config=config)
            else:
                tfds.load("tf_maml_omniglot/maml_28", data_dir=data_dir, builder_kwargs=kwargs,
                          download_and_prepare_kwargs={"download_config": config})
        assert str(raised.value) == message
    assert sorted(os.listdir(path)) == before
    # The sizes it was built with reuse it.
    tfds.builder("tf_maml_omniglot/maml_28", data_dir=data_dir, expect_counts=False,
                 **SIZES).download_and_prepare(download_config=config)


def test_a_tfds_output_with_a_bracket_is_refused_before_it_is_built(omni, tmp_path):
    # TensorFlow takes '[' for a pattern: the build went in, and every reader then said "not
    # built in the TFDS data_dir ...: run python -m data_prep.omniglot --format=tfds ...".
    output = tmp_path / "tfds[1]"
    with pytest.raises(PrepError) as raised:
        build.build_omniglot(omni[0], str(output), "maml_28", expect_counts=False, **SIZES)
    assert str(raised.value).startswith(f"--output: {output} holds '[', which TensorFlow "
                                        "takes for the start of a pattern")
    assert not output.exists()


def test_omniglot_standard_split_needs_all_characters(omni, tmp_path):
    src = omni[0]
    with pytest.raises(PrepError, match="1623"):  # default: expect the full data set
        build.build_omniglot(src, str(tmp_path / "a"))
    with pytest.raises(PrepError, match="1623 characters"):
        build.build_omniglot(src, str(tmp_path / "b"), expect_counts=False)
    assert not (tmp_path / "b" / "tf_maml_omniglot" / "maml_28" / "1.0.0").exists()
    with pytest.raises(ValueError, match="unknown Omniglot config"):
        build.build_omniglot(src, str(tmp_path / "c"), "maml_84")



def test_omniglot_tfds_command_line_reports_bad_data_in_one_line(omni, tmp_path):
    """`python -m data_prep.omniglot --format=tfds` on partial data: the MAML split needs all
    1623 characters, so the command stops with one ERROR line, no traceback, and exit 1."""
    result = run_module("data_prep.omniglot", "--format=tfds", f"--source={omni[0]}",
                        f"--output={tmp_path / 'tfds'}", "--noexpect_counts",
                        "--tfds_config=maml_28")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "ERROR: the MAML split of 1100/100/rest characters is defined on all 1623" in (
        result.stderr)

def test_omniglot_missing_manual_file_names_it(omni_files, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_zip(str(manual / "images_background.zip"), omni_files["images_background"])
    with pytest.raises(ManualDataError) as info:
        build.build_omniglot(str(manual), str(tmp_path / "out"), expect_counts=False, **SIZES)
    message = str(info.value)
    assert "images_evaluation.zip" in message.split("What to place there")[0]
    assert omni_builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip() in message
    assert isinstance(info.value, PrepError)  # the data_prep commands print it, no traceback
    # The same through TFDS's own API, as a user outside the project would build.
    builder = tfds.builder("tf_maml_omniglot/full_105", data_dir=str(tmp_path / "out2"),
                           expect_counts=False)
    with pytest.raises(ManualDataError, match="images_evaluation.zip"):
        builder.download_and_prepare(download_config=build.download_config(str(manual)))
    # An empty manual directory: TFDS's own message, with the instructions.
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssertionError, match="images_background.zip"):
        builder.download_and_prepare(
            download_config=build.download_config(str(tmp_path / "empty")))


def test_omniglot_extracted_folders_build_the_same(omni, omni_files, tmp_path):
    _, data_dir, _, _, _ = omni
    for files in omni_files.values():
        for p, data in files.items():
            (tmp_path / "src" / p).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "src" / p).write_bytes(data)
    other = str(tmp_path / "tfds")
    build.build_omniglot(str(tmp_path / "src"), other, expect_counts=False, **SIZES)
    assert_same_tasks(omniglot_tasks_from_tfds(data_dir, "test", 3, 2, 2),
                      omniglot_tasks_from_tfds(other, "test", 3, 2, 2), seeds=(5,))


def test_a_tfds_build_into_a_prepared_folder_tree_is_refused_and_touches_nothing(omni,
                                                                                  tmp_path):
    # Was built there: the folder tree then read tf_maml_omniglot/ as an alphabet ("holds no
    # .png images"), and data_prep, refusing a folder it did not write, could not mend it.
    from tests.test_data_prep import sha256_tree

    src, _, _, _, tree = omni
    before = sha256_tree(tree)
    with pytest.raises(PrepError, match=rf"^{tree} holds Omniglot \(the folder tree of "
                                        rf"data_prep\): .*--output={tree}_tfds$"):
        build.build_omniglot(src, tree, "full_105", expect_counts=False)
    assert sha256_tree(tree) == before
    assert not any(name.startswith("tf_maml_") for name in os.listdir(tree))
    with pytest.raises(PrepError, match=rf"^{src} holds Omniglot \(the unprepared files"):
        build.build_omniglot(src, src, "full_105", expect_counts=False)  # the sources
    assert sorted(os.listdir(src)) == ["images_background.zip", "images_evaluation.zip"]


# ----------------------------------------------------------------------------------------------
# MiniImageNet


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """(source folder with images.zip, images/ and the CSVs, TFDS data_dir, summary, network
    attempts, folder-backend tree)."""
    root = tmp_path_factory.mktemp("mini")
    src = root / "src"
    rng = np.random.default_rng(1)
    rows = mini_rows()
    images = {}
    for index, (filename, _) in enumerate(r for split in rows.values() for r in split):
        images[filename] = mini_image(rng, index)
    images["n09999999000001.jpg"] = mini_image(rng, 1)  # in no CSV: ignored
    os.makedirs(src / "images")
    for name, data in images.items():
        (src / "images" / name).write_bytes(data)
    with zipfile.ZipFile(src / "images.zip", "w") as zf:
        for name, data in images.items():
            zf.writestr(f"images/{name}", data)
    write_csvs(src, rows)
    data_dir = str(root / "tfds")
    with no_network() as attempts:
        summary = build.build_miniimagenet(str(src / "images.zip"), str(src), data_dir,
                                           expect_counts=False)
    tree = str(root / "folders")
    prepare_miniimagenet(str(src / "images.zip"), str(src), tree, expect_counts=False)
    return src, data_dir, summary, attempts, tree


def test_miniimagenet_features_splits_and_bytes(mini):
    src, data_dir, summary, attempts, tree = mini
    assert attempts == []
    assert summary["splits"] == {"train": 3 * MINI_PER_CLASS, "validation": 2 * MINI_PER_CLASS,
                                 "test": 2 * MINI_PER_CLASS}
    builder = tfds.builder("tf_maml_miniimagenet", data_dir=data_dir)
    names = builder.info.features["label"].names
    assert names == [label for split in SPLITS for label in MINI_CLASSES[split]]
    assert builder.info.features["image"].shape == (84, 84, 3)
    for split in SPLITS:
        examples = read_all("tf_maml_miniimagenet", TFDS_SPLIT[split], data_dir)
        encoded = {ex["filename"]: ex["image"] for ex in read_all(
            "tf_maml_miniimagenet", TFDS_SPLIT[split], data_dir,
            decoders={"image": tfds.decode.SkipDecoding()})}
        assert sorted({names[ex["label"]] for ex in examples}) == MINI_CLASSES[split]
        assert len(examples) == len(encoded) == len(MINI_CLASSES[split]) * MINI_PER_CLASS
        for ex in examples:
            label, fname = names[ex["label"]], ex["filename"].decode()
            assert fname.startswith(label)
            with open(os.path.join(tree, split, label, fname), "rb") as f:
                stored = f.read()
            jpeg, pixels, _ = to_84_jpeg((src / "images" / fname).read_bytes(), fname)
            assert encoded[ex["filename"]] == stored == jpeg  # the folder tree's bytes
            assert ex["image"].shape == (84, 84, 3) and ex["image"].dtype == np.uint8
            # tfds.load decodes with TensorFlow's default INTEGER_FAST DCT, a few levels off
            # Pillow's; INTEGER_ACCURATE gives Pillow's (the folder backend's) pixels.
            assert np.abs(ex["image"].astype(int) - pixels.astype(int)).max() <= 8
            accurate = tf.io.decode_jpeg(stored, channels=3, dct_method="INTEGER_ACCURATE")
            np.testing.assert_array_equal(accurate.numpy(), pixels)


def test_miniimagenet_tfds_tasks_equal_folder_tasks(mini):
    _, data_dir, _, _, tree = mini
    for split in SPLITS:
        folders = miniimagenet_tasks(tree, split, 2, 2, 3)
        from_tfds = miniimagenet_tasks_from_tfds(data_dir, split, 2, 2, 3)
        assert from_tfds.class_names == MINI_CLASSES[split]
        assert not from_tfds.rotate and not from_tfds.invert
        assert_same_tasks(folders, from_tfds)


def test_miniimagenet_from_images_folder_elsewhere(mini, tmp_path):
    src, data_dir, _, _, _ = mini
    csv_dir = tmp_path / "csvs"  # images/ not beside the CSVs: a manual dir of links
    write_csvs(csv_dir, mini_rows())
    other = str(tmp_path / "tfds")
    summary = build.build_miniimagenet(str(src / "images"), str(csv_dir), other,
                                       expect_counts=False)
    assert summary["splits"]["train"] == 3 * MINI_PER_CLASS
    assert_same_tasks(miniimagenet_tasks_from_tfds(data_dir, "train", 3, 1, 2),
                      miniimagenet_tasks_from_tfds(other, "train", 3, 1, 2), seeds=(3,))


def test_sources_a_level_off_name_the_folder_to_give(omni_files, mini, tmp_path):
    # data_prep --format=tfds: was the list of missing files only, like the folder format.
    python = tmp_path / "repo" / "python"  # a clone of brendenlake/omniglot
    python.mkdir(parents=True)
    for set_name, files in omni_files.items():
        write_zip(str(python / f"{set_name}.zip"), files)
    with pytest.raises(ManualDataError, match=rf"\n{python} holds them: give --source={python}"
                                              r"\nWhat to place there"):
        build.build_omniglot(str(tmp_path / "repo"), str(tmp_path / "out"), **SIZES)
    write_csvs(tmp_path / "mini" / "csv", mini_rows())
    with pytest.raises(ManualDataError, match=rf"give --csv_dir={tmp_path}/mini/csv\n"):
        build.build_miniimagenet(str(mini[0] / "images.zip"), str(tmp_path / "mini"),
                                 str(tmp_path / "out"), expect_counts=False)
    assert not (tmp_path / "out").exists()


def test_miniimagenet_missing_manual_files_named(mini, tmp_path):
    src = mini[0]
    manual = tmp_path / "manual"
    write_csvs(manual, {s: r for s, r in mini_rows().items() if s != "val"})
    with pytest.raises(ManualDataError) as info:
        build.build_miniimagenet(str(src / "images.zip"), str(manual), str(tmp_path / "out"),
                                 expect_counts=False)
    listed = str(info.value).split("What to place there")[0]
    assert "val.csv" in listed and "train.csv" not in listed
    assert mini_builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip() in str(info.value)
    # Through TFDS: a manual dir with the CSVs but no images.
    write_csvs(manual, mini_rows())
    builder = tfds.builder("tf_maml_miniimagenet", data_dir=str(tmp_path / "out2"),
                           expect_counts=False)
    with pytest.raises(ManualDataError, match=r"images\.zip \(or the folder images/\)"):
        builder.download_and_prepare(download_config=build.download_config(str(manual)))
    assert not builder.is_prepared()
    # Default counts: 64/16/20 x 600 are required.
    with pytest.raises(PrepError, match="expected 64 x 600"):
        build.build_miniimagenet(str(src / "images.zip"), str(src), str(tmp_path / "out3"))


# ----------------------------------------------------------------------------------------------
# Errors of the tfds task backend


def test_tfds_task_errors_say_what_to_run(omni, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"python -m data_prep\.omniglot --format=tfds"):
        omniglot_tasks_from_tfds(missing, "train", 5, 1, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"tf_maml_miniimagenet/1\.0\.0 is not built .*"
                                         r"data_prep\.miniimagenet --format=tfds"):
        miniimagenet_tasks_from_tfds(str(tmp_path / "empty"), "train", 5, 1, 1)
    with pytest.raises(ValueError, match="unknown split"):
        omniglot_tasks_from_tfds(omni[1], "validation", 5, 1, 1)
    with pytest.raises(DataError, match="fewer than num_classes=5"):
        omniglot_tasks_from_tfds(omni[1], "val", 5, 1, 1)  # 2 characters
