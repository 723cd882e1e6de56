"""``python -m tf_maml.rl.run``: re-evaluates a finished RL run (navigation or locomotion) with
a step size per test step (e.g. the authors' test script, which halved α after the first step),
writing
``test_returns_steps<α1>_<α2>_....csv`` beside the run's ``test_returns.csv``::

    python -m tf_maml.rl.run --run_dir=logs/navigation/<run> --step_sizes=0.1,0.05,0.05

A command line, above every module: it reads its flags and the run's config.json through
:func:`tf_maml.runner.reevaluate_rl` (the library is :mod:`tf_maml.rl.training`).
"""

import re
import sys

from absl import app, flags

from tf_maml import runner

flags.DEFINE_string("run_dir", None, "a finished RL run directory")
flags.DEFINE_list("step_sizes", None, "alpha of each test step, e.g. 0.1,0.05,0.05 (the "
                  "authors' test script halved alpha after the first step)")
flags.DEFINE_integer("num_test_tasks", 0, "test tasks (0: the run's --num_test_tasks)")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from tf_maml.checkpoint import CheckpointError
    from tf_maml.errors import ConfigError
    from tf_maml.rundir import RunDirError

    try:
        runner.reevaluate_rl(flags.FLAGS.run_dir, flags.FLAGS.step_sizes,
                             flags.FLAGS.num_test_tasks)
    except (ConfigError, CheckpointError, RunDirError) as err:
        # The library's `name=value` are the flags of tf-maml, which trained the run.
        message = re.sub(r"`(\w+)(=[^`]*)?`", r"--\1\2", str(err))
        print(f"tf_maml.rl.run: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["run_dir", "step_sizes"])
    from tf_maml.errors import exit_on_flagfile_problem

    exit_on_flagfile_problem("tf_maml.rl.run")
    app.run(main)
