"""Runs one experiment from a :class:`~tf_maml.config.Config`: train, evaluate, export.

``--train=True``: meta-train in ``logdir/<exp_string>`` (resuming if possible), then, with
``--test_after_train``, evaluate exactly as ``--train=False`` would. ``--train=False``:
restore the latest (or ``--test_iter``) checkpoint and evaluate ``num_test_tasks`` tasks with
``test_num_updates`` steps, writing the original's result files (and, with ``--export_dir``,
exporting that checkpoint). ``--ensemble=N`` evaluates
instead the ensemble of the N checkpoints (up to that one) with the best validation score
(MAML++'s protocol, tf_maml/ensemble.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from tf_maml import atomic, distribute, ensemble, experiment, rundir
from tf_maml import evaluate as evaluate_lib
from tf_maml import threads as threads_lib
from tf_maml import train as train_lib
from tf_maml.callbacks import ProgressLogger
from tf_maml.checkpoint import learner_checkpointer, restore_for_test
from tf_maml.config import LOCOMOTION_FAMILIES, Config, ConfigError
from tf_maml.errors import path_problem
from tf_maml.tasks.locomotion import require_simulator, simulator_versions


def run_dir(config: Config) -> str:
    return os.path.join(config.logdir, config.exp_string())


def _write_config(config: Config, directory: str) -> None:
    """The run's flags (an evaluation's: ``test_config.json``); a locomotion run's also name
    the MuJoCo and Gymnasium it ran on, under ``versions`` (unpinned, and the physics is
    theirs; :meth:`Config.from_json` ignores the key)."""
    name = "config.json" if config.train else "test_config.json"
    text = _config_text(config)
    with rundir.writing(directory, f"write {name}"):
        os.makedirs(directory, exist_ok=True)  # an evaluation may be the first writer
        atomic.write(os.path.join(directory, name), text)


def _config_text(config: Config) -> str:
    text = config.to_json()
    if config.datasource in LOCOMOTION_FAMILIES:
        text = json.dumps({**json.loads(text), "versions": simulator_versions()}, indent=2,
                          sort_keys=True)
    return text


def resume_changes(config: Config, directory: str) -> list:
    """What ``config`` changes in the run it resumes (compared with the run's config.json);
    a ConfigError names a change that would make it another run, or fewer iterations than
    its checkpoint holds (config.json would record a number the checkpoint is past).
    Nothing if there is nothing to resume."""
    path = os.path.join(directory, "config.json")
    checkpoints = rundir.checkpoint_prefixes(directory)
    if not (config.train and config.resume and checkpoints):
        return []
    _refuse_going_back(config, checkpoints[-1][0])
    if not os.path.exists(path):
        return []
    previous = Config.read(path, "fix it, or delete it to resume without comparing the flags "
                                 "(training writes it again)")
    return config.resume_changes(previous)


def _refuse_going_back(config: Config, latest: int) -> None:
    """A ConfigError if the run's latest checkpoint is past the iterations ``config`` trains
    to: training would stop at once, yet record the smaller number as the run's."""
    problem = rundir.past_the_end(latest, config.total_iterations)
    if problem is None:
        return
    flag = "pretrain_iterations" if config.is_pretrained_baseline else "metatrain_iterations"
    needed = getattr(config, flag) + latest - config.total_iterations
    raise ConfigError(
        f"--{flag}: the run in {config.exp_string()} {problem}. Evaluate it with "
        "--train=False (--test_iter=N for an earlier checkpoint), or pass "
        f"--{flag}={needed} or more to train it on.")


def run(config: Config, log=print) -> dict:
    """Trains and/or evaluates; returns paths and numbers of what was written (and the
    learner). A training run locks its run directory, here and only here: a second one is
    refused. With ``--distribution_strategy`` the meta-batch is split over the replicas; in
    multi-worker training only the chief writes, evaluates and exports."""
    directory = run_dir(config)
    log(f"Run directory: {directory}")
    _check_memory(config)
    if config.is_rl:  # reinforcement learning: tf_maml/rl/training.py
        if config.datasource in LOCOMOTION_FAMILIES:  # before the run directory is touched
            require_simulator(f"--datasource={config.datasource}")
        _deterministic(config)
        with _lock(config, directory, True, log):
            return _run_rl(config, directory, log)
    # First: threads, logical CPU devices and collective ops must be set up before TF's
    # first op.
    # The pretrained baselines train one minibatch at a time (no task chunks to run side by
    # side): TensorFlow's own op parallelism then uses the cores.
    threads = threads_lib.configure_threads(
        config.intra_op_threads, 1 if config.is_pretrained_baseline else config.meta_batch_size)
    if threads:
        log(f"Threads: {threads} intra-op (task chunks run one per core; "
            "--intra_op_threads=0 keeps TensorFlow's default)")
    if threads_lib.pool_tensors_without_onednn():
        log("CPU tensors: TensorFlow's BFC pool, as oneDNN is off on this processor "
            "(TF_CPU_ALLOCATOR_USE_BFC=false keeps plain malloc)")
    strategy = distribute.strategy_for(config)
    chief = distribute.is_chief(strategy)
    if config.distribution_strategy != "default":
        log(f"Distribution: {config.distribution_strategy}, {strategy.num_replicas_in_sync} "
            f"replicas, {config.meta_batch_size // strategy.num_replicas_in_sync} tasks each"
            + ("" if chief else " (not the chief: writes nothing to the run directory)"))
    _deterministic(config)
    with strategy.scope():
        learner = experiment.build_learner(config)
    with _lock(config, directory, chief, log):
        return _run(config, directory, learner, chief, log)


def _check_memory(config: Config) -> None:
    """A ConfigError naming the flag if the run could not fit in this machine's memory
    (:func:`tf_maml.experiment.least_memory`, a lower bound): else the system kills the
    process, which says nothing, once it has sampled its first batch."""
    for needed, what, flags in experiment.least_memory(config):
        problem = threads_lib.memory_problem(needed, what)
        if problem is None:
            continue
        # The flag furthest above its default (num_query, horizon: the paper's largest).
        typical = {**{name: getattr(type(config), name) for name in flags},
                   "num_query": 15, "horizon": 200, "num_updates": 10}
        flag = max(flags, key=lambda name: getattr(config, name) / max(typical[name], 1))
        raise ConfigError(f"--{flag}={getattr(config, flag)}: {problem}; give a smaller "
                          f"--{flag}")


def _deterministic(config: Config) -> None:
    """``--deterministic``: TensorFlow's deterministic ops, for supervised and reinforcement
    learning alike (a resumed run then ends with an uninterrupted one's weights)."""
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _lock(config: Config, directory: str, chief: bool, log):
    """A training run holds its run directory's lock (only the chief writes there). An
    evaluation (``--train=False``) does not: it only reads a checkpoint and replaces its own
    result files whole, so a checkpoint can be evaluated while training goes on."""
    return rundir.lock(directory, log) if config.train and chief else contextlib.nullcontext()


def _run(config: Config, directory: str, learner, chief: bool, log) -> dict:
    changes = resume_changes(config, directory) if chief else []
    if config.export_dir and chief:  # a path that cannot hold the export fails now, not
        from tf_maml.export import check_export_dir  # after hours of training

        check_export_dir(config.export_dir)
    if config.init_checkpoint:
        from tf_maml.convert import load_original_checkpoint

        load_original_checkpoint(learner.model, config.init_checkpoint)
        log(f"Initialised from the original checkpoint {config.init_checkpoint}")
        if config.train and rundir.checkpoint_prefixes(directory):
            log(f"WARNING: {directory} already holds checkpoints: training resumes from the "
                "latest of them, which replaces the --init_checkpoint weights.")
    result: dict = {"run_dir": directory, "learner": learner}
    source = None
    if config.train and config.test_after_train and chief:
        _check_results_writable(config, directory)  # before the training, not after it
        # The evaluation's split is read now too: a missing or damaged test split stopped
        # the run only after its training (10 hours with the paper's MiniImageNet flags).
        source = eval_source(config)
    # Nothing is written to the run directory before the data and the checkpoint have loaded.
    if config.train:
        result["iterations"] = _train(learner, config, directory, chief, changes, log)
        if not chief:
            return result
        if config.export_dir:
            result["export_dir"] = _export(learner, config, f"model-{result['iterations']}",
                                           log)
        if not config.test_after_train:
            return result
    else:
        if not chief:
            log("Evaluation runs on the chief worker only.")
            return result
        if config.init_checkpoint:
            evaluated = os.path.basename(config.init_checkpoint)
        else:
            path, iteration = restore_for_test(learner_checkpointer(learner, directory),
                                               config.test_iter)
            log(f"Restored {path} (iteration {iteration})")
            evaluated = os.path.basename(path)
        source = eval_source(config)
        if config.export_dir:  # the checkpoint evaluated (an ensemble is refused by validate)
            result["export_dir"] = _export(learner, config, evaluated, log)
    result.update(evaluate_run(learner, config, directory, log=log, source=source))
    return result


def _train(learner, config: Config, directory: str, chief: bool, changes, log) -> int:
    """Meta-trains as the original's main.py until ``config.total_iterations``, the run
    directory locked (:func:`run`); returns the last iteration. Pretraining iterations (the
    pretrained/oracle baselines) come first, as the original. Classification validates a
    meta-batch every ``test_print_interval``; ``--ensemble`` validates every epoch of
    MAML++ on the tasks the ensemble's selection uses (:class:`tf_maml.ensemble.Pool`)."""
    train_source = experiment.task_source(config, "train")
    validation = ((experiment.task_source(config, "val"), config.test_print_interval)
                  if config.is_classification and chief else None)
    pool = None
    if config.ensemble and chief:
        source = experiment.task_source(config, "val", experiment.test_num_query(config))
        pool = lambda checkpointer: ensemble.training_pool(  # noqa: E731
            learner, checkpointer, source, config.ensemble, config.num_test_tasks,
            config.test_num_updates, eval_batch_size(config), log)
    progress = ProgressLogger(config.print_interval, train_lib.SUMMARY_INTERVAL, log)
    return train_lib.train(
        learner, train_source, config.total_iterations, meta_batch_size=config.meta_batch_size,
        seed=config.seed, run_dir=directory, resume=config.resume, callbacks=[progress],
        pretrain_iterations=config.effective_pretrain_iterations, nan_policy=config.nan_policy,
        tensorboard=config.log, num_updates=config.num_updates, validation=validation,
        pool=pool, on_start=(lambda: _write_config(config, directory)) if chief else None,
        changes=changes, log=log)


def _run_rl(config: Config, directory: str, log) -> dict:
    """Reinforcement learning (tf_maml/rl/training.py): train (unless ``--train=False`` or the
    random baseline) then evaluate, the run directory locked (:func:`run`)."""
    from tf_maml.rl import training as rl_training

    changes = resume_changes(config, directory)
    learner = experiment.rl_learner(config)
    result: dict = {"run_dir": directory}
    if config.baseline == "random":
        log("Random baseline: evaluating the randomly initialised policy (no training)")
        if config.train:  # the run's record; an evaluation's comes with its returns
            _write_config(config, directory)
    elif config.train:
        if config.test_after_train:  # else said only after the training
            rl_training.check_results_writable(directory, extra=["test_config.json"])
        result["iterations"] = rl_training.train(
            learner, directory, config.total_iterations, meta_batch_size=config.meta_batch_size,
            seed=config.seed, resume=config.resume,
            pretrain_iterations=config.effective_pretrain_iterations, tensorboard=config.log,
            on_start=lambda: _write_config(config, directory), changes=changes, log=log)
        if not config.test_after_train:
            return result
    else:
        path, iteration = restore_for_test(rl_training.checkpointer(learner, directory),
                                           config.test_iter)
        log(f"Restored {path} (iteration {iteration})")
    per_step = (f"{config.update_batch_size} trajectories" if config.sample_budget != "steps"
                else f"{config.update_batch_size} x {learner.env.horizon} environment steps")
    log(f"Evaluating {config.num_test_tasks} test tasks, {config.test_num_updates} steps, "
        f"{per_step} per step, alpha={config.update_lr}")
    # Its flags written with its returns, as one set (a failed or killed evaluation left
    # them beside the earlier evaluation's returns).
    result.update(rl_training.evaluate_run(learner, directory, config.num_test_tasks,
                                           config.test_num_updates, log,
                                           extra={"test_config.json": _config_text(config)}))
    return result


def reevaluate_rl(directory: str, step_sizes, num_test_tasks: int = 0, log=print) -> str:
    """``python -m tf_maml.rl.run``: re-evaluates the finished reinforcement-learning run
    ``directory`` (built from its config.json) with a step size per test step. Bad
    arguments raise :class:`ConfigError` naming the command's flag, before anything is
    written."""
    from tf_maml.rl import training as rl_training

    sizes = _step_sizes(step_sizes)
    if num_test_tasks < 0:
        raise ConfigError(f"--num_test_tasks: must be >= 0 (0: the run's), got {num_test_tasks}")
    config = _rl_run_config(directory)
    if config.baseline != "random" and not rundir.checkpoint_prefixes(directory):
        # Said here, not by restore_for_test, whose fix is in tf-maml's flags (train=True).
        raise ConfigError(f"--run_dir={directory} holds no checkpoint to re-evaluate: train "
                          "the run first with tf-maml --flagfile=<its flagfile> (e.g. "
                          f"flags/{config.datasource}_maml.flags)")
    if config.datasource in LOCOMOTION_FAMILIES:
        require_simulator(f"--datasource={config.datasource}")
    return rl_training.reevaluate(experiment.rl_learner(config), directory, sizes,
                                  num_test_tasks or config.num_test_tasks,
                                  random_baseline=config.baseline == "random", log=log)


def _step_sizes(step_sizes) -> list[float]:
    """The α of each test step of ``--step_sizes``: finite numbers >= 0 (the check of the
    inner learning rate, :class:`tf_maml.options.rates.InnerRate`)."""
    from tf_maml.options.rates import InnerRate

    try:
        sizes = [InnerRate(float(v)).value for v in step_sizes or ()]
    except (TypeError, ValueError):
        sizes = []
    if not sizes:
        given = ",".join(map(str, step_sizes or ()))
        raise ConfigError(f"--step_sizes: one step size (alpha) >= 0 per test step, separated "
                          f"by commas (e.g. 0.1,0.05,0.05), got {given!r}")
    return sizes


def _rl_run_config(directory: str) -> Config:
    """The Config of the reinforcement-learning run ``directory``: its config.json, or the
    test_config.json of a run that only evaluated (the random baseline as tf-maml-reproduce
    runs it, with --train=False)."""
    problem = path_problem("run_dir", directory)  # else "not a folder", of one that is
    if problem:
        raise ConfigError(f"--run_dir: {problem}")
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path) and os.path.exists(os.path.join(directory, "test_config.json")):
        path = os.path.join(directory, "test_config.json")
    if not os.path.isdir(directory) or not os.path.exists(path):
        restored = _restored_evaluation_command(directory)
        if restored:
            # tf-maml-reproduce restores an evaluation-only row (the random baseline) from
            # the zoo as its numbers alone; its evaluation, seconds long, writes its flags.
            raise ConfigError(
                f"--run_dir={directory} holds an evaluation restored from the model zoo, but "
                "not the flags it was made with (test_config.json): run that evaluation "
                f"again, `{restored}` (seconds; from the repository's folder), then this "
                "command")
        what = "not a folder" if not os.path.isdir(directory) else "it holds no config.json"
        raise ConfigError(f"--run_dir={directory} is not a run directory ({what}): give the "
                          "folder of a finished RL run, e.g. logs/navigation/<run>")
    config = experiment.run_config(path)
    if not config.is_rl:
        raise ConfigError(f"--run_dir={directory} is a {config.datasource} run; this command "
                          "re-evaluates reinforcement-learning runs (evaluate a supervised run "
                          "with `tf-maml --train=False` and its flags)")
    return config


def _restored_evaluation_command(directory: str) -> str | None:
    """The evaluation command tf-maml-reproduce recorded in ``directory`` (its
    reproduce.json), with --logdir the folder that holds ``directory``; None if it recorded
    none."""
    import re

    from tf_maml import zoo

    record = atomic.read_json(os.path.join(directory, zoo.RUN_STATE_FILE))
    commands = [e.get("eval_command") for e in record.values() if isinstance(e, dict)]
    command = next((c for c in commands if isinstance(c, str) and c), None)
    if command is None:
        return None
    logdir = os.path.dirname(os.path.abspath(directory)) + os.sep
    return re.sub(r"--logdir=\S+", lambda _: f"--logdir={logdir}", command)


def eval_source(config: Config):
    """The tasks evaluation draws from (validation or test split)."""
    return experiment.task_source(config, experiment.eval_split(config),
                                  experiment.test_num_query(config))


def eval_batch_size(config: Config) -> int:
    """Tasks evaluated at once."""
    return 100 if config.datasource == "sinusoid" else (
        32 if config.datasource == "omniglot" else 10)


def evaluate_run(learner, config: Config, directory: str, log=print, source=None) -> dict:
    # An evaluation's flags (test_config.json) belong to its results: written as one set,
    # by the evaluation after training too (else an earlier --train=False evaluation's
    # flags, another --test_iter or --num_test_tasks, stood beside these results).
    extra = {"test_config.json": config.to_json()}
    name = _check_results_writable(config, directory)  # now, not after the evaluation ran
    try:
        values = _evaluate(learner, config, directory, log, source)
    except KeyboardInterrupt:  # Ctrl-C: the results are written whole at the end, or not
        log(f"Interrupted during the evaluation, before its results were written: "
            f"{rundir.kept_results(directory, _result_files(name))}; run the same command "
            "again to evaluate.")
        raise
    with rundir.writing(directory, "write the evaluation results",
                        kept=lambda: rundir.kept_results(directory, _result_files(name))):
        paths = evaluate_lib.write_results(directory, values, config.update_batch_size,
                                           config.update_lr, config.baseline,
                                           config.ensemble, extra, log)
    log(f"Wrote {paths['csv']}")
    means, _, ci95 = evaluate_lib.summarize(values)
    return {"results": paths, "means": means, "ci95": ci95, "values": values}


def _evaluate(learner, config: Config, directory: str, log, source):
    """The per-task values of the evaluation :func:`evaluate_run` writes (the metric, or the
    loss), its summary logged."""
    split = experiment.eval_split(config)
    if source is None:
        source = eval_source(config)
    seed = evaluate_lib.TEST_SEEDS[config.datasource]
    batch = eval_batch_size(config)
    what = "test" if config.datasource == "sinusoid" else split
    num_steps = config.test_num_updates
    if config.is_pretrained_baseline:  # the classifier's nearest neighbours, or fine-tuning
        from tf_maml import baselines

        val_source = (None if config.baseline == "nearest_neighbor" else
                      experiment.task_source(config, "val", experiment.test_num_query(config)))
        learner, num_steps = baselines.evaluator(
            learner, config.baseline, val_source, num_classes=config.num_classes,
            num_steps=config.test_num_updates, num_tasks=config.num_test_tasks,
            seed=config.seed, log=log,
            record=os.path.join(directory, rundir.SELECTION_NAME.format(
                config.update_batch_size)),
            measured={"update_batch_size": config.update_batch_size,
                      "num_query": experiment.test_num_query(config)})
        log(f"Evaluating the {config.baseline} baseline on {config.num_test_tasks} {what} "
            f"tasks, {num_steps} steps, K={config.update_batch_size}")
    else:
        log(f"Evaluating {config.num_test_tasks} {what} tasks, {num_steps} steps, "
            f"K={config.update_batch_size}, alpha={config.update_lr}"
            + (f", the ensemble of the {config.ensemble} best checkpoints"
               if config.ensemble else ""))
    t0 = time.monotonic()
    last = [t0]

    def progress(done, total):
        if time.monotonic() - last[0] > 10 or done == total:
            last[0] = time.monotonic()
            log(f"  evaluated {done}/{total} tasks ({time.monotonic() - t0:.0f}s)")

    if config.ensemble:
        members = ensemble.select(
            learner, directory,
            experiment.task_source(config, "val", experiment.test_num_query(config)),
            config.ensemble, config.num_test_tasks, num_steps,
            upto=config.test_iter if config.test_iter > 0 else None, batch_size=batch,
            log=log)
        out = ensemble.evaluate(learner, directory, members, source,
                                config.num_test_tasks, num_steps, seed, batch_size=batch,
                                progress=progress)
    else:
        out = evaluate_lib.evaluate(learner, source, config.num_test_tasks, num_steps, seed,
                                    batch_size=batch, progress=progress)
    values = out["metric"] if "metric" in out else out["loss"]
    log(evaluate_lib.format_summary(values, config.is_classification))
    return values


def _check_results_writable(config: Config, directory: str) -> str:
    """A RunDirError now if the evaluation's results could not be written into
    ``directory`` (:func:`tf_maml.rundir.check_results_writable`); returns their name."""
    name = evaluate_lib.result_name(config.update_batch_size, config.update_lr, config.baseline,
                                    config.ensemble)
    rundir.check_results_writable(directory, _result_files(name))
    return name


def _result_files(name: str) -> list[str]:
    """The files of the evaluation's set (evaluate.write_results', with its flags)."""
    return [name + ext for ext in evaluate_lib.RESULT_EXTENSIONS] + ["test_config.json"]


def _export(learner, config: Config, what: str, log) -> str:
    """Exports the learner as it is: the checkpoint ``what`` just trained or restored."""
    from tf_maml.export import export

    path = export(learner, config.export_dir, num_steps=config.test_num_updates)
    log(f"Exported {what} to {path}")
    return path
