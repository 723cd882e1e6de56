"""The model-agnostic promise: MetaLearner meta-trains any built Keras model unchanged.

Each model family (Sequential, functional conv, subclassed, recurrent, batch-normalised)
is meta-trained for a few steps on tasks whose answer the support set gives away (every
class is a random prototype plus a little noise, drawn anew per task), so adapting on the
support set must lower the query loss. The linear-regression tests compare adaptation and
meta-gradients with closed forms computed by hand in numpy.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_maml import adapt as adapt_lib
from tf_maml import losses, models, options
from tf_maml.api import MetaLearner

WAYS, SHOTS, QUERIES = 3, 2, 3


def prototype_tasks(meta_batch: int, rng: np.random.Generator, shape: tuple, noise=0.3):
    """N-way tasks: class c of task t is prototype[t, c] ~ N(0, 1) plus N(0, noise²) noise.

    Labels are a new random assignment per task, so only the support set can tell them.
    """
    prototypes = rng.normal(size=(meta_batch, WAYS) + shape)

    def draw(per_class):
        labels = np.tile(np.repeat(np.arange(WAYS), per_class), (meta_batch, 1))
        x = prototypes[np.arange(meta_batch)[:, None], labels]
        x = x + noise * rng.normal(size=x.shape)
        return x.astype(np.float32), labels.astype(np.int32)

    support_x, support_y = draw(SHOTS)
    query_x, query_y = draw(QUERIES)
    return support_x, support_y, query_x, query_y


def query_losses(learner: MetaLearner, batch) -> tuple[float, float]:
    """Mean query loss before and after ``learner.inner_steps`` steps, task by task."""
    pre, post = [], []
    for support_x, support_y, query_x, query_y in zip(*batch):
        pre.append(float(learner.loss_fn(query_y, learner.predict(query_x))))
        fast = learner.adapt(support_x, support_y)
        post.append(float(learner.loss_fn(query_y, learner.predict(query_x, fast))))
    return float(np.mean(pre)), float(np.mean(post))


def check_meta_trains(learner: MetaLearner, shape: tuple, steps: int = 3) -> None:
    before = [v.numpy().copy() for v in learner.model.trainable_variables]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        metrics = learner.train_step(prototype_tasks(2, rng, shape))
        assert bool(metrics["applied"])
        assert np.isfinite(float(metrics["pre_loss"])) and np.isfinite(float(metrics["post_loss"]))
    after = [v.numpy() for v in learner.model.trainable_variables]
    assert all(np.all(np.isfinite(a)) for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before)), "θ did not move"
    pre, post = query_losses(learner, prototype_tasks(4, np.random.default_rng(99), shape))
    assert post < pre, (pre, post)


def test_sequential_mlp_meta_trains():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(WAYS)])
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)
    assert learner.task_mapping(prototype_tasks(2, np.random.default_rng(0), (8,))) == "vectorized"
    check_meta_trains(learner, (8,))


def test_functional_conv4_meta_trains():
    keras.utils.set_random_seed(0)
    model = models.conv4((12, 12, 1), WAYS, num_filters=4)
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)
    # a conv net: every task at once through batched kernels (tf_maml.mapping.batched)
    batch = prototype_tasks(2, np.random.default_rng(0), (12, 12, 1))
    assert learner.task_mapping(batch) == "batched"
    check_meta_trains(learner, (12, 12, 1))


class TwoLayerNet(keras.Model):
    """A subclassed model written the usual Keras way: ``call(x)`` takes no ``training``."""

    def __init__(self, num_outputs: int):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="tanh")
        self.head = keras.layers.Dense(num_outputs)

    def call(self, x):
        return self.head(self.hidden(x))


class NormalizedNet(keras.Model):
    """A subclassed model whose ``call`` takes ``training`` but, as the Keras guide allows,
    leaves its propagation to the nested batch-norm layer to Keras."""

    def __init__(self, num_outputs: int):
        super().__init__()
        self.hidden = keras.layers.Dense(16)
        self.norm = keras.layers.BatchNormalization()
        self.head = keras.layers.Dense(num_outputs)

    def call(self, x, training=None):
        return self.head(keras.ops.relu(self.norm(self.hidden(x))))


def test_subclassed_model_meta_trains():
    """A ``call(x)`` without ``training`` runs in the inner loop: tf_maml.adapt.forward calls
    the model inside a keras.StatelessScope, as Keras would, where model.stateless_call would
    run call() directly and pass it ``training=`` (a TypeError)."""
    keras.utils.set_random_seed(0)
    model = TwoLayerNet(WAYS)
    model(np.zeros((1, 8), np.float32))  # build
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    # With the model's own weights, the fast-weight forward is the model's own call.
    np.testing.assert_allclose(
        adapt_lib.forward(model, [v.value for v in model.trainable_variables], x).numpy(),
        model(x).numpy(), rtol=1e-6, atol=1e-6)
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)
    check_meta_trains(learner, (8,))


def test_subclassed_model_batch_norm_uses_batch_statistics():
    """Keras propagates ``training`` to the nested batch norm of a ``call`` that does not pass
    it on; model.stateless_call would skip that propagation (moving statistics, wrong)."""
    keras.utils.set_random_seed(0)
    model = NormalizedNet(WAYS)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(6, 8)).astype(np.float32)
    model(x[:1])  # build; moving statistics stay at mean 0, variance 1
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)
    # Independent truth: normalise the hidden layer with this batch's own moments.
    h = x @ model.hidden.kernel.numpy() + model.hidden.bias.numpy()
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + model.norm.epsilon)
    want = np.maximum(h, 0) @ model.head.kernel.numpy() + model.head.bias.numpy()
    np.testing.assert_allclose(learner.predict(x).numpy(), want, rtol=1e-4, atol=1e-4)
    check_meta_trains(learner, (8,))


def test_recurrent_sequence_classifier_meta_trains():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.GRU(8),
                              keras.layers.Dense(WAYS)])
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)
    # pfor cannot vectorise the RNN while loop
    assert learner.task_mapping(prototype_tasks(2, np.random.default_rng(0), (4, 3))) == "map"
    check_meta_trains(learner, (4, 3))


def test_batch_normalized_model_meta_trains_norm_params_without_adapting_them():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.Dense(WAYS),
    ])
    bn = model.layers[1]
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)
    norm_ids = {id(bn.gamma), id(bn.beta)}
    assert learner.mask == [id(v) not in norm_ids for v in model.trainable_variables]
    gamma0, beta0 = bn.gamma.numpy().copy(), bn.beta.numpy().copy()
    check_meta_trains(learner, (8,))
    # γ, β are meta-trained (outer loop) ...
    assert not np.array_equal(bn.gamma.numpy(), gamma0)
    assert not np.array_equal(bn.beta.numpy(), beta0)
    # ... but not adapted (inner loop), and the moving statistics are never updated: the
    # original always normalised with the batch statistics.
    support_x, support_y, _, _ = prototype_tasks(1, np.random.default_rng(1), (8,))
    fast = learner.adapt(support_x[0], support_y[0])
    for v, f in zip(model.trainable_variables, fast):
        if id(v) in norm_ids:
            np.testing.assert_array_equal(f.numpy(), v.numpy())
        else:
            assert not np.array_equal(f.numpy(), v.numpy())
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.zeros(16))
    np.testing.assert_array_equal(bn.moving_variance.numpy(), np.ones(16))


# ---------------------------------------------------------------- closed forms (linear)

def linear_model(w: np.ndarray, b: float) -> keras.Model:
    model = keras.Sequential([keras.Input((len(w),)), keras.layers.Dense(1)])
    model.layers[0].kernel.assign(w.reshape(-1, 1).astype(np.float32))
    model.layers[0].bias.assign(np.array([b], np.float32))
    return model


def mse_grad(w, b, x, y):
    """∇ of mean((x·w + b − y)²) with respect to (w, b), by hand."""
    r = x @ w + b - y
    return 2.0 * x.T @ r / len(y), 2.0 * r.mean()


def mse_hessian(x):
    """The (constant) Hessian of the same loss, for [w; b]."""
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return 2.0 * xb.T @ xb / len(x)


def linear_task(rng, n=6, dim=3):
    x = rng.normal(size=(n, dim))
    y = x @ rng.normal(size=dim) + rng.normal()
    return x, y


def test_linear_adapt_is_the_closed_form_sgd_step():
    rng = np.random.default_rng(0)
    w, b, alpha = rng.normal(size=3), 0.3, 0.05
    learner = MetaLearner(linear_model(w, b), losses.mse, inner_lr=alpha)
    x, y = linear_task(rng)
    want_w, want_b = w.copy(), b
    for steps in (1, 2, 3):
        gw, gb = mse_grad(want_w, want_b, x, y)
        want_w, want_b = want_w - alpha * gw, want_b - alpha * gb
        fast_w, fast_b = learner.adapt(x.astype(np.float32), y[:, None].astype(np.float32),
                                       num_steps=steps)
        np.testing.assert_allclose(fast_w.numpy().ravel(), want_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fast_b.numpy(), [want_b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("first_order", [False, True])
def test_linear_meta_gradient_is_the_closed_form(first_order):
    """One-step MAML on L_q(θ − α∇L_s(θ)): the meta-gradient is (I − α H_s) ∇L_q(θ'),
    H_s the support Hessian; first-order MAML drops the (I − α H_s) factor."""
    rng = np.random.default_rng(1)
    w, b, alpha = rng.normal(size=3), -0.2, 0.05
    learner = MetaLearner(linear_model(w, b), losses.mse, inner_lr=alpha,
                          first_order=first_order)
    tasks = [(linear_task(rng), linear_task(rng)) for _ in range(3)]
    want = np.zeros(4)
    for (sx, sy), (qx, qy) in tasks:
        gw, gb = mse_grad(w, b, sx, sy)
        fw, fb = w - alpha * gw, b - alpha * gb
        qw, qb = mse_grad(fw, fb, qx, qy)
        g = np.append(qw, qb)
        if not first_order:
            g = (np.eye(4) - alpha * mse_hessian(sx)) @ g
        want += g / len(tasks)
    batch = tuple(np.stack([np.asarray(a, np.float32) for a in arrays]) for arrays in (
        [t[0][0] for t in tasks], [t[0][1][:, None] for t in tasks],
        [t[1][0] for t in tasks], [t[1][1][:, None] for t in tasks]))
    grads, _ = learner.meta_gradients(batch)
    got = np.append(grads[0].numpy().ravel(), grads[1].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_meta_sgd_trains_the_step_sizes_and_adapt_uses_them():
    rng = np.random.default_rng(2)
    w, b, alpha = rng.normal(size=3), 0.1, 0.05
    learner = MetaLearner(linear_model(w, b), losses.mse, inner_lr=options.MetaSGD(alpha),
                          meta_optimizer=options.adam(0.01))
    assert len(learner.inner_lrs) == 2
    tasks = [(linear_task(rng), linear_task(rng)) for _ in range(2)]
    batch = tuple(np.stack([np.asarray(a, np.float32) for a in arrays]) for arrays in (
        [t[0][0] for t in tasks], [t[0][1][:, None] for t in tasks],
        [t[1][0] for t in tasks], [t[1][1][:, None] for t in tasks]))
    learner.train_step(batch)
    alpha_w = learner.inner_lrs[0].numpy().ravel()
    alpha_b = learner.inner_lrs[1].numpy()
    assert np.all(alpha_w != alpha) and np.all(alpha_b != alpha)
    assert np.ptp(alpha_w) > 0  # one α per parameter element

    theta_w = learner.model.layers[0].kernel.numpy().ravel().astype(np.float64)
    theta_b = float(learner.model.layers[0].bias.numpy()[0])
    x, y = linear_task(rng)
    gw, gb = mse_grad(theta_w, theta_b, x, y)
    fast_w, fast_b = learner.adapt(x.astype(np.float32), y[:, None].astype(np.float32))
    np.testing.assert_allclose(fast_w.numpy().ravel(), theta_w - alpha_w * gw,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast_b.numpy(), theta_b - alpha_b * gb, rtol=1e-5, atol=1e-6)


def test_default_meta_optimizer_is_the_originals_adam():
    """The original's tf.train.AdamOptimizer: ε = 1e-8 (Keras' own default is 1e-7).

    With a meta-gradient g = 2.5e-7, the first Adam step is
    lr·√(1-β2)·g / (√(1-β2)·|g| + ε) (TF1's "epsilon hat" form), which depends strongly on ε:
    about 0.44·lr for ε = 1e-8 and 0.07·lr for ε = 1e-7.
    """
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign([[0.5]])
    meta_lr = 1e-3
    learner = MetaLearner(model, losses.mse, inner_lr=0.0, meta_optimizer=options.adam(meta_lr))
    # MSE of w·x against 0 with x = 5e-4: the gradient 2·w·x² = x² is tiny (α = 0, so the
    # meta-gradient is the plain gradient).
    x = np.full((1, 4, 1), 5e-4, np.float32)
    y = np.zeros_like(x)
    batch = (x, y, x, y)
    g = float(learner.meta_gradients(batch)[0][0].numpy().ravel()[0])
    np.testing.assert_allclose(g, 2 * 0.5 * 5e-4**2, rtol=1e-3)
    learner.train_step(batch)
    beta2 = 0.999
    c = np.sqrt(1 - beta2)
    expected = 0.5 - meta_lr * c * g / (c * abs(g) + 1e-8)
    np.testing.assert_allclose(float(model.layers[0].kernel.numpy().ravel()[0]), expected,
                               rtol=0, atol=1e-6)
    keras_default = 0.5 - meta_lr * c * g / (c * abs(g) + 1e-7)
    assert abs(expected - keras_default) > 3e-4


def test_meta_learner_docstring_example_runs(capsys):
    # The example a reader meets first (MetaLearner's docstring), run as written but with
    # fewer meta-iterations.
    import textwrap

    doc = MetaLearner.__doc__
    example = textwrap.dedent(doc[doc.index("::\n") + 3:])
    assert "iterations=2000" in example
    exec(example.replace("iterations=2000", "iterations=3"), {})
    mse = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(mse) and mse > 0


class _ScaledWeight(keras.layers.Layer):
    """A custom layer whose weight has its own regularizer (``add_weight(regularizer=)``)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones",
                                     regularizer=keras.regularizers.L2(0.5))

    def call(self, x):
        return x * self.scale


@pytest.mark.parametrize("layer", [
    keras.layers.Dense(WAYS, kernel_regularizer=keras.regularizers.L2(0.1)),
    keras.layers.Dense(WAYS, bias_regularizer="l1"),
    _ScaledWeight(),
])
def test_weight_regularized_model_trains_with_its_penalty(layer):
    # Keras' fit adds the weights' penalties (model.losses) to the loss; so does MetaLearner
    # (tests/test_regularizers.py checks the values): accepted, and a step moves θ.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(WAYS), layer])
    learner = MetaLearner(model, losses.summed_xent(SHOTS))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, WAYS * SHOTS, 4)).astype(np.float32)
    y = np.tile(np.repeat(np.arange(WAYS), SHOTS), (2, 1))
    before = [w.copy() for w in model.get_weights()]
    assert bool(learner.train_step((x, y, x, y))["applied"])
    assert any(np.abs(a - b).max() > 0 for a, b in zip(model.get_weights(), before))


@pytest.mark.parametrize("activity", [
    keras.layers.Dense(WAYS, activity_regularizer="l2"),
    keras.layers.ActivityRegularization(l2=0.1),
])
def test_activity_regularized_model_is_refused_not_silently_unregularized(activity):
    # An activity penalty depends on a forward pass's activations, which MetaLearner's
    # losses do not collect: it would be left out of the inner step and the meta-update.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(WAYS), activity])
    with pytest.raises(ValueError,
                       match=f"activity regularizers.*{activity.name}.*silently ignored"):
        MetaLearner(model, losses.summed_xent(SHOTS))


@pytest.mark.parametrize("layer", [
    keras.layers.Dropout(0.5), keras.layers.GaussianNoise(0.1),
    keras.layers.GaussianDropout(0.2), keras.layers.AlphaDropout(0.2),
])
def test_dropout_like_layers_are_accepted(layer):
    # Seeded per forward pass in meta-training, off at evaluation (tests/test_dropout.py).
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(WAYS)])
    MetaLearner(model, losses.summed_xent(SHOTS))


def test_random_augmentation_is_refused_not_given_one_frozen_mask():
    # Neither seeded per pass nor switched off at evaluation: one draw for every step, task
    # and iteration, and a draw at evaluation (training mode).
    layer = keras.layers.RandomFlip()
    model = keras.Sequential([keras.Input((4, 4, 1)), layer, keras.layers.Flatten(),
                              keras.layers.Dense(WAYS)])
    with pytest.raises(ValueError, match=f"random numbers.*{layer.name}.*Dropout"):
        MetaLearner(model, losses.summed_xent(SHOTS))


class _SelfDroppingModel(keras.Model):
    """Draws its own dropout mask in call, from a SeedGenerator of the model itself."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(WAYS)
        self.seed = keras.random.SeedGenerator(1)

    def call(self, x, training=False):
        return self.dense(keras.random.dropout(x, 0.5, seed=self.seed) if training else x)


def test_recurrent_dropout_and_a_self_dropping_subclassed_model_are_refused():
    gru = keras.Sequential([keras.Input((3, 2)), keras.layers.GRU(4, dropout=0.2),
                            keras.layers.Dense(WAYS)])
    with pytest.raises(ValueError, match="random numbers.*gru_cell"):
        MetaLearner(gru, losses.summed_xent(SHOTS))
    model = _SelfDroppingModel()
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=f"random numbers.*{model.name}"):
        MetaLearner(model, losses.summed_xent(SHOTS))


class _RawVariableScale(keras.layers.Layer):
    """Scales its input by a tf.Variable of its own, which Keras 3 does not track."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        import tensorflow as tf

        self.scale = tf.Variable(tf.ones((4,)), trainable=True)

    def call(self, x):
        return x * self.scale


class _IntegerWeightScale(keras.layers.Layer):
    """Scales its input by a trainable integer weight."""

    def build(self, shape):
        self.times = self.add_weight(shape=(), dtype="int32", initializer="ones", name="times")

    def call(self, x):
        return x * keras.ops.cast(self.times, x.dtype)


def test_predict_in_inference_mode_is_refused_for_batch_norm_moving_statistics():
    # Meta-training never updates the moving statistics: predict(training=False) silently
    # normalised with a new model's mean 0 and variance 1, not θ's statistics.
    keras.utils.set_random_seed(0)
    norm = keras.layers.BatchNormalization(name="norm")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), norm,
                              keras.layers.Dense(WAYS)])
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)
    batch = prototype_tasks(2, np.random.default_rng(0), (4,))
    assert bool(learner.train_step(batch)["applied"])
    np.testing.assert_array_equal(norm.moving_mean.numpy(), np.zeros(8))
    np.testing.assert_array_equal(norm.moving_variance.numpy(), np.ones(8))
    with pytest.raises(ValueError, match=r"training=False.*moving statistics of norm.*never "
                                         r"updates.*training=True"):
        learner.predict(batch[2][0], training=False)
    norm.trainable = False  # frozen: its moving statistics in both modes, as in Keras
    learner = MetaLearner(model, losses.summed_xent(SHOTS))
    np.testing.assert_allclose(learner.predict(batch[2][0], training=False),
                               model(batch[2][0], training=False), rtol=1e-6)


def test_an_untracked_tf_variable_and_an_integer_weight_are_refused_naming_them():
    # The tf.Variable is in no model.trainable_variables: it was silently never adapted nor
    # meta-learned (export then failed on an "untracked resource"). The int32 weight failed
    # at the first inner step: "Cannot convert 0.1 to EagerTensor of dtype int32".
    raw = _RawVariableScale(name="raw_scale")
    model = keras.Sequential([keras.Input((4,)), raw, keras.layers.Dense(WAYS)])
    assert not any(v is raw.scale for v in model.trainable_variables)
    with pytest.raises(ValueError, match=r"tf.Variables that Keras does not track "
                                         r"\(raw_scale.scale\).*self.add_weight"):
        MetaLearner(model, losses.summed_xent(SHOTS))
    model = keras.Sequential([keras.Input((4,)), _IntegerWeightScale(name="int_scale"),
                              keras.layers.Dense(WAYS)])
    with pytest.raises(ValueError, match=r"not floats \(\w+/int_scale/times \(int32\)\).*"
                                         r"trainable=False"):
        MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)


def test_layers_with_a_zero_rate_and_frozen_layers_are_accepted():
    # an LSTM cell holds a SeedGenerator even without dropout: not refused
    MetaLearner(keras.Sequential([keras.Input((4, 3)), keras.layers.LSTM(4),
                                  keras.layers.Dense(WAYS)]), losses.summed_xent(SHOTS))
    keras.utils.set_random_seed(0)
    body = keras.layers.Dense(8, activation="relu")
    model = keras.Sequential([keras.Input((4,)), body, keras.layers.Dropout(0.0),
                              keras.layers.Dense(WAYS)])
    body.trainable = False  # a frozen feature layer: neither adapted nor meta-updated
    frozen = [v.numpy().copy() for v in body.weights]
    learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1)
    assert bool(learner.train_step(prototype_tasks(2, np.random.default_rng(0), (4,)))["applied"])
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(frozen, body.weights))


def test_embedding_model_on_token_ids_adapts_by_the_dense_gradient_and_meta_trains():
    # An embedding's gradient is a tf.IndexedSlices: the inner step failed on `lr * grad`.
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(12, 4),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(WAYS)])
    loss_fn = losses.summed_xent(SHOTS)
    learner = MetaLearner(model, loss_fn, inner_lr=0.5)
    rng = np.random.default_rng(0)
    _, support_y, _, query_y = prototype_tasks(2, rng, (1,))
    support_x = rng.integers(0, 12, size=support_y.shape + (5,)).astype(np.int32)
    query_x = rng.integers(0, 12, size=query_y.shape + (5,)).astype(np.int32)
    with tf.GradientTape() as tape:  # the step by hand, through Keras' own call
        loss = loss_fn(support_y[0], model(support_x[0], training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    fast = learner.adapt(support_x[0], support_y[0])
    for v, g, w in zip(model.trainable_variables, grads, fast):
        np.testing.assert_allclose(np.asarray(w), v.numpy() - 0.5 * tf.convert_to_tensor(g),
                                   rtol=1e-5, atol=1e-6)
    table = model.layers[0].embeddings.numpy().copy()
    assert bool(learner.train_step((support_x, support_y, query_x, query_y))["applied"])
    assert not np.array_equal(table, model.layers[0].embeddings.numpy())


@pytest.mark.parametrize("loss_fn", [
    losses.summed_xent(SHOTS), losses.mean_xent,
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
])
@pytest.mark.parametrize("head", ["activation", "layer", "functional"])
def test_softmax_output_with_a_loss_on_logits_is_refused(loss_fn, head):
    # The probabilities would be softmaxed again: a wrong loss, silently.
    if head == "activation":
        model = keras.Sequential([keras.Input((4,)),
                                  keras.layers.Dense(WAYS, activation="softmax")])
    elif head == "layer":
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(WAYS),
                                  keras.layers.Softmax()])
    else:
        inputs = keras.Input((4,))
        outputs = keras.layers.Activation("softmax")(keras.layers.Dense(WAYS)(inputs))
        model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="applies a softmax.*takes logits"):
        MetaLearner(model, loss_fn)
    MetaLearner(model, "sparse_categorical_crossentropy")  # a loss on probabilities: fine


@pytest.mark.parametrize("parallelism", ["map", "vectorized"])
def test_mixed_float16_model_meta_trains_and_evaluates(parallelism):
    # float16 losses went into map's float32 TensorArrays: a raw "Invalid data types" error
    # from deep in the graph at evaluate_batch.
    from tf_maml import ExecutionPlan

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(WAYS)])
        learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1,
                              objective=options.LastStep(losses.accuracy))
        learner.use_plan(ExecutionPlan(task_parallelism=parallelism))
        batch = prototype_tasks(2, np.random.default_rng(0), (4,))
        metrics = learner.train_step(batch)
        assert bool(metrics["applied"]) and np.isfinite(float(metrics["post_loss"]))
        results = learner.evaluate_batch(batch, 2, predictions=True)
        assert results["loss"].dtype == "float32" and results["loss"].shape == (2, 3)
        assert np.all(np.isfinite(results["loss"])) and results["metric"].shape == (2, 3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("objective", ["msl", "reptile", "export"])
def test_mixed_float16_multi_step_loss_and_reptile_train_export_is_refused(objective, tmp_path):
    # MSL multiplied float32 weights by float16 losses (TypeError); Reptile's float16 losses
    # broke map's TensorArrays; export failed deep in TensorFlow on "deleted variables".
    from tf_maml import ExecutionPlan

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(WAYS)])
        chosen = {"msl": options.MultiStepLoss(10), "reptile": options.Reptile()}.get(objective)
        learner = MetaLearner(model, losses.summed_xent(SHOTS), inner_lr=0.1, inner_steps=2,
                              objective=chosen)
        learner.use_plan(ExecutionPlan(task_parallelism="map"))  # one task at a time
        if objective == "export":
            with pytest.raises(ValueError, match="mixed precision.*mixed_float16"):
                learner.export(str(tmp_path / "export"))
            return
        metrics = learner.train_step(prototype_tasks(2, np.random.default_rng(0), (4,)))
        assert bool(metrics["applied"]) and np.isfinite(float(metrics["post_loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
