"""What one training step does, as an orbit StandardTrainer, for any task:
the task (simclr/tasks/<train_mode>.py) says which loss terms and metrics a
step has; this module runs the forward pass, adds weight decay, checks that
the loss is finite, applies the gradients and averages the metrics over the
loop. The loop itself (when to checkpoint, summarise, stop) is the orbit
Controller's, set up in runner.py.

Losses are per replica, divided by num_replicas_in_sync before the gradient
(gradients are summed over replicas), as in the published code.
"""

from typing import Dict

import orbit
import tensorflow as tf
import tf_keras

from simclr import compat
from simclr import optimization
from simclr.configs import OptimizerConfig
from simclr.tasks.base import Task
from simclr.tasks.base import TrainingState


class NonFiniteLossError(RuntimeError):
  """A loss term or a weight became NaN or inf."""


class Trainer(orbit.StandardTrainer):
  """orbit trainer of `task`. train_dataset: the distributed dataset of the
  task's pipeline (simclr.data.Inputs.distributed_dataset)."""

  def __init__(self, task: Task, state: TrainingState,
               optimizer_config: OptimizerConfig, train_dataset,
               strategy: tf.distribute.Strategy, learning_rate=None,
               jit_compile: bool = False, summary_images: int = 3):
    self.task = task
    self.state = state
    self.optimizer_config = optimizer_config
    self.strategy = strategy
    self.learning_rate = learning_rate
    self.jit_compile = jit_compile
    self.summary_images = summary_images
    with strategy.scope():
      self.metrics = {
          name: tf_keras.metrics.Mean(f'train/{name}')
          for name in ['total_loss', 'weight_decay'] + task.metric_names()
      }
    # What the step updates, the optimizer's slots made for them
    # (build.build_training_state).
    self.trained_variables = state.trained_variables
    if not self.trained_variables:
      raise ValueError('the training state names no trained variables: '
                       'build it with build.build_training_state')
    step = self._replica_step
    if jit_compile:
      step = tf.function(step, jit_compile=True)
    self._step_fn = step
    super().__init__(
        train_dataset,
        options=orbit.StandardTrainerOptions(use_tf_while_loop=True))

  # -- orbit hooks ------------------------------------------------------------

  def train_loop_begin(self):
    for metric in self.metrics.values():
      metric.reset_states()

  def train_step(self, iterator):
    images, labels = next(iterator)
    self.strategy.run(self._step_fn, args=(images, labels))

  def train_loop_end(self) -> Dict[str, tf.Tensor]:
    results = {metric.name: metric.result()
               for metric in self.metrics.values()}
    if self.learning_rate is not None:
      step = tf.cast(self.state.global_step, tf.float32)
      results['learning_rate'] = (self.learning_rate(step) if callable(
          self.learning_rate) else tf.constant(self.learning_rate))
    step = int(self.state.global_step.numpy())
    bad = {k: float(v) for k, v in results.items()
           if not tf.math.is_finite(v)}
    if bad:
      raise NonFiniteLossError(
          f'non-finite training metrics in the steps up to step {step}: '
          f'{bad}')
    # Checked before the loop's checkpoint is written: a finite loss can
    # still come with an update that overflowed the weights.
    bad_weights = [v.name for v in self.state.model.variables
                   if not bool(tf.reduce_all(tf.math.is_finite(v)))]
    if bad_weights:
      raise NonFiniteLossError(
          f'non-finite weights after step {step} (the loss was finite): '
          f'{bad_weights[:5]}{" ..." if len(bad_weights) > 5 else ""}')
    return results

  # -- one step on one replica ------------------------------------------------

  def _replica_step(self, images, labels):
    state, task = self.state, self.task
    model = state.model
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    self._summarise_images(images)
    optimizer = state.optimizer
    scaled = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      terms = task.loss_terms(state, images, labels, outputs)
      weight_decay = optimization.weight_decay_loss(model,
                                                    self.optimizer_config)
      loss = tf.add_n(list(terms.losses.values()) + [weight_decay])
      reported = dict(terms.losses, **terms.metrics, weight_decay=weight_decay)
      if not self.jit_compile:  # XLA has no Assert; train_loop_end checks.
        loss = compat.assert_finite(loss, state.global_step + 1, reported)
      scaled_loss = loss / num_replicas
      if scaled:
        scaled_loss = optimizer.get_scaled_loss(scaled_loss)
    grads = tape.gradient(scaled_loss, self.trained_variables)
    # A variable the loss does not reach gets no update, as the optimizer
    # would do itself after a warning in every trace.
    pairs = [(g, v) for g, v in zip(grads, self.trained_variables)
             if g is not None]
    if scaled:
      unscaled = optimizer.get_unscaled_gradients([g for g, _ in pairs])
      pairs = list(zip(unscaled, [v for _, v in pairs]))
    optimizer.apply_gradients(pairs)
    task.after_update(state, terms)
    reported['total_loss'] = loss
    for name, metric in self.metrics.items():
      metric.update_state(reported[name])

  def _summarise_images(self, images):
    if not self.summary_images:
      return
    tf.summary.image('train/images', images[:self.summary_images],
                     step=self.state.global_step,
                     max_outputs=self.summary_images)
