"""The meta-gradients of MAML, first-order MAML and Reptile against independent truth: a
tiny tanh MLP whose forward pass and gradients are written out by hand in numpy here, and
central finite differences of the MAML objective."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import losses, options
from tf_maml.api import MetaLearner
from tf_maml.mapping import ExecutionPlan
from tf_maml.models import conv4

HIDDEN = 4
ALPHA = 0.3


# ---------------------------------------------------------------- numpy reference
def unpack(theta):
    w1 = theta[:HIDDEN].reshape(1, HIDDEN)
    b1 = theta[HIDDEN:2 * HIDDEN]
    w2 = theta[2 * HIDDEN:3 * HIDDEN].reshape(HIDDEN, 1)
    b2 = theta[3 * HIDDEN:]
    return w1, b1, w2, b2


def np_loss_and_grad(theta, x, y):
    """MSE of y = tanh(x w1 + b1) w2 + b2 and its gradient, by hand."""
    w1, b1, w2, b2 = unpack(theta)
    h = np.tanh(x @ w1 + b1)
    pred = h @ w2 + b2
    n = pred.size
    loss = np.mean((pred - y) ** 2)
    dpred = 2.0 * (pred - y) / n
    dw2 = h.T @ dpred
    db2 = dpred.sum(0)
    dz = (dpred @ w2.T) * (1.0 - h ** 2)
    dw1 = x.T @ dz
    db1 = dz.sum(0)
    return loss, np.concatenate([dw1.ravel(), db1, dw2.ravel(), db2])


def np_maml_objective(theta, tasks, steps=1):
    total = 0.0
    for sx, sy, qx, qy in tasks:
        fast = theta
        for _ in range(steps):
            fast = fast - ALPHA * np_loss_and_grad(fast, sx, sy)[1]
        total += np_loss_and_grad(fast, qx, qy)[0]
    return total / len(tasks)


def finite_difference(fn, theta, eps=1e-6):
    grad = np.zeros_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = eps
        grad[i] = (fn(theta + step) - fn(theta - step)) / (2 * eps)
    return grad


# ---------------------------------------------------------------- keras side
def make_learner(theta, inner_lr=ALPHA, **kwargs):
    model = keras.Sequential([
        keras.Input((1,), dtype="float64"),
        keras.layers.Dense(HIDDEN, activation="tanh", dtype="float64"),
        keras.layers.Dense(1, dtype="float64"),
    ])
    w1, b1, w2, b2 = unpack(theta)
    model.set_weights([w1, b1, w2, b2])
    return MetaLearner(model, losses.mse, inner_lr=inner_lr, **kwargs)


def flat(grads):
    return np.concatenate([np.asarray(g).ravel() for g in grads])


def make_tasks(rng, num_tasks=3, k=5):
    tasks = []
    for _ in range(num_tasks):
        amp, phase = rng.uniform(0.5, 2.0), rng.uniform(0, np.pi)
        x = rng.uniform(-2, 2, size=(2 * k, 1))
        y = amp * np.sin(x - phase)
        tasks.append((x[:k], y[:k], x[k:], y[k:]))
    return tasks


def as_batch(tasks):
    return tuple(tf.constant(np.stack(part)) for part in zip(*tasks))


@pytest.fixture
def problem():
    rng = np.random.default_rng(3)
    theta = rng.normal(0, 0.7, size=3 * HIDDEN + 1)
    return theta, make_tasks(rng)


@pytest.mark.parametrize("parallelism", ["vectorized", "map", "loop", "accumulate"])
@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(problem, parallelism, steps):
    theta, tasks = problem
    learner = make_learner(theta, inner_steps=steps).use_plan(ExecutionPlan(parallelism))
    grads, metrics = learner.meta_gradients(as_batch(tasks))
    expected = finite_difference(lambda t: np_maml_objective(t, tasks, steps), theta)
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(float(metrics["post_loss"]), np_maml_objective(theta, tasks, steps),
                               rtol=1e-10)


def test_second_order_differs_from_first_order(problem):
    # Guards the test above: the second-order term is not negligible on this problem.
    theta, tasks = problem
    so, _ = make_learner(theta).meta_gradients(as_batch(tasks))
    fo, _ = make_learner(theta, first_order=True).meta_gradients(as_batch(tasks))
    assert np.max(np.abs(flat(so) - flat(fo))) > 1e-3


def test_first_order_meta_gradient_is_query_gradient_at_fast_weights(problem):
    theta, tasks = problem
    learner = make_learner(theta, first_order=True, inner_steps=2)
    grads, _ = learner.meta_gradients(as_batch(tasks))
    expected = np.zeros_like(theta)
    for sx, sy, qx, qy in tasks:
        fast = theta
        for _ in range(2):
            fast = fast - ALPHA * np_loss_and_grad(fast, sx, sy)[1]
        expected += np_loss_and_grad(fast, qx, qy)[1] / len(tasks)
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-10, atol=1e-12)


def test_pretrain_gradient_is_mean_support_loss_gradient(problem):
    theta, tasks = problem
    grads, _ = make_learner(theta).meta_gradients(as_batch(tasks), pretrain=True)
    expected = np.mean([np_loss_and_grad(theta, sx, sy)[1] for sx, sy, _, _ in tasks], axis=0)
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-10, atol=1e-12)


def test_reptile_update_matches_hand_computation(problem):
    theta, tasks = problem
    steps = 3
    learner = make_learner(theta, inner_steps=steps, objective=options.Reptile(),
                           meta_optimizer=keras.optimizers.SGD(learning_rate=0.5))
    grads, _ = learner.reptile_gradients(as_batch(tasks))
    adapted = []
    for sx, sy, _, _ in tasks:
        fast = theta
        for _ in range(steps):
            fast = fast - ALPHA * np_loss_and_grad(fast, sx, sy)[1]
        adapted.append(fast)
    expected_delta = theta - np.mean(adapted, axis=0)
    np.testing.assert_allclose(flat(grads), expected_delta, rtol=1e-10, atol=1e-12)
    # With SGD(0.5) as meta-optimiser, θ moves halfway towards the mean adapted weights.
    learner.train_step(as_batch(tasks))
    new_theta = flat(learner.model.get_weights())
    np.testing.assert_allclose(new_theta, theta - 0.5 * expected_delta, rtol=1e-10, atol=1e-12)


def test_adapt_is_closed_form_sgd_on_linear_model():
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((3,), dtype="float64"),
                              keras.layers.Dense(1, dtype="float64")])
    w, b = rng.normal(size=(3, 1)), rng.normal(size=(1,))
    model.set_weights([w, b])
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 1))
    learner = MetaLearner(model, losses.mse, inner_lr=0.1)
    fast = learner.adapt(x, y, num_steps=1)
    residual = x @ w + b - y
    np.testing.assert_allclose(fast[0].numpy(), w - 0.1 * 2 * x.T @ residual / 7, rtol=1e-12)
    np.testing.assert_allclose(fast[1].numpy(), b - 0.1 * 2 * residual.sum(0) / 7, rtol=1e-12)


def test_summed_xent_is_sum_over_examples_divided_by_k():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0], [0.0, 3.0, 0.0]])
    labels = np.array([0, 2, 1, 1])
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(4), labels].sum() / 2
    got = losses.summed_xent(2)(tf.constant(labels), tf.constant(logits))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)


def test_norm_offsets_are_meta_trained_but_not_adapted():
    keras.utils.set_random_seed(0)
    model = conv4((28, 28, 1), 5, num_filters=4)
    learner = MetaLearner(model, losses.summed_xent(1), inner_lr=0.4)
    names = [v.path for v in model.trainable_variables]
    adapted = {n for n, m in zip(names, learner.mask) if m}
    assert adapted == {n for n in names if "norm" not in n}
    assert len(adapted) == 10  # 4 conv kernels + 4 biases + dense kernel and bias
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 28, 28, 1)).astype("float32")
    y = np.arange(5, dtype="int32")
    fast = learner.adapt(x, y)
    for name, before, after in zip(names, model.trainable_variables, fast):
        changed = not np.array_equal(before.numpy(), after.numpy())
        assert changed == ("norm" not in name or False), name
    all_adapted = MetaLearner(model, losses.summed_xent(1), inner_lr=0.4, adapt="all+norm")
    assert all(all_adapted.mask)


def conv_batch(seed, tasks=3, n=5, k=1, q=2):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(tasks, n * k, 28, 28, 1)).astype("float32"),
            np.tile(np.arange(n, dtype="int32"), (tasks, k)),
            rng.uniform(size=(tasks, n * q, 28, 28, 1)).astype("float32"),
            np.tile(np.arange(n, dtype="int32"), (tasks, q)))


def test_task_parallelism_modes_agree_with_per_task_batch_norm():
    """map_fn and pfor must equal the unrolled per-task loop, batch norm statistics per task
    included (where vectorised MAML implementations have drifted elsewhere)."""
    keras.utils.set_random_seed(1)
    model = conv4((28, 28, 1), 5, num_filters=8)
    batch = conv_batch(0)
    results = {}
    for mode in ("loop", "map", "vectorized"):
        learner = MetaLearner(model, losses.summed_xent(1), inner_lr=0.4, inner_steps=2,
                              objective=options.LastStep(losses.accuracy)).use_plan(ExecutionPlan(mode))
        grads, metrics = learner.meta_gradients(batch)
        results[mode] = (flat(grads), float(metrics["post_loss"]))
    for mode in ("map", "vectorized"):
        # atol: the conv biases before batch norm have meta-gradient 0 in exact arithmetic;
        # in float32 they are rounding noise of order 1e-5.
        np.testing.assert_allclose(results[mode][0], results["loop"][0], rtol=2e-4, atol=5e-5)
        np.testing.assert_allclose(results[mode][1], results["loop"][1], rtol=1e-5)
    # Statistics are per task: the meta-batch as ONE task would give another loss.
    learner = MetaLearner(model, losses.summed_xent(1), inner_lr=0.4, inner_steps=2)
    merged = tuple(np.reshape(a, (1, -1) + a.shape[2:]) for a in batch)
    _, merged_metrics = learner.meta_gradients(merged)
    assert abs(float(merged_metrics["post_loss"]) * 1 - results["loop"][1]) > 1e-3


def test_nonfinite_step_is_not_applied():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    learner = MetaLearner(model, losses.mse, inner_lr=0.01)
    before = [w.copy() for w in model.get_weights()]
    bad = (np.ones((2, 3, 1), "float32"), np.full((2, 3, 1), np.nan, "float32"),
           np.ones((2, 3, 1), "float32"), np.ones((2, 3, 1), "float32"))
    out = learner.train_step(bad)
    assert not bool(out["applied"])
    assert int(learner.nonfinite_steps.numpy()) == 1
    for b, a in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(learner.optimizer.iterations.numpy()) == 0


def test_second_order_meta_gradient_through_batch_norm_matches_finite_differences():
    """Keras' own BatchNormalization stops the gradient through the mean in its variance,
    which breaks second derivatives; tf_maml.models' batch norm must give the true ones."""
    from tf_maml.models import fc_net

    # The global dtype policy is fixed on first use; set it (not only floatx) explicitly.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        keras.utils.set_random_seed(2)
        model = fc_net((3,), (6,), 2, norm="batch_norm")
        rng = np.random.default_rng(5)
        model.set_weights([rng.normal(0, 0.8, size=w.shape) for w in model.get_weights()])
        batch = (rng.normal(size=(2, 4, 3)), rng.integers(0, 2, size=(2, 4)).astype("int32"),
                 rng.normal(size=(2, 4, 3)), rng.integers(0, 2, size=(2, 4)).astype("int32"))
        learner = MetaLearner(model, losses.summed_xent(2), inner_lr=0.5,
                              inner_steps=2).use_plan(ExecutionPlan("loop"))
        grads, _ = learner.meta_gradients(batch)
        theta = [v.numpy().copy() for v in model.trainable_variables]

        def objective(flat_theta):
            offset = 0
            for v, t in zip(model.trainable_variables, theta):
                v.assign(flat_theta[offset:offset + t.size].reshape(t.shape))
                offset += t.size
            return float(learner.meta_gradients(batch)[1]["post_loss"])

        flat_theta = np.concatenate([t.ravel() for t in theta])
        expected = finite_difference(objective, flat_theta, eps=1e-6)
        np.testing.assert_allclose(flat(grads), expected, rtol=1e-5, atol=1e-7)
        # The dense bias before batch norm cannot change the loss: its meta-gradient is 0.
        bias = flat(grads)[3 * 6:3 * 6 + 6]
        np.testing.assert_allclose(bias, 0.0, atol=1e-10)
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")


# ------------------------------------------------ plain Keras batch norm, second order
def _bn_net(norm_layer):
    return keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, name="pre_bn"), norm_layer,
        keras.layers.ReLU(), keras.layers.Dense(5, name="head"),
    ])


def _second_order_meta_gradients(model, batch):
    learner = MetaLearner(model, losses.summed_xent(1), inner_lr=0.5,
                          inner_steps=2).use_plan(ExecutionPlan("loop"))
    grads, _ = learner.meta_gradients(batch)
    return {v.path: g.numpy() for v, g in zip(model.trainable_variables, grads)}


def test_plain_keras_batch_norm_has_exact_second_order_meta_gradients(float64, monkeypatch):
    # Independent truth: batch norm subtracts the batch mean, so the bias of the Dense layer
    # before it cannot change any output: its meta-gradient is exactly 0, at every order.
    # tf.nn.moments (Keras' statistics) stops the gradient of the mean inside the variance,
    # which leaves that meta-gradient non-zero in second-order MAML; tf_maml runs Keras'
    # layer with exact moments (tf_maml.keras_internals.use_exact_moments).
    from tf_maml import adapt, models

    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(5), (3, 2))
    batch = (rng.normal(size=(3, 10, 6)), labels, rng.normal(size=(3, 10, 6)), labels)
    keras.utils.set_random_seed(1)
    plain = _bn_net(keras.layers.BatchNormalization(scale=False))
    keras.utils.set_random_seed(1)
    ours = _bn_net(models.BatchNormalization(scale=False))  # tf_maml.models subclass
    ours.set_weights(plain.get_weights())
    got = _second_order_meta_gradients(plain, batch)
    want = _second_order_meta_gradients(ours, batch)
    scale = max(np.max(np.abs(g)) for g in want.values())
    assert scale > 1e-2
    for (path, g), w in zip(got.items(), want.values()):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12 * scale, err_msg=path)
    bias = next(g for p, g in got.items() if "pre_bn" in p and "bias" in p)
    assert np.max(np.abs(bias)) < 1e-12 * scale
    # Without the exact moments (Keras' own), the bias meta-gradient is visibly wrong: the
    # check above can fail.
    monkeypatch.setattr(adapt.keras_internals, "use_exact_moments", lambda model: None)
    keras.utils.set_random_seed(1)
    fresh = _bn_net(keras.layers.BatchNormalization(scale=False))  # never made exact
    fresh.set_weights(plain.get_weights())
    keras_own = _second_order_meta_gradients(fresh, batch)
    bias = next(g for p, g in keras_own.items() if "pre_bn" in p and "bias" in p)
    assert np.max(np.abs(bias)) > 1e-6 * scale


# ---------------------------------------------------------------- ANIL (head-only inner loop)
HEAD = slice(2 * HIDDEN, 3 * HIDDEN + 1)  # w2, b2: the last Dense layer of make_learner


def np_anil_objective(theta, tasks, steps=1):
    """ANIL (Raghu et al. 2020): MAML's objective with the inner step on the head alone."""
    total = 0.0
    for sx, sy, qx, qy in tasks:
        fast = theta.copy()
        for _ in range(steps):
            grad = np_loss_and_grad(fast, sx, sy)[1]
            fast[HEAD] -= ALPHA * grad[HEAD]
        total += np_loss_and_grad(fast, qx, qy)[0]
    return total / len(tasks)


@pytest.mark.parametrize("parallelism", ["vectorized", "map", "loop", "accumulate"])
@pytest.mark.parametrize("steps", [1, 2])
def test_anil_meta_gradient_matches_finite_differences(problem, parallelism, steps):
    """Every parameter, the body's included, gets the second-order meta-gradient of the
    head-only inner loop."""
    theta, tasks = problem
    learner = make_learner(theta, inner_steps=steps,
                           adapt="head").use_plan(ExecutionPlan(parallelism))
    grads, metrics = learner.meta_gradients(as_batch(tasks))
    expected = finite_difference(lambda t: np_anil_objective(t, tasks, steps), theta)
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(float(metrics["post_loss"]),
                               np_anil_objective(theta, tasks, steps), rtol=1e-10)
    # Guard: ANIL's objective is not MAML's on this problem.
    maml = finite_difference(lambda t: np_maml_objective(t, tasks, steps), theta)
    assert np.max(np.abs(expected - maml)) > 1e-3
    assert np.max(np.abs(expected[:2 * HIDDEN])) > 1e-3  # the body learns in the outer loop


def test_anil_inner_loop_adapts_the_head_and_leaves_the_body(problem):
    theta, tasks = problem
    learner = make_learner(theta, adapt="head")
    sx, sy = tasks[0][0], tasks[0][1]
    fast = flat(learner.adapt(sx, sy, num_steps=3))
    np.testing.assert_array_equal(fast[:2 * HIDDEN], theta[:2 * HIDDEN])
    expected = theta.copy()
    for _ in range(3):
        expected[HEAD] -= ALPHA * np_loss_and_grad(expected, sx, sy)[1][HEAD]
    np.testing.assert_allclose(fast, expected, rtol=1e-10)


def test_anil_head_is_the_last_layer_with_weights_and_mappings_agree():
    """conv4's head is its output Dense (not a batch norm); the batched and accumulated
    mappings give the per-task loop's meta-gradients under ANIL too."""
    from tf_maml import adapt as adapt_lib

    keras.utils.set_random_seed(1)
    model = conv4((28, 28, 1), 5, num_filters=8)
    head = adapt_lib.head_layer(model)
    assert isinstance(head, keras.layers.Dense) and head.units == 5
    mask = adapt_lib.adapted_mask(model, adapt_layers="head")
    assert sum(mask) == 2 and mask[-2:] == [True, True]
    batch = conv_batch(0)
    results = {}
    for mode in ("loop", "batched", "accumulate"):
        learner = MetaLearner(model, losses.summed_xent(1), inner_lr=0.4, inner_steps=2,
                              adapt="head").use_plan(ExecutionPlan(mode))
        grads, metrics = learner.meta_gradients(batch)
        results[mode] = (flat(grads), float(metrics["post_loss"]))
    for mode in ("batched", "accumulate"):
        np.testing.assert_allclose(results[mode][0], results["loop"][0], rtol=2e-4, atol=5e-5)
        np.testing.assert_allclose(results[mode][1], results["loop"][1], rtol=1e-5)
    with pytest.raises(ValueError, match="adapt must be one of"):
        MetaLearner(model, losses.summed_xent(1), adapt="body")


def test_anil_runs_the_body_once_per_task_whatever_the_inner_steps(problem):
    """ANIL's inner loop runs the head alone on the support set's features: with 3 inner
    steps the body sees each task's support set once and its query set once (MAML: 3 + 1
    times), and the meta-gradient is still the finite differences' of ANIL's objective."""
    theta, tasks = problem
    passes = []

    class CountPasses(keras.layers.Layer):
        def call(self, x):
            passes.append(x.shape)
            return x

    def learner(**kwargs):
        model = keras.Sequential([
            keras.Input((1,), dtype="float64"), CountPasses(dtype="float64"),
            keras.layers.Dense(HIDDEN, activation="tanh", dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ])
        model.set_weights(list(unpack(theta)))
        return MetaLearner(model, losses.mse, inner_lr=ALPHA, inner_steps=3,
                           **kwargs).use_plan(ExecutionPlan("loop"))

    anil = learner(adapt="head")
    passes.clear()
    grads, _ = anil.meta_gradients(as_batch(tasks))
    assert len(passes) == 2 * len(tasks)
    expected = finite_difference(lambda t: np_anil_objective(t, tasks, 3), theta)
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-5, atol=1e-8)
    maml = learner()
    passes.clear()
    maml.meta_gradients(as_batch(tasks))
    assert len(passes) == 4 * len(tasks)
    # The query set's features once too: evaluation after 0..10 steps, and MSL's query
    # loss after every step. (The learner's one-time eager check of the loss on the first
    # batch it is given is one more body pass, made before anything is traced: made here.)
    anil.checked_batch(as_batch(tasks), "evaluate_batch")
    passes.clear()
    out = anil.evaluate_batch(as_batch(tasks), 10)
    assert len(passes) == 2 * len(tasks)
    assert np.asarray(out["loss"]).shape == (len(tasks), 11)
    passes.clear()
    anil.meta_gradients(as_batch(tasks), msl_weights=[0.2, 0.3, 0.5])
    assert len(passes) == 2 * len(tasks)


@pytest.mark.parametrize("mapping", ["per_task", "batched"])
@pytest.mark.parametrize("first_order", [False, True])
def test_anil_body_features_once_give_the_whole_models_meta_gradient(mapping, first_order):
    """conv4 with batch norm in its body: 3 head-only inner steps on the body's features
    computed once give the meta-gradient of running the whole model at every step."""
    from tf_maml import adapt as adapt_lib
    from tf_maml.mapping.base import model_runner
    from tf_maml.mapping.batched import Batched

    keras.utils.set_random_seed(2)
    model = conv4((28, 28, 1), 5, num_filters=8)
    batch = tuple(tf.constant(t) for t in conv_batch(3))
    if mapping == "batched":
        runner, (sx, sy, qx, qy) = Batched(model).runner(batch), batch
    else:
        runner, (sx, sy, qx, qy) = model_runner(model), (t[0] for t in batch)
    assert runner.split is not None
    mask = adapt_lib.adapted_mask(model, adapt_layers="head")
    loss_fn = runner.per_task(losses.summed_xent(1))
    theta = [v.value for v in model.trainable_variables]
    results = []
    for split in (runner.split, None):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            fast, _, _ = adapt_lib.adapt(model, runner.weights(theta), sx, sy, loss_fn, 0.4, 3,
                                         first_order=first_order, mask=mask,
                                         forward_fn=runner.forward, split=split)
            objective = tf.reduce_sum(loss_fn(qy, runner.forward(fast, qx)))
        results.append((flat(tape.gradient(objective, theta)), float(objective)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4, atol=2e-5)  # float32
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)
    body_size = sum(int(np.prod(t.shape)) for t in theta[:-2])  # all but the head's two
    assert np.max(np.abs(results[0][0][:body_size])) > 1e-6  # the body is reached


def subclassed_two_dense() -> keras.Model:
    """A built subclassed model (its call is opaque, so it has no head cut): Dense, tanh,
    Dense."""

    class TwoDense(keras.Model):
        def __init__(self):
            super().__init__()
            self.body, self.head = keras.layers.Dense(3), keras.layers.Dense(1)

        def call(self, x):
            return self.head(keras.ops.tanh(self.body(x)))

    model = TwoDense()
    model(np.zeros((1, 2), "float32"))
    return model


def test_a_subclassed_model_is_not_cut_and_anil_still_adapts_its_head():
    from tf_maml import adapt as adapt_lib

    model = subclassed_two_dense()
    assert adapt_lib.model_split(model) is None
    learner = MetaLearner(model, losses.mse, inner_lr=0.1, adapt="head")
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    fast = learner.adapt(x, y, num_steps=1)
    np.testing.assert_array_equal(fast[0].numpy(), model.body.kernel.numpy())
    assert np.max(np.abs(fast[2].numpy() - model.head.kernel.numpy())) > 0


class ClassifierFirst(keras.Model):
    """Sets its classifier before its features (a subclassed model's layer order)."""

    def __init__(self):
        super().__init__()
        self.classifier = keras.layers.Dense(1)
        self.features = keras.Sequential([keras.layers.Dense(4, activation="tanh"),
                                          keras.layers.Dense(3, activation="tanh")])

    def call(self, x):
        return self.classifier(self.features(x))


def _nested_head_model(kind: str) -> tuple[keras.Model, keras.layers.Layer]:
    """A model whose output layer is the last of a nested Sequential, and that layer."""
    keras.utils.set_random_seed(0)
    if kind == "subclassed":
        model = ClassifierFirst()
        model(np.zeros((1, 2), "float32"))
        return model, model.classifier
    if kind == "functional, subclassed inside":
        inputs, inner = keras.Input((2,)), ClassifierFirst()
        outputs = inner(keras.layers.Dense(2, activation="tanh")(inputs))
        return keras.Model(inputs, outputs), inner.classifier
    head = keras.Sequential([keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])
    body = keras.Sequential([keras.layers.Dense(4, activation="tanh")])
    if kind == "sequential":
        return keras.Sequential([keras.Input((2,)), body, head]), head.layers[-1]
    inputs = keras.Input((2,))
    return keras.Model(inputs, head(body(inputs))), head.layers[-1]


@pytest.mark.parametrize("kind", ["subclassed", "sequential", "functional",
                                  "functional, subclassed inside"])
def test_anil_adapts_the_layer_that_produces_the_output(kind):
    # Keras' flattened layer order lists a nested model's layers last to first, and a
    # subclassed model's in attribute order: ANIL adapted the nested head's FIRST Dense, or
    # a feature layer of a model that sets its classifier first, and froze the output layer.
    model, output_layer = _nested_head_model(kind)
    learner = MetaLearner(model, losses.mse, inner_lr=0.1, adapt="head")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 2)).astype("float32"), rng.normal(size=(4, 1)).astype("float32")
    head = output_layer.trainable_variables
    with tf.GradientTape() as tape:  # ANIL's step by hand: the output layer's weights alone
        loss = losses.mse(y, model(x, training=True))
    grads = dict(zip([id(v) for v in head], tape.gradient(loss, head)))
    fast = learner.adapt(x, y, num_steps=1)
    for v, w in zip(model.trainable_variables, fast):
        want = v.numpy() - 0.1 * grads[id(v)].numpy() if id(v) in grads else v.numpy()
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_anil_evaluation_and_msl_through_the_cut_equal_the_whole_model(mode):
    """conv4 with batch norm: evaluation after 0..4 steps and MSL's meta-gradient, with the
    body's features computed once, equal the whole model's at every step."""
    keras.utils.set_random_seed(4)
    model = conv4((28, 28, 1), 5, num_filters=8)
    batch = conv_batch(5)
    out = []
    for cut in (True, False):
        learner = MetaLearner(model, losses.summed_xent(1), inner_lr=0.4, inner_steps=3,
                              adapt="head", objective=options.LastStep(losses.accuracy))
        learner.use_plan(ExecutionPlan(mode, cache_body_features=cut))
        evaluated = learner.evaluate_batch(batch, 4)
        grads, metrics = learner.meta_gradients(batch, msl_weights=[0.2, 0.3, 0.5])
        out.append((np.asarray(evaluated["loss"]), np.asarray(evaluated["metric"]),
                    flat(grads), float(metrics["msl_loss"])))
    (loss, metric, grads, msl), (loss0, metric0, grads0, msl0) = out
    np.testing.assert_allclose(loss, loss0, rtol=1e-5)
    np.testing.assert_array_equal(metric, metric0)
    np.testing.assert_allclose(grads, grads0, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(msl, msl0, rtol=1e-6)
    assert loss.shape == (3, 5) and np.all(loss[:, -1] < loss[:, 0])  # adaptation helps
