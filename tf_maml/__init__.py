"""tf_maml: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) for any Keras model.

Quick start::

    import keras, tf_maml
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(40, "relu"),
                              keras.layers.Dense(40, "relu"), keras.layers.Dense(1)])
    learner = tf_maml.MetaLearner(model, tf_maml.losses.mse, inner_lr=0.01)
    tasks = tf_maml.SinusoidTasks(num_support=10, num_query=10)
    for i in range(1000):
        learner.train_step(tasks.sample_batch(25, tf_maml.batch_rng(0, i)))
    fast = learner.adapt(support_x, support_y)          # θ' for a new task
    predictions = learner.predict(query_x, fast)
"""

# First, before anything imports TensorFlow: its start-up notices on a machine without a GPU
# (a false cuInit "error" among them) are kept out of every command's output.
from tf_maml import tf_startup

tf_startup.import_tensorflow()

from tf_maml import (  # noqa: E402
    adapt,  # the module; its adapt() is THE inner loop
    distribute,  # tf.distribute strategies: a meta-batch split over replicas
    losses,
    options,  # the learner's options: inner rates, objectives, the meta-optimiser, ...
)
from tf_maml.api import MetaLearner  # noqa: E402 (the core with fit and export)
from tf_maml.config import Config, ConfigError  # noqa: E402
from tf_maml.mapping import ExecutionPlan  # noqa: E402
from tf_maml.tasks import batch_rng, task_stream  # noqa: E402
from tf_maml.tasks.sinusoid import SinusoidTasks  # noqa: E402
from tf_maml.threads import configure_threads  # noqa: E402

__all__ = [
    "Config", "ConfigError", "ExecutionPlan", "MetaLearner", "SinusoidTasks", "adapt", "batch_rng",
    "configure_threads", "distribute", "losses", "options", "task_stream",
]
__version__ = "0.1.0"
