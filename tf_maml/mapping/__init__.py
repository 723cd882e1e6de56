"""Task mappings: how the tasks of a meta-batch are run. Speed and memory only, never a number.

The learner (:class:`tf_maml.MetaLearner`) writes each computation once, for one task, over
:func:`tf_maml.adapt.adapt`: its per-task objective, Reptile's fast weights, evaluation's
losses per step. A mapping runs such a task function over a batch (each tensor ``[T, ...]``,
the task on the leading axis) and returns its outputs stacked over the tasks:

* :class:`~tf_maml.mapping.per_task.PerTask`: one task per call through the Keras model, as
  an unrolled loop (the reference), ``tf.map_fn`` or ``tf.vectorized_map``;
* :class:`~tf_maml.mapping.batched.Batched`: every task in one call, the weights stacked per
  task and each layer a batched kernel (a linear chain of standard layers);
* :class:`~tf_maml.mapping.accumulate.Accumulate`: meta-gradients only, summed over chunks
  of tasks in a ``tf.while_loop``, each chunk run by one of the two above (least memory).

:class:`~tf_maml.mapping.plan.ExecutionPlan` holds the speed knobs and picks the mapping for
a model and a batch's shapes. The tests (``tests/test_mapping_*.py``) check every mapping's
meta-gradients, Reptile steps and evaluation against the unrolled per-task loop.
"""

from tf_maml.mapping.base import Batch, Runner, check_batch
from tf_maml.mapping.plan import TASK_PARALLELISM, ExecutionPlan

__all__ = ["TASK_PARALLELISM", "Batch", "ExecutionPlan", "Runner", "check_batch"]
