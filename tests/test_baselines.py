"""The MiniImageNet baselines (tf_maml/baselines.py): nearest neighbour and fine-tuning on toy
problems whose answers are known by construction, the pretraining on tiny synthetic image
folders (the loss falls, a checkpoint is written and resumed), the command line end to end,
and the flag combinations it refuses."""

from __future__ import annotations

import csv
import functools
import os
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_bad_inputs import cli

from tf_maml import baselines, evaluate, reproduce, runner, zoo
from tf_maml.config import Config, ConfigError
from tf_maml.data.miniimagenet import prepare_miniimagenet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(REPO, "flags")


# ---------------------------------------------------------------------------- toy data
@pytest.fixture(scope="module")
def tiny_mini(tmp_path_factory):
    """Prepared MiniImageNet-shaped folders: train 4 classes, val 5, test 5, 20 images each.
    Each class has its own mean colour (plus noise), so a classifier can learn them and
    the features of one class lie together."""
    root = tmp_path_factory.mktemp("tiny_mini")
    rng = np.random.default_rng(3)
    (root / "images").mkdir()
    for s, (split, num) in enumerate({"train": 4, "val": 5, "test": 5}.items()):
        rows = ["filename,label"]
        for c in range(num):
            label = f"n0{s}{c:06d}"
            colour = rng.integers(30, 226, 3)
            for i in range(20):
                name = f"{label}{i:08d}.jpg"
                pixels = np.clip(colour + rng.normal(0, 25, (84, 84, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / name)
                rows.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    out = root / "prepared"
    prepare_miniimagenet(str(root / "images"), str(root), str(out), expect_counts=False)
    return str(out)


def _config(data_dir, logdir, **kw):
    base = dict(datasource="miniimagenet", baseline="nearest_neighbor", pretrain_iterations=40,
                metatrain_iterations=0, meta_batch_size=16, update_batch_size=1,
                num_filters=4, max_pool=True, num_test_tasks=4, test_set=True,
                data_dir=data_dir, logdir=str(logdir), test_after_train=False)
    base.update(kw)
    return Config(**base).validate()


def _identity_classifier(shape, num_classes=3):
    """A classifier whose body is the identity (its features are the pixels, flattened)."""
    inputs = keras.Input(shape)
    features = keras.layers.Flatten(name="flatten")(inputs)
    logits = keras.layers.Dense(num_classes, name="logits")(features)
    return keras.Model(inputs, logits)


# ---------------------------------------------------------------------------- nearest neighbour
def test_nearest_neighbour_is_by_cosine_similarity():
    """Query q=(3, 2.9) is nearer to support a=(1, 0) in Euclidean distance (3.5 against 9.9)
    but points along b=(10, 10) (cosine 0.9997 against 0.72): cosine gives b's label. The
    other queries are multiples of a support point, whose label they must take."""
    support = tf.constant([[1.0, 0.0], [10.0, 10.0], [0.0, -2.0]])
    labels = tf.constant([4, 7, 2])
    queries = tf.constant([[3.0, 2.9], [5.0, 0.0], [0.0, -0.1], [0.5, 0.5]])
    got = baselines.nearest_neighbor_labels(support, labels, queries).numpy()
    assert got.tolist() == [7, 4, 2, 7]
    # With a task axis, each task uses its own support set.
    batched = baselines.nearest_neighbor_labels(
        tf.stack([support, support[::-1]]), tf.stack([labels, labels[::-1]]),
        tf.stack([queries, queries]))
    assert batched.numpy().tolist() == [[7, 4, 2, 7], [7, 4, 2, 7]]


def test_nearest_neighbour_evaluation_on_an_identity_body():
    """Through the classifier: with the identity body, the features are the pixels. Task 0's
    queries are scaled copies of support images of their own class (all right); in task 1
    the query labels are swapped between two classes (those queries all wrong): accuracy
    1 and 1/3, known by construction."""
    rng = np.random.default_rng(0)
    classifier = baselines.Classifier(_identity_classifier((2, 2, 1)))
    support = rng.uniform(size=(2, 3, 2, 2, 1)).astype("float32")
    support_y = np.array([[0, 1, 2], [2, 0, 1]], dtype="int32")
    query = support[:, [2, 0, 1]] * np.float32(1.7)  # cosine 1 with the scaled image
    query_y = support_y[:, [2, 0, 1]].copy()
    query_y[1, [0, 1]] = query_y[1, [1, 0]]
    out = classifier.evaluate_batch((support, support_y, query, query_y))["metric"].numpy()
    np.testing.assert_allclose(out, [[1.0], [1 / 3]], rtol=1e-6)


# ---------------------------------------------------------------------------- fine-tuning
def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_sequential_classifier_pretrains_and_finetunes():
    """A Sequential classifier (the commonest Keras model) is a built Keras classifier too:
    its body and new head used to be cut at ``model.input``, which a Sequential model does
    not have (an AttributeError saying it was never called). And the fine-tuner evaluates
    tasks with another number of queries after a first call (the retraced step used to
    fail on the relaxed shape)."""
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(6, activation="relu"), keras.layers.BatchNormalization(),
              keras.layers.Dense(5)]
    model = keras.Sequential(layers)
    model.build((None, 4))  # keras.Input((4,)) first instead: the same
    classifier = baselines.Classifier(model)
    rng = np.random.default_rng(0)
    classifier.train_step((rng.normal(size=(8, 4)).astype("float32"), rng.integers(0, 5, 8)))
    tuner = baselines.FineTuner(classifier, 3, 0.1)
    for queries in (2, 3):
        batch = (rng.normal(size=(2, 3, 4)).astype("float32"), np.tile(np.arange(3), (2, 1)),
                 rng.normal(size=(2, 3 * queries, 4)).astype("float32"),
                 np.tile(np.repeat(np.arange(3), queries), (2, 1)))
        assert tuner.evaluate_batch(batch, 1)["metric"].shape == (2, 2)
        assert classifier.evaluate_batch(batch)["metric"].shape == (2, 1)


def test_finetuning_takes_full_batch_sgd_steps_with_torch_learning_rate_decay():
    """Identity body, a new 2-way head set to zero. Ravi & Larochelle's fine-tuning: each
    step is ONE SGD step on the whole support set's mean cross-entropy, with Torch
    optim.sgd's step size lr / (1 + i * decay) at step i. Checked against numpy: two steps
    (lr 0.5, decay 1: step sizes 0.5 then 0.25), the query logits after each being
    query @ W + b with the head numpy computes; one example per step would differ."""
    classifier = baselines.Classifier(_identity_classifier((2, 1, 1), num_classes=5))
    tuner = baselines.FineTuner(classifier, 2, 0.5, lr_decay=1.0, seed=0)
    head = tuner.model.get_layer("logits_2way")
    head.set_weights([np.zeros((2, 2), "float32"), np.zeros(2, "float32")])
    x = np.array([[2.0, 0.5], [3.0, -0.5], [-2.0, 0.3], [-2.5, -0.4]], "float32")
    y = np.array([0, 0, 1, 1], "int32")
    query = np.array([[1.5, 2.0], [2.5, -3.0], [-1.0, 2.5], [-3.0, -1.0]], "float32")
    logits = tuner.finetune(x.reshape(4, 2, 1, 1), y, query.reshape(4, 2, 1, 1), 2).numpy()
    w, b = np.zeros((2, 2)), np.zeros(2)
    onehot = np.eye(2)[y]
    for step, lr in enumerate((0.5, 0.25)):
        np.testing.assert_allclose(logits[step], query @ w + b, rtol=1e-5, atol=1e-6)
        residual = _softmax(x @ w + b) - onehot  # d mean-CE / d logits, times n
        w, b = w - lr * x.T @ residual / 4, b - lr * residual.mean(axis=0)
    np.testing.assert_allclose(logits[2], query @ w + b, rtol=1e-5, atol=1e-6)
    # Through evaluate_batch: per task and step, the query accuracy; separable toy, so the
    # fine-tuned head gets every query right while the zero head ties (argmax class 0).
    batch = (x.reshape(1, 4, 2, 1, 1), y[None], query.reshape(1, 4, 2, 1, 1),
             np.array([[0, 0, 1, 1]], "int32"))
    accuracy = tuner.evaluate_batch(batch, 20)["metric"].numpy()[0]
    assert accuracy.shape == (21,) and accuracy[0] == 0.5 and accuracy[-1] == 1.0
    # The classifier's own weights are untouched (fine-tuning reads them, never writes).
    assert classifier.model.get_layer("logits").kernel.shape == (2, 5)


def test_finetuning_steps_descend_the_loss_plus_the_head_s_weight_penalty():
    """The new head is configured as the old one, its L2 kernel regularizer too; each step
    descends the mean cross-entropy plus λ‖W‖² at the current weights, as Keras' fit
    would. Numpy: from a nonzero head, two steps of lr 0.5."""
    lam = 0.25
    inputs = keras.Input((2, 1, 1))
    features = keras.layers.Flatten(name="flatten")(inputs)
    logits = keras.layers.Dense(5, name="logits",
                                kernel_regularizer=keras.regularizers.L2(lam))(features)
    classifier = baselines.Classifier(keras.Model(inputs, logits))
    tuner = baselines.FineTuner(classifier, 2, 0.5, seed=0)
    w0 = np.array([[0.3, -0.2], [0.1, 0.4]], "float32")
    tuner.model.get_layer("logits_2way").set_weights([w0, np.zeros(2, "float32")])
    x = np.array([[2.0, 0.5], [3.0, -0.5], [-2.0, 0.3], [-2.5, -0.4]], "float32")
    y = np.array([0, 0, 1, 1], "int32")
    query = np.array([[1.5, 2.0], [-1.0, 2.5]], "float32")
    got = tuner.finetune(x.reshape(4, 2, 1, 1), y, query.reshape(2, 2, 1, 1), 2).numpy()
    w, b = w0.astype(np.float64), np.zeros(2)
    for _ in range(2):
        residual = _softmax(x @ w + b) - np.eye(2)[y]
        w, b = w - 0.5 * (x.T @ residual / 4 + 2 * lam * w), b - 0.5 * residual.mean(axis=0)
    np.testing.assert_allclose(got[2], query @ w + b, rtol=1e-5, atol=1e-6)


def test_pretraining_minimises_the_loss_plus_the_weight_penalty():
    """On all-zero images the cross-entropy's kernel gradient is 0, so the kernel moves
    only by its L2 penalty's gradient 2λW: Adam's first step, lr · g / (|g| + ε), takes
    each entry lr towards 0. Without the penalty it would not move at all."""
    inputs = keras.Input((2, 1, 1))
    features = keras.layers.Flatten(name="flatten")(inputs)
    logits = keras.layers.Dense(3, name="logits",
                                kernel_regularizer=keras.regularizers.L2(0.5))(features)
    classifier = baselines.Classifier(keras.Model(inputs, logits), meta_lr=0.01)
    kernel = np.array([[0.3, -0.2, 0.5], [0.1, -0.4, 0.2]], "float32")
    classifier.model.get_layer("logits").set_weights([kernel, np.zeros(3, "float32")])
    out = classifier.train_step((np.zeros((4, 2, 1, 1), "float32"), np.array([0, 1, 2, 0])))
    np.testing.assert_allclose(classifier.model.get_layer("logits").kernel.numpy(),
                               kernel - 0.01 * np.sign(kernel), rtol=1e-5)
    # The loss reported is the cross-entropy alone: log 3 for a zero input's equal logits.
    np.testing.assert_allclose(float(out["pre_loss"]), np.log(3), rtol=1e-6)


def test_an_activity_regularized_classifier_is_refused():
    inputs = keras.Input((2, 1, 1))
    features = keras.layers.Flatten(name="flatten")(inputs)
    logits = keras.layers.Dense(3, name="logits", activity_regularizer="l2")(features)
    with pytest.raises(ValueError, match="activity regularizers.*logits"):
        baselines.Classifier(keras.Model(inputs, logits))


def _batch_norm_classifier(shape, num_classes=3):
    inputs = keras.Input(shape)
    features = keras.layers.Flatten(name="flatten")(inputs)
    normed = keras.layers.BatchNormalization(scale=False, epsilon=1e-3, name="bn")(features)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(normed))


def test_finetuning_predicts_queries_with_batch_norm_in_inference_mode():
    """Ravi & Larochelle's code fine-tunes in training mode (batch statistics of the
    support set, and Torch's running statistics updated at each step with momentum 0.1,
    the variance unbiased), then predicts the queries with network:evaluate(), i.e. with
    those running statistics. With step size 0 the weights stay put and every step sees
    the same support statistics, so after S steps the running mean is
    0.9^S m0 + (1 - 0.9^S) mean(support), likewise the variance: the query logits are known
    in closed form. A query's logits do not depend on the other queries beside it."""
    classifier = baselines.Classifier(_batch_norm_classifier((3, 1, 1), num_classes=4))
    bn = classifier.model.get_layer("bn")
    m0, v0 = np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 1.5])
    beta = np.array([0.1, -0.2, 0.3])
    bn.set_weights([beta.astype("float32"), m0.astype("float32"), v0.astype("float32")])
    tuner = baselines.FineTuner(classifier, 2, 0.0, seed=0)
    w, b = (v.numpy().astype("float64") for v in tuner.model.get_layer("logits_2way").weights)
    rng = np.random.default_rng(1)
    support = rng.normal(2.0, 3.0, (4, 3)).astype("float32")
    query = rng.normal(0.0, 1.0, (6, 3)).astype("float32")
    y = np.array([0, 1, 0, 1], "int32")
    steps = 3
    logits = tuner.finetune(support.reshape(4, 3, 1, 1), y, query.reshape(6, 3, 1, 1),
                            steps).numpy()
    for s in range(steps + 1):
        keep = 0.9 ** s
        mean = keep * m0 + (1 - keep) * support.mean(axis=0)
        var = keep * v0 + (1 - keep) * support.var(axis=0, ddof=1)
        expected = ((query - mean) / np.sqrt(var + 1e-3) + beta) @ w + b
        np.testing.assert_allclose(logits[s], expected, rtol=1e-4, atol=1e-5)
    # Query 0 among other queries, or alone: the same logits (no query-batch statistics).
    others = np.concatenate([query[:1], 10 * query[1:3] + 5]).reshape(3, 3, 1, 1)
    again = tuner.finetune(support.reshape(4, 3, 1, 1), y, others, steps).numpy()
    np.testing.assert_allclose(again[:, 0], logits[:, 0], rtol=1e-5, atol=1e-6)
    alone = tuner.finetune(support.reshape(4, 3, 1, 1), y, query[:1].reshape(1, 3, 1, 1),
                           steps).numpy()
    np.testing.assert_allclose(alone[:, 0], logits[:, 0], rtol=1e-5, atol=1e-6)
    # The search's tuner predicts after the last step only, the statistics still moved at
    # every step: the closed form of step 3; labelled by its argmax, every query is right.
    last = baselines.FineTuner(classifier, 2, 0.0, seed=0, every_step=False)
    only = last.finetune(support.reshape(4, 3, 1, 1), y, query.reshape(6, 3, 1, 1), steps)
    assert only.shape == (1, 6, 2)
    np.testing.assert_allclose(only[0], expected, rtol=1e-4, atol=1e-5)
    batch = (support.reshape(1, 4, 3, 1, 1), y[None], query.reshape(1, 6, 3, 1, 1),
             expected.argmax(axis=1)[None])
    np.testing.assert_array_equal(last.evaluate_batch(batch, steps)["metric"], [[1.0]])
    # The classifier's moving statistics are the pretrained ones still.
    np.testing.assert_allclose(bn.moving_mean.numpy(), m0, rtol=1e-6)


def test_an_interrupted_finetuning_search_resumes_at_the_next_pair(tmp_path, monkeypatch):
    """The 6 x 7 search keeps each pair's accuracy as soon as it is measured (hours on a
    2-core machine for 5-shot). Stopped (Ctrl-C) while measuring the 10th pair, the same call
    measures only the 33 pairs after the 9 kept, in the grid's order, and chooses what the
    whole table (made up here, with one best pair) says; a record of another classifier (one
    weight changed) or a garbled one is measured again, all 42 pairs, without an error."""
    grid = [(lr, decay) for lr in baselines.FINETUNE_LRS for decay in baselines.FINETUNE_DECAYS]
    table = {pair: 0.2 + 0.01 * (i % 5) for i, pair in enumerate(grid)}
    table[(0.01, 0.001)] = 0.9
    calls, stop_at = [], [10]

    def fake_evaluate(tuner, source, num_tasks, num_steps, seed, batch_size):
        got = (float(tuner.inner_lr.numpy()), float(tuner.lr_decay.numpy()))  # float32
        pair = min(grid, key=lambda p: abs(p[0] - got[0]) + abs(p[1] - got[1]))
        calls.append(pair)
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        return {"metric": np.full((num_tasks, num_steps + 1), table[pair])}

    monkeypatch.setattr(baselines.evaluate_lib, "evaluate", fake_evaluate)
    classifier = baselines.Classifier(_identity_classifier((2, 2, 1)))
    record = str(tmp_path / "finetune_selection_ubs1.json")

    def search():
        calls.clear()
        return baselines.select_finetuning(classifier, None, num_classes=3, num_steps=2,
                                           num_tasks=4, record=record, log=lambda _: None,
                                           measured={"update_batch_size": 1})

    with pytest.raises(KeyboardInterrupt):
        search()
    stop_at[0] = 0  # no more interruptions
    selection = search()
    assert calls == grid[9:]
    assert (selection.inner_lr, selection.lr_decay) == (0.01, 0.001)
    assert selection.accuracy == pytest.approx(table)
    classifier.model.weights[0].assign(classifier.model.weights[0] + 1.0)
    assert search().accuracy == pytest.approx(table) and calls == grid
    with open(record, "w") as f:
        f.write('{"measured": {')
    assert search().accuracy == pytest.approx(table) and calls == grid
    search()
    assert calls == []  # the record is whole again


def test_flagfiles_pretrain_and_finetune_as_ravi_and_larochelle_code():
    """Their released configs (config/baselines/train-conv-nearest-neighbor.lua and
    train-pre-trained-SGD.lua): Adam 0.001 on 64-image minibatches for 30000 steps for
    both baselines; fine-tuning: 15 updates, learning rate in {0.5, 0.1, 0.01, 0.001,
    1e-4, 1e-5} x decay in {1, 0.1, ..., 1e-5, 0}, chosen on 100 validation episodes."""
    for k in (1, 5):
        for baseline in ("finetune", "nearest_neighbor"):
            path = os.path.join(FLAGS_DIR, f"miniimagenet_5way_{k}shot_{baseline}.flags")
            with open(path) as f:
                flags = dict(line.strip()[2:].split("=", 1) for line in f
                             if line.startswith("--"))
            assert flags["meta_batch_size"] == "64" and flags["pretrain_iterations"] == "30000"
            assert flags["meta_lr"] == "0.001"
            if baseline == "finetune":
                assert flags["test_num_updates"] == "15"
    assert baselines.FINETUNE_LRS == (0.5, 0.1, 0.01, 0.001, 1e-4, 1e-5)
    assert baselines.FINETUNE_DECAYS == (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 0.0)
    assert baselines.NUM_SELECTION_TASKS == 100


def test_the_new_head_is_new_and_the_body_is_the_pretrained_one(tiny_mini, tmp_path):
    config = _config(tiny_mini, tmp_path, baseline="finetune", num_classes=5)
    classifier = baselines.Classifier(baselines.build_classifier(
        seed=config.seed, num_filters=config.num_filters, max_pool=config.max_pool,
        norm=config.norm))
    model = baselines.with_new_head(classifier.model, 5, seed=0)
    assert model.output_shape == (None, 5) and classifier.model.output_shape == (None, 64)
    pretrained = {id(v) for v in classifier.model.trainable_variables}
    shared = [v for v in model.trainable_variables if id(v) in pretrained]
    assert len(shared) == len(model.trainable_variables) - 2  # all but the head's W and b
    again = baselines.with_new_head(classifier.model, 5, seed=0)
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(),
                                  again.layers[-1].kernel.numpy())  # seeded


# ---------------------------------------------------------------------------- pretraining
def _log_rows(run_dir):
    with open(os.path.join(run_dir, "training_log.csv")) as f:
        return list(csv.DictReader(f))


def _training_set_loss(classifier, config):
    """Mean cross-entropy of the classifier on every training image (batch statistics)."""
    from tf_maml import experiment

    images = experiment.task_source(config, "train")
    x, y = images.tasks.pixels(images.images), images.labels
    logits = classifier.model(x, training=True)
    return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)))


def test_pretraining_lowers_the_loss_and_resumes_from_its_checkpoint(tiny_mini, tmp_path):
    from tf_maml import experiment
    from tf_maml.checkpoint import learner_checkpointer

    lines = []
    config = _config(tiny_mini, tmp_path, pretrain_iterations=60, meta_lr=0.003)
    before = _training_set_loss(experiment.build_learner(config), config)
    result = runner.run(config, log=lines.append)
    run_dir = result["run_dir"]
    assert os.path.basename(run_dir) == "classifier.mbs_16hidden4maxpoolbatchnorm"
    assert result["iterations"] == 60
    assert os.path.exists(os.path.join(run_dir, "model-60.index"))
    restored = experiment.build_learner(config)  # fresh weights, then the checkpoint's
    learner_checkpointer(restored, run_dir).restore(os.path.join(run_dir, "model-60"))
    after = _training_set_loss(restored, config)
    assert after < 0.5 * before, (before, after)
    assert {r["phase"] for r in _log_rows(run_dir)} == {"pretrain"}
    # Resume: the other baseline, another K and a longer run continue the same pretraining.
    more = _config(tiny_mini, tmp_path, baseline="finetune", update_batch_size=5,
                   pretrain_iterations=80, num_classes=5)
    lines.clear()
    result = runner.run(more, log=lines.append)
    assert result["run_dir"] == run_dir and result["iterations"] == 80
    assert any("Resumed from" in ln and "model-60" in ln for ln in lines), lines
    assert os.path.exists(os.path.join(run_dir, "model-80.index"))
    # A flag that defines the pretraining is refused on resume, naming it.
    with pytest.raises(ConfigError, match="--seed"):
        runner.run(_config(tiny_mini, tmp_path, pretrain_iterations=100, seed=3),
                   log=lines.append)


# ---------------------------------------------------------------------------- command line
def _cli(args):
    """tf-maml's console entry (absl's flag parsing, exit codes, one-line errors) in this
    process: (returncode, stdout, stderr)."""
    result = cli(*args)
    return types.SimpleNamespace(returncode=result.code, stdout=result.out, stderr=result.err)


def _csv(path):
    with open(path) as f:
        header, means, _, ci = list(csv.reader(f))
    return header, float(means[-1]), float(ci[-1])


def test_cli_pretrains_once_then_evaluates_both_baselines(tiny_mini, tmp_path, monkeypatch):
    """The repository's flagfiles on tiny data: the nearest-neighbour flagfile pretrains and
    evaluates; the fine-tuning one evaluates the same pretraining (1-shot, then 5-shot),
    with the best of the (learning rate, decay) pairs it validated; the result files are
    the ones the zoo and the report read."""
    # A 2 x 2 corner of the authors' 6 x 7 grid (the grid itself is checked above): every
    # pair tried costs a validation.
    monkeypatch.setattr(baselines, "select_finetuning", functools.partial(
        baselines.select_finetuning, lrs=(0.5, 0.01), decays=(1.0, 0.0)))
    small = ["--pretrain_iterations=60", "--num_filters=4", "--meta_batch_size=16",
             "--num_test_tasks=4", f"--data_dir={tiny_mini}", f"--logdir={tmp_path}/logs/"]
    nn = _cli([f"--flagfile={FLAGS_DIR}/miniimagenet_5way_1shot_nearest_neighbor.flags",
               *small])
    assert nn.returncode == 0, nn.stdout + nn.stderr
    run_dir = tmp_path / "logs" / "classifier.mbs_16hidden4maxpoolbatchnorm"
    header, mean, ci = _csv(run_dir / "test_ubs1_nearest_neighbor.csv")
    assert header == ["update0"] and 0 <= mean <= 1 and ci >= 0
    ft = _cli([f"--flagfile={FLAGS_DIR}/miniimagenet_5way_5shot_finetune.flags", *small,
               "--train=False", "--test_num_updates=3"])
    assert ft.returncode == 0, ft.stdout + ft.stderr
    tried = re.findall(r"validation, learning rate ([\d.]+), decay ([\d.]+): ([\d.]+)%",
                       ft.stdout)
    assert [pair[:2] for pair in tried] == [("0.5", "1.0"), ("0.5", "0.0"), ("0.01", "1.0"),
                                            ("0.01", "0.0")]
    # Over 4 tasks the accuracies are multiples of 1/(4 x queries): 2 decimals rank them.
    lr, decay, best = max(tried, key=lambda pair: float(pair[2]))  # the first of the best
    assert (f"Fine-tuning chosen on validation tasks: learning rate {lr}, decay {decay} "
            f"(validation accuracy {best}%)") in ft.stdout
    header, mean, _ = _csv(run_dir / "test_ubs5_finetune.csv")
    assert len(header) == 4 and 0 <= mean <= 1  # steps 0 to --test_num_updates
    per_task = np.load(run_dir / "test_ubs5_finetune.npy")
    assert per_task.shape == (4, len(header))
    np.testing.assert_allclose(evaluate.summarize(per_task)[0][-1], mean, rtol=1e-6)
    # MAML's test tasks have K query images per class: 5 per 1-shot task, 25 per 5-shot.
    nn_per_task = np.load(run_dir / "test_ubs1_nearest_neighbor.npy")
    for values, queries in ((nn_per_task, 5), (per_task, 25)):
        np.testing.assert_allclose(values * queries, np.round(values * queries), atol=1e-4)
    # Published into a zoo folder (weights only) and evaluated from there.
    zoo_dir = tmp_path / "zoo"
    assert zoo.publish(str(run_dir), str(zoo_dir), True, {}, "test machine", log=print)
    assert zoo.latest_iteration(str(zoo_dir)) == 60
    again = _cli([f"--flagfile={FLAGS_DIR}/miniimagenet_5way_1shot_nearest_neighbor.flags",
                  *small[:-1], f"--logdir={tmp_path}/fresh/", "--train=False"])
    assert again.returncode != 0 and "no checkpoint" in again.stderr  # nothing there yet
    zoo.restore(str(zoo_dir), str(tmp_path / "fresh" / run_dir.name), log=print)
    again = _cli([f"--flagfile={FLAGS_DIR}/miniimagenet_5way_1shot_nearest_neighbor.flags",
                  *small[:-1], f"--logdir={tmp_path}/fresh/", "--train=False"])
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(
        np.load(tmp_path / "fresh" / run_dir.name / "test_ubs1_nearest_neighbor.npy"),
        nn_per_task)


def test_reproduce_rows_share_one_pretraining_and_its_zoo_folder():
    table = {e.name: e for e in reproduce.load_experiments(FLAGS_DIR)}
    names = [f"miniimagenet_{k}shot_{b}" for k in (1, 5) for b in ("finetune",
                                                                   "nearest_neighbor")]
    plans = [reproduce.plan(table[n], "/tmp/x", {"miniimagenet": "/d"}, None, FLAGS_DIR, "/z")
             for n in names]
    assert len({p.run_dir for p in plans}) == 1 and len({p.zoo_dir for p in plans}) == 1
    assert plans[0].run_dir.endswith("classifier.mbs_64hidden32maxpoolbatchnorm")
    assert [p.result_name for p in plans] == ["test_ubs1_finetune", "test_ubs1_nearest_neighbor",
                                              "test_ubs5_finetune",
                                              "test_ubs5_nearest_neighbor"]
    assert {p.target for p in plans} == {30000}
    assert [table[n].paper for n in names] == [(28.86, 0.54), (41.08, 0.70), (49.79, 0.79),
                                               (51.04, 0.65)]
    maml = {e.name: e for e in table.values()}["miniimagenet_1shot"]
    maml_dir = reproduce.plan(maml, "/tmp/x", {"miniimagenet": "/d"}, None, FLAGS_DIR,
                              "/z").run_dir
    assert os.path.basename(maml_dir).startswith("cls_")  # never the baselines' directory


# ---------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("change, flag", [
    (dict(datasource="omniglot"), "--baseline"),
    (dict(meta_sgd=True), "--meta_sgd"),
    (dict(algorithm="reptile"), "--algorithm"),
    (dict(stop_grad=True), "--stop_grad"),
    (dict(adapt_layers="head"), "--adapt_layers"),
    (dict(metatrain_iterations=500), "--metatrain_iterations"),
    (dict(pretrain_iterations=0), "--pretrain_iterations"),
    (dict(baseline="nearest"), "--baseline"),
    (dict(dataset_backend="tfds"), "--dataset_backend"),
])
def test_bad_flag_combinations_name_the_flag(change, flag):
    kw = dict(datasource="miniimagenet", baseline="finetune", pretrain_iterations=10,
              metatrain_iterations=0, max_pool=True, num_filters=32, data_dir="d")
    kw.update(change)
    with pytest.raises(ConfigError, match=flag):
        Config(**kw).validate()
    if flag == "--pretrain_iterations":  # evaluating needs no pretraining length
        Config(**{**kw, "train": False}).validate()


def test_cli_refuses_a_bad_combination_with_the_flag_named(tmp_path):
    out = _cli(["--datasource=miniimagenet", "--baseline=nearest_neighbor", "--data_dir=x",
                "--max_pool=True", "--pretrain_iterations=10", "--meta_sgd=True"])
    assert out.returncode == 2 and "--meta_sgd" in out.stderr, out.stderr
