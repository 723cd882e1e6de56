"""The ``tf_maml_miniimagenet`` TFDS builder: MiniImageNet (Ravi & Larochelle split), offline.

Reads ``images.zip`` (or the extracted ``images/`` folder) and ``train.csv`` / ``val.csv`` /
``test.csv`` from the manual directory and never touches the network. Splits ``train`` /
``validation`` / ``test`` are the 64 / 16 / 20 classes of the three CSVs (600 images each).

Every CSV row (filename, label) is one example, exactly as ``tf_maml.data.miniimagenet``
writes one file per row: images that are already 84x84 RGB JPEGs are stored byte for byte,
others are converted to RGB, resized to 84x84 with LANCZOS and saved as JPEG with Pillow's
default quality (``tf_maml.data.miniimagenet.to_84_jpeg``), so the stored bytes equal the files
of the folder tree.

Features: ``image`` uint8 [84, 84, 3] (JPEG); ``label`` with the class names of the CSVs (the
WordNet ids), train's sorted, then validation's, then test's, so label ids of a split are
contiguous and in the sorted order of the folder tree; ``filename`` as in the CSV.

Pixels: ``tfds.load`` decodes the JPEGs with TensorFlow's default (``dct_method`` INTEGER_FAST),
which differs from Pillow's decoding, used by the folder backend and the original's pipeline
alike, by a few levels per value. For exactly the folder backend's pixels, load with
``decoders={"image": tfds.decode.SkipDecoding()}`` and decode with
``tf.io.decode_jpeg(image, channels=3, dct_method="INTEGER_ACCURATE")`` (equal to Pillow's) or
with Pillow, as ``tf_maml.tfds.tasks`` does.

Importing this module registers the builder (``import tf_maml.tfds`` does).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from tf_maml.data import miniimagenet as mprep
from tf_maml.tfds.common import VERSION, OfflineBuilder, missing_files_error

NAME = "tf_maml_miniimagenet"
SPLITS = {"train": "train", "validation": "val", "test": "test"}  # TFDS split -> CSV name
IMAGE_SIZE = mprep.IMAGE_SIZE

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the MiniImageNet files of the Ravi & Larochelle split into the manual directory:

    <manual_dir>/images.zip   the 60,000 JPEGs in one flat folder images/ (or that folder
                              itself, extracted: <manual_dir>/images/<filename>.jpg)
    <manual_dir>/train.csv    header filename,label: 64 classes x 600 images
    <manual_dir>/val.csv      16 classes x 600 images
    <manual_dir>/test.csv     20 classes x 600 images

The zip is used when both it and the folder are there. The files are only read. Then build
offline, e.g.

    python -m data_prep.miniimagenet --format=tfds --images=<manual_dir>/images.zip \\
        --csv_dir=<manual_dir> --output=<data_dir>

or tfds.builder("tf_maml_miniimagenet", data_dir=<data_dir>).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=<manual_dir>, try_download_gcs=False))
after `import tf_maml.tfds`.
"""

CITATION = """\
@inproceedings{ravi2017optimization,
  title={Optimization as a Model for Few-Shot Learning},
  author={Ravi, Sachin and Larochelle, Hugo},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2017}
}
@inproceedings{vinyals2016matching,
  title={Matching Networks for One Shot Learning},
  author={Vinyals, Oriol and Blundell, Charles and Lillicrap, Timothy and Kavukcuoglu, Koray
          and Wierstra, Daan},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2016}
}
"""


def images_path(manual_dir: str) -> str | None:
    """``images.zip`` if present, else the ``images/`` folder, else None."""
    for name, exists in (("images.zip", os.path.isfile), ("images", os.path.isdir)):
        path = os.path.join(manual_dir, name)
        if exists(path):
            return path
    return None


def check_manual_dir(manual_dir: str) -> None:
    """Raises ``ManualDataError`` naming the missing files, with the instructions."""
    missing = [] if images_path(manual_dir) else ["images.zip (or the folder images/)"]
    missing += [f"{s}.csv" for s in SPLITS.values()
                if not os.path.isfile(os.path.join(manual_dir, f"{s}.csv"))]
    if missing:
        raise missing_files_error("MiniImageNet", manual_dir, missing,
                                  MANUAL_DOWNLOAD_INSTRUCTIONS)


def read_splits(manual_dir: str, expect_counts: bool) -> dict[str, dict[str, dict[str, int]]]:
    """{CSV split: {label: {filename: line}}} after the checks of ``tf_maml.data.miniimagenet``:
    header, disjoint labels, equal counts (64/16/20 x 600 unless ``expect_counts`` is
    False) and every listed image present."""
    check_manual_dir(manual_dir)
    splits, _ = mprep.read_splits(manual_dir, expect_counts)
    source = mprep.ImageSource(images_path(manual_dir))
    try:
        mprep.check_images_present(splits, source)
    finally:
        source.close()
    return splits


class TfMamlMiniimagenet(OfflineBuilder):
    """MiniImageNet from the manual directory; see the module docstring.

    Builder keyword argument ``expect_counts=False`` (only for deliberately partial data such
    as the project's tests) accepts other counts than 64/16/20 classes x 600 images.
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # 100 classes x 600 images (checked on reusing a build).
    EXPECTED_EXAMPLES = sum(mprep.EXPECTED_NUM_CLASSES.values()) * mprep.EXPECTED_IMAGES_PER_CLASS

    def __init__(self, *, expect_counts: bool = True, **kwargs):
        self._expect_counts = expect_counts
        super().__init__(**kwargs)
        self._original_state.update(expect_counts=expect_counts)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MiniImageNet: 100 ImageNet classes x 600 images, 84x84 RGB, split "
                        "64/16/20 as Ravi & Larochelle (2017), built offline for tf_maml. "
                        "ImageNet images: non-commercial research use only. For Pillow's "
                        "pixels decode with dct_method='INTEGER_ACCURATE'.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                             encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        splits = read_splits(manual_dir, self._expect_counts)
        self.info.features["label"].names = [label for split in SPLITS.values()
                                             for label in sorted(splits[split])]
        images = images_path(manual_dir)
        return {tfds_split: self._generate_examples(images=images, classes=splits[split])
                for tfds_split, split in SPLITS.items()}

    def _generate_examples(self, images: str, classes: dict[str, dict[str, int]]):
        source = mprep.ImageSource(images)
        try:
            for label in sorted(classes):
                for filename in sorted(classes[label]):
                    jpeg, _, _ = mprep.to_84_jpeg(source.read(filename),
                                                  source.origin(filename))
                    yield f"{label}/{filename}", {"image": jpeg, "label": label,
                                                  "filename": filename}
        finally:
            source.close()
