"""Sinusoid regression tasks (Finn et al. 2017, §5.1; cbfinn/maml data_generator.py).

A task is y = A sin(x − φ) with amplitude A ~ U[0.1, 5], phase φ ~ U[0, π]; inputs
x ~ U[−5, 5] drawn independently for every point. K support and K query points per task.
With ``oracle=True`` the amplitude and phase are appended to every input (the oracle
baseline), so inputs are [x, A, φ].
"""

from __future__ import annotations

import numpy as np

from tf_maml.errors import check_count, check_switch

AMP_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, np.pi)
INPUT_RANGE = (-5.0, 5.0)


class SinusoidTasks:
    """Samples meta-batches of sinusoid regression tasks."""

    def __init__(self, num_support: int, num_query: int, oracle: bool = False):
        # Else 2.5 drew 2 points without a word, and "5" failed in a comparison.
        check_count("num_support", num_support, 1, "a whole number of examples")
        check_count("num_query", num_query, 1, "a whole number of examples")
        self.num_support = int(num_support)
        self.num_query = int(num_query)
        check_switch("oracle", oracle)
        self.oracle = oracle
        self.input_dim = 3 if oracle else 1

    def sample_params(self, meta_batch_size: int, rng: np.random.Generator):
        amp = rng.uniform(*AMP_RANGE, size=(meta_batch_size, 1, 1))
        phase = rng.uniform(*PHASE_RANGE, size=(meta_batch_size, 1, 1))
        return amp, phase

    def inputs(self, x: np.ndarray, amp: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """Network inputs for points ``x`` [T, P, 1] of tasks (amp, phase) [T, 1, 1]."""
        if not self.oracle:
            return x.astype(np.float32)
        shape = x.shape
        return np.concatenate(
            [x, np.broadcast_to(amp, shape), np.broadcast_to(phase, shape)], axis=-1
        ).astype(np.float32)

    def sample_batch(self, meta_batch_size: int, rng: np.random.Generator):
        """support_x [T, K, D], support_y [T, K, 1], query_x [T, Q, D], query_y [T, Q, 1]."""
        # Else -1 and 2.5 were numpy's errors about a shape, and 0 an empty meta-batch.
        check_count("meta_batch_size", meta_batch_size, 1, "a whole number of tasks")
        amp, phase = self.sample_params(meta_batch_size, rng)
        points = self.num_support + self.num_query
        x = rng.uniform(*INPUT_RANGE, size=(meta_batch_size, points, 1))
        y = (amp * np.sin(x - phase)).astype(np.float32)
        inputs = self.inputs(x, amp, phase)
        k = self.num_support
        return inputs[:, :k], y[:, :k], inputs[:, k:], y[:, k:]
