"""``tf-maml --datasource=navigation``: MAML-TRPO and its baselines on 2D navigation.

Runs in ``logdir/<exp_string>`` like every tf-maml experiment:

* MAML (``--metatrain_iterations=N``): the meta-objective of :mod:`tf_maml.rl.learner`
  with ``num_updates`` inner policy-gradient steps of step size ``update_lr`` on
  ``update_batch_size`` trajectories per task, ``meta_batch_size`` tasks per TRPO
  meta-update with KL limit ``max_kl``;
* pretrained (``--pretrain_iterations=N --metatrain_iterations=0``, run directory
  ``....pretrained``): plain TRPO on tasks sampled each iteration;
* oracle (``--baseline=oracle``): the goal appended to the observation, plain TRPO;
* random (``--baseline=random``): no training, the randomly initialised policy.

Training logs every iteration (the mean return before and after adaptation, the TRPO step),
writes ``training_log.csv`` and TensorBoard scalars, and checkpoints every
``SAVE_INTERVAL`` iterations (and on Ctrl-C / SIGTERM) so that rerunning the command
resumes. Evaluation (after training, or ``--train=False``) adapts ``num_test_tasks`` test
tasks (a fixed stream, the same for every run) with ``test_num_updates`` steps and writes
``test_returns.csv`` (one row per number of steps: mean return, 95% interval half-width
1.96·std/√n, std, median) and the per-task matrix ``test_returns.npy``.

Re-evaluating a finished run with a step size per test step (e.g. the authors' test script,
which halved α after the first step) writes ``test_returns_steps<α1>_<α2>_....csv``::

    python -m tf_maml.rl.run --run_dir=logs/navigation/<run> --step_sizes=0.1,0.05,0.05
"""

from __future__ import annotations

import csv
import os
import time

import numpy as np

from tf_maml.config import Config
from tf_maml.tasks import batch_rng

SAVE_INTERVAL = 10
TEST_SEED = 1
TEST_STREAM = 2
EVAL_CHUNK = 40  # test tasks adapted together (one traced shape)
LOG_FIELDS = ("iteration", "pretrain", "pre_return", "post_return", "surrogate_before",
              "surrogate_after", "kl", "step_fraction", "backtracks", "seconds")


def build_learner(config: Config):
    """The environment, the paper's policy (seeded with ``config.seed``) and the learner."""
    import keras

    from tf_maml.rl.learner import RLMetaLearner
    from tf_maml.rl.policy import gaussian_mlp_policy
    from tf_maml.tasks.navigation import NavigationTasks

    env = NavigationTasks(oracle=config.baseline == "oracle")
    keras.utils.set_random_seed(config.seed)
    policy = gaussian_mlp_policy(env.observation_dim, env.action_dim)
    return RLMetaLearner(policy, env, inner_lr=config.update_lr,
                         inner_steps=config.num_updates,
                         num_trajectories=config.update_batch_size, discount=config.discount,
                         max_kl=config.max_kl, first_order=config.stop_grad)


def checkpointer(learner, directory: str):
    """The policy's weights, TRPO's counters and the iteration, as ``<directory>/model-<i>``:
    the one checkpointer of every run (:mod:`tf_maml.checkpoint`)."""
    from tf_maml.checkpoint import Checkpointer

    return Checkpointer(directory, {"model": learner.model, "trpo": learner.optimizer},
                        fit_hint="was it written with another `baseline`? Use another "
                                 "`run_dir` for a new run.")


def train(learner, config: Config, directory: str, log=print, on_start=None,
          changes=()) -> int:
    """Trains until ``config.total_iterations``, resuming from the latest readable
    checkpoint (the run directory's rules of :mod:`tf_maml.rundir`); returns the last
    iteration. ``changes`` (of the config since the last run) are printed on resuming."""
    import tensorflow as tf

    from tf_maml import rundir
    from tf_maml.callbacks import CheckpointSaver
    from tf_maml.checkpoint import resume_or_start
    from tf_maml.train import interrupt_at_step_end

    with rundir.lock(directory, log):
        saver = CheckpointSaver(checkpointer(learner, directory), SAVE_INTERVAL, log)
        start, done = resume_or_start(saver.checkpointer, config.resume,
                                      config.total_iterations, on_start, log, changes)
        if done:
            return start
        total = config.total_iterations
        history = rundir.CSVLog(os.path.join(directory, "training_log.csv"), LOG_FIELDS)
        history.start(start)
        writer = tf.summary.create_file_writer(directory) if config.log else None
        done, t_start = start, time.time()
        # The save on an interrupt runs inside the signals' block: more Ctrl-C cannot cut it.
        with interrupt_at_step_end() as stop:
            try:
                for itr in range(start, total):
                    pretrain = itr < config.effective_pretrain_iterations
                    rng = batch_rng(config.seed, itr)
                    tasks = learner.env.sample_tasks(config.meta_batch_size, rng)
                    t0 = time.time()
                    stats = learner.train_step(tasks, rng, pretrain=pretrain)
                    done = itr + 1
                    row = dict(stats, iteration=done, pretrain=int(pretrain),
                               seconds=round(time.time() - t0, 3))
                    history.row([row[k] for k in LOG_FIELDS])
                    if writer is not None:
                        with writer.as_default(step=done):
                            for key in ("pre_return", "post_return", "kl", "step_fraction"):
                                tf.summary.scalar(key, stats[key])
                    rate = (done - start) / (time.time() - t_start)
                    returns = (f"return {stats['post_return']:.2f}" if pretrain else
                               f"return pre {stats['pre_return']:.2f} "
                               f"post {stats['post_return']:.2f}")
                    log(f"{'Pretrain ' if pretrain else ''}Iteration {done}/{total}: "
                        f"{returns}, KL {stats['kl']:.4f}, step {stats['step_fraction']:.3f} "
                        f"({row['seconds']:.1f}s, {rate * 60:.1f} it/min)")
                    saver.on_step_end(done, stats, pretrain)
                    stop.check()
            except KeyboardInterrupt:
                saver.on_interrupt(done)
                raise
            finally:
                history.close()
        saver.on_train_end(done)
        return done


def test_tasks(env, num_tasks: int) -> np.ndarray:
    """The fixed test goals: task i from its own generator (seed 1, stream 2)."""
    return np.concatenate([env.sample_tasks(1, batch_rng(TEST_SEED, i, TEST_STREAM))
                           for i in range(num_tasks)])


def evaluate(learner, num_tasks: int, num_steps: int, log=print,
             step_sizes=None) -> np.ndarray:
    """Average return per test task after 0..num_steps steps, ``[num_tasks, steps + 1]``
    (chunks of ``EVAL_CHUNK`` tasks, each with its own seeded noise); ``step_sizes``: α of
    each step (default: the learner's α for every step)."""
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


def write_results(directory: str, returns: np.ndarray, name: str = "test_returns") -> str:
    """``<name>.csv`` and ``<name>.npy``, each replaced whole (:func:`rundir.atomic_write`)."""
    import io

    from tf_maml import rundir

    path = os.path.join(directory, name + ".csv")
    rows = summarize(returns)
    text, array = io.StringIO(), io.BytesIO()
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    np.save(array, returns)
    with rundir.writing(directory, f"write {name}.csv",
                        kept=lambda: "the checkpoints and earlier results are intact"):
        os.makedirs(directory, exist_ok=True)
        rundir.atomic_write(path, text.getvalue())
        rundir.atomic_write(path[:-4] + ".npy", array.getvalue())
    return path


def run(config: Config, directory: str, write_config, changes=(), log=print) -> dict:
    """Train (unless ``--train=False`` or the random baseline) then evaluate."""
    learner = build_learner(config)
    result: dict = {"run_dir": directory}
    if config.baseline == "random":
        log("Random baseline: evaluating the randomly initialised policy (no training)")
        write_config()
    elif config.train:
        result["iterations"] = train(learner, config, directory, log, on_start=write_config,
                                     changes=changes)
        if not config.test_after_train:
            return result
    else:
        from tf_maml.checkpoint import restore_for_test

        path, iteration = restore_for_test(checkpointer(learner, directory), config.test_iter)
        log(f"Restored {path} (iteration {iteration})")
        write_config()
    log(f"Evaluating {config.num_test_tasks} test tasks, {config.test_num_updates} steps, "
        f"{config.update_batch_size} trajectories per step, alpha={config.update_lr}")
    returns = evaluate(learner, config.num_test_tasks, config.test_num_updates, log)
    path = write_results(directory, returns)
    for row in summarize(returns):
        log(f"  {row['steps']} steps: average return {row['mean_return']:.2f} "
            f"± {row['ci95']:.2f}")
    log(f"Wrote {path}")
    result.update(csv=path, returns=returns)
    return result


def main(argv):
    """Re-evaluates a finished run with other step sizes (``python -m tf_maml.rl.run``)."""
    from absl import flags

    from tf_maml.checkpoint import CheckpointError, restore_for_test

    del argv
    run_dir = flags.FLAGS.run_dir
    with open(os.path.join(run_dir, "config.json")) as f:
        config = Config.from_json(f.read())
    learner = build_learner(config)
    if config.baseline != "random":
        path, iteration = restore_for_test(checkpointer(learner, run_dir), -1)
        print(f"Restored {path} (iteration {iteration})")
    elif checkpointer(learner, run_dir).latest is not None:
        raise CheckpointError(f"{run_dir} is a random-baseline run but holds checkpoints")
    sizes = [float(v) for v in flags.FLAGS.step_sizes]
    returns = evaluate(learner, flags.FLAGS.num_test_tasks or config.num_test_tasks,
                       len(sizes), step_sizes=sizes)
    path = write_results(run_dir, returns, "test_returns_steps" + "_".join(map(str, sizes)))
    for row in summarize(returns):
        print(f"  {row['steps']} steps: average return {row['mean_return']:.2f} "
              f"± {row['ci95']:.2f}")
    print(f"Wrote {path}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("run_dir", None, "a finished navigation run directory")
    flags.DEFINE_list("step_sizes", None, "alpha of each test step, e.g. 0.1,0.05,0.05 (the "
                      "authors' test script halved alpha after the first step)")
    flags.DEFINE_integer("num_test_tasks", 0, "test tasks (0: the run's --num_test_tasks)")
    flags.mark_flags_as_required(["run_dir", "step_sizes"])
    app.run(main)
