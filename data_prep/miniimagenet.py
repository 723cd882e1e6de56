"""Prepare MiniImageNet for tf_maml (command line over ``tf_maml.data.miniimagenet``).

    python -m data_prep.miniimagenet --images=$DATA/miniimagenet/images.zip \
        --csv_dir=$DATA/miniimagenet --output=$DATA/miniimagenet_prepared

``--images`` is the ``images/`` folder of the Ravi & Larochelle split or its ``images.zip``;
``--csv_dir`` holds ``train.csv``, ``val.csv`` and ``test.csv`` (header ``filename,label``).
Both are only read. ``--output`` receives the per-split class folders of 84x84 JPEGs, the npz
caches and the completion marker described in ``tf_maml.data.miniimagenet``. A rerun completes
an interrupted output, repairs a finished one whose files are missing or damaged (empty,
foreign or cut short) and otherwise returns in seconds.

With ``--format=tfds`` the output is instead a TensorFlow Datasets ``data_dir`` holding
``tf_maml_miniimagenet`` (splits train/validation/test = the three CSVs, the same JPEG bytes as
the folder tree), built offline by ``tf_maml.tfds.build.build_miniimagenet``; read it with
``tfds.load("tf_maml_miniimagenet", data_dir=<output>)`` after ``import tf_maml.tfds``, or train
on it with ``--dataset_backend=tfds``. A rerun reuses the built dataset.
"""

from __future__ import annotations

from absl import flags

import data_prep
from tf_maml.data.miniimagenet import (
    DEFAULT_PROGRESS_EVERY,
    EXPECTED_IMAGES_PER_CLASS,
    SPLITS,
    prepare_miniimagenet,
)

FLAGS = flags.FLAGS


# Flags are defined only when the command runs (see data_prep.omniglot).
def _define_flags() -> None:
    flags.DEFINE_string("images", None, "The images/ folder or images.zip (only read).")
    flags.DEFINE_string("csv_dir", None, "Folder with train.csv, val.csv and test.csv.")
    flags.DEFINE_string("output", None, "Output folder (created if missing).")
    flags.DEFINE_enum("format", "folders", ["folders", "tfds"],
                      "folders: the split folders the original reads; tfds: a TensorFlow "
                      "Datasets data_dir with tf_maml_miniimagenet.")
    flags.DEFINE_bool("expect_counts", True, "Require 64/16/20 classes x "
                      f"{EXPECTED_IMAGES_PER_CLASS} images (false only for small test data).")
    flags.DEFINE_integer("progress_every", DEFAULT_PROGRESS_EVERY,
                         "Log progress every this many images.", lower_bound=1)
    flags.mark_flags_as_required(["images", "csv_dir", "output"])


def _prepare() -> str:
    """Runs the preparation the flags ask for; returns the line to print."""
    if FLAGS.format == "tfds":
        from tf_maml.tfds import build  # TFDS is imported only for --format=tfds

        summary = build.build_miniimagenet(FLAGS.images, FLAGS.csv_dir, FLAGS.output,
                                           expect_counts=FLAGS.expect_counts)
        return f"MiniImageNet TFDS {build.describe(summary)}"
    result = prepare_miniimagenet(FLAGS.images, FLAGS.csv_dir, FLAGS.output,
                                  FLAGS.expect_counts, FLAGS.progress_every)
    state = "already complete" if result["already_complete"] else "done"
    counts = ", ".join(f"{s} {result['splits'][s]['num_classes']} classes x "
                       f"{result['splits'][s]['images_per_class']}" for s in SPLITS)
    return f"MiniImageNet {state}: {counts} in {FLAGS.output}"


def main() -> None:
    """Console entry point (``tf-maml-prep-miniimagenet``)."""
    data_prep.run(_define_flags, _prepare)


if __name__ == "__main__":
    main()
