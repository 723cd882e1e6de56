"""Measures why sinusoid MAML with a tiny α still adapts strongly: the squared norm of the
support-loss gradient at the meta-learned θ, median over test tasks, and α·‖∇L‖² (the
first-order decrease of the loss in one inner step).

    python -m benchmarks.sinusoid_grad_norm RUN_DIR [RUN_DIR ...]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_maml.adapt import forward  # noqa: E402
from tf_maml.evaluate import EVAL_STREAM, TEST_SEEDS  # noqa: E402
from tf_maml.experiment import task_source  # noqa: E402
from tf_maml.figures import load_run  # noqa: E402
from tf_maml.tasks import batch_rng  # noqa: E402


def grad_norms(run_dir: str, num_tasks: int = 100) -> tuple[float, float]:
    config, learner = load_run(run_dir)
    source = task_source(config, "test")
    params = [tf.identity(v) for v in learner.model.trainable_variables]
    norms = []
    for i in range(num_tasks):
        sx, sy, _, _ = source.sample_batch(1, batch_rng(TEST_SEEDS["sinusoid"], i, EVAL_STREAM))
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = learner.loss_fn(sy[0], forward(learner.model, params, sx[0]))
        grads = tape.gradient(loss, params)
        norms.append(sum(float(tf.reduce_sum(g * g)) for g in grads))
    return config.update_lr, float(np.median(norms))


if __name__ == "__main__":
    for run_dir in sys.argv[1:]:
        alpha, norm = grad_norms(run_dir)
        print(f"{os.path.basename(run_dir.rstrip('/'))}: alpha={alpha} "
              f"median |grad|^2={norm:.1f} alpha*|grad|^2={alpha * norm:.2f}")
