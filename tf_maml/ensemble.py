"""MAML++'s test protocol: the ensemble of a run's N best checkpoints.

Antoniou et al. (ICLR 2019) report each MAML++ number as the ensemble of the five models
with the best validation accuracy: every model adapts to the test task on its own, their
query logits are averaged, and the average is scored. Their code validates after every
epoch of 500 iterations and ranks all epochs; a run trained with ``--ensemble=N`` does the
same (:class:`Pool`: every ``EPOCH`` iterations, ``num_tasks`` seeded validation tasks,
recorded in ``<run_dir>/ensemble_pool.json``; the checkpoints of the N best are kept), and
the top N of that record (ties: the later iteration) make the ensemble. A run without the
record (trained without ``--ensemble``) takes its candidates from the checkpoints it keeps
(the original's last ``MAX_TO_KEEP``), each scored here on the same seeded tasks.

The choice is written to ``<run_dir>/ensemble.json``: a second evaluation (or one from the
zoo, which keeps the members' weights) reuses it instead of scoring the candidates again.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from tf_maml import atomic, rundir
from tf_maml import evaluate as evaluate_lib
from tf_maml.callbacks import Callback
from tf_maml.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    checkpoint_iteration,
    learner_checkpointer,
)
from tf_maml.errors import check_count
from tf_maml.mapping.batched import per_task_values
from tf_maml.protocols import EnsembleLearner

# The validation tasks score the candidates with their own seed: not the test tasks'.
VALIDATION_SEED = 7
# MAML++'s epoch (`total_iter_per_epoch`): it validates, and saves a model, after each.
EPOCH = 500
POOL_NAME = "ensemble_pool.json"


def score(values: dict[str, np.ndarray], num_steps: int) -> float:
    """A candidate's validation score: the mean metric (accuracy) after ``num_steps`` steps,
    or the negative mean loss for a learner without a metric."""
    if "metric" in values:
        return float(np.mean(values["metric"][:, num_steps]))
    return -float(np.mean(values["loss"][:, num_steps]))


def _settings(size: int, num_tasks: int, num_steps: int) -> dict:
    return {"size": size, "val_tasks": num_tasks, "steps": num_steps, "seed": VALIDATION_SEED}


def _best(scored: list[dict], size: int) -> list[dict]:
    """The ``size`` best of ``scored`` ({"iteration", "score"}); ties: the later one."""
    return sorted(scored, key=lambda m: (m["score"], m["iteration"]), reverse=True)[:size]


class Pool(Callback):
    """MAML++'s pool of ensemble candidates during training: every ``EPOCH`` iterations the
    model is scored (``score_fn()``, the mean validation accuracy on the same seeded tasks
    each time), the score is added to ``<run_dir>/ensemble_pool.json``, and the checkpoints
    of the ``size`` best so far are saved and kept (``checkpointer.keep``) while the
    others age out as usual. A resumed run drops the scores after its checkpoint: they are
    scored again."""

    def __init__(self, checkpointer, score_fn, size: int, num_tasks: int, num_steps: int,
                 interval: int = EPOCH, log=print):
        self.checkpointer, self.score_fn, self.size = checkpointer, score_fn, size
        self.interval, self.log = interval, log
        self.path = os.path.join(checkpointer.run_dir, POOL_NAME)
        self.settings = _settings(size, num_tasks, num_steps)

    def on_train_begin(self, learner, start, total):
        recorded = self._recorded()
        same = recorded.get("settings") == self.settings
        self.scored = [m for m in recorded.get("validations", []) if same
                       and m["iteration"] <= start]
        self.checkpointer.keep = {m["iteration"] for m in _best(self.scored, self.size)}

    def _recorded(self) -> dict:
        """The pool's record ({} if there is none); a RunDirError, everything left as it
        is, if it cannot be read or its validations are not {iteration, score}: read as
        empty, the pool kept no checkpoint, and the next save deleted the best ones beyond
        the newest 10."""
        try:
            recorded = atomic.read_record(self.path) or {}
            validations = recorded.get("validations", [])
            if not isinstance(validations, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("iteration"), int)
                    and isinstance(m.get("score"), (int, float)) for m in validations):
                raise ValueError("holds validations that are not a list of {iteration, score}")
        except ValueError as err:
            raise rundir.RunDirError(
                f"{self.path}, the validation scores of the ensemble's pool, {err}: the best "
                "checkpoints it keeps could not be told from those that age out, and would be "
                "deleted. Fix it or restore it from a copy; or delete it to start the pool "
                "again (the checkpoints it kept then age out as usual). The checkpoints are "
                "intact."
            ) from None
        return recorded

    def on_step_end(self, iteration, metrics, pretrain):
        if iteration % self.interval or pretrain:
            return
        self.scored.append({"iteration": iteration, "score": float(self.score_fn())})
        with rundir.writing(self.checkpointer.run_dir, f"write {POOL_NAME}"):
            atomic.write(self.path, json.dumps(
                {"settings": self.settings, "validations": self.scored}, indent=1) + "\n")
        self.checkpointer.keep = {m["iteration"] for m in _best(self.scored, self.size)}
        self.log(f"Ensemble pool: validation score {self.scored[-1]['score']:.4f} at "
                 f"{iteration}; best {self.size}: iterations "
                 + ", ".join(str(i) for i in sorted(self.checkpointer.keep)))
        if iteration in self.checkpointer.keep:
            self.checkpointer.save(iteration)
        else:
            self.checkpointer.prune()


def training_pool(learner: EnsembleLearner, checkpointer, source, size: int, num_tasks: int,
                  num_steps: int, batch_size: int = 25, log=print) -> Pool:
    """The :class:`Pool` of a training run of ``learner``: every epoch, :func:`score` of
    ``num_tasks`` validation tasks of ``source`` (the ones :func:`select` uses, seeded
    :data:`VALIDATION_SEED`) after ``num_steps`` steps, ``batch_size`` tasks at a time."""
    def score_fn() -> float:
        values = evaluate_lib.evaluate(learner, source, num_tasks, num_steps,
                                       VALIDATION_SEED, batch_size=batch_size)
        return score(values, num_steps)

    return Pool(checkpointer, score_fn, size, num_tasks, num_steps, log=log)


def select(learner: EnsembleLearner, run_dir: str, val_source, size: int, num_tasks: int,
           num_steps: int, upto: int | None = None, batch_size: int = 25, log=print) -> list[int]:
    """The iterations of the ``size`` best checkpoints of ``run_dir`` at or before ``upto``
    (None: all), by :func:`score` on ``num_tasks`` validation tasks of ``val_source``
    (``sample_batch(n, rng)``, as for training): from the training's :class:`Pool` record
    if it has these settings, else scoring the checkpoints the run keeps. Recorded in
    ``run_dir/ensemble.json``. Leaves ``learner`` with the last candidate's weights."""
    # Else 0 chose no member (then evaluate's None / 0), -1 all but the worst, 2.5 a
    # TypeError of a slice.
    check_count("size", size, 1, "a whole number of checkpoints")
    checkpointer = learner_checkpointer(learner, run_dir)
    candidates = [checkpoint_iteration(p) for p in checkpointer.checkpoints]
    candidates = [i for i in candidates if upto is None or i <= upto]
    if not candidates:
        raise CheckpointError(f"no checkpoint in {checkpointer.run_dir} to build an ensemble "
                              "from: train first, or check `logdir`.")
    settings = _settings(size, num_tasks, num_steps)
    recorded = atomic.read_json(os.path.join(checkpointer.run_dir, rundir.ENSEMBLE_NAME))
    members = recorded.get("members", [])
    if (recorded.get("settings") == settings and members
            and all(m["iteration"] in candidates for m in members)
            and max(candidates) == recorded.get("latest")):
        fewer = f" ({size} asked, the run had no more candidates)" if len(members) < size \
            else ""
        log(f"Ensemble of {len(members)} from {rundir.ENSEMBLE_NAME}{fewer}: iterations "
            + ", ".join(str(m["iteration"]) for m in members))
        return [m["iteration"] for m in members]
    pool = atomic.read_json(os.path.join(checkpointer.run_dir, POOL_NAME))
    if pool.get("settings") == settings and pool.get("validations"):
        scored = [m for m in pool["validations"] if upto is None or m["iteration"] <= upto]
        missing = [m["iteration"] for m in _best(scored, size)
                   if m["iteration"] not in candidates]
        if missing:
            log(f"WARNING: no checkpoint of the validated iterations {missing} (in "
                f"{POOL_NAME}); they are not candidates.")
        log(f"Ensemble candidates: the {len(scored)} validations of {POOL_NAME}")
        return _record(checkpointer, settings, candidates,
                       [m for m in scored if m["iteration"] in candidates], size, log)
    if len(candidates) < size:
        log(f"WARNING: {len(candidates)} checkpoints for an ensemble of {size}: all of them "
            "make it.")
    scored = []
    for iteration in candidates:
        try:
            checkpointer.restore(checkpointer.path_for(iteration), expect_optimizer=False)
        except CorruptCheckpointError as err:
            log(f"WARNING: {err}; it is not a candidate.")
            continue
        values = evaluate_lib.evaluate(learner, val_source, num_tasks, num_steps,
                                       VALIDATION_SEED, batch_size=batch_size)
        scored.append({"iteration": iteration, "score": score(values, num_steps)})
        log(f"  candidate model-{iteration}: validation score {scored[-1]['score']:.4f} "
            f"({num_tasks} tasks, {num_steps} steps)")
    return _record(checkpointer, settings, candidates, scored, size, log)


def _record(checkpointer, settings: dict, candidates: list[int], scored: list[dict],
            size: int, log) -> list[int]:
    """The ``size`` best of ``scored``, written to ``ensemble.json``."""
    if not scored:
        raise CheckpointError(f"no readable checkpoint in {checkpointer.run_dir} to build an "
                              "ensemble from.")
    members = _best(scored, size)
    atomic.write(
        os.path.join(checkpointer.run_dir, rundir.ENSEMBLE_NAME),
        json.dumps({"settings": settings, "latest": max(candidates), "members": members,
                    "candidates": scored}, indent=2, sort_keys=True) + "\n")
    log(f"Ensemble of {len(members)}: iterations "
        + ", ".join(str(m["iteration"]) for m in members))
    return [m["iteration"] for m in members]


def evaluate(learner: EnsembleLearner, run_dir: str, members: list[int], source, num_tasks: int,
             num_steps: int, seed: int, batch_size: int = 25,
             progress=None) -> dict[str, np.ndarray]:
    """Per-task, per-step results of the ensemble of ``run_dir``'s checkpoints ``members``
    (iterations), as :func:`tf_maml.evaluate.evaluate` gives them for one model: each
    member adapts on its own, the query outputs (logits) are averaged over the members, and
    the learner's loss (and metric) score the average."""
    if not isinstance(members, (list, tuple)) or not members:  # else None / 0, at the end
        raise ValueError(f"members must name at least one checkpoint (iterations, as "
                         f"ensemble.select returns them), got {members!r}")
    checkpointer = learner_checkpointer(learner, run_dir)
    summed, query_y = None, None
    for k, iteration in enumerate(members):
        checkpointer.restore(checkpointer.path_for(iteration), expect_optimizer=False)
        # progress counts the task evaluations of all members: k * num_tasks done before
        member_progress = None if progress is None else (
            lambda done, total, k=k: progress(k * total + done, len(members) * total))
        out = evaluate_lib.evaluate(learner, source, num_tasks, num_steps, seed,
                                    batch_size=batch_size, predictions=True,
                                    progress=member_progress)
        summed = out["predictions"] if summed is None else summed + out["predictions"]
        query_y = out["query_y"]
    mean = summed / len(members)
    steps = mean.shape[1]
    # [n, S+1, Nq, ...] -> one row per (task, step), each scored as one task.
    flat_pred = tf.constant(mean.reshape((-1,) + mean.shape[2:]))
    flat_true = tf.constant(np.repeat(query_y, steps, axis=0))
    results = {"loss": per_task_values(learner.loss_fn, flat_true, flat_pred)}
    if learner.metric_fn is not None:
        results["metric"] = per_task_values(learner.metric_fn, flat_true, flat_pred)
    return {k: v.numpy().reshape(-1, steps) for k, v in results.items()}
