"""The one training loop (tf_maml/train.py, tf_maml/callbacks.py) and the declared learner
protocols (tf_maml/protocols.py): the order of the hooks known by construction, the guard
against non-finite steps, and a learner that has only the members `Learner` declares
trained, checkpointed and resumed by the loop in a run directory."""

from __future__ import annotations

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_maml import baselines, losses, models, protocols, train
from tf_maml.callbacks import Callback, CheckpointSaver, CSVHistory, NonFiniteGuard
from tf_maml.checkpoint import learner_checkpointer
from tf_maml.learners import MetaLearner
from tf_maml.rl.training import build_learner

quiet = lambda line: None  # noqa: E731


class Counter(tf.Module):
    """An outer update's state: the number of steps taken."""

    def __init__(self):
        super().__init__(name="counter")
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps")


class MinimalLearner:
    """Exactly the members of protocols.Learner, nothing else: a one-weight model whose
    train step adds the batch to the weight (so the weight after steps 1..n is known)."""

    def __init__(self, applied=lambda batch: True):
        inputs = keras.Input((1,))
        self.model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False,
                                                            kernel_initializer="zeros")(inputs))
        self.optimizer = Counter()
        self.strategy = None
        self.applied = applied

    @property
    def extra_variables(self):
        return {}

    def train_step(self, batch, pretrain=False):
        self.model.trainable_variables[0].assign_add([[float(batch)]])
        self.optimizer.steps.assign_add(1)
        return {"value": float(batch), "pretrain": pretrain, "applied": self.applied(batch)}


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, learner, start, total):
        self.calls.append(("begin", start, total))

    def on_step_begin(self, iteration):
        self.calls.append(("step", iteration))

    def on_step_end(self, iteration, metrics, pretrain):
        self.calls.append(("end", iteration, metrics["value"], pretrain))

    def on_interrupt(self, iteration):
        self.calls.append(("interrupt", iteration))

    def on_error(self, iteration):
        self.calls.append(("error", iteration))

    def on_train_end(self, iteration):
        self.calls.append(("train_end", iteration))


def test_the_loop_calls_the_hooks_in_order_and_pretrains_first():
    recorder = Recorder()
    done = train.fit(MinimalLearner(), iter([10, 20, 30]), total=5, start=2,
                     callbacks=[recorder], pretrain_iterations=3)
    assert done == 5
    assert recorder.calls == [("begin", 2, 5), ("step", 3), ("end", 3, 10.0, True),
                              ("step", 4), ("end", 4, 20.0, False), ("step", 5),
                              ("end", 5, 30.0, False), ("train_end", 5)]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_stop_during_the_final_save_waits_for_it(signum):
    """Ctrl-C (or a scheduler's SIGTERM, as tf-maml-reproduce sends at its deadline) arriving
    while the end of training saves: the save used to be cut short (SIGTERM killed the
    process), losing every iteration since the last periodic checkpoint. Now the save
    completes, then the stop is honoured."""
    import signal

    class StoppedDuringTheSave(Callback):
        def on_train_end(self, iteration):
            signal.raise_signal(getattr(signal, signum))

    recorder = Recorder()  # after the stop: the checkpoint saver's place
    previous = signal.signal(signal.SIGTERM, lambda *a: pytest.fail("killed during the save"))
    try:
        with pytest.raises(KeyboardInterrupt):
            train.fit(MinimalLearner(), iter([1, 2]), total=2,
                      callbacks=[StoppedDuringTheSave(), recorder])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert recorder.calls[-1] == ("train_end", 2)


def test_the_guard_stops_at_its_check_naming_the_first_step_not_applied():
    learner = MinimalLearner(applied=lambda batch: batch != 3)
    recorder = Recorder()
    with pytest.raises(train.NonFiniteError, match=r"iteration 3: that step was not applied\. "
                                                   r"Last good checkpoint: none yet"):
        train.fit(learner, iter(range(1, 10)), total=9,
                  callbacks=[NonFiniteGuard("stop", interval=4), recorder])
    # Steps 1-4 ran (the check is at 4); the guard comes first, so the others never saw 4.
    assert float(learner.model.trainable_variables[0].numpy()[0, 0]) == 1 + 2 + 3 + 4
    assert recorder.calls[-2:] == [("step", 4), ("error", 4)]
    lines = []
    learner = MinimalLearner(applied=lambda batch: batch != 3)
    assert train.fit(learner, iter(range(1, 10)), total=9,
                     callbacks=[NonFiniteGuard("skip", interval=4, log=lines.append)]) == 9
    assert len(lines) == 1 and lines[0].startswith("WARNING: Non-finite loss or meta-gradient "
                                                   "at iteration 3")
    with pytest.raises(ValueError, match="nan_policy must be 'stop' or 'skip', got 'ignore'"):
        NonFiniteGuard("ignore")


class ValueCSV(CSVHistory):
    def fields(self, iteration, metrics, pretrain):
        return {"iteration": iteration, "value": metrics["value"]}


def test_a_learner_with_only_the_protocol_trains_checkpoints_and_resumes(tmp_path):
    """The loop and the checkpoints use nothing beyond protocols.Learner: a learner with
    only those members trains 4 steps in a run directory (checkpoint every 2), and a fresh
    one resumes from model-4 to 6, seeing the batches of iterations 5 and 6."""
    run_dir = str(tmp_path)

    def run(learner, total):
        checkpointer = learner_checkpointer(learner, run_dir, optimizer_key="counter")
        return train.fit_in_run_dir(
            learner, checkpointer, lambda start: iter(range(start + 1, total + 1)), total,
            lambda start: [ValueCSV(os.path.join(run_dir, "log.csv"), ["iteration", "value"],
                                    1), CheckpointSaver(checkpointer, 2, quiet)],
            log=quiet)

    first = MinimalLearner()
    assert isinstance(first, protocols.Learner)
    assert run(first, 4) == 4
    assert sorted(f for f in os.listdir(run_dir) if f.endswith(".index")) == [
        "model-2.index", "model-4.index"]
    second = MinimalLearner()
    assert run(second, 6) == 6
    assert float(second.model.trainable_variables[0].numpy()[0, 0]) == sum(range(1, 7))
    assert int(second.optimizer.steps.numpy()) == 6
    with open(os.path.join(run_dir, "log.csv")) as f:
        rows = [(int(r["iteration"]), float(r["value"])) for r in csv.DictReader(f)]
    assert rows == [(i, float(i)) for i in range(1, 7)]  # each iteration once


def test_the_three_learners_implement_the_protocols_they_are_trained_through():
    meta = MetaLearner(models.fc_net((1,), (4,), 1, norm="None"), losses.mse)
    classifier = baselines.Classifier(baselines.build_classifier(num_filters=2))
    rl = build_learner(num_trajectories=2)
    assert isinstance(meta, protocols.TunableLearner)
    assert isinstance(classifier, protocols.TaskLearner)
    assert not isinstance(classifier, protocols.TunableLearner)  # no plan: not autotuned
    assert isinstance(rl, protocols.Learner) and not isinstance(rl, protocols.TaskLearner)
    # Declared, not faked: no member of MetaLearner's engine pretended on the classifier.
    assert not any(hasattr(classifier, name) for name in ("inner_lrs", "plan", "inner_steps"))
    assert classifier.extra_variables == {} and rl.extra_variables == {}
    with pytest.raises(TypeError, match=r"train_step\(\(tasks, rng\)\)"):
        rl.train_step(np.zeros((2, 2), np.float32), np.random.default_rng(0))
