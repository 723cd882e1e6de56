"""The original's meta-test: ``num_test_tasks`` tasks, ``test_num_updates`` inner steps,
mean / std (ddof=0) / 1.96·std/√n per step, written as ``test_ubs{K}_stepsize{α}.csv``."""

from __future__ import annotations

import csv
import io
import os
import pickle

import numpy as np

from tf_maml import rundir
from tf_maml import threads as threads_lib
from tf_maml.errors import check_count, check_switch
from tf_maml.learners import MetaLearner
from tf_maml.tasks import batch_rng

# The MiniImageNet table's two baselines (Ravi & Larochelle 2017, quoted by Finn et al.):
# both evaluate ONE conv4 pretrained as an ordinary classifier of the training classes
# (tf_maml/baselines.py), so they share its run directory and name their results after
# themselves.
PRETRAINED_BASELINES = ("finetune", "nearest_neighbor")

# The original seeded its test tasks with np.random.seed(1) (sinusoid) and random.seed(6)
# (image task lists); we keep those numbers as the seeds of our test-task streams.
TEST_SEEDS = {"sinusoid": 1, "omniglot": 6, "miniimagenet": 6}
EVAL_STREAM = 2


def sample_tasks(source, num_tasks: int, seed: int, start: int = 0) -> list[tuple]:
    """``num_tasks`` single tasks; task i comes from its own generator, so the set does not
    depend on how the tasks are later batched."""
    return [source.sample_batch(1, batch_rng(seed, start + i, EVAL_STREAM))
            for i in range(num_tasks)]


def evaluate(
    learner: MetaLearner,
    source,
    num_tasks: int,
    num_steps: int,
    seed: int,
    batch_size: int = 25,
    progress=None,
    predictions: bool = False,
) -> dict[str, np.ndarray]:
    """Per-task, per-step query results: ``{"loss": [n, S+1], "metric": [n, S+1]}``
    (``metric`` only for learners with a metric). Column 0 is before adaptation. With
    ``predictions``, also the query outputs ``"predictions": [n, S+1, *y]`` and the query
    targets ``"query_y": [n, *y]``."""
    # Else 0 tasks gave {} (no column to summarize), 2.5 a TypeError and a batch of 0 one
    # from range().
    check_count("num_tasks", num_tasks, 1, "a whole number of tasks")
    check_count("batch_size", batch_size, 1, "a whole number of tasks")
    # Else "no" returned the predictions, and a progress that is no function failed after
    # the first batch.
    check_switch("predictions", predictions)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be None or a function of (done, total), got "
                         f"{progress!r}")
    # The tasks are sampled at once: a num_tasks beyond this machine's memory, told from
    # the first of them, is refused before the rest are (else the system killed the
    # process, without a word, while it sampled them; the command line's check is
    # tf_maml.runner's).
    first = sample_tasks(source, 1, seed)
    needed = num_tasks * sum(np.asarray(part).nbytes for part in first[0])
    problem = threads_lib.memory_problem(needed, f"{num_tasks} tasks, sampled at once,")
    if problem:
        raise ValueError(f"num_tasks={num_tasks}: {problem}; give fewer num_tasks")
    tasks = first + sample_tasks(source, num_tasks - 1, seed, start=1)
    results: dict[str, list] = {}
    for start in range(0, num_tasks, batch_size):
        chunk = tasks[start:start + batch_size]
        if len(chunk) < batch_size:  # keep one traced shape: pad with repeats, drop after
            chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
        batch = tuple(np.concatenate(parts, axis=0) for parts in zip(*chunk))
        if predictions:
            out = dict(learner.evaluate_batch(batch, num_steps, predictions=True))
            out["query_y"] = batch[3]
        else:  # the baselines' evaluators have no predictions to give
            out = learner.evaluate_batch(batch, num_steps)
        keep = min(batch_size, num_tasks - start)
        for key, value in out.items():
            results.setdefault(key, []).append(np.asarray(value)[:keep])
        if progress is not None:
            progress(min(start + batch_size, num_tasks), num_tasks)
    return {k: np.concatenate(v, axis=0) for k, v in results.items()}


def summarize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """means, stds (ddof=0, as np.std) and 95% half-widths 1.96·std/√n, per column."""
    means = np.mean(values, axis=0)
    stds = np.std(values, axis=0)
    ci95 = 1.96 * stds / np.sqrt(values.shape[0])
    return means, stds, ci95


def result_name(update_batch_size: int, update_lr: float, baseline: str | None = None,
                ensemble: int = 0) -> str:
    """The original's result name; the pretrained baselines (whose step size is chosen on
    validation tasks, or who take none) name theirs after the baseline, since both share
    one run directory; an ensemble's (``--ensemble=N``) ends in ``_ensemble<N>``, beside
    the single model's."""
    if baseline in PRETRAINED_BASELINES:
        return f"test_ubs{update_batch_size}_{baseline}"
    return f"test_ubs{update_batch_size}_stepsize{update_lr}" + (
        f"_ensemble{ensemble}" if ensemble else "")


RESULT_EXTENSIONS = (".csv", ".pkl", ".npy")  # the files of write_results' set, by name


def write_results(run_dir: str, values: np.ndarray, update_batch_size: int,
                  update_lr: float, baseline: str | None = None,
                  ensemble: int = 0, extra: dict[str, str] | None = None,
                  log=print) -> dict[str, str]:
    """Writes the CSV (header update0..updateS; rows means, stds, ci95), the original's
    pickle ``{'mses': values}``, the per-task matrix as ``.npy`` and the ``extra`` files
    (name -> text: the evaluation's ``test_config.json``) as one set
    (:func:`tf_maml.atomic.write_all`): a crash or a full disk leaves all the earlier
    files or all the new ones, never half a file nor a mix, and two evaluations of one run
    directory that finish together write one set after the other
    (:func:`tf_maml.rundir.results_lock`)."""
    os.makedirs(run_dir, exist_ok=True)
    base = os.path.join(run_dir, result_name(update_batch_size, update_lr, baseline, ensemble))
    means, stds, ci95 = summarize(values)
    table = io.StringIO()
    writer = csv.writer(table, delimiter=",")
    writer.writerow([f"update{i}" for i in range(len(means))])
    writer.writerows([means, stds, ci95])
    array = io.BytesIO()
    np.save(array, values)
    paths = {ext[1:]: base + ext for ext in RESULT_EXTENSIONS}
    files = {paths["csv"]: table.getvalue(), paths["pkl"]: pickle.dumps({"mses": values}),
             paths["npy"]: array.getvalue()}
    files.update((os.path.join(run_dir, name), text) for name, text in (extra or {}).items())
    rundir.write_result_set(run_dir, files, paths["npy"], log)
    return paths


def format_summary(values: np.ndarray, classification: bool) -> str:
    """The original's printout."""
    what = "accuracy" if classification else "loss"
    means, stds, ci95 = summarize(values)
    return (f"Mean validation {what}, stddev, and confidence intervals\n"
            f"{(means, stds, ci95)!r}")
