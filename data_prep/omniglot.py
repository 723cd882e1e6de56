"""Prepare Omniglot for tf_maml (command line over ``tf_maml.data.omniglot``).

    python -m data_prep.omniglot --source=$DATA/omniglot --output=$DATA/omniglot_resized

``--source`` holds ``images_background.zip`` and ``images_evaluation.zip`` (the archives of
Lake et al.) or the folders extracted from them; it is only read. ``--output`` receives the
28x28 PNG tree, the npz cache and the completion marker described in
``tf_maml.data.omniglot``. A rerun completes an interrupted output, repairs a finished one
whose files are missing or damaged (empty, foreign or cut short) and otherwise returns in
seconds.

With ``--format=tfds`` the output is instead a TensorFlow Datasets ``data_dir`` holding
``tf_maml_omniglot/maml_28`` (the same 28x28 drawings, MAML's 1100/100/423 character split as
splits train/validation/test) and ``tf_maml_omniglot/full_105`` (the original drawings, splits
background/evaluation), built offline by ``tf_maml.tfds.build.build_omniglot``; read them with
``tfds.load("tf_maml_omniglot/maml_28", data_dir=<output>)`` after ``import tf_maml.tfds``, or
train on them with ``--dataset_backend=tfds``. A rerun reuses the built datasets.
"""

from __future__ import annotations

from absl import flags

import data_prep
from tf_maml.data.omniglot import (
    DEFAULT_PROGRESS_EVERY,
    EXPECTED_DRAWINGS_PER_CHARACTER,
    EXPECTED_NUM_CHARACTERS,
    prepare_omniglot,
)

FLAGS = flags.FLAGS


# Flags are defined only when the command runs, so that importing this module registers no
# global flags that could clash.
def _define_flags() -> None:
    flags.DEFINE_string("source", None, "Folder with images_background.zip and "
                        "images_evaluation.zip, or the extracted images_background/ and "
                        "images_evaluation/ folders.")
    flags.DEFINE_string("output", None, "Output folder (created if missing).")
    flags.DEFINE_enum("format", "folders", ["folders", "tfds"],
                      "folders: the 28x28 PNG tree the original reads; tfds: a TensorFlow "
                      "Datasets data_dir with tf_maml_omniglot/maml_28 and /full_105.")
    flags.DEFINE_enum("tfds_config", "all", ["all", "maml_28", "full_105"],
                      "With --format=tfds: the config(s) to build.")
    flags.DEFINE_bool("expect_counts", True, f"Require {EXPECTED_NUM_CHARACTERS} characters x "
                      f"{EXPECTED_DRAWINGS_PER_CHARACTER} drawings (false only for small test "
                      "data).")
    flags.DEFINE_integer("progress_every", DEFAULT_PROGRESS_EVERY,
                         "Log progress every this many images.", lower_bound=1)
    flags.mark_flags_as_required(["source", "output"])


def _prepare() -> str:
    """Runs the preparation the flags ask for; returns the line to print."""
    if FLAGS.format == "tfds":
        from tf_maml.tfds import build  # TFDS is imported only for --format=tfds

        results = build.build_omniglot(FLAGS.source, FLAGS.output, FLAGS.tfds_config,
                                       expect_counts=FLAGS.expect_counts)
        return "\n".join(f"Omniglot TFDS {build.describe(summary)}"
                         for summary in results.values())
    result = prepare_omniglot(FLAGS.source, FLAGS.output, FLAGS.expect_counts,
                              FLAGS.progress_every)
    state = "already complete" if result["already_complete"] else "done"
    return (f"Omniglot {state}: {result['num_characters']} characters x "
            f"{result['drawings_per_character']} drawings in {FLAGS.output}")


def main() -> None:
    """Console entry point (``tf-maml-prep-omniglot``)."""
    data_prep.run(_define_flags, _prepare)


if __name__ == "__main__":
    main()
