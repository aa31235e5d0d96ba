"""Optimiser, learning-rate schedule and weight-decay rules of the published
SimCLR code, built from Model Garden's `official.modeling.optimization`
(LARS, linear warm-up, cosine decay) and tf_keras' SGD and Adam.

Weight decay, as published: with LARS it is applied inside the optimiser to
every variable except batch-norm and bias variables (which also skip the
layer-wise trust ratio) and the supervised head, whose kernel instead gets an
explicit L2 loss (`weight_decay_loss`); with 'momentum' and 'adam' it is an
explicit L2 loss on every trainable variable except batch norm's.
"""

import math
from typing import Union

import tensorflow as tf
import tf_keras
from official.modeling.optimization import lars
from official.modeling.optimization import lr_schedule

from simclr.configs import OptimizerConfig

# Regular expressions searched in variable names (`v.name`, e.g.
# 'simclr/resnet/stem/batch_norm_relu/batch_normalization/gamma:0'). Keras
# names every batch-norm layer, synchronized or not, 'batch_normalization...'
# and SimCLRModel names its classifier 'supervised_head'.
BATCH_NORM_PATTERN = 'batch_normalization'
BIAS_PATTERN = 'bias'
SUPERVISED_HEAD_PATTERN = 'supervised_head'
LARS_EXCLUDED = (BATCH_NORM_PATTERN, BIAS_PATTERN, SUPERVISED_HEAD_PATTERN)

LearningRate = Union[float, tf_keras.optimizers.schedules.LearningRateSchedule]


# The slot Model Garden's LARS makes per variable (its _create_slots).
LARS_SLOT = 'momentum'


def scaled_learning_rate(config: OptimizerConfig, batch_size: int) -> float:
  """The peak learning rate for a global batch of `batch_size` images."""
  if config.learning_rate_scaling == 'linear':
    return config.learning_rate * batch_size / 256.
  return config.learning_rate * math.sqrt(batch_size)


def warmup_steps(config: OptimizerConfig, num_examples: int,
                 batch_size: int) -> int:
  """floor(warmup_epochs * num_examples / batch), published."""
  return int(round(config.warmup_epochs * num_examples // batch_size))


def build_learning_rate(
    config: OptimizerConfig, batch_size: int, num_examples: int,
    total_steps: int) -> tf_keras.optimizers.schedules.LearningRateSchedule:
  """The published WarmUpAndCosineDecay: lr(step) = peak * step / W for
  step < W (W = warmup_steps), then peak * 0.5 * (1 + cos(pi * (step - W) /
  (T - W))) with T = total_steps, 0 from step T on; peak =
  scaled_learning_rate. `step` is the optimiser's iteration count before the
  update (0 at the first step). num_examples: examples per epoch.
  """
  peak = scaled_learning_rate(config, batch_size)
  warmup = warmup_steps(config, num_examples, batch_size)
  # A warm-up as long as training never reaches the decay; max() only keeps
  # the unused decay well defined.
  cosine = lr_schedule.CosineDecayWithOffset(
      offset=warmup, initial_learning_rate=peak,
      decay_steps=max(total_steps - warmup, 1))
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


def create_slots(optimizer, variables):
  """Makes now every variable `optimizer.apply_gradients` on `variables`
  would make on its first call (slots, step count, hyperparameters). Made
  inside the first trace of a train step instead, they make TensorFlow trace
  the step a second time. Call in the strategy's scope. A mixed-precision
  wrapper's inner optimizer is the one with slots."""
  if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
    optimizer = optimizer.inner_optimizer
  if isinstance(optimizer, lars.LARS):
    # A legacy Keras optimizer: no build(); the step count and the
    # hyperparameters are made on first read, and LARS's one slot per
    # variable by add_slot (which apply_gradients then finds made).
    optimizer.iterations  # pylint: disable=pointless-statement
    optimizer.learning_rate  # pylint: disable=pointless-statement
    for variable in variables:
      optimizer.add_slot(variable, LARS_SLOT)
  else:
    optimizer.build(variables)


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
