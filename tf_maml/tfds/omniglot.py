"""The ``tf_maml_omniglot`` TFDS builder: Omniglot from the official archives, offline.

TFDS's own ``omniglot`` builder downloads the archives while it builds; this one reads them
from the manual directory (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``) and never touches the network.

Configs:

``maml_28`` (default)
    What MAML trains on: every drawing resized to 28x28 exactly as ``tf_maml.data.omniglot``
    prepares it (``resize_drawing``: Pillow ``resize`` with LANCZOS of the mode "1" PNG, which
    Pillow carries out as NEAREST; pixels 0 = stroke, 255 = background, stored as the same PNG
    bytes the folder tree holds). Splits ``train`` / ``validation`` / ``test`` are the MAML
    character split of ``tf_maml.tasks.omniglot.split_characters``: all 1623 characters sorted,
    shuffled with ``random.Random(1)``, then 1100 / 100 / 423 characters, alphabets mixed across
    splits. MAML's inversion (strokes 1) and random 90-degree rotations are task sampling, not
    data: they are not applied here.
``full_105``
    The original 105x105 drawings (the PNG bytes of the archives), splits ``background`` (964
    characters of 30 alphabets) and ``evaluation`` (659 characters of 20 alphabets).

Features: ``image`` uint8 [S, S, 1]; ``label`` the character, class names
``"<Alphabet>/characterNN"`` of all 1623 characters in sorted order (the same in every split
and config); ``alphabet`` (class names: the 50 alphabets, sorted); ``alphabet_char_id`` (NN of
``characterNN``, 1-based within the alphabet); ``character_id`` and ``drawer_id`` (NNNN and MM
of the file name ``NNNN_MM.png``: the character's number 1..1623 and the drawer 1..20);
``filename``.

Importing this module registers the builder (``import tf_maml.tfds`` does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from tf_maml.data import omniglot as oprep
from tf_maml.data.prep import Member, PrepError, decode_image
from tf_maml.tasks.omniglot import NUM_TRAIN, NUM_VAL, SPLIT_SEED, split_characters
from tf_maml.tfds.common import VERSION, OfflineBuilder, missing_files_error

NAME = "tf_maml_omniglot"
SETS = oprep.SETS  # ("images_background", "images_evaluation")
MAML_SPLITS = {"train": "train", "validation": "val", "test": "test"}  # TFDS -> project
FULL_SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}
ORIGINAL_SIZE = 105

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the two Omniglot archives of Lake et al. (https://github.com/brendenlake/omniglot,
folder python/) into the manual directory, unchanged:

    <manual_dir>/images_background.zip   30 alphabets, 964 characters, 20 drawings each
    <manual_dir>/images_evaluation.zip   20 alphabets, 659 characters, 20 drawings each

(layout inside: images_background/<Alphabet>/characterNN/NNNN_MM.png, 105x105 1-bit PNG).
Instead of a zip, the folder extracted from it may be there (<manual_dir>/images_background/
and <manual_dir>/images_evaluation/); for each set the zip is used when present. The files
are only read. Then build offline, e.g.

    python -m data_prep.omniglot --format=tfds --source=<manual_dir> --output=<data_dir>

or tfds.builder("tf_maml_omniglot/maml_28", data_dir=<data_dir>).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=<manual_dir>, try_download_gcs=False))
after `import tf_maml.tfds`.
"""

CITATION = """\
@article{lake2015human,
  title={Human-level concept learning through probabilistic program induction},
  author={Lake, Brenden M. and Salakhutdinov, Ruslan and Tenenbaum, Joshua B.},
  journal={Science},
  volume={350},
  number={6266},
  pages={1332--1338},
  year={2015}
}
@inproceedings{finn2017model,
  title={Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks},
  author={Finn, Chelsea and Abbeel, Pieter and Levine, Sergey},
  booktitle={International Conference on Machine Learning (ICML)},
  year={2017}
}
"""

_CHARACTER_RE = re.compile(r"character(\d+)")
_FILE_RE = re.compile(r"(\d+)_(\d+)\.png", re.IGNORECASE)


@dataclasses.dataclass(eq=False)
class OmniglotConfig(tfds.core.BuilderConfig):
    """``image_size``: 28 (MAML's resize) or 105 (original); ``maml_split``: the
    1100/100/423 character split, else the background/evaluation sets."""

    image_size: int = 28
    maml_split: bool = True


def check_manual_dir(manual_dir: str) -> None:
    """Raises ``ManualDataError`` (naming the files, with the instructions) if a set is
    neither in ``manual_dir`` as a zip nor as a folder."""
    missing = [f"{s}.zip (or the folder {s}/ extracted from it)" for s in SETS
               if not os.path.isfile(os.path.join(manual_dir, f"{s}.zip"))
               and not os.path.isdir(os.path.join(manual_dir, s))]
    if missing:
        raise missing_files_error("Omniglot", manual_dir, missing,
                                  MANUAL_DOWNLOAD_INSTRUCTIONS, oprep.source_hint(manual_dir))


def scan(manual_dir: str, zips: list[zipfile.ZipFile]
         ) -> tuple[dict[str, list[Member]], dict[str, str]]:
    """({"Alphabet/characterNN" sorted: drawings sorted by file name}, {character: set name}).

    Opened archives are appended to ``zips`` (the drawings are read from them lazily).
    """
    check_manual_dir(manual_dir)
    members: list[Member] = []
    set_of: dict[str, str] = {}
    for set_name in SETS:
        found = oprep.set_members(manual_dir, set_name, zips)
        set_of.update((f"{m.rel[0]}/{m.rel[1]}", set_name) for m in found)
        members += found
    return oprep.group_characters(members), set_of


def _ids(member: Member) -> tuple[int, int, int]:
    """(alphabet_char_id, character_id, drawer_id) from the folder and file names."""
    char = _CHARACTER_RE.fullmatch(member.rel[1])
    drawing = _FILE_RE.fullmatch(member.rel[2])
    if char is None or drawing is None:
        raise PrepError(f"{member.origin}: expected <Alphabet>/characterNN/NNNN_MM.png, the "
                        "names of the Omniglot archives")
    return int(char.group(1)), int(drawing.group(1)), int(drawing.group(2))


def original_png(data: bytes, origin: str) -> bytes:
    """The PNG bytes of a 105x105 drawing as stored (re-encoded to "L" only if in another
    mode than "1"/"L", which no official drawing is)."""
    img = decode_image(data, origin)
    if img.size != (ORIGINAL_SIZE, ORIGINAL_SIZE):
        raise PrepError(f"{origin} is {img.size[0]}x{img.size[1]}, expected "
                        f"{ORIGINAL_SIZE}x{ORIGINAL_SIZE}")
    if img.format == "PNG" and img.mode in ("1", "L"):
        return data
    buf = io.BytesIO()
    img.convert("L").save(buf, format="PNG")
    return buf.getvalue()


class TfMamlOmniglot(OfflineBuilder):
    """Omniglot from the manual directory; see the module docstring.

    Builder keyword arguments (``tfds.builder(..., **kwargs)`` or ``builder_kwargs``), only
    for deliberately partial data such as the project's tests: ``expect_counts=False``
    accepts other counts than 1623 characters x 20 drawings; ``num_train`` / ``num_val``
    set the MAML split sizes (default 1100 / 100, which need all 1623 characters).
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "First release: maml_28 and full_105."}
    BUILDER_CONFIGS = [
        OmniglotConfig(
            name="maml_28", image_size=28, maml_split=True,
            description="28x28 drawings as MAML resizes them (Pillow LANCZOS of the mode "
                        "\"1\" PNGs, i.e. nearest), MAML's 1100/100/423 character split "
                        "(sorted characters shuffled by random.Random(1))."),
        OmniglotConfig(
            name="full_105", image_size=ORIGINAL_SIZE, maml_split=False,
            description="The original 105x105 drawings; splits background and evaluation."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # Every config holds every drawing, however split (checked on reusing a build).
    EXPECTED_EXAMPLES = oprep.EXPECTED_NUM_CHARACTERS * oprep.EXPECTED_DRAWINGS_PER_CHARACTER

    def __init__(self, *, expect_counts: bool = True, num_train: int | None = None,
                 num_val: int | None = None, **kwargs):
        self._expect_counts = expect_counts
        self._num_train = num_train
        self._num_val = num_val
        super().__init__(**kwargs)
        self._original_state.update(expect_counts=expect_counts, num_train=num_train,
                                    num_val=num_val)

    def split_sizes(self) -> dict[str, int] | None:
        """The MAML split sizes this builder builds with (its metadata's num_train and
        num_val); None for a config without the MAML split (full_105)."""
        if not self.builder_config.maml_split:
            return None
        return {"num_train": NUM_TRAIN if self._num_train is None else self._num_train,
                "num_val": NUM_VAL if self._num_val is None else self._num_val}

    def as_dataset(self, *args, **kwargs):
        """TFDS's, but a build of other split sizes than the ``num_train`` / ``num_val``
        given is refused (:meth:`sizes_problem`): ``tfds.load`` reads a build it finds
        without :meth:`download_and_prepare`. Without them, the build's own sizes are read
        (its metadata), as :mod:`tf_maml.tfds.tasks` reads them."""
        given = self._num_train is not None or self._num_val is not None
        problem = self.sizes_problem() if given and self.is_prepared() else None
        if problem:
            raise PrepError(problem)
        return super().as_dataset(*args, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Omniglot (Lake et al. 2015), 1623 handwritten characters of 50 "
                        "alphabets, 20 drawings each, built offline from the official "
                        "archives for tf_maml.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(),
                "alphabet": tfds.features.ClassLabel(),
                "alphabet_char_id": np.int64,
                "character_id": np.int64,
                "drawer_id": np.int64,
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/brendenlake/omniglot",
            citation=CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        with contextlib.ExitStack() as stack:
            zips: list[zipfile.ZipFile] = []
            stack.callback(lambda: [zf.close() for zf in zips])
            chars, set_of = scan(manual_dir, zips)
            per_char = oprep.check_counts(chars, self._expect_counts)
            for drawings in chars.values():
                for m in drawings:
                    _ids(m)  # fail early on unexpected names
        names = list(chars)
        self.info.features["label"].names = names
        self.info.features["alphabet"].names = sorted({n.split("/")[0] for n in names})
        metadata = {"num_characters": len(names), "drawings_per_character": per_char}
        if self.builder_config.maml_split:
            if (self._num_train is None and self._num_val is None
                    and len(names) != oprep.EXPECTED_NUM_CHARACTERS):
                raise PrepError(
                    f"the MAML split of {NUM_TRAIN}/{NUM_VAL}/rest characters is defined on "
                    f"all {oprep.EXPECTED_NUM_CHARACTERS} characters, {manual_dir} holds "
                    f"{len(names)}; for partial data build only full_105 "
                    "(data_prep: --tfds_config=full_105) or give the builder num_train and "
                    "num_val")
            sizes = self.split_sizes()
            groups = {tfds_split: split_characters(names, split, sizes["num_train"],
                                                   sizes["num_val"])
                      for tfds_split, split in MAML_SPLITS.items()}
            metadata.update(sizes, split_seed=SPLIT_SEED)
        else:
            groups = {tfds_split: [n for n in names if set_of[n] == set_name]
                      for tfds_split, set_name in FULL_SPLITS.items()}
        empty = [s for s, group in groups.items() if not group]
        if empty:
            raise PrepError(f"{manual_dir}: the split(s) {', '.join(empty)} would be empty "
                            f"({len(names)} characters)")
        self.info.metadata.update(metadata)
        return {s: self._generate_examples(manual_dir=manual_dir, characters=group)
                for s, group in groups.items()}

    def _generate_examples(self, manual_dir: str, characters: list[str]):
        size = self.builder_config.image_size
        if size not in (oprep.IMAGE_SIZE, ORIGINAL_SIZE):
            raise ValueError(f"image_size must be {oprep.IMAGE_SIZE} or {ORIGINAL_SIZE}, "
                             f"got {size}")
        with contextlib.ExitStack() as stack:
            zips: list[zipfile.ZipFile] = []
            stack.callback(lambda: [zf.close() for zf in zips])
            chars, _ = scan(manual_dir, zips)
            for name in characters:
                alphabet = name.split("/")[0]
                for m in chars[name]:
                    alphabet_char_id, character_id, drawer_id = _ids(m)
                    if size == oprep.IMAGE_SIZE:
                        png, _, _ = oprep.resize_drawing(m.read(), m.origin)
                    else:
                        png = original_png(m.read(), m.origin)
                    yield f"{name}/{m.rel[2]}", {
                        "image": png,
                        "label": name,
                        "alphabet": alphabet,
                        "alphabet_char_id": alphabet_char_id,
                        "character_id": character_id,
                        "drawer_id": drawer_id,
                        "filename": m.rel[2],
                    }
