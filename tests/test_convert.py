"""Import of the original cbfinn/maml TF1 checkpoints (tf_maml.convert).

Every test runs on checkpoints written here in the original's format: TF1 name-based
checkpoints (``SaveV2``, what ``tf.compat.v1.train.Saver`` wrote) under the original's
variable names. The MiniImageNet 5-way 1-shot one has the names and shapes of the original's
model59000 (written out below by hand) and random values; when the environment variable
TF_MAML_ORIGINAL_CHECKPOINT names the original's prefix (``.../miniimagenet1shot/model59000``),
the same tests also run on it.
"""

from __future__ import annotations

import errno
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import adapt, models
from tf_maml.checkpoint import CheckpointError
from tf_maml.convert import (
    ConversionError,
    convert,
    infer_flags,
    load_original_checkpoint,
    resolve_prefix,
)

ORIGINAL_ENV = "TF_MAML_ORIGINAL_CHECKPOINT"

# Checkpoint name -> the Keras weight it must land in (written out by hand, independently of
# the mapping in tf_maml.convert).
EXPECTED = {
    "model/conv1": "conv1/kernel", "model/Variable": "conv1/bias", "model/0/beta": "norm1/beta",
    "model/conv2": "conv2/kernel", "model/Variable_1": "conv2/bias", "model/1/beta": "norm2/beta",
    "model/conv3": "conv3/kernel", "model/Variable_2": "conv3/bias", "model/2/beta": "norm3/beta",
    "model/conv4": "conv4/kernel", "model/Variable_3": "conv4/bias", "model/3/beta": "norm4/beta",
    "model/w5": "logits/kernel", "model/b5": "logits/bias",
}


def miniimagenet_net(num_classes=5, num_filters=32, norm="batch_norm"):
    return models.conv4((84, 84, 3), num_classes, num_filters=num_filters, max_pool=True,
                        norm=norm)


def by_path(model):
    return {v.path: v for v in model.weights}


def save_tf1(prefix: str, tensors: dict[str, np.ndarray]) -> str:
    """A TF1 name-based checkpoint (what tf.compat.v1.train.Saver wrote) with these names."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n], tf.float32) for n in names])
    return prefix


def save_tf1_sinusoid(prefix: str, hidden: int, seed: int = 0) -> str:
    """A random TF1 checkpoint of the original's sinusoid net (1 -> hidden -> hidden -> 1),
    with its names: ``model/Variable`` .. ``model/Variable_5``, kernels then biases."""
    rng = np.random.default_rng(seed)
    sizes = [1, hidden, hidden, 1]
    tensors = {}
    for j in range(3):
        tensors["model/Variable" + (f"_{2 * j}" if j else "")] = rng.normal(
            size=(sizes[j], sizes[j + 1]))
        tensors[f"model/Variable_{2 * j + 1}"] = rng.normal(size=sizes[j + 1])
    return save_tf1(prefix, tensors)


# The original's MiniImageNet 5-way 1-shot checkpoint: each variable's shape (its spec: 32
# filters of 3x3, four blocks, 2x2 max-pooling from 84 to 5x5, so 800 features to 5 classes).
ORIGINAL_SHAPES = {
    "model/conv1": (3, 3, 3, 32), "model/conv2": (3, 3, 32, 32),
    "model/conv3": (3, 3, 32, 32), "model/conv4": (3, 3, 32, 32),
    **{f"model/Variable{'' if i == 0 else f'_{i}'}": (32,) for i in range(4)},
    **{f"model/{i}/beta": (32,) for i in range(4)},
    "model/w5": (800, 5), "model/b5": (5,),
}


def save_tf1_miniimagenet(prefix: str, seed: int = 0) -> str:
    """A random TF1 checkpoint with the original MiniImageNet 1-shot net's names and shapes
    (kernels scaled as He et al.'s, so that the logits are neither tiny nor huge)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in ORIGINAL_SHAPES.items():
        scale = np.sqrt(2 / np.prod(shape[:-1])) if len(shape) > 1 else 0.1
        tensors[name] = scale * rng.normal(size=shape)
    return save_tf1(prefix, tensors)


# --------------------------------------------------------------------- MiniImageNet 1-shot
@pytest.fixture(scope="module",
                params=["written"] + (["original"] if os.environ.get(ORIGINAL_ENV) else []))
def ckpt(request, tmp_path_factory) -> str:
    """The prefix of a MiniImageNet 1-shot checkpoint of the original, alone in its folder:
    one written here, or the original's model59000 (named by $TF_MAML_ORIGINAL_CHECKPOINT)."""
    if request.param == "original":
        return os.environ[ORIGINAL_ENV]
    return save_tf1_miniimagenet(str(tmp_path_factory.mktemp("miniimagenet1shot") /
                                     "model59000"))


@pytest.fixture(scope="module")
def real(ckpt):
    """(reader of the checkpoint, our net with it loaded, what load returned)."""
    model = miniimagenet_net()
    loaded = load_original_checkpoint(model, ckpt)
    return tf.train.load_checkpoint(ckpt), model, loaded


def test_every_variable_lands_in_its_keras_weight(real):
    reader, model, loaded = real
    assert sorted(reader.get_variable_to_shape_map()) == sorted(EXPECTED)
    assert {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()
            } == ORIGINAL_SHAPES
    assert loaded == EXPECTED
    weights = by_path(model)
    for name, path in EXPECTED.items():
        np.testing.assert_array_equal(weights[path].numpy(), reader.get_tensor(name),
                                      err_msg=f"{name} -> {path}")
    # 32 773 floats, as the spec says; every trainable weight came from the checkpoint
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 32773
    assert {v.path for v in model.trainable_variables} == set(EXPECTED.values())


def original_forward_conv(reader, x: np.ndarray) -> np.ndarray:
    """The original's forward_conv (maml.py / utils.conv_block) from the raw checkpoint arrays:
    conv2d SAME stride 1 + b, batch norm with the batch's statistics over N,H,W (eps 1e-3,
    offset beta only), ReLU, 2x2 VALID max-pool; flatten; x @ w5 + b5."""
    h = tf.constant(x)
    for i, bias in enumerate(["model/Variable", "model/Variable_1", "model/Variable_2",
                              "model/Variable_3"]):
        h = tf.nn.conv2d(h, reader.get_tensor(f"model/conv{i + 1}"), [1, 1, 1, 1], "SAME")
        h = h + reader.get_tensor(bias)
        mean, var = tf.nn.moments(h, axes=[0, 1, 2])
        h = (h - mean) / tf.sqrt(var + 1e-3) + reader.get_tensor(f"model/{i}/beta")
        h = tf.nn.max_pool2d(tf.nn.relu(h), 2, 2, "VALID")
    h = tf.reshape(h, [h.shape[0], -1])
    return (h @ reader.get_tensor("model/w5") + reader.get_tensor("model/b5")).numpy()


def test_forward_pass_matches_the_original_network(real):
    reader, model, _ = real
    x = np.random.default_rng(0).random((6, 84, 84, 3), dtype=np.float32)
    want = original_forward_conv(reader, x)
    got = model(x, training=True).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # and through the fast-weight path the learner uses
    weights = [v.value for v in model.trainable_variables]
    np.testing.assert_allclose(adapt.forward(model, weights, tf.constant(x)).numpy(), want,
                               atol=1e-4, rtol=1e-4)
    # the logits differ across examples (not a degenerate net) and are not tiny
    assert np.ptp(want, axis=0).max() > 1e-2


@pytest.mark.parametrize("kwargs, variable, flag", [
    (dict(num_filters=64), "model/conv1", "--num_filters"),
    (dict(num_classes=20), "model/w5", "--num_classes"),
])
def test_wrong_architecture_names_the_variable(ckpt, kwargs, variable, flag):
    model = miniimagenet_net(**kwargs)
    before = [v.numpy() for v in model.weights]
    with pytest.raises(ConversionError) as err:
        load_original_checkpoint(model, ckpt)
    assert variable in str(err.value) and flag in str(err.value)
    for old, v in zip(before, model.weights):  # nothing was assigned
        np.testing.assert_array_equal(old, v.numpy())


def test_wrong_norm_and_wrong_net_fail_clearly(ckpt):
    with pytest.raises(ConversionError, match=r"model/0/gamma .*missing"):
        load_original_checkpoint(miniimagenet_net(norm="layer_norm"), ckpt)
    with pytest.raises(ConversionError, match=r"no place for model/0/beta.*--norm"):
        load_original_checkpoint(miniimagenet_net(norm="None"), ckpt)
    omniglot = models.conv4((28, 28, 1), 5, num_filters=32)  # 1 input channel, mean-pool head
    with pytest.raises(ConversionError, match=r"model/conv1 has shape \[3, 3, 3, 32\]"):
        load_original_checkpoint(omniglot, ckpt)


def test_missing_checkpoint_raises(tmp_path):
    missing = str(tmp_path / "nowhere" / "model59000")
    with pytest.raises(ConversionError, match=r"model59000\.index") as err:
        load_original_checkpoint(miniimagenet_net(), missing)
    # the runner's CLI reports CheckpointErrors as a one-line error
    assert isinstance(err.value, CheckpointError) and isinstance(err.value, ValueError)
    with pytest.raises(ConversionError, match="no checkpoint given"):
        resolve_prefix("")


def test_prefix_forms(ckpt, tmp_path):
    assert resolve_prefix(ckpt + ".index") == ckpt
    assert resolve_prefix(ckpt + ".data-00000-of-00001") == ckpt
    assert resolve_prefix(os.path.dirname(ckpt)) == ckpt  # a folder with one checkpoint
    assert infer_flags(ckpt) == dict(datasource="miniimagenet", conv=True, num_classes=5,
                                     num_filters=32, max_pool=True, norm="batch_norm")
    # index without its data file
    os.symlink(ckpt + ".index", tmp_path / "model1.index")
    with pytest.raises(ConversionError, match="model1"):
        load_original_checkpoint(miniimagenet_net(), str(tmp_path / "model1"))


def test_cli_writes_keras_weights(ckpt, tmp_path):
    summary = convert(ckpt, str(tmp_path))
    assert summary["num_floats"] == 32773 and len(summary["variables"]) == 14
    model = miniimagenet_net()
    model.load_weights(str(tmp_path / "model.weights.h5"))
    reader = tf.train.load_checkpoint(ckpt)
    np.testing.assert_array_equal(model.get_layer("conv3").kernel.numpy(),
                                  reader.get_tensor("model/conv3"))
    assert (tmp_path / "summary.json").is_file()


def test_truncated_data_file_is_named(ckpt, tmp_path):
    # Was an IndexError traceback from TensorFlow's reader (convert and --init_checkpoint).
    for suffix in (".index", ".data-00000-of-00001"):
        data = open(ckpt + suffix, "rb").read()
        (tmp_path / f"model59000{suffix}").write_bytes(data[:200] if "data" in suffix else data)
    model = miniimagenet_net()
    before = [v.numpy() for v in model.weights]
    with pytest.raises(ConversionError, match=r"cannot read model/\S+ from .*model59000: its "
                                              r"\.data-\* file is cut short or damaged .*copy "
                                              r"the checkpoint again"):
        load_original_checkpoint(model, str(tmp_path / "model59000"))
    for old, v in zip(before, model.weights):
        np.testing.assert_array_equal(old, v.numpy())


@pytest.mark.parametrize("where", ["file", "below-a-file"])
def test_output_that_is_a_file_is_one_line_and_kept(ckpt, tmp_path, where):
    # Was a FileExistsError / NotADirectoryError traceback from os.makedirs.
    blocker = tmp_path / "converted"
    blocker.write_text("a file")
    output = blocker if where == "file" else blocker / "sub"
    with pytest.raises(ConversionError, match=rf"could not write the converted weights in "
                                              rf"{output}: .*use another --output"):
        convert(ckpt, str(output))
    assert blocker.read_text() == "a file" and os.listdir(tmp_path) == ["converted"]


def test_a_failed_write_keeps_the_earlier_conversion(ckpt, tmp_path, monkeypatch):
    convert(ckpt, str(tmp_path))
    earlier = {p: (tmp_path / p).read_bytes() for p in ("model.weights.h5", "summary.json")}

    def full(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", full)
    with pytest.raises(ConversionError, match=rf"{tmp_path}: No space left on device\. "
                                              r"Nothing was lost.*free some space"):
        convert(ckpt, str(tmp_path))
    assert {p: (tmp_path / p).read_bytes() for p in earlier} == earlier
    assert sorted(os.listdir(tmp_path)) == sorted(earlier)  # no temporary left


# --------------------------------------------------------------------- the other nets
def test_fc_net_names(tmp_path):
    """--conv=False: unnamed w1, b1, ..., w5, b5 -> model/Variable .. Variable_9; batch norm
    scopes 0, 2, 3, 4."""
    rng = np.random.default_rng(1)
    sizes = [784, 256, 128, 64, 64, 5]
    tensors = {}
    for j in range(5):
        tensors[f"model/Variable{'' if j == 0 else f'_{2 * j}'}"] = rng.normal(
            size=(sizes[j], sizes[j + 1])).astype(np.float32)
        tensors[f"model/Variable_{2 * j + 1}"] = rng.normal(size=sizes[j + 1]).astype(np.float32)
    for scope, width in zip("0234", sizes[1:5]):
        tensors[f"model/{scope}/beta"] = rng.normal(size=width).astype(np.float32)
    prefix = save_tf1(str(tmp_path / "model100"), tensors)
    model = models.fc_net((28, 28, 1), (256, 128, 64, 64), 5, norm="batch_norm")
    loaded = load_original_checkpoint(model, prefix)
    assert loaded["model/Variable_8"] == "dense5/kernel"
    assert loaded["model/2/beta"] == "norm2/beta" and loaded["model/0/beta"] == "norm1/beta"
    weights = by_path(model)
    for name, path in loaded.items():
        np.testing.assert_array_equal(weights[path].numpy(), tensors[name])
    assert infer_flags(prefix) == dict(datasource="omniglot", conv=False, num_classes=5,
                                       norm="batch_norm")


def test_layer_norm_conv_names(tmp_path):
    """contrib layer_norm(scope=s) holds model/<s>/beta and model/<s>/gamma per channel."""
    model = models.conv4((28, 28, 1), 5, num_filters=8, norm="layer_norm")
    rng = np.random.default_rng(2)
    tensors = {"model/w5": rng.normal(size=(8, 5)), "model/b5": rng.normal(size=5)}
    for i in range(4):
        tensors[f"model/conv{i + 1}"] = rng.normal(size=(3, 3, 1 if i == 0 else 8, 8))
        tensors[f"model/Variable{'' if i == 0 else f'_{i}'}"] = rng.normal(size=8)
        tensors[f"model/{i}/beta"] = rng.normal(size=8)
        tensors[f"model/{i}/gamma"] = rng.normal(size=8)
    tensors = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
    # a TF1 Saver of all variables would also hold Adam slots: they are ignored
    tensors["model/w5/Adam"] = tensors["model/w5"] * 0
    prefix = save_tf1(str(tmp_path / "ln"), tensors)
    loaded = load_original_checkpoint(model, prefix)
    assert loaded["model/2/gamma"] == "norm3/gamma" and len(loaded) == 18
    np.testing.assert_array_equal(model.get_layer("norm3").gamma.numpy(),
                                  tensors["model/2/gamma"])
    assert infer_flags(prefix)["norm"] == "layer_norm"


def test_an_output_with_an_unexpanded_home_is_refused_before_reading(tmp_path):
    # --output=~/maml59000 made a folder named ~ in the current directory.
    with pytest.raises(ConversionError, match=r"^--output: '~/maml59000' starts with ~, "
                                              r"which only a shell expands"):
        convert(str(tmp_path / "model59000"), "~/maml59000")


@pytest.mark.parametrize("flag", ["checkpoint", "output"])
def test_an_empty_path_is_refused_before_reading(tmp_path, flag):
    # --output=$OUT with OUT unset failed after the conversion, "could not write the
    # converted weights in : No such file or directory ...; check , then run the same
    # command again"; --checkpoint=$CKPT looked for the files ".index" and ".data-...".
    paths = {"checkpoint": str(tmp_path / "model59000"), "output": str(tmp_path / "out")}
    paths[flag] = ""
    with pytest.raises(ConversionError, match=rf"^--{flag}: is empty \(an unset shell "
                                              rf"variable, as in --{flag}=\$X\?\)"):
        convert(paths["checkpoint"], paths["output"])
    assert os.listdir(tmp_path) == []
