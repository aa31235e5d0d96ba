"""Learning-rate schedule against its closed form, one LARS update against a
numpy implementation of the published rule, and the weight-decay rules."""

import math
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import simclr
from simclr import optimization
from simclr.configs import OptimizerConfig
from simclr.configs import TrainConfig

# 5000 examples, batch 512: 5000 * 100 // 512 + 1 = 977 steps; warm-up
# floor(10 * 5000 / 512) = 97 steps; peak 0.3 * 512 / 256 = 0.6.
NUM_EXAMPLES = 5000
BATCH = 512
SCHEDULE = OptimizerConfig(learning_rate=0.3, warmup_epochs=10)
TOTAL, WARMUP, PEAK = 977, 97, 0.6

MODEL_CONFIG = simclr.ModelConfig(resnet_depth=18, width_multiplier=0.25,
                                  image_size=16, num_classes=10,
                                  proj_out_dim=8, se_ratio=0.25)


def learning_rates(config, steps, num_examples=NUM_EXAMPLES, batch=BATCH,
                   total=TOTAL):
  schedule = optimization.build_learning_rate(config, batch, num_examples,
                                              total)
  return np.array([float(schedule(step)) for step in steps])


# Schedule.


def test_train_steps_are_examples_times_epochs_over_batch_plus_one():
  assert TrainConfig(train_epochs=100).total_steps(NUM_EXAMPLES,
                                                   BATCH) == TOTAL


def test_train_steps_flag_overrides_epochs():
  config = TrainConfig(train_steps=123)
  assert config.total_steps(NUM_EXAMPLES, BATCH) == 123


def test_warmup_steps_are_rounded_down():
  assert optimization.warmup_steps(SCHEDULE, NUM_EXAMPLES, BATCH) == WARMUP


def test_learning_rate_warms_up_linearly_from_zero():
  steps = [0, 1, 50, 96]
  np.testing.assert_allclose(learning_rates(SCHEDULE, steps),
                             [PEAK * s / WARMUP for s in steps], rtol=1e-6)


def test_learning_rate_decays_by_cosine_after_warmup():
  steps = [97, 98, 400, 700, 976]
  expected = [
      PEAK * 0.5 * (1 + math.cos(math.pi * (s - WARMUP) / (TOTAL - WARMUP)))
      for s in steps
  ]
  np.testing.assert_allclose(learning_rates(SCHEDULE, steps), expected,
                             rtol=1e-5, atol=1e-7)


def test_learning_rate_is_zero_from_the_last_step_on():
  np.testing.assert_allclose(learning_rates(SCHEDULE, [977, 1500]), [0, 0],
                             atol=1e-7)


def test_sqrt_scaling_peaks_at_learning_rate_times_sqrt_batch():
  config = OptimizerConfig(learning_rate=0.1, learning_rate_scaling='sqrt',
                           warmup_epochs=5)
  # 1281167 ImageNet images: warm-up floor(5 * 1281167 / 4096) = 1563.
  np.testing.assert_allclose(
      learning_rates(config, [1563], num_examples=1281167, batch=4096,
                     total=1281167 * 100 // 4096 + 1), [6.4], rtol=1e-6)


def test_without_warmup_learning_rate_starts_at_peak():
  config = OptimizerConfig(learning_rate=0.1, warmup_epochs=0)
  np.testing.assert_allclose(
      learning_rates(config, [0, 50], batch=256, total=100),
      [0.1, 0.1 * 0.5 * (1 + math.cos(math.pi * 50 / 100))], rtol=1e-6)


def test_unknown_optimizer_is_refused():
  with pytest.raises(ValueError, match='optimizer'):
    OptimizerConfig(optimizer='sgd')


# LARS.


def structural_lars_exclusions(model):
  """The variables the published LARS exempts from weight decay and trust
  ratio, found from the layers rather than from names: batch-norm variables,
  biases, and the supervised head."""
  excluded = set()
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      excluded.update(id(w) for w in layer.weights)
    if getattr(layer, 'bias', None) is not None:
      excluded.add(id(layer.bias))
  if model.supervised_head is not None:
    excluded.update(id(w) for w in model.supervised_head.weights)
  return excluded


def matches_lars_exclusions(name):
  return any(re.search(p, name) for p in optimization.LARS_EXCLUDED)


def test_lars_exclusion_patterns_select_batch_norm_bias_and_supervised_head():
  model = simclr.build_model(MODEL_CONFIG)
  excluded = structural_lars_exclusions(model)
  for w in model.trainable_variables:
    assert matches_lars_exclusions(w.name) == (id(w) in excluded), w.name


def test_lars_exclusion_patterns_hold_for_synchronized_bn_replicas(
    two_replica_strategy):
  with two_replica_strategy.scope():
    model = simclr.build_model(MODEL_CONFIG)
  assert model.resnet.stem.bn.bn.synchronized
  excluded = structural_lars_exclusions(model)
  for w in model.trainable_variables:
    # LARS sees the per-device copies ('.../gamma/replica_1:0').
    for name in [w.name] + [c.name for c in w.values]:
      assert matches_lars_exclusions(name) == (id(w) in excluded), name


def numpy_lars_step(weights, gradients, velocities, excluded, learning_rate,
                    weight_decay, momentum=0.9, eeta=0.001):
  """The published LARSOptimizer update (classic momentum, no Nesterov):
  g += wd * w; trust = eeta * |w| / |g| (1 if either norm is 0);
  v = momentum * v + lr * trust * g; w -= v. Excluded variables get neither
  weight decay nor trust ratio."""
  new_weights, new_velocities = [], []
  for w, g, v, skip in zip(weights, gradients, velocities, excluded):
    w, g, v = (np.asarray(x, np.float64) for x in (w, g, v))
    trust = 1.0
    if not skip:
      g = g + weight_decay * w
      w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
      if w_norm > 0 and g_norm > 0:
        trust = eeta * w_norm / g_norm
    v = momentum * v + learning_rate * trust * g
    new_weights.append(w - v)
    new_velocities.append(v)
  return new_weights, new_velocities


def test_two_lars_steps_equal_the_published_update_rule():
  model = simclr.build_model(MODEL_CONFIG)
  variables = model.trainable_variables
  config = OptimizerConfig(optimizer='lars', weight_decay=1e-2)
  optimizer = optimization.build_optimizer(config, learning_rate=0.7)
  images = tf.random.stateless_uniform([4, 16, 16, 3], [0, 1])
  target = tf.random.stateless_normal([4, 10], [0, 2])

  def gradients():
    with tf.GradientTape() as tape:
      out = model(images, training=True)
      # Small gradients keep the weights O(1), where float32 resolves 1e-6.
      loss = (tf.reduce_mean(out['proj_head_output']**2) +
              tf.reduce_mean(out['logits_sup'] * target))
    return tape.gradient(loss, variables)

  excluded_ids = structural_lars_exclusions(model)
  excluded = [id(v) in excluded_ids for v in variables]
  assert any(excluded) and not all(excluded)
  expected = [v.numpy() for v in variables]
  velocities = [np.zeros(v.shape) for v in variables]
  for _ in range(2):
    grads = gradients()
    expected, velocities = numpy_lars_step(
        expected, [g.numpy() for g in grads], velocities, excluded,
        learning_rate=0.7, weight_decay=1e-2)
    optimizer.apply_gradients(zip(grads, variables))
  for v, e in zip(variables, expected):
    np.testing.assert_allclose(v.numpy(), e, rtol=0, atol=1e-6,
                               err_msg=v.name)


def test_lars_has_published_momentum_and_eeta():
  optimizer = optimization.build_optimizer(OptimizerConfig(), 0.1)
  assert (optimizer.momentum, optimizer.eeta) == (0.9, 0.001)
  assert optimizer.classic_momentum and not optimizer.nesterov


def test_momentum_optimizer_is_nesterov_sgd():
  optimizer = optimization.build_optimizer(
      OptimizerConfig(optimizer='momentum', momentum=0.8), 0.1)
  assert isinstance(optimizer, tf_keras.optimizers.SGD)
  assert optimizer.nesterov
  np.testing.assert_allclose(float(optimizer.momentum), 0.8)


# Weight decay as a loss.


def test_weight_decay_loss_with_lars_is_l2_of_the_supervised_kernel():
  model = simclr.build_model(MODEL_CONFIG)
  kernel = model.supervised_head.dense.kernel.numpy()
  loss = optimization.weight_decay_loss(model, OptimizerConfig(
      optimizer='lars', weight_decay=1e-3))
  np.testing.assert_allclose(loss.numpy(), 1e-3 * 0.5 * np.sum(kernel**2),
                             rtol=1e-5)


@pytest.mark.parametrize('optimizer', ['momentum', 'adam'])
def test_weight_decay_loss_otherwise_covers_every_non_bn_variable(optimizer):
  model = simclr.build_model(MODEL_CONFIG)
  batch_norm = set()
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      batch_norm.update(id(w) for w in layer.weights)
  expected = 1e-3 * 0.5 * sum(
      np.sum(np.asarray(w, np.float64)**2) for w in model.trainable_variables
      if id(w) not in batch_norm)
  loss = optimization.weight_decay_loss(model, OptimizerConfig(
      optimizer=optimizer, weight_decay=1e-3))
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
