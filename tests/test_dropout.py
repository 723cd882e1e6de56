"""Dropout-like random layers in MetaLearner: a fresh mask at every forward pass of
meta-training (each inner step, task and iteration), none at evaluation, inference and export.

The masks are read from what they leave in a linear model's gradients (a unit dropped in a
pass gets no gradient through it), recomputed with Keras' own Dropout from the seed the
documented derivation gives, and the meta-gradient is checked against finite differences
with the seed held fixed; evaluation is checked against the same model without its Dropout.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import MetaLearner, losses
from tf_maml.baselines import Classifier
from tf_maml.mapping import ExecutionPlan

UNITS = 12


def _sum_of_outputs(y_true, y_pred):
    """A loss whose gradient is the same at any weights: 1 for every output kept."""
    del y_true
    return tf.reduce_sum(y_pred)


def identity_dropout_learner(task_parallelism="loop", inner_steps=2, rate=0.5,
                             first_order=False):
    """x -> Dropout(x I): on a task whose one example is e_t, the inner step's change to
    row t of the kernel is exactly that step's mask (α = 1)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((UNITS,)),
                              keras.layers.Dense(UNITS, use_bias=False,
                                                 kernel_initializer="identity"),
                              keras.layers.Dropout(rate)])
    learner = MetaLearner(model, _sum_of_outputs, inner_lr=1.0, inner_steps=inner_steps,
                          first_order=first_order)
    return learner.use_plan(ExecutionPlan(task_parallelism=task_parallelism))


def unit_tasks(num_tasks=2):
    """Task t: one support and one query example, e_t."""
    x = np.eye(UNITS, dtype=np.float32)[:num_tasks, None, :]
    y = np.zeros_like(x)
    return x, y, x, y


def reptile_masks(learner, batch) -> np.ndarray:
    """Per task, Σ_s (mask of inner step s) / T, read from Reptile's θ − mean_t θ'_t: row t
    of the kernel moves only on task t's steps, by α times the step's kept units (the
    scaled mask: 0 or 1 / (1 − rate))."""
    grads, _ = tf.function(learner.reptile_gradients, autograph=False)(batch)
    return grads[0].numpy()[:len(batch[0])]


def test_masks_differ_across_inner_steps_tasks_and_iterations_and_repeat_for_the_same():
    learner = identity_dropout_learner()
    batch = unit_tasks()
    first = reptile_masks(learner, batch)
    # Two steps, T = 2: an entry is (m_0 + m_1) / 2 with m in {0, 2}. Had both steps one
    # mask, every entry would be 0 or 2; a 1 is a unit kept at one step and not the other.
    assert set(np.unique(first)) <= {0.0, 1.0, 2.0}
    assert (first == 1.0).any(), first
    assert not np.array_equal(first[0], first[1])  # each task its own masks
    assert np.array_equal(reptile_masks(learner, batch), first)  # same iteration, same masks
    learner.optimizer.iterations.assign(7)
    later = reptile_masks(learner, batch)
    assert not np.array_equal(later, first)  # another iteration, other masks
    learner.optimizer.iterations.assign(0)
    assert np.array_equal(reptile_masks(learner, batch), first)  # deterministic, resumable


def test_query_pass_draws_its_own_mask():
    # First order: the meta-gradient of Σ outputs is the query pass's mask alone (row t:
    # task t's, over T); with one inner step, the inner step's mask is Reptile's.
    learner = identity_dropout_learner(inner_steps=1, first_order=True)
    batch = unit_tasks()
    grads, _ = learner.meta_gradients(batch)
    query = grads[0].numpy()[:2] * 2
    support = reptile_masks(learner, batch) * 2
    assert set(np.unique(query)) <= {0.0, 2.0}
    assert not np.array_equal(query, support)


def test_multi_step_loss_scores_each_step_with_its_own_query_mask():
    # First order, MAML++'s weights one-hot on step s: the meta-gradient is the mask of the
    # query pass after step s, which differs between the steps.
    learner = identity_dropout_learner(first_order=True)
    batch = unit_tasks()
    after = [learner.meta_gradients(batch, msl_weights=weights)[0][0].numpy()[:2]
             for weights in ([1.0, 0.0], [0.0, 1.0])]
    assert not np.array_equal(*after)


def test_anil_draws_a_mask_per_inner_step_whether_or_not_features_are_cached():
    # The body (with the dropout) must not run once for all steps: caching its features,
    # a speed knob, would hold one mask for every step (and draw it unseeded, i.e. none).
    def anil(cache):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((UNITS,)),
            keras.layers.Dense(UNITS, use_bias=False, kernel_initializer="identity"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(UNITS, use_bias=False, kernel_initializer="identity")])
        learner = MetaLearner(model, _sum_of_outputs, inner_lr=1.0, inner_steps=2,
                              adapt="head")
        return learner.use_plan(ExecutionPlan(task_parallelism="loop",
                                              cache_body_features=cache))

    ones = np.ones((2, 1, UNITS), np.float32)  # every unit's mask shows
    batch = (ones, ones * 0, ones, ones * 0)
    cached, _ = anil(True).meta_gradients(batch)
    learner = anil(False)
    whole, _ = learner.meta_gradients(batch)
    for got, want in zip(cached, whole):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    learner.optimizer.iterations.assign(7)  # masks drawn: another iteration, others
    assert not np.array_equal(learner.meta_gradients(batch)[0][0].numpy(), whole[0].numpy())


@pytest.mark.parametrize("mode", ["vectorized", "map"])
def test_every_per_task_mapping_draws_the_loop_s_masks(mode):
    # pfor has no vectorised kernel for stateless random ops and falls back to a loop: the
    # per-task seeds must still reach each task.
    batch = unit_tasks(3)
    want = reptile_masks(identity_dropout_learner("loop"), batch)
    assert np.array_equal(reptile_masks(identity_dropout_learner(mode), batch), want)


@pytest.mark.parametrize("mode", ["vectorized", "map", "accumulate"])
def test_every_mapping_gives_the_loop_s_meta_gradients(mode):
    batch = unit_tasks(4)
    want, _ = identity_dropout_learner("loop", inner_steps=1).meta_gradients(batch)
    got, _ = identity_dropout_learner(mode, inner_steps=1).meta_gradients(batch)
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())


def _expected_mask(learner, shape, iteration, task, forward_pass, rate):
    """The mask of the forward pass ``forward_pass`` of task ``task`` at ``iteration``, by
    Keras' own Dropout fed the documented seed: the layer's seed state with (iteration,
    0), then the task, then the pass folded in, and the layer's place (0)."""
    def fold(seed, value):
        return tf.random.experimental.stateless_fold_in(seed, tf.constant(value, tf.int64))

    pass_seed = fold(fold(tf.constant([iteration, 0], tf.int64), task), forward_pass)
    layer = next(x for x in learner.model.layers if isinstance(x, keras.layers.Dropout))
    state = layer.seed_generator.state.value
    for value in (pass_seed[0], pass_seed[1], 0):
        state = fold(state, value)
    probe = keras.layers.Dropout(rate)
    probe.build(shape)
    with keras.StatelessScope(state_mapping=[(probe.seed_generator.state, state)]):
        return probe(tf.ones(shape), training=True).numpy()


def test_one_inner_step_of_a_linear_model_is_the_hand_computed_step_for_its_mask():
    # f(x) = (x ⊙ m) w, mse: w' = w − α (2/K) (x ⊙ m)ᵀ ((x ⊙ m) w − y), m the support pass's.
    keras.utils.set_random_seed(1)
    k, d, rate, alpha = 5, 6, 0.5, 0.1
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dropout(rate),
                              keras.layers.Dense(1, use_bias=False)])
    learner = MetaLearner(model, losses.mse, inner_lr=alpha, inner_steps=1).use_plan(
        ExecutionPlan(task_parallelism="loop"))
    learner.optimizer.iterations.assign(3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, k, d)).astype(np.float32)
    y = rng.normal(size=(1, k, 1)).astype(np.float32)
    grads, _ = learner.reptile_gradients((x, y, x, y))  # θ − θ' (one task)
    w = model.trainable_variables[0].numpy()
    mask = _expected_mask(learner, (k, d), 3, 0, 0, rate)
    assert set(np.unique(mask)) == {0.0, 1 / (1 - rate)}
    dropped = x[0] * mask
    want = alpha * (2 / k) * dropped.T @ (dropped @ w - y[0])
    np.testing.assert_allclose(grads[0].numpy(), want, rtol=1e-5, atol=1e-6)


def test_second_order_meta_gradient_matches_finite_differences_with_the_seed_fixed():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, activation="tanh"),
                              keras.layers.Dropout(0.4), keras.layers.Dense(1)])
    learner = MetaLearner(model, losses.mse, inner_lr=0.3, inner_steps=2).use_plan(
        ExecutionPlan(task_parallelism="loop"))
    rng = np.random.default_rng(3)
    batch = tuple(rng.normal(size=shape).astype(np.float32)
                  for shape in [(1, 4, 3), (1, 4, 1), (1, 6, 3), (1, 6, 1)])
    step = tf.function(lambda b: learner.meta_gradients(b), autograph=False)
    grads, metrics = step(batch)
    eps = 1e-3
    for variable, grad in zip(model.trainable_variables, grads):
        flat = variable.numpy().reshape(-1)
        numeric = np.zeros_like(flat)
        for i in range(flat.size):
            values = []
            for sign in (1, -1):
                moved = flat.copy()
                moved[i] += sign * eps
                variable.assign(moved.reshape(variable.shape))
                values.append(float(step(batch)[1]["post_loss"]))
            variable.assign(flat.reshape(variable.shape))
            numeric[i] = (values[0] - values[1]) / (2 * eps)
        np.testing.assert_allclose(grad.numpy().reshape(-1), numeric, rtol=2e-2, atol=2e-3)
    assert float(step(batch)[1]["post_loss"]) == float(metrics["post_loss"])


def _with_and_without_dropout():
    """A batch-norm net with Dropout and the same net, same weights, without it."""
    keras.utils.set_random_seed(4)

    def net(dropout):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                                 keras.layers.BatchNormalization(), keras.layers.ReLU()]
                                + ([keras.layers.Dropout(0.5)] if dropout else [])
                                + [keras.layers.Dense(3)])

    noisy, plain = net(True), net(False)
    plain.set_weights(noisy.get_weights()[:len(plain.get_weights())])
    make = lambda m: MetaLearner(m, losses.summed_xent(2), inner_lr=0.5,  # noqa: E731
                                 inner_steps=2)
    rng = np.random.default_rng(5)
    batch = (rng.normal(size=(2, 6, 4)).astype(np.float32),
             rng.integers(0, 3, size=(2, 6)).astype(np.int32),
             rng.normal(size=(2, 6, 4)).astype(np.float32),
             rng.integers(0, 3, size=(2, 6)).astype(np.int32))
    return make(noisy), make(plain), batch


def test_evaluation_adaptation_and_prediction_run_without_dropout_on_batch_statistics():
    noisy, plain, batch = _with_and_without_dropout()
    want = plain.evaluate_batch(batch, 3)["loss"].numpy()
    np.testing.assert_allclose(noisy.evaluate_batch(batch, 3)["loss"].numpy(), want, rtol=1e-5)
    fast = noisy.adapt(batch[0][0], batch[1][0], num_steps=2)
    for got, expected in zip(fast, plain.adapt(batch[0][0], batch[1][0], num_steps=2)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(noisy.predict(batch[2][0], fast).numpy(),
                               plain.predict(batch[2][0], fast).numpy(), rtol=1e-5, atol=1e-6)
    # Batch statistics, not the (never updated) moving ones of inference mode.
    inference = plain.model(batch[2][0], training=False).numpy()
    assert not np.allclose(plain.predict(batch[2][0]).numpy(), inference, atol=1e-3)


def test_meta_training_still_draws_after_an_evaluation_was_traced():
    # Evaluation switches the layers off while it runs (traces); training's graph keeps them.
    learner = identity_dropout_learner()
    batch = unit_tasks()
    before = reptile_masks(learner, batch)
    learner.evaluate_batch(batch, 2)
    learner.predict(batch[0][0])
    assert learner.model.layers[-1].rate == 0.5
    assert np.array_equal(reptile_masks(learner, batch), before)


def test_export_adapts_and_predicts_as_the_learner_without_dropout(tmp_path):
    noisy, plain, batch = _with_and_without_dropout()
    noisy.train_step(batch)
    plain.model.set_weights(noisy.model.get_weights())  # (a seed state is no weight)
    support_x, support_y, query_x = batch[0][0], batch[1][0], batch[2][0]
    want = noisy.predict(query_x, noisy.adapt(support_x, support_y, num_steps=3)).numpy()
    without = plain.predict(query_x, plain.adapt(support_x, support_y, num_steps=3)).numpy()
    np.testing.assert_allclose(want, without, rtol=1e-5, atol=1e-6)
    loaded = tf.saved_model.load(noisy.export(str(tmp_path / "export"), num_steps=3))
    got = loaded.adapt_and_predict(support_x, support_y, query_x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded.serving_default(query_x).numpy(),
                               plain.predict(query_x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_resumed_run_draws_the_masks_of_an_uninterrupted_one(tmp_path):
    # The seed is the meta-optimiser's step count, restored with the checkpoint: a count
    # of the learner's own, restarting at 0, would draw iteration 0's masks again.
    from tf_maml import SinusoidTasks

    def fit(run, iterations):
        learner = identity_dropout_learner()
        learner.model.layers[0].kernel.assign(np.full((UNITS, UNITS), 0.1, np.float32))
        learner.fit(tasks, iterations=iterations, meta_batch_size=2, log_interval=None,
                    run_dir=str(tmp_path / run), log=lambda *_: None)
        return learner.model.get_weights()[0]

    tasks = SinusoidTasks(num_support=2, num_query=2)
    tasks.sample_batch = lambda count, rng: unit_tasks(count)
    uninterrupted = fit("once", 3)
    fit("twice", 2)
    np.testing.assert_array_equal(fit("twice", 3), uninterrupted)


def test_batched_mapping_refuses_a_dropout_model_by_name_and_auto_picks_another():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3),
                              keras.layers.SpatialDropout2D(0.5), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    learner = MetaLearner(model, losses.summed_xent(1))
    batch = tuple(np.zeros(shape, np.float32) for shape in
                  [(2, 2, 6, 6, 1), (2, 2), (2, 2, 6, 6, 1), (2, 2)])
    assert "batched" not in learner.task_mapping(batch)
    with pytest.raises(ValueError, match="spatial_dropout2d.*random numbers.*"
                                         "task_parallelism='auto'"):
        learner.use_plan(ExecutionPlan(task_parallelism="batched"))


def test_the_baselines_refuse_dropout_by_name():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4),
                              keras.layers.Dropout(0.3, name="drop"), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="random numbers.*drop.*MetaLearner supports"):
        Classifier(model)
