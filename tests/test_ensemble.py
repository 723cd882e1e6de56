"""The ensemble of a run's best checkpoints (MAML++'s test protocol, tf_maml/ensemble.py):
its numbers against a hand computation, its choice against known validation accuracies,
and its round trip through the zoo."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tf_maml import ensemble, losses, options, zoo
from tf_maml import evaluate as evaluate_lib
from tf_maml.api import MetaLearner
from tf_maml.checkpoint import learner_checkpointer

SUPPORT, QUERY = 4, 6


class LinearTasks:
    """2-class tasks of 2-d points, labelled by ``rule(x)``."""

    def __init__(self, rule):
        self.rule = rule

    def sample_batch(self, meta_batch_size, rng):
        x = rng.normal(size=(meta_batch_size, SUPPORT + QUERY, 2)).astype(np.float32)
        y = self.rule(x).astype(np.int32)
        return x[:, :SUPPORT], y[:, :SUPPORT], x[:, SUPPORT:], y[:, SUPPORT:]


def _learner(alpha=0.5):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
    return MetaLearner(model, losses.mean_xent, inner_lr=alpha, inner_steps=1,
                       objective=options.LastStep(losses.accuracy))


def _save(learner, run_dir, weights: dict[int, np.ndarray]):
    checkpointer = learner_checkpointer(learner, str(run_dir))
    for iteration, w in weights.items():
        learner.model.trainable_variables[0].assign(w)
        checkpointer.save(iteration)
    return str(run_dir)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_the_ensemble_averages_the_adapted_logits_of_its_members(tmp_path):
    """Two linear members, one inner step each: accuracy and loss of the averaged logits at
    steps 0 and 1, against the closed form of softmax regression's gradient step."""
    alpha = 0.5
    learner = _learner(alpha)
    members = {1000: np.array([[2.0, -1.0], [0.5, 0.3]], np.float32),
               2000: np.array([[-0.4, 0.2], [1.5, -2.0]], np.float32)}
    run_dir = _save(learner, tmp_path, members)
    source = LinearTasks(lambda x: x[..., 0] + 0.3 * x[..., 1] > 0)
    n = 12
    out = ensemble.evaluate(learner, run_dir, [1000, 2000], source, n, 1, seed=3,
                            batch_size=5)

    tasks = evaluate_lib.sample_tasks(source, n, 3)
    for t, (sx, sy, qx, qy) in enumerate(tasks):
        sx, sy, qx, qy = sx[0], sy[0], qx[0], qy[0]
        logits = {0: 0.0, 1: 0.0}
        for w in members.values():
            # d(mean CE)/dW = Xᵀ(softmax(XW) − onehot(y)) / n
            grad = sx.T @ (_softmax(sx @ w) - np.eye(2)[sy]) / len(sy)
            logits[0] = logits[0] + qx @ w / 2
            logits[1] = logits[1] + qx @ (w - alpha * grad) / 2
        for step in (0, 1):
            z = logits[step]
            assert out["metric"][t, step] == pytest.approx(np.mean(z.argmax(-1) == qy))
            expected_loss = np.mean(-np.log(_softmax(z)[np.arange(len(qy)), qy]))
            assert out["loss"][t, step] == pytest.approx(expected_loss, rel=1e-5)


def test_members_are_the_best_by_validation_accuracy_and_the_choice_is_reused(
        tmp_path, monkeypatch):
    """Candidates whose validation accuracy is 1, 0 and about 1/2 by construction: an
    ensemble of two takes the first and the third; ensemble.json records it, and a second
    selection reads it instead of scoring again, until a newer checkpoint appears."""
    learner = _learner()
    good = np.array([[-1.0, 1.0], [0.0, 0.0]], np.float32)  # class 1 iff x0 > 0
    weights = {1000: good, 2000: -good, 3000: np.array([[0, 0], [-1, 1]], np.float32)}
    run_dir = _save(learner, tmp_path, weights)
    val = LinearTasks(lambda x: x[..., 0] > 0)
    chosen = ensemble.select(learner, run_dir, val, size=2, num_tasks=20, num_steps=0,
                             batch_size=8, log=lambda _: None)
    assert chosen == [1000, 3000]
    record = json.loads((tmp_path / "ensemble.json").read_text())
    scores = {c["iteration"]: c["score"] for c in record["candidates"]}
    tasks = evaluate_lib.sample_tasks(val, 20, ensemble.VALIDATION_SEED)
    third = np.mean([np.mean((t[2][0] @ weights[3000]).argmax(-1) == t[3][0]) for t in tasks])
    assert scores[1000] == pytest.approx(1.0) and scores[2000] == pytest.approx(0.0)
    assert scores[3000] == pytest.approx(third) and 0 < third < 1

    def no_scoring(*args, **kwargs):
        raise AssertionError("the recorded choice should have been reused")

    monkeypatch.setattr(evaluate_lib, "evaluate", no_scoring)
    assert ensemble.select(learner, run_dir, val, size=2, num_tasks=20, num_steps=0,
                           log=lambda _: None) == [1000, 3000]
    _save(learner, tmp_path, {4000: good})
    with pytest.raises(AssertionError, match="reused"):
        ensemble.select(learner, run_dir, val, size=2, num_tasks=20, num_steps=0,
                        log=lambda _: None)


def test_an_unreadable_candidate_is_left_out_with_a_warning(tmp_path):
    learner = _learner()
    good = np.array([[-1.0, 1.0], [0.0, 0.0]], np.float32)
    run_dir = _save(learner, tmp_path, {1000: -good, 2000: good, 3000: 0.5 * good})
    data = tmp_path / "model-2000.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:8])  # truncated, as by a full disk
    lines = []
    chosen = ensemble.select(learner, run_dir, LinearTasks(lambda x: x[..., 0] > 0),
                             size=2, num_tasks=10, num_steps=0, log=lines.append)
    assert chosen == [3000, 1000]
    assert any("WARNING" in line and "model-2000" in line for line in lines)


def test_a_reused_choice_of_fewer_members_says_how_many(tmp_path, monkeypatch):
    # Read back from ensemble.json, an ensemble of 3 asked of two checkpoints said
    # "Ensemble of 3"; the first selection had warned that it has 2.
    learner = _learner()
    good = np.array([[-1.0, 1.0], [0.0, 0.0]], np.float32)
    run_dir = _save(learner, tmp_path, {1000: good, 2000: -good})
    val = LinearTasks(lambda x: x[..., 0] > 0)
    first, again = [], []
    assert ensemble.select(learner, run_dir, val, size=3, num_tasks=4, num_steps=0,
                           log=first.append) == [1000, 2000]
    monkeypatch.setattr(evaluate_lib, "evaluate", lambda *a, **k: pytest.fail("scored"))
    assert ensemble.select(learner, run_dir, val, size=3, num_tasks=4, num_steps=0,
                           log=again.append) == [1000, 2000]
    assert "Ensemble of 2: iterations 1000, 2000" in first
    assert again == ["Ensemble of 2 from ensemble.json (3 asked, the run had no more "
                     "candidates): iterations 1000, 2000"]


def _cli(*args):
    """tf-maml's console entry in this process (training, evaluation, --ensemble)."""
    from test_bad_inputs import cli

    run = cli(*args)
    assert run.code == 0, run.out + run.err
    return run.out + run.err


def test_an_ensemble_evaluated_from_the_zoo_alone_gives_the_same_numbers(tmp_path,
                                                                         monkeypatch):
    """Train (3 checkpoints), evaluate --ensemble=2, publish to a zoo folder (the members'
    weights and ensemble.json), restore that into an empty run directory and evaluate
    again: the same members, read from ensemble.json, and the same per-task numbers."""
    from tf_maml import train as train_lib

    monkeypatch.setattr(train_lib, "SAVE_INTERVAL", 20)  # checkpoints at 20, 40 and 60
    run_flags = ["--datasource=sinusoid", "--metatrain_iterations=60",
                 "--meta_batch_size=4", "--norm=None", "--update_batch_size=5",
                 "--num_test_tasks=20", "--test_num_updates=2"]
    logs = f"--logdir={tmp_path / 'logs'}"
    _cli(*run_flags, logs, "--test_after_train=False")
    (run_dir,) = (tmp_path / "logs").iterdir()
    first = _cli(*run_flags, logs, "--train=False", "--ensemble=2")
    assert "candidate model-20" in first
    result = "test_ubs5_stepsize0.001_ensemble2.npy"
    members = [m["iteration"] for m in
               json.loads((run_dir / "ensemble.json").read_text())["members"]]
    assert len(members) == 2

    zoo_dir = tmp_path / "zoo" / "row"
    assert zoo.publish(str(run_dir), str(zoo_dir), finished=True, paths={}, machine="test",
                       log=lambda _: None)
    assert sorted(zoo.checkpoint_iterations(str(zoo_dir))) == sorted({60, *members})
    assert zoo.ensemble_members(str(zoo_dir)) == members

    fresh = tmp_path / "fresh" / run_dir.name
    assert zoo.restore(str(zoo_dir), str(fresh), log=lambda _: None)
    second = _cli(*run_flags, f"--logdir={tmp_path / 'fresh'}", "--train=False",
                  "--ensemble=2")
    assert "from ensemble.json" in second and "candidate" not in second
    np.testing.assert_array_equal(np.load(fresh / result), np.load(run_dir / result))


def test_flags_refuse_an_ensemble_where_there_is_no_run_to_choose_from():
    from tf_maml.config import Config, ConfigError

    with pytest.raises(ConfigError, match="--ensemble"):
        Config(datasource="sinusoid", ensemble=-1).validate()
    with pytest.raises(ConfigError, match="--ensemble.*init_checkpoint"):
        Config(datasource="miniimagenet", ensemble=5, init_checkpoint="x").validate()
    Config(datasource="sinusoid", ensemble=5).validate()


@pytest.mark.parametrize("steps", [0, 2])
def test_an_ensemble_of_one_is_that_model(tmp_path, steps):
    learner = _learner()
    run_dir = _save(learner, tmp_path, {1000: np.array([[1, -1], [2, 0.5]], np.float32)})
    source = LinearTasks(lambda x: x[..., 1] > 0)
    alone = evaluate_lib.evaluate(learner, source, 7, steps, seed=1, batch_size=4)
    one = ensemble.evaluate(learner, run_dir, [1000], source, 7, steps, seed=1,
                            batch_size=4)
    for key in ("loss", "metric"):
        np.testing.assert_allclose(one[key], alone[key], rtol=1e-6)


def test_the_pool_is_every_epochs_validation_and_keeps_the_best_checkpoints(
        tmp_path, monkeypatch):
    """MAML++ validates after every epoch of 500 iterations and ensembles the top 5 of all
    of them. A fake validation sequence over 30 epochs whose top 5 is known (three of them
    older than the last 10 checkpoints): every score is recorded, the top 5's checkpoints
    survive the usual pruning beside the newest 10, and the ensemble is that top 5 without
    scoring anything again; a resume forgets the scores after its checkpoint."""
    from tf_maml.callbacks import CheckpointSaver

    learner = _learner()
    checkpointer = learner_checkpointer(learner, str(tmp_path))
    epochs = range(1, 31)
    best = {2: 0.9, 5: 0.95, 9: 0.8, 17: 0.85, 28: 0.99}  # epoch -> score, all others lower
    scores = {e: best.get(e, 0.5 - 0.005 * e) for e in epochs}
    top5 = [500 * e for e in sorted(best, key=best.get, reverse=True)]
    fake = iter(scores[e] for e in epochs)
    pool = ensemble.Pool(checkpointer, lambda: next(fake), size=5, num_tasks=20, num_steps=1,
                         log=lambda _: None)
    saver = CheckpointSaver(checkpointer, 1000, log=lambda _: None)
    pool.on_train_begin(learner, 0, 15000)
    for iteration in range(500, 15001, 500):
        learner.model.trainable_variables[0].assign(np.full((2, 2), iteration, np.float32))
        for callback in (pool, saver):
            callback.on_step_end(iteration, {}, False)

    record = json.loads((tmp_path / ensemble.POOL_NAME).read_text())
    assert [(m["iteration"], m["score"]) for m in record["validations"]] == [
        (500 * e, pytest.approx(scores[e])) for e in epochs]
    kept = {int(p.name.split("-")[1].split(".")[0]) for p in tmp_path.glob("model-*.index")}
    # Saved: every 1000 iterations, and each epoch on entering the top 5 (by hand: epochs
    # 1, 3, 5, 9 and 17 at 500-iteration boundaries); pruned to the newest 10 and the top 5.
    saved = set(range(1000, 15001, 1000)) | {500, 1500, 2500, 4500, 8500}
    assert kept == set(sorted(saved)[-10:]) | set(top5)

    def no_scoring(*args, **kwargs):
        raise AssertionError("the pool's validations should have been used")

    monkeypatch.setattr(evaluate_lib, "evaluate", no_scoring)
    assert ensemble.select(learner, str(tmp_path), None, size=5, num_tasks=20, num_steps=1,
                           log=lambda _: None) == top5
    # A resume from iteration 10000 drops the validations after it, keeping the best before.
    resumed = ensemble.Pool(checkpointer, lambda: 0.0, size=5, num_tasks=20, num_steps=1)
    resumed.on_train_begin(learner, 10000, 15000)
    assert [m["iteration"] for m in resumed.scored] == list(range(500, 10001, 500))
    assert checkpointer.keep == {500, 1000, 2500, 4500, 8500}


@pytest.mark.parametrize("garbled", ['{"settings": {"size": 2', '[1, 2]',
                                     '{"validations": [{"iter": 500}]}'],
                         ids=["cut-short", "a-list", "no-iteration"])
def test_a_garbled_pool_record_is_refused_and_no_checkpoint_is_deleted(tmp_path, garbled):
    # Read as empty, the pool kept no checkpoint: the next save pruned its best ones
    # (older than the newest 10) without a word. An entry without its iteration was a
    # KeyError.
    import os

    from tf_maml.rundir import RunDirError

    learner = _learner()
    checkpointer = learner_checkpointer(learner, str(tmp_path))
    pool = ensemble.Pool(checkpointer, lambda: 1.0, size=1, num_tasks=4, num_steps=1,
                         interval=1, log=lambda _: None)
    pool.on_train_begin(learner, 0, 12)
    for iteration in range(1, 13):  # the first is the best; 2..12 are 11 more checkpoints
        pool.on_step_end(iteration, {}, False)
        pool.score_fn = lambda: 0.0
        checkpointer.save(iteration)
    assert os.path.exists(checkpointer.path_for(1) + ".index")  # kept beyond the newest 10
    (tmp_path / ensemble.POOL_NAME).write_text(garbled)
    resumed = ensemble.Pool(learner_checkpointer(learner, str(tmp_path)), lambda: 0.0, size=1,
                            num_tasks=4, num_steps=1, interval=1, log=lambda _: None)
    with pytest.raises(RunDirError, match=r"ensemble_pool\.json, the validation scores of the "
                       r"ensemble's pool, (cannot be read|holds validations).* the best "
                       r"checkpoints it keeps could not be told from those that age out, and "
                       r"would be deleted\. Fix it .*The checkpoints are intact\.$"):
        resumed.on_train_begin(learner, 12, 20)
    assert os.path.exists(checkpointer.path_for(1) + ".index")
    assert (tmp_path / ensemble.POOL_NAME).read_text() == garbled


def test_training_with_an_ensemble_validates_every_epoch(tmp_path):
    """--ensemble from the command line's run: validations at 500 and 1000 on the seeded
    validation tasks, and the evaluation's ensemble chosen from them."""
    from tf_maml import runner
    from tf_maml.config import Config

    config = Config(datasource="sinusoid", metatrain_iterations=1000, meta_batch_size=2,
                    norm="None", update_batch_size=5, update_lr=0.01, num_test_tasks=8,
                    test_num_updates=1, ensemble=2, logdir=str(tmp_path),
                    autotune=False).validate()
    lines = []
    runner.run(config, log=lines.append)
    run_dir = tmp_path / config.exp_string()
    record = json.loads((run_dir / ensemble.POOL_NAME).read_text())
    assert [m["iteration"] for m in record["validations"]] == [500, 1000]
    chosen = json.loads((run_dir / "ensemble.json").read_text())["members"]
    assert sorted(m["iteration"] for m in chosen) == [500, 1000]
    assert any(f"validations of {ensemble.POOL_NAME}" in line for line in lines)
    assert not any("candidate model-" in line for line in lines)
