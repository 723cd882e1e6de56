"""Preparation of the image data sets, shared by the ``data_prep`` commands and the TFDS
builders of ``tf_maml.tfds``.

``prep``: the error, atomic writes, the completion marker, archive reading and decoding;
``omniglot`` and ``miniimagenet``: the checks, the resizing and ``prepare_*`` of each data set.
Nothing here imports TensorFlow.
"""
