"""Trust-region policy optimisation's update (Schulman et al. 2015), on flat vectors.

The meta-update of MAML for RL (Finn et al. 2017, Algorithm 3, with TRPO as the outer
optimiser) and the pretrained / oracle baselines share it. Given a surrogate loss L(θ) to
minimise, its gradient g and a Hessian-vector product of the KL constraint H v, the step is
the natural-gradient direction x ≈ H⁻¹ g from :func:`conjugate_gradient`, scaled to the
edge of the trust region KL ≈ δ (ΔθᵀHΔθ / 2 = δ), then shrunk by a backtracking line search
until the surrogate improves and the measured KL is within δ. Constants as rllab's
``ConjugateGradientOptimizer``: 10 CG iterations, damping 1e-5, backtracking ratio 0.8, at
most 15 backtracks; the old parameters are kept if no candidate qualifies.

Everything here is NumPy over float64 vectors; the caller supplies the TensorFlow
functions (``tf_maml.rl.learner``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

CG_ITERS = 10
CG_DAMPING = 1e-5
BACKTRACK_RATIO = 0.8
MAX_BACKTRACKS = 15


def conjugate_gradient(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray,
                       iterations: int = CG_ITERS, residual_tol: float = 1e-10) -> np.ndarray:
    """Approximately solves A x = b for a symmetric positive-definite A given only
    ``matvec(v) = A v`` (Hestenes-Stiefel conjugate gradient, x₀ = 0). Exact after
    ``len(b)`` iterations in exact arithmetic."""
    b = np.asarray(b, np.float64)
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = r @ r
    for _ in range(iterations):
        if rr < residual_tol:
            break
        ap = np.asarray(matvec(p), np.float64)
        curvature = p @ ap
        if not curvature > 0:
            raise FloatingPointError(
                f"conjugate gradient met non-positive curvature pᵀAp = {curvature}: the "
                "matrix (KL Hessian + damping) is not positive definite here")
        step = rr / curvature
        x += step * p
        r -= step * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclasses.dataclass
class StepInfo:
    """What a TRPO step did: the surrogate and KL before/after, the fraction of the full
    step taken (0: rejected, θ unchanged) and the number of backtracks."""

    loss_before: float
    loss_after: float
    kl: float
    step_fraction: float
    backtracks: int


def trpo_step(
    theta: np.ndarray,
    gradient: np.ndarray,
    hvp: Callable[[np.ndarray], np.ndarray],
    loss_and_kl: Callable[[np.ndarray], tuple[float, float]],
    max_kl: float,
    loss_before: float,
    cg_iters: int = CG_ITERS,
    damping: float = CG_DAMPING,
    backtrack_ratio: float = BACKTRACK_RATIO,
    max_backtracks: int = MAX_BACKTRACKS,
) -> tuple[np.ndarray, StepInfo]:
    """One TRPO update of the flat parameters ``theta``; returns (new θ, :class:`StepInfo`).

    Args:
      gradient: ∇L(θ) of the surrogate loss to minimise.
      hvp: v ↦ H v, H the Hessian of the mean KL(π_θold ‖ π_θ) at θ = θ_old.
      loss_and_kl: θ ↦ (L(θ), KL(π_θold ‖ π_θ)), evaluated on the same samples.
      max_kl: δ, the trust region (0.01 in the paper).
    """
    if not max_kl > 0:
        raise ValueError(f"max_kl must be > 0, got {max_kl}")
    theta = np.asarray(theta, np.float64)
    gradient = np.asarray(gradient, np.float64)

    def damped(v):
        return np.asarray(hvp(v), np.float64) + damping * v

    direction = conjugate_gradient(damped, gradient, cg_iters)
    shs = float(direction @ damped(direction))
    full_step = np.sqrt(2.0 * max_kl / (shs + 1e-8)) * direction
    info = StepInfo(float(loss_before), float(loss_before), 0.0, 0.0, max_backtracks)
    for n in range(max_backtracks):
        fraction = backtrack_ratio ** n
        candidate = theta - fraction * full_step
        loss, kl = loss_and_kl(candidate)
        if np.isfinite(loss) and np.isfinite(kl) and loss < loss_before and kl <= max_kl:
            info.loss_after, info.kl, info.step_fraction, info.backtracks = (
                float(loss), float(kl), fraction, n)
            return candidate, info
    return theta, info
