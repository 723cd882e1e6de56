"""The execution plan: how the tasks of a meta-batch are run. Speed and memory only, never a
number: every mapping it picks gives the per-task loop's meta-gradients (up to the order of
float additions).

An :class:`ExecutionPlan` holds the speed knobs, each with an automatic default; for a model
and a batch's shapes (known when ``tf.function`` traces) it picks a mapping:

* for meta-gradients (:meth:`ExecutionPlan.for_gradients`, under an outer tape), "auto":
  a conv net that :mod:`tf_maml.mapping.batched` supports runs every task at once through
  batched kernels while all tasks' im2col patches stay under ``accumulate_patch_budget``
  (``parallel_chunk_patch_budget`` with several cores); beyond that, meta-gradients are
  accumulated over chunks of tasks (:mod:`tf_maml.mapping.accumulate`), each chunk the most
  tasks within that budget (batched), or one task through the model itself when the batched
  path cannot run the model or one task's patches exceed ``batched_patch_budget``
  (MiniImageNet). A dense net runs on ``tf.vectorized_map``, a recurrent one on ``map_fn``.
* for evaluation and Reptile (:meth:`ExecutionPlan.for_tasks`, no outer tape): batched while
  the patches fit ``batched_patch_budget``, else the per-task mapping.

The budgets were tuned on one processor; :meth:`ExecutionPlan.candidates` lists the few
plans "auto" could as well have picked for the meta-gradients, which :mod:`tf_maml.autotune`
times on the CPU at hand at the start of training.
"""

from __future__ import annotations

import dataclasses

import keras

from tf_maml import keras_internals
from tf_maml import threads as threads_lib
from tf_maml.errors import check_switch, is_count
from tf_maml.mapping import batched as batched_lib
from tf_maml.mapping.accumulate import Accumulate
from tf_maml.mapping.per_task import PerTask

# How the tasks of a meta-batch are mapped ("auto": chosen from the model and the machine).
TASK_PARALLELISM = ("auto", "batched", "vectorized", "map", "loop", "accumulate")


def _has_conv(model: keras.Model) -> bool:
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    return any(isinstance(layer, conv_types) for layer in keras_internals.layers_of(model))


def _one_intra_op_thread() -> bool:
    """Whether TensorFlow runs each op on one thread (``configure_threads`` set it): then
    chunks one at a time would leave every other core idle."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() == 1


def _has_recurrent(model: keras.Model) -> bool:
    return any(isinstance(layer, keras.layers.RNN) for layer in keras_internals.layers_of(model))


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How a :class:`~tf_maml.MetaLearner` runs the tasks of a meta-batch.

    Args:
      task_parallelism: ``"auto"`` (see the module doc), ``"batched"`` (every task through
        batched kernels), ``"vectorized"`` (``tf.vectorized_map``), ``"map"``
        (``tf.map_fn``), ``"loop"`` (unrolled: the reference) or ``"accumulate"``
        (meta-gradients summed chunk by chunk, in chunks as "auto" would pick them, one
        task per chunk for a net without convolutions; evaluation and Reptile then run
        one task at a time).
      tasks_per_chunk: with ``"accumulate"``, this many tasks per chunk (must divide the
        meta-batch; above 1 the model must be one the batched path supports, 1 runs each
        task through the model itself). 1 holds the least memory. None: chosen by the
        budgets. With ``"auto"`` (a conv net): the meta-gradients' chunks so fixed (what
        autotuning chose), evaluation and Reptile as "auto" runs them.
      parallel_chunks: accumulated chunks that run at once (``tf.while_loop``'s
        ``parallel_iterations``); None: one per CPU core this process may use (one on a
        machine with a GPU), at most the number of chunks. Memory grows with it; 1 holds
        the least.
      batched_patch_budget: bytes of im2col patches (one support + one query pass,
        :func:`tf_maml.mapping.batched.patch_bytes`) above which tasks stay off the
        batched path (Omniglot: 51-101 MB; MiniImageNet 84x84: ~1 GB).
      accumulate_patch_budget: chunks (and "auto"'s one batched pass) hold at most this
        much when chunks run one at a time (Omniglot: 16 tasks of 5-way 1-shot, 4 of
        20-way 1-shot).
      parallel_chunk_patch_budget: the same when several chunks run at once, one per core:
        chunks this small stay in a core's cache (Omniglot: 2 tasks of 5-way 1-shot, 1 of
        20-way).
      autotune: with ``"auto"`` and no chunking set by hand, training
        (``MetaLearner.fit``, the ``tf-maml`` command) times :meth:`candidates` at its start
        and keeps the fastest (:mod:`tf_maml.autotune`); False: the budgets' plan.
      cache_body_features: when only the head adapts (ANIL), the inner loop runs the body
        once per task and the head alone at each step (:class:`tf_maml.adapt.Split`);
        False: the whole model at every step (the reference, for benchmarks).
    """

    task_parallelism: str = "auto"
    tasks_per_chunk: int | None = None
    parallel_chunks: int | None = None
    batched_patch_budget: int = 256 * 2**20
    accumulate_patch_budget: int = 32 * 2**20
    parallel_chunk_patch_budget: int = 4 * 2**20
    autotune: bool = True
    cache_body_features: bool = True

    def __post_init__(self):
        if self.task_parallelism not in TASK_PARALLELISM:
            raise ValueError(f"task_parallelism must be one of {TASK_PARALLELISM}, got "
                             f"{self.task_parallelism!r}")
        # Whole numbers: else 2.5 tasks per chunk ran 2, and a budget of -1 or "4MB" failed
        # in a comparison deep in the plan's rules, or put every task on the slow path.
        if self.tasks_per_chunk is not None and (
                self.task_parallelism not in ("accumulate", "auto")
                or not is_count(self.tasks_per_chunk, 1)):
            raise ValueError("tasks_per_chunk needs task_parallelism='accumulate' (or 'auto') "
                             f"and a positive whole number, got {self.tasks_per_chunk!r}")
        if self.parallel_chunks is not None and not is_count(self.parallel_chunks, 1):
            raise ValueError(f"parallel_chunks must be a positive whole number (or None: one "
                             f"per CPU core), got {self.parallel_chunks!r}")
        for name in ("batched_patch_budget", "accumulate_patch_budget",
                     "parallel_chunk_patch_budget"):
            if not is_count(getattr(self, name), 1):
                raise ValueError(f"{name} must be a whole number of bytes >= 1, got "
                                 f"{getattr(self, name)!r}")
        for name in ("autotune", "cache_body_features"):
            check_switch(name, getattr(self, name))  # else "no" was true

    def check(self, model: keras.Model) -> None:
        """A ValueError if this plan cannot run ``model`` (said when the learner is built)."""
        if self.task_parallelism == "batched" and not batched_lib.supports(model):
            raise ValueError("task_parallelism='batched' cannot run this model: "
                             f"{batched_lib.unsupported_reason(model)}")
        if (self.tasks_per_chunk is not None and int(self.tasks_per_chunk) > 1
                and not batched_lib.supports(model)):
            raise ValueError(f"tasks_per_chunk={self.tasks_per_chunk} needs a model that "
                             "the batched path (tf_maml.mapping.batched) supports (else "
                             f"chunks hold one task): {batched_lib.unsupported_reason(model)}")

    # ------------------------------------------------------------------ choices
    def for_gradients(self, model: keras.Model, batch):
        """The mapping of meta-gradients for a batch of these shapes (``batch``: 4 tensors
        or TensorSpecs)."""
        chunking = self._chunking(model, batch)
        if chunking is not None:
            chunk, use_batched, parallel = chunking
            inner = batched_lib.Batched(model) if use_batched else PerTask(model, "loop")
            return Accumulate(inner, chunk, parallel)
        return self.for_tasks(model, batch)

    def for_tasks(self, model: keras.Model, batch):
        """The mapping of work without an outer tape (evaluation, Reptile)."""
        if self._use_batched(model, batch):
            return batched_lib.Batched(model)
        mode = self.task_parallelism
        if mode == "accumulate":  # one task at a time, the least memory
            return PerTask(model, "map", parallel_iterations=1)
        if mode == "auto":
            # pfor has no batched kernel for a per-task conv filter gradient (it falls back
            # to a while loop, slower than map_fn) and cannot vectorise RNN while loops.
            loops = _has_conv(model) or _has_recurrent(model)
            mode = "map" if loops else "vectorized"
        return PerTask(model, mode)

    def candidates(self, model: keras.Model, batch) -> list[ExecutionPlan]:
        """The plans autotuning times for the meta-gradients of a batch of these shapes:
        this plan's own (first) and, for a conv net under "auto" with nothing set by hand,
        the other chunkings the rules choose between: chunks by the one-at-a-time budget
        (larger), one task per chunk through the model, each with a chunk per core, and,
        when TensorFlow may split an op over the cores, the larger chunks one at a time.
        Every one gives the same meta-gradients up to the order of float additions. One
        candidate (nothing to choose) when a knob is set by hand or the shapes are not
        static."""
        own = dataclasses.replace(self, autotune=False)
        if not (self.task_parallelism == "auto" and self.tasks_per_chunk is None
                and self.parallel_chunks is None and _has_conv(model)):
            return [own]
        num_tasks = batch[0].shape[0]
        shapes = [(1, *batch[0].shape[1:]), (1, *batch[2].shape[1:])]
        if num_tasks is None or any(d is None for shape in shapes for d in shape):
            return [own]
        cores = self.cores()
        plans = [own]
        if batched_lib.supports(model):
            per_task = batched_lib.patch_bytes(model, shapes)
            budget = min(self.accumulate_patch_budget, self.batched_patch_budget)
            larger = max(c for c in range(1, num_tasks + 1) if num_tasks % c == 0
                         and (c * per_task <= budget or c == 1))
            plans.append(dataclasses.replace(own, tasks_per_chunk=larger,
                                             parallel_chunks=cores))
            if cores > 1 and not _one_intra_op_thread():
                plans.append(dataclasses.replace(own, tasks_per_chunk=larger,
                                                 parallel_chunks=1))
        plans.append(dataclasses.replace(own, tasks_per_chunk=1, parallel_chunks=cores))
        unique: dict[str, ExecutionPlan] = {}
        for plan in plans:
            unique.setdefault(plan.describe(model, batch), plan)
        return list(unique.values())

    def describe(self, model: keras.Model, batch) -> str:
        """How the meta-gradients of such a batch are mapped, in words (e.g. ``"batched"``,
        ``"accumulate (8 tasks/chunk, batched)"``, ``"map"``)."""
        return self.for_gradients(model, batch).name

    # ------------------------------------------------------------------ the rules
    def _use_batched(self, model, batch) -> bool:
        if self.task_parallelism == "batched":
            return True
        if not (self.task_parallelism == "auto" and _has_conv(model)
                and batched_lib.supports(model)):
            return False
        # Omniglot conv4 on CPU: 1.8x (second order) to 2.2x (first order) faster than
        # map_fn (benchmarks/batched_vs_map.py); dense nets stay on pfor, which is faster.
        shapes = [tuple(batch[0].shape), tuple(batch[2].shape)]
        if any(d is None for shape in shapes for d in shape):
            return False
        return batched_lib.patch_bytes(model, shapes) <= self.batched_patch_budget

    def cores(self) -> int:
        """Chunks that may run at once by default: one per CPU core, one with a GPU."""
        if self.parallel_chunks is not None:
            return int(self.parallel_chunks)
        if threads_lib.has_accelerator():
            return 1
        return threads_lib.available_cores()

    def _chunking(self, model, batch) -> tuple[int, bool, int] | None:
        """None: all tasks under one tape (no accumulation); else (tasks per chunk, whether
        a chunk runs batched, chunks at once)."""
        explicit = self.task_parallelism == "accumulate"
        if not (explicit or (self.task_parallelism == "auto" and _has_conv(model))):
            return None
        num_tasks = batch[0].shape[0]
        cores = self.cores()

        def chunking(chunk, use_batched):
            chunks = None if num_tasks is None else max(num_tasks // chunk, 1)
            return chunk, use_batched, cores if chunks is None else min(cores, chunks)

        if self.tasks_per_chunk is not None:
            return chunking(int(self.tasks_per_chunk), int(self.tasks_per_chunk) > 1)
        shapes = [(1, *batch[0].shape[1:]), (1, *batch[2].shape[1:])]
        if (not batched_lib.supports(model) or num_tasks is None
                or any(d is None for shape in shapes for d in shape)):
            return chunking(1, False)
        per_task = batched_lib.patch_bytes(model, shapes)
        budget = (self.accumulate_patch_budget if cores == 1
                  else self.parallel_chunk_patch_budget)
        if per_task == 0 or per_task > min(budget, self.batched_patch_budget):
            return chunking(1, False)
        if not explicit and per_task * num_tasks <= budget:
            return None  # auto: one batched pass over every task (see _use_batched)
        chunk = max(c for c in range(1, num_tasks + 1) if num_tasks % c == 0
                    and (c * per_task <= budget or c == 1))
        return chunking(chunk, chunk > 1)
