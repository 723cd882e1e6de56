"""Subprocess side of tests/test_distribute.py (a process can split its CPU into logical
devices, or join a multi-worker cluster, only before TensorFlow starts).

    python tests/distributed_helper.py mirrored OUT_DIR CLI_FLAGS...
        1. the CLI (tf_maml.main) with the given flags, which must include
           --distribution_strategy=mirrored --num_cpu_devices=2 (splits this process's CPU);
        2. meta-gradients applied by 2-replica train steps and single-replica ones on the
           same tasks, the NaN guard and the distributed task pipeline; arrays into
           OUT_DIR/mirrored.npz for the test to compare.
    python tests/distributed_helper.py worker OUT_DIR CLI_FLAGS...
        one worker of a multi-worker cluster (TF_CONFIG in the environment): tf_maml.runner
        runs the config of CLI_FLAGS, then the learner's variables (θ, Adam's state) and
        its log go to OUT_DIR/worker<index>.npz.

Nothing is asserted here: the test compares the arrays.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def variables(learner) -> dict[str, np.ndarray]:
    """θ, Meta-SGD's α and Adam's state by position (names differ between processes)."""
    out = {f"theta{i}": v.numpy() for i, v in enumerate(learner.model.trainable_variables)}
    out.update({f"opt{i}": np.asarray(v.numpy()) for i, v in
                enumerate(learner.optimizer.variables)})
    return out


def run_cli(flags: list[str]) -> int:
    from tf_maml import main as cli

    cli.FLAGS(["tf-maml", *flags])
    return cli.main(["tf-maml"])


# ---------------------------------------------------------------------- mirrored
def mirrored(out_dir: str, flags: list[str]) -> None:
    code = run_cli(flags)  # first: it splits the CPU before TensorFlow's first op
    import keras
    import tensorflow as tf

    from tf_maml import distribute, losses, options
    from tf_maml.api import MetaLearner
    from tf_maml.models import conv4, fc_net
    from tf_maml.tasks import batch_rng, task_stream
    from tf_maml.tasks.sinusoid import SinusoidTasks

    strategy = distribute.make_strategy("mirrored", num_cpu_devices=2)
    out: dict[str, np.ndarray] = {"cli_exit_code": np.array(code),
                                  "replicas": np.array(strategy.num_replicas_in_sync)}
    # float64, so that the only difference, the order of the float additions, is ~1e-15.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    rng = np.random.default_rng(0)
    sine = tuple(a.astype("float64") for a in SinusoidTasks(5, 5).sample_batch(6, rng))
    images = (rng.uniform(size=(4, 3, 8, 8, 1)), np.tile(np.arange(3, dtype="int32"), (4, 1)),
              rng.uniform(size=(4, 6, 8, 8, 1)), np.tile(np.arange(3, dtype="int32"), (4, 2)))

    def mlp():
        return fc_net((1,), (8, 8), 1, norm="None")

    def regularized_mlp():  # weight penalties: R(θ) must reach the meta-gradient once
        return keras.Sequential([
            keras.Input((1,)),
            keras.layers.Dense(8, activation="relu",
                               kernel_regularizer=keras.regularizers.L2(0.25)),
            keras.layers.Dense(1, bias_regularizer=keras.regularizers.L1(0.5))])

    def dropout_mlp():  # replica r's task t must draw the mask of task r·T + t of one device
        return keras.Sequential([keras.Input((1,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dropout(0.5), keras.layers.Dense(1)])

    def conv():  # the Omniglot net's shape (stride-2 convs, per-task batch norm), tiny
        return conv4((8, 8, 1), 3, num_filters=2, norm="batch_norm")

    cases = {  # name: (model, learner arguments, pretrain, batch)
        "maml": (mlp, dict(loss_fn=losses.mse, inner_lr=0.1, inner_steps=2), False, sine),
        "fomaml_metasgd": (mlp, dict(loss_fn=losses.mse, first_order=True,
                                     inner_lr=options.MetaSGD(0.1)), False, sine),
        "reptile": (mlp, dict(loss_fn=losses.mse, objective=options.Reptile(), inner_steps=3),
                    False, sine),
        "pretrain": (mlp, dict(loss_fn=losses.mse), True, sine),
        "maml_regularized": (regularized_mlp, dict(loss_fn=losses.mse, inner_lr=0.1,
                                                   inner_steps=2), False, sine),
        "maml_dropout": (dropout_mlp, dict(loss_fn=losses.mse, inner_lr=0.1, inner_steps=2),
                         False, sine),
        "conv_batch_norm": (conv, dict(loss_fn=losses.summed_xent(1), inner_lr=0.4,
                                       objective=options.LastStep(losses.accuracy)), False,
                            images),
    }
    learners = {}
    for name, (build, kwargs, pretrain, batch) in cases.items():
        keras.utils.set_random_seed(1)
        single = MetaLearner(build(), **kwargs)
        tensors = tuple(tf.constant(a) for a in batch)
        if isinstance(kwargs.get("objective"), options.Reptile):
            grads, metrics = single.reptile_gradients(tensors)
        else:
            grads, metrics = single.meta_gradients(tensors, pretrain=pretrain)
        with strategy.scope():
            keras.utils.set_random_seed(1)
            # SGD with step 1: θ_before − θ_after is the meta-gradient that was applied.
            dist = MetaLearner(build(), **kwargs, meta_optimizer=keras.optimizers.SGD(1.0))
        learners[name] = dist
        before = [v.numpy() for v in dist.meta_variables]
        train_out = dist.train_step(batch, pretrain=pretrain)  # the global batch, split
        for i, (g, b, v) in enumerate(zip(grads, before, dist.meta_variables)):
            out[f"{name}/single/{i}"], out[f"{name}/applied/{i}"] = g.numpy(), b - v.numpy()
            copies = [c.numpy() for c in v.value.values]
            out[f"{name}/copies_differ/{i}"] = np.array(
                max(float(np.max(np.abs(c - copies[0]))) for c in copies))
        for key, value in metrics.items():
            out[f"{name}/metric_single/{key}"] = value.numpy()
            out[f"{name}/metric_dist/{key}"] = train_out[key].numpy()

    # A NaN in one replica's half of the meta-batch: the step is skipped on every replica.
    guarded = learners["maml"]
    bad = [a.copy() for a in sine]
    bad[3][-1] = np.nan  # the last task, which replica 1 adapts
    before = [v.numpy() for v in guarded.meta_variables]
    nan_out = guarded.train_step(tuple(bad))
    out["nan/applied"] = np.array(bool(nan_out["applied"]))
    out["nan/changed"] = np.array(max(
        float(np.max(np.abs(b - c.numpy()))) for v, b in zip(guarded.meta_variables, before)
        for c in v.value.values))
    out["nan/nonfinite_steps"] = np.array(int(guarded.nonfinite_steps.numpy()))
    try:
        guarded.train_step(tuple(a[:5] for a in sine))
        out["uneven_error"] = np.array("")
    except ValueError as err:
        out["uneven_error"] = np.array(str(err))

    # The distributed task pipeline: per step, the replicas' slices are meta-batch i.
    source = SinusoidTasks(2, 3)
    batches = distribute.task_batches(strategy, source, 4, seed=5, start=7)
    expected = iter(task_stream(source, 4, seed=5, start=7))
    for i in range(3):
        parts = [strategy.experimental_local_results(t) for t in next(batches)]
        for j, whole in enumerate(next(expected)):
            out[f"pipeline/{i}/{j}/replica0"] = parts[j][0].numpy()
            out[f"pipeline/{i}/{j}/replica1"] = parts[j][1].numpy()
            out[f"pipeline/{i}/{j}/global"] = whole.numpy()
    out["pipeline/batch8_support_y"] = source.sample_batch(4, batch_rng(5, 8))[1]
    np.savez(os.path.join(out_dir, "mirrored.npz"), **out)


# ---------------------------------------------------------------------- multi-worker
def worker(out_dir: str, flags: list[str]) -> None:
    from tf_maml import main as cli
    from tf_maml import runner

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    cli.FLAGS(["tf-maml", *flags])
    logs: list[str] = []
    result = runner.run(cli.config_from_flags().validate(), log=logs.append)
    arrays = variables(result["learner"])
    arrays["logs"] = np.array("\n".join(logs))
    np.savez(os.path.join(out_dir, f"worker{index}.npz"), **arrays)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "mirrored":
        mirrored(out, sys.argv[3:])
    elif mode == "worker":
        worker(out, sys.argv[3:])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
