"""What one training step does, for each train_mode, as an orbit
StandardTrainer; the loop (when to checkpoint, summarise, evaluate) is the
orbit Controller's, set up in simclr/tasks/runner.py.

Losses per replica, then divided by num_replicas_in_sync before the gradient
(gradients are summed over replicas), as in the published code:
- pretrain: NT-Xent over the global batch (with the memory of momentum keys
  when memory_size > 0) on the published scale (both views' losses added,
  `reduction='sum_views'`), + cross-entropy of the linear head on stopped
  features when lineareval_while_pretraining, + weight decay.
- finetune / linear_eval (augmented protocol): cross-entropy + weight decay.
- distill: SimCLRv2 Eq. 2 (distill_alpha = 1) or Eq. 3 on the labeled rows,
  teacher in inference mode, + weight decay.
"""

import dataclasses
from typing import Dict, Optional

import orbit
import tensorflow as tf
import tf_keras

from simclr import losses
from simclr import optimization
from simclr.configs import TrainConfig
from simclr.models.momentum import MemoryQueue
from simclr.models.momentum import MomentumEncoder
from simclr.models.simclr_model import SimCLRModel


class NonFiniteLossError(RuntimeError):
  """A loss term or a weight became NaN or inf."""


# Starts the message of the in-graph check of the loss, so that the runner
# can tell it from other errors.
NON_FINITE_MARKER = 'SIMCLR_NON_FINITE_LOSS'


@dataclasses.dataclass
class TrainingState:
  """Everything a step reads or changes; all of it is checkpointed."""
  model: SimCLRModel
  optimizer: tf_keras.optimizers.legacy.Optimizer
  teacher: Optional[SimCLRModel] = None
  momentum_encoder: Optional[MomentumEncoder] = None
  memory_queue: Optional[MemoryQueue] = None

  @property
  def global_step(self) -> tf.Variable:
    return self.optimizer.iterations

  def checkpoint(self) -> tf.train.Checkpoint:
    """The checkpoint of a model_dir. `model` sits at the key `model`, where
    the published run.py puts it too; the teacher is not saved (it comes from
    --teacher_checkpoint)."""
    items = dict(model=self.model, optimizer=self.optimizer,
                 global_step=self.global_step)
    if self.momentum_encoder is not None:
      items['momentum_encoder'] = self.momentum_encoder
      items['memory_queue'] = self.memory_queue
    return tf.train.Checkpoint(**items)


def _metric_names(train_mode: str, has_supervised: bool, distill_labels: bool):
  names = ['total_loss', 'weight_decay']
  if train_mode == 'pretrain':
    names += ['contrast_loss', 'contrast_acc', 'contrast_entropy']
  if train_mode == 'distill':
    names += ['distill_loss', 'teacher_student_agreement']
    if distill_labels:
      names += ['supervised_loss', 'supervised_acc']
  elif has_supervised:
    names += ['supervised_loss', 'supervised_acc']
  return names


class SimCLRTrainer(orbit.StandardTrainer):
  """orbit trainer for every train_mode. `train_dataset` is the distributed
  dataset of simclr.data.Inputs for the mode ('pretrain' for pretraining,
  'finetune' / 'linear_eval' / 'distill' otherwise)."""

  def __init__(self, state: TrainingState, config: TrainConfig,
               optimizer_config: optimization.OptimizerConfig,
               train_dataset, strategy: tf.distribute.Strategy,
               learning_rate=None, summary_images: int = 3):
    self.state = state
    self.config = config
    self.optimizer_config = optimizer_config
    self.strategy = strategy
    self.learning_rate = learning_rate
    self.summary_images = summary_images
    model = state.model
    self.has_supervised = model.supervised_head is not None
    self.distill_labels = (config.train_mode == 'distill' and
                           config.distill_alpha < 1)
    with strategy.scope():
      self.metrics = {
          name: tf_keras.metrics.Mean(f'train/{name}')
          for name in _metric_names(config.train_mode, self.has_supervised,
                                    self.distill_labels)
      }
    step = self._replica_step
    if config.jit_compile:
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
    # Checked before orbit writes the loop's checkpoint: a finite loss can
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
    state, config = self.state, self.config
    model = state.model
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    self._summarise_images(images)
    with tf.GradientTape() as tape:
      out = model(images, training=True)
      terms = {}
      if config.train_mode == 'pretrain':
        terms.update(self._contrastive_terms(images, out))
      if config.train_mode == 'distill':
        terms.update(self._distill_terms(images, labels, out))
      elif self.has_supervised:
        terms.update(self._supervised_terms(labels, out))
      weight_decay = optimization.weight_decay_loss(model,
                                                    self.optimizer_config)
      loss = tf.add_n([terms[k] for k in terms if k.endswith('_loss')] +
                      [weight_decay])
      loss = self._check_finite(loss, dict(terms, weight_decay=weight_decay))
      scaled_loss = loss / num_replicas
      if isinstance(state.optimizer,
                    tf_keras.mixed_precision.LossScaleOptimizer):
        scaled_loss = state.optimizer.get_scaled_loss(scaled_loss)
    variables = model.trainable_variables
    grads = tape.gradient(scaled_loss, variables)
    if isinstance(state.optimizer,
                  tf_keras.mixed_precision.LossScaleOptimizer):
      grads = state.optimizer.get_unscaled_gradients(grads)
    state.optimizer.apply_gradients(zip(grads, variables))
    if state.momentum_encoder is not None:
      state.momentum_encoder.update(model)
      state.memory_queue.enqueue(terms.pop('_keys'))
    terms['total_loss'] = loss
    terms['weight_decay'] = weight_decay
    for name, metric in self.metrics.items():
      metric.update_state(terms[name])

  def _check_finite(self, loss, terms):
    """Stops the step, before any update, when the loss is not finite; the
    error names the step and every loss term. (Not under XLA, which has no
    Assert; train_loop_end still checks before any checkpoint is written.)"""
    if self.config.jit_compile:
      return loss
    data = [NON_FINITE_MARKER, 'step', self.state.global_step + 1]
    for name in sorted(terms):
      if not name.startswith('_'):
        data += [name, terms[name]]
    check = tf.debugging.Assert(tf.math.is_finite(loss), data)
    with tf.control_dependencies([check]):
      return tf.identity(loss)

  def _summarise_images(self, images):
    if not self.summary_images:
      return
    tf.summary.image('train/images', images[:self.summary_images],
                     step=self.state.global_step,
                     max_outputs=self.summary_images)

  def _contrastive_terms(self, images, out):
    config, state = self.config, self.state
    queries = out['proj_head_output']
    if state.momentum_encoder is not None:
      keys = state.momentum_encoder.keys(images)
      result = losses.nt_xent_with_memory(
          queries, keys, state.memory_queue.queue,
          temperature=config.temperature, hidden_norm=config.hidden_norm,
          queue_length=state.memory_queue.length, reduction='sum_views')
    else:
      keys = None
      result = losses.contrastive_loss(
          queries, temperature=config.temperature,
          hidden_norm=config.hidden_norm, reduction='sum_views')
    metrics = losses.contrastive_metrics(result.logits, result.labels)
    terms = {'contrast_loss': result.loss,
             'contrast_acc': metrics['contrast_acc'],
             'contrast_entropy': metrics['contrast_entropy']}
    if keys is not None:
      terms['_keys'] = keys
    return terms

  def _supervised_terms(self, labels, out):
    logits = out['logits_sup']
    num_classes = logits.shape[-1]
    # Unlabeled rows (label -1, e.g. a flat image folder) do not count.
    labeled = labels >= 0
    onehot = tf.one_hot(tf.where(labeled, labels, 0), num_classes)
    weights = tf.cast(labeled, tf.float32)
    count = tf.maximum(tf.reduce_sum(weights), 1.0)
    per_example = tf.nn.softmax_cross_entropy_with_logits(onehot, logits)
    loss = tf.reduce_sum(per_example * weights) / count
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                               tf.cast(labels, tf.int32)), tf.float32)
    return {'supervised_loss': loss,
            'supervised_acc': tf.reduce_sum(correct * weights) / count}

  def _distill_terms(self, images, labels, out):
    config, state = self.config, self.state
    teacher_logits = tf.stop_gradient(
        state.teacher(images, training=False)['logits_sup'])
    student_logits = out['logits_sup']
    distill_loss = losses.distillation(teacher_logits, student_logits,
                                       config.distill_temperature)
    agreement = tf.reduce_mean(tf.cast(tf.equal(
        tf.argmax(teacher_logits, -1), tf.argmax(student_logits, -1)),
                                       tf.float32))
    terms = {'teacher_student_agreement': agreement}
    if not self.distill_labels:
      terms['distill_loss'] = distill_loss
      return terms
    # Eq. 3: alpha * distillation + (1 - alpha) * cross-entropy on the
    # labeled rows.
    supervised = self._supervised_terms(labels, out)
    terms['distill_loss'] = config.distill_alpha * distill_loss
    terms['supervised_loss'] = ((1 - config.distill_alpha) *
                                supervised['supervised_loss'])
    terms['supervised_acc'] = supervised['supervised_acc']
    return terms
