"""Autotuning (tf_maml/autotune.py) changes the speed, never a number: its candidates give
the per-task loop's meta-gradients, measuring touches no variable and draws no training
task, a run that autotuned trains exactly as the chosen plan set by hand does, and the
choice is cached per CPU in the run directory."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import five_way_batch, small_conv4

from tf_maml import autotune, losses, options, threads
from tf_maml.api import MetaLearner
from tf_maml.mapping import ExecutionPlan

TASKS = 4


class FiveWayTasks:
    """5-way 1-shot tasks of uniform 12x12 images, float32, drawn from the generator given."""

    def sample_batch(self, meta_batch_size, rng):
        sx, sy, qx, qy = five_way_batch(rng, tasks=meta_batch_size)
        return sx.astype("float32"), sy, qx.astype("float32"), qy


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Measure every run, briefly (speed is not what these tests check)."""
    monkeypatch.setattr(autotune, "MIN_ITERATIONS", 0)
    monkeypatch.setattr(autotune, "ROUNDS", 1)
    monkeypatch.setattr(autotune, "ROUND_SECONDS", 0.0)


def _learner(plan=None):
    import keras

    keras.utils.set_random_seed(3)
    learner = MetaLearner(small_conv4(), losses.summed_xent(1), inner_lr=0.1,
                          objective=options.LastStep(losses.accuracy))
    return learner if plan is None else learner.use_plan(plan)


def _one_task_per_chunk(timings):
    """A choice other than the rules' own: the 1-task chunks (the model path)."""
    return next(i for i, t in enumerate(timings) if t.mapping.startswith("accumulate (1 task/"))


def _batch(seed=0):
    return tuple(tf.constant(a) for a in FiveWayTasks().sample_batch(TASKS,
                                                                     np.random.default_rng(seed)))


@pytest.mark.usefixtures("float64")  # so that only the order of additions differs
def test_every_candidate_gives_the_loops_meta_gradients():
    learner = _learner()
    sx, sy, qx, qy = five_way_batch(np.random.default_rng(0), tasks=TASKS)
    batch = tuple(tf.constant(a) for a in (sx, sy, qx, qy))
    candidates = learner.plan.candidates(learner.model, batch)
    names = [p.describe(learner.model, batch) for p in candidates]
    assert len(candidates) >= 2 and len(set(names)) == len(names)
    assert any(n.startswith("accumulate (1 task/chunk") for n in names)
    want, _ = learner.meta_gradients(batch, plan=ExecutionPlan("loop"))
    for plan, name in zip(candidates, names):
        got, _ = learner.meta_gradients(batch, plan=plan)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=name)


def test_a_plan_set_by_hand_has_one_candidate():
    learner = _learner(ExecutionPlan("accumulate", tasks_per_chunk=2))
    assert len(learner.plan.candidates(learner.model, _batch())) == 1
    assert not autotune.wanted(learner)
    assert not autotune.wanted(_learner(ExecutionPlan(parallel_chunks=1)))
    assert not autotune.wanted(_learner(ExecutionPlan(autotune=False)))


def test_measuring_changes_no_variable():
    learner = _learner()
    learner.train_step(_batch(1))  # Adam's moments and step are not zero
    state = (learner.model.variables + learner.optimizer.variables
             + [learner.nonfinite_steps])
    before = [v.numpy().copy() for v in state]
    lines = []
    autotune.tune(learner, FiveWayTasks(), TASKS, seed=0, iterations_left=10**6,
                  log=lines.append)
    assert any(line.startswith("Plans timed on this CPU") for line in lines), lines
    for v, b in zip(state, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.name)


def _fit(learner, run_dir, iterations, lines):
    """fit, recording the support images of every batch a train step received."""
    seen = []
    step = learner.train_step

    def recording(batch, pretrain=False):
        seen.append(np.asarray(batch[0]))
        return step(batch, pretrain)

    learner.train_step = recording
    learner.fit(FiveWayTasks(), iterations, meta_batch_size=TASKS, seed=5,
                run_dir=str(run_dir), log_interval=None, log=lines.append)
    return seen


def test_autotuned_training_equals_the_chosen_plan_set_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "choose", _one_task_per_chunk)
    tuned, lines = _learner(), []
    tuned_batches = _fit(tuned, tmp_path / "tuned", 3, lines)
    assert any(line.startswith("Plan: accumulate (1 task/chunk") for line in lines), lines
    cores = threads.available_cores()
    by_hand = _learner(ExecutionPlan("accumulate", tasks_per_chunk=1,
                                     parallel_chunks=min(cores, TASKS)))
    hand_batches = _fit(by_hand, tmp_path / "hand", 3, [])
    # The same tasks reached the train steps: measuring drew none of the training stream.
    assert len(tuned_batches) == len(hand_batches) == 3
    for a, b in zip(tuned_batches, hand_batches):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(tuned.model.variables + tuned.optimizer.variables,
                    by_hand.model.variables + by_hand.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    # ... and the weights moved: the comparison is not between two untouched models.
    fresh = _learner()
    assert not np.allclose(fresh.model.variables[0].numpy(), tuned.model.variables[0].numpy())


def _plan_file(run_dir):
    with open(os.path.join(run_dir, autotune.PLAN_NAME)) as f:
        return json.load(f)


def _count_measures(monkeypatch):
    """Replaces the timing (tested above) by made-up speeds, the 1-task chunks fastest, and
    counts the calls: the cache is what these tests check."""
    calls = []

    def made_up(learner, batch, candidates, pretrain=False):
        calls.append(1)
        names = [p.describe(learner.model, batch) for p in candidates]
        return [autotune.Timing(n, 0.1 if n.startswith("accumulate (1 task/") else 0.2)
                for n in names], 1, 1

    monkeypatch.setattr(autotune, "measure", made_up)
    return calls


def test_a_resume_reads_the_cached_choice(tmp_path, monkeypatch):
    calls = _count_measures(monkeypatch)
    _fit(_learner(), tmp_path, 2, [])
    saved = _plan_file(tmp_path)
    assert saved["choice"]["mapping"].startswith("accumulate (1 task/chunk")
    assert saved["key"]["cpu"] == threads.cpu_identity()
    monkeypatch.setattr(autotune, "MIN_ITERATIONS", 1000)  # too short to measure: reads it
    resumed, lines = _learner(), []
    _fit(resumed, tmp_path, 4, lines)
    assert calls == [1]
    assert any("measured on this CPU before" in line for line in lines), lines
    assert resumed.plan.tasks_per_chunk == 1


def test_another_cpu_measures_again_and_says_so(tmp_path, monkeypatch):
    calls = _count_measures(monkeypatch)
    _fit(_learner(), tmp_path, 2, [])
    saved = _plan_file(tmp_path)
    saved["key"]["cpu"] = {"model": "AMD EPYC (family 25, model 1)", "isa": ["avx", "avx2"],
                           "cores": 2}
    with open(tmp_path / autotune.PLAN_NAME, "w") as f:
        json.dump(saved, f)
    lines = []
    _fit(_learner(), tmp_path, 4, lines)
    assert calls == [1, 1]
    notes = [line for line in lines if "another CPU" in line]
    assert len(notes) == 1 and "family 25" in notes[0] and "AVX2" in notes[0], lines
    assert _plan_file(tmp_path)["key"]["cpu"] == threads.cpu_identity()


def test_a_corrupt_cache_is_replaced_and_no_checkpoint_is_lost(tmp_path, monkeypatch):
    calls = _count_measures(monkeypatch)
    _fit(_learner(), tmp_path, 2, [])
    checkpoints = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)
                   if n.startswith("model-")}
    assert checkpoints
    (tmp_path / autotune.PLAN_NAME).write_text('{"key": {"cpu": ')
    lines = []
    _fit(_learner(), tmp_path, 4, lines)
    assert calls == [1, 1]
    warnings = [line for line in lines if "unreadable" in line]
    assert len(warnings) == 1 and autotune.PLAN_NAME in warnings[0], lines
    assert "measuring the plans again" in warnings[0]
    assert _plan_file(tmp_path)["choice"]["mapping"]
    for name, data in checkpoints.items():
        assert (tmp_path / name).read_bytes() == data


def test_a_short_run_does_not_measure(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "MIN_ITERATIONS", 1000)
    calls = _count_measures(monkeypatch)
    learner = _learner()
    _fit(learner, tmp_path, 2, [])
    assert calls == [] and not os.path.exists(tmp_path / autotune.PLAN_NAME)
    assert learner.plan == ExecutionPlan()
