"""task_parallelism="accumulate" (tf_maml.mapping.accumulate: meta-gradients summed task
chunk by task chunk in a tf.while_loop) against the per-task unrolled loop
(ExecutionPlan("loop")): meta-gradients and metrics (second order, first order,
pretrain, Meta-SGD, one task or several batched tasks per chunk), a training step, and the
chunk sizes "auto" picks. Finite differences: tests/test_meta_gradients.py."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_CONV_SHAPE, five_way_batch, small_conv4

from tf_maml import losses, options
from tf_maml.api import MetaLearner
from tf_maml.mapping import ExecutionPlan, batched
from tf_maml.mapping import plan as plan_lib
from tf_maml.mapping.accumulate import Accumulate
from tf_maml.models import conv4, fc_net

# float64: only the order of float additions differs from the loop, agreement ~1e-12.
RTOL, ATOL = 1e-9, 1e-12
TASKS = 3  # 1/3 is not a float32 number: a mean over tasks rounded to float32 would show

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def dense_regression():
    """A plain tanh MLP with the mse loss (regression, no metric)."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    return model, losses.mse, None


def conv_batch_norm():
    """conftest.small_conv4: strided conv4 with exact batch norm on 12x12 inputs."""
    return small_conv4(), losses.summed_xent(1), losses.accuracy


def dense_batch_norm():
    return fc_net((6,), (8,), 5, norm="batch_norm"), losses.summed_xent(1), losses.accuracy


NETS = {"dense_regression": dense_regression, "conv_batch_norm": conv_batch_norm,
        "dense_batch_norm": dense_batch_norm}


def _batch(name, seed, tasks=TASKS):
    rng = np.random.default_rng(seed)
    if name == "dense_regression":
        x = rng.uniform(-3, 3, size=(tasks, 10, 1))
        y = rng.uniform(0.5, 2, size=(tasks, 1, 1)) * np.sin(x - rng.uniform(size=(tasks, 1, 1)))
        return x[:, :5], y[:, :5], x[:, 5:], y[:, 5:]
    return five_way_batch(rng, SMALL_CONV_SHAPE if name == "conv_batch_norm" else (6,), tasks)


def _learners(name, **kwargs):
    """(accumulating learner, per-task loop reference) over the SAME model."""
    keras.utils.set_random_seed(3)
    model, loss_fn, metric_fn = NETS[name]()
    plan = ExecutionPlan("accumulate", tasks_per_chunk=kwargs.pop("tasks_per_chunk", None),
                         parallel_chunks=kwargs.pop("parallel_chunks", None))
    common = dict({"inner_lr": 0.3, "objective": options.LastStep(metric_fn)}, **kwargs)
    return (MetaLearner(model, loss_fn, **common).use_plan(plan),
            MetaLearner(model, loss_fn, **common).use_plan(ExecutionPlan("loop")))


def _chunking(learner, batch):
    """(tasks per chunk, whether a chunk runs batched, chunks at once) of the learner's
    meta-gradients, or None when they are not accumulated."""
    mapping = learner.plan.for_gradients(learner.model, batch)
    if not isinstance(mapping, Accumulate):
        return None
    return (mapping.tasks_per_chunk, isinstance(mapping.inner, batched.Batched),
            mapping.parallel_chunks)


def _flat(grads):
    return np.concatenate([np.asarray(g).ravel() for g in grads])


def _assert_same(got, expected, rtol=RTOL, atol=ATOL):
    (got_grads, got_metrics), (exp_grads, exp_metrics) = got, expected
    assert len(got_grads) == len(exp_grads)
    for g, e in zip(got_grads, exp_grads):
        assert g.shape == e.shape and g.dtype == e.dtype
    exp_flat = _flat(exp_grads)
    assert np.max(np.abs(exp_flat)) > 1e-3  # a vacuous all-zero comparison would pass
    np.testing.assert_allclose(_flat(got_grads), exp_flat, rtol=rtol,
                               atol=atol * np.max(np.abs(exp_flat)))
    assert set(got_metrics) == set(exp_metrics)  # same keys as every other mode
    for key in exp_metrics:
        assert got_metrics[key].shape == () and got_metrics[key].dtype == exp_metrics[key].dtype
        # accuracy is float32 in every mode: a mean of thirds rounds differently
        tol = rtol if got_metrics[key].dtype == tf.float64 else max(rtol, 1e-6)
        np.testing.assert_allclose(float(got_metrics[key]), float(exp_metrics[key]),
                                   rtol=tol, atol=atol)


def _graph(learner, batch, pretrain=False):
    """meta_gradients traced into a graph, as train_step runs it (a real tf.while_loop)."""
    batch = tuple(tf.constant(t) for t in batch)
    return tf.function(lambda b: learner.meta_gradients(b, pretrain=pretrain))(batch)


@pytest.mark.parametrize("parallel", [1, 2])
@pytest.mark.parametrize("name, first_order, steps, chunk, plan", [
    ("dense_regression", False, 2, None, (1, False)),
    ("conv_batch_norm", False, 2, 1, (1, False)),
    ("conv_batch_norm", False, 1, 2, (2, True)),
    ("conv_batch_norm", True, 2, 1, (1, False)),
    ("conv_batch_norm", True, 1, 2, (2, True)),
])
def test_meta_gradients_match_per_task_loop(name, first_order, steps, chunk, plan, parallel):
    # parallel: chunks run at once (while_loop parallel_iterations); every case has >= 2.
    acc, loop = _learners(name, inner_steps=steps, first_order=first_order,
                          tasks_per_chunk=chunk)
    acc.plan = dataclasses.replace(acc.plan, parallel_chunks=parallel)
    batch = _batch(name, 0, tasks=2 * chunk if chunk and chunk > 1 else TASKS)
    assert _chunking(acc, batch) == plan + (parallel,)
    _assert_same(_graph(acc, batch), loop.meta_gradients(batch))


def test_first_order_differs_from_second_order():
    # Guards the first-order rows above: stop_grad changes the meta-gradient here.
    acc, _ = _learners("conv_batch_norm", inner_steps=1, tasks_per_chunk=1)
    fo, _ = _learners("conv_batch_norm", inner_steps=1, tasks_per_chunk=1, first_order=True)
    batch = _batch("conv_batch_norm", 0, tasks=1)
    assert np.max(np.abs(_flat(_graph(acc, batch)[0]) - _flat(_graph(fo, batch)[0]))) > 1e-3


def test_pretrain_gradients_match_per_task_loop():
    acc, loop = _learners("conv_batch_norm", tasks_per_chunk=1)
    batch = _batch("conv_batch_norm", 1)
    _assert_same(_graph(acc, batch, pretrain=True), loop.meta_gradients(batch, pretrain=True))


def test_meta_sgd_and_adapted_norm_match_per_task_loop():
    # float32: MetaLearner creates the Meta-SGD learning rates as float32 variables.
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    acc, loop = _learners("dense_batch_norm", inner_steps=2, inner_lr=options.MetaSGD(0.3),
                          adapt="all+norm")
    rng = np.random.default_rng(2)
    for a, b in zip(acc.inner_lrs, loop.inner_lrs):
        value = rng.uniform(0.1, 0.5, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    batch = tuple(t.astype("float32") if t.dtype == np.float64 else t
                  for t in _batch("dense_batch_norm", 2))
    got = _graph(acc, batch)
    assert len(got[0]) == 2 * len(acc.model.trainable_variables)
    assert np.max(np.abs(_flat(got[0][len(acc.model.trainable_variables):]))) > 0
    _assert_same(got, loop.meta_gradients(batch), rtol=1e-4, atol=2e-5)


def test_unknown_number_of_tasks_runs_one_task_per_iteration():
    acc, loop = _learners("conv_batch_norm", inner_steps=1, parallel_chunks=2)
    batch = _batch("conv_batch_norm", 3)
    spec = tuple(tf.TensorSpec((None,) + t.shape[1:], tf.as_dtype(t.dtype)) for t in batch)
    assert _chunking(acc, spec) == (1, False, 2)
    fn = tf.function(lambda b: acc.meta_gradients(b), input_signature=(spec,))
    _assert_same(fn(tuple(tf.constant(t) for t in batch)), loop.meta_gradients(batch))


def test_train_step_updates_weights_like_the_loop():
    keras.utils.set_random_seed(4)
    model, loss_fn, metric_fn = dense_batch_norm()
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    kw = dict(inner_lr=0.3, inner_steps=2, objective=options.LastStep(metric_fn))
    acc = MetaLearner(model, loss_fn, **kw, meta_optimizer=options.adam(0.01)).use_plan(
        ExecutionPlan("accumulate", tasks_per_chunk=1))
    loop = MetaLearner(twin, loss_fn, **kw, meta_optimizer=options.adam(0.01)).use_plan(
        ExecutionPlan("loop"))
    before = [w.copy() for w in model.get_weights()]
    for seed in (5, 6):
        batch = _batch("dense_batch_norm", seed)
        out_acc, out_loop = acc.train_step(batch), loop.train_step(batch)
        assert set(out_acc) == set(out_loop)
        for key in out_loop:
            np.testing.assert_allclose(np.asarray(out_acc[key], "float64"),
                                       np.asarray(out_loop[key], "float64"),
                                       rtol=1e-9 if out_loop[key].dtype == tf.float64 else 1e-6)
    moved = max(np.max(np.abs(a - b)) for a, b in zip(model.get_weights(), before))
    assert moved > 1e-3
    # atol: the dense bias before batch norm has meta-gradient 0, i.e. rounding noise of
    # ~1e-14 that Adam turns into steps of ~1e-9 (lr * g / eps).
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("parallel, budget_name, expected", [
    (1, "accumulate_patch_budget", [16, 4]),  # one chunk at a time: big chunks
    (2, "parallel_chunk_patch_budget", [2, 1]),  # one chunk per core: cache-sized chunks
])
def test_chunk_sizes_chosen_by_auto_and_accumulate(parallel, budget_name, expected):
    defaults = ExecutionPlan()
    chunk_budget, budget = getattr(defaults, budget_name), defaults.batched_patch_budget
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    omniglot = conv4((28, 28, 1), 5, num_filters=64)

    def specs(tasks, support, query, shape=(28, 28, 1)):
        x = [tf.TensorSpec((tasks, n) + shape) for n in (support, query)]
        y = [tf.TensorSpec((tasks, n), tf.int32) for n in (support, query)]
        return x[0], y[0], x[1], y[1]

    def per_task(model, batch):
        return batched.patch_bytes(model, [(1,) + tuple(batch[0].shape[1:]),
                                           (1,) + tuple(batch[2].shape[1:])])

    auto = MetaLearner(omniglot, losses.summed_xent(1)).use_plan(
        ExecutionPlan(parallel_chunks=parallel))
    accumulate = MetaLearner(omniglot, losses.summed_xent(1)).use_plan(
        ExecutionPlan("accumulate", parallel_chunks=parallel))
    chunks = []
    for batch in (specs(32, 5, 5), specs(16, 20, 20)):  # Omniglot 5-way and 20-way
        tasks, size = batch[0].shape[0], per_task(omniglot, batch)
        assert size * tasks > chunk_budget
        chunk, use_batched, at_once = _chunking(auto, batch)
        assert tasks % chunk == 0 and chunk < tasks and at_once == parallel
        # one task per chunk runs through the model itself, more through the batched path
        assert use_batched == (chunk > 1)
        # the most tasks (dividing the meta-batch) whose patches fit the budget (or 1)
        assert chunk * size <= chunk_budget or chunk == 1
        assert all(d * size > chunk_budget for d in range(chunk + 1, tasks + 1) if tasks % d == 0)
        assert _chunking(accumulate, batch) == (chunk, use_batched, parallel)
        once = f", {parallel} at once" if parallel > 1 else ""
        assert auto.task_mapping(batch) == (f"accumulate ({chunk} task{'s' * (chunk > 1)}/chunk"
                                            f"{', batched' * use_batched}{once})")
        chunks.append(chunk)
    assert chunks == expected  # as the README says
    small = specs(2, 2, 2) if parallel > 1 else specs(2, 5, 5)
    # within the budget: auto maps every task in one batched pass
    assert per_task(omniglot, small) * 2 <= chunk_budget
    assert _chunking(auto, small) is None and auto.task_mapping(small) == "batched"
    assert _chunking(accumulate, small) == (2, True, min(parallel, 1))
    # MiniImageNet: one task's patches exceed the batched budget: one task per chunk,
    # through the model itself.
    mini = conv4((84, 84, 3), 5, num_filters=32, max_pool=True)
    batch = specs(4, 5, 75, (84, 84, 3))
    assert per_task(mini, batch) > budget
    mini_learner = MetaLearner(mini, losses.summed_xent(1)).use_plan(
        ExecutionPlan(parallel_chunks=parallel))
    assert _chunking(mini_learner, batch) == (1, False, parallel)
    # Dense nets stay on vectorized_map; the other explicit modes never accumulate.
    dense = fc_net((6,), (8,), 5, norm="batch_norm")
    assert _chunking(MetaLearner(dense, losses.summed_xent(1)), specs(4, 5, 5, (6,))) is None
    assert _chunking(MetaLearner(omniglot, losses.summed_xent(1)).use_plan(ExecutionPlan("map")),
                     specs(32, 5, 5)) is None


def test_default_parallel_chunks_is_one_per_core(monkeypatch):
    model, loss_fn, _ = conv_batch_norm()
    learner = MetaLearner(model, loss_fn).use_plan(ExecutionPlan("accumulate", tasks_per_chunk=1))
    batch = _batch("conv_batch_norm", 0, tasks=4)
    monkeypatch.setattr(plan_lib.threads_lib, "available_cores", lambda: 3)
    assert _chunking(learner, batch) == (1, False, 3)
    # never more than the chunks
    monkeypatch.setattr(plan_lib.threads_lib, "available_cores", lambda: 8)
    assert _chunking(learner, batch) == (1, False, 4)
    with pytest.raises(ValueError, match="parallel_chunks"):
        ExecutionPlan(parallel_chunks=0)


def test_bad_tasks_per_chunk_is_refused():
    model, loss_fn, _ = conv_batch_norm()
    with pytest.raises(ValueError, match="tasks_per_chunk"):
        ExecutionPlan("map", tasks_per_chunk=2)
    with pytest.raises(ValueError, match="tasks_per_chunk"):
        ExecutionPlan("accumulate", tasks_per_chunk=0)
    rnn = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="tf_maml.mapping.batched"):
        MetaLearner(rnn, losses.mse).use_plan(ExecutionPlan("accumulate", tasks_per_chunk=2))
    learner = MetaLearner(model, loss_fn).use_plan(ExecutionPlan("accumulate", tasks_per_chunk=2))
    with pytest.raises(ValueError, match="must divide"):
        learner.meta_gradients(_batch("conv_batch_norm", 0))
