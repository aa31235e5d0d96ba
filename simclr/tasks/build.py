"""Building a trainable run: the one place where a task's model, the
learning-rate schedule, the optimiser, the global step and the task's extra
state are made, and the trainer that steps them. A run (runner.py), the
benchmarks (tools/bench.py, tools/bench_memory.py) and the tests all build
through here, so that what they time or check is the step training runs.

    state = build_training_state(configs, task, strategy, num_examples=1438,
                                 train_steps=600)
    trainer = build_trainer(configs, task, state, dataset, strategy)
    trainer.train(tf.constant(50, tf.int32))
"""

import tensorflow as tf
import tf_keras

from simclr import optimization
from simclr.configs import RunConfigs
from simclr.models.simclr_model import build_model
from simclr.tasks.base import Task
from simclr.tasks.base import TrainingState
from simclr.tasks.trainer import Trainer


def build_training_state(configs: RunConfigs, task: Task,
                         strategy: tf.distribute.Strategy, num_examples: int,
                         train_steps: int) -> TrainingState:
  """Lets the task prepare (distill: loads its teacher), then builds in the
  strategy's scope: the model of task.model_config(), the warm-up + cosine
  schedule of `train_steps` steps over `num_examples` examples, the
  optimiser of --optimizer (wrapped for loss scaling under
  --precision=float16, as mixed float16 needs), the global step and the
  task's extra state. Nothing is restored or initialised from a checkpoint
  yet; the Keras precision policy must be set before (runner.set_precision).
  """
  task.prepare(strategy)
  with strategy.scope():
    model = build_model(task.model_config())
    learning_rate = optimization.build_learning_rate(
        configs.optimizer, configs.data.train_batch_size, num_examples,
        train_steps)
    optimizer = optimization.build_optimizer(configs.optimizer,
                                             learning_rate)
    if configs.train.precision == 'float16':
      optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    state = TrainingState(model=model, optimizer=optimizer,
                          learning_rate=learning_rate)
    state.global_step  # pylint: disable=pointless-statement
    state.extras = task.extra_state(state)
    # Every variable exists before the train step is first traced: it is
    # traced once, not twice.
    state.trained_variables = task.trained_variables(state)
    optimization.create_slots(optimizer, state.trained_variables)
  return state


def build_trainer(configs: RunConfigs, task: Task, state: TrainingState,
                  dataset, strategy: tf.distribute.Strategy,
                  summary_images: int = 3) -> Trainer:
  """The trainer of `task` stepping `state` on a distributed `dataset`
  (--jit_compile from the configs); summary_images=0 writes no image
  summaries (benchmarks and tests)."""
  return Trainer(task, state, configs.optimizer, dataset, strategy,
                 learning_rate=state.learning_rate,
                 jit_compile=configs.train.jit_compile,
                 summary_images=summary_images)
