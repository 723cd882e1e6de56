"""The fix an error suggests is one that works: no advice to prepare data that preparing
cannot change, no command that would write into the folder of another data set, no source
folder of the machine the code was written on, and a TF2 checkpoint given where only the
original TF1 checkpoints fit is told what to do instead."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
from test_bad_inputs import (  # noqa: F401  (prepared and sine_run are fixtures)
    as_flags,
    cli,
    mini_config,
    one_line_error,
    prepared,
    sine_run,
    snapshot,
)

from tf_maml import convert, experiment
from tf_maml.config import Config
from tf_maml.tasks.image_tasks import DataError, FewShotTasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_error(config: Config, split: str = "train", num_query: int | None = None) -> str:
    with pytest.raises(DataError) as info:
        experiment.task_source(config, split, num_query)
    return str(info.value)


def omniglot_config(data_dir, **overrides) -> Config:
    base = dict(datasource="omniglot", data_dir=str(data_dir), num_classes=2,
                update_batch_size=1, meta_batch_size=2)
    base.update(overrides)
    return Config(**base).validate()


# ------------------------------------------------------------------ limits of the split itself
def test_more_ways_than_the_val_split_has_classes_names_the_limit_not_data_prep(prepared):
    """The analogue of 20-way MiniImageNet, whose val split has 16 classes: the tiny tree's
    val split has 2 classes and 3-way tasks are asked for."""
    before = snapshot(prepared["miniimagenet"])
    message = data_error(mini_config(prepared["miniimagenet"], num_classes=3), "val", 1)
    assert "MiniImageNet val split" in message and "has only 2 classes" in message
    assert "num_classes must be at most 2" in message and "--num_classes" in message
    assert "data_prep" not in message  # preparing again cannot add classes
    assert snapshot(prepared["miniimagenet"]) == before


def test_too_few_images_per_class_names_the_limit_not_data_prep():
    images = np.zeros((12, 4, 4, 1), np.uint8)
    with pytest.raises(DataError) as info:
        FewShotTasks(images, [6, 6], num_classes=2, num_support=5, num_query=5,
                     description="the split")
    message = str(info.value)
    assert "num_support + num_query must be at most 6" in message
    assert "data_prep" not in message


# ------------------------------------------------------------------ the wrong data set
@pytest.mark.parametrize("asked, held, held_name", [
    ("omniglot", "miniimagenet", "MiniImageNet"),
    ("miniimagenet", "omniglot", "Omniglot"),
])
def test_folder_of_the_other_data_set_is_named_and_never_given_as_output(
        prepared, asked, held, held_name):
    data_dir = prepared[held]
    before = snapshot(data_dir)
    config = (omniglot_config(data_dir) if asked == "omniglot" else mini_config(data_dir))
    message = data_error(config)
    assert f"{data_dir} holds {held_name}" in message
    assert "--data_dir" in message
    assert f"--output={data_dir}" not in message  # would prepare into the other data set
    assert "--output=<new folder>" in message
    assert snapshot(data_dir) == before


def test_folder_tree_read_as_tfds_says_which_backend(prepared):
    message = data_error(omniglot_config(prepared["omniglot"], dataset_backend="tfds"))
    assert "holds Omniglot as the folder tree" in message
    assert "--dataset_backend=folders" in message
    assert "--output=" not in message


def test_tfds_data_dir_read_as_folders_says_which_backend(tmp_path):
    """A TFDS data_dir is recognised by its builder folder (tf_maml_omniglot/...)."""
    data_dir = tmp_path / "tfds"
    (data_dir / "tf_maml_omniglot" / "maml_28" / "1.0.0").mkdir(parents=True)
    message = data_error(omniglot_config(data_dir))
    assert "--dataset_backend=tfds" in message and "--output=" not in message


def test_tfds_data_dir_holding_another_data_set_may_receive_this_one(tmp_path):
    """A TFDS data_dir holds several data sets: building MiniImageNet beside Omniglot there is
    the right advice."""
    data_dir = tmp_path / "tfds"
    (data_dir / "tf_maml_omniglot" / "maml_28" / "1.0.0").mkdir(parents=True)
    message = data_error(mini_config(data_dir, dataset_backend="tfds"))
    assert "tf_maml_miniimagenet/1.0.0 is not built in the TFDS data_dir" in message
    assert f"--output={data_dir}" in message



@pytest.mark.parametrize("datasource", ["omniglot", "miniimagenet"])
def test_unprepared_source_folder_as_data_dir_is_prepared_from_that_folder(
        prepared, tmp_path, datasource):
    """--data_dir pointing at the downloads: the hint prepares them from the folder the user
    gave (as --source / --images and --csv_dir) into a new folder, never into it."""
    raw = tmp_path / "downloads"
    raw.mkdir()
    src = prepared["source"]
    if datasource == "omniglot":
        for name in ("images_background.zip", "images_evaluation.zip"):
            shutil.copy(src / name, raw / name)
        config = omniglot_config(raw)
        expected = f"python -m data_prep.omniglot --source={raw} --output=<new folder>"
    else:
        shutil.copytree(src / "images", raw / "images")
        for name in ("train.csv", "val.csv", "test.csv"):
            shutil.copy(src / "csv" / name, raw / name)
        config = mini_config(raw)
        expected = (f"python -m data_prep.miniimagenet --images={raw / 'images'} "
                    f"--csv_dir={raw} --output=<new folder>")
    before = snapshot(raw)
    message = data_error(config)
    assert "files that data_prep reads, not prepared data" in message
    assert expected in message
    assert snapshot(raw) == before

# ------------------------------------------------------------------ the commands in the hints
@pytest.mark.parametrize("datasource", ["omniglot", "miniimagenet"])
@pytest.mark.parametrize("backend", ["folders", "tfds"])
def test_missing_data_hint_names_the_users_folder_and_placeholders_only(
        tmp_path, datasource, backend):
    missing = tmp_path / "moved_away"
    config = (omniglot_config(missing, dataset_backend=backend) if datasource == "omniglot"
              else mini_config(missing, dataset_backend=backend))
    message = data_error(config)
    assert f"python -m data_prep.{datasource}" in message
    assert f"--output={missing}" in message
    assert ("--format=tfds" in message) == (backend == "tfds")
    source = ("--source=<folder with images_background.zip and images_evaluation.zip>"
              if datasource == "omniglot" else "--csv_dir=<folder with train.csv")
    assert source in message
    assert "shared/" not in message
    assert not missing.exists()


def test_no_source_folder_of_this_machine_in_the_code_or_flagfiles():
    """What users read (library messages, data_prep, flagfiles, docs) names no folder of the
    machine the project was built on."""
    offenders = []
    for top in ("tf_maml", "data_prep", "flags", "docs", "README.md"):
        root = os.path.join(REPO, top)
        paths = [root] if os.path.isfile(root) else [
            os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
        for path in paths:
            rel = os.path.relpath(path, REPO)
            # The reproduction report records the commands it ran, folders included.
            if rel.startswith(("docs/RESULTS.md", "docs/results", "docs/figures")):
                continue
            if not path.endswith((".py", ".flags", ".md", ".json")):
                continue
            with open(path, encoding="utf-8") as f:
                text = f.read()
            offenders += [f"{rel}: {bad}" for bad in ("../shared", "/work/") if bad in text]
    assert offenders == []


# ------------------------------------------------------------------ TF2 checkpoint as TF1
def test_tf2_checkpoint_as_init_checkpoint_says_only_tf1_and_how_to_resume(sine_run, tmp_path):
    config, run_dir = sine_run
    copy = tmp_path / "logs" / run_dir.name
    shutil.copytree(run_dir, copy)
    before = snapshot(copy)
    prefix = copy / "model-40"
    fresh = dataclasses.replace(config, logdir=str(tmp_path / "fresh"))
    result = cli(*as_flags(fresh, init_checkpoint=str(prefix)))
    assert result.code == 1
    line = one_line_error(result.err)
    assert f"{prefix} is a TensorFlow 2 checkpoint" in line
    assert "accept only the original's checkpoints" in line
    assert f"--logdir={tmp_path / 'logs'}" in line  # resume the run it belongs to
    assert "--train=False" in line
    assert snapshot(copy) == before


def test_tf2_checkpoint_of_a_zoo_folder_points_to_tf_maml_reproduce(tmp_path):
    # Was "rerun its training command with --logdir=<the zoo>": a zoo folder is not named as
    # its run, so that made a new run of the same flags inside the zoo, from scratch.
    from tf_maml.config import Config

    zoo = tmp_path / "zoo"
    shutil.copytree(os.path.join(REPO, "zoo", "sinusoid_maml_k10"), zoo / "sinusoid_maml_k10")
    with open(zoo / "sinusoid_maml_k10" / "config.json") as f:
        config = Config.from_json(f.read())
    model = experiment.build_learner(config).model
    with pytest.raises(convert.ConversionError) as info:
        convert.load_original_checkpoint(model, str(zoo / "sinusoid_maml_k10" / "model-70000"))
    message = str(info.value)
    assert "TensorFlow 2 checkpoint" in message and "a folder of the model zoo" in message
    assert "tf-maml-reproduce --experiments=" in message and "--reevaluate" in message
    assert f"--logdir={zoo}" not in message


def test_tf2_checkpoint_outside_a_run_directory_still_says_what_to_use(sine_run, tmp_path):
    config, run_dir = sine_run
    for name in ("model-40.index", "model-40.data-00000-of-00001"):
        shutil.copy(run_dir / name, tmp_path / name)
    model = experiment.build_learner(config).model
    with pytest.raises(convert.ConversionError) as info:
        convert.load_original_checkpoint(model, str(tmp_path / "model-40"))
    message = str(info.value)
    assert "TensorFlow 2 checkpoint" in message and "--logdir" in message
    assert "does not fit" not in message  # not a list of missing TF1 names
