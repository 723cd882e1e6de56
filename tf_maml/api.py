"""The public :class:`MetaLearner` (``tf_maml.MetaLearner``): the core learner
(:class:`tf_maml.learners.MetaLearner`) with ``fit`` (:mod:`tf_maml.train`) and ``export``
(:mod:`tf_maml.export`). They sit above the core, so they are added here, in a module above
all three: the core never imports its training loop or its export.
"""

from __future__ import annotations

from collections.abc import Sequence

from tf_maml import export as export_lib
from tf_maml import learners, train


class MetaLearner(learners.MetaLearner):
    # The core's docstring (arguments, example), which fit and export complete.
    __doc__ = learners.MetaLearner.__doc__

    def fit(
        self,
        tasks,
        iterations: int,
        meta_batch_size: int = 25,
        seed: int = 0,
        run_dir: str | None = None,
        resume: bool = True,
        callbacks: Sequence = (),
        log_interval: int | None = 100,
        pretrain_iterations: int = 0,
        nan_policy: str = "stop",
        log=print,
    ) -> int:
        """Meta-trains for ``iterations`` meta-batches; returns the last iteration.

        ``tasks`` is a task source (anything with ``sample_batch(meta_batch_size, rng)``,
        e.g. :class:`tf_maml.SinusoidTasks`) or an iterable / ``tf.data.Dataset`` of batches
        ``(support_x, support_y, query_x, query_y)``. With ``run_dir`` it holds that
        directory's lock, checkpoints there every 1000 iterations, resumes from the latest
        readable checkpoint (Adam state included; ``resume=False`` refuses a directory that
        holds checkpoints) and writes TensorBoard scalars and ``training_log.csv``; see
        docs/resuming.md. ``callbacks`` are :class:`tf_maml.callbacks.Callback` objects;
        progress is printed every ``log_interval`` iterations (None: silent). With a task
        source, the plan's "auto" and 1000 iterations or more to go, the plan's candidates
        are timed first and the fastest kept (:mod:`tf_maml.autotune`; cached in
        ``run_dir``; ``ExecutionPlan(autotune=False)`` keeps the rules' plan).
        """
        return train.fit_learner(
            self, tasks, iterations, meta_batch_size=meta_batch_size, seed=seed,
            run_dir=run_dir, resume=resume, callbacks=callbacks, log_interval=log_interval,
            pretrain_iterations=pretrain_iterations, nan_policy=nan_policy, log=log)

    def export(self, export_dir: str, num_steps: int = 10, **kwargs) -> str:
        """SavedModel with ``serving_default`` (θ's predictions) and ``adapt_and_predict``
        (``num_steps`` inner steps inside the graph, then query predictions), plus
        ``model.keras``; see :func:`tf_maml.export.export`."""
        return export_lib.export(self, export_dir, num_steps=num_steps, **kwargs)


__all__ = ["MetaLearner"]
