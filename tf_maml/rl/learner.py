"""MAML for reinforcement learning (Finn et al. 2017, Algorithm 3) with a TRPO meta-update.

Per meta-iteration, for each of T tasks:

1. sample N trajectories with the policy π_θ (θ the meta-learned initialisation);
2. adapt: θ'_i = θ − α ∇θ L_i(θ), one vanilla policy-gradient step (REINFORCE with each
   task's fitted linear baseline) by :func:`tf_maml.adapt.adapt`, the library's one inner
   loop, with the loss :func:`policy_gradient_loss` (more steps: repeat 1-2 with
   trajectories of the current fast policy);
3. sample N new trajectories with π_θ'_i.

The meta-objective is TRPO's surrogate on the post-update trajectories, as in the authors'
rllab code: the likelihood ratio of the adapted policy at θ against the adapted policy at
θ_old (which sampled them), times the advantages,

    L(θ) = −mean_i mean_t [π_θ'_i(θ)(a_t|s_t) / π_θ'_i(θ_old)(a_t|s_t) · A_t],

minimised subject to mean_{i,t} KL(π_θ'_i(θ_old)(·|s_t) ‖ π_θ'_i(θ)(·|s_t)) ≤ δ (the mean
over every step of the meta-batch, as maml_rl's constraint). Both
are functions of θ *through the inner update*: ∇L is taken with a ``tf.GradientTape`` around
:func:`tf_maml.adapt.adapt` (second order), the KL's Hessian-vector products exactly at θ_old
as Jᵀ F J v, forward mode over the inner step for J v and reverse mode for Jᵀ (second order,
:meth:`RLMetaLearner.kl_hvp`), and :func:`tf_maml.rl.trpo.trpo_step` takes the step.
With ``inner_steps=0`` the same code is plain TRPO on the tasks sampled each iteration: the
pretrained and oracle baselines.

How much is sampled per task and policy (``sample_budget``): N trajectories, or, as the
authors' ``maml_rl``, N × H environment steps in whole paths (a task whose episodes end
early gets more, shorter paths: :class:`tf_maml.rl.sampler.PathSchedule`). Either way the
inner loss and the surrogate average over a task's steps, the baseline is fitted on a
task's steps, and a task's return is the mean over its paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_maml import adapt as adapt_lib
from tf_maml.errors import check_count, check_switch
from tf_maml.options.rates import InnerRate
from tf_maml.rl import policy as policy_lib
from tf_maml.rl import sampler, trpo
from tf_maml.rl.sampler import SAMPLE_BUDGETS


def policy_gradient_loss(y: tf.Tensor, preds: tf.Tensor) -> tf.Tensor:
    """The inner loss whose gradient is the REINFORCE estimate (rllab's VPG surrogate):
    −Σ_t m_t log π(a_t|s_t) A_t / Σ_t m_t over one task's flattened steps.

    ``y [B, act_dim + 2]`` packs the actions, the advantages and the mask; ``preds`` is the
    policy's output ``[B, 2·act_dim]`` (mean, log-std). The loss signature of
    :func:`tf_maml.adapt.adapt`: ``loss_fn(support_y, model(support_x))``.
    """
    mean, log_std = policy_lib.split(preds)
    act_dim = mean.shape[-1]
    actions, adv, mask = y[:, :act_dim], y[:, act_dim], y[:, act_dim + 1]
    logp = policy_lib.log_prob(actions, mean, log_std)
    return -tf.reduce_sum(mask * logp * adv) / tf.maximum(tf.reduce_sum(mask), 1.0)


def pack_support(trajectories: dict, adv: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Trajectories ``[T, N, H, ...]`` as the inner loop's per-task "support set":
    ``x [T, N·H, obs]`` and ``y [T, N·H, act + 2]`` (actions, advantage, mask)."""
    obs, actions, mask = (trajectories[k] for k in ("observations", "actions", "mask"))
    num_tasks = tf.shape(obs)[0]
    x = tf.reshape(obs, [num_tasks, -1, obs.shape[-1]])
    y = tf.concat([actions, adv[..., None], mask[..., None]], axis=-1)
    return x, tf.reshape(y, [num_tasks, -1, y.shape[-1]])


class TRPOState(tf.Module):
    """The checkpointed state of the TRPO meta-optimiser: counts of steps taken and of
    steps the line search rejected (TRPO has no moments to keep)."""

    def __init__(self):
        super().__init__(name="trpo")
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps")
        self.rejected = tf.Variable(0, dtype=tf.int64, trainable=False, name="rejected")


class RLMetaLearner:
    """MAML-TRPO for a Gaussian policy (any built Keras model with a ``[mean, log_std]``
    output, e.g. :func:`tf_maml.rl.policy.gaussian_mlp_policy`) on a batch-of-tasks env.
    A :class:`tf_maml.protocols.Learner`: the library's training loop trains it
    (:func:`tf_maml.rl.training.train`) on batches ``(tasks, rng)``.

    Args:
      policy: the policy model; every trainable weight (log-std included) is adapted.
      env: a task family with :class:`tf_maml.tasks.navigation.NavigationTasks`' interface,
        or any object with a ``rollout`` method: :class:`tf_maml.rl.gym_tasks.GymTasks`,
        :class:`tf_maml.rl.mujoco_batch.LocomotionTasks`.
      inner_lr: α, the policy-gradient step size of the inner loop (0.1 in the paper).
      inner_steps: inner steps during meta-training (1); 0 trains plain TRPO (baselines).
      num_trajectories: N trajectories per task and policy (20: the paper's K).
      sample_budget: ``"trajectories"``: N per task; ``"steps"``: whole paths until the
        task has N × H steps (``maml_rl``'s ``batch_size`` × ``max_path_length``), N
        environments per task sampling them; needs an env with a ``rollout`` method.
      discount: γ of the returns (0.99, as the authors' code).
      max_kl: δ, TRPO's trust region on the mean KL (0.01).
      first_order: stop the gradient through the inner policy gradient.

    Example::

        env = NavigationTasks()
        learner = RLMetaLearner(gaussian_mlp_policy(2, 2), env)
        rng = np.random.default_rng(0)
        stats = learner.train_step((env.sample_tasks(20, rng), rng))  # one meta-iteration
        returns = learner.evaluate(env.sample_tasks(40, rng), 3, rng)  # [40, 4]
    """

    def __init__(self, policy: keras.Model, env, inner_lr: float = 0.1, inner_steps: int = 1,
                 num_trajectories: int = 20, discount: float = 0.99, max_kl: float = 0.01,
                 first_order: bool = False, sample_budget: str = "trajectories"):
        if sample_budget not in SAMPLE_BUDGETS:
            raise ValueError(f"sample_budget must be one of {SAMPLE_BUDGETS}, got "
                             f"{sample_budget!r}")
        if sample_budget == "steps" and not hasattr(env, "rollout"):
            raise ValueError(f"sample_budget='steps' needs a Python-stepped task family (a "
                             f"rollout method: GymTasks, LocomotionTasks), not "
                             f"{type(env).__name__}")
        if not policy.built or not policy.trainable_variables:
            raise ValueError("RLMetaLearner needs a built policy with trainable weights")
        if (adapt_lib.weight_penalty(policy) is not None
                or adapt_lib.activity_regularized_layers(policy)):
            # TRPO's meta-step is a constrained step on the surrogate (a KL trust region),
            # to which no penalty is added: the regularizers would be silently ignored.
            raise ValueError(
                f"policy {policy.name} has weight or activity regularizers, whose penalties "
                "RLMetaLearner does not add to its inner loss or TRPO's meta-step: they "
                "would be silently ignored. Remove them (MetaLearner supports weight "
                "regularizers)")
        random = adapt_lib.drawing_layers(policy)
        if random:
            # The policy's forward passes here are unseeded (tf_maml.adapt.forward): dropout
            # would be silently off in sampling, the inner loop and TRPO's meta-step alike.
            raise ValueError(
                f"policy {policy.name} has layers that draw random numbers in training mode "
                f"({', '.join(random)}), e.g. dropout, which RLMetaLearner does not run: "
                "they would be silently off. Remove them, or set their rate to 0 "
                "(MetaLearner supports dropout)")
        # Whole numbers: else 2.5 inner steps ran 2 and 2.5 trajectories sampled 2.
        check_count("inner_steps", inner_steps, 0, "a whole number of inner steps")
        too_many = adapt_lib.unrolled_steps_problem(inner_steps)  # the meta-gradient's
        if too_many:
            raise ValueError(f"inner_steps={inner_steps}: {too_many}")
        check_count("num_trajectories", num_trajectories, 1, "a whole number of trajectories")
        if not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        # A negative α stepped down the return; a δ of 0 rejected every TRPO step.
        inner_lr = InnerRate(inner_lr).value
        if not (math.isfinite(max_kl) and max_kl > 0):
            raise ValueError(f"max_kl, TRPO's KL limit δ, must be a positive finite number "
                             f"(the paper's is 0.01), got {max_kl}")
        out_dim = policy.output_shape[-1]
        if out_dim != 2 * env.action_dim:
            raise ValueError(f"the policy outputs {out_dim} values; a Gaussian policy for "
                             f"{env.action_dim} action dimensions outputs "
                             f"{2 * env.action_dim} (mean, log-std)")
        self.model = policy
        self.env = env
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.num_trajectories = int(num_trajectories)
        self.discount = float(discount)
        self.max_kl = float(max_kl)
        check_switch("first_order", first_order)
        self.first_order = first_order
        self.sample_budget = sample_budget
        self.mask = adapt_lib.adapted_mask(policy, adapt_norm=True)
        self.optimizer = TRPOState()  # checkpointed beside the policy (tf_maml.rl.training)
        # Trajectories are sampled in this process, on one device: no distribution.
        self.strategy = None
        self._shapes = [tuple(v.shape) for v in policy.trainable_variables]
        self._dtypes = [tf.as_dtype(v.dtype) for v in policy.trainable_variables]
        self._sizes = [int(np.prod(s)) for s in self._shapes]
        self._fns: dict = {}

    @property
    def extra_variables(self) -> dict:
        """No checkpointed state beyond the policy and TRPO's counters (α is fixed)."""
        return {}

    # ------------------------------------------------------------------ parameters
    def params(self) -> list[tf.Tensor]:
        return [tf.identity(v.value) for v in self.model.trainable_variables]

    def flat(self, tensors: Sequence[tf.Tensor]) -> np.ndarray:
        return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])

    def unflat(self, vector: np.ndarray) -> list[tf.Tensor]:
        parts = np.split(np.asarray(vector), np.cumsum(self._sizes)[:-1])
        return [tf.constant(p.reshape(s), d)
                for p, s, d in zip(parts, self._shapes, self._dtypes)]

    def set_params(self, vector: np.ndarray) -> None:
        for v, value in zip(self.model.trainable_variables, self.unflat(vector)):
            v.assign(value)

    def _compiled(self, name, fn):
        if name not in self._fns:
            # No AutoGraph: the rollout loop is an explicit tf.while_loop, the rest is
            # straight-line code; it also makes tracing faster.
            self._fns[name] = tf.function(fn, autograph=False)
        return self._fns[name]

    # ------------------------------------------------------------------ policy and sampling
    def _policy_fn(self, weights, per_task: bool):
        """obs [T, N, obs] -> [T, N, 2·act] with shared weights or one set per task."""
        def shared(obs):
            flat = tf.reshape(obs, [-1, obs.shape[-1]])
            out = adapt_lib.forward(self.model, weights, flat)
            return tf.reshape(out, tf.concat([tf.shape(obs)[:-1], [-1]], axis=0))

        def separate(obs):
            return tf.stack([adapt_lib.forward(self.model, w, obs[i])
                             for i, w in enumerate(weights)])

        return separate if per_task else shared

    def sample(self, weights, tasks, seed, per_task: bool) -> dict:
        """N trajectories per task (or N × H steps of them: ``sample_budget``) with
        ``weights`` (one list for all tasks, or with ``per_task`` one list per task), their
        advantages and returns (``[T, N]``; with a step budget ``[T, P]`` and
        ``path_mask``, 1 for the paths a task has)."""
        tasks = tf.convert_to_tensor(tasks, tf.float32)
        seed = tf.convert_to_tensor(seed, tf.int64)
        if hasattr(self.env, "rollout"):  # stepped from Python (GymTasks, LocomotionTasks)
            policy_fn = self._compiled(f"policy_{per_task}", lambda w, o: self._policy_fn(
                w, per_task)(o))
            if self.sample_budget == "steps":
                budget = self.num_trajectories * self.env.horizon
                traj = self.env.rollout(lambda obs: policy_fn(weights, obs), tasks,
                                        self.num_trajectories, seed, max_steps=budget)
                return self._process_paths(traj, budget)
            traj = self.env.rollout(lambda obs: policy_fn(weights, obs), tasks,
                                    self.num_trajectories, seed)
            return self._compiled("process", self._process)(traj)

        def sample_fn(weights, tasks, seed):
            traj = sampler.rollout(self.env, self._policy_fn(weights, per_task), tasks,
                                   self.num_trajectories, seed)
            return self._process(traj)

        return self._compiled(f"sample_{per_task}", sample_fn)(weights, tasks, seed)

    def _process(self, traj: dict) -> dict:
        out = dict(traj)
        out["advantages"] = sampler.advantages(traj, self.discount)
        out["returns"] = sampler.undiscounted_returns(traj)
        return out

    def _process_paths(self, traj: dict, budget: int) -> dict:
        """A step budget's paths ``[T, P, H]``: each task's steps laid out one after another
        (:func:`tf_maml.rl.sampler.flatten_paths`, ``[T, 1, C]``, C the budget or, when a
        task's last path overshoots it, budget + H − 1: two shapes to trace), their
        advantages, the paths' returns and which paths a task has."""
        most = int(np.max(np.sum(np.asarray(traj["mask"]), axis=(1, 2))))
        capacity = budget if most <= budget else budget + self.env.horizon - 1
        flat = sampler.flatten_paths(traj, self.discount, capacity)
        out = dict(flat)
        out["advantages"] = self._compiled("advantages", lambda f: sampler.advantages(
            f, self.discount))(flat)
        out["returns"] = sampler.undiscounted_returns(traj)
        out["path_mask"] = traj["mask"][..., 0]
        return out

    # ------------------------------------------------------------------ the inner loop
    def _adapt_tasks(self, start, supports, first_order: bool, inner_lr=None):
        """Fast weights per task: from ``start`` (one weight list per task) one
        :func:`tf_maml.adapt.adapt` step of size α (``inner_lr``, default the learner's) per
        support set in ``supports`` [(x, y), ...]."""
        inner_lr = self.inner_lr if inner_lr is None else inner_lr
        fast = []
        for i, weights in enumerate(start):
            for x, y in supports:
                weights, _, _ = adapt_lib.adapt(
                    self.model, weights, x[i], y[i], policy_gradient_loss, inner_lr, 1,
                    first_order=first_order, mask=self.mask)
            fast.append(weights)
        return fast

    def adapt(self, weights, trajectories: dict, per_task: bool, inner_lr: float | None = None):
        """One inner step per task on ``trajectories`` (from :meth:`sample`), from shared
        ``weights`` or (``per_task``) one weight list per task, of size ``inner_lr``
        (default α); returns per-task weight lists."""
        def adapt_fn(weights, x, y, lr):
            start = weights if per_task else [weights] * x.shape[0]
            return self._adapt_tasks(start, [(x, y)], first_order=True, inner_lr=lr)

        x, y = pack_support(trajectories, trajectories["advantages"])
        lr = tf.constant(self.inner_lr if inner_lr is None else inner_lr, x.dtype)
        return self._compiled(f"adapt_{per_task}", adapt_fn)(weights, x, y, lr)

    # ------------------------------------------------------------------ the meta-objective
    def _post_update_outputs(self, params, batch) -> list[tf.Tensor]:
        """The adapted policies' outputs ``[N·H, 2·act]`` (mean, log-std) on each task's
        post-update observations: θ' adapts from ``params`` on ``batch['supports']`` (second
        order unless ``first_order``)."""
        x = batch["outer"]["x"]
        fast = self._adapt_tasks([params] * x.shape[0], batch["supports"], self.first_order)
        return [adapt_lib.forward(self.model, weights, x[i]) for i, weights in enumerate(fast)]

    def _outer_terms(self, params, batch, with_surrogate: bool = True):
        """Mean surrogate L(θ) over tasks and mean KL(π_θ'(θ_old) ‖ π_θ'(θ)) over steps (see
        module doc); θ' adapts from ``params`` on ``batch['supports']`` (second order)."""
        return self._terms_of_outputs(self._post_update_outputs(params, batch),
                                      batch["outer"], with_surrogate)

    def _terms_of_outputs(self, outputs, outer, with_surrogate: bool = True):
        """Mean surrogate over tasks and mean KL over all steps given the adapted policies'
        ``outputs`` on each task's post-update observations (one ``[N·H, 2·act]`` tensor per
        task)."""
        surrogates, kls, counts = [], [], []
        for i, out in enumerate(outputs):
            mean, log_std = policy_lib.split(out)
            mask = outer["mask"][i]
            count = tf.maximum(tf.reduce_sum(mask), 1.0)
            old_mean, old_log_std = outer["old_mean"][i], outer["old_log_std"][i]
            kl = policy_lib.kl_divergence(old_mean, old_log_std, mean, log_std)
            kls.append(tf.reduce_sum(mask * kl))
            counts.append(tf.reduce_sum(mask))
            if with_surrogate:
                actions = outer["actions"][i]
                ratio = tf.exp(policy_lib.log_prob(actions, mean, log_std)
                               - policy_lib.log_prob(actions, old_mean, old_log_std))
                surrogates.append(-tf.reduce_sum(mask * ratio * outer["advantages"][i]) / count)
        # The KL is a mean over every step of the meta-batch, the tasks' steps together, as
        # maml_rl's constraint `tf.reduce_mean(tf.concat(kls, 0))` (maml_npo.py); the
        # surrogate a mean over tasks of each task's mean, as its l.121-124.
        kl = tf.add_n(kls) / tf.maximum(tf.add_n(counts), 1.0)
        return (tf.reduce_mean(tf.stack(surrogates)) if with_surrogate else None), kl

    def surrogate_and_kl(self, params, batch) -> tuple[tf.Tensor, tf.Tensor]:
        return self._compiled("surrogate_kl", self._outer_terms)(params, batch)

    def surrogate_gradient(self, params, batch):
        """(L(θ), ∇θ L(θ)): the meta-gradient, second order through the inner step."""
        def fn(params, batch):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(params)
                surrogate, _ = self._outer_terms(params, batch)
            return surrogate, tape.gradient(surrogate, params,
                                            unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return self._compiled("gradient", fn)(params, batch)

    def kl_hvp(self, params, vector, batch) -> list[tf.Tensor]:
        """H v, H the Hessian in θ of the mean KL(π_θ'(θ_old) ‖ π_θ'(θ)) at θ = θ_old (the
        ``params`` whose adapted policies gave ``batch['outer']``'s old distributions), the
        dependence of θ' on θ included: exactly, as the Gauss-Newton product Jᵀ F J v.

        With z(θ) the adapted policies' outputs (means and log-stds on the post-update
        observations) and KL(θ) = k(z(θ)), the Hessian is Jᵀ ∇²k J + Σ ∂k/∂z ∇²z, J = ∂z/∂θ
        through the inner step. At θ_old, z is the old distributions' and k, a divergence,
        is at its minimum 0 there: ∂k/∂z = 0, so the second term vanishes exactly. F = ∇²k
        is the Hessian of the same KL (:meth:`_terms_of_outputs`) in the outputs alone, an
        element-wise function, so cheap to differentiate twice; for diagonal Gaussians at
        θ_old it is diagonal, 1/σ² per mean and 2 per log-std, weighted as the KL averages.
        So H v = Jᵀ (F (J v)): one forward-mode product J v (``tf.autodiff.
        ForwardAccumulator``, through the inner step's tape: second order) and one
        reverse-mode Jᵀ u (the meta-gradient's cost), where the gradient of (∇θ KL)·v is
        third order. Away from θ_old it is the Gauss-Newton approximation, not the Hessian;
        TRPO asks for it at θ_old only (:func:`tf_maml.rl.trpo.trpo_step`'s ``hvp``).
        """
        def output_hvp(outputs, u, outer):
            """F u: the KL's Hessian in the outputs times ``u`` (reverse over reverse)."""
            with tf.GradientTape(watch_accessed_variables=False) as outer_tape:
                outer_tape.watch(outputs)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(outputs)
                    _, kl = self._terms_of_outputs(outputs, outer, with_surrogate=False)
                grads = tape.gradient(kl, outputs)
                grad_dot_u = tf.add_n([tf.reduce_sum(g * t) for g, t in zip(grads, u)])
            return outer_tape.gradient(grad_dot_u, outputs,
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)

        def fn(params, vector, batch):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(params)
                with tf.autodiff.ForwardAccumulator(params, vector) as acc:
                    outputs = self._post_update_outputs(params, batch)
                jv = [acc.jvp(out, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                      for out in outputs]
            return tape.gradient(outputs, params,
                                 output_gradients=output_hvp(outputs, jv, batch["outer"]),
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return self._compiled("hvp", fn)(params, vector, batch)

    # ------------------------------------------------------------------ one iteration
    def collect(self, tasks, rng: np.random.Generator, inner_steps: int | None = None):
        """Samples a meta-iteration's trajectories: per inner step a batch with the current
        (fast) policy, then the post-update batch. Returns (batch for the objective,
        mean return of each sampling: [pre-update, ..., post-update])."""
        steps = self.inner_steps if inner_steps is None else int(inner_steps)
        params = self.params()
        weights, per_task, supports, returns = params, False, [], []
        for _ in range(steps):
            traj = self.sample(weights, tasks, rng.integers(2**31, size=2), per_task)
            returns.append(mean_return(traj))
            supports.append(pack_support(traj, traj["advantages"]))
            # The fast weights at θ_old exactly as _outer_terms will compute them.
            weights = self._compiled("adapt_from_theta", lambda p, s: self._adapt_tasks(
                [p] * s[0][0].shape[0], s, first_order=True))(params, supports)
            per_task = True
        traj = self.sample(weights, tasks, rng.integers(2**31, size=2), per_task)
        returns.append(mean_return(traj))
        # The post-update trajectories flattened per task ([T, N·H, ...]) with the
        # distributions of the policies that sampled them, π_θ'(θ_old).
        x, y = pack_support(traj, traj["advantages"])
        old = self._compiled(f"old_dist_{per_task}", lambda w, o: self._policy_fn(
            w, per_task)(o))(weights, x)
        old_mean, old_log_std = policy_lib.split(old)
        act_dim = self.env.action_dim
        outer = {"x": x, "actions": y[..., :act_dim], "advantages": y[..., act_dim],
                 "mask": y[..., act_dim + 1], "old_mean": old_mean, "old_log_std": old_log_std}
        return {"supports": supports, "outer": outer}, returns

    def train_step(self, batch, pretrain: bool = False) -> dict:
        """One meta-iteration on ``batch = (tasks, rng)``: the tasks and the generator of
        their sampling noise (``pretrain``: plain TRPO, no inner step). Returns the mean
        returns before/after adaptation and the TRPO step's info."""
        if not isinstance(pretrain, bool) or not (isinstance(batch, tuple) and len(batch) == 2):
            raise TypeError("train_step takes one batch (tasks, rng) and then pretrain: call "
                            "train_step((tasks, rng)), not train_step(tasks, rng)")
        tasks, rng = batch
        batch, returns = self.collect(tasks, rng, 0 if pretrain else None)
        return {"pre_return": returns[0], "post_return": returns[-1], **self.update(batch)}

    def update(self, batch) -> dict:
        """The TRPO meta-update of θ on a batch from :meth:`collect`; returns the surrogate
        before/after, the KL of the accepted step, the fraction of the full step taken (0:
        rejected, θ kept) and the number of backtracks."""
        params = self.params()
        theta = self.flat(params)
        loss, grads = self.surrogate_gradient(params, batch)

        def hvp(v):
            return self.flat(self.kl_hvp(params, self.unflat(v), batch))

        def loss_and_kl(candidate):
            surrogate, kl = self.surrogate_and_kl(self.unflat(candidate), batch)
            return float(surrogate), float(kl)

        flat_grad = self.flat(grads)
        if np.all(np.isfinite(flat_grad)) and np.isfinite(float(loss)):
            new_theta, info = trpo.trpo_step(theta, flat_grad, hvp, loss_and_kl, self.max_kl,
                                             float(loss))
            self.set_params(new_theta)
        else:  # a non-finite surrogate or meta-gradient is never applied
            info = trpo.StepInfo(float(loss), float(loss), 0.0, 0.0, 0)
        self.optimizer.steps.assign_add(1)
        if info.step_fraction == 0.0:
            self.optimizer.rejected.assign_add(1)
        return {"surrogate_before": info.loss_before, "surrogate_after": info.loss_after,
                "kl": info.kl, "step_fraction": info.step_fraction,
                "backtracks": info.backtracks}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, tasks, num_steps: int, rng: np.random.Generator,
                 step_sizes: Sequence[float] | None = None) -> np.ndarray:
        """Average return per task after 0..``num_steps`` inner steps, ``[T, S+1]``: each
        step samples N trajectories (or N × H steps) with the current policy, records their
        mean return (:func:`task_returns`), and
        adapts on them (the paper's test protocol: step k uses the trajectories of the
        policy after k−1 steps). ``step_sizes``: α of each step (default: α for all)."""
        # Else -1 failed in numpy's stack of no returns, and 10**9 sampled for years.
        check_count("num_steps", num_steps, 0, "a whole number of inner steps")
        too_many = adapt_lib.unrolled_steps_problem(num_steps, adapt_lib.SAMPLED)
        if too_many:
            raise ValueError(f"evaluate: num_steps={num_steps}: {too_many}")
        if step_sizes is not None and len(step_sizes) < num_steps:
            raise ValueError(f"{num_steps} steps need {num_steps} step sizes, got "
                             f"{len(step_sizes)}")
        for i, size in enumerate(step_sizes or ()):
            try:  # the learner's own α's check: else a NaN was TensorFlow's MatrixSolve
                InnerRate(size)  # error, and a negative size stepped down the return
            except (TypeError, ValueError) as err:
                raise ValueError(f"evaluate: step_sizes[{i}]: {err}") from None
        weights, per_task = self.params(), False
        out = []
        for step in range(num_steps + 1):
            traj = self.sample(weights, tasks, rng.integers(2**31, size=2), per_task)
            out.append(task_returns(traj))
            if step < num_steps:
                lr = None if step_sizes is None else step_sizes[step]
                weights, per_task = self.adapt(weights, traj, per_task, lr), True
        return np.stack(out, axis=1)


def mean_return(trajectories: dict) -> float:
    """The mean return over every path of the batch, as ``maml_rl`` logs its
    ``AverageReturn`` (over the paths of all tasks together: ``batch_maml_polopt.py``
    ``process_samples(itr, flatten_list(paths.values()))``, where a task with more, shorter
    paths weighs more)."""
    if "path_mask" not in trajectories:
        return float(tf.reduce_mean(trajectories["returns"]))
    paths = np.asarray(trajectories["path_mask"], np.float64)
    return float(np.sum(np.asarray(trajectories["returns"], np.float64) * paths)
                 / np.sum(paths))


def task_returns(trajectories: dict) -> np.ndarray:
    """Each task's mean return over its own paths ``[T]`` (the test scripts' per-task
    ``AverageReturn``)."""
    returns = np.asarray(trajectories["returns"])
    if "path_mask" not in trajectories:
        return np.mean(returns, axis=1)
    paths = np.asarray(trajectories["path_mask"])
    return np.sum(returns * paths, axis=1) / np.sum(paths, axis=1)
