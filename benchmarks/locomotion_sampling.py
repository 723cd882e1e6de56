"""Sampling speed of the locomotion task families: environment steps per second and seconds
per meta-iteration's sampling, batched (all simulations in one ``mujoco.batch``, the policy
once per time step) against a plain loop (one ``LocomotionEnv``, one ``MjData`` stepped by
``mj_step``, per trajectory, through ``GymTasks``; the policy is batched there too).

    python -m benchmarks.locomotion_sampling                       # cheetah_vel and ant_vel
    python -m benchmarks.locomotion_sampling --families=cheetah_vel --threads=1,2
    python -m benchmarks.locomotion_sampling --full_iteration      # + one whole meta-iteration

A meta-iteration samples twice (the pre-update trajectories with θ, the post-update ones
with each task's adapted weights): 40 tasks × 20 trajectories × 200 steps each, through
the learner's own ``sample`` (its compiled policy, advantages included), with the paper's
randomly initialised policy (so the ant's episodes end early as an untrained ant's do: steps
are counted as they happened). The plain loop runs a smaller batch (``--loop_tasks`` ×
``--loop_trajectories``); per-step rates compare. ``--full_iteration`` also times one
``train_step`` (sampling twice, the inner step, the TRPO meta-update) after a first one that
traces the graphs, and projects the hours of a run of the authors' iteration count.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.common import names, run_main  # noqa: E402
from tf_maml.rl import training  # noqa: E402
from tf_maml.rl.gym_tasks import GymTasks  # noqa: E402
from tf_maml.tasks import locomotion  # noqa: E402
from tf_maml.tasks.locomotion_env import LocomotionEnv  # noqa: E402

ITERATIONS = {"cheetah": 1000, "ant": 800}  # n_itr of maml_rl's cluster_maml_trpo_*.py


def timed_sampling(learner, tasks, per_task: bool, seed: int) -> tuple[float, int]:
    """Seconds and environment steps of one ``learner.sample`` of ``tasks``."""
    weights = learner.params()
    if per_task:
        weights = [weights] * len(tasks)
    start = time.perf_counter()
    traj = learner.sample(weights, tasks, np.array([seed, 1]), per_task)
    seconds = time.perf_counter() - start
    return seconds, int(np.sum(traj["mask"]))


def batched(family: str, threads: int, num_tasks: int, num_trajectories: int) -> dict:
    learner = training.build_learner(task_family=family, num_trajectories=num_trajectories)
    learner.env.threads = threads
    tasks = learner.env.sample_tasks(num_tasks, np.random.default_rng(0))
    timed_sampling(learner, tasks[:2], False, 0)  # trace the policy outside the timing
    timed_sampling(learner, tasks[:2], True, 0)
    pre, pre_steps = timed_sampling(learner, tasks, False, 1)
    post, post_steps = timed_sampling(learner, tasks, True, 2)
    return {"steps_per_s": (pre_steps + post_steps) / (pre + post), "pre_s": pre,
            "post_s": post, "iteration_sampling_s": pre + post,
            "steps": pre_steps + post_steps}


def plain_loop(family: str, num_tasks: int, num_trajectories: int) -> float:
    """Environment steps per second of GymTasks over one LocomotionEnv per trajectory."""
    learner = training.build_learner(task_family=family, num_trajectories=num_trajectories)
    env = learner.env
    learner.env = GymTasks(lambda task: LocomotionEnv(family, goal=float(task[0])),
                           env.sample_tasks, env.observation_dim, env.action_dim, env.horizon)
    tasks = env.sample_tasks(num_tasks, np.random.default_rng(0))
    timed_sampling(learner, tasks[:1], False, 0)
    seconds, steps = timed_sampling(learner, tasks, False, 1)
    return steps / seconds


def full_iteration(family: str, num_tasks: int, num_trajectories: int,
                   sample_budget: str) -> float:
    """Seconds of one whole meta-iteration (after a first that traces the graphs)."""
    learner = training.build_learner(task_family=family, num_trajectories=num_trajectories,
                                     sample_budget=sample_budget)
    rng = np.random.default_rng(0)
    learner.train_step((learner.env.sample_tasks(num_tasks, rng), rng))
    start = time.perf_counter()
    stats = learner.train_step((learner.env.sample_tasks(num_tasks, rng), rng))
    seconds = time.perf_counter() - start
    print(f"  (step fraction {stats['step_fraction']:.3f}, KL {stats['kl']:.4f})")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="cheetah_vel,ant_vel")
    ap.add_argument("--threads", default="1,2", help="MuJoCo threads to compare (0: all)")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--trajectories", type=int, default=20)
    ap.add_argument("--loop_tasks", type=int, default=4)
    ap.add_argument("--loop_trajectories", type=int, default=5)
    ap.add_argument("--full_iteration", action="store_true")
    ap.add_argument("--sample_budget", default="steps", choices=("steps", "trajectories"),
                    help="the whole meta-iteration's budget (the flagfiles': steps)")
    args = ap.parse_args(argv)
    families = names("families", args.families, locomotion.TASK_FAMILIES, "family")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.tasks} tasks x {args.trajectories} trajectories x {locomotion.HORIZON} "
          "steps per sampling, two samplings per meta-iteration")
    for family in families:
        robot = family.split("_")[0]
        for threads in (int(t) for t in args.threads.split(",")):
            r = batched(family, threads, args.tasks, args.trajectories)
            print(f"{family} batched, {threads} thread(s): {r['steps_per_s']:,.0f} steps/s; "
                  f"sampling per meta-iteration {r['iteration_sampling_s']:.1f} s (pre-update "
                  f"{r['pre_s']:.1f} s, post-update {r['post_s']:.1f} s, "
                  f"{r['steps']:,} steps)")
        rate = plain_loop(family, args.loop_tasks, args.loop_trajectories)
        print(f"{family} plain loop ({args.loop_tasks} x {args.loop_trajectories} "
              f"trajectories): {rate:,.0f} steps/s")
        if args.full_iteration:
            seconds = full_iteration(family, args.tasks, args.trajectories,
                                     args.sample_budget)
            hours = seconds * ITERATIONS[robot] / 3600
            print(f"{family} one meta-iteration: {seconds:.1f} s; {ITERATIONS[robot]} "
                  f"iterations: {hours:.1f} h")
    return 0


if __name__ == "__main__":
    run_main(main)
