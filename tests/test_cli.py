"""The command line, run directories, result files, resume and flag validation."""

import csv
import dataclasses
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from tf_maml import runner
from tf_maml import train as train_lib
from tf_maml.checkpoint import CheckpointError
from tf_maml.config import Config, ConfigError
from tf_maml.train import NonFiniteError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sine_config(tmp_path, **overrides):
    base = dict(datasource="sinusoid", logdir=str(tmp_path), metatrain_iterations=60, norm="None",
                update_batch_size=5, update_lr=0.01, meta_batch_size=4, num_test_tasks=30,
                test_num_updates=3, log=False)
    base.update(overrides)
    return Config(**base).validate()


@pytest.fixture
def fast_intervals(monkeypatch):
    monkeypatch.setattr(train_lib, "SAVE_INTERVAL", 20)
    monkeypatch.setattr(train_lib, "SUMMARY_INTERVAL", 10)


def test_exp_string_names_runs_as_the_original():
    # The original's committed checkpoint lives in exactly this directory name.
    mini = Config(datasource="miniimagenet", meta_batch_size=4, update_batch_size=1,
                  update_lr=0.01, num_updates=5, num_filters=32, max_pool=True)
    assert mini.exp_string() == "cls_5.mbs_4.ubs_1.numstep5.updatelr0.01hidden32maxpoolbatchnorm"
    sine = Config(norm="None", update_batch_size=10)
    assert sine.exp_string() == "cls_5.mbs_25.ubs_10.numstep1.updatelr0.001nonorm"
    # Testing 5-shot with a 1-shot model finds the 1-shot run (train_update_batch_size).
    five_shot_eval = Config(datasource="omniglot", meta_batch_size=32, update_batch_size=5,
                            train_update_batch_size=1, update_lr=0.4, train=False)
    assert five_shot_eval.exp_string() == "cls_5.mbs_32.ubs_1.numstep1.updatelr0.4batchnorm"
    fo = Config(stop_grad=True, baseline="oracle", norm="layer_norm")
    assert fo.exp_string().endswith("stopgradoraclelayernorm")


def test_pretrained_baseline_gets_its_own_run_directory():
    maml = Config(norm="None", update_batch_size=10, metatrain_iterations=70000)
    pretrained = Config(norm="None", update_batch_size=10, pretrain_iterations=70000,
                        metatrain_iterations=0)
    assert maml.exp_string() != pretrained.exp_string()


@pytest.mark.parametrize("overrides, flag", [
    (dict(datasource="cifar"), "--datasource"),
    (dict(norm="group_norm"), "--norm"),
    (dict(meta_lr=-1.0), "--meta_lr"),
    (dict(update_lr=0.0), "--update_lr"),
    (dict(meta_batch_size=0), "--meta_batch_size"),
    (dict(num_test_tasks=0), "--num_test_tasks"),
    (dict(num_updates=0), "--num_updates"),
    (dict(datasource="omniglot", baseline="oracle", data_dir="x"), "--baseline"),
    (dict(datasource="omniglot"), "--data_dir"),
    (dict(datasource="omniglot", data_dir="x", num_classes=1), "--num_classes"),
    (dict(metatrain_iterations=0), "--metatrain_iterations"),
    (dict(datasource="miniimagenet", data_dir="x"), "--max_pool"),
    (dict(algorithm="reptile", stop_grad=True), "--stop_grad"),
    (dict(pretrain_iterations=-5), "--pretrain_iterations"),
    (dict(tasks_per_chunk=2), "--tasks_per_chunk"),  # needs --task_parallelism=accumulate
    (dict(task_parallelism="accumulate", tasks_per_chunk=-1), "--tasks_per_chunk"),
])
def test_impossible_flags_are_rejected_naming_the_flag(overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        Config(**overrides).validate()


@pytest.mark.parametrize("field, typo, meant", [
    ("datasource", "omniglott", "omniglot"),
    ("datasource", "navigaton", "navigation"),
    ("datasource", "minimagenet", "miniimagenet"),
    ("norm", "batchnorm", "batch_norm"),  # the run directory's spelling
    ("norm", "none", "None"),
    ("sample_budget", "step", "steps"),
])
def test_a_misspelt_choice_is_told_the_closest_one(field, typo, meant):
    # Was the list of choices alone, as flag names and tf-maml-reproduce's rows are not.
    with pytest.raises(ConfigError, match=rf"^--{field}: '{typo}' is not one of .*"
                                          rf"\(did you mean {meant}\?\)$"):
        Config(**{field: typo}).validate()


@pytest.mark.parametrize("datasource, flag, value, message", [
    ("navigation", "meta_lr", 0.01, "TRPO's step is bounded by --max_kl; drop --meta_lr=0.01"),
    ("cheetah_vel", "min_meta_lr", 0.0, "TRPO's step is bounded by --max_kl"),
    ("navigation", "num_classes", 20, "the task family sets the policy's actions"),
    ("navigation", "num_filters", 32, "the policy is the paper's MLP"),
    ("ant_dir", "conv", False, "the policy is the paper's MLP"),
    ("navigation", "max_pool", True, "the policy is the paper's MLP"),
    ("navigation", "norm", "layer_norm", "without normalisation; use --norm=None, as the RL "
                                         "flagfiles do"),
    ("navigation", "adapt_norm", True, "without normalisation to adapt"),
    ("navigation", "data_dir", "data/omniglot", "not read from files; drop "
                                                "--data_dir=data/omniglot"),
    ("navigation", "dataset_backend", "tfds", "sampled from the environment"),
    ("navigation", "test_set", True, "always adapts the fixed test tasks"),
    ("navigation", "task_parallelism", "map", "a speed setting of supervised meta-training"),
    ("navigation", "parallel_chunks", 2, "as one batch"),
    ("navigation", "intra_op_threads", 1, "on TensorFlow's default threads"),
    ("navigation", "autotune", False, "as one batch"),
    ("cheetah_dir", "nan_policy", "skip", "always rejects a non-finite step, as rllab's line "
                                          "search does"),
])
def test_a_supervised_flag_set_for_reinforcement_learning_is_refused(datasource, flag, value,
                                                                     message):
    # Each was ignored without a word (or, for some, only renamed the run directory).
    with pytest.raises(ConfigError, match=rf"^--{flag}: has no effect with "
                                          rf"--datasource={datasource}: .*{re.escape(message)}"):
        Config(**{"datasource": datasource, "norm": "None", flag: value}).validate()


@pytest.mark.parametrize("datasource", ["navigation", "cheetah_vel", "cheetah_dir", "ant_vel",
                                        "ant_dir"])
def test_reinforcement_learning_accepts_the_supervised_flags_defaults(datasource):
    Config(datasource=datasource).validate()  # --norm=batch_norm, the original's default
    Config(datasource=datasource, norm="None").validate()


def parsed_flags(*args):
    """The tf-maml flags parsed from ``args``, as the command line parses them."""
    from tf_maml import main

    values = main.flags.FlagValues()
    main.define_flags(values)
    values(["tf-maml", *args])
    return values


@pytest.mark.parametrize("flag, default", [("meta_lr", "0.001"), ("num_classes", "5"),
                                           ("autotune", "True"), ("test_set", "False"),
                                           ("norm", "batch_norm"), ("nan_policy", "stop")])
def test_a_supervised_flag_given_at_its_default_for_reinforcement_learning_is_refused(
        flag, default, tmp_path):
    # Was accepted and ignored: only a value away from the default was refused, so writing
    # the default out (a copied command, a flagfile) still read as if it acted.
    from tf_maml import main

    flagfile = tmp_path / "rl.flags"
    flagfile.write_text(f"--datasource=navigation\n--{flag}={default}\n")
    for args in ([f"--flagfile={flagfile}"], ["--datasource=navigation", f"--{flag}={default}"]):
        with pytest.raises(ConfigError, match=rf"^--{flag}: has no effect with "
                                              r"--datasource=navigation: "):
            main.checked_config(parsed_flags(*args))
    # Not given, or supervised: accepted.
    assert main.checked_config(parsed_flags("--datasource=navigation")).is_rl
    assert not main.checked_config(parsed_flags(f"--{flag}={default}")).is_rl


@pytest.mark.parametrize("flag, value, fix", [
    ("data_dir", "data/omniglot", "add --datasource=omniglot or miniimagenet to train on that "
                                  "data"),
    ("dataset_backend", "tfds", "drop --dataset_backend"),
    ("test_set", True, "drop --test_set"),
])
def test_a_data_flag_with_the_sinusoid_is_refused(flag, value, fix):
    # Was ignored: --data_dir=data/omniglot without --datasource trained a sinusoid (the
    # default datasource); --test_set=True evaluated the same sine tasks as ever.
    with pytest.raises(ConfigError, match=rf"^--{flag}: --datasource=sinusoid reads no data: "
                                          rf".*; {re.escape(fix)}"):
        Config(**{flag: value}).validate()


@pytest.mark.parametrize("flag, value, default", [("max_kl", "0.05", "0.01"),
                                                  ("discount", "0.9", "0.99")])
def test_a_reinforcement_learning_flag_with_supervised_data_is_refused(flag, value, default):
    # Was ignored: supervised meta-learning takes Adam steps on losses.
    from tf_maml import main

    for given in (value, default):
        with pytest.raises(ConfigError, match=rf"^--{flag}: has no effect with "
                                              rf"--datasource=sinusoid: .*; drop --{flag}="):
            main.checked_config(parsed_flags(f"--{flag}={given}"))
    assert main.checked_config(parsed_flags("--datasource=navigation", f"--{flag}={value}"))


@pytest.mark.parametrize("flag", ["logdir", "data_dir", "init_checkpoint", "export_dir"])
def test_an_empty_path_flag_is_refused(flag):
    # Was read as unset: --init_checkpoint=$CKPT with CKPT unset trained from scratch,
    # --export_dir= exported nothing, --logdir= wrote the run into the current folder.
    from tf_maml import main

    with pytest.raises(ConfigError, match=rf"^--{flag}: is empty \(an unset shell variable, "
                                          rf"as in --{flag}=\$X\?\): give the path"):
        main.checked_config(parsed_flags("--datasource=omniglot", "--data_dir=data/omniglot",
                                         f"--{flag}="))


def test_min_meta_lr_given_at_its_default_without_the_cosine_is_refused():
    # Was ignored: only a value away from the default (1e-5) was refused, so a forgotten
    # --cosine_meta_lr left the meta learning rate constant without a word.
    from tf_maml import main

    with pytest.raises(ConfigError, match=r"^--min_meta_lr: is where --cosine_meta_lr "
                                          r"anneals .* add --cosine_meta_lr or drop"):
        main.checked_config(parsed_flags("--min_meta_lr=1e-5"))
    assert main.checked_config(parsed_flags("--min_meta_lr=1e-5", "--cosine_meta_lr"))


@pytest.mark.parametrize("flag, used, value", [
    ("train_update_batch_size", "update_batch_size", 1),
    ("train_update_lr", "update_lr", 0.4),
])
def test_a_train_setting_that_names_another_run_is_refused_when_training(flag, used, value):
    # Was accepted: --update_batch_size=5 --train_update_batch_size=1 trained K=5 into the
    # directory of K=1 (ubs_1), which a 1-shot evaluation then took for a 1-shot model.
    config = Config(update_batch_size=5, update_lr=0.01, **{flag: value})
    with pytest.raises(ConfigError, match=rf"^--{flag}: names the --{used} a run was trained "
                                          rf"with, .*drop --{flag}, or add --train=False$"):
        config.validate()
    dataclasses.replace(config, train=False).validate()  # evaluating that run: its purpose
    Config(update_batch_size=5, train_update_batch_size=5).validate()  # the same: harmless


@pytest.mark.parametrize("datasource", ["sinusoid", "navigation"])
def test_test_iter_with_training_is_refused(datasource):
    # Was ignored: the evaluation after training took the last checkpoint, and recorded
    # test_iter=20 in its test_config.json beside that checkpoint's numbers.
    config = Config(datasource=datasource, norm="None", test_iter=20)
    with pytest.raises(ConfigError, match=r"^--test_iter: picks the checkpoint model-20 that "
                                          r".*add --train=False to evaluate model-20, or drop "
                                          r"--test_iter$"):
        config.validate()
    dataclasses.replace(config, train=False).validate()


@pytest.mark.parametrize("overrides, fix", [
    (dict(adapt_layers="head"), "drop --adapt_norm"),
    (dict(norm="None"), "drop --adapt_norm, or give --norm=batch_norm or layer_norm"),
])
def test_adapt_norm_with_nothing_to_adapt_is_refused(overrides, fix):
    # Was ignored (ANIL adapts the head alone; no norm has no offsets), yet named the run
    # directory .adaptnorm, as if the inner loop adapted normalisation.
    with pytest.raises(ConfigError, match=rf"^--adapt_norm: .*{re.escape(fix)}$"):
        Config(adapt_norm=True, **overrides).validate()
    Config(adapt_norm=True, norm="layer_norm").validate()


@pytest.mark.parametrize("overrides, flag, what", [
    (dict(baseline="oracle", algorithm="reptile"), "algorithm",
     "--baseline=oracle pretrains on every iteration"),
    (dict(baseline="oracle", stop_grad=True), "stop_grad",
     "--baseline=oracle pretrains on every iteration"),
    (dict(pretrain_iterations=100, metatrain_iterations=0, algorithm="reptile"), "algorithm",
     "--metatrain_iterations=0 only pretrains"),
    (dict(pretrain_iterations=100, metatrain_iterations=0, first_order_iterations=50),
     "first_order_iterations", "--metatrain_iterations=0 only pretrains"),
])
def test_a_meta_gradient_option_of_a_run_without_meta_training_is_refused(overrides, flag,
                                                                         what):
    # Was ignored (every iteration a regression on the training tasks), yet named the run
    # directory .reptile or .fo, as if it had meta-trained so.
    with pytest.raises(ConfigError, match=rf"^--{flag}: {re.escape(what)}, with no "):
        Config(**overrides).validate()
    Config(baseline="oracle").validate()  # the oracle and pretrained baselines themselves
    Config(pretrain_iterations=100, metatrain_iterations=0).validate()
    Config(baseline="oracle", algorithm="reptile", train=False).validate()  # names a run


def test_every_reinforcement_learning_flagfile_still_validates():
    from tf_maml import main

    names = [n for n in sorted(os.listdir(os.path.join(REPO, "flags")))
             if n.split("_")[0] in ("navigation", "cheetah", "ant")]
    assert len(names) == 20
    for name in names:
        values = parsed_flags(f"--flagfile={os.path.join(REPO, 'flags', name)}")
        config = main.checked_config(values)  # as tf-maml checks it: with the flags given
        assert config.is_rl, name


@pytest.mark.parametrize("datasource", ["navigation", "sinusoid"])
def test_deterministic_reaches_tensorflow_for_every_datasource(datasource, tmp_path,
                                                              monkeypatch):
    """--deterministic turns on TensorFlow's deterministic ops before training, for
    reinforcement learning too (its branch returned before the switch and ignored it)."""
    import tensorflow as tf

    switched = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism",
                        lambda: switched.append(True))
    reached = lambda *args, **kwargs: {"deterministic": bool(switched)}  # noqa: E731
    monkeypatch.setattr(runner, "_run_rl", reached)
    monkeypatch.setattr(runner, "_run", reached)
    config = Config(datasource=datasource, norm="None", deterministic=True,
                    logdir=str(tmp_path)).validate()
    assert runner.run(config, log=lambda line: None) == {"deterministic": True}


def test_speed_flags_make_the_learners_execution_plan():
    from tf_maml import experiment, main

    values = main.flags.FlagValues()
    main.define_flags(values)
    values(["tf-maml", "--task_parallelism=accumulate", "--tasks_per_chunk=2",
            "--parallel_chunks=1", "--meta_batch_size=4"])
    plan = experiment.execution_plan(main.config_from_flags(values).validate())
    assert (plan.task_parallelism, plan.tasks_per_chunk, plan.parallel_chunks) == (
        "accumulate", 2, 1)
    default = experiment.execution_plan(Config())  # 0: automatic
    assert (default.task_parallelism, default.tasks_per_chunk, default.parallel_chunks,
            default.autotune) == ("auto", None, None, True)
    values = main.flags.FlagValues()
    main.define_flags(values)
    values(["tf-maml", "--autotune=False"])
    assert not experiment.execution_plan(main.config_from_flags(values)).autotune


def test_cli_reports_bad_flag_in_one_line_and_exits_nonzero(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tf_maml.main", "--datasource=sinusoid", "--meta_lr=-0.1",
         f"--logdir={tmp_path}"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "tf-maml: error: --meta_lr: must be a positive finite number" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_training_writes_original_result_files(tmp_path, fast_intervals):
    config = sine_config(tmp_path)
    out = runner.run(config, log=lambda s: None)
    run_dir = tmp_path / config.exp_string()
    assert out["run_dir"] == str(run_dir)
    name = "test_ubs5_stepsize0.01"
    values = np.load(run_dir / f"{name}.npy")
    assert values.shape == (30, 4)
    with open(run_dir / f"{name}.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["update0", "update1", "update2", "update3"]
    table = np.array(rows[1:], dtype=float)
    np.testing.assert_allclose(table[0], values.mean(0), rtol=1e-6)
    np.testing.assert_allclose(table[1], np.sqrt(((values - values.mean(0)) ** 2).mean(0)),
                               rtol=1e-5)
    np.testing.assert_allclose(table[2], 1.96 * table[1] / np.sqrt(30), rtol=1e-6)
    with open(run_dir / f"{name}.pkl", "rb") as f:
        np.testing.assert_array_equal(pickle.load(f)["mses"], values)
    # Checkpoints every SAVE_INTERVAL plus the last iteration.
    assert (run_dir / "model-60.index").exists() and (run_dir / "model-20.index").exists()
    assert (run_dir / "config.json").exists()


def test_evaluation_only_restores_the_trained_run(tmp_path, fast_intervals):
    config = sine_config(tmp_path, test_after_train=False)
    runner.run(config, log=lambda s: None)
    logs = []
    out = runner.run(sine_config(tmp_path, train=False), log=logs.append)
    assert any("Restored" in line and "model-60" in line for line in logs)
    assert out["values"].shape == (30, 4)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        runner.run(sine_config(tmp_path / "empty", train=False), log=lambda s: None)


def weights_of(run_dir, iteration):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(run_dir, f"model-{iteration}"))
    # Model weights are stored under the optimizer's tracked variables; compare everything
    # (weights, Adam moments, iteration counters) but the save counter.
    names = sorted(n for n in reader.get_variable_to_shape_map()
                   if n.endswith("VARIABLE_VALUE") and not n.startswith("save_counter"))
    return {n: reader.get_tensor(n) for n in names}


def test_resume_continues_exactly_with_saved_optimizer_state(tmp_path, fast_intervals):
    straight = sine_config(tmp_path / "a", metatrain_iterations=80, test_after_train=False)
    runner.run(straight, log=lambda s: None)
    first = sine_config(tmp_path / "b", metatrain_iterations=50, test_after_train=False)
    runner.run(first, log=lambda s: None)
    logs = []
    resumed = sine_config(tmp_path / "b", metatrain_iterations=80, test_after_train=False)
    runner.run(resumed, log=logs.append)
    assert any("Resumed" in line and "iteration 50" in line for line in logs)
    a = weights_of(tmp_path / "a" / straight.exp_string(), 80)
    b = weights_of(tmp_path / "b" / straight.exp_string(), 80)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resume_false_never_overwrites_a_run(tmp_path, fast_intervals):
    config = sine_config(tmp_path, test_after_train=False)
    runner.run(config, log=lambda s: None)
    run_dir = tmp_path / config.exp_string()
    before = sorted(os.listdir(run_dir))
    with pytest.raises(CheckpointError, match="`resume=True`"):
        runner.run(sine_config(tmp_path, resume=False), log=lambda s: None)
    assert sorted(os.listdir(run_dir)) == before


class ExplodingTasks:
    """Sinusoid tasks whose targets become NaN from batch ``bad_from`` on."""

    def __init__(self, inner, bad_from):
        self.inner, self.bad_from, self.count = inner, bad_from, 0

    def sample_batch(self, meta_batch_size, rng):
        sx, sy, qx, qy = self.inner.sample_batch(meta_batch_size, rng)
        self.count += 1
        if self.count > self.bad_from:
            qy = qy * np.nan
        return sx, sy, qx, qy


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path, fast_intervals):
    from tf_maml import experiment, rundir
    from tf_maml.train import train

    config = sine_config(tmp_path, metatrain_iterations=100)
    learner = experiment.build_learner(config)
    source = ExplodingTasks(experiment.task_source(config, "train"), bad_from=45)
    run_dir = str(tmp_path / "run")
    with pytest.raises(NonFiniteError, match=r"iteration 46\b.*model-40"):
        with rundir.lock(run_dir):  # as the command line holds it
            train(learner, source, config.total_iterations,
                  meta_batch_size=config.meta_batch_size, seed=config.seed, run_dir=run_dir,
                  nan_policy=config.nan_policy, tensorboard=config.log, log=lambda s: None)
    assert sorted(p for p in os.listdir(run_dir) if p.endswith(".index")) == [
        "model-20.index", "model-40.index"]
    weights = weights_of(run_dir, 40)
    assert all(np.isfinite(w).all() for w in weights.values())


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, fast_intervals):
    config = sine_config(tmp_path, metatrain_iterations=40, test_after_train=False)
    runner.run(config, log=lambda s: None)
    run_dir = tmp_path / config.exp_string()
    data = run_dir / "model-40.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:50])  # a crash in the middle of writing
    logs = []
    runner.run(sine_config(tmp_path, metatrain_iterations=60, test_after_train=False),
               log=logs.append)
    assert any("model-40 is corrupt or truncated" in line for line in logs)
    assert any("Resumed" in line and "iteration 20" in line for line in logs)
    assert (run_dir / "model-60.index").exists()


def test_anil_flag_gets_its_own_run_directory_and_is_validated(tmp_path):
    """--adapt_layers=head (ANIL) trains in a run directory of its own, from the command
    line, and is refused where it does not apply."""
    assert Config(adapt_layers="head").exp_string().endswith(".anil")
    with pytest.raises(ConfigError, match="--adapt_layers"):
        Config(adapt_layers="body").validate()
    with pytest.raises(ConfigError, match="--adapt_layers"):
        Config(datasource="navigation", adapt_layers="head").validate()
    out = subprocess.run(
        [sys.executable, "-m", "tf_maml.main", "--datasource=sinusoid", "--norm=None",
         f"--logdir={tmp_path}", "--metatrain_iterations=5", "--meta_batch_size=2",
         "--num_test_tasks=4", "--adapt_layers=head"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "cls_5.mbs_2.ubs_5.numstep1.updatelr0.001nonorm.anil"
    assert (run_dir / "test_ubs5_stepsize0.001.csv").exists()
