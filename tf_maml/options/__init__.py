"""The learner's options, each a small object that checks itself: the inner rate
(:mod:`~tf_maml.options.rates`), which weights adapt (:mod:`~tf_maml.options.adaptation`, with
:mod:`~tf_maml.options.per_step_bn`), derivative-order annealing
(:mod:`~tf_maml.options.annealing`), the objective (:mod:`~tf_maml.options.objectives`) and
the meta-optimiser (:mod:`~tf_maml.options.meta_optimizer`). A plain
``MetaLearner(model, loss_fn, inner_lr=0.01)`` needs none of them."""

from tf_maml.options.annealing import FirstOrderUntil
from tf_maml.options.meta_optimizer import ClipNetwork, MetaOptimizer, adam, chain, cosine
from tf_maml.options.objectives import LastStep, MultiStepLoss, Reptile
from tf_maml.options.per_step_bn import PerStepBatchNorm
from tf_maml.options.rates import LSLR, InnerRate, MetaSGD

__all__ = ["LSLR", "ClipNetwork", "FirstOrderUntil", "InnerRate", "LastStep", "MetaOptimizer",
           "MetaSGD", "MultiStepLoss", "PerStepBatchNorm", "Reptile", "adam", "chain",
           "cosine"]
