"""Autotuning: the execution plan that is fastest on the CPU at hand, measured at the start
of training, like cuDNN's benchmark mode.

The rules of :class:`~tf_maml.mapping.ExecutionPlan` (patch budgets, a chunk per core)
were tuned on one processor. With ``task_parallelism="auto"`` and no chunking set by hand,
:func:`tune` times the few plans those rules choose between
(:meth:`ExecutionPlan.candidates`) on one meta-batch and keeps the fastest. It changes the
speed, never a number:

* every candidate gives the same meta-gradients up to the order of float additions
  (``tests/test_mapping_*.py``);
* the meta-batch it times comes from a stream of its own
  (:data:`tf_maml.tasks.AUTOTUNE_STREAM`): training draws exactly the tasks it would draw
  without it;
* it computes meta-gradients only, in functions of its own: no update is applied, the
  weights, Adam's state and every other variable are untouched.

The choice is cached in ``<run_dir>/plan.json`` with what it depends on (the processor
and its vector extensions, TensorFlow, the intra-op threads, the shapes of the model and
the meta-batch), so a resume on the same machine does not measure again; another
processor, another TensorFlow or other shapes measure again and say why.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import time
from collections.abc import Callable

from tf_maml import atomic, rundir
from tf_maml import threads as threads_lib
from tf_maml.mapping import ExecutionPlan
from tf_maml.protocols import Learner, TunableLearner
from tf_maml.tasks import AUTOTUNE_STREAM, batch_rng

PLAN_NAME = "plan.json"
# Training shorter than this keeps the rules' plan: measuring costs a few traces and steps
# (Omniglot 5-way: 31 s on a heavily loaded 2-core AMD EPYC, Zen 5, AVX-512, where the run
# takes hours; docs/performance.md).
MIN_ITERATIONS = 1000
# Timing stops after this many seconds (traces included) once every candidate has one
# timed round; at most ROUNDS rounds, each about ROUND_SECONDS per candidate.
BUDGET_SECONDS = 60.0
ROUNDS = 5
ROUND_SECONDS = 0.5
# Another plan replaces the rules' only when it is this much faster: timing noise on a
# shared machine must not flip the plan.
MARGIN = 0.03
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Timing:
    """One candidate's measured speed: its mapping in words and seconds per meta-step
    (median of the rounds)."""

    mapping: str
    seconds: float


def wanted(learner: Learner) -> bool:
    """Whether ``learner`` has an execution plan (a :class:`TunableLearner`; not the
    baselines' classifier, which trains on minibatches of images) that asks for autotuning:
    "auto" with ``autotune`` and no chunking set by hand, one device, an algorithm whose step
    takes meta-gradients (not Reptile, which maps its tasks without an outer tape)."""
    if not isinstance(learner, TunableLearner):
        return False
    plan = learner.plan
    return bool(plan.autotune and plan.task_parallelism == "auto"
                and plan.tasks_per_chunk is None and plan.parallel_chunks is None
                and learner.strategy is None and learner.algorithm != "reptile")


def tune(learner: Learner, source, meta_batch_size: int, seed: int, iterations_left: int,
         run_dir: str | None = None, pretrain: bool = False,
         log: Callable[[str], None] = print) -> ExecutionPlan | None:
    """Sets ``learner``'s plan to the fastest of its candidates on this CPU (read from
    ``run_dir``'s ``plan.json`` if measured there for this CPU and these shapes, else
    timed, if ``iterations_left`` >= :data:`MIN_ITERATIONS`) and returns it.

    ``source``: the training task source (``sample_batch(meta_batch_size, rng)``); one
    meta-batch is drawn from the autotuning stream of ``seed``. ``pretrain``: time the
    pretraining objective (the pretrained baseline). Nothing if the plan does not ask for
    it (:func:`wanted`) or has a single candidate; None for a learner without a plan.
    """
    path = os.path.join(run_dir, PLAN_NAME) if run_dir is not None else None
    short = iterations_left < MIN_ITERATIONS
    if not isinstance(learner, TunableLearner):
        return None
    if not wanted(learner) or (short and (path is None or not os.path.exists(path))):
        return learner.plan
    batch = learner.checked_batch(source.sample_batch(
        meta_batch_size, batch_rng(seed, 0, AUTOTUNE_STREAM)), "autotune")
    candidates = learner.plan.candidates(learner.model, batch)
    if len(candidates) < 2:
        return learner.plan
    names = [plan.describe(learner.model, batch) for plan in candidates]
    key = cache_key(learner, batch, names, pretrain)
    # A run too short to measure only reads a cached choice, and says nothing otherwise.
    cached = (read_cache(path, key, (lambda line: None) if short else log)
              if path is not None else None)
    if cached is not None and cached in names:
        chosen = candidates[names.index(cached)]
        log(f"Plan: {cached} ({_hand_set(chosen)}measured on this CPU before, {PLAN_NAME}; "
            "`autotune=False` keeps the rules' plan)")
        learner.use_plan(chosen)
        return chosen
    if short:
        return learner.plan
    t0 = time.perf_counter()
    timings, rounds, steps = measure(learner, batch, candidates, pretrain)
    cost = time.perf_counter() - t0
    best = choose(timings)
    chosen = candidates[best]
    log(f"Plans timed on this CPU (meta-gradients, s/step, median of {rounds} round"
        f"{'s' if rounds > 1 else ''} of {steps}): "
        + ", ".join(f"{t.mapping} {t.seconds:.3g}" for t in timings)
        + f"; measuring took {cost:.0f} s")
    log(f"Plan: {names[best]} ({_hand_set(chosen)}"
        + ("the rules' own" if best == 0 else "the fastest")
        + (f"; cached in {PLAN_NAME}" if path else "")
        + "; `autotune=False` keeps the rules' plan)")
    if path is not None:
        write_cache(path, key, names[best], timings, log)
    learner.use_plan(chosen)
    return chosen


def _hand_set(plan: ExecutionPlan) -> str:
    """The settings that give ``plan``'s meta-gradients by hand, for the log."""
    if plan.tasks_per_chunk is None:
        return ""
    return (f"as `task_parallelism=accumulate` `tasks_per_chunk={plan.tasks_per_chunk}` "
            f"`parallel_chunks={plan.parallel_chunks}`; ")


# ---------------------------------------------------------------------- measuring
def measure(learner: TunableLearner, batch, candidates: list[ExecutionPlan], pretrain: bool = False
            ) -> tuple[list[Timing], int, int]:
    """Seconds per meta-gradient step of each candidate on ``batch``: (timings, rounds,
    steps per round). Each candidate runs in a ``tf.function`` of its own, traced and run
    twice untimed, then in rounds that alternate the candidates (the load of a shared
    machine changes slowly), median over the rounds. Only meta-gradients are computed:
    nothing is applied."""
    import tensorflow as tf

    start = time.perf_counter()
    fns = [tf.function(lambda b, p=plan: learner.meta_gradients(b, pretrain, plan=p),
                       autograph=False)
           for plan in candidates]

    def run(fn) -> float:
        t0 = time.perf_counter()
        _, metrics = fn(batch)
        metrics["pre_loss"].numpy()  # waits for the step
        return time.perf_counter() - t0

    warm = []
    for fn in fns:
        run(fn)  # traces
        warm.append(run(fn))
    steps = max(1, round(ROUND_SECONDS / max(min(warm), 1e-6)))
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(ROUNDS):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            samples[i].append(sum(run(fns[i]) for _ in range(steps)) / steps)
        if time.perf_counter() - start > BUDGET_SECONDS:
            break
    del fns
    gc.collect()  # the candidates' graphs and buffers
    names = [plan.describe(learner.model, batch) for plan in candidates]
    timings = [Timing(n, statistics.median(s)) for n, s in zip(names, samples)]
    return timings, len(samples[0]), steps


def choose(timings: list[Timing]) -> int:
    """The index of the plan to keep: the fastest, unless the first (the rules' own) is
    within :data:`MARGIN` of it."""
    best = min(range(len(timings)), key=lambda i: timings[i].seconds)
    if timings[best].seconds >= timings[0].seconds * (1 - MARGIN):
        return 0
    return best


# ---------------------------------------------------------------------- the cache
def cache_key(learner: TunableLearner, batch, names: list[str], pretrain: bool) -> dict:
    """What a measured choice holds for: this CPU, the software, and the workload (the
    shapes of the weights and the meta-batch, the inner steps, the order, the candidates)."""
    import tensorflow as tf

    return {
        "cpu": threads_lib.cpu_identity(),
        "software": {"tensorflow": tf.__version__,
                     "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
                     "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()},
        "workload": {"batch": [list(t.shape) for t in batch],
                     "weights": [list(v.shape) for v in learner.meta_variables],
                     "inner_steps": learner.inner_steps, "first_order": learner.first_order,
                     "objective": "pretrain" if pretrain else learner.algorithm,
                     "candidates": names},
    }


def read_cache(path: str, key: dict, log: Callable[[str], None] = print) -> str | None:
    """The mapping cached in ``path`` for ``key``, or None (with a line saying why when
    the file exists but does not hold: unreadable, another CPU, other shapes)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        saved, choice = data["key"], data["choice"]["mapping"]
        if not (isinstance(saved, dict) and isinstance(choice, str)):
            raise ValueError("unexpected layout")
    except (OSError, ValueError, KeyError, TypeError) as err:
        log(f"WARNING: {path} is unreadable ({type(err).__name__}: {err}); measuring the "
            "plans again and replacing it (checkpoints are not touched).")
        return None
    if saved.get("cpu") != key["cpu"]:
        before = saved.get("cpu") if isinstance(saved.get("cpu"), dict) else {}
        log(f"The plan in {PLAN_NAME} was measured on another CPU ({_cpu(before)}); "
            f"measuring again on this one ({_cpu(key['cpu'])}).")
        return None
    if saved != key:
        changed = ", ".join(k for k in key if saved.get(k) != key[k])
        log(f"The plan in {PLAN_NAME} was measured for another {changed.replace('_', ' ')}; "
            "measuring again.")
        return None
    return choice


def _cpu(cpu: dict) -> str:
    isa = cpu.get("isa") or []
    vector = ("AVX-512" if "avx512f" in isa else "AVX2" if "avx2" in isa
              else "no AVX2" if isa else "?")
    return f"{cpu.get('model', '?')}, {vector}, {cpu.get('cores', '?')} cores"


def write_cache(path: str, key: dict, mapping: str, timings: list[Timing],
                log: Callable[[str], None] = print) -> None:
    """Writes the choice whole (a temporary and a rename). A failed write costs only a new
    measurement next time: a warning, training goes on."""
    data = {"version": _VERSION, "key": key, "choice": {"mapping": mapping},
            "measured_s_per_step": {t.mapping: t.seconds for t in timings},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    run_dir = os.path.dirname(path) or "."
    try:
        with rundir.writing(run_dir, f"write {PLAN_NAME}"):
            atomic.write(path, json.dumps(data, indent=2) + "\n")
    except rundir.RunDirError as err:
        log(f"WARNING: {err} (the plan will be measured again next time)")
