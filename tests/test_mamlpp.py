"""MAML++'s options (Antoniou et al., ICLR 2019) against independent truth: LSLR and
per-step batch norm meta-gradients against numpy and central finite differences, MSL
against plain MAML and hand-computed schedule values, derivative-order annealing against
first- and second-order MAML, the cosine meta learning rate against its closed form; then
each option from the Python API (export, resume) and from the command line."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_CONV_SHAPE, five_way_batch, small_conv4
from test_meta_gradients import (
    ALPHA,
    HIDDEN,
    as_batch,
    finite_difference,
    flat,
    make_learner,
    make_tasks,
    np_loss_and_grad,
    unpack,
)

from tf_maml import losses, mamlpp, options
from tf_maml.api import MetaLearner
from tf_maml.config import Config, ConfigError
from tf_maml.mapping import ExecutionPlan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_VARS = 4  # w1, b1, w2, b2 of test_meta_gradients' tanh MLP


@pytest.fixture
def problem():
    rng = np.random.default_rng(7)
    theta = rng.normal(0, 0.7, size=3 * HIDDEN + 1)
    return theta, make_tasks(rng)


def _sizes():
    return [a.size for a in unpack(np.zeros(3 * HIDDEN + 1))]


def np_lslr_query_losses(theta, rates, tasks, steps):
    """Mean query loss after each inner step with a rate per (variable, step): rates[v, s].
    Returns [steps] (the numpy truth for LSLR and MSL)."""
    sizes = _sizes()
    out = np.zeros(steps)
    for sx, sy, qx, qy in tasks:
        fast = theta
        for s in range(steps):
            alpha = np.repeat(rates[:, s], sizes)
            fast = fast - alpha * np_loss_and_grad(fast, sx, sy)[1]
            out[s] += np_loss_and_grad(fast, qx, qy)[0] / len(tasks)
    return out


# ---------------------------------------------------------------- LSLR
def test_lslr_meta_gradient_matches_finite_differences_including_the_rates(problem):
    theta, tasks = problem
    steps = 2
    learner = make_learner(theta, inner_steps=steps,
                           inner_lr=options.LSLR(ALPHA)).use_plan(ExecutionPlan("loop"))
    assert [tuple(v.shape) for v in learner.inner_lrs] == [(steps,)] * NUM_VARS
    np.testing.assert_array_equal(np.stack([v.numpy() for v in learner.inner_lrs]), ALPHA)
    rates = np.random.default_rng(1).uniform(0.1, 0.5, size=(NUM_VARS, steps))
    for v, r in zip(learner.inner_lrs, rates):
        v.assign(r)
    grads, metrics = learner.meta_gradients(as_batch(tasks))
    n = theta.size

    def objective(params):
        return np_lslr_query_losses(params[:n], params[n:].reshape(NUM_VARS, steps), tasks,
                                    steps)[-1]

    expected = finite_difference(objective, np.concatenate([theta, rates.ravel()]))
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-5, atol=1e-8)
    assert np.max(np.abs(expected[n:])) > 1e-3  # the rates' gradients are not trivial
    np.testing.assert_allclose(float(metrics["post_loss"]), objective(
        np.concatenate([theta, rates.ravel()])), rtol=1e-10)


def test_lslr_steps_beyond_the_meta_trained_ones_reuse_the_last_rate(problem):
    theta, tasks = problem
    learner = make_learner(theta, inner_steps=2, inner_lr=options.LSLR(ALPHA))
    rates = np.array([[0.1, 0.2], [0.3, 0.05], [0.15, 0.25], [0.4, 0.35]])
    for v, r in zip(learner.inner_lrs, rates):
        v.assign(r)
    sx, sy, qx, qy = tasks[0]
    fast = flat(learner.adapt(sx, sy, num_steps=4))
    expected, sizes = theta, _sizes()
    for s in range(4):
        alpha = np.repeat(rates[:, min(s, 1)], sizes)
        expected = expected - alpha * np_loss_and_grad(expected, sx, sy)[1]
    np.testing.assert_allclose(fast, expected, rtol=1e-10)


# ---------------------------------------------------------------- MSL
def test_msl_with_all_weight_on_the_last_step_is_plain_maml_exactly(problem):
    theta, tasks = problem
    plain = make_learner(theta, inner_steps=3)
    msl = make_learner(theta, inner_steps=3, objective=options.MultiStepLoss(100))
    want, want_metrics = plain.meta_gradients(as_batch(tasks))
    got, got_metrics = msl.meta_gradients(as_batch(tasks), msl_weights=[0.0, 0.0, 1.0])
    assert float(got_metrics["msl_loss"]) == float(want_metrics["post_loss"])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())


def test_msl_meta_gradient_matches_finite_differences(problem):
    theta, tasks = problem
    weights = np.array([0.2, 0.3, 0.5])
    learner = make_learner(theta, inner_steps=3, objective=options.MultiStepLoss(100))
    grads, metrics = learner.meta_gradients(as_batch(tasks), msl_weights=weights)
    rates = np.full((NUM_VARS, 3), ALPHA)

    def objective(t):
        return float(weights @ np_lslr_query_losses(t, rates, tasks, 3))

    np.testing.assert_allclose(flat(grads), finite_difference(objective, theta), rtol=1e-5,
                               atol=1e-8)
    np.testing.assert_allclose(float(metrics["msl_loss"]), objective(theta), rtol=1e-10)


def test_msl_schedule_hand_computed():
    # S = 5 steps annealed over N = 1000 iterations; floor 0.03 / 5 = 0.006.
    def weights(iteration, steps=5, n=1000):
        return mamlpp.msl_step_weights(iteration, steps, n, tf.float64).numpy()

    np.testing.assert_allclose(weights(0), [0.2] * 5, rtol=1e-12)
    # p = 0.5: 0.2 - 0.5/5 = 0.1 each; last 0.2 + 0.5 * 4/5 = 0.6.
    np.testing.assert_allclose(weights(500), [0.1, 0.1, 0.1, 0.1, 0.6], rtol=1e-12)
    # p = 0.999: the non-final weights sit on their floor 0.006, the last on 1 - 4*0.006.
    np.testing.assert_allclose(weights(999), [0.006] * 4 + [0.976], rtol=1e-12)
    # S = 3, p = 0.5: 1/3 - 1/6 = 1/6 each, last 1/3 + 0.5 * 2/3 = 2/3.
    np.testing.assert_allclose(weights(5, 3, 10), [1 / 6, 1 / 6, 2 / 3], rtol=1e-12)
    # One step: all weight on it, always.
    np.testing.assert_allclose(weights(3, 1, 10), [1.0], rtol=1e-12)


def test_msl_switches_to_the_last_step_loss_after_its_iterations(problem):
    theta, tasks = problem
    learner = make_learner(theta, inner_steps=2, objective=options.MultiStepLoss(3))
    assert learner._phase() == (False, True)
    learner.optimizer.iterations.assign(3)
    assert learner._phase() == (False, False)


# ---------------------------------------------------------------- per-step batch norm
def _bn_model(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((3,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.Dense(2)])
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.8, size=w.shape) for w in model.get_weights()])
    return model


def _bn_batch(seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(2, 4, 3)), rng.integers(0, 2, size=(2, 4)).astype("int32"),
            rng.normal(size=(2, 4, 3)), rng.integers(0, 2, size=(2, 4)).astype("int32"))


@pytest.mark.usefixtures("float64")
def test_per_step_bn_and_lslr_meta_gradients_match_finite_differences():
    """Per-step γ and β (Keras' own BatchNormalization, scaled) and LSLR rates, second
    order, 2 inner steps: the gradient of every meta-variable against central differences
    of the post-update query loss."""
    model = _bn_model(2)
    batch = _bn_batch(5)
    learner = MetaLearner(model, losses.summed_xent(2), inner_lr=options.LSLR(0.3), inner_steps=2,
                          adapt=options.PerStepBatchNorm()).use_plan(ExecutionPlan("loop"))
    assert [tuple(v.shape) for v in learner.bn_steps] == [(1, 5), (1, 5)]  # γ, β of step 1
    rng = np.random.default_rng(9)
    for v in learner.bn_steps + learner.inner_lrs:
        v.assign(v.numpy() + rng.normal(0, 0.1, size=v.shape))
    variables = learner.meta_variables
    grads, _ = learner.meta_gradients(batch)
    loss = tf.function(lambda: learner.meta_gradients(batch)[1]["post_loss"])
    start = [v.numpy().copy() for v in variables]

    def objective(flat_params):
        offset = 0
        for v, t in zip(variables, start):
            v.assign(flat_params[offset:offset + t.size].reshape(t.shape))
            offset += t.size
        return float(loss())

    expected = finite_difference(objective, np.concatenate([t.ravel() for t in start]))
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-5, atol=1e-8)
    # Step 1's γ and β get a gradient (units that ReLU silences get none); the rates of the
    # bias before batch norm get none at all: batch norm cancels that bias.
    for g in grads[-2:]:
        assert np.max(np.abs(g.numpy())) > 1e-3
    n = len(model.trainable_variables)
    assert np.max(np.abs(grads[n + 1].numpy())) < 1e-12 < np.min(np.abs(grads[n].numpy()))


@pytest.mark.usefixtures("float64")
def test_per_step_bn_with_equal_steps_is_shared_batch_norm_and_steps_differ_after():
    model = _bn_model(3)
    batch = _bn_batch(4)
    plain = MetaLearner(model, losses.summed_xent(2), inner_lr=0.3, inner_steps=2)
    per_step = MetaLearner(model, losses.summed_xent(2), inner_lr=0.3, inner_steps=2,
                           adapt=options.PerStepBatchNorm())
    want, want_metrics = plain.meta_gradients(batch)
    got, got_metrics = per_step.meta_gradients(batch)
    np.testing.assert_allclose(float(got_metrics["post_loss"]),
                               float(want_metrics["post_loss"]), rtol=1e-12)
    # Shared batch norm's gradient is the sum of its per-step gradients.
    n = len(model.trainable_variables)
    for k, i in enumerate(per_step.bn_indices):
        np.testing.assert_allclose(got[i].numpy() + got[n + k].numpy()[0], want[i].numpy(),
                                   rtol=1e-9, atol=1e-12)
    per_step.bn_steps[1].assign(per_step.bn_steps[1] + 0.5)  # β of step 1
    _, moved = per_step.meta_gradients(batch)
    assert abs(float(moved["post_loss"]) - float(want_metrics["post_loss"])) > 1e-4


def test_per_step_bn_refuses_a_model_without_batch_norm_and_adapted_norms(problem):
    theta, _ = problem
    with pytest.raises(ValueError, match="BatchNormalization"):
        make_learner(theta, inner_steps=2, adapt=options.PerStepBatchNorm())
    model = _bn_model(0)
    with pytest.raises(ValueError, match="adapt must be 'all' or 'head'"):
        MetaLearner(model, losses.summed_xent(2), inner_steps=2,
                    adapt=options.PerStepBatchNorm("all+norm"))


@pytest.mark.usefixtures("float64")
def test_mappings_agree_with_lslr_and_per_step_bn():
    """The batched path lays out per-step batch norm per task: the same meta-gradients as
    the per-task loop."""
    keras.utils.set_random_seed(4)
    model = small_conv4()
    batch = five_way_batch(np.random.default_rng(2), SMALL_CONV_SHAPE)
    results = {}
    for mode in ("loop", "batched", "accumulate"):
        learner = MetaLearner(model, losses.summed_xent(1), inner_lr=options.LSLR(0.4),
                              inner_steps=2, adapt=options.PerStepBatchNorm())
        learner.use_plan(ExecutionPlan(mode))
        for k, v in enumerate(learner.bn_steps):
            v.assign(v + 0.05 * (k + 1))
        assert mode in learner.task_mapping(batch)
        grads, metrics = learner.meta_gradients(batch, msl_weights=[0.3, 0.7])
        results[mode] = (flat(grads), float(metrics["msl_loss"]))
    for mode in ("batched", "accumulate"):
        np.testing.assert_allclose(results[mode][0], results["loop"][0], rtol=1e-8,
                                   atol=1e-12)
        np.testing.assert_allclose(results[mode][1], results["loop"][1], rtol=1e-12)


# ---------------------------------------------------------------- derivative-order annealing
def test_derivative_order_annealing_is_first_order_before_its_switch_then_second(problem):
    theta, tasks = problem
    batch = as_batch(tasks)
    first, _ = make_learner(theta, first_order=True, inner_steps=2).meta_gradients(batch)
    second, _ = make_learner(theta, inner_steps=2).meta_gradients(batch)
    assert np.max(np.abs(flat(first) - flat(second))) > 1e-3
    # Plain SGD with step 1: each train step moves θ by minus its meta-gradient.
    learner = make_learner(theta, inner_steps=2, first_order=options.FirstOrderUntil(2),
                           meta_optimizer=keras.optimizers.SGD(1.0))

    def step_change():
        before = flat(learner.model.trainable_variables)
        learner.train_step(batch)
        after = flat(learner.model.trainable_variables)
        for v, t in zip(learner.model.trainable_variables, unpack(theta)):
            v.assign(t)  # back to θ for the next comparison
        return before - after

    for _ in range(2):  # iterations 0 and 1: first order
        np.testing.assert_allclose(step_change(), flat(first), rtol=1e-10, atol=1e-14)
    for _ in range(2):  # iterations 2 and 3: second order
        np.testing.assert_allclose(step_change(), flat(second), rtol=1e-10, atol=1e-14)
    # Two compiled steps, each traced once: no retracing at every iteration.
    assert sorted(learner._train_fns) == [("maml", False, False), ("maml", True, False)]
    assert all(fn.experimental_get_tracing_count() == 1 for fn in learner._train_fns.values())


# ---------------------------------------------------------------- cosine meta learning rate
def test_cosine_meta_lr_closed_form():
    theta = np.zeros(3 * HIDDEN + 1)
    learner = make_learner(theta, meta_optimizer=options.adam(options.cosine(1e-3, 1e-5, 100)))
    # 1e-5 + (1e-3 - 1e-5) * (1 + cos(pi t / 100)) / 2, by hand:
    for t, want in ((0, 1e-3), (25, 8.5501786e-4), (50, 5.05e-4), (75, 1.5498214e-4),
                    (100, 1e-5), (160, 1e-5)):
        learner.optimizer.iterations.assign(t)
        assert float(learner.optimizer.learning_rate) == pytest.approx(want, rel=1e-6), t
    assert 1e-5 + 9.9e-4 * (1 + math.cos(math.pi / 4)) / 2 == pytest.approx(8.5501786e-4)


# ---------------------------------------------------------------- the Python API end to end
def _sinusoid_learner(**kwargs):
    from tf_maml import models

    keras.utils.set_random_seed(0)
    model = models.fc_net((1,), (16, 16), 1, norm="batch_norm")
    return MetaLearner(model, losses.mse, inner_lr=options.LSLR(ALPHA), inner_steps=2,
                       first_order=options.FirstOrderUntil(2), adapt=options.PerStepBatchNorm(),
                       objective=options.MultiStepLoss(3),
                       meta_optimizer=options.adam(options.cosine(1e-3, 1e-5, 6)), **kwargs)


def test_every_option_from_the_api_trains_resumes_and_exports(tmp_path):
    import tf_maml

    tasks = tf_maml.SinusoidTasks(num_support=5, num_query=5)
    learner = _sinusoid_learner()
    learner.fit(tasks, iterations=4, meta_batch_size=2, run_dir=str(tmp_path / "run"),
                log_interval=None)
    learned = {name: [v.numpy() for v in vs] for name, vs in learner.extra_variables.items()}
    assert set(learned) == {"inner_lrs", "bn_steps"}
    assert not np.allclose(learned["inner_lrs"][0], 0.01)  # the rates were meta-learned
    assert len(learner._train_fns) == 3  # first order + MSL, second order + MSL, plain
    # Resume: a fresh learner restores the rates and per-step batch norm.
    resumed = _sinusoid_learner()
    assert resumed.fit(tasks, iterations=4, meta_batch_size=2, run_dir=str(tmp_path / "run"),
                       log_interval=None, log=lambda line: None) == 4
    for name, values in learned.items():
        for v, want in zip(resumed.extra_variables[name], values):
            np.testing.assert_array_equal(v.numpy(), want)
    assert int(resumed.optimizer.iterations) == 4
    # Export: the SavedModel adapts as the learner does, per-step values included.
    sx, sy, qx, _ = tasks.sample_batch(1, np.random.default_rng(3))
    loaded = tf.saved_model.load(learner.export(str(tmp_path / "export"), num_steps=2))
    for steps in (0, 2, 4):
        want = learner.predict(qx[0], learner.adapt(sx[0], sy[0], num_steps=steps))
        got = loaded.adapt_and_predict(tf.constant(sx[0], tf.float32),
                                       tf.constant(sy[0], tf.float32),
                                       tf.constant(qx[0], tf.float32), num_steps=steps)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_mamlpp_options_refused_where_they_do_not_apply(problem):
    theta, _ = problem
    with pytest.raises(ValueError, match="Reptile has none"):
        make_learner(theta, inner_lr=options.LSLR(ALPHA), objective=options.Reptile())
    with pytest.raises(ValueError, match="first_order must be True, False or FirstOrderUntil"):
        make_learner(theta, first_order=5)
    with pytest.raises(ValueError, match="MultiStepLoss needs iterations >= 1"):
        options.MultiStepLoss(-1)
    with pytest.raises(ConfigError, match="--per_step_bn"):
        Config(per_step_bn=True, norm="None").validate()
    with pytest.raises(ConfigError, match="--first_order_iterations"):
        Config(first_order_iterations=10, stop_grad=True).validate()
    with pytest.raises(ConfigError, match="--lslr"):
        Config(lslr=True, algorithm="reptile").validate()
    with pytest.raises(ConfigError, match="--min_meta_lr"):
        Config(cosine_meta_lr=True, min_meta_lr=0.1).validate()
    with pytest.raises(ConfigError, match="--min_meta_lr: .* add --cosine_meta_lr"):
        Config(min_meta_lr=1e-4).validate()  # would be ignored: no cosine to end at it


# ---------------------------------------------------------------- the command line
def test_every_option_from_flags_gets_its_own_run_directory(tmp_path):
    assert Config().exp_string() == "cls_5.mbs_25.ubs_5.numstep1.updatelr0.001batchnorm"
    for flag, suffix in (({"lslr": True}, ".lslr"), ({"per_step_bn": True}, ".perstepbn"),
                         ({"msl_iterations": 500}, ".msl500"),
                         ({"first_order_iterations": 50}, ".firstorder50"),
                         ({"cosine_meta_lr": True}, ".cosine")):
        assert Config(**flag).exp_string() == Config().exp_string() + suffix
    out = subprocess.run(
        [sys.executable, "-m", "tf_maml.main", "--datasource=sinusoid", f"--logdir={tmp_path}",
         "--metatrain_iterations=4", "--meta_batch_size=2", "--num_updates=2",
         "--num_test_tasks=4", "--test_num_updates=2", "--update_lr=0.01", "--lslr",
         "--per_step_bn", "--msl_iterations=2", "--first_order_iterations=1",
         "--cosine_meta_lr", f"--export_dir={tmp_path / 'export'}"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / ("cls_5.mbs_2.ubs_5.numstep2.updatelr0.01batchnorm"
                          ".lslr.perstepbn.msl2.firstorder1.cosine")
    assert (run_dir / "test_ubs5_stepsize0.01.csv").exists()
    names = [name for name, _ in tf.train.list_variables(str(run_dir / "model-4"))]
    assert any(name.startswith("inner_lrs/") for name in names)
    assert any(name.startswith("bn_steps/") for name in names)
    assert (tmp_path / "export" / "saved_model.pb").exists()


# ---------------------------------------------------------------- the reference code's settings
# HowToTrainYourMAMLPytorch (MAML++'s code): the learner's initial inner rate is
# `args.task_learning_rate` (parser default 0.1; the configs' `init_inner_loop_learning_rate`
# is never read) on `F.cross_entropy`, the mean over the support set; its MiniImageNet
# configurations sample `num_target_samples` = 15 query images per class at training,
# validation and test alike.
MAMLPP_FLAGFILES = {name: os.path.join(REPO, "flags", f"{name}_mamlpp.flags") for name in (
    "miniimagenet_5way_1shot", "miniimagenet_5way_5shot", "omniglot_20way_1shot",
    "omniglot_20way_5shot")}
REFERENCE_INITIAL_INNER_LR = 0.1


@pytest.mark.parametrize("name", ["miniimagenet_5way_1shot", "omniglot_20way_1shot"])
def test_mamlpp_flagfiles_first_inner_step_is_the_references_mean_loss_step(name):
    """The first inner step of a MAML++ flagfile's learner is θ − 0.1 ∇θ mean CE(support),
    computed here with a GradientTape on the model itself (batch norm not adapted)."""
    from tf_maml import experiment, reproduce

    config = reproduce.config_for(MAMLPP_FLAGFILES[name], {"data_dir": "unused"})
    learner = experiment.build_learner(config)
    n, k = config.num_classes, config.update_batch_size
    rng = np.random.default_rng(3)
    support_x = rng.uniform(size=(n * k,) + experiment.input_shape(config)).astype("float32")
    support_y = np.repeat(np.arange(n, dtype="int32"), k)
    model = learner.model
    norm_ids = {id(v) for layer in model._flatten_layers()
                if "BatchNormalization" in type(layer).__name__
                for v in layer.trainable_variables}
    with tf.GradientTape() as tape:
        logits = model(support_x, training=True)
        mean_ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=support_y, logits=logits))
    grads = tape.gradient(mean_ce, model.trainable_variables)
    fast = learner.adapt(support_x, support_y, num_steps=1)
    assert norm_ids and len(fast) == len(grads)
    for v, g, f in zip(model.trainable_variables, grads, fast):
        expected = v.numpy() if id(v) in norm_ids else (
            v.numpy() - REFERENCE_INITIAL_INNER_LR * g.numpy())
        np.testing.assert_allclose(f.numpy(), expected, rtol=1e-4, atol=1e-6,
                                   err_msg=v.path)


@pytest.fixture(scope="module")
def mini_20_per_class(tmp_path_factory):
    """Prepared MiniImageNet of 5 classes per split, 20 images each (5 support + 15 query)."""
    from PIL import Image

    from tf_maml.data.miniimagenet import prepare_miniimagenet

    root = tmp_path_factory.mktemp("mini20")
    rng = np.random.default_rng(1)
    (root / "images").mkdir()
    for s, split in enumerate(("train", "val", "test")):
        rows = ["filename,label"]
        for c in range(5):
            label = f"n0{s}{c:06d}"
            for i in range(20):
                name = f"{label}{i:08d}.jpg"
                Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)).save(
                    root / "images" / name)
                rows.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    prepare_miniimagenet(str(root / "images"), str(root), str(root / "prepared"),
                         expect_counts=False)
    return str(root / "prepared")


@pytest.mark.parametrize("name", ["miniimagenet_5way_1shot", "miniimagenet_5way_5shot"])
def test_mamlpp_miniimagenet_samples_15_query_images_per_class_everywhere(
        name, mini_20_per_class):
    """Training, in-training validation, the ensemble's validation and the test evaluation
    of a MAML++ MiniImageNet flagfile all draw 15 query images per class."""
    from tf_maml import experiment, reproduce, runner

    config = reproduce.config_for(MAMLPP_FLAGFILES[name], {"data_dir": mini_20_per_class})
    sources = {"test": runner.eval_source(config),
               "val (ensemble)": experiment.task_source(config, "val",
                                                        experiment.test_num_query(config)),
               "val (training)": experiment.task_source(config, "val"),
               "train": experiment.task_source(config, "train")}
    for what, source in sources.items():
        sx, sy, qx, qy = source.sample_batch(1, np.random.default_rng(0))
        assert np.bincount(sy[0]).tolist() == [config.update_batch_size] * 5, what
        assert np.bincount(qy[0]).tolist() == [15] * 5, what
        assert qx.shape[1] == 75, what


def test_omniglot_mamlpp_flagfiles_sample_one_query_image_per_class():
    """The reference's Omniglot configurations: num_target_samples = 1, also for 5-shot."""
    from tf_maml import experiment, reproduce

    for name in ("omniglot_20way_1shot", "omniglot_20way_5shot"):
        config = reproduce.config_for(MAMLPP_FLAGFILES[name], {"data_dir": "unused"})
        assert config.num_query_train == 1 and experiment.test_num_query(config) == 1, name


def test_meta_gradient_clipping_spares_the_learned_inner_rates():
    """MAML++ clamps the network's meta-gradients (θ, per-step batch norm) at ±10 and not
    its learned rates: with a clip below most gradients, under SGD(1) θ and per-step batch
    norm move by the clipped gradient, the LSLR rates by their whole gradient."""
    rng = np.random.default_rng(0)
    batch = five_way_batch(rng)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(SMALL_CONV_SHAPE), keras.layers.Flatten(),
                              keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dense(5)])
    clip = 1e-4
    learner = MetaLearner(model, losses.mean_xent, inner_lr=options.LSLR(0.1), inner_steps=2,
                          adapt=options.PerStepBatchNorm(),
                          meta_optimizer=options.chain(options.ClipNetwork(clip),
                                                       keras.optimizers.SGD(1.0)))
    before = [v.numpy().copy() for v in learner.meta_variables]
    grads, _ = learner.meta_gradients(tuple(tf.constant(b) for b in batch))
    learner.apply_gradients(grads)
    rates, clipped, rate_grads = {id(v) for v in learner.inner_lrs}, [], []
    for v, b, g in zip(learner.meta_variables, before, grads):
        g = g.numpy()
        step = b - v.numpy()
        if id(v) in rates:
            rate_grads.append(np.max(np.abs(g)))
            np.testing.assert_allclose(step, g, rtol=1e-4, atol=1e-12, err_msg=v.path)
        else:
            clipped.append(np.mean(np.abs(g) > clip))
            np.testing.assert_allclose(step, np.clip(g, -clip, clip), rtol=1e-2, atol=1e-9,
                                       err_msg=v.path)
    assert np.mean(clipped) > 0.5  # the clip binds on most of the network's gradients
    assert max(rate_grads) > 100 * clip  # and would have on the rates
