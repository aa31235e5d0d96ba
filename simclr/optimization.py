"""Optimiser, learning-rate schedule and weight-decay rules of the published
SimCLR code, built from Model Garden's `official.modeling.optimization`
(LARS, linear warm-up, cosine decay) and tf_keras' SGD and Adam.

Weight decay, as published: with LARS it is applied inside the optimiser to
every variable except batch-norm and bias variables (which also skip the
layer-wise trust ratio) and the supervised head, whose kernel instead gets an
explicit L2 loss (`weight_decay_loss`); with 'momentum' and 'adam' it is an
explicit L2 loss on every trainable variable except batch norm's.
"""

import dataclasses
import math
from typing import Union

import tensorflow as tf
import tf_keras
from official.modeling.optimization import lars
from official.modeling.optimization import lr_schedule

OPTIMIZERS = ('lars', 'momentum', 'adam')
LEARNING_RATE_SCALINGS = ('linear', 'sqrt')
# Regular expressions searched in variable names (`v.name`, e.g.
# 'simclr/resnet/stem/batch_norm_relu/batch_normalization/gamma:0'). Keras
# names every batch-norm layer, synchronized or not, 'batch_normalization...'
# and SimCLRModel names its classifier 'supervised_head'.
BATCH_NORM_PATTERN = 'batch_normalization'
BIAS_PATTERN = 'bias'
SUPERVISED_HEAD_PATTERN = 'supervised_head'
LARS_EXCLUDED = (BATCH_NORM_PATTERN, BIAS_PATTERN, SUPERVISED_HEAD_PATTERN)

LearningRate = Union[float, tf_keras.optimizers.schedules.LearningRateSchedule]


@dataclasses.dataclass
class OptimizerConfig:
  """Field names and defaults are the published flags'.

  learning_rate: per 256 images with 'linear' scaling (lr * batch / 256), or
    the factor of sqrt(batch) with 'sqrt' scaling.
  train_steps: overrides train_epochs when > 0.
  eeta: LARS trust coefficient (not a published flag; its fixed value).
  """
  optimizer: str = 'lars'
  learning_rate: float = 0.3
  learning_rate_scaling: str = 'linear'
  warmup_epochs: float = 10
  weight_decay: float = 1e-6
  momentum: float = 0.9
  train_batch_size: int = 512
  train_epochs: int = 100
  train_steps: int = 0
  eeta: float = 0.001

  def __post_init__(self):
    self.validate()

  def validate(self):
    """Raises ValueError naming the field and what was expected."""
    def fail(field, expected):
      raise ValueError(f'OptimizerConfig.{field}={getattr(self, field)!r}: '
                       f'expected {expected}')

    if self.optimizer not in OPTIMIZERS:
      fail('optimizer', f'one of {OPTIMIZERS}')
    if self.learning_rate_scaling not in LEARNING_RATE_SCALINGS:
      fail('learning_rate_scaling', f'one of {LEARNING_RATE_SCALINGS}')
    if self.learning_rate < 0:
      fail('learning_rate', '>= 0')
    if self.warmup_epochs < 0:
      fail('warmup_epochs', '>= 0')
    if self.weight_decay < 0:
      fail('weight_decay', '>= 0')
    if not 0 <= self.momentum < 1:
      fail('momentum', 'in [0, 1)')
    if self.train_batch_size < 1:
      fail('train_batch_size', '>= 1')
    if self.train_steps < 0:
      fail('train_steps', '>= 0 (0: use train_epochs)')
    if self.train_steps == 0 and self.train_epochs < 1:
      fail('train_epochs', '>= 1 when train_steps is 0')


def scaled_learning_rate(config: OptimizerConfig) -> float:
  """The peak learning rate for the configured batch size."""
  if config.learning_rate_scaling == 'linear':
    return config.learning_rate * config.train_batch_size / 256.
  return config.learning_rate * math.sqrt(config.train_batch_size)


def train_steps(config: OptimizerConfig, num_examples: int) -> int:
  """train_steps, or num_examples * train_epochs // batch + 1 (published)."""
  return config.train_steps or (
      num_examples * config.train_epochs // config.train_batch_size + 1)


def warmup_steps(config: OptimizerConfig, num_examples: int) -> int:
  """floor(warmup_epochs * num_examples / batch), published."""
  return int(round(config.warmup_epochs * num_examples //
                   config.train_batch_size))


def build_learning_rate(
    config: OptimizerConfig,
    num_examples: int) -> tf_keras.optimizers.schedules.LearningRateSchedule:
  """The published WarmUpAndCosineDecay: lr(step) = peak * step / W for
  step < W (W = warmup_steps), then peak * 0.5 * (1 + cos(pi * (step - W) /
  (T - W))) with T = train_steps, 0 from step T on; peak =
  scaled_learning_rate. `step` is the optimiser's iteration count before the
  update (0 at the first step). num_examples: size of the training split.
  """
  peak = scaled_learning_rate(config)
  warmup = warmup_steps(config, num_examples)
  total = train_steps(config, num_examples)
  # A warm-up as long as training never reaches the decay; max() only keeps
  # the unused decay well defined.
  cosine = lr_schedule.CosineDecayWithOffset(
      offset=warmup, initial_learning_rate=peak,
      decay_steps=max(total - warmup, 1))
  if not warmup:
    return cosine
  return lr_schedule.LinearWarmup(
      after_warmup_lr_sched=cosine, warmup_steps=warmup,
      warmup_learning_rate=0.0)


def build_optimizer(config: OptimizerConfig, learning_rate: LearningRate):
  """LARS (Model Garden; classic momentum, published exclusions), SGD with
  Nesterov momentum, or Adam, per config.optimizer. Build it inside the
  strategy's scope."""
  if config.optimizer == 'lars':
    return lars.LARS(
        learning_rate=learning_rate,
        momentum=config.momentum,
        weight_decay_rate=config.weight_decay,
        eeta=config.eeta,
        classic_momentum=True,
        exclude_from_weight_decay=list(LARS_EXCLUDED),
        exclude_from_layer_adaptation=list(LARS_EXCLUDED))
  if config.optimizer == 'momentum':
    return tf_keras.optimizers.SGD(learning_rate, config.momentum,
                                   nesterov=True)
  return tf_keras.optimizers.Adam(learning_rate)


def weight_decay_loss(model: tf_keras.Model,
                      config: OptimizerConfig) -> tf.Tensor:
  """The explicit L2 term to add to the loss (scalar float32):
  weight_decay * sum(||v||^2 / 2) over the supervised head's non-bias
  trainable variables with LARS, over all non-batch-norm trainable variables
  otherwise."""
  if config.optimizer == 'lars':
    decayed = [v for v in model.trainable_variables
               if SUPERVISED_HEAD_PATTERN in v.name
               and BIAS_PATTERN not in v.name]
  else:
    decayed = [v for v in model.trainable_variables
               if BATCH_NORM_PATTERN not in v.name]
  if not decayed or not config.weight_decay:
    return tf.constant(0.0)
  return config.weight_decay * tf.add_n(
      [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in decayed])
