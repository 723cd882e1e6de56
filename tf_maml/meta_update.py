"""The meta-update of :class:`tf_maml.learners.MetaLearner`: the compiled meta-training step
of each phase (MAML++'s derivative-order annealing and multi-step loss switch at an
iteration), over one device or a tf.distribute strategy's replicas, and the meta-optimiser's
step (:mod:`tf_maml.options.meta_optimizer`: transforms, guard, optimiser).

A base of the learner: it uses the learner's ``meta_gradients``, ``reptile_gradients``,
``checked_batch``, variables and options, and nothing of the training loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf

from tf_maml import distribute as distribute_lib
from tf_maml.errors import BatchError, tensorflow_reason
from tf_maml.mapping import Batch
from tf_maml.options.annealing import FirstOrderUntil


@contextlib.contextmanager
def refused_batches(where: str) -> Iterator[None]:
    """TensorFlow's InvalidArgumentError from inside a compiled step on a batch as a
    :class:`~tf_maml.errors.BatchError` of one line, naming ``where`` (the method) and
    TensorFlow's reason: a batch after the first, checked in full only in part (a class id
    out of range for a loss whose targets tf_maml cannot tell), which was a traceback of
    TensorFlow's graph."""
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        raise BatchError(f"{where}: {tensorflow_reason(err.message)} (only the first batch is "
                         "checked in full before a step: check this one, e.g. that its class "
                         "ids are in 0..N-1)") from None


class MetaUpdate:
    """The learner's compiled meta-training steps and meta-optimiser step."""

    @property
    def nonfinite_steps(self) -> tf.Variable:
        """Meta-steps skipped for a NaN/Inf loss or meta-gradient (the meta-optimiser's
        guard), so the training loop can stop and say so."""
        return self.meta_optimizer.nonfinite_steps

    @property
    def msl_iterations(self) -> int:
        """Iterations of the multi-step loss (0: none)."""
        return self.objective.iterations

    @property
    def first_order_iterations(self) -> int:
        """Iterations of first order before second (0: none)."""
        return self.order.iterations if isinstance(self.order, FirstOrderUntil) else 0

    def _check_distributed(self, model: keras.Model) -> None:
        """A ValueError unless the model's weights and the optimiser are the strategy's."""
        if not all(isinstance(getattr(v, "value", v), tf.distribute.DistributedValues)
                   for v in model.trainable_variables):
            raise ValueError(
                f"MetaLearner was created under a tf.distribute strategy's scope but model "
                f"{model.name} was built outside it: build the model under the same "
                "strategy.scope() (its weights must be mirrored on every replica)."
            )
        if getattr(self.optimizer, "_distribution_strategy", self.strategy) is not self.strategy:
            raise ValueError("meta_optimizer was created outside the strategy's scope: create "
                             "it under the same strategy.scope() as the MetaLearner.")

    def _phase(self, pretrain: bool = False) -> tuple[bool, bool]:
        """(first order, multi-step loss) for the next meta-step: derivative-order
        annealing and MSL switch at an iteration, so the step to run is chosen here (one
        compiled function per phase) from the meta-optimiser's step count."""
        if pretrain or not (self.first_order_iterations or self.msl_iterations):
            return self.first_order, False
        iteration = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
        return (self.first_order or iteration < self.first_order_iterations,
                self.objective.multi_step_at(iteration))

    def msl_weights(self, iteration=None) -> tf.Tensor:
        """MSL's weights of the query loss after each inner step at ``iteration``
        (default: the meta-optimiser's step count), see
        :func:`tf_maml.mamlpp.msl_step_weights`."""
        iteration = self.optimizer.iterations if iteration is None else iteration
        return self.objective.step_weights(iteration, self.inner_steps, self._loss_dtype)

    def apply_gradients(self, grads, loss=None):
        """One step of the meta-optimiser (its transforms, e.g. clipping the network's
        gradients, then the optimiser), skipped and counted if the loss or a gradient is not
        finite. Returns whether it was applied."""
        learned_rates = {id(v) for v in self.inner_lrs}
        network = [id(v) not in learned_rates for v in self.meta_variables]
        return self.meta_optimizer.apply(grads, self.meta_variables, loss, network)

    def train_step(self, batch: Batch, pretrain: bool = False) -> dict:
        """One compiled meta-training step on a batch of tasks; returns mean metrics and
        ``applied`` (False when the step was skipped for a non-finite value).

        Under a tf.distribute strategy (see :mod:`tf_maml.distribute`) ``batch`` is the
        global meta-batch, split evenly over the replicas, or per-replica values from
        :func:`tf_maml.distribute.task_batches`; gradients and metrics are all-reduced and
        one meta-optimiser step is applied.
        """
        kind = "pretrain" if pretrain else self.algorithm
        first_order, msl = self._phase(pretrain)
        key = (kind, first_order, msl)
        if key not in self._train_fns:
            def gradients(batch):
                if kind == "reptile":
                    return self.reptile_gradients(batch)
                # MSL's weights follow the iteration inside the compiled step: no retracing.
                return self.meta_gradients(batch, pretrain=(kind == "pretrain"),
                                           first_order=first_order,
                                           msl_weights=self.msl_weights() if msl else None)

            def apply(grads, metrics):
                loss = metrics["pre_loss"] if kind == "pretrain" else metrics["post_loss"]
                return dict(metrics, applied=self.apply_gradients(grads, loss))

            if self.strategy is None:
                def step(batch):
                    return apply(*gradients(batch))
            else:
                step = distribute_lib.replicated_step(self.strategy, gradients, apply)
            # No AutoGraph: the step's control flow is Python at trace time (loops over inner
            # steps and layers) or explicit tf.cond/tf.while_loop, and converting the option
            # objects' code to graph code was most of the first step's time (56 s -> 10 s, conv4).
            self._train_fns[key] = tf.function(step, reduce_retracing=True, autograph=False)
        if self.strategy is None:
            batch = self.checked_batch(batch, "train_step")
        elif not distribute_lib.is_distributed(batch):
            batch = distribute_lib.split_batch(self.strategy,
                                               self.checked_batch(batch, "train_step"))
        with refused_batches("train_step"):
            return self._train_fns[key](batch)

    meta_train_step = train_step  # the name used in the paper's vocabulary

