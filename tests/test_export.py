"""Tests of the SavedModel export (tf_maml.export).

The exported ``adapt_and_predict`` is checked against the Python path (``learner.adapt``
then ``learner.predict``) in a fresh interpreter that imports only tensorflow and numpy.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import refuse_files_below

from tf_maml import adapt as adapt_lib
from tf_maml import losses, models, options
from tf_maml.api import MetaLearner
from tf_maml.export import KERAS_FILE, check_export_dir, export, load_metadata
from tf_maml.rundir import RunDirError
from tf_maml.tasks import batch_rng
from tf_maml.tasks.sinusoid import SinusoidTasks

TOL = {"rtol": 1e-5, "atol": 1e-5}
WAYS, SHOTS, QUERY = 5, 2, 3


def image_tasks(meta_batch: int, rng: np.random.Generator):
    """Random 5-way 28x28x1 tasks: support [T, N*K, ...] and query [T, N*Q, ...]."""
    support_x = rng.random((meta_batch, WAYS * SHOTS, 28, 28, 1), dtype=np.float32)
    query_x = rng.random((meta_batch, WAYS * QUERY, 28, 28, 1), dtype=np.float32)
    support_y = np.tile(np.repeat(np.arange(WAYS, dtype=np.int32), SHOTS), (meta_batch, 1))
    query_y = np.tile(np.repeat(np.arange(WAYS, dtype=np.int32), QUERY), (meta_batch, 1))
    return support_x, support_y, query_x, query_y


def sinusoid_learner(learn_inner_lr: bool = False) -> tuple[MetaLearner, tuple]:
    keras.utils.set_random_seed(1)
    model = models.fc_net((1,), (20, 20), 1, name="sinusoid_mlp")
    learner = MetaLearner(model, losses.mse,
                          inner_lr=options.MetaSGD(0.02) if learn_inner_lr else 0.02)
    tasks = SinusoidTasks(num_support=5, num_query=7)
    for i in range(5):
        learner.train_step(tasks.sample_batch(4, batch_rng(0, i)))
    support_x, support_y, query_x, _ = tasks.sample_batch(1, batch_rng(1, 0))
    return learner, (support_x[0], support_y[0], query_x[0])


def conv_learner(adapt_layers: str = "all") -> tuple[MetaLearner, tuple]:
    keras.utils.set_random_seed(2)
    model = models.conv4((28, 28, 1), WAYS, num_filters=8, norm="batch_norm")
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1, first_order=True,
                          adapt=adapt_layers)
    for i in range(2):
        learner.train_step(image_tasks(2, batch_rng(0, i)))
    support_x, support_y, query_x, _ = image_tasks(1, batch_rng(1, 0))
    return learner, (support_x[0], support_y[0], query_x[0])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (learner, export_dir, one task, recorded num_steps)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, (learner, task), steps in (
        ("sinusoid", sinusoid_learner(), 3),
        ("meta_sgd", sinusoid_learner(learn_inner_lr=True), 2),
        ("conv4", conv_learner(), 2),
        ("anil", conv_learner(adapt_layers="head"), 3),
    ):
        out[name] = (learner, export(learner, str(root / name), num_steps=steps), task, steps)
    return out


def python_path(learner: MetaLearner, task, num_steps: int, inner_lr: float | None = None):
    """Query predictions by the library's own adaptation (the reference)."""
    support_x, support_y, query_x = task
    if inner_lr is None:
        return learner.predict(query_x, learner.adapt(support_x, support_y, num_steps)).numpy()
    if learner.inner_lrs:  # Meta-SGD: the override scales the learned α (see export.py)
        lr = [v.value * (inner_lr / learner.inner_lr) for v in learner.inner_lrs]
    else:
        lr = inner_lr
    weights = [v.value for v in learner.model.trainable_variables]
    fast, _, _ = adapt_lib.adapt(learner.model, weights, tf.constant(support_x),
                                 tf.constant(support_y), learner.loss_fn, lr, num_steps,
                                 mask=learner.mask)
    return learner.predict(query_x, fast).numpy()


# Runs in a fresh interpreter: loads each SavedModel with tensorflow alone and writes the
# predictions of every case; then TensorFlow's saved_model_cli lists the export given second,
# as its console script runs it (``tensorflow.python.tools.saved_model_cli:main``), in the
# same interpreter: one TensorFlow start-up for both. (TensorFlow itself imports keras;
# tf_maml must stay unloaded.)
FRESH_PROCESS = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    import numpy as np
    import tensorflow as tf

    def signature_y_dtype(module):
        spec = module.signatures["adapt_and_predict"].structured_input_signature[1]
        return spec["support_y"].dtype

    cases = json.load(open(sys.argv[1]))
    loaded = {}
    for case in cases:
        if case["export_dir"] not in loaded:
            loaded[case["export_dir"]] = tf.saved_model.load(case["export_dir"])
        module = loaded[case["export_dir"]]
        support_x, support_y, query_x = (np.load(case[k]) for k in
                                         ("support_x", "support_y", "query_x"))
        options = {}
        if "num_steps" in case:
            options["num_steps"] = tf.constant(case["num_steps"], tf.int32)
        if "inner_lr" in case:
            options["inner_lr"] = tf.constant(case["inner_lr"], tf.float32)
        out = module.adapt_and_predict(support_x, support_y, query_x, **options)
        np.save(case["out"], out.numpy())
        if not options:
            np.save(case["out"] + ".theta.npy", module.serving_default(query_x).numpy())
            signature = module.signatures["adapt_and_predict"]
            out = signature(support_x=tf.constant(support_x), query_x=tf.constant(query_x),
                            support_y=tf.constant(support_y, signature_y_dtype(module)))
            np.save(case["out"] + ".signature.npy", out["predictions"].numpy())

    sys.argv = ["saved_model_cli", "show", "--all", "--dir", sys.argv[2]]
    shown = io.StringIO()
    try:  # its failure is its test's, not the predictions'
        from tensorflow.python.tools import saved_model_cli

        with contextlib.redirect_stdout(shown):
            saved_model_cli.main()  # absl's app.run: always ends in SystemExit
        cli_code = "returned without exiting"
    except SystemExit as exit_:
        cli_code = 0 if exit_.code is None else exit_.code
    except Exception:
        cli_code = traceback.format_exc()
    print(json.dumps({
        "tf_maml_loaded": any(m.split(".")[0] == "tf_maml" for m in sys.modules),
        "metadata": {d: {k: v.numpy().tolist() for k, v in m.metadata().items()
                         if k in ("num_steps", "inner_lr")} for d, m in loaded.items()},
        "saved_model_cli": {"exit_code": cli_code, "stdout": shown.getvalue()},
    }))
""")


@pytest.fixture(scope="module")
def fresh_process(exports, tmp_path_factory):
    """FRESH_PROCESS run once on every export's task with 5 sets of options, and
    saved_model_cli on the conv4 export: (its report, {path of a prediction it wrote: the
    Python path's prediction}, the folder of those files)."""
    tmp_path = tmp_path_factory.mktemp("fresh_process")
    cases, expected = [], {}
    for name, (learner, export_dir, task, steps) in exports.items():
        for k, a in zip(("support_x", "support_y", "query_x"), task):
            np.save(tmp_path / f"{name}_{k}.npy", a)
        options_list = [{}, {"num_steps": 0}, {"num_steps": steps + 2},
                        {"inner_lr": 0.5 * learner.inner_lr},
                        {"num_steps": 1, "inner_lr": 2.0 * learner.inner_lr}]
        for i, overrides in enumerate(options_list):
            out = str(tmp_path / f"{name}_{i}_out.npy")
            cases.append(dict(export_dir=export_dir, out=out, **overrides, **{
                k: str(tmp_path / f"{name}_{k}.npy")
                for k in ("support_x", "support_y", "query_x")}))
            expected[out] = python_path(learner, task, overrides.get("num_steps", steps),
                                        overrides.get("inner_lr"))
        expected[str(tmp_path / f"{name}_0_out.npy") + ".theta.npy"] = (
            learner.predict(task[2]).numpy())
        expected[str(tmp_path / f"{name}_0_out.npy") + ".signature.npy"] = (
            expected[str(tmp_path / f"{name}_0_out.npy")])
    manifest = tmp_path / "cases.json"
    manifest.write_text(json.dumps(cases))

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(manifest),
                           exports["conv4"][1]],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), expected, tmp_path


def test_adapt_and_predict_in_fresh_process_matches_python_path(exports, fresh_process):
    report, expected, tmp_path = fresh_process
    assert not report["tf_maml_loaded"]
    for learner, export_dir, _, steps in exports.values():
        assert report["metadata"][export_dir]["num_steps"] == steps
        assert report["metadata"][export_dir]["inner_lr"] == pytest.approx(learner.inner_lr)

    for path, want in expected.items():
        np.testing.assert_allclose(np.load(path), want, **TOL, err_msg=path)
    # The cases differ from each other (an override that were ignored would pass unseen).
    for name in exports:
        outs = [np.load(tmp_path / f"{name}_{i}_out.npy") for i in range(5)]
        for i in range(5):
            for j in range(i + 1, 5):
                assert np.abs(outs[i] - outs[j]).max() > 1e-4, (name, i, j)


def test_num_steps_zero_gives_the_initialisation_predictions(exports):
    learner, export_dir, (support_x, support_y, query_x), _ = exports["conv4"]
    loaded = tf.saved_model.load(export_dir)
    theta = learner.predict(query_x).numpy()
    for zero in (0, tf.constant(0)):
        out = loaded.adapt_and_predict(support_x, support_y, query_x, num_steps=zero)
        np.testing.assert_allclose(out.numpy(), theta, **TOL)
    np.testing.assert_allclose(loaded.serving_default(query_x).numpy(), theta, **TOL)


def test_labels_may_be_int32_or_int64_or_whole_floats(exports):
    _, export_dir, (support_x, support_y, query_x), _ = exports["conv4"]
    loaded = tf.saved_model.load(export_dir)
    want = loaded.adapt_and_predict(support_x, support_y.astype(np.int32), query_x).numpy()
    for dtype in (np.int64, np.float32, np.float64):
        got = loaded.adapt_and_predict(support_x, support_y.astype(dtype), query_x).numpy()
        np.testing.assert_array_equal(got, want)
    assert "not whole numbers" in _error(loaded.adapt_and_predict, support_x,
                                         support_y.astype(np.float32) + 0.5, query_x)
    got = loaded.signatures["adapt_and_predict"](
        support_x=tf.constant(support_x), support_y=tf.constant(support_y, tf.int64),
        query_x=tf.constant(query_x))["predictions"].numpy()
    np.testing.assert_array_equal(got, want)


def test_saved_model_cli_lists_the_signatures(fresh_process):
    """TensorFlow's saved_model_cli (``show --all``, in FRESH_PROCESS) sees the conv4
    export's signatures and their inputs and output."""
    cli = fresh_process[0]["saved_model_cli"]
    assert cli["exit_code"] == 0, (cli["exit_code"], cli["stdout"][-3000:])
    for key in ("serving_default", "adapt_and_predict", "adapt_and_predict_with_options",
                "metadata"):
        assert f"signature_def['{key}']" in cli["stdout"]
    for name in ("support_x", "support_y", "query_x", "num_steps", "inner_lr", "x"):
        assert f"inputs['{name}']" in cli["stdout"]
    assert "outputs['predictions']" in cli["stdout"]


def test_metadata_json_records_the_defaults(exports):
    learner, export_dir, _, steps = exports["meta_sgd"]
    meta = load_metadata(export_dir)
    assert meta["num_steps"] == steps
    assert meta["inner_lr"] == pytest.approx(learner.inner_lr)
    assert meta["meta_sgd"] is True
    assert meta["targets"] == "regression" and meta["num_outputs"] == 1
    assert load_metadata(exports["conv4"][1])["targets"] == "classes"


@pytest.mark.parametrize("name", ["sinusoid", "conv4"])
def test_keras_file_round_trip_gives_identical_predictions(exports, name):
    learner, export_dir, (_, _, query_x), _ = exports[name]
    loaded = keras.models.load_model(os.path.join(export_dir, KERAS_FILE))
    assert [v.shape for v in loaded.weights] == [v.shape for v in learner.model.weights]
    for a, b in zip(loaded.weights, learner.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Inference mode first: a training=True call updates the loaded model's BN moving stats.
    np.testing.assert_array_equal(loaded(query_x, training=False).numpy(),
                                  learner.model(query_x, training=False).numpy())
    np.testing.assert_array_equal(loaded(query_x, training=True).numpy(),
                                  learner.predict(query_x).numpy())


def test_keras_file_round_trip_with_contrib_layer_norm(tmp_path):
    # Keras finds a custom layer of a .keras file by its registered name: without
    # @keras.saving.register_keras_serializable the name is the bare class name and loading
    # the export's model.keras fails.
    assert keras.saving.get_registered_name(models.ContribLayerNorm) == (
        "tf_maml>ContribLayerNorm"), "tf_maml.models.ContribLayerNorm needs "\
        "@keras.saving.register_keras_serializable(package='tf_maml')"
    keras.utils.set_random_seed(3)
    model = models.conv4((28, 28, 1), WAYS, num_filters=4, norm="layer_norm")
    learner = MetaLearner(model, losses.summed_xent(SHOTS))
    export_dir = export(learner, str(tmp_path / "ln"), num_steps=1)
    loaded = keras.models.load_model(os.path.join(export_dir, KERAS_FILE))
    x = image_tasks(1, batch_rng(5, 0))[2][0]
    np.testing.assert_array_equal(loaded(x, training=True).numpy(), learner.predict(x).numpy())


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_bad_inputs_raise_errors_that_say_what_is_wrong(exports):
    _, export_dir, (support_x, support_y, query_x), _ = exports["conv4"]
    loaded = tf.saved_model.load(export_dir)
    run = loaded.adapt_and_predict
    signature = loaded.signatures["adapt_and_predict"]

    assert "support_x has the wrong rank" in _error(run, support_x[0], support_y, query_x)
    assert "support_x has the wrong rank" in _error(
        signature, support_x=tf.constant(support_x[0]), query_x=tf.constant(query_x),
        support_y=tf.constant(support_y, tf.int64))
    assert "query_x has the wrong rank" in _error(run, support_x, support_y, query_x[..., 0])
    assert "support_x has the wrong feature shape" in _error(
        run, support_x[:, :27], support_y, query_x)
    assert "query_x has the wrong feature shape" in _error(
        run, support_x, support_y, np.concatenate([query_x, query_x], axis=-1))
    assert "x has the wrong feature shape" in _error(loaded.serving_default, query_x[:, 1:])
    bad = support_y.copy()
    bad[0] = WAYS
    assert f"class id >= N = {WAYS}" in _error(run, support_x, bad, query_x)
    assert "negative class id" in _error(run, support_x, support_y - 1, query_x)
    assert "support set is empty" in _error(run, support_x[:0], support_y[:0], query_x)
    assert "one target per support_x example" in _error(run, support_x, support_y[:3], query_x)
    assert "support_y has the wrong rank" in _error(run, support_x, support_y[:, None], query_x)
    assert "num_steps must be >= 0" in _error(
        run, support_x, support_y, query_x, num_steps=tf.constant(-1))

    _, export_dir, (support_x, support_y, query_x), _ = exports["sinusoid"]
    loaded = tf.saved_model.load(export_dir)  # keep it: its variables die with it
    run = loaded.adapt_and_predict
    assert "wrong number of target values" in _error(
        run, support_x, np.concatenate([support_y, support_y], axis=1), query_x)
    assert "support_x has the wrong feature shape" in _error(
        run, np.concatenate([support_x, support_x], axis=1), support_y, query_x)


def test_meta_sgd_export_uses_the_learned_step_sizes(exports):
    learner, export_dir, task, steps = exports["meta_sgd"]
    alphas = np.concatenate([v.numpy().ravel() for v in learner.inner_lrs])
    assert np.ptp(alphas) > 0  # meta-trained: no longer all equal to the initial α
    loaded = tf.saved_model.load(export_dir)
    out = loaded.adapt_and_predict(*task).numpy()
    np.testing.assert_allclose(out, python_path(learner, task, steps), **TOL)
    # ... which is not what the initial scalar α would give.
    weights = [v.value for v in learner.model.trainable_variables]
    fast, _, _ = adapt_lib.adapt(learner.model, weights, tf.constant(task[0]),
                                 tf.constant(task[1]), learner.loss_fn, learner.inner_lr,
                                 steps, mask=learner.mask)
    assert np.abs(out - learner.predict(task[2], fast).numpy()).max() > 1e-6


def test_export_rejects_a_loss_it_cannot_classify(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.fc_net((1,), (4,), 1)
    learner = MetaLearner(model, lambda y, p: tf.reduce_mean(tf.abs(y - p)))
    with pytest.raises(ValueError, match="targets="):
        export(learner, str(tmp_path / "x"))
    export_dir = export(learner, str(tmp_path / "y"), num_steps=1, targets="regression")
    assert load_metadata(export_dir)["targets"] == "regression"


@pytest.mark.parametrize("loss, kind", [
    (losses.mean_xent, "classes"),  # MAML++'s --xent=mean: refused after training before
    (losses.summed_xent(2), "classes"),
    ("sparse_categorical_crossentropy", "classes"),
    (losses.mse, "regression"),
    ("mse", "regression"),
    ("mae", "regression"),
    ("huber", "regression"),
])
def test_export_knows_the_targets_of_the_library_s_losses_and_keras_names(tmp_path, loss,
                                                                           kind):
    """Every loss the command line builds (MAML++ trains on the mean cross-entropy) and the
    Keras loss names whose labels are unambiguous export without ``targets=``."""
    keras.utils.set_random_seed(0)
    learner = MetaLearner(models.fc_net((2,), (4,), 3), loss)
    assert load_metadata(export(learner, str(tmp_path / "x"), num_steps=1))["targets"] == kind


def test_a_one_hot_keras_loss_still_asks_for_targets(tmp_path):
    learner = MetaLearner(models.fc_net((2,), (4,), 3), "categorical_crossentropy")
    with pytest.raises(ValueError, match="targets="):
        export(learner, str(tmp_path / "x"))


def test_non_finite_inputs_and_a_negative_step_size_are_refused(exports):
    # A NaN used to come out finite and wrong: the CPU kernel that fuses MatMul + BiasAdd +
    # Relu (grappler's remapper, oneDNN) computes max(x, 0), which is 0 for NaN, so one NaN
    # in support_x gave every query the same finite prediction, where keras gives NaN.
    learner, export_dir, (support_x, support_y, query_x), _ = exports["sinusoid"]
    loaded = tf.saved_model.load(export_dir)
    run = loaded.adapt_and_predict
    nan_x = support_x.copy()
    nan_x[0, 0] = np.nan
    assert "support_x has a NaN or infinite value" in _error(run, nan_x, support_y, query_x)
    inf_y = support_y.copy()
    inf_y[1, 0] = np.inf
    assert "support_y has a NaN or infinite value" in _error(run, support_x, inf_y, query_x)
    nan_query = query_x.copy()
    nan_query[1, 0] = np.nan
    # The reference: keras' own model gives NaN for that query row.
    assert np.isnan(learner.predict(nan_query).numpy()[1]).all()
    assert "query_x has a NaN or infinite value" in _error(run, support_x, support_y, nan_query)
    assert "x has a NaN or infinite value" in _error(loaded.serving_default, nan_query)
    assert "inner_lr must be >= 0" in _error(run, support_x, support_y, query_x, inner_lr=-1.0)
    assert "inner_lr must be finite" in _error(run, support_x, support_y, query_x,
                                               inner_lr=float("inf"))
    # A step size so large that the inner loop overflows (the library's own adaptation gives
    # non-finite fast weights) is reported, not served as the fused Relu's finite output.
    huge = 1e30
    weights = [v.value for v in learner.model.trainable_variables]
    fast, _, _ = adapt_lib.adapt(learner.model, weights, tf.constant(support_x),
                                 tf.constant(support_y), learner.loss_fn, huge, 3,
                                 mask=learner.mask)
    assert not all(np.isfinite(w.numpy()).all() for w in fast)
    assert "the inner loop diverged" in _error(run, support_x, support_y, query_x,
                                               inner_lr=huge)
    # Finite inputs still give the library's predictions.
    np.testing.assert_allclose(run(support_x, support_y, query_x).numpy(),
                               python_path(learner, (support_x, support_y, query_x), 3), **TOL)

    _, export_dir, (support_x, support_y, query_x), _ = exports["conv4"]
    loaded = tf.saved_model.load(export_dir)  # keep it: its variables die with it
    nan_ids = support_y.astype(np.float32)
    nan_ids[0] = np.nan
    assert "support_y has a NaN or infinite value" in _error(
        loaded.adapt_and_predict, support_x, nan_ids, query_x)


# ---------------------------------------------------------------- the export directory
def tiny_learner() -> MetaLearner:
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    return MetaLearner(model, losses.summed_xent(1), inner_lr=0.1)


def tree(root) -> dict[str, bytes]:
    """{relative path: contents} of every file below ``root``."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_export_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "model"
    path.write_text("not an export")
    with pytest.raises(RunDirError) as info:
        tiny_learner().export(str(path), num_steps=1)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "is a file" in message
    assert "new directory" in message  # the fix
    assert path.read_text() == "not an export"
    assert sorted(os.listdir(tmp_path)) == ["model"]  # nothing else written


@pytest.mark.parametrize("where", ["empty", "file", "missing"])
def test_metadata_of_a_path_that_is_no_export_says_so(tmp_path, where):
    # Was "No such file or directory: '<dir>/assets.extra/maml_metadata.json'" (or "Not a
    # directory"), as if one file of an export were lost.
    path = tmp_path / where
    path.mkdir() if where == "empty" else path.write_text("") if where == "file" else None
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(path))} is not a tf_maml "
                       r"export \(no assets\.extra/maml_metadata\.json in it\): give the "
                       r"directory that MetaLearner\.export or tf-maml --export_dir wrote$"):
        load_metadata(str(path))


@pytest.mark.parametrize("content", ['{"default_num_steps": 5, "inpu', "[5]"],
                         ids=["cut-short", "a-list"])
def test_metadata_of_an_export_cut_short_or_edited_names_the_file(tmp_path, content):
    # Was JSON's "Expecting ',' delimiter: line 1 column 32 (char 31)" without the file (and
    # a list was returned as if it were the record).
    path = tmp_path / "model" / "assets.extra" / "maml_metadata.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is not the export's record "
                       r"of its defaults \(cut short, garbled or edited: .*\): export the model "
                       rf"again into {re.escape(str(tmp_path / 'model'))}$"):
        load_metadata(str(tmp_path / "model"))


@pytest.mark.parametrize("below", ["model", "model/deeper"])
def test_export_dir_below_a_file_is_refused_before_anything_is_computed(tmp_path, below):
    # Passed the check the command line makes before training, then failed after it.
    (tmp_path / "afile").write_text("mine")
    path = tmp_path / "afile" / below
    with pytest.raises(RunDirError, match=rf"^`export_dir` {re.escape(str(path))} cannot be "
                       rf"made: {re.escape(str(tmp_path / 'afile'))} is a file, not a "
                       r"directory; give the path of a new directory elsewhere$"):
        check_export_dir(str(path))
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("below", ["", "model"], ids=["the-link", "below-it"])
def test_export_dir_linked_to_nothing_is_refused_naming_the_link(tmp_path, below):
    # A link to a disk not mounted: the export made the link's target (its folders too), so
    # the SavedModel went to the machine's own disk, under the mount point.
    link, target = tmp_path / "linked", tmp_path / "unmounted" / "exports"
    link.symlink_to(target)
    path = os.path.join(str(link), below) if below else str(link)
    with pytest.raises(RunDirError, match=rf"^`export_dir` {re.escape(path)} cannot be "
                       rf"written: {re.escape(str(link))} is a link to "
                       rf"{re.escape(str(target))}, which does not exist \(a disk not "
                       rf"mounted\?\); mount or create {re.escape(str(target))}, or give "
                       r"another directory$"):
        tiny_learner().export(path, num_steps=1)
    assert not os.path.lexists(tmp_path / "unmounted")
    assert sorted(os.listdir(tmp_path)) == ["linked"]


def test_an_export_dir_name_too_long_to_write_beside_is_refused_before_anything(tmp_path):
    # A name of 250 bytes is one the file system takes, but the export is written beside it
    # under a longer temporary name first: "File name too long" came after the whole export
    # was computed (after the training, with tf-maml --export_dir).
    path = tmp_path / ("b" * 250)
    with pytest.raises(RunDirError, match=rf"^`export_dir` {re.escape(str(path))}: its name "
                       r"is too long for the export, which is written beside it as \.b{20}"
                       r"\.\.\.\.tmp first \(\d+ bytes while it is written, over the 255 a "
                       r"file name may have\): give a shorter name$"):
        check_export_dir(str(path))
    assert os.listdir(tmp_path) == []
    check_export_dir(str(tmp_path / ("b" * 200)))  # room for the temporary name


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only", "permission"])
def test_an_export_dir_in_a_folder_that_refuses_files_is_refused_up_front(tmp_path,
                                                                         monkeypatch, code):
    # The command line checks export_dir before training: a read-only folder passed, and
    # the export failed after the training. (As root, chmod cannot show it: a new file
    # there is made to fail as a read-only mount or a permission would make it.)
    folder = tmp_path / "ro"
    folder.mkdir()
    refuse_files_below(monkeypatch, folder, code)
    with pytest.raises(RunDirError) as info:
        check_export_dir(str(folder / "model" / "v1"))
    assert str(info.value) == (
        f"could not write the SavedModel export v1 in {folder}: {os.strerror(code)}. "
        f"Nothing was lost: nothing was written; make {folder} writable, or use another "
        "`export_dir`, then run the same command again.")
    assert os.listdir(folder) == []


def test_export_dir_with_other_files_is_refused_and_an_export_is_replaced(tmp_path):
    learner = tiny_learner()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="holds files that are not an export's"):
        learner.export(str(other), num_steps=1)
    assert tree(other) == {"notes.txt": b"keep me"}
    # An earlier export is replaced whole by a new one (here: another default num_steps).
    export_dir = str(tmp_path / "model")
    learner.export(export_dir, num_steps=1)
    learner.export(export_dir, num_steps=4)
    assert load_metadata(export_dir)["num_steps"] == 4
    assert int(tf.saved_model.load(export_dir).metadata()["num_steps"]) == 4
    assert sorted(os.listdir(tmp_path)) == ["mine", "model"]  # no temporary left


def _fail_saved_model(error):
    def save(obj, export_dir, signatures=None, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise error
    return save


def _fail_keras_save(error):
    def save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"partial")
        raise error
    return save


@pytest.mark.parametrize("where, error, fix", [
    ("keras", OSError(errno.ENOSPC, "No space left on device"), "free some space"),
    ("saved_model", OSError(errno.EROFS, "Read-only file system"), "writable"),
    ("saved_model", PermissionError(errno.EACCES, "Permission denied"), "writable"),
    ("saved_model", tf.errors.ResourceExhaustedError(
        None, None, "model/variables/variables.data: No space left on device"),
     "free some space"),
], ids=["full-disk", "read-only", "permission", "tf-full-disk"])
def test_a_failed_write_keeps_the_earlier_export_and_no_temporary(tmp_path, monkeypatch, where,
                                                                  error, fix):
    learner = tiny_learner()
    export_dir = str(tmp_path / "model")
    learner.export(export_dir, num_steps=1)
    before = tree(export_dir)
    keras.utils.set_random_seed(5)
    for v in learner.model.trainable_variables:  # other weights: a new export would differ
        v.assign(v + 1.0)
    if where == "keras":
        monkeypatch.setattr(keras.Model, "save", _fail_keras_save(error))
    else:
        monkeypatch.setattr(tf.saved_model, "save", _fail_saved_model(error))
    with pytest.raises(RunDirError) as info:
        learner.export(export_dir, num_steps=3)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and fix in message
    assert "earlier export" in message  # what was kept
    assert tree(export_dir) == before
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary directory or file left


def _left_by_a_killed_export(folder, stale: bool) -> None:
    """A hidden export folder, with a file deeper in it, as a process killed (SIGKILL)
    while writing it left it; ``stale``: last written an hour ago."""
    (folder / "variables").mkdir(parents=True)
    (folder / "variables" / "variables.index").write_bytes(b"partial")
    if stale:
        an_hour_ago = time.time() - 3600
        for path in (folder / "variables" / "variables.index", folder / "variables", folder):
            os.utime(path, (an_hour_ago, an_hour_ago))


def test_an_export_removes_the_temporary_folders_killed_exports_left(tmp_path):
    # A SIGKILL mid-export left .model.<random>.tmp for good: nothing could tell it from
    # another export in progress. It is a temporary of tf_maml.atomic's now, of a process id.
    from tf_maml import export as export_lib

    other = os.getpid() + 1
    _left_by_a_killed_export(tmp_path / f".model.{other}.tmp", stale=True)
    _left_by_a_killed_export(tmp_path / f".model.{other + 1}.tmp", stale=False)  # in progress
    _left_by_a_killed_export(tmp_path / f".model.{other}.old", stale=True)  # a user's export
    _left_by_a_killed_export(tmp_path / f".other.{other}.tmp", stale=True)  # another target's

    def write(directory):
        with open(os.path.join(directory, "saved_model.pb"), "wb") as f:
            f.write(b"new")

    export_lib._write_whole(str(tmp_path / "model"), write)
    assert sorted(os.listdir(tmp_path)) == [
        f".model.{other}.old", f".model.{other + 1}.tmp", f".other.{other}.tmp", "model"]
    assert tree(tmp_path / "model") == {"saved_model.pb": b"new"}


def test_a_token_id_model_takes_numpy_int64_ids_as_int32_ones(tmp_path):
    # An Embedding model on int32 ids had traces for int32 examples only: numpy's int64 ids
    # (np.random's integers, np.array of Python ints) matched no traced function, a raw
    # "Could not find matching concrete function" listing eight signatures.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(12, 4),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
    learner = MetaLearner(model, losses.summed_xent(2), inner_lr=0.5)
    rng = np.random.default_rng(0)
    support_x, query_x = rng.integers(0, 12, (6, 5)), rng.integers(0, 12, (4, 5))
    support_y = np.repeat(np.arange(3), 2)
    export_dir = learner.export(str(tmp_path / "tokens"), num_steps=1, targets="classes")
    fast = learner.adapt(support_x.astype(np.int32), support_y, num_steps=1)
    want = learner.predict(query_x.astype(np.int32), fast).numpy()
    loaded = tf.saved_model.load(export_dir)
    for dtype in (np.int32, np.int64):
        got = loaded.adapt_and_predict(support_x.astype(dtype), support_y,
                                       query_x.astype(dtype)).numpy()
        np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(loaded.serving_default(query_x).numpy(),
                               learner.predict(query_x.astype(np.int32)).numpy(), **TOL)


class _Net(keras.Model):
    """A subclass whose name begins with "_": Keras names its models "__net"."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.features, self.classifier = keras.layers.Dense(4), keras.layers.Dense(3)

    def call(self, x):
        return self.classifier(keras.ops.tanh(self.features(x)))


def test_a_model_named_with_a_leading_underscore_is_refused_naming_the_fix(tmp_path):
    # TensorFlow's graphs open no root scope "__net": saving failed deep in TensorFlow
    # ("not a valid root scope name"), and ANIL's head, read from the traced call, too.
    model = _Net()
    model(np.zeros((1, 2), np.float32))
    assert model.name == "__net"
    learner = MetaLearner(model, losses.summed_xent(2), adapt="head")
    assert learner.mask == [False, False, True, True]  # the classifier's kernel and bias
    with pytest.raises(ValueError, match=r"cannot save model '__net'.*begins with '_'.*"
                                         r"name='net'"):
        learner.export(str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()
    named = _Net(name="net")
    named(np.zeros((1, 2), np.float32))
    loaded = tf.saved_model.load(MetaLearner(named, losses.summed_xent(2)).export(
        str(tmp_path / "named"), targets="classes"))
    assert loaded.serving_default(np.zeros((2, 2), np.float32)).shape == (2, 3)
