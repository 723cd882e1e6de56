"""MAML for reinforcement learning (Finn et al. 2017, §5.3 and Algorithm 3).

* :mod:`tf_maml.rl.policy`: the Gaussian MLP policy, its log-likelihood and KL;
* :mod:`tf_maml.rl.sampler`: vectorised rollouts, returns, linear baseline, advantages;
* :mod:`tf_maml.rl.trpo`: conjugate gradient and TRPO's line search;
* :mod:`tf_maml.rl.learner`: :class:`RLMetaLearner`, inner policy-gradient step through
  :func:`tf_maml.adapt.adapt`, TRPO meta-update, the test-time protocol;
* :mod:`tf_maml.rl.gym_tasks`: Gymnasium-API environments as a task family;
* :mod:`tf_maml.rl.mujoco_batch`: ``LocomotionTasks``, the MuJoCo task families whose
  rollouts step all simulations of a batch together (physics: :mod:`tf_maml.tasks.locomotion`);
* :mod:`tf_maml.rl.training`: the ``tf-maml --datasource=navigation`` (or a locomotion
  family) experiment;
* :mod:`tf_maml.rl.run`, :mod:`tf_maml.rl.figure`: command lines (re-evaluation, figure).
"""

from tf_maml.rl.learner import RLMetaLearner, policy_gradient_loss
from tf_maml.rl.policy import gaussian_mlp_policy

__all__ = ["RLMetaLearner", "gaussian_mlp_policy", "policy_gradient_loss"]
