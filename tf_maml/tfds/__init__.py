"""TensorFlow Datasets builders of tf_maml, built offline from the manual directory.

Importing this package registers ``tf_maml_omniglot`` (configs ``maml_28``, the default, and
``full_105``) and ``tf_maml_miniimagenet``, so that after ``import tf_maml.tfds``::

    tfds.load("tf_maml_omniglot/maml_28", split="train", data_dir=DATA_DIR)

reads a dataset built by ``python -m data_prep.omniglot --format=tfds`` (or
``tf_maml.tfds.build``). ``tf_maml.tfds.tasks`` turns them into the project's few-shot tasks.
"""

from tf_maml.tfds.miniimagenet import TfMamlMiniimagenet
from tf_maml.tfds.omniglot import TfMamlOmniglot

__all__ = ["TfMamlMiniimagenet", "TfMamlOmniglot"]
