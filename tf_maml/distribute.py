"""Distributed meta-training on TensorFlow's own engine (``tf.distribute``).

A meta-batch of B tasks is split over the R replicas of a strategy, B/R tasks each. Every
replica adapts its own tasks and takes the meta-gradient of Σ_(its tasks) L_i; the
replicas' gradients are all-reduced (summed) and divided by B, which gives ∇ (1/B) Σ_i L_i,
exactly the single-replica meta-gradient of the original's mean over tasks (to float
rounding: the sum runs in another order); then ONE meta-optimiser (Adam) step updates the
mirrored variables on every replica. Batch norm uses per-task statistics, so splitting the
tasks changes nothing else.

Build the model and the learner under ``strategy.scope()`` and the learner trains on every
replica; ``fit`` and the CLI feed each replica its own slice of each meta-batch::

    strategy = tf_maml.distribute.make_strategy("mirrored", num_cpu_devices=2)
    with strategy.scope():
        model = ...                              # a built Keras model
        learner = tf_maml.MetaLearner(model, tf_maml.losses.mse, inner_lr=0.01)
    learner.fit(tasks, iterations=1000, meta_batch_size=24)   # 12 tasks per replica

Strategies (``--distribution_strategy``): ``default`` (no distribution: today's single-device
path, untouched), ``mirrored`` (the GPUs of one machine, or ``num_cpu_devices`` logical CPU
devices), ``multi_worker_mirrored`` (several processes or machines described by the
``TF_CONFIG`` environment variable; collective all-reduce) and ``tpu``.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from tf_maml.errors import ConfigError
from tf_maml.tasks import TRAIN_STREAM, task_stream

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")  # --distribution_strategy
__all__ = [
    "STRATEGIES", "check_meta_batch_size", "configure_cpu_devices", "is_chief", "make_strategy",
    "replicated_step", "split_batch", "strategy_for", "task_batches", "values_on_all_workers",
]


def configure_cpu_devices(num_devices: int) -> list[str]:
    """Splits the machine's CPU into ``num_devices`` logical devices (for testing mirrored
    training on one machine); returns their names.

    Must run before TensorFlow executes any op: the device list is fixed when the runtime
    starts. Calling it again with the same number is harmless.
    """
    if num_devices < 1:
        raise ConfigError(f"--num_cpu_devices: must be >= 1, got {num_devices}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    current = tf.config.get_logical_device_configuration(cpu)  # does not start TensorFlow
    if (len(current) if current else 1) != num_devices:
        try:
            tf.config.set_logical_device_configuration(cpu, wanted)
        except RuntimeError as err:
            have = len(tf.config.list_logical_devices("CPU"))
            raise ConfigError(
                f"--num_cpu_devices={num_devices}: TensorFlow is already running with {have} "
                f"CPU device(s), and logical devices can only be configured before its first "
                f"op. Call tf_maml.distribute.configure_cpu_devices (or make_strategy) first "
                f"thing in the program ({err})"
            ) from err
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(name: str = "default", num_cpu_devices: int = 0) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy ``name`` (one of :data:`STRATEGIES`).

    ``mirrored``: with ``num_cpu_devices`` > 0, over that many logical CPU devices; else over
    every visible GPU (one CPU replica if there is none). ``multi_worker_mirrored``: the
    cluster of the ``TF_CONFIG`` environment variable, every local GPU (or the CPU) of each
    worker. ``tpu``: the TPU named by ``TPU_NAME`` or the TPU VM's own. Call this before any
    other TensorFlow op (logical devices and collective ops are set up at startup). A
    process has one strategy of each kind: a second call returns the first one's.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--distribution_strategy: {name!r} is not one of "
                          f"{', '.join(STRATEGIES)}")
    if num_cpu_devices and name != "mirrored":
        raise ConfigError("--num_cpu_devices: splitting the CPU into replicas is for "
                          f"--distribution_strategy=mirrored, not {name}")
    if name == "default":
        return tf.distribute.get_strategy()
    key = (name, num_cpu_devices, os.environ.get("TF_CONFIG"), os.environ.get("TPU_NAME"))
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _new_strategy(name, num_cpu_devices)
    return _STRATEGIES[key]


_STRATEGIES: dict[tuple, tf.distribute.Strategy] = {}


def _new_strategy(name: str, num_cpu_devices: int) -> tf.distribute.Strategy:
    if name == "mirrored":
        devices = configure_cpu_devices(num_cpu_devices) if num_cpu_devices else None
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        _check_tf_config()
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:
            raise ConfigError(
                "--distribution_strategy=multi_worker_mirrored must be set up before "
                f"TensorFlow runs its first op: create the strategy first thing ({err})"
            ) from err
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise ConfigError(f"--distribution_strategy=tpu: no TPU to connect to ({err}); set "
                          "TPU_NAME, or run on a TPU VM") from err
    return tf.distribute.TPUStrategy(resolver)


def _check_tf_config() -> None:
    text = os.environ.get("TF_CONFIG")
    if not text:
        return  # a one-worker cluster: runs like mirrored on this machine's devices
    try:
        spec = json.loads(text)
        spec["cluster"], spec["task"]["type"], spec["task"]["index"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            "--distribution_strategy=multi_worker_mirrored: TF_CONFIG must be JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}, got {text!r} ({err!r})'
        ) from None


def check_meta_batch_size(meta_batch_size: int, num_replicas: int, strategy_name: str = "",
                          ) -> None:
    """A :class:`ConfigError` naming the fix unless the meta-batch splits evenly over the
    replicas (every replica must adapt the same number of tasks). Also raised for
    ``MetaLearner.fit``, so it speaks of the argument; the command line says the flag."""
    if meta_batch_size % num_replicas == 0:
        return
    lower = meta_batch_size - meta_batch_size % num_replicas
    upper = lower + num_replicas
    options = f"`meta_batch_size={upper}`" if lower == 0 else (
        f"`meta_batch_size={lower}` or {upper}")
    what = f" of `distribution_strategy={strategy_name}`" if strategy_name else ""
    raise ConfigError(
        f"`meta_batch_size`: {meta_batch_size} tasks do not split evenly over the "
        f"{num_replicas} replicas{what}; use a multiple of {num_replicas}, e.g. {options} "
        "(or another number of replicas)"
    )


def strategy_for(config) -> tf.distribute.Strategy:
    """The strategy of a :class:`~tf_maml.config.Config`, its meta-batch size checked."""
    strategy = make_strategy(config.distribution_strategy, config.num_cpu_devices)
    check_meta_batch_size(config.meta_batch_size, strategy.num_replicas_in_sync,
                          config.distribution_strategy)
    return strategy


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes checkpoints, logs and results: always, except for the
    non-chief workers of a multi-worker strategy."""
    return strategy is None or bool(strategy.extended.should_checkpoint)


def current_strategy() -> tf.distribute.Strategy | None:
    """The strategy whose scope is active, or None outside any (the default strategy)."""
    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def is_distributed(batch) -> bool:
    """Whether ``batch`` holds per-replica values (from :func:`split_batch` or a distributed
    dataset) rather than a global meta-batch."""
    return any(isinstance(t, tf.distribute.DistributedValues) for t in tf.nest.flatten(batch))


# ---------------------------------------------------------------------- input
def split_batch(strategy: tf.distribute.Strategy, batch, where: str = "train_step"):
    """A global meta-batch (tensors with the task on the leading axis) as per-replica
    values: replica r of R gets tasks [r·B/R, (r+1)·B/R). In multi-worker training every
    worker must pass the same global batch."""
    tensors = tuple(tf.convert_to_tensor(t) for t in batch)
    num_tasks = tensors[0].shape[0]
    replicas = strategy.num_replicas_in_sync
    if num_tasks is None:
        raise ValueError(f"{where}: a distributed step needs a static number of tasks")
    if num_tasks % replicas:
        raise ValueError(f"{where}: {num_tasks} tasks do not split evenly over "
                         f"{replicas} replicas; pass a multiple of {replicas} tasks")
    per_replica = num_tasks // replicas

    def local_tasks(context):
        first = context.replica_id_in_sync_group * per_replica
        return tuple(t[first:first + per_replica] for t in tensors)

    return strategy.experimental_distribute_values_from_function(local_tasks)


def task_batches(strategy: tf.distribute.Strategy | None, source, meta_batch_size: int,
                 seed: int, start: int = 0, stream: int = TRAIN_STREAM):
    """Iterator over meta-batches ``start, start+1, ...`` of ``source``
    (:func:`tf_maml.tasks.task_stream`), split over the replicas of ``strategy``.

    Each input pipeline (one per worker) draws the whole global meta-batch i from its own
    generator seeded by (seed, i), exactly the tasks one process would train on, and keeps
    the slices of its local replicas; each of them dequeues one slice per step, so the
    replicas of a step together see meta-batch i once, each a different part of it.
    """
    if strategy is None:
        return iter(task_stream(source, meta_batch_size, seed, start, stream))
    replicas = strategy.num_replicas_in_sync
    check_meta_batch_size(meta_batch_size, replicas)
    per_replica = meta_batch_size // replicas

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local * per_replica

        def slices(*batch):
            return tf.data.Dataset.from_tensor_slices(tuple(
                tf.reshape(t[first:first + local * per_replica],
                           [local, per_replica, *t.shape[1:]])
                for t in batch))

        return task_stream(source, meta_batch_size, seed, start, stream).flat_map(slices)

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


# ---------------------------------------------------------------------- the step
def _all_reduce_sum(context, structure):
    """``context.all_reduce(SUM, structure)`` with one batched collective per dtype (a
    batch must not mix dtypes, e.g. float32 accuracies with float64 gradients)."""
    flat = tf.nest.flatten(structure)
    by_dtype: dict = {}
    for i, t in enumerate(flat):
        by_dtype.setdefault(t.dtype, []).append(i)
    reduced = list(flat)
    for indices in by_dtype.values():
        sums = context.all_reduce(tf.distribute.ReduceOp.SUM, [flat[i] for i in indices])
        for i, t in zip(indices, sums):
            reduced[i] = t
    return tf.nest.pack_sequence_as(structure, reduced)


def replicated_step(strategy: tf.distribute.Strategy, gradients_fn, apply_fn):
    """A meta-step over the replicas of ``strategy``, to run inside ``tf.function``.

    ``gradients_fn(local_batch) -> (grads, metrics)`` gives a replica's meta-gradients and
    metrics as means over ITS b tasks; times b they are sums over its tasks. One all-reduce
    (one batched collective per dtype) sums them, and the task counts, over the replicas:
    Σ over all B tasks, divided by B, is the global mean, the single-replica meta-gradient.
    ``apply_fn(grads, metrics)`` then runs once, in cross-replica context (the
    meta-optimiser updates every copy of the mirrored variables; its non-finite guard sees
    the same all-reduced values on every replica, so all skip or apply together).
    """
    def replica_fn(local_batch):
        grads, metrics = gradients_fn(local_batch)
        tasks = tf.shape(local_batch[0])[0]
        grads = [g * tf.cast(tasks, g.dtype) for g in grads]
        metrics = {k: v * tf.cast(tasks, v.dtype) for k, v in metrics.items()}
        context = tf.distribute.get_replica_context()
        return _all_reduce_sum(context, (grads, metrics, tf.cast(tasks, grads[0].dtype)))

    def step(batch):
        reduced = strategy.run(replica_fn, args=(batch,))
        # After the all-reduce every replica holds the same sums; this worker's first copy.
        grads, metrics, tasks = tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0], reduced)
        grads = [g / tf.cast(tasks, g.dtype) for g in grads]
        metrics = {k: v / tf.cast(tasks, v.dtype) for k, v in metrics.items()}
        return apply_fn(grads, metrics)

    return step


def values_on_all_workers(strategy: tf.distribute.Strategy | None, value: int) -> list[int]:
    """``value`` as every replica of a multi-worker strategy has it (one all-gather; every
    worker gets the same list), e.g. to check that all workers resume from the same
    iteration; ``[value]`` for any other strategy."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return [int(value)]
    local = tf.constant([int(value)], tf.int64)

    @tf.function
    def gather():
        return strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0)

    return [int(v) for v in gather()]
