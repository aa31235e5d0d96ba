"""ResNet / SimCLR model family: sizes, structure, heads, freezing."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import simclr
from simclr import zoo
from simclr.models import resnet as resnet_lib

BN_EPS = 1e-5


def small_config(**overrides):
  base = dict(resnet_depth=18, width_multiplier=0.25, image_size=32,
              num_classes=10, global_bn=False)
  base.update(overrides)
  return simclr.ModelConfig(**base)


def images(batch=2, size=32, seed=0):
  return tf.random.stateless_uniform([batch, size, size, 3], [seed, 1])


def randomise_batch_norm_statistics(model, seed=0):
  """Gives every BN non-trivial gamma/beta/moving statistics so that tests of
  inference mode cannot pass by accident with the initial values."""
  rng = np.random.default_rng(seed)
  for v in model.variables:
    name = v.name
    if 'moving_variance' in name or 'gamma' in name:
      v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    elif 'moving_mean' in name or 'beta' in name:
      v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))


def np_batch_norm(x, bn):
  """Inference-mode batch norm of a tf_keras BatchNormalization, in numpy."""
  gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
  beta = bn.beta.numpy() if bn.beta is not None else 0.0
  return ((x - bn.moving_mean.numpy()) /
          np.sqrt(bn.moving_variance.numpy() + BN_EPS) * gamma + beta)


# --- sizes -----------------------------------------------------------------

TABLE1_1X = [v for v in zoo.TABLE1_PARAMS_M if v[1] == 1]


@pytest.mark.parametrize('variant', TABLE1_1X, ids=lambda v: f'{v[0]}x{v[1]}'
                         f'{"sk" if v[2] else ""}')
def test_encoder_parameter_count_matches_simclrv2_table1(variant):
  trainable, total = zoo.count_encoder_parameters(*variant)
  assert round(total / 1e6) == zoo.TABLE1_PARAMS_M[variant]
  assert abs(trainable / 1e6 - zoo.TABLE1_PARAMS_M[variant]) < 0.75


def test_resnet50_parameter_count_equals_keras_resnet50():
  # Keras' stock ResNet50 has the same convolutions and BNs, plus a bias on
  # every convolution (one per BN channel, i.e. half its BN moving statistics).
  keras_model = tf_keras.applications.ResNet50(include_top=False, weights=None)
  count = lambda vs: int(sum(np.prod(v.shape) for v in vs))
  keras_moving = count(keras_model.non_trainable_variables)
  keras_conv_biases = keras_moving // 2
  trainable, total = zoo.count_encoder_parameters(50, 1, False)
  assert trainable == count(keras_model.trainable_variables) - keras_conv_biases
  assert total - trainable == keras_moving


def _expected_spatial(size, cifar):
  """Heights of initial_conv, initial_max_pool, block_group1..4 (ceil halving,
  as fixed padding and SAME pooling give)."""
  if cifar:
    return [size, size, size, math.ceil(size / 2), math.ceil(size / 4),
            math.ceil(size / 8)]
  conv = math.ceil(size / 2)
  pool = math.ceil(conv / 2)
  return [conv, pool, pool, math.ceil(pool / 2), math.ceil(pool / 4),
          math.ceil(pool / 8)]


@pytest.mark.parametrize('depth,width,sk,se,image_size,input_size', [
    (18, 0.25, 0.0, 0.0, 32, 32),
    (34, 0.25, 0.0, 0.25, 32, 24),
    (50, 0.25, 0.0625, 0.0, 224, 64),
    (50, 0.5, 0.0, 0.0, 224, 70),
    (101, 0.25, 0.0, 0.0, 96, 40),
])
def test_output_keys_and_shapes(depth, width, sk, se, image_size, input_size):
  config = simclr.ModelConfig(resnet_depth=depth, width_multiplier=width,
                              sk_ratio=sk, se_ratio=se, image_size=image_size,
                              num_classes=7, proj_out_dim=16, global_bn=False)
  model = simclr.build_model(config)
  out = model(images(3, input_size), training=False)
  assert set(simclr.OUTPUT_KEYS) <= set(out)
  expansion = 1 if depth in (18, 34) else 4
  base = int(64 * width)
  heights = _expected_spatial(input_size, image_size <= 32)
  channels = [base, base] + [base * expansion * 2**i for i in range(4)]
  keys = ['initial_conv', 'initial_max_pool', 'block_group1', 'block_group2',
          'block_group3', 'block_group4']
  for key, height, channel in zip(keys, heights, channels):
    assert out[key].shape == (3, height, height, channel), key
  assert out['final_avg_pool'].shape == (3, base * expansion * 8)
  assert out['proj_head_input'].shape == (3, base * expansion * 8)
  assert out['proj_head_output'].shape == (3, 16)
  assert out['logits_sup'].shape == (3, 7)
  np.testing.assert_allclose(out['final_avg_pool'],
                             out['block_group4'].numpy().mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)


def test_encoder_only_model_has_no_heads():
  model = simclr.build_model(small_config(num_classes=None,
                                          proj_head_mode='none'))
  out = model(images(), training=False)
  assert 'logits_sup' not in out
  assert model.supervised_head is None and model.projection_head is None
  np.testing.assert_array_equal(out['proj_head_output'], out['final_avg_pool'])


# --- structure ---------------------------------------------------------------


def test_selective_kernel_model_uses_resnet_d_stem_and_average_pool_shortcuts():
  config = simclr.ModelConfig(resnet_depth=50, width_multiplier=0.25,
                              sk_ratio=0.0625, image_size=224, num_classes=None,
                              global_bn=False)
  model = simclr.build_model(config)
  stem = model.resnet.stem
  kernels = [c.conv2d.kernel.shape.as_list() for c in stem.deep_convs]
  kernels.append(stem.conv.conv2d.kernel.shape.as_list())
  # Three 3x3 convs: 3 -> 32w/2 (stride 2) -> 32w/2 -> 64w.
  assert kernels == [[3, 3, 3, 8], [3, 3, 8, 8], [3, 3, 8, 16]]
  assert [c.strides for c in stem.deep_convs] + [stem.conv.strides] == [2, 1, 1]
  for group in model.resnet.block_groups:
    shortcut = group.blocks[0].shortcut
    assert shortcut.resnet_d
    assert isinstance(shortcut.pool, tf_keras.layers.AveragePooling2D)
    assert shortcut.pool.pool_size == (2, 2)
    assert shortcut.conv.strides == 1
    assert shortcut.conv.conv2d.kernel.shape[:2] == (1, 1)
    sk = group.blocks[0].selective_kernel
    filters = group.blocks[0].conv1.conv2d.kernel.shape[-1]
    assert sk.conv_two_streams.conv2d.kernel.shape[-1] == 2 * filters
    assert sk.conv_squeeze.kernel.shape[-1] == max(int(filters * 0.0625), 32)
    assert sk.conv_mixing.kernel.shape[-1] == 2 * filters


def test_without_selective_kernels_shortcuts_are_strided_convs():
  model = simclr.build_model(small_config(resnet_depth=50, image_size=64))
  strides = [g.blocks[0].shortcut.conv.strides for g in
             model.resnet.block_groups]
  assert strides == [1, 2, 2, 2]
  assert not any(g.blocks[0].shortcut.resnet_d
                 for g in model.resnet.block_groups)
  assert model.resnet.stem.conv.conv2d.kernel.shape[:2] == (7, 7)


def test_last_batch_norm_of_every_block_starts_with_zero_gamma():
  model = simclr.build_model(small_config(resnet_depth=50, image_size=64))
  for group in model.resnet.block_groups:
    for block in group.blocks:
      np.testing.assert_array_equal(block.bn3.bn.gamma.numpy(), 0.0)
      np.testing.assert_array_equal(block.bn1.bn.gamma.numpy(), 1.0)


def test_batch_norm_decay_and_epsilon_come_from_the_config():
  model = simclr.build_model(small_config(batch_norm_decay=0.97))
  bns = [l for l in model.submodules
         if type(l).__name__ == 'BatchNormalization']
  assert bns and all(bn.momentum == 0.97 and bn.epsilon == 1e-5 for bn in bns)


def test_selective_kernel_forward_matches_numpy():
  # 1x1 spatial input: a 3x3 SAME conv reduces to its centre tap, so the
  # whole SK computation can be written as matrix products.
  layer = resnet_lib.SelectiveKernel(filters=4, strides=1, sk_ratio=0.0625,
                                     bn_momentum=0.9, synchronized=False)
  x = np.random.default_rng(0).normal(size=(3, 1, 1, 5)).astype(np.float32)
  layer(x, training=False)
  rng = np.random.default_rng(1)
  for v in layer.variables:
    if 'moving_variance' in v.name or 'gamma' in v.name:
      v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    else:
      v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
  got = layer(x, training=False).numpy()

  relu = lambda a: np.maximum(a, 0)
  h = x[:, 0, 0, :]
  streams = relu(np_batch_norm(
      h @ layer.conv_two_streams.conv2d.kernel.numpy()[1, 1],
      layer.bn_two_streams.bn))
  a, b = streams[:, :4], streams[:, 4:]
  squeeze = relu(np_batch_norm(
      (a + b) @ layer.conv_squeeze.kernel.numpy()[0, 0], layer.bn_squeeze.bn))
  mixing = squeeze @ layer.conv_mixing.kernel.numpy()[0, 0]
  wa, wb = mixing[:, :4], mixing[:, 4:]
  pa = np.exp(wa) / (np.exp(wa) + np.exp(wb))
  expected = pa * a + (1 - pa) * b
  np.testing.assert_allclose(got[:, 0, 0, :], expected, rtol=1e-5, atol=1e-5)


def test_squeeze_excitation_gates_channels_like_numpy():
  layer = resnet_lib.SqueezeExcitation(filters=8, se_ratio=0.25)
  x = np.random.default_rng(0).normal(size=(2, 3, 3, 8)).astype(np.float32)
  got = layer(x).numpy()
  pooled = x.mean(axis=(1, 2))
  hidden = np.maximum(pooled @ layer.se_reduce.kernel.numpy()[0, 0] +
                      layer.se_reduce.bias.numpy(), 0)
  gate = 1 / (1 + np.exp(-(hidden @ layer.se_expand.kernel.numpy()[0, 0] +
                           layer.se_expand.bias.numpy())))
  assert layer.se_reduce.kernel.shape[-1] == 2
  np.testing.assert_allclose(got, x * gate[:, None, None, :], rtol=1e-5,
                             atol=1e-6)


def test_fixed_padding_pads_strided_convs_by_kernel_minus_one():
  x = tf.ones([1, 6, 6, 1])
  padded = resnet_lib.fixed_padding(x, 7)
  assert padded.shape == (1, 12, 12, 1)
  np.testing.assert_array_equal(padded[0, :3, :, 0], 0)  # 3 before
  np.testing.assert_array_equal(padded[0, 9:, :, 0], 0)  # 3 after
  padded = resnet_lib.fixed_padding(x, 2)
  np.testing.assert_array_equal(padded[0, :, :, 0].numpy().sum(), 36)
  assert padded.shape == (1, 7, 7, 1)  # 0 before, 1 after
  np.testing.assert_array_equal(padded[0, 6, :, 0], 0)


# --- heads -------------------------------------------------------------------


def _head_in_numpy(model, hidden):
  """Inference-mode projection head outputs [h, l1, ..., ln] in numpy."""
  outs = [hidden]
  layers = model.projection_head.head_layers
  for j, layer in enumerate(layers):
    x = np_batch_norm(outs[-1] @ layer.dense.kernel.numpy(), layer.bn.bn)
    if j != len(layers) - 1:
      x = np.maximum(x, 0)
    outs.append(x)
  return outs


def test_projection_head_layers_widths_and_biases():
  model = simclr.build_model(small_config(num_proj_layers=3, proj_out_dim=24))
  layers = model.projection_head.head_layers
  width = model.resnet.block_groups[-1].blocks[-1].conv2.conv2d.kernel.shape[-1]
  assert [l.dense.kernel.shape.as_list() for l in layers] == [
      [width, width], [width, width], [width, 24]]
  assert [l.bn.bn.beta is not None for l in layers] == [True, True, False]
  assert all(not l.dense.use_bias for l in layers)


@pytest.mark.parametrize('selector', [0, 1, 2, 3, -1])
def test_ft_proj_selector_feeds_the_chosen_head_layer_to_the_classifier(
    selector):
  model = simclr.build_model(small_config(ft_proj_selector=selector))
  randomise_batch_norm_statistics(model)
  out = model(images(), training=False)
  hiddens = _head_in_numpy(model, out['final_avg_pool'].numpy())
  np.testing.assert_allclose(out['proj_head_output'], hiddens[-1], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(out['supervised_head_input'], hiddens[selector],
                             rtol=1e-4, atol=1e-5)
  dense = model.supervised_head.dense
  logits = hiddens[selector] @ dense.kernel.numpy() + dense.bias.numpy()
  np.testing.assert_allclose(out['logits_sup'], logits, rtol=1e-4, atol=1e-5)


def test_ft_proj_selector_beyond_the_head_is_refused():
  with pytest.raises(ValueError, match='ft_proj_selector'):
    small_config(num_proj_layers=2, ft_proj_selector=3)


def test_zero_init_logits_layer_gives_zero_logits():
  model = simclr.build_model(small_config(zero_init_logits_layer=True))
  np.testing.assert_array_equal(model(images(), training=False)['logits_sup'],
                                0.0)
  model = simclr.build_model(small_config())
  assert np.abs(model(images(), training=False)['logits_sup']).max() > 0


def test_a_linear_probe_stops_the_classifier_gradient_into_the_encoder():
  model = simclr.build_model(small_config(linear_probe=True))
  with tf.GradientTape() as tape:
    out = model(images(), training=True)
    loss = tf.reduce_sum(out['logits_sup'])
  grads = tape.gradient(loss, model.resnet.trainable_variables)
  assert all(g is None for g in grads)


# --- freezing ----------------------------------------------------------------


@pytest.mark.parametrize('after_block', [-1, 0, 2, 4])
def test_fine_tune_after_block_freezes_exactly_the_early_stages(after_block):
  model = simclr.build_model(small_config(fine_tune_after_block=after_block))
  resnet = model.resnet
  stages = [resnet.stem] + resnet.block_groups
  frozen = stages[:after_block + 1]
  trainable = stages[after_block + 1:] + [model.projection_head,
                                          model.supervised_head]
  frozen_ids = {id(v) for s in frozen for v in s.variables}
  assert not frozen_ids & {id(v) for v in model.trainable_variables}

  stage_vars = [v for s in stages for v in s.variables]
  with tf.GradientTape() as tape:
    out = model(images(), training=True)
    loss = (tf.reduce_sum(out['logits_sup']**2) +
            tf.reduce_sum(out['proj_head_output']**2))
  grads = tape.gradient(loss, stage_vars)
  trainable_ids = {id(v) for s in trainable for v in s.trainable_variables}
  for v, g in zip(stage_vars, grads):
    if id(v) in frozen_ids:
      assert g is None, v.name
    elif id(v) in trainable_ids:
      assert g is not None, v.name
  assert all(s.trainable for s in trainable)
  assert not any(s.trainable for s in frozen)


def test_frozen_stages_run_batch_norm_in_inference_mode():
  model = simclr.build_model(small_config(fine_tune_after_block=2))
  randomise_batch_norm_statistics(model)
  frozen_vars = [v.numpy() for s in [model.resnet.stem] +
                 model.resnet.block_groups[:2] for v in s.variables]
  x = images(4)
  train_out = model(x, training=True)
  eval_out = model(x, training=False)
  # Frozen part: same output in training mode as in inference mode, and its
  # moving statistics are not updated.
  np.testing.assert_allclose(train_out['block_group2'],
                             eval_out['block_group2'], rtol=1e-5, atol=1e-5)
  after = [v.numpy() for s in [model.resnet.stem] +
           model.resnet.block_groups[:2] for v in s.variables]
  for a, b in zip(frozen_vars, after):
    np.testing.assert_array_equal(a, b)
  # The unfrozen part does use batch statistics in training mode.
  assert np.abs(train_out['block_group3'] - eval_out['block_group3']).max() > 1e-3


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='resnet_depth'):
    small_config(resnet_depth=42)
  with pytest.raises(ValueError, match='proj_head_mode'):
    small_config(proj_head_mode='deep')
  with pytest.raises(ValueError, match='image_size'):
    small_config(image_size=4)
