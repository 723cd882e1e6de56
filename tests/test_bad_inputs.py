"""Bad inputs fail with an error that names the problem and the fix (or the flag / file), and
leave whatever was already written (run directories, prepared data, SavedModels) untouched.

Covered: flags and flagfiles (through absl's ``app.run`` in this process, exactly as the
console script runs it), data folders (through ``experiment.task_source`` with a Config, and
through the data_prep functions), checkpoints (``--test_iter``, another architecture, TF1
``--init_checkpoint``, truncated files), Ctrl-C during an evaluation, the run directories
given to tf-maml-figures, SavedModel signatures, and the Python API (MetaLearner,
train_step, adapt, fit).

Cases already covered elsewhere are not repeated here: Config validation of most single flags
(test_cli), the loaders' own error paths (test_image_tasks), data_prep's missing/corrupt
source files (test_data_prep), the tf.function paths of the export's input checks
(test_export) and convert's name checks (test_convert).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import re
import shutil
import signal
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_cli import sine_config  # the tiny sinusoid Config of the CLI tests
from test_convert import save_tf1, save_tf1_sinusoid  # TF1 name-based checkpoints
from test_data_prep import (  # the tiny official layouts of the data_prep tests
    jpeg_bytes,
    mini_image,
    mini_rows,
    omniglot_files,
    sha256_tree,
    write_csvs,
    write_zip,
)

from tf_maml import baselines, experiment, losses, models, options, runner
from tf_maml import evaluate as evaluate_lib
from tf_maml.api import MetaLearner
from tf_maml.checkpoint import CheckpointError, learner_checkpointer, restore_for_test
from tf_maml.config import Config, ConfigError
from tf_maml.data import miniimagenet as mprep
from tf_maml.data import omniglot as oprep
from tf_maml.data.prep import PrepError
from tf_maml.errors import BatchError
from tf_maml.export import export
from tf_maml.mapping import ExecutionPlan
from tf_maml.tasks.image_tasks import DataError
from tf_maml.tasks.sinusoid import SinusoidTasks
from tf_maml.train import NonFiniteError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- helpers
def cli(*args: str) -> types.SimpleNamespace:
    """Runs the tf-maml command line in this process exactly as the console script does
    (``tf_maml.main.run``: absl's ``app.run(main)``); returns its exit code, stdout and
    stderr. The handlers of Ctrl-C and SIGTERM, which the command sets for its process, come
    back after it (an ignored one would be inherited by the subprocesses of later tests)."""
    from absl import flags

    from tf_maml import main as cli_main

    flags.FLAGS.unparse_flags()  # every run starts from the defaults
    out, err = io.StringIO(), io.StringIO()
    code = 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_main.run(["tf-maml", *args])
        except SystemExit as exit_:
            code = 0 if exit_.code is None else exit_.code
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return types.SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue())


def as_flags(config: Config, **overrides) -> list[str]:
    """The command-line flags that give ``config`` (with ``overrides``)."""
    config = dataclasses.replace(config, **overrides)
    defaults = Config()
    return [f"--{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(Config)
            if getattr(config, f.name) != getattr(defaults, f.name)
            and getattr(config, f.name) is not None]


def snapshot(root) -> dict[str, str]:
    """{relative path: sha256} of every file below ``root`` ({} if it does not exist)."""
    return sha256_tree(str(root)) if os.path.exists(root) else {}


def one_line_error(stderr: str) -> str:
    """The ``tf-maml: error: ...`` line; fails if there is none or a traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("tf-maml: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory):
    """A finished sinusoid run directory as training leaves it (checkpoints model-20 and
    model-40 with Adam's state, config.json, training_log.csv, the result files), written
    without spending time on training; and its Config."""
    root = tmp_path_factory.mktemp("sine_run")
    config = sine_config(root, metatrain_iterations=40, num_test_tasks=10, test_num_updates=2)
    run_dir = root / config.exp_string()
    os.makedirs(run_dir)
    checkpointer = learner_checkpointer(experiment.build_learner(config), str(run_dir))
    checkpointer.save(20)
    checkpointer.save(40)
    (run_dir / "config.json").write_text(config.to_json())
    (run_dir / "training_log.csv").write_text(
        "iteration,phase,pre,post,val_pre,val_post,seconds\n40,metatrain,3.1,0.9,,,2.5\n")
    values = np.random.default_rng(0).random((10, 3))
    evaluate_lib.write_results(str(run_dir), values, config.update_batch_size,
                               config.update_lr)
    assert (run_dir / "test_ubs5_stepsize0.01.csv").exists()
    return config, run_dir


@pytest.fixture
def sine_copy(sine_run, tmp_path):
    """A private copy of the finished run: (Config pointing at it, its run directory)."""
    config, run_dir = sine_run
    logdir = tmp_path / "logs"
    shutil.copytree(run_dir, logdir / run_dir.name)
    config = dataclasses.replace(config, logdir=str(logdir))
    (logdir / run_dir.name / "config.json").write_text(config.to_json())
    return config, logdir / run_dir.name


# ---------------------------------------------------------------------------- flags
def test_missing_flagfile_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "sinusoid.flags"
    result = cli(f"--flagfile={missing}", f"--logdir={tmp_path / 'logs'}")
    assert result.code == 1
    assert "Unable to open flagfile" in result.err and str(missing) in result.err
    assert not (tmp_path / "logs").exists()


def test_a_flagfile_that_is_not_text_or_a_folder_is_named_by_every_command(tmp_path,
                                                                          monkeypatch, capsys):
    # A flagfile saved as UTF-16 (Notepad's "Unicode") or in Latin-1 was a
    # UnicodeDecodeError traceback from absl's parser; a folder, absl's "FATAL Flags parsing
    # error: ERROR:: Unable to open flagfile: [Errno 21] Is a directory".
    utf16 = tmp_path / "utf16.flags"
    utf16.write_text("--datasource=sinusoid\n", encoding="utf-16")
    latin = tmp_path / "latin.flags"
    latin.write_bytes("--datasource=sinusoid\n--logdir=caf\u00e9\n".encode("latin-1"))
    nested = tmp_path / "nested.flags"
    nested.write_text(f"--flagfile={latin}\n")
    expect = {
        utf16: "cannot be read as text (it is UTF-16, as Notepad's 'Unicode' saves): save it "
               "as UTF-8",
        latin: "cannot be read as text (its byte 34 is not utf-8): save it as UTF-8",
        tmp_path: "is a folder, not a flagfile: give a file of flags",
    }
    for given, (named, why) in ((utf16, (utf16, expect[utf16])),
                                (nested, (latin, expect[latin])),
                                (tmp_path, (tmp_path, expect[tmp_path]))):
        result = cli(f"--flagfile={given}")
        assert (result.code, result.err.strip()) == (
            2, f"tf-maml: error: --flagfile={named} {why}")
    import data_prep
    from tf_maml import reproduce

    monkeypatch.setattr(sys, "argv", ["data_prep.omniglot", f"--flagfile={utf16}"])
    with pytest.raises(SystemExit) as exit_:
        data_prep.run(lambda: None, lambda: pytest.fail("it prepared"))
    assert exit_.value.code == f"ERROR: --flagfile={utf16} {expect[utf16]}"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        reproduce.run(["tf-maml-reproduce", f"--flagfile={utf16}"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"tf-maml-reproduce: error: --flagfile={utf16} {expect[utf16]}\n")


def test_unknown_flag_in_flagfile_is_named_with_the_right_spelling(tmp_path):
    flagfile = tmp_path / "typo.flags"
    flagfile.write_text(f"--datasource=sinusoid\n--update_batchsize=10\n--logdir={tmp_path}/l\n")
    result = cli(f"--flagfile={flagfile}")
    assert result.code == 1
    assert "Unknown command line flag 'update_batchsize'" in result.err
    assert "Did you mean: update_batch_size" in result.err
    assert not (tmp_path / "l").exists()


def test_flag_of_the_wrong_type_in_flagfile_is_named(tmp_path):
    flagfile = tmp_path / "type.flags"
    flagfile.write_text("--num_classes=five\n")
    result = cli(f"--flagfile={flagfile}", f"--logdir={tmp_path / 'l'}")
    assert result.code == 1
    assert "--num_classes=five" in result.err and "invalid literal for int()" in result.err


def test_enum_flag_lists_its_choices(tmp_path):
    result = cli("--nan_policy=ignore", f"--logdir={tmp_path / 'l'}")
    assert result.code == 1
    assert "--nan_policy=ignore" in result.err and "<stop|skip>" in result.err


def test_flagfile_saved_with_a_byte_order_mark_says_so(tmp_path):
    # Was "Unexpected arguments: --datasource=sinusoid", the mark invisible in the message.
    flagfile = tmp_path / "notepad.flags"
    flagfile.write_text(f"\ufeff--datasource=sinusoid\n--logdir={tmp_path}/l\n",
                        encoding="utf-8")
    result = cli(f"--flagfile={flagfile}")
    assert result.code == 1
    assert "'--datasource=sinusoid' starts with an invisible byte-order mark" in result.err
    assert "save it as UTF-8 without one" in result.err
    assert not (tmp_path / "l").exists()


@pytest.mark.parametrize("written, problem", [
    ('"{path}"', '"{path}" is in quotes, which only a shell removes (not a flagfile): they '
                 "would be part of the folder's name; write {path}"),
    ("'{path}'", "'{path}' is in quotes, which only a shell removes (not a flagfile): they "
                 "would be part of the folder's name; write {path}"),
    ("{path}  # the runs", "'{path}  # the runs' holds a comment, which a flagfile does not "
                           "strip (only a line starting with # is a comment): write {path}"),
], ids=["double-quotes", "single-quotes", "comment"])
def test_a_path_written_for_a_shell_in_a_flagfile_is_named(tmp_path, monkeypatch, written,
                                                           problem):
    # A shell removes quotes and comments, a flagfile keeps them: the run went into a folder
    # named '"' in the current directory, or one named "l  # the runs", without a word.
    monkeypatch.chdir(tmp_path)
    flagfile = tmp_path / "shell.flags"
    path = f"{tmp_path}/l"
    flagfile.write_text(f"--datasource=sinusoid\n--metatrain_iterations=1\n--num_test_tasks=1\n"
                        f"--logdir={written.format(path=path)}\n")
    result = cli(f"--flagfile={flagfile}")
    assert result.code == 2
    assert one_line_error(result.err) == f"tf-maml: error: --logdir: {problem.format(path=path)}"
    assert os.listdir(tmp_path) == ["shell.flags"]


def test_positional_argument_is_refused(tmp_path):
    result = cli("train", f"--logdir={tmp_path / 'l'}")
    assert result.code == 1
    assert "Unexpected arguments: train" in result.err
    assert not (tmp_path / "l").exists()


@pytest.mark.parametrize("args, message", [
    (("--algorithm=reptile", "--meta_sgd=True"),
     "--meta_sgd: Meta-SGD learns inner step sizes through the meta-gradient; Reptile has none"),
    (("--train_update_lr=0",), "--train_update_lr: must be -1 (same as --update_lr) or positive"),
    (("--train_update_batch_size=0",), "--train_update_batch_size: must be -1"),
    (("--test_num_updates=-1",), "--test_num_updates: must be >= 0, got -1"),
    (("--train=False", "--ensemble=2", "--export_dir=x"),
     "--export_dir: exports one checkpoint, and --ensemble=2 evaluates an ensemble"),
    (("--datasource=navigation", "--export_dir=x"),
     "--export_dir: the navigation policy has no SavedModel export"),
    # Was ignored: the policy started from its own initialisation, as without the flag.
    (("--datasource=navigation", "--init_checkpoint=x/model59000", "--train=False"),
     "--init_checkpoint: initialises a supervised net from an original TF1 checkpoint; the "
     "navigation policy starts from its own initialisation: drop --init_checkpoint"),
    # Was the latest checkpoint's evaluation, reported as if asked for (a typo for model-7).
    (("--train=False", "--test_iter=-7"),
     "--test_iter: -1 (the latest checkpoint) or the iteration N of a checkpoint model-N, "
     "got -7"),
    # Not expanded in a flagfile nor after --flag=: was a folder named ~ in the current one.
    (("--datasource=omniglot", "--data_dir=~/data/omniglot"),
     f"--data_dir: '~/data/omniglot' starts with ~, which only a shell expands (not a "
     f"flagfile, nor --flag=~/...): it would be a folder named ~ here; write "
     f"{os.path.expanduser('~/data/omniglot')}"),
    # Keras' seed range: was a traceback from keras.utils.set_random_seed.
    (("--seed=-1",), "--seed: must be in [0, 4294967295]"),
    # Was a traceback from inside the first traced meta-step, after the run directory was made.
    (("--task_parallelism=accumulate", "--tasks_per_chunk=3", "--meta_batch_size=4"),
     "--tasks_per_chunk: 3 tasks per chunk do not divide --meta_batch_size=4; use one of 1, "
     "2, 4"),
])
def test_contradictory_or_impossible_flags_exit_2_naming_the_flag(tmp_path, args, message):
    result = cli(*args, f"--logdir={tmp_path / 'l'}")
    assert result.code == 2
    assert one_line_error(result.err).startswith(f"tf-maml: error: {message}")
    assert not (tmp_path / "l").exists()


def test_paper_flagfile_without_data_dir_says_what_to_run(tmp_path):
    result = cli(f"--flagfile={REPO}/flags/omniglot_5way_1shot.flags",
                 f"--logdir={tmp_path / 'l'}")
    assert result.code == 2
    line = one_line_error(result.err)
    assert "--data_dir" in line and "python -m data_prep.omniglot" in line
    assert not (tmp_path / "l").exists()


def test_flagfile_conflict_is_reported_in_one_line(tmp_path):
    """A flagfile for MiniImageNet without max pooling."""
    flagfile = tmp_path / "mini.flags"
    flagfile.write_text(f"--datasource=miniimagenet\n--data_dir={tmp_path}/data\n"
                        f"--logdir={tmp_path}/logs\n")
    result = cli(f"--flagfile={flagfile}")
    assert result.code == 2
    line = one_line_error(result.err)
    assert line.startswith("tf-maml: error: --max_pool: ") and "--max_pool=True" in line
    assert sorted(os.listdir(tmp_path)) == ["mini.flags"]


@pytest.mark.parametrize("flags, named, what", [
    (["--datasource=sinusoid", "--update_batch_size=1000000000000"], "update_batch_size",
     "a meta-batch (25 tasks x 2000000000000 examples of 1 value)"),
    (["--datasource=omniglot", "--data_dir=unused", "--meta_batch_size=10000000000"],
     "meta_batch_size", "a meta-batch (10000000000 tasks x 50 examples of 784 values)"),
    (["--datasource=sinusoid", "--train=False", "--num_test_tasks=1000000000000"],
     "num_test_tasks", "the evaluation's tasks (1000000000000 tasks x 10 examples of 1 value, "
     "sampled before it starts)"),
    (["--datasource=navigation", "--norm=None", "--update_batch_size=1000000000000"],
     "update_batch_size", "training (25 tasks x 1000000000000 trajectories x 100 steps, "
     "before and after the update)"),
    # (At most 1000 inner steps unroll: 1000 of MiniImageNet's 99-shot support sets through
    # 1024 filters are 13 TB.)
    (["--datasource=miniimagenet", "--data_dir=unused", "--max_pool=True",
      "--num_filters=1024", "--update_batch_size=99", "--num_updates=1000"], "num_updates",
     "a meta-batch (25 tasks x 570 examples of 21168 values, the activations of 1000 inner "
     "steps)"),
    # The evaluation of an RL run had no check: it sampled until the system killed it.
    (["--datasource=navigation", "--norm=None", "--train=False",
      "--update_batch_size=1000000000000"], "update_batch_size",
     "the evaluation's rollouts (40 tasks x 1000000000000 trajectories x 100 steps at once)"),
], ids=["support-set", "meta-batch", "test-tasks", "trajectories", "inner-steps",
        "rl-evaluation"])
def test_a_run_larger_than_any_memory_is_refused_naming_the_flag(tmp_path, monkeypatch,
                                                                 flags, named, what):
    # Was killed by the system for lack of memory once its first batch was sampled, with
    # no word. The sizes are far beyond any machine's memory: 25 x 2e12 float32 inputs
    # alone are 200 TB. (The machine's memory, as seen outside a container with a limit.)
    from tf_maml import threads

    monkeypatch.setattr(threads, "container_memory", lambda: None)
    result = cli(*flags, f"--logdir={tmp_path / 'logs'}")
    assert result.code == 1
    line = one_line_error(result.err)
    value = next(f for f in flags if f.startswith(f"--{named}=")).split("=")[1]
    assert line.startswith(f"tf-maml: error: --{named}={value}: {what} would take at least ")
    assert line.endswith(f"GB of memory, more than this machine's "
                         f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f}"
                         f" GB: the system would kill the process without a word; give a "
                         f"smaller --{named}")
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("limit, seen", [("1073741824\n", 2**30), ("max\n", None),
                                         ("9223372036854771712\n", None)],
                         ids=["limited", "v2-unlimited", "v1-unlimited"])
def test_the_memory_check_takes_a_containers_limit(tmp_path, monkeypatch, limit, seen):
    # A container (Docker's --memory, a pod, a CI job) sees the host's RAM: a run above its
    # limit passed the check, and was killed at the limit without a word.
    from tf_maml import threads

    path = tmp_path / "memory.max"
    path.write_text(limit)
    monkeypatch.setattr(threads, "CGROUP_MEMORY_LIMITS", (str(tmp_path / "none"), str(path)))
    monkeypatch.setattr(threads, "physical_memory", lambda: 64 * 2**30)  # any machine's
    assert threads.container_memory() == seen
    config = sine_config(tmp_path, update_batch_size=10**7, train=True, meta_batch_size=4)
    needed = max(n for n, _, _ in experiment.least_memory(config))
    assert 2**30 < needed < 8 * 2**30  # above the limit, below the machine's memory
    if seen is None:
        runner._check_memory(config)
        return
    with pytest.raises(ConfigError, match=r"^--update_batch_size=10000000: .* would take at "
                       r"least [0-9.]+ GB of memory, more than the 1\.0 GB this container may "
                       r"use \(its cgroup memory limit\): the system would kill the process "
                       r"without a word; give a smaller --update_batch_size$"):
        runner._check_memory(config)


@pytest.mark.parametrize("overrides, flag", [
    (dict(train=False, test_num_updates=10**9), "test_num_updates"),
    (dict(num_updates=1001, stop_grad=True), "num_updates"),  # first order: no memory check
    (dict(num_updates=5000, algorithm="reptile"), "num_updates"),
])
def test_more_inner_steps_than_unroll_are_refused_up_front(overrides, flag):
    # Each inner step is unrolled into the traced graph; 10**9 test steps (or a first-order
    # run's 10**9 steps, which keep one step's activations) traced without end, no tensor
    # large enough for the memory check to see.
    value = overrides[flag]
    with pytest.raises(ConfigError, match=rf"^--{flag}: {value} inner steps would each be "
                                          r"unrolled into the traced graph .*more than the "
                                          r"1000 tf_maml takes; give at most 1000$"):
        Config(datasource="sinusoid", **overrides).validate()
    Config(datasource="sinusoid", **{**overrides, flag: 1000}).validate()  # the bound itself


@pytest.mark.parametrize("overrides, flag, each", [
    (dict(train=False, test_num_updates=10**9), "test_num_updates",
     r"would each sample a fresh batch of trajectories of every task"),
    (dict(num_updates=1001), "num_updates", r"would each be unrolled into the traced graph"),
])
def test_more_rl_inner_steps_than_tf_maml_takes_are_refused_up_front(overrides, flag, each):
    # RL took any count: --test_num_updates=10**9 sampled trajectories of every task for
    # each of its steps, for years; the meta-gradient unrolls --num_updates from θ.
    value = overrides[flag]
    with pytest.raises(ConfigError, match=rf"^--{flag}: {value} inner steps {each} .*more "
                                          r"than the 1000 tf_maml takes; give at most 1000$"):
        Config(datasource="navigation", norm="None", **overrides).validate()
    Config(datasource="navigation", norm="None", **{**overrides, flag: 1000}).validate()


def test_more_rl_inner_steps_than_tf_maml_takes_are_refused_by_the_api(monkeypatch):
    # RLMetaLearner(inner_steps=10**9) and evaluate(tasks, 10**9, rng) ran without end, and
    # evaluate(tasks, -1, rng) failed in numpy's stack of no returns. The bound lowered to 2
    # stands for the real one (1000).
    from tf_maml import adapt as adapt_lib
    from tf_maml.rl.learner import RLMetaLearner
    from tf_maml.rl.policy import gaussian_mlp_policy
    from tf_maml.tasks.navigation import NavigationTasks

    monkeypatch.setattr(adapt_lib, "MAX_UNROLLED_STEPS", 2)
    env = NavigationTasks()
    with pytest.raises(ValueError, match=r"^inner_steps=3: 3 inner steps would each be "
                                         r"unrolled .*give at most 2$"):
        RLMetaLearner(gaussian_mlp_policy(2, 2), env, inner_steps=3)
    learner = RLMetaLearner(gaussian_mlp_policy(2, 2), env, inner_steps=2, num_trajectories=1)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"^evaluate: num_steps=3: 3 inner steps would each "
                                         r"sample a fresh batch .*give at most 2$"):
        learner.evaluate(env.sample_tasks(1, rng), 3, rng)
    with pytest.raises(ValueError, match=r"^num_steps must be a whole number of inner steps "
                                         r">= 0, got -1$"):
        learner.evaluate(env.sample_tasks(1, rng), -1, rng)


@pytest.mark.parametrize("train", [True, False], ids=["train", "evaluate"])
def test_a_network_larger_than_any_memory_is_refused_naming_num_filters(train):
    # The check counted inputs and activations, not weights: 100000 filters (27 * 10**10
    # kernel values, 4 TB with Adam's moments) passed it, and building the net took what
    # memory there was. Asked of the check itself: building the net is what it prevents.
    config = Config(datasource="omniglot", data_dir="unused", num_filters=100000,
                    train=train).validate()
    copies, what = ((4, "θ, its meta-gradient and Adam's two moments") if train
                    else (2, "θ and the adapted weights"))
    with pytest.raises(ConfigError, match=rf"^--num_filters=100000: the network's weights "
                       rf"\({copies} x 270001400000 values: {what}\) would take at least "
                       r"[0-9.]+ GB of memory, more than this machine's [0-9.]+ GB: the system "
                       r"would kill the process without a word; give a smaller --num_filters$"):
        runner._check_memory(config)
    runner._check_memory(dataclasses.replace(config, num_filters=64))


@pytest.mark.parametrize("field, value, what", [
    ("num_updates", "5", "a whole number"),
    ("num_updates", 2.5, "a whole number"),
    ("train", "False", "True or False"),
    ("meta_lr", "0.1", "a number"),
    ("logdir", 5, "a string"),
    ("data_dir", 3, "a string or None"),
], ids=["string-count", "fractional-count", "string-bool", "string-rate", "number-path",
        "number-optional-path"])
def test_a_config_of_python_values_of_the_wrong_type_is_named(field, value, what):
    # tf_maml.Config takes any value: "5" was a TypeError from a comparison, "False" trained
    # (a non-empty string is true), 2.5 inner steps ran 2.
    with pytest.raises(ConfigError, match=rf"^--{field}: {re.escape(repr(value))} is not "
                                          rf"{what}$"):
        Config(**{field: value}).validate()


@pytest.mark.parametrize("overrides, flag, value, net", [
    (dict(num_classes=3), "num_classes", 3, "--datasource=sinusoid trains the original's MLP"),
    (dict(num_filters=32), "num_filters", 32, "--datasource=sinusoid trains the original's MLP"),
    (dict(max_pool=True), "max_pool", True, "--datasource=sinusoid trains the original's MLP"),
    (dict(conv=False), "conv", False, "--datasource=sinusoid trains the original's MLP"),
    (dict(datasource="omniglot", data_dir="x", conv=False, num_filters=32), "num_filters", 32,
     "--conv=False trains the original's fully connected net"),
    (dict(datasource="omniglot", data_dir="x", conv=False, max_pool=True), "max_pool", True,
     "--conv=False trains the original's fully connected net"),
], ids=["sine-classes", "sine-filters", "sine-pool", "sine-conv", "fc-filters", "fc-pool"])
def test_a_flag_of_a_net_the_run_does_not_train_is_refused(overrides, flag, value, net):
    # Each was ignored but for the run directory's name (cls_3, hidden32, maxpool): the
    # network trained was the same.
    with pytest.raises(ConfigError, match=rf"^--{flag}: {re.escape(net)} \(.*\), which it "
                                          rf"does not change; drop --{flag}={value}$"):
        Config(**overrides).validate()


def test_no_flagfile_of_the_paper_needs_more_memory_than_a_small_machine():
    # The memory check refuses only a run that cannot be: every configuration of the paper
    # (the flagfiles, Omniglot 20-way with 16 tasks, MiniImageNet 5-shot with 15 query
    # images) ran on 2017's GPUs; its least memory is well below 8 GB.
    from tf_maml.reproduce_table import config_for

    flagfiles = sorted(f for f in os.listdir(os.path.join(REPO, "flags"))
                       if f.endswith(".flags"))
    assert len(flagfiles) > 40
    for name in flagfiles:
        path = os.path.join(REPO, "flags", name)
        with open(path) as f:
            images = "--datasource=omniglot" in f.read() or "miniimagenet" in name
        config = config_for(path, {"data_dir": "unused"} if images else {})
        for needed, what, _ in experiment.least_memory(config):
            assert needed < 8 * 2**30, (name, what, needed / 2**30)


# ---------------------------------------------------------------------------- data folders
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared tiny data written by the data_prep functions: {"omniglot": folder (12
    characters x 20 drawings), "miniimagenet": folder (train 3 / val 2 / test 2 classes x 6
    images)} plus their sources."""
    root = tmp_path_factory.mktemp("prepared")
    for set_name, files in omniglot_files().items():
        write_zip(str(root / f"{set_name}.zip"), files)
    rng = np.random.default_rng(1)
    rows = mini_rows()
    (root / "images").mkdir()
    for index, (filename, _) in enumerate(r for split in rows.values() for r in split):
        (root / "images" / filename).write_bytes(mini_image(rng, index))
    write_csvs(root / "csv", rows)
    oprep.prepare_omniglot(str(root), str(root / "omniglot"), expect_counts=False)
    mprep.prepare_miniimagenet(str(root / "images"), str(root / "csv"),
                               str(root / "miniimagenet"), expect_counts=False)
    return {"source": root, "omniglot": root / "omniglot", "miniimagenet": root / "miniimagenet"}


def mini_config(data_dir, **overrides) -> Config:
    base = dict(datasource="miniimagenet", data_dir=str(data_dir), max_pool=True,
                num_filters=32, num_classes=2, update_batch_size=1, meta_batch_size=2)
    base.update(overrides)
    return Config(**base).validate()


def test_missing_data_dir_says_what_to_run(tmp_path):
    missing = tmp_path / "moved_away"
    with pytest.raises(DataError) as info:
        experiment.task_source(mini_config(missing), "train")
    assert f"MiniImageNet data not found at {missing}" in str(info.value)
    assert "python -m data_prep.miniimagenet" in str(info.value)
    assert f"--output={missing}" in str(info.value)
    assert not missing.exists()


def test_empty_data_dir_says_what_to_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = Config(datasource="omniglot", data_dir=str(empty)).validate()
    with pytest.raises(DataError) as info:
        experiment.task_source(config, "train")
    assert "no class folders */* found" in str(info.value)
    assert "python -m data_prep.omniglot" in str(info.value)
    assert os.listdir(empty) == []


def copy_prepared(prepared, tmp_path) -> str:
    data_dir = tmp_path / "miniimagenet"
    shutil.copytree(prepared["miniimagenet"], data_dir)
    return str(data_dir)


def replace_image(path: str, data: bytes, cache: str) -> None:
    """Overwrites an image, newer than the split's npz cache (so the cache is not used)."""
    with open(path, "wb") as f:
        f.write(data)
    later = os.stat(cache).st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))


def test_a_run_without_its_evaluation_split_stops_before_training(prepared, tmp_path):
    # --test_set=True (every paper flagfile) with the test split missing: the run trained to
    # the end (10 hours for MiniImageNet), then stopped at "data not found".
    data_dir = copy_prepared(prepared, tmp_path)
    shutil.rmtree(os.path.join(data_dir, "test"))
    os.remove(os.path.join(data_dir, "test.npz"))
    config = mini_config(data_dir, num_filters=4, metatrain_iterations=2, test_set=True,
                         num_test_tasks=2, logdir=str(tmp_path / "logs"))
    with pytest.raises(DataError, match=rf"^MiniImageNet data not found at "
                       rf"{re.escape(os.path.join(data_dir, 'test'))}: "):
        runner.run(config, log=lambda *_: None)
    assert not os.path.exists(os.path.join(runner.run_dir(config), "checkpoint"))  # untrained


@pytest.mark.parametrize("damage, message", [
    ("truncated", r"1 image file is damaged: .*/test/n03000002/n0300000200000004\.jpg \(cut "
                  r"short: no JPEG end marker\); run `python -m data_prep\.miniimagenet "),
    ("100x90", r"n0300000200000004\.jpg is 100x90, expected 84x84: delete it and run "
               r"`python -m data_prep\.miniimagenet "),
])
def test_damaged_image_in_prepared_data_is_named(prepared, tmp_path, damage, message):
    data_dir = copy_prepared(prepared, tmp_path)
    victim = os.path.join(data_dir, "test", "n03000002", "n0300000200000004.jpg")
    with open(victim, "rb") as f:
        good = f.read()
    rng = np.random.default_rng(0)
    bad = good[:300] if damage == "truncated" else jpeg_bytes(
        Image.fromarray(rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)))
    replace_image(victim, bad, os.path.join(data_dir, "test.npz"))
    before = snapshot(data_dir)
    with pytest.raises(DataError, match=message) as info:
        experiment.task_source(mini_config(data_dir), "test", 1)
    assert f"--output={data_dir}`" in str(info.value)  # the folder to rebuild
    assert snapshot(data_dir) == before
    # Doing what it says repairs the folder (data_prep used to answer "already complete").
    if "delete it" in str(info.value):
        os.remove(victim)
    source = prepared["source"]
    mprep.prepare_miniimagenet(str(source / "images"), str(source / "csv"), data_dir,
                               expect_counts=False)
    with open(victim, "rb") as f:
        assert f.read() == good
    experiment.task_source(mini_config(data_dir), "test", 1)


@pytest.mark.parametrize("dataset, removed, message", [
    ("miniimagenet", "train/n01000001", "the MiniImageNet train split at {root}/train holds 2 "
                                        "classes and 12 images, but data_prep wrote 3 and 18"),
    ("miniimagenet", "test/n03000002/n0300000200000004.jpg",
     "the MiniImageNet test split at {root}/test holds 2 classes and 11 images, but data_prep "
     "wrote 2 and 12"),
    ("omniglot", "Alpha/character01/0001_01.png",
     "Omniglot at {root} holds 12 classes and 239 images, but data_prep wrote 12 and 240"),
], ids=["mini-class-folder", "mini-image", "omniglot-drawing"])
def test_prepared_data_with_files_removed_since_is_named(prepared, tmp_path, dataset, removed,
                                                         message):
    # Trained and evaluated silently on what was left: a benchmark of 19 test classes, say.
    from tf_maml.tasks.omniglot import omniglot_tasks

    root = tmp_path / dataset
    shutil.copytree(prepared[dataset], root)
    victim = root / removed
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    before = snapshot(root)
    with pytest.raises(DataError) as info:
        if dataset == "omniglot":
            omniglot_tasks(str(root), "train", 2, 1, 1, num_train=8, num_val=2)
        else:
            experiment.task_source(mini_config(root, num_query=1), removed.split("/")[0], 1)
    assert str(info.value).startswith(message.format(root=root))
    assert f"python -m data_prep.{dataset} " in str(info.value)
    assert snapshot(root) == before


def test_prepared_split_moved_away_is_named_before_training_on_another(prepared, tmp_path):
    # Was silence: training ran, and the evaluation after it found no test split.
    root = tmp_path / "miniimagenet"
    shutil.copytree(prepared["miniimagenet"], root)
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match=rf"^the MiniImageNet test split at {root}/test holds 0 "
                                        r"classes and 0 images, but data_prep wrote 2 and 12 "
                                        r".*python -m data_prep\.miniimagenet "):
        experiment.task_source(mini_config(root, num_query=1), "train", 1)


@pytest.mark.parametrize("dataset, given, message", [
    ("omniglot", "", "{root} is the folder above the prepared Omniglot data at {root}/omniglot "
                     "(the folder tree of data_prep): give {root}/omniglot as --data_dir"),
    ("omniglot", "omniglot/Alpha/character01", "{root}/omniglot/Alpha/character01 is a folder "
     "inside the prepared Omniglot data at {root}/omniglot (the folder tree of data_prep): "
     "give {root}/omniglot as --data_dir"),
    ("miniimagenet", "miniimagenet/test", "{root}/miniimagenet/test is a folder inside the "
     "prepared MiniImageNet data at {root}/miniimagenet"),
    ("omniglot", "{tmp}/images_background", "{tmp}/images_background holds the Omniglot files "
     "that data_prep reads, not prepared data: prepare them into a new folder with `python -m "
     "data_prep.omniglot --source={tmp} --output=<new folder>`"),
    ("miniimagenet", "images", "{root}/images holds the MiniImageNet files that data_prep "
     "reads, not prepared data: prepare them into a new folder with `python -m "
     "data_prep.miniimagenet --images={root}/images --csv_dir=<folder with train.csv"),
    ("omniglot", "images_background.zip", "{root}/images_background.zip is a file, not a "
     "folder: give the folder of the prepared Omniglot data as --data_dir (to prepare it into "
     "a new folder, run `python -m data_prep.omniglot --source="),
    ("miniimagenet", "csv/test.csv", "{root}/csv/test.csv is a file, not a folder: give the "
     "folder of the prepared MiniImageNet data"),
], ids=["omniglot-parent", "omniglot-character", "mini-split", "omniglot-raw-set",
        "mini-raw-images", "omniglot-archive", "mini-file"])
def test_data_dir_off_by_a_level_or_a_source_folder_names_the_folder_to_give(
        prepared, tmp_path, dataset, given, message):
    # Was advice to run data_prep with --output=<the folder given> (for a source set folder:
    # to delete a source drawing first; for a file, an archive: --output=<that file>), or
    # "no class folders */* found".
    from tf_maml.tasks.omniglot import omniglot_tasks

    root = prepared["source"]
    drawing = tmp_path / "images_background" / "Alpha" / "character01" / "0001_01.png"
    drawing.parent.mkdir(parents=True)
    Image.new("1", (105, 105), 1).save(drawing)
    before = snapshot(root), snapshot(tmp_path)
    data_dir = os.path.join(root, given.format(tmp=tmp_path)) if given else str(root)
    with pytest.raises(DataError) as info:
        if dataset == "omniglot":
            omniglot_tasks(data_dir, "train", 2, 1, 1, num_train=8, num_val=2)
        else:
            experiment.task_source(mini_config(data_dir, num_query=1), "test", 1)
    assert str(info.value).startswith(message.format(root=root, tmp=tmp_path))
    assert (snapshot(root), snapshot(tmp_path)) == before


@pytest.mark.parametrize("damage", ["garbled", "split-not-a-dict"])
def test_damaged_completion_marker_is_warned_and_rewritten_by_data_prep(prepared, tmp_path,
                                                                         monkeypatch, damage):
    # Was silence (a garbled marker: no check against its counts, no warning) or an
    # AttributeError traceback from the loader and from data_prep.
    from tf_maml.tasks import image_tasks

    data_dir = copy_prepared(prepared, tmp_path)
    marker = os.path.join(data_dir, ".complete")
    with open(marker) as f:
        good = f.read()
    damaged = json.loads(good)
    damaged["splits"]["test"] = 20  # a class count where the split's counts belong
    with open(marker, "w") as f:
        f.write(good[:40] if damage == "garbled" else json.dumps(damaged))
    warnings = []
    monkeypatch.setattr(image_tasks.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    experiment.task_source(mini_config(data_dir, num_query=1), "test", 1)
    assert [w for w in warnings if "marker is damaged" in w and f"--output={data_dir}`" in w]
    source = prepared["source"]
    mprep.prepare_miniimagenet(str(source / "images"), str(source / "csv"), data_dir,
                               expect_counts=False)
    with open(marker) as f:
        assert f.read() == good


def test_too_few_images_for_support_plus_query(prepared):
    """MiniImageNet trains with 15 query images per class: 1 + 15 > 6 images per class."""
    before = snapshot(prepared["miniimagenet"])
    with pytest.raises(DataError, match=r"3 classes have fewer images than num_support \+ "
                                        r"num_query = 16: n01000001 \(6\)"):
        experiment.task_source(mini_config(prepared["miniimagenet"]), "train")
    assert snapshot(prepared["miniimagenet"]) == before


def image_run(prepared, tmp_path) -> tuple[Config, str]:
    """A MiniImageNet run directory with a checkpoint, config.json, a training log and a
    result file, as a finished run leaves it."""
    config = mini_config(prepared["miniimagenet"], logdir=str(tmp_path / "logs"))
    run_dir = runner.run_dir(config)
    os.makedirs(run_dir)
    learner = experiment.build_learner(config)
    learner_checkpointer(learner, run_dir).save(5)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(config.to_json())
    with open(os.path.join(run_dir, "training_log.csv"), "w") as f:
        f.write("iteration,phase,pre,post,val_pre,val_post,seconds\n5,metatrain,0.2,0.3,,,1\n")
    with open(os.path.join(run_dir, "test_ubs1_stepsize0.001.csv"), "w") as f:
        f.write("update0,update1\n0.2,0.3\n")
    return config, run_dir


@pytest.mark.parametrize("train", [True, False])
def test_missing_data_dir_leaves_an_existing_run_untouched(prepared, tmp_path, train):
    config, run_dir = image_run(prepared, tmp_path)
    before = snapshot(run_dir)
    moved = tmp_path / "moved_away"
    with pytest.raises(DataError, match=f"MiniImageNet data not found at {moved}"):
        runner.run(dataclasses.replace(config, data_dir=str(moved), train=train,
                                       metatrain_iterations=10), log=lambda s: None)
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------- data_prep
def test_omniglot_empty_source_folders_are_named(tmp_path):
    for set_name in oprep.SETS:
        (tmp_path / "src" / set_name).mkdir(parents=True)
    with pytest.raises(PrepError, match=r"no PNG drawings found in .*images_background"):
        oprep.prepare_omniglot(str(tmp_path / "src"), str(tmp_path / "out"),
                               expect_counts=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["output", "below"])
def test_omniglot_output_that_is_a_file_is_named(prepared, tmp_path, where):
    # Was a FileExistsError / NotADirectoryError traceback from os.makedirs.
    blocker = tmp_path / "omniglot"
    blocker.write_text("a file")
    output = blocker if where == "output" else blocker / "inside"
    with pytest.raises(PrepError, match=rf"^cannot write {output}: .*; {output} must be a "
                                        r"folder, and a file is in the way .*another --output"):
        oprep.prepare_omniglot(str(prepared["source"]), str(output), expect_counts=False)
    assert blocker.read_text() == "a file" and os.listdir(tmp_path) == ["omniglot"]


@pytest.mark.parametrize("fmt", ["folders", "tfds"])
@pytest.mark.parametrize("below", ["", "omniglot"], ids=["the-link", "below-it"])
def test_an_output_linked_to_nothing_names_the_link(prepared, tmp_path, fmt, below):
    # A link to a disk not mounted: the folder tree said "File exists; ... a file is in the
    # way", and a TFDS build was a FileNotFoundError traceback from its first folder.
    link, target = tmp_path / "linked", tmp_path / "unmounted" / "data"
    link.symlink_to(target)
    output = os.path.join(str(link), below) if below else str(link)
    with pytest.raises(PrepError, match=rf"^cannot write {re.escape(output)}: "
                       rf"{re.escape(str(link))} is a link to {re.escape(str(target))}, which "
                       r"does not exist \(a disk not mounted\?\); mount or create "
                       rf"{re.escape(str(target))}, or give another --output$"):
        if fmt == "folders":
            oprep.prepare_omniglot(str(prepared["source"]), output, expect_counts=False)
        else:
            from tf_maml.tfds import build

            build.build_omniglot(str(prepared["source"]), output, "full_105",
                                 expect_counts=False)
    assert sorted(os.listdir(tmp_path)) == ["linked"]


def test_omniglot_full_disk_is_named_and_a_rerun_completes(prepared, tmp_path, monkeypatch):
    # Was an OSError traceback in the middle of the drawings.
    output = tmp_path / "omniglot"
    real_write, written = oprep.write_if_changed, []

    def full_after_five(path, data):
        if len(written) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        written.append(path)
        return real_write(path, data)

    monkeypatch.setattr(oprep, "write_if_changed", full_after_five)
    with pytest.raises(PrepError, match=rf"^cannot write {output}/.*\.png: No space left on "
                                        rf"device; free some space on the disk of {output}, "
                                        r"then run the same command again"):
        oprep.prepare_omniglot(str(prepared["source"]), str(output), expect_counts=False)
    monkeypatch.setattr(oprep, "write_if_changed", real_write)
    oprep.prepare_omniglot(str(prepared["source"]), str(output), expect_counts=False)
    assert snapshot(output) == snapshot(prepared["omniglot"])


def test_omniglot_rerun_with_expected_counts_leaves_prepared_output_untouched(prepared):
    before = snapshot(prepared["omniglot"])
    with pytest.raises(PrepError, match=r"12 characters x 20 drawings, expected 1623 x 20 .*"
                                        r"--expect_counts=false"):
        oprep.prepare_omniglot(str(prepared["source"]), str(prepared["omniglot"]))
    assert snapshot(prepared["omniglot"]) == before


def test_miniimagenet_rerun_with_expected_counts_leaves_prepared_output_untouched(prepared):
    before = snapshot(prepared["miniimagenet"])
    with pytest.raises(PrepError, match=r"train\.csv: 3 classes x 6 images, expected 64 x 600 "
                                        r".*--expect_counts=false"):
        mprep.prepare_miniimagenet(str(prepared["source"] / "images"),
                                   str(prepared["source"] / "csv"),
                                   str(prepared["miniimagenet"]))
    assert snapshot(prepared["miniimagenet"]) == before


def test_miniimagenet_class_with_too_few_images_is_named(prepared, tmp_path):
    rows = mini_rows()
    rows["val"] = rows["val"][:-1]  # n02000002 loses one image
    write_csvs(tmp_path / "csv", rows)
    with pytest.raises(PrepError, match=r"val\.csv: 1 classes have fewer than 6 images: "
                                        r"n02000002 \(5\)"):
        mprep.prepare_miniimagenet(str(prepared["source"] / "images"), str(tmp_path / "csv"),
                                   str(tmp_path / "out"), expect_counts=False)
    assert not (tmp_path / "out").exists()


def test_miniimagenet_csv_from_excel_is_read_or_named(prepared, tmp_path):
    # A byte order mark and Windows line ends (Excel's "CSV UTF-8") are read as the plain
    # files; UTF-16 (Excel's "Unicode text") was a UnicodeDecodeError traceback.
    rows = mini_rows()
    write_csvs(tmp_path / "plain", rows)
    for name, encoding in (("excel", "utf-8-sig"), ("utf16", "utf-16")):
        (tmp_path / name).mkdir()
        for split, split_rows in rows.items():
            lines = ["filename,label"] + [f"{f},{label}" for f, label in split_rows]
            (tmp_path / name / f"{split}.csv").write_bytes(
                "\r\n".join(lines + [""]).encode(encoding))
    assert (mprep.read_splits(str(tmp_path / "excel"), expect_counts=False)
            == mprep.read_splits(str(tmp_path / "plain"), expect_counts=False))
    with pytest.raises(PrepError, match=rf"^{tmp_path}/utf16/train\.csv is not UTF-8 text "
                                        r"\(byte 0 .*save it as UTF-8"):
        mprep.prepare_miniimagenet(str(prepared["source"] / "images"), str(tmp_path / "utf16"),
                                   str(tmp_path / "out"), expect_counts=False)
    assert not (tmp_path / "out").exists()


def test_omniglot_into_a_prepared_miniimagenet_folder_touches_nothing(prepared, tmp_path):
    output = copy_prepared(prepared, tmp_path)
    before = snapshot(output)
    with pytest.raises(PrepError, match=r"holds 3 entries that this build did not write "
                                        r"\(e\.g\. test, train, val\).*empty --output"):
        oprep.prepare_omniglot(str(prepared["source"]), output, expect_counts=False)
    assert snapshot(output) == before


def test_miniimagenet_into_a_prepared_omniglot_folder_touches_nothing(prepared, tmp_path):
    output = tmp_path / "omniglot"
    shutil.copytree(prepared["omniglot"], output)
    before = snapshot(output)
    with pytest.raises(PrepError, match=r"Alpha, Beta_\(b\), Gamma.*empty --output"):
        mprep.prepare_miniimagenet(str(prepared["source"] / "images"),
                                   str(prepared["source"] / "csv"), str(output),
                                   expect_counts=False)
    assert snapshot(output) == before


def test_omniglot_set_extracted_into_a_folder_of_its_own_name_is_read(prepared, tmp_path):
    # "Extract to images_background/" nests the archive's own top folder: was "unexpected
    # file .../images_background/images_background/Alpha/...", naming no fix.
    source = tmp_path / "src"
    for set_name, files in omniglot_files().items():
        nested = source / set_name if set_name == "images_background" else source
        for path, data in files.items():
            (nested / path).parent.mkdir(parents=True, exist_ok=True)
            (nested / path).write_bytes(data)
    oprep.prepare_omniglot(str(source), str(tmp_path / "out"), expect_counts=False)
    built, from_zips = snapshot(tmp_path / "out"), snapshot(prepared["omniglot"])
    assert built.pop(".complete") != from_zips.pop(".complete")  # the source it names
    assert built == from_zips


@pytest.mark.parametrize("given", ["repo", "repo/python/images_background.zip"])
def test_omniglot_source_a_level_off_names_the_folder_to_give(prepared, tmp_path, given):
    # Was "neither .../images_background.zip nor .../images_background exists" only.
    python = tmp_path / "repo" / "python"  # a clone of brendenlake/omniglot
    python.mkdir(parents=True)
    for set_name in oprep.SETS:
        shutil.copy(prepared["source"] / f"{set_name}.zip", python)
    with pytest.raises(PrepError, match=rf"; {python} holds them: give --source={python}$"):
        oprep.prepare_omniglot(str(tmp_path / given), str(tmp_path / "out"),
                               expect_counts=False)
    assert not (tmp_path / "out").exists()


def test_omniglot_source_of_alphabets_without_the_sets_names_what_to_give(prepared, tmp_path):
    # Was "neither .../images_background.zip nor .../images_background exists" only, for a
    # folder of the 50 alphabets merged (or a prepared tree given as the source).
    with pytest.raises(PrepError, match=(
            rf"; {re.escape(str(prepared['omniglot']))} holds alphabets directly \(Alpha, "
            r"Beta_\(b\), Gamma\), not the two sets: give the folder holding images_background and "
            r"images_evaluation as downloaded")):
        oprep.prepare_omniglot(str(prepared["omniglot"]), str(tmp_path / "out"),
                               expect_counts=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("images, csv_dir, message", [
    ("", "csv", "missing from {src}, which holds images: give --images={src}/images "
                "(missing: n01"),
    ("images", "", "(--csv_dir must hold train.csv, val.csv and test.csv); {src}/csv holds "
                   "them: give --csv_dir={src}/csv"),
    ("images", "csv/val.csv", "; {src}/csv holds them: give --csv_dir={src}/csv"),
], ids=["images-above", "csv-above", "csv-file"])
def test_miniimagenet_source_a_level_off_names_the_folder_to_give(prepared, tmp_path, images,
                                                                  csv_dir, message):
    # Was "42 images listed in the CSVs are missing from <folder>: ..." or "split file
    # <folder>/train.csv not found" only.
    source = prepared["source"]
    with pytest.raises(PrepError) as info:
        mprep.prepare_miniimagenet(str(source / images), str(source / csv_dir),
                                   str(tmp_path / "out"), expect_counts=False)
    assert message.format(src=source) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_miniimagenet_images_in_a_folder_per_label_say_how_they_are_read(prepared, tmp_path):
    # Was "42 images listed in the CSVs are missing from <folder>", of a folder that holds
    # every one of them, one level down (images/<label>/<file>), as a zip of it is read.
    source = prepared["source"]
    for split_rows in mini_rows().values():
        for filename, label in split_rows:
            (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / "images" / filename, tmp_path / "images" / label)
    first, label = mini_rows()["train"][0]
    with pytest.raises(PrepError, match=(
            rf"missing from {re.escape(str(tmp_path / 'images'))}, which holds them in a folder "
            rf"per label \({label}/{first}\): a folder is read flat, .* move them up into "
            rf"{re.escape(str(tmp_path / 'images'))}, or give a zip of it \(read in any layout\)")):
        mprep.prepare_miniimagenet(str(tmp_path / "images"), str(source / "csv"),
                                   str(tmp_path / "out"), expect_counts=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dataset, inside", [("omniglot", "images_background"),
                                             ("omniglot", "images_background/resized"),
                                             ("miniimagenet", "images")])
def test_output_inside_a_source_folder_is_refused_before_anything_is_written(tmp_path,
                                                                               dataset, inside):
    # Was: the 28x28 drawings written over the extracted 105x105 source drawings of the same
    # names (the readers' own errors even suggested that --output for a set folder).
    source = tmp_path / "src"
    drawing = source / "images_background" / "Alpha" / "character01" / "0001_01.png"
    drawing.parent.mkdir(parents=True)
    drawing.write_bytes(b"\x89PNG source drawing")
    (source / "images").mkdir()
    (source / "images" / "n0100000100000001.jpg").write_bytes(b"\xff\xd8\xff source")
    before = sha256_tree(str(source))
    output = source / inside
    with pytest.raises(PrepError, match=rf"^output folder {output} is inside the source folder "
                                        r".*would overwrite the source files.*--output outside"):
        if dataset == "omniglot":
            oprep.prepare_omniglot(str(source), str(output), expect_counts=False)
        else:
            mprep.prepare_miniimagenet(str(source / "images"), str(source), str(output),
                                       expect_counts=False)
    assert sha256_tree(str(source)) == before  # nothing written, nothing created


# ---------------------------------------------------------------------------- checkpoints
def test_missing_test_iter_lists_the_available_checkpoints(sine_copy):
    config, run_dir = sine_copy
    before = snapshot(run_dir)
    result = cli(*as_flags(config, train=False, test_iter=7))
    assert result.code == 1
    line = one_line_error(result.err)
    assert f"no checkpoint at {run_dir}/model-7" in line
    assert "model-20, model-40" in line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("where", ["logdir", "run directory"])
def test_evaluating_where_a_file_stands_for_the_run_directory_names_the_file(sine_copy,
                                                                             where):
    # Was "no checkpoint in <run> to evaluate. Train first ...": training again would then
    # fail, as a file stands in the way.
    config, run_dir = sine_copy
    logdir = run_dir.parent.parent / "logfile"
    file = logdir if where == "logdir" else logdir / run_dir.name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("notes")
    result = cli(*as_flags(config, train=False, logdir=str(logdir)))
    assert result.code == 1
    what = (f"{logdir / run_dir.name} cannot be a run directory: {logdir} is a file, not a "
            "folder" if where == "logdir" else f"{file} is a file, not a run directory")
    assert one_line_error(result.err) == (
        f"tf-maml: error: {what}, so there is no checkpoint to evaluate: give the --logdir "
        "training wrote the run into (or move that file away)")
    assert file.read_text() == "notes"


@pytest.mark.parametrize("train", [True, False], ids=["train", "evaluate"])
def test_a_logdir_linked_to_nothing_names_the_link(sine_copy, train):
    # A --logdir linked to a disk not mounted: was "could not create the run directory ...:
    # No such file or directory ... check <run>", and an evaluation "no checkpoint ... Train
    # first".
    config, run_dir = sine_copy
    link = run_dir.parent.parent / "linked"
    target = run_dir.parent.parent / "unmounted" / "runs"
    link.symlink_to(target)
    result = cli(*as_flags(config, train=train, logdir=str(link), metatrain_iterations=60))
    assert result.code == 1
    problem = f"{link} is a link to {target}, which does not exist (a disk not mounted?)"
    where = link / run_dir.name
    assert one_line_error(result.err) == (
        f"tf-maml: error: could not create the run directory in {where}: {problem}. Nothing "
        f"was lost: nothing already written was changed; mount or create {target}, or use "
        "another --logdir, then run the same command again." if train else
        f"tf-maml: error: no checkpoint can be read in {where}: {problem}; mount or create "
        "it, or give the --logdir training wrote the run into")
    assert not os.path.lexists(target)


def test_tensorflow_reads_no_checkpoint_below_a_bracket(tmp_path):
    # The fact the refusals below rest on: what TensorFlow writes under a path holding '['
    # it does not find again (its reader takes the path for a pattern).
    folder = tmp_path / "runs[1]"
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(folder / "model-1"))
    assert (folder / "model-1.index").exists()
    with pytest.raises(tf.errors.NotFoundError, match="Failed to find any matching files"):
        tf.train.Checkpoint(v=tf.Variable(0.0)).read(str(folder / "model-1"))


def test_a_checkpoint_below_a_bracket_is_not_called_corrupt(tmp_path):
    # A run trained there before such paths were refused (or moved there since): its
    # evaluation said "model-5 is corrupt or truncated ...: replace the damaged file from a
    # backup", and a resume would have moved it aside as corrupt beside a newer one.
    folder = tmp_path / "runs[1]"
    learner = MetaLearner(models.fc_net((1,), (8,), 1, norm="None"), losses.mse, inner_lr=0.01)
    learner_checkpointer(learner, str(folder)).save(5)
    with pytest.raises(CheckpointError) as raised:
        restore_for_test(learner_checkpointer(learner, str(folder)), -1)
    assert type(raised.value) is CheckpointError
    assert str(raised.value) == (
        f"the checkpoint {folder}/model-5 cannot be read where it is: {folder} holds '[', "
        "which TensorFlow takes for the start of a pattern: it would not find what it writes "
        "there (checkpoints, TFDS data); give a path without '[' (renaming a folder keeps "
        "what it holds)")
    assert sorted(os.listdir(folder)) == ["checkpoint", "model-5.data-00000-of-00001",
                                          "model-5.index"]


def test_a_path_with_a_bracket_is_refused_where_tensorflow_would_write_a_checkpoint(sine_copy,
                                                                                  tmp_path):
    # Was trained (and evaluated from memory), then every resume or evaluation said "no
    # readable checkpoint in <run>; move the run directory away to start afresh"; an export
    # there could not be loaded.
    config, _ = sine_copy
    logdir = tmp_path / "runs[2026]"
    why = ("holds '[', which TensorFlow takes for the start of a pattern: it would not find "
           "what it writes there (checkpoints, TFDS data); give a path without '[' (renaming "
           "a folder keeps what it holds)")
    for flag, value in (("logdir", logdir), ("export_dir", logdir / "saved"),
                        ("data_dir", logdir / "tfds")):
        tfds = {"datasource": "omniglot", "dataset_backend": "tfds"} if flag == "data_dir" else {}
        result = cli(*as_flags(config, **{flag: str(value)}, **tfds))
        assert result.code == 2  # a usage error, as every flag's
        assert one_line_error(result.err) == f"tf-maml: error: --{flag}: {value} {why}"
    assert not logdir.exists()
    keras.utils.set_random_seed(0)
    learner = MetaLearner(models.fc_net((1,), (8,), 1, norm="None"), losses.mse, inner_lr=0.01)
    with pytest.raises(ValueError) as raised:
        learner.fit(SinusoidTasks(5, 5), 2, meta_batch_size=2, run_dir=str(logdir),
                    log_interval=None, log=lambda line: None)
    assert str(raised.value) == f"run_dir {logdir} {why}"
    with pytest.raises(Exception) as raised:
        export(learner, str(logdir / "saved"), num_steps=1)
    assert str(raised.value) == f"`export_dir` {logdir / 'saved'} {why}"
    assert not logdir.exists()


def test_resuming_a_run_with_fewer_iterations_than_its_checkpoint_is_refused(sine_copy):
    # Was "Training already complete (40/20 iterations)", then the evaluation, and the run's
    # config.json rewritten with 20: the record of how the checkpoint was trained, lost.
    config, run_dir = sine_copy
    before = snapshot(run_dir)
    result = cli(*as_flags(config, metatrain_iterations=20))
    assert result.code == 1
    assert one_line_error(result.err) == (
        f"tf-maml: error: --metatrain_iterations: the run in {config.exp_string()} is at "
        "iteration 40 (model-40), past the 20 asked; training does not go back. Evaluate it "
        "with --train=False (--test_iter=N for an earlier checkpoint), or pass "
        "--metatrain_iterations=40 or more to train it on.")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("train", [True, False], ids=["train-then-evaluate", "evaluate"])
def test_a_folder_where_a_result_file_goes_is_named_before_training_or_evaluating(sine_copy,
                                                                                  train):
    # Was said only when the results were written: after the whole evaluation, and after
    # the training session before it, as "Is a directory" of the run directory.
    config, run_dir = sine_copy
    (run_dir / "test_ubs5_stepsize0.01.csv").unlink()
    (run_dir / "test_ubs5_stepsize0.01.csv" / "notes").mkdir(parents=True)
    before = snapshot(run_dir)
    result = cli(*as_flags(config, train=train, metatrain_iterations=60))
    assert result.code == 1
    assert one_line_error(result.err) == (
        f"tf-maml: error: could not write the evaluation results in {run_dir}: "
        f"{run_dir / 'test_ubs5_stepsize0.01.csv'} is a folder, where a file goes. Nothing "
        "was lost: the checkpoints and the earlier results (test_ubs5_stepsize0.01.pkl/.npy) "
        "are intact; move that folder away, then run the same command again.")
    assert snapshot(run_dir) == before  # not trained: no model-60, the log as it was
    assert "Iteration" not in result.out


def test_a_file_where_the_earlier_results_go_is_named_before_evaluating(sine_copy):
    # An evaluation whose numbers differ keeps the earlier set in earlier_results/: a file
    # of that name failed it after the whole evaluation, saying "a file stands where <the
    # run directory> or a directory above it should be: use another --logdir".
    config, run_dir = sine_copy
    (run_dir / "earlier_results").write_text("notes")
    before = snapshot(run_dir)
    result = cli(*as_flags(config, train=False))
    assert result.code == 1
    assert one_line_error(result.err) == (
        f"tf-maml: error: could not write the evaluation results in {run_dir}: "
        f"{run_dir / 'earlier_results'} is a file, where a folder goes. Nothing was lost: "
        "the checkpoints and the earlier results "
        "(test_ubs5_stepsize0.01.csv/.pkl/.npy) are intact; move that file away, then run "
        "the same command again.")
    assert snapshot(run_dir) == before
    assert "Evaluating" not in result.out


def other_architecture_checkpoint(run_dir) -> None:
    """Replaces the run's checkpoints by one of a 20-20 MLP (the run's net is 40-40), as a
    run directory shared by two configurations or an older version would leave it."""
    for name in os.listdir(run_dir):
        if name.startswith("model-") or name == "checkpoint":
            os.remove(os.path.join(run_dir, name))
    keras.utils.set_random_seed(0)
    other = MetaLearner(models.fc_net((1,), (20, 20), 1, name="sinusoid_mlp"), losses.mse)
    learner_checkpointer(other, str(run_dir)).save(40)


@pytest.mark.parametrize("train", [True, False], ids=["resume", "evaluate"])
def test_checkpoint_of_another_architecture_fails_clearly(sine_copy, train):
    config, run_dir = sine_copy
    other_architecture_checkpoint(run_dir)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as info:
        runner.run(dataclasses.replace(config, train=train), log=lambda s: None)
    message = str(info.value)
    assert "model-40 does not fit this model" in message and "dense1/kernel" in message
    assert "`datasource`" in message  # which settings to check (--datasource on the CLI)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("inner_lr, hidden, names", [
    (options.MetaSGD(0.01), (8,), r"\(12 of this learner's variables are not in it, e\.g\. "
                                  r"inner_lr_\d, inner_lr_\d\)"),
    (0.01, (4,), r"\(.*dense1/kernel.*\)"),
], ids=["meta-sgd", "architecture"])
def test_checkpoint_of_another_learner_in_fit_speaks_of_its_arguments(tmp_path, inner_lr,
                                                                        hidden, names):
    # From Python the message spoke of the command line's flags (`datasource`,
    # `num_filters`, ...) and, for Meta-SGD's rates, listed TensorFlow's variables in full.
    run_dir = str(tmp_path / "run")
    learner_checkpointer(MetaLearner(mlp(), losses.mse), run_dir).save(2)
    before = snapshot(run_dir)
    learner = MetaLearner(mlp(hidden), losses.mse, inner_lr=inner_lr)
    with pytest.raises(CheckpointError) as info:
        learner.fit(SinusoidTasks(5, 5), iterations=4, meta_batch_size=2, run_dir=run_dir,
                    log_interval=None, log=lambda s: None)
    message = str(info.value)
    assert re.search(r"model-2 does not fit this model " + names + r"; was it written by "
                     r"another model \(another architecture or number of outputs\) or with "
                     r"other options \(a MetaSGD or LSLR inner_lr", message), message
    assert "`datasource`" not in message and "<Variable" not in message and len(message) < 500
    assert snapshot(run_dir) == before


def test_fit_resuming_with_other_learner_options_is_refused(tmp_path):
    # The API recorded nothing: another inner_steps resumed silently, and a plain learner
    # resumed a Meta-SGD run, dropping its learned rates.
    run_dir = str(tmp_path / "run")
    first = MetaLearner(mlp(), losses.mse)
    first.fit(SinusoidTasks(5, 5), iterations=0, run_dir=run_dir, log_interval=None,
              log=lambda s: None)  # records the options; no step (to be fast)
    learner_checkpointer(first, run_dir).save(1)
    before = snapshot(run_dir)
    assert "learner.json" in before
    with pytest.raises(ConfigError, match=r"holds a run trained with inner_lr=0\.01, "
                       r"inner_steps=1, but this learner has inner_lr=MetaSGD\(0\.01\), "
                       r"inner_steps=2; resuming would continue it as another experiment\. "
                       r"Build the learner with inner_lr=0\.01, inner_steps=1 to continue it, "
                       r"or give another `run_dir`"):
        MetaLearner(mlp(), losses.mse, inner_lr=options.MetaSGD(0.01), inner_steps=2).fit(
            SinusoidTasks(5, 5), iterations=2, meta_batch_size=2, run_dir=run_dir,
            log_interval=None, log=lambda s: None)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("garbled, why", [
    ('{"inner_lr": 0.01, "inner_st', r"Unterminated string starting at: line 1 column 20 "
                                     r"\(char 19\)"),
    ("[0.01, 1]", r"it holds a JSON list, not an object"),
], ids=["truncated", "a-list"])
def test_fit_resuming_with_a_garbled_learner_record_names_it_and_keeps_it(tmp_path, garbled,
                                                                          why):
    # A learner.json edited by hand into something unreadable skipped the check of the
    # options without a word, and fit replaced it with this learner's.
    run_dir = str(tmp_path / "run")
    first = MetaLearner(mlp(), losses.mse)
    first.fit(SinusoidTasks(5, 5), iterations=0, run_dir=run_dir, log_interval=None,
              log=lambda s: None)  # records the options; no step (to be fast)
    learner_checkpointer(first, run_dir).save(1)
    (tmp_path / "run" / "learner.json").write_text(garbled)
    before = snapshot(run_dir)
    path = re.escape(os.path.join(run_dir, "learner.json"))
    with pytest.raises(ConfigError, match=rf"^{path}, the options the run was trained with, "
                       rf"cannot be read \({why}\), so resuming cannot compare them with this "
                       r"learner's: fix it or restore it from a copy, or delete it to resume "
                       r"without comparing them \(fit writes it again\); nothing was changed$"):
        MetaLearner(mlp(), losses.mse, inner_steps=2).fit(
            SinusoidTasks(5, 5), iterations=2, meta_batch_size=2, run_dir=run_dir,
            log_interval=None, log=lambda s: None)
    assert snapshot(run_dir) == before


def test_tf1_checkpoint_with_wrong_shapes_names_the_variable_and_flag(tmp_path):
    """An original MiniImageNet checkpoint with 64 filters into the 32-filter net."""
    rng = np.random.default_rng(0)
    tensors = {"model/w5": rng.normal(size=(64 * 25, 5)), "model/b5": rng.normal(size=5)}
    for i in range(4):
        tensors[f"model/conv{i + 1}"] = rng.normal(size=(3, 3, 3 if i == 0 else 64, 64))
        tensors["model/Variable" + (f"_{i}" if i else "")] = rng.normal(size=64)
        tensors[f"model/{i}/beta"] = rng.normal(size=64)
    prefix = save_tf1(str(tmp_path / "model59000"), tensors)
    result = cli("--datasource=miniimagenet", "--max_pool=True", "--num_filters=32",
                 f"--data_dir={tmp_path / 'data'}", "--train=False", f"--init_checkpoint={prefix}",
                 f"--logdir={tmp_path / 'logs'}")
    assert result.code == 1
    line = one_line_error(result.err)
    assert f"the checkpoint {prefix} does not fit" in line
    assert ("model/conv1 has shape [3, 3, 3, 64] in the checkpoint but conv1/kernel is "
            "[3, 3, 3, 32] (check --num_filters)") in line
    assert not (tmp_path / "logs").exists()


def test_tf1_checkpoint_of_non_finite_weights_is_named_before_anything_is_written(tmp_path):
    # Was converted without a word, then evaluated into a results file of NaN (exit 0), or
    # trained into "Non-finite loss ... at iteration 1".
    from tf_maml import convert

    prefix = save_tf1_sinusoid(str(tmp_path / "model70000"), 40)
    reader = tf.train.load_checkpoint(prefix)
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    tensors["model/Variable_2"][3, 4] = np.inf
    save_tf1(prefix, tensors)
    message = (f"model/Variable_2 in the checkpoint {prefix} holds 1 NaN or infinite values of "
               "1600: the run that saved it diverged or the file is damaged; give a checkpoint "
               "of finite weights")
    result = cli("--norm=None", "--train=False", f"--init_checkpoint={prefix}",
                 f"--logdir={tmp_path / 'logs'}", "--num_test_tasks=2")
    assert result.code == 1
    assert one_line_error(result.err).startswith(f"tf-maml: error: {message}")
    assert not (tmp_path / "logs").exists()
    with pytest.raises(convert.ConversionError, match=f"^{re.escape(message)}"):
        convert.convert(prefix, str(tmp_path / "converted"))
    assert not (tmp_path / "converted").exists()


def test_tf1_checkpoint_of_another_net_leaves_the_run_untouched(sine_copy, tmp_path):
    """--init_checkpoint with a 20-unit original sinusoid checkpoint on a 40-unit run."""
    config, run_dir = sine_copy
    prefix = save_tf1_sinusoid(str(tmp_path / "model70000"), hidden=20)
    before = snapshot(run_dir)
    result = cli(*as_flags(config, init_checkpoint=prefix, metatrain_iterations=60))
    assert result.code == 1
    line = one_line_error(result.err)
    assert "model/Variable has shape [1, 20] in the checkpoint but dense1/kernel is [1, 40]" in line
    assert snapshot(run_dir) == before


def truncate(path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("part", [
    "data-00000-of-00001",
    pytest.param("index"),
])
def test_truncated_checkpoint_is_named_and_left_in_place(sine_copy, part):
    config, run_dir = sine_copy
    truncate(run_dir / f"model-40.{part}", 30)
    before = snapshot(run_dir)
    result = cli(*as_flags(config, train=False))
    assert result.code == 1
    line = one_line_error(result.err)
    assert f"checkpoint {run_dir}/model-40 is corrupt or truncated" in line
    assert f"(model-40.{part}); --test_iter=20 evaluates the newest readable one" in line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("test_iter, damaged, fix", [
    (20, ["model-20.index"], "replace the damaged file from a backup, or give another "
                             "--test_iter (-1: the latest)"),
    (-1, ["model-20.data-00000-of-00001", "model-40.data-00000-of-00001"],
     "no older checkpoint reads either: replace the damaged file from a backup, or train "
     "again in another --logdir"),
], ids=["test-iter-index", "latest-and-older-data"])
def test_truncated_checkpoint_without_a_readable_one_to_fall_back_on_says_what_to_do(
        sine_copy, test_iter, damaged, fix):
    # Named the checkpoint, not which of its files (TensorFlow's "file is too short to be an
    # sstable" is of the index, "Read less bytes than requested" of the data), and no fix.
    config, run_dir = sine_copy
    for name in damaged:
        truncate(run_dir / name, 30)
    before = snapshot(run_dir)
    result = cli(*as_flags(config, train=False, test_iter=test_iter))
    assert result.code == 1
    assert one_line_error(result.err).endswith(f"({os.path.basename(damaged[-1])}); {fix}")
    assert snapshot(run_dir) == before


def test_only_checkpoint_truncated_says_to_move_the_run_away(sine_copy):
    config, run_dir = sine_copy
    for name in os.listdir(run_dir):  # a run that saved a single checkpoint
        if name.startswith("model-") or name == "checkpoint":
            os.remove(run_dir / name)
    learner_checkpointer(experiment.build_learner(config), str(run_dir)).save(40)
    truncate(run_dir / "model-40.data-00000-of-00001", 50)
    before = snapshot(run_dir)
    logs = []
    with pytest.raises(CheckpointError, match=f"no readable checkpoint in {run_dir}; move the "
                                              "run directory away"):
        runner.run(config, log=logs.append)  # the same command again
    assert any("model-40 is corrupt or truncated" in line for line in logs)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_stop_during_evaluation_says_what_was_kept(sine_copy, monkeypatch, signum):
    # Ctrl-C was exit 130 without a word: the user could not tell whether the results were
    # whole. SIGTERM (a scheduler's stop) killed the evaluation without one.
    config, run_dir = sine_copy
    before = snapshot(run_dir)

    def stopped(*args, **kwargs):
        signal.raise_signal(getattr(signal, signum))
        pytest.fail(f"{signum} did not stop the evaluation")

    def killed(*args):
        pytest.fail("SIGTERM would have killed the evaluation, without a word")

    monkeypatch.setattr(evaluate_lib, "evaluate", stopped)
    previous = signal.signal(signal.SIGTERM, killed)  # its default would end pytest
    try:
        result = cli(*as_flags(config, train=False))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.code == 130 and "Traceback" not in result.err
    said = [line for line in result.out.splitlines() if "nterrupted" in line]
    assert said == ["Interrupted during the evaluation, before its results were written: the "
                    "checkpoints and the earlier results (test_ubs5_stepsize0.01.csv/.pkl/.npy) "
                    "are intact; run the same command again to evaluate."]
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("case, message", [
    ("missing", "--maml_run={missing} is not a run directory (no readable config.json in it)"),
    ("navigation", "--pretrained_run={other} is a navigation run: the figures are of sinusoid"),
    ("label", "--extra_run expects LABEL=RUN_DIR, got '{run}'"),
    ("home", "--output_dir: '~/figures' starts with ~, which only a shell expands"),
    ("empty", "--output_dir: is empty (an unset shell variable, as in --output_dir=$X?)"),
    # Was "--extra_run=~/logs/sine/run is not a run directory", of a run a shell lists.
    ("home-run", "--extra_run: '~/logs/sine/run' starts with ~, which only a shell expands"),
], ids=["missing-run", "not-sinusoid", "no-label", "unexpanded-home", "empty-output",
        "unexpanded-home-run"])
def test_figures_of_a_wrong_run_are_one_line_before_anything_is_drawn(sine_copy, tmp_path,
                                                                      case, message):
    # Each was a traceback (FileNotFoundError, a navigation net in the sinusoid figure, ...).
    from tf_maml import figures

    _, run_dir = sine_copy
    missing, other = tmp_path / "moved_away", tmp_path / "nav"
    other.mkdir()
    (other / "config.json").write_text(Config(datasource="navigation").to_json())
    runs = {"missing": (missing, run_dir, []), "navigation": (run_dir, other, []),
            "label": (run_dir, run_dir, [str(run_dir)]), "home": (run_dir, run_dir, []),
            "empty": (run_dir, run_dir, []),
            "home-run": (run_dir, run_dir, ["MAML K5=~/logs/sine/run"])}[case]
    output = {"home": "~/figures", "empty": ""}.get(case, str(tmp_path / "figures"))
    with pytest.raises(figures.FigureError) as info:
        figures.draw(str(runs[0]), str(runs[1]), runs[2], output)
    assert str(info.value).startswith(message.format(missing=missing, other=other, run=run_dir))
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("edit, why", [
    (dict(update_batch_size="five"), "the key 'update_batch_size' is \"five\", not a whole number"),
    (dict(num_filters=[40]), "the key 'num_filters' is [40], not a whole number"),
    (dict(stop_grad="yes"), "the key 'stop_grad' is \"yes\", not true or false"),
    (dict(metatrain_iteration=5), "the key 'metatrain_iteration' is no flag of tf-maml (did you "
                                  "mean metatrain_iterations or pretrain_iterations?)"),
    ([], "it holds a JSON list, not the object of the run's flags"),
], ids=["string-count", "list-count", "string-bool", "misspelt-key", "array"])
def test_figures_of_a_hand_edited_config_name_the_file_and_key(sine_copy, tmp_path, edit, why):
    # The first three were tracebacks (TypeError from a comparison, Keras' from the model); a
    # misspelt key was read as its flag's default, and the figure drawn of another run.
    from tf_maml import figures

    maml, pretrained = _with_pretrained_copy(sine_copy, tmp_path)
    recorded = json.loads((maml / "config.json").read_text())
    (maml / "config.json").write_text(json.dumps({**recorded, **edit} if edit else edit))
    output = tmp_path / "figures"
    with pytest.raises(figures.FigureError) as info:
        figures.draw(str(maml), str(pretrained), [], str(output))
    assert str(info.value) == (
        f"--maml_run={maml}: {maml / 'config.json'}, the flags the run was trained with, cannot "
        f"be read ({why}): fix it, or restore it from a copy of the run (the model zoo, a "
        "backup)")
    assert not output.exists()


def test_figures_of_a_config_edited_to_an_impossible_value_name_the_flag(sine_copy, tmp_path):
    # Was the inner loop's ValueError, as a traceback.
    from tf_maml import figures

    maml, pretrained = _with_pretrained_copy(sine_copy, tmp_path)
    recorded = json.loads((pretrained / "config.json").read_text())
    (pretrained / "config.json").write_text(json.dumps({**recorded, "update_lr": -1}))
    with pytest.raises(figures.FigureError, match=rf"^--pretrained_run={pretrained}: "
                       rf"{pretrained}/config\.json, the flags the run was trained with, hold "
                       r"a setting no run can have \(--update_lr: .*, got -1\): fix it"):
        figures.draw(str(maml), str(pretrained), [], str(tmp_path / "figures"))


def test_resuming_a_run_whose_config_was_edited_to_a_wrong_type_names_the_key(sine_copy):
    # Was "--update_batch_size: the run ... was trained with --update_batch_size=five; ...
    # Pass --update_batch_size=five to continue it", a flag tf-maml refuses.
    config, run_dir = sine_copy
    recorded = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**recorded, "update_batch_size": "five"}))
    before = snapshot(run_dir)
    result = cli(*as_flags(config, metatrain_iterations=60))
    assert result.code == 1
    assert one_line_error(result.err) == (
        f"tf-maml: error: {run_dir / 'config.json'}, the flags the run was trained with, "
        "cannot be read (the key 'update_batch_size' is \"five\", not a whole number): fix "
        "it, or delete it to resume without comparing the flags (training writes it again)")
    assert snapshot(run_dir) == before


def _with_pretrained_copy(sine_copy, tmp_path):
    """(the sine run, a copy of it whose config.json says it is the pretrained baseline)."""
    config, maml = sine_copy
    pretrained = tmp_path / "pretrained"
    shutil.copytree(maml, pretrained)
    (pretrained / "config.json").write_text(dataclasses.replace(
        config, pretrain_iterations=40, metatrain_iterations=0).to_json())
    return maml, pretrained


def test_figures_of_swapped_runs_are_refused_before_anything_is_drawn(sine_copy, tmp_path):
    # Were drawn without a word: the pretrained baseline's curves labelled MAML and the
    # other way round, over the figures already in --output_dir (default: docs/figures).
    from tf_maml import figures

    maml, pretrained = _with_pretrained_copy(sine_copy, tmp_path)
    output = tmp_path / "figures"
    with pytest.raises(figures.FigureError, match=rf"^--maml_run={pretrained} was not "
                       rf"meta-trained .* the two look swapped: --maml_run={maml} "
                       rf"--pretrained_run={pretrained}$"):
        figures.draw(str(pretrained), str(maml), [], str(output))
    with pytest.raises(figures.FigureError, match=rf"^--pretrained_run={maml} is "
                       r"meta-trained \(--metatrain_iterations=40\)"):
        figures.draw(str(maml), str(maml), [], str(output))
    assert not output.exists()


def test_figures_of_a_result_file_cut_short_name_it_before_anything_is_drawn(sine_copy,
                                                                             tmp_path):
    # Was Figure 2 written into --output_dir, then NumPy's traceback for Figure 3.
    from tf_maml import figures

    maml, pretrained = _with_pretrained_copy(sine_copy, tmp_path)
    npy = pretrained / "test_ubs5_stepsize0.01.npy"
    npy.write_bytes(npy.read_bytes()[:100])
    output = tmp_path / "figures"
    with pytest.raises(figures.FigureError, match=rf"^{re.escape(str(npy))} cannot be read "
                       r"\(cut short or garbled\): evaluate the run again to write it \(its "
                       r"training command with --train=False\)$"):
        figures.draw(str(maml), str(pretrained), [], str(output))
    assert not output.exists()


def test_figures_with_a_folder_where_a_figure_goes_replace_neither(sine_copy, tmp_path):
    # Was Figure 2 replaced, then "could not write the figures ... Is a directory. Nothing
    # was lost: nothing already written was changed".
    from tf_maml import figures

    maml, pretrained = _with_pretrained_copy(sine_copy, tmp_path)
    output = tmp_path / "figures"
    (output / "sinusoid_figure3.png").mkdir(parents=True)
    (output / "sinusoid_figure2.png").write_bytes(b"\x89PNG the earlier figure")
    before = snapshot(output)
    with pytest.raises(figures.FigureError) as info:
        figures.draw(str(maml), str(pretrained), [], str(output))
    assert str(info.value) == (f"--output_dir={output}: {output / 'sinusoid_figure3.png'} is a "
                               "folder, where the figure goes: move it away, or give another "
                               "--output_dir")
    assert snapshot(output) == before


def test_figures_of_a_run_whose_checkpoints_are_damaged_are_one_line(sine_copy, tmp_path):
    # Was CorruptCheckpointError's traceback.
    from tf_maml import figures

    maml, pretrained = _with_pretrained_copy(sine_copy, tmp_path)
    for iteration in (20, 40):
        data = pretrained / f"model-{iteration}.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[:50])
    output = tmp_path / "figures"
    with pytest.raises(figures.FigureError, match=rf"^checkpoint {re.escape(str(pretrained))}"
                       r"/model-40 is corrupt or truncated: .*replace the damaged file from a "
                       r"backup, or train again in another --logdir$"):
        figures.draw(str(maml), str(pretrained), [], str(output))
    assert os.listdir(output) == []  # neither figure


def test_a_figure_curve_label_given_twice_is_refused(tmp_path):
    # Was a dict entry replaced without a word: --extra_run=MAML=<run> drew that run as
    # Figure 3's MAML curve (Figure 2's stayed --maml_run's), and the later of two --run
    # curves of one label hid the earlier.
    from tf_maml import figures
    from tf_maml.rl import figure as rl_figure

    with pytest.raises(figures.FigureError, match=r"^--extra_run=MAML=c: the label MAML is "
                                                  r"taken \(by a\): give each curve"):
        figures.draw("a", "b", ["MAML=c"], str(tmp_path / "figures"))
    with pytest.raises(ValueError, match=r"^--run=MAML=b: the label MAML is taken \(by a\)"):
        rl_figure.parse_runs(["MAML=a", "random=r", "MAML=b"])
    assert rl_figure.parse_runs(["MAML=a", "random=r"]) == {"MAML": "a", "random": "r"}
    assert not (tmp_path / "figures").exists()


def test_a_figure_curve_label_may_hold_an_equals_sign(tmp_path):
    # "MAML K=5=<run>" (the report's labels are so) was cut at the first "=": the curve
    # "MAML K" of the run "5=<run>", which is not there.
    from tf_maml.rl import figure as rl_figure

    run = tmp_path / "lr=0.1"  # a folder may hold one too
    run.mkdir()
    assert rl_figure.parse_runs([f"MAML K=5={run}", f"K=5 (α/2)={run}@test_returns_steps0.1"]) \
        == {"MAML K=5": str(run), "K=5 (α/2)": f"{run}@test_returns_steps0.1"}
    assert rl_figure.parse_runs([f"lr={run}"]) == {"lr": str(run)}
    # No path after any "=": cut at the first, so the error names the run not found.
    assert rl_figure.parse_runs(["MAML=logs/a=b"]) == {"MAML": "logs/a=b"}


def test_an_rl_figure_run_folder_whose_path_holds_an_at_sign_is_read_whole(tmp_path):
    # Was cut at its first "@": the folder "<tmp>/runs" and the evaluation "2026/nav", not
    # there; a re-evaluation's @NAME still follows it.
    from tf_maml.rl import figure as rl_figure

    run = tmp_path / "runs@2026" / "nav"
    run.mkdir(parents=True)
    returns = np.array([[-40.0, -10.0], [-38.0, -14.0]])
    np.save(run / "test_returns.npy", returns)
    np.save(run / "test_returns_steps0.1.npy", returns + 1)
    np.testing.assert_array_equal(rl_figure.load_returns(str(run)), returns)
    np.testing.assert_array_equal(
        rl_figure.load_returns(f"{run}@test_returns_steps0.1"), returns + 1)


def test_rl_figure_of_runs_of_two_task_families_is_refused(tmp_path):
    # Was drawn without a word: a half-cheetah run's returns (hundreds) beside 2D
    # navigation's (tens), as one more curve or as the oracle's band.
    from tf_maml.rl import figure as rl_figure

    runs = {}
    for name, family, record in [("nav", "navigation", "config.json"),
                                 ("random", "navigation", "test_config.json"),  # evaluated only
                                 ("cheetah", "cheetah_vel", "config.json")]:
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / record).write_text(Config(datasource=family).to_json())
    (tmp_path / "no_record").mkdir()
    rl_figure.check_family({"MAML": str(runs["nav"]), "random": f"{runs['random']}@x",
                            "other": str(tmp_path / "no_record")}, oracle=str(runs["nav"]))
    with pytest.raises(ValueError, match=rf"^--run=MAML K=5={re.escape(str(runs['cheetah']))} "
                       rf"is a cheetah_vel run, but --run=MAML={re.escape(str(runs['nav']))} a "
                       r"navigation run: a figure compares the runs of one task family"):
        rl_figure.check_family({"MAML": str(runs["nav"]), "MAML K=5": str(runs["cheetah"])})
    with pytest.raises(ValueError, match=rf"^--oracle={re.escape(str(runs['cheetah']))} is a "
                                         r"cheetah_vel run, but --run=random="):
        rl_figure.check_family({"random": str(runs["random"])}, oracle=str(runs["cheetah"]))


def test_rl_figure_oracle_that_is_no_oracle_run_is_refused(tmp_path):
    # Was drawn without a word as the oracle's band, at the MAML policy's 0-step return.
    from tf_maml.rl import figure as rl_figure

    (tmp_path / "config.json").write_text(Config(datasource="navigation").to_json())
    with pytest.raises(ValueError, match=rf"^--oracle={tmp_path} is not an oracle run \(its "
                                         r"config.json has --baseline=None\)"):
        rl_figure.check_oracle(str(tmp_path))
    (tmp_path / "config.json").write_text(Config(datasource="navigation",
                                                 baseline="oracle").to_json())
    rl_figure.check_oracle(str(tmp_path))


def test_rl_figure_run_or_oracle_starting_with_a_tilde_is_named():
    # Were "no test_returns.npy in ~/logs/...: evaluate the run first", of a run the user's
    # shell lists as evaluated (the ~ of a flagfile, or of --run=MAML=~/...).
    from tf_maml.rl import figure as rl_figure

    with pytest.raises(ValueError, match=r"^--run=MAML=~/logs/nav@x: '~/logs/nav' starts with "
                                         r"~, which only a shell expands"):
        rl_figure.parse_runs(["MAML=~/logs/nav@x"])
    with pytest.raises(ValueError, match=r"^--oracle: '~/logs/oracle' starts with ~"):
        rl_figure.check_oracle("~/logs/oracle")


def test_rl_figure_of_a_missing_run_or_re_evaluation_names_what_is_there(tmp_path):
    # Were "no test_returns.npy in <typo>: evaluate the run first" of a folder that is not
    # there, and for RUN_DIR@NAME of a misspelt NAME, the same advice to run tf-maml again.
    from tf_maml.rl import figure as rl_figure

    run = str(tmp_path)
    for name in ("test_returns", "test_returns_steps0.1_0.05"):
        np.save(os.path.join(run, name + ".npy"), -np.ones((2, 3)))
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(run)}x is not a folder: give "
                                                r"the run directory of an evaluated RL run"):
        rl_figure.load_returns(run + "x")
    with pytest.raises(FileNotFoundError, match=(
            rf"^no test_returns_steps0\.1_0\.5\.npy in {re.escape(run)}; it holds "
            r"test_returns, test_returns_steps0\.1_0\.05 \(did you mean "
            r"test_returns_steps0\.1_0\.05\?\): evaluate the run first \(python -m "
            rf"tf_maml\.rl\.run --run_dir={re.escape(run)} --step_sizes=\.\.\.\)$")):
        rl_figure.load_returns(run + "@test_returns_steps0.1_0.5")
    assert rl_figure.load_returns(run + "@test_returns_steps0.1_0.05").shape == (2, 3)


def test_rl_figure_with_an_empty_oracle_names_the_flag(tmp_path):
    # --oracle=$ORACLE with ORACLE unset was " is not a folder: give the run directory ...".
    from tf_maml.rl import figure as rl_figure

    (tmp_path / "run").mkdir()
    assert rl_figure.check_flags([f"MAML={tmp_path / 'run'}"], str(tmp_path / "f.png"),
                                 None) == {"MAML": str(tmp_path / "run")}
    with pytest.raises(ValueError, match=r"^--oracle: is empty \(an unset shell variable, as "
                                         r"in --oracle=\$X\?\)"):
        rl_figure.check_flags([f"MAML={tmp_path / 'run'}"], str(tmp_path / "f.png"), "")


def test_rl_figure_output_that_cannot_be_written_is_one_line_and_keeps_the_earlier_figure(
        tmp_path, monkeypatch):
    # Were an OSError's bare words ("[Errno 17] File exists: 'afile'", "[Errno 21] Is a
    # directory: 'odir.<pid>.tmp' -> 'odir'"), a full disk's the same, and an empty or ~
    # --output was written to '' (an error) or to a folder named ~.
    from tf_maml import atomic
    from tf_maml.rl import figure as rl_figure

    (tmp_path / "run").mkdir()
    np.save(tmp_path / "run" / "test_returns.npy", -np.arange(6.0).reshape(2, 3))
    runs = {"MAML": str(tmp_path / "run")}
    (tmp_path / "notes.png").write_text("my notes")  # no PNG: it would be replaced
    for output, message in [("", r"^--output: is empty"), ("~/f.png", r"^--output: '~/f.png' "
                            r"starts with ~"), (str(tmp_path), r"is a folder: give the path "
                            r"of the PNG, e.g. --output=.*navigation_return\.png$"),
                            (str(tmp_path / "f.pdf"), r"f\.pdf: the figure is a PNG; give a "
                            r"path ending in \.png$"), (str(tmp_path / "notes.png"), r"notes"
                            r"\.png is a file that is no PNG, which the figure would replace")]:
        with pytest.raises(ValueError, match=message):
            rl_figure.check_output(output)
    assert (tmp_path / "notes.png").read_text() == "my notes"
    (tmp_path / "afile").write_text("a file")
    with pytest.raises(ValueError, match=r"^could not write f.png in .*afile: .*a file stands "
                                         r"where .*afile or a directory above it should be: "
                                         r"use another --output"):
        rl_figure.plot(runs, str(tmp_path / "afile" / "f.png"))
    figure = tmp_path / "figs" / "f.png"
    rl_figure.plot(runs, str(figure))
    earlier = snapshot(tmp_path / "figs")
    assert figure.read_bytes().startswith(b"\x89PNG")
    rl_figure.check_output(str(figure))  # an earlier figure is replaced

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "open", full, raising=False)
    with pytest.raises(ValueError, match=r"No space left on device\. Nothing was lost: the "
                                         r"earlier .*f\.png is intact; free some space"):
        rl_figure.plot(runs, str(figure))
    assert snapshot(tmp_path / "figs") == earlier  # and no temporary beside it


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:len(data) // 2], r"cannot be read \(cut short or garbled\)"),
    (lambda data: b"not an array", r"cannot be read \(cut short or garbled\)"),
    (lambda data: _npy(np.zeros(3)), r"holds a float64 array of shape \(3,\), not the numbers"),
    (lambda data: _npy(np.zeros((0, 3))), r"holds a float64 array of shape \(0, 3\)"),
], ids=["truncated", "garbled", "one-axis", "no-tasks"])
def test_rl_figure_of_a_damaged_returns_file_names_it_and_writes_nothing(tmp_path, damage,
                                                                         message):
    # Were NumPy's words without the file (or advice to load it with allow_pickle=True), and a
    # TypeError traceback for an array of one axis.
    from tf_maml.rl import figure as rl_figure

    for name in ("maml", "oracle"):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "test_returns.npy", -np.arange(6.0).reshape(2, 3))
    damaged = tmp_path / "maml" / "test_returns_steps0.1_0.05.npy"
    damaged.write_bytes(damage(_npy(-np.arange(6.0).reshape(2, 3))))
    figure = tmp_path / "figs" / "f.png"
    with pytest.raises(ValueError, match=r"^.*maml/test_returns_steps0\.1_0\.05\.npy " + message
                       + r".*: evaluate the run again to write it \(python -m tf_maml\.rl\.run "
                       r"--run_dir=.*maml --step_sizes=\.\.\.\)$"):
        rl_figure.plot({"MAML": str(tmp_path / "maml"),
                        "MAML (α/2)": f"{tmp_path / 'maml'}@{damaged.stem}"},
                       str(figure), oracle=str(tmp_path / "oracle"))
    assert not figure.exists()
    (tmp_path / "oracle" / "test_returns.npy").write_bytes(damaged.read_bytes())
    with pytest.raises(ValueError, match=r"oracle/test_returns\.npy .*\(tf-maml --flagfile="):
        rl_figure.plot({"MAML": str(tmp_path / "maml")}, str(figure),
                       oracle=str(tmp_path / "oracle"))
    assert not figure.exists()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- SavedModel
def test_export_dir_that_is_a_file_fails_before_training(sine_copy, tmp_path):
    config, run_dir = sine_copy
    target = tmp_path / "exported"
    target.write_text("a file")
    before = snapshot(run_dir)
    result = cli(*as_flags(config, metatrain_iterations=80, export_dir=str(target)))
    assert result.code == 1
    line = one_line_error(result.err)
    assert str(target) in line and "is a file" in line and "new directory" in line
    assert "Iteration" not in result.out  # refused before training
    assert target.read_text() == "a file"
    assert snapshot(run_dir) == before


def _refuse_write(code, words):
    def save(*args, **kwargs):
        raise OSError(code, words)
    return save


@pytest.mark.parametrize("code, words, fix", [
    (errno.ENOSPC, "No space left on device", "free some space on the disk of"),
    (errno.EROFS, "Read-only file system", "writable, or use another --export_dir"),
], ids=["full-disk", "read-only"])
def test_export_that_cannot_be_written_keeps_the_earlier_export(sine_copy, tmp_path, monkeypatch,
                                                                code, words, fix):
    config, run_dir = sine_copy
    parent = tmp_path / "exports"
    export(experiment.build_learner(config), str(parent / "model"), num_steps=1)
    earlier = snapshot(parent)
    monkeypatch.setattr(keras.Model, "save", _refuse_write(code, words))  # the last write
    result = cli(*as_flags(config, export_dir=str(parent / "model")))
    assert result.code == 1
    line = one_line_error(result.err)
    assert f"{parent}: {words}" in line and fix in line
    assert "the earlier export in" in line
    assert snapshot(parent) == earlier  # intact, and no temporary file left beside it
    assert os.listdir(parent) == ["model"]


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory):
    """A 3-way classifier of 4 features, exported; (loaded SavedModel, dir, a valid task)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    learner = MetaLearner(model, losses.summed_xent(2), inner_lr=0.1)
    export_dir = export(learner, str(tmp_path_factory.mktemp("export") / "model"), num_steps=2)
    rng = np.random.default_rng(0)
    task = dict(support_x=tf.constant(rng.random((6, 4), dtype=np.float32)),
                support_y=tf.constant(np.repeat(np.arange(3), 2), tf.int64),
                query_x=tf.constant(rng.random((5, 4), dtype=np.float32)))
    return tf.saved_model.load(export_dir), export_dir, task


OPTIONS = dict(num_steps=tf.constant(1), inner_lr=tf.constant(0.1))


@pytest.mark.parametrize("signature, change, message", [
    ("adapt_and_predict", dict(support_y=tf.constant([0, 1, 2, 3, 0, 1], tf.int64)),
     "support_y has a class id >= N = 3"),
    ("adapt_and_predict", dict(support_y=tf.constant([0, 1, 2, -1, 0, 1], tf.int64)),
     "support_y has a negative class id"),
    ("adapt_and_predict_with_options",
     dict(support_x=tf.zeros([0, 4]), support_y=tf.zeros([0], tf.int64), **OPTIONS),
     "the support set is empty (support_x has no examples)"),
    ("adapt_and_predict", dict(query_x=tf.zeros([5, 2, 2])),
     "query_x has the wrong rank: expected shape [n, 4]"),
    ("adapt_and_predict", dict(support_x=tf.zeros([6, 5])),
     "support_x has the wrong feature shape: expected [n, 4]"),
    ("adapt_and_predict_with_options", dict(OPTIONS, inner_lr=tf.constant(float("nan"))),
     "inner_lr must be finite"),
    ("adapt_and_predict_with_options", dict(OPTIONS, num_steps=tf.constant(-2)),
     "num_steps must be >= 0"),
    # A client's num_steps of 10**9 ran in the server without end.
    ("adapt_and_predict_with_options", dict(OPTIONS, num_steps=tf.constant(1001)),
     "num_steps must be <= 1000, the most inner steps tf_maml takes"),
    ("serving_default", dict(x=tf.zeros([2, 5])), "x has the wrong feature shape: expected [n, 4]"),
    ("adapt_and_predict", dict(support_x=tf.constant([[float("nan")] * 4] + [[0.5] * 4] * 5)),
     "support_x has a NaN or infinite value"),
    ("adapt_and_predict", dict(query_x=tf.constant([[0.5] * 4, [float("inf")] * 4])),
     "query_x has a NaN or infinite value"),
    ("adapt_and_predict_with_options", dict(OPTIONS, inner_lr=tf.constant(-1.0)),
     "inner_lr must be >= 0"),
    ("serving_default", dict(x=tf.constant([[float("nan")] * 4])),
     "x has a NaN or infinite value"),
], ids=["label>=N", "negative-label", "empty-support", "query-rank", "feature-size", "nan-lr",
        "negative-steps", "too-many-steps", "serving-feature-size", "nan-support", "inf-query",
        "negative-lr", "serving-nan"])
def test_saved_model_signatures_say_what_is_wrong(classifier_export, signature, change, message):
    loaded, export_dir, task = classifier_export
    before = snapshot(export_dir)
    inputs = {} if signature == "serving_default" else dict(task)
    if signature == "adapt_and_predict_with_options":
        inputs.update(OPTIONS)
    inputs.update(change)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        loaded.signatures[signature](**inputs)
    assert message in str(info.value)
    assert snapshot(export_dir) == before


@pytest.mark.parametrize("steps", [2**32 + 1, -(2**32) + 1], ids=["huge", "negative"])
def test_a_64_bit_step_count_beyond_32_bits_is_refused_not_cut(classifier_export, steps):
    # numpy's int64 2**32 + 1 was cast to int32 before the checks: 1 step, without a word
    # (and -2**32 + 1 too).
    loaded, _, task = classifier_export
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_steps must be"):
        loaded.adapt_and_predict(**task, num_steps=np.int64(steps), inner_lr=np.float64(0.1))


# ---------------------------------------------------------------------------- Python API
@pytest.mark.parametrize("kwargs, message", [
    (dict(num_steps=2.5), r"^num_steps must be a whole number of inner steps >= 0, got 2\.5$"),
    (dict(num_steps=-1), r"^num_steps must be a whole number of inner steps >= 0, got -1$"),
    (dict(targets="labels"), r"^targets must be one of \('auto', 'classes', 'regression'\), "
                             r"got 'labels'$"),
    (dict(input_shape=(5,)), r"^input_shape=\(5,\) does not fit model sinusoid_mlp, which "
                             r"takes examples of shape \(1,\): give that shape, or leave "
                             r"input_shape out to read it from the model$"),
    (dict(input_shape=(0,)), r"^input_shape must be the shape of one example \(without the "
                             r"batch axis\), sizes >= 1 or None, got \(0,\)$"),
    # Each of 10**9 default steps ran in every call of the export: it never returned.
    (dict(num_steps=1001), r"^num_steps=1001: 1001 inner steps would each run in every call "
                           r"of the export's adapt_and_predict .*more than the 1000 tf_maml "
                           r"takes; give at most 1000$"),
], ids=["fractional-steps", "negative-steps", "unknown-targets", "other-input-shape",
        "empty-input-shape", "too-many-steps"])
def test_bad_export_arguments_are_named_before_anything_is_written(tmp_path, kwargs, message):
    # 2.5 steps were exported as 2 without a word; an input_shape the model does not take
    # was Keras' multi-line error from deep in tracing the export.
    with pytest.raises(ValueError, match=message):
        MetaLearner(mlp(), losses.mse).export(str(tmp_path / "export"), **kwargs)
    assert os.listdir(tmp_path) == []


def test_saved_model_takes_numpy_s_float64_examples(classifier_export):
    # Was "Could not find matching concrete function to call loaded from the SavedModel",
    # listing the traced signatures, for the arrays numpy makes by default.
    loaded, _, task = classifier_export
    as_f64 = {name: np.asarray(value, np.float64 if value.dtype.is_floating else None)
              for name, value in task.items()}
    np.testing.assert_array_equal(loaded.adapt_and_predict(**as_f64),
                                  loaded.adapt_and_predict(**task))
    np.testing.assert_array_equal(loaded.serving_default(as_f64["query_x"]),
                                  loaded.serving_default(task["query_x"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="query_x has the wrong rank"):
        loaded.adapt_and_predict(as_f64["support_x"], as_f64["support_y"], np.zeros(4))


def test_saved_model_takes_numpy_scalar_options_and_mixed_float_widths(classifier_export):
    # Were "Could not find matching concrete function": np.int64 / np.float64 options (a
    # sweep over np.arange), support and query of different float widths, int32 class ids
    # with float64 examples.
    loaded, _, task = classifier_export
    expected = loaded.adapt_and_predict(**task, num_steps=3, inner_lr=0.05)
    as_f64 = {name: np.asarray(value, np.float64) for name, value in task.items()
              if name != "support_y"}
    calls = [dict(task, num_steps=np.int64(3), inner_lr=np.float64(0.05)),
             dict(task, num_steps=np.int64(3), inner_lr=0.05),  # either with a Python number
             dict(task, support_x=as_f64["support_x"], num_steps=3, inner_lr=0.05),
             dict(as_f64, support_y=np.int32([0, 0, 1, 1, 2, 2]), num_steps=3,
                  inner_lr=np.float64(0.05))]
    for call in calls:
        np.testing.assert_allclose(loaded.adapt_and_predict(**call), expected, rtol=1e-6)


def mlp(hidden=(8,)) -> keras.Model:
    keras.utils.set_random_seed(0)
    return models.fc_net((1,), hidden, 1, name="sinusoid_mlp")


@pytest.fixture(scope="module")
def learner():
    return MetaLearner(mlp(), losses.mse, inner_lr=0.01)


def sine_batch(tasks=2, k=5, q=5, seed=0):
    return SinusoidTasks(k, q).sample_batch(tasks, np.random.default_rng(seed))


def test_more_inner_steps_than_unroll_are_refused_by_the_api(monkeypatch):
    # evaluate_batch(num_steps=10**9) and fit with inner_steps=10**9 traced their unrolled
    # steps without end. The bound lowered to 3 stands for the real one (1000).
    from tf_maml import adapt as adapt_lib

    monkeypatch.setattr(adapt_lib, "MAX_UNROLLED_STEPS", 3)
    with pytest.raises(ValueError, match=r"^inner_steps=4: 4 inner steps would each be "
                                         r"unrolled .*give at most 3$"):
        MetaLearner(mlp(), losses.mse, inner_steps=4)
    learner = MetaLearner(mlp(), losses.mse, inner_steps=3)
    with pytest.raises(ValueError, match=r"^evaluate_batch: num_steps=4: 4 inner steps would "
                                         r"each be unrolled .*give at most 3$"):
        learner.evaluate_batch(sine_batch(), 4)
    assert learner.evaluate_batch(sine_batch(), 3)["loss"].shape == (2, 4)
    support_x, support_y = (part[0] for part in sine_batch(1)[:2])
    assert len(learner.adapt(support_x, support_y, num_steps=5)) == 4  # eager: not unrolled


def test_unbuilt_model_says_to_build_it():
    model = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"call the model once on an example batch \(or give "
                                         r"it an Input\)"):
        MetaLearner(model, losses.mse)


def test_model_without_trainable_weights_says_it_is_frozen():
    model = mlp()
    model.trainable = False
    with pytest.raises(ValueError, match=r"has no trainable weights.*model\.trainable = True"):
        MetaLearner(model, losses.mse)


def test_multi_input_model_is_refused_at_construction():
    # It was accepted, then failed at the first step with Keras' "expects 2 inputs ...
    # received 1", or with a misleading count of targets against examples.
    a, b = keras.Input((1,)), keras.Input((1,))
    model = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match=r"takes 2 inputs, but MetaLearner feeds a model one "
                       r"tensor of examples .*multi-input models are not supported: give it a "
                       r"model of one input, e\.g\. concatenate the features"):
        MetaLearner(model, losses.mse)


class _TwoInputNet(keras.Model):
    """A subclassed model of two inputs, ``call([a, b])`` or ``call({"a": a, "b": b})``."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, inputs):
        parts = [inputs["a"], inputs["b"]] if isinstance(inputs, dict) else list(inputs)
        return self.dense(tf.concat(parts, -1))


class _TwoArgumentNet(_TwoInputNet):
    """A subclassed model of two inputs, ``call(a, b)``."""

    def call(self, a, b, training=None):
        return super().call([a, b])


@pytest.mark.parametrize("inputs", [[np.zeros((3, 1), "f")] * 2,
                                    {"a": np.zeros((3, 1), "f"), "b": np.zeros((3, 1), "f")},
                                    (np.zeros((3, 1), "f"),) * 2],
                         ids=["list", "dict", "arguments"])
def test_subclassed_multi_input_model_is_refused_at_construction(inputs):
    # A subclassed model has no model.inputs to count: it was accepted, then failed at the
    # first step with "too many values to unpack", a tensor with no index 'a', or a missing
    # argument b.
    if isinstance(inputs, tuple):
        model = _TwoArgumentNet()
        model(*inputs)
    else:
        model = _TwoInputNet()
        model(inputs)
    with pytest.raises(ValueError, match=r"takes 2 inputs, but MetaLearner feeds a model one "
                                         r"tensor of examples .*multi-input models are not "
                                         r"supported"):
        MetaLearner(model, losses.mse)


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="fomaml"), r"objective must be LastStep\(\), MultiStepLoss\(iterations\) "
                               r"or Reptile\(\), got 'fomaml'"),
    (dict(inner_steps=-1), r"inner_steps must be a whole number >= 0, got -1"),
    (dict(inner_steps=2.5), r"inner_steps must be a whole number >= 0, got 2\.5"),
    (dict(inner_lr=-0.01), r"the inner learning rate α must be >= 0 \(a step size; 0 leaves the "
                           r"weights unchanged\), got -0\.01"),
])
def test_bad_learner_arguments_are_named(kwargs, message):
    # A negative α trained silently by gradient ascent on the support loss; 2.5 inner steps
    # ran 2.
    with pytest.raises(ValueError, match=message):
        MetaLearner(mlp(), losses.mse, **kwargs)
    with pytest.raises(ValueError, match=r"inner learning rate α must be >= 0"):
        options.LSLR(-0.01)


def _with_frozen_head(kind: str) -> tuple[keras.Model, str, str]:
    """(a model whose output Dense is frozen, its name, the layer that head_layer takes
    instead: the one before it)."""
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, name="out")])
    if kind == "functional":
        x = keras.Input((4,))
        model = keras.Model(x, inner.layers[0](keras.layers.Dense(8, name="body")(x)))
    else:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="body"),
                                  inner if kind == "nested" else inner.layers[0]])
    (inner if kind == "nested" else model.get_layer("out")).trainable = False
    return model, "out", "body"


@pytest.mark.parametrize("kind", ["sequential", "functional", "nested"])
def test_anil_refuses_a_frozen_head_rather_than_adapting_the_layer_before_it(kind):
    # The head is the layer with trainable weights nearest the output: with the output
    # Dense frozen, ANIL silently adapted the body's last layer instead.
    model, frozen, before = _with_frozen_head(kind)
    with pytest.raises(ValueError, match=rf"^adapt='head' \(ANIL\) adapts the model's head, "
                       r"the layer with weights nearest its output, but that layer, "
                       rf"{frozen}, is frozen \(trainable=False\): {before} would adapt in its "
                       r"place\. Unfreeze it \(trainable = True, on a frozen model that holds "
                       r"it too\), or pick another adaptation \(adapt='all'\)$"):
        MetaLearner(model, losses.summed_xent(1), adapt="head")
    MetaLearner(model, losses.summed_xent(1))  # MAML adapts what trains: the body


def test_anil_with_a_frozen_body_or_a_frozen_batch_norm_after_the_head_is_accepted():
    # Frozen layers before the head, and a frozen (fixed) normalisation after it, leave the
    # output Dense the head.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="body"),
                              keras.layers.Dense(3, name="out"),
                              keras.layers.BatchNormalization(name="bn")])
    model.get_layer("body").trainable = False
    model.get_layer("bn").trainable = False
    learner = MetaLearner(model, losses.summed_xent(1), adapt="head")
    assert [v.path for v, adapted in zip(model.trainable_variables, learner.mask)
            if adapted] == [v.path for v in model.get_layer("out").trainable_variables]


@pytest.mark.parametrize("kwargs, message", [
    (dict(task_family="navigaton"), r"^task_family must be one of navigation, cheetah_vel, "
                                    r".*got 'navigaton' \(did you mean navigation\?\)$"),
    (dict(inner_lr=-0.1), r"^the inner learning rate α must be >= 0 .*got -0\.1$"),
    (dict(max_kl=0.0), r"^max_kl, TRPO's KL limit δ, must be a positive finite number \(the "
                       r"paper's is 0\.01\), got 0\.0$"),
    # 2.5 inner steps ran 2, 2.5 trajectories sampled 2, a horizon of 2.5 stepped 2.
    (dict(inner_steps=2.5), r"^inner_steps must be a whole number of inner steps >= 0, got "
                            r"2\.5$"),
    (dict(num_trajectories=2.5), r"^num_trajectories must be a whole number of trajectories "
                                 r">= 1, got 2\.5$"),
    (dict(horizon=2.5), r"^horizon must be a whole number of steps >= 1, got 2\.5$"),
], ids=["family-typo", "negative-alpha", "zero-kl", "fractional-steps",
        "fractional-trajectories", "fractional-horizon"])
def test_bad_rl_learner_arguments_are_named(kwargs, message):
    # The typo was "the locomotion task family must be one of cheetah_vel, ..." (navigation
    # left out); a negative α stepped down the return, and a δ of 0 rejected every step.
    from tf_maml.rl import training as rl_training

    with pytest.raises(ValueError, match=message):
        rl_training.build_learner(**kwargs)


@pytest.mark.parametrize("meta_batch_size", [0, -2, 2.5])
def test_rl_training_with_a_bad_meta_batch_size_is_refused_before_anything_is_written(
        tmp_path, meta_batch_size):
    # Was the policy's "output of shape (0, 2, None)", numpy's "negative dimensions" or a
    # TypeError, after training_log.csv was written.
    from tf_maml.rl import training as rl_training

    learner = rl_training.build_learner(num_trajectories=2, horizon=5)
    with pytest.raises(ValueError, match=r"^meta_batch_size must be a whole number of tasks >= "
                                         rf"1, got {re.escape(repr(meta_batch_size))}$"):
        rl_training.train(learner, str(tmp_path), 1, meta_batch_size=meta_batch_size,
                          tensorboard=False, log=lambda _: None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("iterations", [-1, 2.5])
def test_rl_training_with_bad_iterations_is_refused_before_anything_is_written(tmp_path,
                                                                             iterations):
    # -1 trained nothing and returned 0 without a word (fit refuses it), after
    # training_log.csv was written; 2.5 trained 2.
    from tf_maml.rl import training as rl_training

    learner = rl_training.build_learner(num_trajectories=2, horizon=5)
    with pytest.raises(ValueError, match=r"^iterations must be a whole number of meta-"
                                         rf"batches >= 0, got {re.escape(repr(iterations))}$"):
        rl_training.train(learner, str(tmp_path), iterations, meta_batch_size=2,
                          tensorboard=False, log=lambda _: None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("num_tasks", [0, -2, 2.5])
def test_bad_rl_task_counts_are_named(num_tasks):
    # The evaluation's were numpy's "need at least one array to concatenate" or a
    # TypeError; a task family's sample_tasks(0) gave no task without a word, -1 numpy's
    # "negative dimensions are not allowed".
    from tf_maml.rl import training as rl_training
    from tf_maml.tasks.navigation import NavigationTasks

    message = (r"^num_tasks must be a whole number of tasks >= 1, got "
               rf"{re.escape(repr(num_tasks))}$")
    learner = rl_training.build_learner(num_trajectories=2, horizon=5)
    with pytest.raises(ValueError, match=message):
        rl_training.evaluate(learner, num_tasks, 1, log=lambda _: None)
    with pytest.raises(ValueError, match=message):
        NavigationTasks().sample_tasks(num_tasks, np.random.default_rng(0))


@pytest.mark.parametrize("make, message", [
    (lambda: options.adam(-1), r"^adam's learning_rate, the meta learning rate β, must be a "
                               r"number > 0 \(the original's is 1e-3\), got -1$"),
    (lambda: options.adam(0.0), r"adam's learning_rate.*must be a number > 0.*got 0\.0$"),
    (lambda: options.cosine(-1e-3, 1e-5, 10), r"^cosine's meta_lr, the meta learning rate β, "
                                              r"must be a number > 0"),
    (lambda: options.cosine(1e-3, 1e-5, 2.5), r"^cosine annealing needs a whole number of "
                                              r"iterations >= 1, got 2\.5$"),
    (lambda: options.chain(options.adam(), options.ClipNetwork(10)),
     r"^chain takes the optimizer last, after the gradient transforms \(got it as link 1 of "
     r"2\): write chain\(ClipNetwork\(10\.0\), adam\(\.\.\.\)\)$"),
    (lambda: options.FirstOrderUntil(2.5), r"^FirstOrderUntil needs iterations >= 1, a whole "
                                           r"number \(for none, .*got 2\.5$"),
    (lambda: options.FirstOrderUntil(True), r"FirstOrderUntil needs iterations >= 1, a whole "
                                            r"number .*got True$"),
    (lambda: options.MultiStepLoss(2.5), r"^MultiStepLoss needs iterations >= 1, a whole "
                                         r"number \(for none, .*got 2\.5$"),
    (lambda: MetaLearner(mlp(), losses.mse, meta_optimizer=keras.optimizers.Adam(-1.0)),
     r"^keras\.optimizers\.Adam's learning_rate, the meta learning rate β, must be a number > 0 "
     r"\(the original's is 1e-3\), got -1\.0$"),
    (lambda: options.chain(options.ClipNetwork(10), keras.optimizers.SGD(float("nan"))),
     r"^keras\.optimizers\.SGD's learning_rate, .*must be a number > 0 .*got nan$"),
    (lambda: baselines.Classifier(mlp(), meta_lr=-1e-3),
     r"^Classifier's meta_lr, the meta learning rate β, must be a number > 0 .*got -0\.001$"),
], ids=["adam-negative", "adam-zero", "cosine-negative", "cosine-float-iterations",
        "chain-optimizer-first", "first-order-float", "first-order-bool", "msl-float",
        "keras-optimizer-negative", "keras-optimizer-nan", "classifier-negative"])
def test_bad_option_values_are_named(make, message):
    # Keras said only "should be float" of adam(-1) (and took -1.0: gradient ascent), a
    # chain with the optimizer first "MetaOptimizer needs a keras.optimizers.Optimizer, got
    # ClipNetwork", and the iteration counts were truncated without a word. A Keras optimizer
    # of a negative or NaN rate was taken as it was: gradient ascent, or every step skipped.
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_execution_plan_is_named():
    with pytest.raises(ValueError, match=r"task_parallelism must be one of \('auto', 'batched', "
                                         r"'vectorized', 'map', 'loop', 'accumulate'\), got "
                                         r"'threads'"):
        ExecutionPlan("threads")
    with pytest.raises(ValueError, match=r"task_parallelism='batched' cannot run this model"):
        MetaLearner(keras.Sequential([keras.Input((4, 3)), keras.layers.GRU(2)]),
                    losses.mse).use_plan(ExecutionPlan("batched"))


@pytest.mark.parametrize("overrides, flag", [
    (dict(algorithm="fomaml"), "--algorithm: 'fomaml' is not one of maml, reptile"),
    (dict(task_parallelism="threads"), "--task_parallelism: 'threads' is not one of auto"),
    (dict(dataset_backend="tfrecord"), "--dataset_backend: 'tfrecord' is not one of folders"),
])
def test_bad_config_strings_are_named(overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        Config(**overrides).validate()


@pytest.mark.parametrize("make, message", [
    (lambda b: b[:3],
     r"train_step expects a batch \(support_x, support_y, query_x, query_y\).*got a tuple of 3"),
    (lambda b: (b[0], b[1], b[2][:1], b[3][:1]),
     r"train_step: the arrays of a batch must hold the same number of tasks"),
], ids=["three-arrays", "task-counts-differ"])
def test_wrong_batch_structure_to_train_step(learner, make, message):
    before = [v.numpy() for v in learner.model.weights]
    with pytest.raises(ValueError, match=message):
        learner.train_step(make(sine_batch()))
    for old, v in zip(before, learner.model.weights):
        np.testing.assert_array_equal(old, v.numpy())


@pytest.mark.parametrize("targets", [3, 1])
def test_support_labels_of_another_length_in_train_step(learner, targets):
    sx, sy, qx, qy = sine_batch()
    before = [v.numpy() for v in learner.model.weights]
    with pytest.raises(ValueError, match=f"support_y has {targets} targets per task but "
                                         "support_x has 5 examples"):
        learner.train_step((sx, sy[:, :targets], qx, qy))
    for old, v in zip(before, learner.model.weights):
        np.testing.assert_array_equal(old, v.numpy())


@pytest.mark.parametrize("method", ["train_step", "evaluate_batch"])
def test_batch_without_the_task_axis_is_refused(learner, method):
    # One sinusoid task given as [examples, 1], without the leading task axis: read as 5
    # tasks of examples of shape (), it used to train silently on broadcast nonsense.
    sx, sy, qx, qy = (a[0] for a in sine_batch())
    before = [v.numpy() for v in learner.model.weights]
    with pytest.raises(ValueError, match=rf"{method}: support_x has shape \(5, 1\), i.e. "
                       r"examples of shape \(\), but the model takes examples of shape "
                       r"\(1\).*task axis missing"):
        args = (sx, sy, qx, qy)
        learner.train_step(args) if method == "train_step" else learner.evaluate_batch(args, 1)
    for old, v in zip(before, learner.model.weights):
        np.testing.assert_array_equal(old, v.numpy())
    learner.train_step(sine_batch())  # the same data with the task axis is fine


@pytest.mark.parametrize("num_steps", [2.5, -1, "2", True])
@pytest.mark.parametrize("method", ["adapt", "evaluate_batch"])
def test_a_step_count_that_is_no_whole_number_is_refused(learner, method, num_steps):
    # 2.5 ran 2 steps, -1 none, "2" two and True one, without a word.
    sx, sy, qx, qy = sine_batch()
    with pytest.raises(ValueError, match=rf"^{method}: num_steps must be a whole number of "
                       rf"inner steps >= 0, got {re.escape(repr(num_steps))}$"):
        if method == "adapt":
            learner.adapt(sx[0], sy[0], num_steps=num_steps)
        else:
            learner.evaluate_batch((sx, sy, qx, qy), num_steps)
    assert len(learner.adapt(sx[0], sy[0], num_steps=tf.constant(2))) == 4  # a tensor is one


def test_support_labels_of_another_length_in_adapt(learner):
    sx, sy, _, _ = sine_batch()
    with pytest.raises(ValueError, match="support_y has 3 targets but support_x has 5 examples"):
        learner.adapt(sx[0], sy[0, :3])


def class_batch(ways=3, tasks=2):
    """``tasks`` tasks of ``ways`` classes, two support and one query example each."""
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(ways), (tasks, 1))
    return (rng.normal(size=(tasks, 2 * ways, 4)).astype("float32"), np.repeat(labels, 2, 1),
            rng.normal(size=(tasks, ways, 4)).astype("float32"), labels)


def classifier(ways: int) -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(ways)])


@pytest.mark.parametrize("model, loss, batch, message", [
    (lambda: classifier(2), losses.summed_xent(2), class_batch(3),
     r"support_y holds class 2 but the model outputs 2 logits per example \(classes 0\.\.1\): "
     r"give the model one output per class of a task"),
    (lambda: classifier(3), "sparse_categorical_crossentropy",
     tuple(np.eye(3, dtype="float32")[a] if i % 2 else a for i, a in enumerate(class_batch())),
     r"support_y has shape \(6, 3\) per task, the model's outputs \(6, 3\): loss_fn takes one "
     r"class id per example \(shape \(6,\)\); for one-hot labels give their argmax"),
    (mlp, losses.mse, tuple(a[..., 0] if i % 2 else a for i, a in enumerate(sine_batch())),
     r"support_y has shape \(5,\) per task but the model's outputs \(5, 1\), and loss_fn "
     r"broadcasts one against the other.*give the targets the outputs' shape \(5, 1\)"),
    (mlp, losses.mse, tuple(np.repeat(a, 2, -1) if i % 2 else a
                            for i, a in enumerate(sine_batch())),
     r"support_y has shape \(5, 2\) per task, the model's outputs \(5, 1\): loss_fn compares "
     r"them element by element"),
], ids=["class-out-of-range", "one-hot-to-sparse-loss", "regression-broadcast",
        "regression-other-size"])
def test_targets_that_do_not_fit_the_model_outputs_are_refused_before_any_step(
        model, loss, batch, message):
    # Each used to go on: the regression targets broadcast into a finite but wrong loss
    # (every target against every output), an out-of-range class id is a NaN on a GPU
    # (a deep TensorFlow error on a CPU), one-hot labels a rank error from inside the loss.
    learner = MetaLearner(model(), loss)
    before = [v.numpy() for v in learner.model.weights]
    for call in (lambda: learner.train_step(batch), lambda: learner.evaluate_batch(batch, 1),
                 lambda: learner.adapt(batch[0][0], batch[1][0])):
        with pytest.raises(ValueError, match=message):
            call()
    assert int(learner.optimizer.iterations) == 0
    for old, v in zip(before, learner.model.weights):
        np.testing.assert_array_equal(old, v.numpy())


@pytest.mark.parametrize("array, task", [(3, 0), (1, 1)], ids=["query", "second-task"])
def test_class_ids_out_of_range_anywhere_in_the_first_batch_are_refused(array, task):
    # Only the first task's support set was checked: query labels numbered 1..N, or a later
    # task's, failed deep in TensorFlow (a NaN on a GPU).
    batch = list(class_batch(3))
    batch[array] = batch[array].copy()
    batch[array][task, 0] = 3
    learner = MetaLearner(classifier(3), losses.summed_xent(2))
    name = "query_y" if array == 3 else "support_y"
    with pytest.raises(ValueError, match=rf"^{name} holds class 3 but the model outputs 3 "
                                         r"logits per example \(classes 0\.\.2\)"):
        learner.train_step(tuple(batch))
    assert int(learner.optimizer.iterations) == 0


def test_targets_a_keras_loss_squeezes_are_accepted():
    # Keras' "mse" squeezes [K] targets against [K, 1] outputs, as model.compile("mse")
    # does: the same loss as with [K, 1] targets, so not refused.
    sx, sy, qx, qy = sine_batch()
    out = MetaLearner(mlp(), "mse").evaluate_batch((sx, sy[..., 0], qx, qy[..., 0]), 1)
    expected = MetaLearner(mlp(), "mse").evaluate_batch((sx, sy, qx, qy), 1)
    np.testing.assert_allclose(out["loss"], expected["loss"], rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda b: (b[0][:, :0], b[1][:, :0], b[2], b[3]),
     r"support_x has shape \(2, 0, 1\), no examples per task; every task needs at least one "
     r"support and one query example"),
    (lambda b: (b[0], b[1], b[2][:, :0], b[3][:, :0]), r"query_x has shape \(2, 0, 1\), no "),
    (lambda b: (b[0], b[1], b[2], b[3][..., 0]),
     r"support_y has shape \(2, 5, 1\) but query_y \(2, 5\); the targets of one example "
     r"must have one shape in both sets"),
], ids=["empty-support", "empty-query", "targets-differ"])
def test_empty_or_mismatched_sets_are_refused(learner, make, message):
    # An empty support set failed deep inside the compiled step; an empty query set trained
    # on a query loss of 0 (or NaN, which the guard then skipped, step after step).
    with pytest.raises(ValueError, match=message):
        learner.train_step(make(sine_batch()))


def test_a_loss_that_cannot_take_several_outputs_says_so():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4)(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(3)(hidden), keras.layers.Dense(1)(hidden)])
    with pytest.raises(ValueError, match=r"the model returns a list of 2 outputs, which "
                       r"loss_fn gets as it is, and failed on \(.*\); give a loss_fn that "
                       r"takes the model's outputs as it returns them, e\.g\. lambda y, "
                       r"outputs: loss\(y, outputs\[0\]\)"):
        MetaLearner(model, losses.mean_xent).train_step(class_batch())
    # Such a loss is how a model with several outputs meta-trains.
    both = MetaLearner(model, lambda y, out: losses.mean_xent(y, out[0])
                       + tf.reduce_mean(tf.square(out[1])))
    assert bool(both.train_step(class_batch())["applied"])


def per_example_mse(y_true, y_pred):
    """One squared error per example: what Keras' ``reduction=None`` losses return."""
    return tf.reduce_mean(tf.square(y_pred - y_true), axis=-1)


@pytest.mark.parametrize("mode", ["map", "batched"])
def test_per_example_loss_is_refused_before_any_step(mode):
    # The gradient of a vector is the gradient of its sum: the inner step was silently K
    # times larger (N*K for a classifier) than the mean's, and training went on.
    learner = MetaLearner(mlp(), per_example_mse).use_plan(ExecutionPlan(mode, autotune=False))
    before = [v.numpy() for v in learner.meta_variables]
    message = (r"loss_fn returned shape \(5,\) for one task's 5 examples; it must return a "
               r"scalar \(e\.g\. the mean over the examples, or "
               r"tf_maml\.losses\.summed_xent\(K\) for the original's Σ CE / K\)$")
    with pytest.raises(ValueError, match=message):
        learner.train_step(sine_batch())
    with pytest.raises(ValueError, match=message):
        learner.fit(SinusoidTasks(5, 5), iterations=2, meta_batch_size=2, log_interval=None)
    with pytest.raises(ValueError, match=message):
        sx, sy, _, _ = sine_batch()
        learner.adapt(sx[0], sy[0])
    assert int(learner.optimizer.iterations) == 0
    for old, v in zip(before, learner.meta_variables):
        np.testing.assert_array_equal(old, v.numpy())


def test_keras_loss_name_is_the_mean_over_the_examples():
    """``"mse"`` is Keras' mean squared error averaged over the task's examples: the first
    inner step is θ − α ∇θ mean_i (w x_i + b − y_i)², worked out by hand for y = w x + b."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.set_weights([np.array([[0.5]], np.float32), np.array([-0.25], np.float32)])
    learner = MetaLearner(model, "mse", inner_lr=0.1)
    x = np.array([[1.0], [2.0], [-1.0], [3.0]], np.float32)
    y = np.array([[0.0], [1.0], [2.0], [-1.0]], np.float32)
    residual = 0.5 * x - 0.25 - y
    grad_w, grad_b = 2 * np.mean(residual * x), 2 * np.mean(residual)
    w, b = learner.adapt(x, y, num_steps=1)
    np.testing.assert_allclose(w.numpy(), [[0.5 - 0.1 * grad_w]], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [-0.25 - 0.1 * grad_b], rtol=1e-6)


@pytest.mark.parametrize("loss, message", [
    ("msee", r"unknown loss 'msee': give a Keras loss name \(e\.g\. 'mse'\) or a function "
             r"loss_fn\(y_true, y_pred\) -> scalar"),
    (None, r"loss_fn must be a function loss_fn\(y_true, y_pred\) -> scalar or a Keras loss "
           r"name, got None"),
])
def test_bad_loss_is_named_at_construction(loss, message):
    with pytest.raises(ValueError, match=message):
        MetaLearner(mlp(), loss)


def test_finetuner_on_tasks_of_more_classes_than_its_head_says_so():
    # It failed inside TensorFlow's cross-entropy ("Received a label value of 4 which is
    # outside the valid range of [0, 3)"), a NaN on a GPU.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(5)])
    tuner = baselines.FineTuner(baselines.Classifier(model), num_classes=3, inner_lr=0.1)
    x, y, qx, qy = class_batch(ways=5)
    message = (r"^FineTuner: the tasks hold class 4, but the head was built for num_classes=3 "
               r"\(classes 0\.\.2\): build it with the tasks' number of classes, "
               r"FineTuner\(classifier, num_classes=N, \.\.\.\) for N-way tasks")
    with pytest.raises(ValueError, match=message):
        tuner.evaluate_batch((x, y, qx, qy), 1)
    with pytest.raises(ValueError, match=message):
        tuner.finetune(x[0], y[0], qx[0], 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=1), r"^FineTuner: num_classes must be N >= 2 of N-way tasks, got 1$"),
    (dict(inner_lr=-0.1), r"^the inner learning rate α must be >= 0 \(a step size; 0 leaves "
                          r"the weights unchanged\), got -0\.1$"),
    (dict(inner_lr=float("nan")), r"^the inner learning rate must be a finite number, got nan$"),
    (dict(lr_decay=-1.0), r"^FineTuner: lr_decay must be a finite number >= 0 \(0: a fixed "
                          r"step size\), got -1\.0$"),
], ids=["one-way", "negative-lr", "nan-lr", "negative-decay"])
def test_bad_finetuner_arguments_are_named(kwargs, message):
    # A negative α fine-tuned up the support loss, a NaN one gave NaN logits, a decay of
    # -1 an infinite step at step 1, and a head of one logit a loss of 0.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(5)])
    with pytest.raises(ValueError, match=message):
        baselines.FineTuner(baselines.Classifier(model), **{"num_classes": 3, "inner_lr": 0.1,
                                                            **kwargs})


class NaNTasks:
    """Sinusoid tasks whose query targets are NaN (broken data)."""

    def __init__(self):
        self.inner = SinusoidTasks(5, 5)

    def sample_batch(self, meta_batch_size, rng):
        sx, sy, qx, qy = self.inner.sample_batch(meta_batch_size, rng)
        return sx, sy, qx, np.full_like(qy, np.nan)


def test_nan_data_stops_fit_and_keeps_the_run(tmp_path):
    run_dir = str(tmp_path / "run")
    MetaLearner(mlp(), losses.mse).fit(SinusoidTasks(5, 5), iterations=5, meta_batch_size=2,
                                       run_dir=run_dir, log_interval=None, log=lambda s: None)
    before = snapshot(run_dir)
    fresh = MetaLearner(mlp(), losses.mse)
    with pytest.raises(NonFiniteError, match=r"iteration 6: that step was not applied\. Last "
                                             r"good checkpoint: .*model-5 \(left intact\).*"
                                             r"check the data"):
        fresh.fit(NaNTasks(), iterations=8, meta_batch_size=2, run_dir=run_dir,
                  log_interval=None, log=lambda s: None)
    after = snapshot(run_dir)
    new = set(after) - set(before)
    assert all(os.path.basename(p).startswith("events.out.tfevents") for p in new), new
    assert {p: after[p] for p in before} == before  # every file written before is intact
    assert all(np.isfinite(v.numpy()).all() for v in fresh.model.weights)


def test_class_ids_out_of_range_in_a_later_batch_stop_fit_naming_the_iteration(tmp_path,
                                                                              capfd):
    # Only the first batch was checked before training; a later one's class 7 of 3 was
    # TensorFlow's InvalidArgumentError, its graph and Python stack, out of fit; then a
    # one-line error, after TensorFlow's C++ log lines ("OP_REQUIRES failed at
    # sparse_xent_op.cc ..."). Its class ids are checked before the step now.
    run_dir = tmp_path / "run"
    good = class_batch(3)
    MetaLearner(classifier(3), losses.summed_xent(2)).fit(
        [good, good], iterations=2, meta_batch_size=2, run_dir=str(run_dir), log_interval=None,
        log=lambda s: None)
    before = snapshot(run_dir)
    capfd.readouterr()
    with pytest.raises(BatchError, match=r"^the batch of iteration 4 cannot be trained on: "
                       r"train_step: query_y holds class 7 but the model outputs 3 logits per "
                       r"example \(classes 0\.\.2\): give the model one output per class of a "
                       r"task \(num_classes, e\.g\. N for N-way tasks\) or number the classes "
                       r"of each task 0\.\.N-1\. That step was not applied\. Last good "
                       rf"checkpoint: {re.escape(str(run_dir))}/model-2 \(left intact\)\.$"):
        MetaLearner(classifier(3), losses.summed_xent(2)).fit(
            [good, _with_class(good, 3, 7)], iterations=5, meta_batch_size=2,
            run_dir=str(run_dir), log_interval=None, log=lambda s: None)
    assert "OP_REQUIRES" not in capfd.readouterr().err
    after = snapshot(run_dir)
    assert {p: after[p] for p in before} == before  # the checkpoint and log as they were
    assert all(os.path.basename(p).startswith("events.out.tfevents")
               for p in set(after) - set(before))


def _with_class(batch, array: int, class_id: int) -> tuple:
    """``batch`` with the first target of the second task in ``batch[array]`` set to
    ``class_id``."""
    batch = list(batch)
    batch[array] = batch[array].copy()
    batch[array][1, 0] = class_id
    return tuple(batch)


@pytest.mark.parametrize("method", ["train_step", "evaluate_batch", "adapt"])
def test_class_ids_out_of_range_in_a_later_call_are_one_line(method, capfd):
    # The first call's targets were checked before TensorFlow runs; a later call's class 7
    # of 3 was TensorFlow's InvalidArgumentError with its graph and stack, then its reason
    # after its C++ log lines ("OP_REQUIRES failed ...", "Local rendezvous is aborting").
    learner = MetaLearner(classifier(3), losses.summed_xent(2))
    good = class_batch(3)
    learner.evaluate_batch(good, 1)  # checked: the first batch
    bad = _with_class(good, 1, 7)
    before = [v.numpy() for v in learner.model.weights]
    call = {"train_step": lambda: learner.train_step(bad),
            "evaluate_batch": lambda: learner.evaluate_batch(bad, 1),
            "adapt": lambda: learner.adapt(bad[0][1], bad[1][1])}[method]
    capfd.readouterr()
    with pytest.raises(BatchError, match=rf"^{method}: support_y holds class 7 but the model "
                       r"outputs 3 logits per example \(classes 0\.\.2\): give the model one "
                       r"output per class of a task .*or number the classes of each task "
                       r"0\.\.N-1$"):
        call()
    assert "OP_REQUIRES" not in capfd.readouterr().err
    assert int(learner.optimizer.iterations) == 0
    for old, v in zip(before, learner.model.weights):
        np.testing.assert_array_equal(old, v.numpy())


def test_a_later_batch_tensorflow_refuses_for_a_loss_of_its_own_is_one_line():
    # A loss tf_maml cannot tell takes class ids is not range-checked after the first
    # batch: TensorFlow's refusal inside the compiled step is still said in one line.
    def own_loss(y, logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.cast(y, tf.int32), logits))

    learner = MetaLearner(classifier(3), own_loss)
    good = class_batch(3)
    learner.evaluate_batch(good, 1)
    with pytest.raises(BatchError, match=r"^evaluate_batch: Received a label value of 7 which "
                       r"is outside the valid range of \[0, 3\)\. Label values: [0-9 ]+ \(only "
                       r"the first batch is checked in full before a step: check this one, "
                       r"e\.g\. that its class ids are in 0\.\.N-1\)$"):
        learner.evaluate_batch(_with_class(good, 1, 7), 1)


def test_unknown_nan_policy_is_named():
    with pytest.raises(ValueError, match="nan_policy must be 'stop' or 'skip', got 'ignore'"):
        MetaLearner(mlp(), losses.mse).fit(SinusoidTasks(5, 5), iterations=1,
                                           nan_policy="ignore", log_interval=None)


@pytest.mark.parametrize("meta_batch_size", [0, -3, 2.5])
def test_a_meta_batch_of_no_tasks_is_named(meta_batch_size):
    with pytest.raises(ValueError, match=rf"^meta_batch_size must be a whole number of tasks "
                                         rf">= 1, got {meta_batch_size}$"):
        MetaLearner(mlp(), losses.mse).fit(SinusoidTasks(5, 5), iterations=2,
                                           meta_batch_size=meta_batch_size, log_interval=None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(iterations=-3), r"^iterations must be a whole number of meta-batches >= 0, got -3$"),
    (dict(iterations=2.5), r"^iterations must be a whole number of meta-batches >= 0, got 2\.5$"),
    (dict(pretrain_iterations=-1), r"^pretrain_iterations must be a whole number >= 0, got -1$"),
    (dict(seed=None), r"^seed must be a whole number >= 0, got None$"),
    (dict(callbacks=keras.callbacks.EarlyStopping()),
     r"^callbacks must be a list of tf_maml\.callbacks\.Callback objects \(Keras callbacks do "
     r"not apply"),
    # Was "could not create the run directory in : No such file or directory ...; check ,".
    (dict(run_dir=""), r"^run_dir must be the path of a folder \(None: no run directory, "
                       r"nothing written\), got ''$"),
    (dict(log_interval=2.5), r"^log_interval must be None or a whole number of iterations "
                             r">= 0, got 2\.5$"),
    (dict(log_interval="10"), r"^log_interval must be None or a whole number of iterations "
                              r">= 0, got '10'$"),
    (dict(resume="no"), r"^resume must be True or False, got 'no'$"),
    (dict(log=3), r"^log must be a function of one line \(print, list\.append, \.\.\.\), got 3$"),
], ids=["negative-iterations", "float-iterations", "negative-pretrain", "no-seed",
        "keras-callback", "empty-run-dir", "float-log-interval", "string-log-interval",
        "string-resume", "log-not-callable"])
def test_bad_fit_arguments_are_named(kwargs, message):
    # Negative iterations trained nothing without a word; the others failed deep inside
    # range(), numpy's seeding or the loop's first callback hook; resume="no" resumed, a
    # log_interval of 2.5 printed at 5, 10, ... and "10" or a log that is no function
    # failed inside the loop.
    kwargs = {"iterations": 2, "log_interval": None, **kwargs}
    learner = MetaLearner(mlp(), losses.mse)
    with pytest.raises(ValueError, match=message):
        learner.fit(SinusoidTasks(5, 5), meta_batch_size=2, **kwargs)
    assert int(learner.optimizer.iterations) == 0


def _tiny_machine_counting_tasks(monkeypatch):
    """A machine of 10 KB (standing for a real one) and a sinusoid source that records the
    size of every batch sampled from it: ``.source(K, Q)`` makes one, ``.sizes`` lists them."""
    from tf_maml import threads

    monkeypatch.setattr(threads, "physical_memory", lambda: 10_000)
    sampled = types.SimpleNamespace(sizes=[])

    class Counted(SinusoidTasks):
        def sample_batch(self, n, rng):
            sampled.sizes.append(n)
            return super().sample_batch(n, rng)

    sampled.source = Counted
    return sampled


def test_fit_refuses_a_meta_batch_larger_than_memory_before_sampling_it(tmp_path,
                                                                       monkeypatch):
    # The command line refused it (runner._check_memory); fit sampled the meta-batch until
    # the system killed the process, without a word. A machine of 10 KB stands for a real
    # one: 100 tasks x 20 examples x (x, y) in float32 are 16000 bytes.
    sampled = _tiny_machine_counting_tasks(monkeypatch)
    learner = MetaLearner(mlp(), losses.mse)
    with pytest.raises(ValueError, match=r"^meta_batch_size=100: a meta-batch of 100 tasks "
                       r"would take at least 0\.0 GB of memory, more than this machine's 0\.0 "
                       r"GB: the system would kill the process without a word; give a smaller "
                       r"meta_batch_size \(or smaller tasks\)$"):
        learner.fit(sampled.source(10, 10), iterations=2, meta_batch_size=100,
                    run_dir=str(tmp_path / "run"), log_interval=None)
    assert sampled.sizes == [1] and not (tmp_path / "run").exists()
    assert int(learner.optimizer.iterations) == 0
    learner.fit(sampled.source(10, 10), iterations=1, meta_batch_size=62,  # 9920 B
                log_interval=None)
    assert int(learner.optimizer.iterations) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_support=2.5), r"^num_support must be a whole number of examples >= 1, got 2\.5$"),
    (dict(num_query="5"), r"^num_query must be a whole number of examples >= 1, got '5'$"),
    (dict(num_support=0), r"^num_support must be a whole number of examples >= 1, got 0$"),
], ids=["fractional", "string", "zero"])
def test_bad_sinusoid_task_sizes_are_named(kwargs, message):
    # 2.5 support points drew 2 without a word; "5" failed in a comparison of str and int.
    with pytest.raises(ValueError, match=message):
        SinusoidTasks(**{"num_support": 5, "num_query": 5, **kwargs})


@pytest.mark.parametrize("threads", [-5, 2.5, "4"])
def test_bad_intra_op_threads_of_the_api_are_named(threads):
    # -5 set nothing and was returned as if set; 2.5 and "4" failed inside TensorFlow.
    from tf_maml.threads import configure_threads

    with pytest.raises(ValueError, match=r"^intra_op_threads must be -1 \(auto\), 0 "
                       r"\(TensorFlow's default\) or a whole number of threads, got "
                       rf"{re.escape(repr(threads))}$"):
        configure_threads(threads)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_tasks=0), r"^num_tasks must be a whole number of tasks >= 1, got 0$"),
    (dict(num_tasks=2.5), r"^num_tasks must be a whole number of tasks >= 1, got 2\.5$"),
    (dict(batch_size=0), r"^batch_size must be a whole number of tasks >= 1, got 0$"),
], ids=["no-tasks", "fractional-tasks", "empty-batches"])
def test_bad_evaluation_sizes_are_named(learner, kwargs, message):
    # 0 tasks returned {} (nothing to summarize, said later as a KeyError), 2.5 was a
    # TypeError from range(), a batch of 0 "range() arg 3 must not be zero".
    kwargs = {"num_tasks": 4, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate_lib.evaluate(learner, SinusoidTasks(5, 5), num_steps=1, seed=0, **kwargs)


@pytest.mark.parametrize("method", ["predict", "adapt"])
def test_examples_of_another_shape_are_named_in_one_line(learner, method):
    # Was Keras' error of several lines from inside the model's call ("Input 0 ... is
    # incompatible with the layer: expected axis -1 of input shape to have value 1").
    x = np.zeros((3, 2), np.float32)
    name = "x" if method == "predict" else "support_x"
    with pytest.raises(ValueError, match=rf"^{method}: {name} has shape \(3, 2\), i\.e\. "
                       r"examples of shape \(2,\), but the model takes examples of shape "
                       r"\(1\); expected \[examples, 1\]$"):
        learner.predict(x) if method == "predict" else learner.adapt(x, np.zeros((3, 1)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(task_parallelism="accumulate", tasks_per_chunk=2.5),
     r"^tasks_per_chunk needs task_parallelism='accumulate' \(or 'auto'\) and a positive "
     r"whole number, got 2\.5$"),
    (dict(parallel_chunks="2"), r"^parallel_chunks must be a positive whole number \(or None: "
                                r"one per CPU core\), got '2'$"),
    (dict(batched_patch_budget=-1), r"^batched_patch_budget must be a whole number of bytes "
                                    r">= 1, got -1$"),
    (dict(autotune="no"), r"^autotune must be True or False, got 'no'$"),
], ids=["fractional-chunk", "string-chunks", "negative-budget", "string-autotune"])
def test_bad_execution_plan_values_are_named(kwargs, message):
    # 2.5 tasks per chunk ran 2, a budget of -1 sent every task down the slow path, and
    # autotune="no" autotuned (a non-empty string is true).
    with pytest.raises(ValueError, match=message):
        ExecutionPlan(**kwargs)


@pytest.mark.parametrize("shots", [2.5, "5", 0])
def test_bad_shots_of_the_summed_cross_entropy_are_named(shots):
    # 2.5 divided the loss by 2.5; "5" failed in a comparison of str and int.
    with pytest.raises(ValueError, match=rf"^shots must be a whole number of examples per "
                       rf"class \(K\) >= 1, got {re.escape(repr(shots))}$"):
        losses.summed_xent(shots)


def test_adapt_on_an_empty_support_set_is_refused(learner):
    # The loss of no example had no gradient: θ came back as the "adapted" weights.
    with pytest.raises(ValueError, match=r"^adapt: support_x holds no examples; adapting "
                       r"needs at least one labelled example of the task$"):
        learner.adapt(np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32))


@pytest.mark.parametrize("tasks", [None, 3], ids=["none", "number"])
def test_fit_on_something_that_is_no_task_source_says_what_it_takes(tmp_path, tasks):
    # A TypeError "... is not iterable" from deep inside the loop, after the run directory
    # was locked.
    learner = MetaLearner(mlp(), losses.mse)
    with pytest.raises(ValueError, match=r"^fit takes a task source \(an object with "
                       r"sample_batch\(meta_batch_size, rng\), e\.g\. tf_maml\.SinusoidTasks\) "
                       rf"or a tf\.data\.Dataset / iterable of batches .*got {tasks}$"):
        learner.fit(tasks, iterations=2, run_dir=str(tmp_path / "run"), log_interval=None)
    assert not (tmp_path / "run").exists()


def test_a_dataset_that_runs_out_says_so_and_keeps_the_training(tmp_path):
    # It used to end fit with a bare StopIteration, and the iterations since the last
    # checkpoint were lost.
    run_dir = tmp_path / "run"
    dataset = tf.data.Dataset.from_tensors(sine_batch()).repeat(2)
    with pytest.raises(ValueError, match=r"^the batches ran out after iteration 2 of 5 "
                       r"\(training up to it is kept\): give one batch per iteration, e\.g\. a "
                       r"tf\.data\.Dataset with \.repeat\(\), or fewer iterations$"):
        MetaLearner(mlp(), losses.mse).fit(dataset, iterations=5, run_dir=str(run_dir),
                                           log_interval=None, log=lambda s: None)
    assert (run_dir / "model-2.index").exists()


@pytest.mark.parametrize("args, message", [
    ((0, -1), r"^index must be a whole number of meta-batches >= 0, got -1$"),
    ((0, 2.5), r"^index must be a whole number of meta-batches >= 0, got 2\.5$"),
    ((-3, 0), r"^seed must be a whole number >= 0, got -3$"),
    ((0, 0, -1), r"^stream must be a whole number >= 0, got -1$"),
], ids=["negative-index", "fractional-index", "negative-seed", "negative-stream"])
def test_bad_batch_rng_arguments_are_named(args, message):
    # numpy's "expected non-negative integer" named no argument, and 2.5 was taken as 2.
    from tf_maml.tasks import batch_rng

    with pytest.raises(ValueError, match=message):
        batch_rng(*args)


@pytest.mark.parametrize("size", [-1, 0, 2.5, "4"])
def test_bad_meta_batch_sizes_of_the_sinusoid_source_are_named(size):
    # -1 was numpy's "negative dimensions are not allowed", 0 an empty meta-batch returned
    # without a word, 2.5 numpy's TypeError about a float in a shape.
    with pytest.raises(ValueError, match=r"^meta_batch_size must be a whole number of tasks "
                       rf">= 1, got {re.escape(repr(size))}$"):
        SinusoidTasks(5, 5).sample_batch(size, np.random.default_rng(0))


class TaskQueue:
    """A task source with its own state, which ignores the generator it is given (a queue,
    a file of tasks read in order): task i is 5 points of x = i, y = 0."""

    def __init__(self):
        self.drawn, self.seeds = 0, []

    def sample_batch(self, meta_batch_size, rng):
        self.seeds.append(rng.bit_generator.seed_seq.entropy)
        first, self.drawn = self.drawn, self.drawn + meta_batch_size
        x = np.repeat(np.arange(first, self.drawn, dtype=np.float32), 5).reshape(-1, 5, 1)
        return x, np.zeros_like(x), x, np.zeros_like(x)


def test_fit_trains_on_every_task_a_source_with_its_own_state_gives(monkeypatch):
    # fit's memory check drew a task of its own from the source before training: a source
    # that ignores the generator lost it (the training began at task 1). A source that
    # follows the generator gives its tasks again and trains as before.
    learner = MetaLearner(mlp(), losses.mse)
    trained, train_step = [], learner.train_step

    def recorded(batch, **kwargs):
        trained.append(np.asarray(batch[0])[:, 0, 0].tolist())
        return train_step(batch, **kwargs)

    monkeypatch.setattr(learner, "train_step", recorded)
    learner.fit(TaskQueue(), iterations=2, meta_batch_size=2, log_interval=None)
    assert trained == [[0, 1], [2, 3]]
    # Nor are autotune's: it times the plans on a meta-batch of its own (from 1000
    # iterations on; from 1 here), which the training then trains on first.
    from tf_maml import autotune

    monkeypatch.setattr(autotune, "MIN_ITERATIONS", 1)
    trained.clear()
    queue = TaskQueue()
    learner.fit(queue, iterations=4, meta_batch_size=3, log_interval=None)
    assert [0, 0, autotune.AUTOTUNE_STREAM] in queue.seeds  # it drew its meta-batch
    assert trained == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_adapt_continues_from_weights_given_as_numpy_arrays(learner):
    # adapt(weights=[numpy arrays]) (fast weights saved with .numpy(), model.get_weights())
    # failed in TensorFlow's tape: "Passed in object [[...]] of type 'ndarray', not
    # tf.Tensor"; predict took them. Two steps from θ are one step from one step's weights.
    support_x, support_y = (part[0] for part in sine_batch(1)[:2])
    one = learner.adapt(support_x, support_y, num_steps=1)
    two = learner.adapt(support_x, support_y, num_steps=2)
    again = learner.adapt(support_x, support_y, num_steps=1,
                          weights=[w.numpy().astype(np.float64) for w in one])
    for expected, got in zip(two, again):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["predict", "adapt"])
@pytest.mark.parametrize("weights, message", [
    (lambda fw: fw[:2], r" must be the 4 weights adapt returns \(one per "
                        r"model\.trainable_variables\), got 2"),
    (lambda fw: {"w": fw}, r" must be the 4 weights adapt returns \(one per "
                           r"model\.trainable_variables\), got a dict"),
    (lambda fw: fw[::-1], r"\[0\] has shape \(1,\), but the model's weight "
                          r"dense1/kernel has shape \(1, 8\): give the weights "
                          r"adapt returned for this model"),
], ids=["too-few", "dict", "reversed"])
def test_fast_weights_of_another_model_are_named(learner, method, weights, message):
    # A count was "forward needs 4 trainable and 0 non-trainable tensors, got 2" (a dict
    # counted as 1), and shapes of another model Keras' StatelessScope error of many lines.
    support_x, support_y, query_x, _ = (part[0] for part in sine_batch(1))
    given = weights(learner.adapt(support_x, support_y))
    name = "fast_weights" if method == "predict" else "weights"
    with pytest.raises(ValueError, match=rf"^{method}: {name}{message}$"):
        if method == "predict":
            learner.predict(query_x, given)
        else:
            learner.adapt(support_x, support_y, weights=given)


@pytest.mark.parametrize("training", ["False", 0.0, None])
def test_predict_takes_only_true_or_false_for_training(learner, training):
    # training="False" (as read from a config or a command line) is a non-empty string,
    # and ran the model in training mode without a word.
    with pytest.raises(ValueError, match=rf"^predict: training must be True or False, got "
                                         rf"{re.escape(repr(training))}$"):
        learner.predict(np.zeros((3, 1), np.float32), training=training)


@pytest.mark.parametrize("support, message", [
    ((None, np.zeros((3, 1), np.float32)), r"^adapt: support_x is None: give an array or tensor$"),
    ((np.zeros((3, 1), np.float32), None), r"^adapt: support_y is None: give an array or tensor$"),
    ((np.zeros((2, 1), np.float32), np.array([["cat"], ["dog"]])),
     r"^adapt: support_y holds strings, which no loss or model takes: give numbers "),
    (([[1.0], [2.0, 3.0]], np.zeros((2, 1), np.float32)),
     r"^adapt: support_x is no array of one shape \(.*\): give an array or tensor"),
], ids=["no-x", "no-y", "strings", "ragged"])
def test_a_support_set_that_is_no_array_is_named(learner, support, message):
    # TensorFlow's "Attempt to convert a value (None)", "non-rectangular Python sequence" or
    # a failed string cast in a graph named neither the argument nor the fix.
    with pytest.raises(ValueError, match=message):
        learner.adapt(*support)
    with pytest.raises(ValueError, match=r"^predict: x is None: give an array or tensor$"):
        learner.predict(None)


@pytest.mark.parametrize("size, message", [
    (float("nan"), r"the inner learning rate must be a finite number, got nan"),
    (-0.1, r"the inner learning rate α must be >= 0 \(a step size; 0 leaves the weights "
           r"unchanged\), got -0\.1"),
], ids=["nan", "negative"])
def test_bad_rl_evaluation_step_sizes_are_named(size, message):
    # A NaN was TensorFlow's MatrixSolve error of a graph; a negative step size stepped
    # down the return without a word (the learner's own α refuses both, and so does
    # python -m tf_maml.rl.run's --step_sizes).
    from tf_maml.rl import training as rl_training

    learner = rl_training.build_learner(num_trajectories=2, horizon=5)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=rf"^evaluate: step_sizes\[1\]: {message}$"):
        learner.evaluate(learner.env.sample_tasks(1, rng), 2, rng, step_sizes=[0.1, size])


def test_evaluate_refuses_more_tasks_than_memory_before_sampling_them(learner, monkeypatch):
    # evaluate samples its tasks all at once (the set does not depend on the batching): a
    # num_tasks beyond the machine's memory sampled until the system killed the process,
    # without a word (fit and the command line refuse theirs). A machine of 10 KB stands
    # for a real one: 100 tasks x 20 points x (x, y) in float32 are 16000 bytes.
    sampled = _tiny_machine_counting_tasks(monkeypatch)
    with pytest.raises(ValueError, match=r"^num_tasks=100: 100 tasks, sampled at once, would "
                       r"take at least 0\.0 GB of memory, more than this machine's 0\.0 GB: "
                       r"the system would kill the process without a word; give fewer "
                       r"num_tasks$"):
        evaluate_lib.evaluate(learner, sampled.source(10, 10), 100, num_steps=1, seed=0)
    assert sampled.sizes == [1]
    out = evaluate_lib.evaluate(learner, SinusoidTasks(10, 10), 60, num_steps=1, seed=0)
    assert out["loss"].shape == (60, 2)  # 9600 bytes


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_bad_ensemble_sizes_are_named(learner, tmp_path, size):
    # 0 chose no member ("Ensemble of 0", then a TypeError of None / 0 in evaluate), -1 all
    # but the worst, 2.5 a TypeError of a slice; said before any checkpoint is read.
    from tf_maml import ensemble

    learner_checkpointer(learner, str(tmp_path)).save(20)
    with pytest.raises(ValueError, match=r"^size must be a whole number of checkpoints >= 1, "
                                         rf"got {re.escape(repr(size))}$"):
        ensemble.select(learner, str(tmp_path), SinusoidTasks(5, 5), size=size, num_tasks=2,
                        num_steps=1)


def test_an_ensemble_of_no_member_is_named(learner, tmp_path):
    # evaluate(members=[]) failed in a TypeError of None / 0 after sampling the tasks.
    from tf_maml import ensemble

    with pytest.raises(ValueError, match=r"^members must name at least one checkpoint "
                                         r"\(iterations, as ensemble\.select returns them\), "
                                         r"got \[\]$"):
        ensemble.evaluate(learner, str(tmp_path), [], SinusoidTasks(5, 5), 2, 1, seed=0)


@pytest.mark.parametrize("make, name", [
    (lambda: SinusoidTasks(5, 5, oracle="False"), "oracle"),
    (lambda: __import__("tf_maml.tasks.navigation", fromlist=["x"]).NavigationTasks(
        oracle="False"), "oracle"),
    (lambda: __import__("tf_maml.rl.training", fromlist=["x"]).build_learner(
        num_trajectories=2, horizon=5, first_order="False"), "first_order"),
    (lambda: options.LSLR(0.1, per_parameter="no"), "per_parameter"),
], ids=["sinusoid-oracle", "navigation-oracle", "rl-first-order", "lslr-per-parameter"])
def test_a_switch_that_is_not_true_or_false_is_named(make, name):
    # bool("False") is True: the oracle's inputs were appended, RL meta-trained first order
    # and LSLR learned a rate per element, without a word.
    with pytest.raises(ValueError, match=rf"^{name} must be True or False, got '"):
        make()


@pytest.mark.parametrize("kwargs, message", [
    (dict(predictions="no"), r"^predictions must be True or False, got 'no'$"),
    (dict(progress="bar"), r"^progress must be None or a function of \(done, total\), got "
                           r"'bar'$"),
], ids=["string-predictions", "string-progress"])
def test_bad_evaluation_switches_are_named_before_evaluating(learner, kwargs, message):
    # predictions="no" returned the predictions (a non-empty string is true); a progress
    # that is no function failed with "'str' object is not callable" after the first batch.
    with pytest.raises(ValueError, match=message):
        evaluate_lib.evaluate(learner, SinusoidTasks(5, 5), 4, num_steps=1, seed=0,
                              batch_size=2, **kwargs)
