"""MAML-TRPO and its baselines on 2D navigation and MuJoCo locomotion: the library behind
``tf-maml --datasource=navigation`` (and ``cheetah_vel``, ``cheetah_dir``, ``ant_vel``,
``ant_dir``; :mod:`tf_maml.runner` unpacks the flags into the plain arguments of the
functions here and holds the run directory's lock).

* MAML (``--metatrain_iterations=N``): the meta-objective of :mod:`tf_maml.rl.learner`
  with ``num_updates`` inner policy-gradient steps of step size ``update_lr`` on
  ``update_batch_size`` trajectories per task, ``meta_batch_size`` tasks per TRPO
  meta-update with KL limit ``max_kl``;
* pretrained (``--pretrain_iterations=N --metatrain_iterations=0``, run directory
  ``....pretrained``): plain TRPO on tasks sampled each iteration;
* oracle (``--baseline=oracle``): the goal appended to the observation, plain TRPO;
* random (``--baseline=random``): no training, the randomly initialised policy.

Training is the library's training loop (:func:`tf_maml.train.fit_in_run_dir`) with the
callbacks of :mod:`tf_maml.callbacks`: it logs every iteration (the mean return before and
after adaptation, the TRPO step), writes ``training_log.csv`` and TensorBoard scalars, and
checkpoints every ``SAVE_INTERVAL`` iterations (and on Ctrl-C / SIGTERM) so that rerunning
the command resumes.

Evaluation (after training, or ``--train=False``) adapts ``num_test_tasks`` test
tasks (a fixed stream, the same for every run) with ``test_num_updates`` steps and writes
``test_returns.csv`` (one row per number of steps: mean return, 95% interval half-width
1.96·std/√n, std, median) and the per-task matrix ``test_returns.npy``. Re-evaluation with a
step size per test step: :mod:`tf_maml.rl.run`.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence

import numpy as np

from tf_maml import atomic, rundir
from tf_maml.callbacks import Callback, CheckpointSaver, CSVHistory, TensorBoard
from tf_maml.checkpoint import Checkpointer, CheckpointError, learner_checkpointer, restore_for_test
from tf_maml.errors import ConfigError, check_count, did_you_mean
from tf_maml.tasks import batch_rng, locomotion
from tf_maml.train import LOG_NAME, fit_in_run_dir

SAVE_INTERVAL = 10
RESULTS_NAME = "test_returns"  # <run_dir>/test_returns.csv and .npy: an evaluation's returns
TEST_SEED = 1
TEST_STREAM = 2
EVAL_CHUNK = 40  # test tasks adapted together (one traced shape)
LOG_FIELDS = ("iteration", "pretrain", "pre_return", "post_return", "surrogate_before",
              "surrogate_after", "kl", "step_fraction", "backtracks", "seconds")
SCALARS = ("pre_return", "post_return", "kl", "step_fraction")  # TensorBoard's, by name
FIT_HINT = "was it written with another `baseline`? Use another `run_dir` for a new run."


def build_learner(*, task_family: str = "navigation", horizon: int = 0, oracle: bool = False,
                  seed: int = 0, inner_lr: float = 0.1, inner_steps: int = 1,
                  num_trajectories: int = 20, discount: float = 0.99, max_kl: float = 0.01,
                  first_order: bool = False, sample_budget: str = "trajectories"):
    """The environment (``task_family``: navigation or a locomotion family of
    :data:`tf_maml.tasks.locomotion.TASK_FAMILIES`; ``horizon`` steps, 0: the family's;
    ``oracle``: the task in the observation), the paper's policy (its weights drawn from
    ``seed``) and the learner (see :class:`RLMetaLearner` for the rest, ``sample_budget``
    included)."""
    import keras

    from tf_maml.rl.learner import RLMetaLearner
    from tf_maml.rl.policy import gaussian_mlp_policy

    families = ("navigation", *locomotion.TASK_FAMILIES)
    if task_family not in families:  # else the locomotion check, which omits navigation
        raise ValueError(f"task_family must be one of {', '.join(families)}, got "
                         f"{task_family!r}{did_you_mean(str(task_family), families)}")
    if task_family == "navigation":
        from tf_maml.tasks.navigation import HORIZON, NavigationTasks

        env = NavigationTasks(oracle=oracle, horizon=horizon or HORIZON)
    else:
        from tf_maml.rl.mujoco_batch import LocomotionTasks
        from tf_maml.tasks.locomotion import HORIZON

        env = LocomotionTasks(task_family, oracle=oracle, horizon=horizon or HORIZON)
    keras.utils.set_random_seed(seed)
    policy = gaussian_mlp_policy(env.observation_dim, env.action_dim)
    return RLMetaLearner(policy, env, inner_lr=inner_lr, inner_steps=inner_steps,
                         num_trajectories=num_trajectories, discount=discount, max_kl=max_kl,
                         first_order=first_order, sample_budget=sample_budget)


def checkpointer(learner, directory: str) -> Checkpointer:
    """The policy's weights, TRPO's counters (as ``trpo``) and the iteration, as
    ``<directory>/model-<i>``: the one checkpointer of every run (:mod:`tf_maml.checkpoint`)."""
    return learner_checkpointer(learner, directory, optimizer_key="trpo", fit_hint=FIT_HINT)


def task_batches(env, meta_batch_size: int, seed: int, start: int = 0) -> Iterator[tuple]:
    """The batches ``(tasks, rng)`` of iterations ``start, start+1, ...``: iteration i's
    tasks, and the noise of its sampling, from its own generator seeded by (seed, i), so
    that a resumed run sees what an uninterrupted one would have."""
    iteration = start
    while True:
        rng = batch_rng(seed, iteration)
        yield env.sample_tasks(meta_batch_size, rng), rng
        iteration += 1


class ReturnsCSV(CSVHistory):
    """``training_log.csv`` of RL: every iteration its :data:`LOG_FIELDS` (the step's
    statistics, whether it pretrained, and the seconds since the session began, as the
    supervised log: :mod:`tf_maml.training_log` reads a run's sessions, training time and
    speed from that column, for the model zoo and the report)."""

    def __init__(self, path: str):
        super().__init__(path, LOG_FIELDS, 1)

    def fields(self, iteration, metrics, pretrain):
        return dict(metrics, iteration=iteration, pretrain=int(pretrain),
                    seconds=round(time.monotonic() - self.t_start, 3))


class ReturnsLogger(Callback):
    """One line per iteration: the returns, the TRPO step, the seconds and the speed."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log

    def on_train_begin(self, learner, start, total):
        self.start, self.total, self.t_start = start, total, time.monotonic()

    def on_step_begin(self, iteration):
        self.t_step = time.monotonic()

    def on_step_end(self, iteration, stats, pretrain):
        seconds = round(time.monotonic() - self.t_step, 3)
        rate = (iteration - self.start) / (time.monotonic() - self.t_start)
        returns = (f"return {stats['post_return']:.2f}" if pretrain else
                   f"return pre {stats['pre_return']:.2f} post {stats['post_return']:.2f}")
        self.log(f"{'Pretrain ' if pretrain else ''}Iteration {iteration}/{self.total}: "
                 f"{returns}, KL {stats['kl']:.4f}, step {stats['step_fraction']:.3f} "
                 f"({seconds:.1f}s, {rate * 60:.1f} it/min)")


def train(learner, directory: str, iterations: int, *, meta_batch_size: int, seed: int = 0,
          resume: bool = True, pretrain_iterations: int = 0, tensorboard: bool = True,
          on_start: Callable[[], None] | None = None, changes: Sequence = (),
          log: Callable[[str], None] = print) -> int:
    """Trains ``learner`` in ``directory`` (whose lock the caller holds) until
    ``iterations``, ``meta_batch_size`` tasks per iteration, the first
    ``pretrain_iterations`` without an inner step, resuming from the latest readable
    checkpoint (the run directory's rules of :mod:`tf_maml.rundir`); returns the last
    iteration. ``changes`` (of the settings since the last run) are printed on resuming;
    ``on_start`` is called once the restore succeeded."""
    # Else a policy "output of shape (0, 2, None)" or numpy's "negative dimensions", after
    # the training log was written.
    check_count("meta_batch_size", meta_batch_size, 1, "a whole number of tasks")
    # Else -1 trained nothing and returned 0 without a word, and 2.5 trained 2.
    check_count("iterations", iterations, 0, "a whole number of meta-batches")
    check_count("pretrain_iterations", pretrain_iterations, 0, "a whole number")
    saved = checkpointer(learner, directory)

    def callbacks_from(start: int) -> list[Callback]:
        callbacks: list[Callback] = [ReturnsCSV(os.path.join(directory, LOG_NAME))]
        if tensorboard:
            callbacks.append(TensorBoard(directory, summary_interval=1, keys=SCALARS))
        return callbacks + [ReturnsLogger(log), CheckpointSaver(saved, SAVE_INTERVAL, log)]

    return fit_in_run_dir(
        learner, saved, lambda start: task_batches(learner.env, meta_batch_size, seed, start),
        iterations, callbacks_from, resume=resume, pretrain_iterations=pretrain_iterations,
        on_start=on_start, changes=changes, log=log)


def test_tasks(env, num_tasks: int) -> np.ndarray:
    """The fixed test tasks: task i from its own generator (seed 1, stream 2)."""
    return np.concatenate([env.sample_tasks(1, batch_rng(TEST_SEED, i, TEST_STREAM))
                           for i in range(num_tasks)])


def evaluate(learner, num_tasks: int, num_steps: int, log=print,
             step_sizes=None) -> np.ndarray:
    """Average return per test task after 0..num_steps steps, ``[num_tasks, steps + 1]``
    (chunks of ``EVAL_CHUNK`` tasks, each with its own seeded noise); ``step_sizes``: α of
    each step (default: the learner's α for every step)."""
    # Else numpy's "need at least one array to concatenate", or a TypeError for 2.5.
    check_count("num_tasks", num_tasks, 1, "a whole number of tasks")
    goals = test_tasks(learner.env, num_tasks)
    size = min(EVAL_CHUNK, num_tasks)
    out = []
    for start in range(0, num_tasks, size):
        chunk = goals[start:start + size]
        keep = len(chunk)
        if keep < size:  # one traced shape: pad with repeats, drop after
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - keep, 0)])
        rng = batch_rng(TEST_SEED, start, TEST_STREAM + 1)
        out.append(learner.evaluate(chunk, num_steps, rng, step_sizes)[:keep])
        log(f"  evaluated {min(start + size, num_tasks)}/{num_tasks} tasks")
    return np.concatenate(out)


def summarize(returns: np.ndarray) -> list[dict]:
    """Per number of steps: mean, 95% half-width 1.96·std/√n (std ddof=0), std, median."""
    n = returns.shape[0]
    return [{"steps": s, "mean_return": float(np.mean(col)),
             "ci95": float(1.96 * np.std(col) / np.sqrt(n)), "std": float(np.std(col)),
             "median": float(np.median(col)), "num_tasks": n}
            for s, col in enumerate(returns.T)]


def write_results(directory: str, returns: np.ndarray, name: str = RESULTS_NAME,
                  extra: dict[str, str] | None = None, log=print) -> str:
    """``<name>.csv`` and ``<name>.npy`` (and the ``extra`` files, name -> text: the
    evaluation's ``test_config.json``), replaced as one set
    (:func:`tf_maml.rundir.write_result_set`: a failed write leaves all as the earlier
    evaluation wrote them, and an earlier set of other returns is kept in
    ``earlier_results/``)."""
    import io


    path = os.path.join(directory, name + ".csv")
    rows = summarize(returns)
    text, array = io.StringIO(), io.BytesIO()
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    np.save(array, returns)
    names = result_files(name, extra or {})
    with rundir.writing(directory, f"write {name}.csv",
                        kept=lambda: rundir.kept_results(directory, names)):
        os.makedirs(directory, exist_ok=True)
        rundir.write_result_set(directory, {
            path: text.getvalue(), path[:-4] + ".npy": array.getvalue(),
            **{os.path.join(directory, k): v for k, v in (extra or {}).items()}},
            path[:-4] + ".npy", log)
    return path


def result_files(name: str = RESULTS_NAME, extra: Collection[str] | None = None) -> list[str]:
    """The files of an evaluation's set, as :func:`write_results` writes them."""
    return [name + ".csv", name + ".npy", *(extra or ())]


def check_results_writable(directory: str, name: str = RESULTS_NAME,
                           extra: Collection[str] | None = None) -> None:
    """A RunDirError now if an evaluation's ``<name>.csv/.npy`` and the files ``extra``
    could not be written into ``directory``
    (:func:`tf_maml.rundir.check_results_writable`)."""
    rundir.check_results_writable(directory, result_files(name, extra), f"write {name}.csv")


def evaluate_run(learner, directory: str, num_tasks: int, num_steps: int, log=print,
                 step_sizes=None, name: str = RESULTS_NAME,
                 extra: dict[str, str] | None = None) -> dict:
    """Evaluates ``learner`` on ``num_tasks`` test tasks with ``num_steps`` steps (of sizes
    ``step_sizes``), writes ``<name>.csv/.npy`` into ``directory`` and logs each row."""
    check_results_writable(directory, name, extra)  # said now, not after the evaluation ran
    returns = evaluate(learner, num_tasks, num_steps, log, step_sizes)
    path = write_results(directory, returns, name, extra, log)
    for row in summarize(returns):
        log(f"  {row['steps']} steps: average return {row['mean_return']:.2f} "
            f"± {row['ci95']:.2f}")
    log(f"Wrote {path}")
    return {"csv": path, "returns": returns}


def reevaluate(learner, run_dir: str, step_sizes: Sequence[float], num_tasks: int,
               random_baseline: bool = False, log=print) -> str:
    """Re-evaluates the finished run ``run_dir`` (its latest checkpoint; the random
    baseline's untrained policy) with a step size per test step, into
    ``test_returns_steps<α1>_<α2>_....csv``; returns its path."""
    name = reevaluation_name(run_dir, step_sizes)  # refused now, not after the evaluation
    if not random_baseline:
        path, iteration = restore_for_test(checkpointer(learner, run_dir), -1)
        log(f"Restored {path} (iteration {iteration})")
    elif checkpointer(learner, run_dir).latest is not None:
        raise CheckpointError(f"{run_dir} is a random-baseline run but holds checkpoints")
    sizes = [float(v) for v in step_sizes]
    return evaluate_run(learner, run_dir, num_tasks, len(sizes), log, sizes, name)["csv"]


def reevaluation_name(run_dir: str, step_sizes: Sequence[float]) -> str:
    """``test_returns_steps<α1>_<α2>_...``, the name of the files of a re-evaluation of
    ``run_dir`` with ``step_sizes``. A ConfigError if they could not be written there: the
    name grows with each step size, and a file system takes names of 255 bytes at most
    (its own limit, where it says), which the temporary name the files are written under
    (:func:`tf_maml.atomic.temporary_name`) exceeds first."""
    # + 0.0: -0 is 0, one name for one evaluation.
    name = "test_returns_steps" + "_".join(str(float(v) + 0.0) for v in step_sizes)
    problem = atomic.temporary_name_problem(os.path.join(run_dir, name + ".npy"))
    if problem:
        raise ConfigError(
            f"`step_sizes`: {len(step_sizes)} step sizes would name the results {name}.csv, "
            f"too long a name for a file in {run_dir} ({problem}): give fewer step sizes "
            "(one per test step)")
    return name
