"""Global batch norm: with global_bn, a training-mode forward pass split over
two replicas normalises with the statistics of the whole batch, as a single
device does on the concatenated batch. Compared in float64, where the two
implementations (synchronized vs fused batch norm) agree to round-off, and in
float32 to float32 round-off."""


import numpy as np
import pytest
import tensorflow as tf

import simclr
from simclr.models.resnet import BatchNormRelu
from conftest import layers_in
from conftest import make_two_replica_strategy

CONFIG = simclr.ModelConfig(resnet_depth=18, width_multiplier=0.25,
                            image_size=16, num_classes=10, proj_out_dim=8,
                            global_bn=True)
BATCH = 8  # 4 images per replica
COMPARED = ('block_group1', 'block_group2', 'block_group3', 'block_group4',
            'final_avg_pool', 'proj_head_output', 'logits_sup')


@pytest.fixture(scope='module')
def strategy():
  """One MirroredStrategy over the two logical CPUs for the whole module (the
  passes are computed once); its own collective keys, as in conftest."""
  return make_two_replica_strategy()


@pytest.fixture(scope='module')
def weights():
  """A built model's weights with the batch-norm gammas and betas moved off
  their initial values (the zero-init gammas would silence the residual
  branches and the BNs in them)."""
  tf.random.set_seed(0)
  model = simclr.build_model(CONFIG)
  rng = np.random.RandomState(0)
  for w in model.trainable_weights:
    if 'gamma' in w.name:
      w.assign(1 + 0.2 * rng.randn(*w.shape))
    elif 'beta' in w.name:
      w.assign(0.2 * rng.randn(*w.shape))
  return model.get_weights()


@pytest.fixture(scope='module')
def images():
  return np.random.RandomState(1).rand(BATCH, 16, 16, 3).astype(np.float32)


def single_device_pass(config, weights, images):
  model = simclr.build_model(config)
  model.set_weights(weights)
  outputs = model(tf.constant(images), training=True)
  return {k: outputs[k].numpy() for k in COMPARED}, model


def replica_shards(strategy, images):
  """Per-replica inputs: replica r gets images [4r, 4r + 4)."""
  half = BATCH // 2
  return strategy.experimental_distribute_values_from_function(
      lambda context: tf.constant(images[context.replica_id_in_sync_group *
                                         half:][:half]))


def two_replica_pass(strategy, config, weights, images):
  """Replica r gets images [4r, 4r + 4); outputs concatenated in that order.
  Run eagerly: tracing a 2-replica pass with synchronized BN takes ~8 s here,
  running it ~1 s."""
  with strategy.scope():
    model = simclr.build_model(config)
    model.set_weights(weights)
  outputs = strategy.run(lambda x: model(x, training=True),
                         args=(replica_shards(strategy, images),))
  return {
      k: np.concatenate([
          t.numpy() for t in strategy.experimental_local_results(outputs[k])
      ]) for k in COMPARED
  }, model


@pytest.fixture(scope='module')
def passes(strategy, weights, images):
  """Both passes in float64, where round-off (~1e-14) cannot hide or fake a
  difference in the statistics."""
  with layers_in('float64'):
    return (single_device_pass(CONFIG, weights, images),
            two_replica_pass(strategy, CONFIG, weights, images))


def batch_norm_layers(model):
  return [layer.bn for layer in model.submodules
          if isinstance(layer, BatchNormRelu)]


def test_global_bn_synchronizes_every_batch_norm_on_two_replicas(passes):
  _, (_, mirrored_model) = passes
  layers = batch_norm_layers(mirrored_model)
  assert layers and all(layer.synchronized for layer in layers)


@pytest.mark.parametrize('key', COMPARED)
def test_two_replica_training_pass_equals_single_device_pass(passes, key):
  (single, _), (mirrored, _) = passes
  np.testing.assert_allclose(mirrored[key], single[key], rtol=0, atol=1e-5)


def max_difference_to_scale(actual, desired):
  return np.abs(actual - desired).max() / max(1.0, np.abs(desired).max())


def test_two_replica_float32_pass_equals_single_device_pass_to_round_off(
    strategy, weights, images):
  # In float32 synchronized BN's variance E[x^2] - E[x]^2 and the fused
  # single-device BN round differently, by up to ~1e-5 of the activations'
  # size (~8) after 20 BN layers: measured 2e-5..4e-5 absolute.
  single, _ = single_device_pass(CONFIG, weights, images)
  mirrored, _ = two_replica_pass(strategy, CONFIG, weights, images)
  for key in COMPARED:
    assert max_difference_to_scale(mirrored[key], single[key]) < 1e-4, key


def test_two_replica_moving_means_equal_single_device_ones(passes):
  (_, single_model), (_, mirrored_model) = passes
  for single_bn, mirrored_bn in zip(batch_norm_layers(single_model),
                                    batch_norm_layers(mirrored_model)):
    # Read in cross-replica context: the mean over replicas of their copies.
    np.testing.assert_allclose(mirrored_bn.moving_mean.numpy(),
                               single_bn.moving_mean.numpy(), rtol=0,
                               atol=1e-10)


def test_without_global_bn_replicas_use_their_own_statistics(
    strategy, weights, images):
  # The control: the comparison above can tell the two apart.
  local_bn = CONFIG.replace(global_bn=False)
  with layers_in('float64'):
    single, _ = single_device_pass(local_bn, weights, images)
    mirrored, _ = two_replica_pass(strategy, local_bn, weights, images)
  assert np.abs(mirrored['final_avg_pool'] -
                single['final_avg_pool']).max() > 1e-2


def inference_on_replicas(strategy, model, images):
  """model(images, training=False)['final_avg_pool'], replica r on images
  [4r, 4r + 4), concatenated in that order."""
  outputs = strategy.run(
      lambda x: model(x, training=False)['final_avg_pool'],
      args=(replica_shards(strategy, images),))
  return np.concatenate(
      [t.numpy() for t in strategy.experimental_local_results(outputs)])


def test_an_evaluation_on_the_replicas_sees_the_saved_statistics(
    strategy, weights, images):
  # Without global_bn each replica's training pass moves its own copy of the
  # moving statistics, and a checkpoint stores their mean (get_weights reads
  # the same). After agree_on_read_variables, which the evaluator and the
  # feature extractor call first, an inference pass on the two replicas is
  # that of one device holding the mean.
  from simclr import distribute  # pylint: disable=g-import-not-at-top
  local_bn = CONFIG.replace(global_bn=False)
  with layers_in('float64'):
    _, model = two_replica_pass(strategy, local_bn, weights, images)
    statistics = [v for bn in batch_norm_layers(model)
                  for v in (bn.moving_mean, bn.moving_variance)]
    copies = [[t.numpy() for t in strategy.experimental_local_results(v)]
              for v in statistics]
    saved = simclr.build_model(local_bn)
    saved.set_weights(model.get_weights())
    expected = saved(tf.constant(images), training=False)[
        'final_avg_pool'].numpy()
    # The control: the replicas' own statistics give other features.
    assert np.abs(inference_on_replicas(strategy, model, images) -
                  expected).max() > 1e-3
    distribute.agree_on_read_variables(model.variables, strategy)
    for variable, (first, second) in zip(statistics, copies):
      assert np.abs(first - second).max() > 0  # The replicas had diverged.
      for copy in strategy.experimental_local_results(variable):
        np.testing.assert_allclose(copy.numpy(), (first + second) / 2,
                                   rtol=1e-12, atol=0)
    np.testing.assert_allclose(inference_on_replicas(strategy, model, images),
                               expected, rtol=1e-10, atol=1e-12)
