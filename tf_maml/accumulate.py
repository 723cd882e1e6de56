"""Meta-gradients accumulated over the tasks of a meta-batch, one chunk of tasks at a time.

The other task mappings of :class:`tf_maml.learners.MetaLearner` differentiate the mean
query loss of the WHOLE meta-batch with one outer tape, so the activations (and, second
order, the recorded inner gradients) of every task and every inner step are alive at once
when the backward pass starts: for MiniImageNet (4 tasks x 5 steps x 75 query images of
84x84) that is gigabytes. Here a ``tf.while_loop`` runs over chunks of tasks; each
iteration opens its own outer tape, adapts its tasks (nested inner tapes, exactly the
per-task computation of the other modes), takes the meta-gradient of its share of the
objective, ``Σ_(its tasks) L_i / T``, and adds it to an accumulator. Only one chunk's tape
is alive at a time, as in a PyTorch loop that calls ``backward()`` task by task.

Because the meta-objective is a mean of per-task terms, the sum of the chunks' gradients
is the gradient of the mean (Finn et al. 2017, eq. 1-2, the gradient of Σ_i L_i); only the
order of float additions differs from the other modes. Second order, first order (the
inner gradient under ``tf.stop_gradient``), Meta-SGD's learned step sizes, the pretrain
objective and the per-task metrics are all those of the per-task path, which computes each
chunk:

* ``tasks_per_chunk=1`` with the generic per-task code
  (:meth:`tf_maml.learners.MetaLearner._task_maml`: the Keras model with substituted
  weights, any model);
* ``tasks_per_chunk=c`` with :mod:`tf_maml.batched` (a linear chain of supported layers):
  ``c`` tasks per iteration through batched kernels, so dispatch overhead is amortised
  over ``c`` tasks while memory stays ``c / T`` of the batched path's.

``tests/test_accumulate.py`` checks both against the unrolled per-task loop.
"""

from __future__ import annotations

import tensorflow as tf

from tf_maml import batched as batched_lib

Batch = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]


def _zeros(learner, variables):
    grads = [tf.zeros(v.shape, v.dtype) for v in variables]
    metrics = {k: tf.zeros([], spec.dtype) for k, spec in learner._signature().items()}
    return grads, metrics


def meta_gradients(learner, batch: Batch, pretrain: bool = False, tasks_per_chunk: int = 1,
                   use_batched: bool | None = None, parallel_chunks: int = 1):
    """``MetaLearner.meta_gradients`` task chunk by task chunk: (grads for
    ``learner.meta_variables``, mean ``pre_loss``/``post_loss`` (and metrics)).

    ``tasks_per_chunk`` must divide the (then static) number of tasks; above 1 the model
    must be supported by :mod:`tf_maml.batched`. ``parallel_chunks`` chunks may run at
    once (``tf.while_loop``'s ``parallel_iterations``): only the accumulator additions are
    sequential, in chunk order, so the result does not depend on it.
    """
    batch = tuple(tf.convert_to_tensor(t) for t in batch)
    num_tasks = batch[0].shape[0]
    chunk = int(tasks_per_chunk)
    use_batched = chunk > 1 if use_batched is None else use_batched
    if chunk > 1 and (num_tasks is None or num_tasks % chunk):
        raise ValueError(f"tasks_per_chunk={chunk} must divide the number of tasks "
                         f"({num_tasks})")
    if num_tasks is None:
        num_tasks = tf.shape(batch[0])[0]
    num_chunks = num_tasks // chunk
    variables = learner.meta_variables
    n_params = len(learner.model.trainable_variables)
    num_steps = 0 if pretrain else learner.inner_steps

    def share(dtype):
        """This chunk's weight in the mean over the meta-batch, chunk / T, in ``dtype`` (a
        Python float through tf.cast would be rounded to float32 first)."""
        if isinstance(num_tasks, int):
            return tf.constant(chunk / num_tasks, dtype)
        return tf.cast(chunk, dtype) / tf.cast(num_tasks, dtype)

    def chunk_gradients(i):
        if use_batched:
            part = tuple(t[i * chunk:(i + 1) * chunk] for t in batch)
            part = tuple(tf.ensure_shape(p, [chunk] + t.shape[1:]) for p, t in zip(part, batch))
            grads, metrics = batched_lib.meta_gradients(learner, part, pretrain=pretrain)
            return grads, metrics
        task = tuple(t[i] for t in batch)
        # Read θ (and α) inside the loop body, so the tape watches this graph's tensors.
        current = learner._read(variables)
        params, lrs = current[:n_params], current[n_params:]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(current)
            out = learner._task_maml(params, lrs, task, num_steps, learner.first_order)
            objective = out["pre_loss"] if pretrain else out["post_loss"]
        grads = tape.gradient(objective, current,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads, out

    def body(i, grads_acc, metrics_acc):
        grads, metrics = chunk_gradients(i)
        grads_acc = [a + g * share(g.dtype) for a, g in zip(grads_acc, grads)]
        metrics_acc = {k: metrics_acc[k] + tf.cast(metrics[k], metrics_acc[k].dtype)
                       * share(metrics_acc[k].dtype) for k in metrics_acc}
        return i + 1, grads_acc, metrics_acc

    grads0, metrics0 = _zeros(learner, variables)
    # parallel_iterations=1: the next chunk starts only after this one's backward pass, so
    # one chunk's activations are alive at a time; p: up to p chunks run at once (one per
    # core: on 2 cores 1.45-1.6x faster, with p chunks' activations alive).
    _, grads, metrics = tf.while_loop(
        lambda i, *_: i < num_chunks, body, (tf.constant(0), grads0, metrics0),
        parallel_iterations=max(int(parallel_chunks), 1),
    )
    return list(grads), dict(metrics)


__all__ = ["meta_gradients"]
