"""The learner's option objects (tf_maml.options), each against hand-computed values, and the
core's shape: at most eight constructor arguments, no import of the training loop or export."""

import ast
import inspect
import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import losses, models, options
from tf_maml.api import MetaLearner
from tf_maml.options import adaptation

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tf_maml"


def mlp():
    keras.utils.set_random_seed(0)
    return models.fc_net((1,), (4,), 1, norm="None")


def test_lslr_rate_at_each_step_and_beyond_the_last():
    rate = options.LSLR(0.1)
    variables = rate.variables(mlp(), inner_steps=3)
    assert [tuple(v.shape) for v in variables] == [(3,)] * 4
    assert [v.name for v in variables] == ["inner_lr_0", "inner_lr_1", "inner_lr_2", "inner_lr_3"]
    np.testing.assert_allclose(np.stack([v.numpy() for v in variables]), 0.1)
    lrs = [tf.constant([1.0, 2.0, 3.0]) * (i + 1) for i in range(4)]
    step_lr = rate.step_lr(lrs, inner_steps=3)
    # step s uses element s; steps beyond the third reuse the third, Python int or tensor
    for step, k in ((0, 0), (1, 1), (2, 2), (7, 2)):
        assert [float(r) for r in step_lr(step)] == [(k + 1.0) * (i + 1) for i in range(4)]
        assert [float(r) for r in step_lr(tf.constant(step))] == [(k + 1.0) * (i + 1)
                                                                   for i in range(4)]


def test_meta_sgd_and_lslr_per_parameter_shapes_and_the_fixed_rate():
    model = mlp()
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    assert [tuple(v.shape) for v in options.MetaSGD(0.2).variables(model, 3)] == shapes
    both = options.LSLR(0.2, per_parameter=True).variables(model, 3)
    assert [tuple(v.shape) for v in both] == [(3,) + s for s in shapes]
    fixed = options.InnerRate(0.2)
    assert fixed.variables(model, 3) == [] and fixed.step_lr([], 3) == 0.2
    lrs = [tf.ones(s) for s in shapes]
    assert options.MetaSGD(0.2).step_lr(lrs, 3) == lrs


def test_multi_step_loss_weights_at_an_iteration_by_hand():
    """S = 3, N = 100: p = t/N; non-final steps max(1/S − p/S, 0.03/S), the last
    min(1/S + p(S−1)/S, 1 − (S−1)·0.03/S)."""
    msl = options.MultiStepLoss(100)
    for t, non_final, last in ((0, 1 / 3, 1 / 3), (50, 1 / 6, 2 / 3), (90, 1 / 30, 0.9333333),
                               (100, 0.01, 0.98), (400, 0.01, 0.98)):
        np.testing.assert_allclose(msl.step_weights(t, 3).numpy(), [non_final, non_final, last],
                                   rtol=1e-6, err_msg=str(t))
    assert msl.multi_step_at(99) and not msl.multi_step_at(100)
    assert not options.LastStep().multi_step_at(0)


def test_first_order_until_switches_at_its_iteration():
    anneal = options.FirstOrderUntil(3)
    assert [anneal.first_order_at(t) for t in range(5)] == [True, True, True, False, False]


def test_cosine_schedule_against_the_closed_form():
    schedule = options.cosine(1e-3, 1e-5, 40)
    for t in (0, 10, 20, 30, 40, 55):
        want = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * min(t, 40) / 40)) / 2
        assert float(schedule(t)) == pytest.approx(want, rel=1e-6), t


def test_clip_network_clips_the_networks_gradients_and_not_the_rates():
    clip = options.ClipNetwork(0.5)
    grads = [tf.constant([-2.0, 0.25, 3.0]), tf.constant([-2.0, 3.0])]
    out = clip(grads, network=[True, False])
    assert out[0].numpy().tolist() == [-0.5, 0.25, 0.5]
    assert out[1].numpy().tolist() == [-2.0, 3.0]


def test_meta_optimizer_chain_clips_then_steps_and_skips_a_non_finite_step():
    v = keras.Variable([1.0, 1.0])
    chain = options.chain(options.ClipNetwork(0.5), keras.optimizers.SGD(1.0))
    chain.build([v])
    assert bool(chain.apply([tf.constant([2.0, -0.1])], [v]))
    np.testing.assert_allclose(v.numpy(), [0.5, 1.1])  # 1 − clip(2) = 0.5, 1 + 0.1
    assert not bool(chain.apply([tf.constant([np.nan, 1.0])], [v]))
    np.testing.assert_allclose(v.numpy(), [0.5, 1.1])
    assert int(chain.nonfinite_steps) == 1 and int(chain.iterations) == 1


def test_default_meta_optimizer_is_the_originals_adam():
    learner = MetaLearner(mlp(), losses.mse)
    assert isinstance(learner.optimizer, keras.optimizers.Adam)
    assert learner.optimizer.epsilon == 1e-8
    assert float(learner.optimizer.learning_rate) == pytest.approx(1e-3)


@pytest.mark.parametrize("make, message", [
    (lambda: options.InnerRate(float("nan")), "inner learning rate must be a finite number"),
    (lambda: options.FirstOrderUntil(0), r"FirstOrderUntil needs iterations >= 1"),
    (lambda: options.MultiStepLoss(0), r"MultiStepLoss needs iterations >= 1"),
    (lambda: options.PerStepBatchNorm("all+norm"), "adapt must be 'all' or 'head'"),
    (lambda: options.ClipNetwork(0.0), r"ClipNetwork needs a clipping value > 0"),
    (lambda: options.chain(), "chain needs one Keras optimizer, as its last link"),
    (lambda: options.chain(options.ClipNetwork(1.0)), r"as its last link.*got 0"),
    (lambda: options.cosine(1e-3, 1e-2, 10), r"min_meta_lr must be in \[0, meta_lr"),
    (lambda: options.LastStep(metric_fn="accuracy"), "metric_fn must be a function"),
    (lambda: adaptation.check("body"), r"adapt must be one of \('all', 'all\+norm', 'head'\)"),
])
def test_each_option_checks_itself(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("kwargs, message", [
    (dict(inner_lr="fast"), "inner_lr must be a number or an InnerRate"),
    (dict(first_order="yes"), "first_order must be True, False or FirstOrderUntil"),
    (dict(objective="reptile"), r"objective must be LastStep\(\)"),
    (dict(inner_steps=0, inner_lr=options.LSLR(0.1)), "LSLR needs inner_steps >= 1, got 0"),
    (dict(inner_steps=0, objective=options.MultiStepLoss(5)), "MultiStepLoss needs inner_steps"),
    (dict(inner_steps=0, first_order=options.FirstOrderUntil(5)), "FirstOrderUntil needs inner"),
    (dict(first_order=options.FirstOrderUntil(5), objective=options.Reptile()),
     "FirstOrderUntil.5. is a MAML.. option of the meta-gradient; Reptile has none"),
    # (a Python caller was told only the command line's `norm=batch_norm`)
    (dict(adapt=options.PerStepBatchNorm()), "PerStepBatchNorm needs a model with trainable.*"
     r"has none \(e.g. tf_maml.models.conv4\(..., norm='batch_norm'\)"),
])
def test_the_learner_refuses_options_that_do_not_fit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaLearner(mlp(), losses.mse, **kwargs)


def test_adapt_choices_mask_by_hand():
    keras.utils.set_random_seed(0)
    model = models.fc_net((3,), (4,), 2, norm="batch_norm")
    names = [v.path for v in model.trainable_variables]
    norm = ["gamma" in n or "beta" in n for n in names]
    assert adaptation.adapted_mask(model, "all") == [not x for x in norm]
    assert adaptation.adapted_mask(model, "all+norm") == [True] * len(names)
    head = adaptation.adapted_mask(model, "head")
    assert sum(head) == 2 and head[-2:] == [True, True]  # the output Dense's kernel and bias


def test_the_core_takes_at_most_eight_arguments():
    parameters = list(inspect.signature(MetaLearner.__init__).parameters)[1:]
    assert len(parameters) <= 8, parameters


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_core_never_imports_the_training_loop_or_export():
    core = [PACKAGE / "learners.py", PACKAGE / "meta_update.py",
            *sorted((PACKAGE / "options").glob("*.py"))]
    for path in core:
        upward = {m for m in _imports(path)
                  if m in ("tf_maml.train", "tf_maml.export", "tf_maml.api", "tf_maml.runner",
                           "tf_maml.experiment")}
        assert not upward, (path.name, upward)
