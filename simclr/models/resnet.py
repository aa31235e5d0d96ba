"""ResNet encoder of SimCLR/SimCLRv2: depths 18..200, any width, selective
kernels (SK) with the ResNet-D stem and shortcuts, squeeze-excitation (SE).

Layer for layer the published `tf2/resnet.py` (post-activation ResNet v1 with
fixed padding for strided convolutions and a projection shortcut on the first
block of every group), so that its checkpoints map onto these variables; see
`simclr/checkpoints/published.py` for that mapping. Channels-last only.
"""

from typing import Dict

import tensorflow as tf
import tf_keras

BATCH_NORM_EPSILON = 1e-5

# depth -> (residual block kind, blocks per group)
BLOCKS_PER_GROUP = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
SK_MIN_DIM = 32


def use_synchronized_batch_norm(global_bn: bool) -> bool:
  """Global BN only changes anything with more than one replica; on one replica
  the plain (fused, much faster on CPU) batch norm computes the same thing."""
  return global_bn and tf.distribute.get_strategy().num_replicas_in_sync > 1


class BatchNormRelu(tf_keras.layers.Layer):
  """Batch norm (decay `momentum`, epsilon 1e-5), then an optional ReLU.

  `synchronized` aggregates the batch statistics over all replicas in training
  (global BN). `init_zero` starts gamma at 0 (last BN of a residual block).
  """

  def __init__(self, momentum: float, relu: bool = True, init_zero=False,
               center=True, synchronized=False, **kwargs):
    super().__init__(**kwargs)
    self.relu = relu
    self.bn = tf_keras.layers.BatchNormalization(
        axis=-1,
        momentum=momentum,
        epsilon=BATCH_NORM_EPSILON,
        center=center,
        gamma_initializer='zeros' if init_zero else 'ones',
        synchronized=synchronized)

  def call(self, inputs, training=None):
    outputs = self.bn(inputs, training=training)
    return tf.nn.relu(outputs) if self.relu else outputs


class Conv2dFixedPadding(tf_keras.layers.Layer):
  """Bias-free convolution; strided ones pad explicitly by (k-1) split as
  floor/ceil and use VALID, so the output does not depend on the input size's
  parity (the published 'fixed padding')."""

  def __init__(self, filters: int, kernel_size: int, strides: int, **kwargs):
    super().__init__(**kwargs)
    self.kernel_size = kernel_size
    self.strides = strides
    self.conv2d = tf_keras.layers.Conv2D(
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        padding='same' if strides == 1 else 'valid',
        use_bias=False,
        kernel_initializer=tf_keras.initializers.VarianceScaling())

  def call(self, inputs, training=None):
    if self.strides > 1:
      inputs = fixed_padding(inputs, self.kernel_size)
    return self.conv2d(inputs)


def fixed_padding(inputs, kernel_size: int):
  """Pads height and width by kernel_size - 1, the smaller half first."""
  pad_total = kernel_size - 1
  pad_begin = pad_total // 2
  pad_end = pad_total - pad_begin
  return tf.pad(inputs,
                [[0, 0], [pad_begin, pad_end], [pad_begin, pad_end], [0, 0]])


class SelectiveKernel(tf_keras.layers.Layer):
  """Selective-kernel 3x3 convolution (Li et al. 2019) as in SimCLRv2: one
  convolution of 2*filters gives two streams; a squeeze path of
  max(filters * sk_ratio, 32) channels yields per-channel softmax weights that
  mix the two streams."""

  def __init__(self, filters: int, strides: int, sk_ratio: float,
               bn_momentum: float, synchronized: bool, **kwargs):
    super().__init__(**kwargs)
    self.conv_two_streams = Conv2dFixedPadding(2 * filters, 3, strides)
    self.bn_two_streams = BatchNormRelu(bn_momentum, synchronized=synchronized)
    mixing_dim = max(int(filters * sk_ratio), SK_MIN_DIM)
    self.conv_squeeze = tf_keras.layers.Conv2D(
        mixing_dim, 1, use_bias=False,
        kernel_initializer=tf_keras.initializers.VarianceScaling())
    self.bn_squeeze = BatchNormRelu(bn_momentum, synchronized=synchronized)
    self.conv_mixing = tf_keras.layers.Conv2D(
        2 * filters, 1, use_bias=False,
        kernel_initializer=tf_keras.initializers.VarianceScaling())

  def call(self, inputs, training=None):
    streams = self.conv_two_streams(inputs)
    streams = self.bn_two_streams(streams, training=training)
    streams = tf.stack(tf.split(streams, 2, axis=-1))  # [2, B, H, W, C]
    summary = tf.reduce_mean(tf.reduce_sum(streams, axis=0), [1, 2],
                             keepdims=True)
    summary = self.bn_squeeze(self.conv_squeeze(summary), training=training)
    mixing = tf.stack(tf.split(self.conv_mixing(summary), 2, axis=-1))
    mixing = tf.nn.softmax(mixing, axis=0)
    return tf.reduce_sum(streams * mixing, axis=0)


class SqueezeExcitation(tf_keras.layers.Layer):
  """Channel gating (Hu et al. 2018) with a bottleneck of
  max(1, filters * se_ratio) channels."""

  def __init__(self, filters: int, se_ratio: float, **kwargs):
    super().__init__(**kwargs)
    self.reduced_dim = max(1, int(filters * se_ratio))

  def build(self, input_shape):
    self.se_reduce = tf_keras.layers.Conv2D(
        self.reduced_dim, 1, use_bias=True,
        kernel_initializer=tf_keras.initializers.VarianceScaling())
    self.se_expand = tf_keras.layers.Conv2D(
        int(input_shape[-1]), 1, use_bias=True,
        kernel_initializer=tf_keras.initializers.VarianceScaling())
    super().build(input_shape)

  def call(self, inputs, training=None):
    gate = tf.reduce_mean(inputs, [1, 2], keepdims=True)
    gate = self.se_expand(tf.nn.relu(self.se_reduce(gate)))
    return tf.sigmoid(gate) * inputs


class Shortcut(tf_keras.layers.Layer):
  """Projection shortcut: a strided 1x1 conv + BN, or with ResNet-D (used
  whenever SK is on) a 2x2 average pool followed by a 1x1 conv + BN."""

  def __init__(self, filters: int, strides: int, resnet_d: bool,
               bn_momentum: float, synchronized: bool, **kwargs):
    super().__init__(**kwargs)
    self.strides = strides
    self.resnet_d = resnet_d
    if resnet_d:
      self.pool = tf_keras.layers.AveragePooling2D(
          pool_size=2, strides=strides,
          padding='same' if strides == 1 else 'valid')
      self.conv = Conv2dFixedPadding(filters, 1, 1)
    else:
      self.conv = Conv2dFixedPadding(filters, 1, strides)
    self.bn = BatchNormRelu(bn_momentum, relu=False, synchronized=synchronized)

  def call(self, inputs, training=None):
    if self.resnet_d:
      if self.strides > 1:
        inputs = fixed_padding(inputs, 2)
      inputs = self.pool(inputs)
    return self.bn(self.conv(inputs), training=training)


class ResidualBlock(tf_keras.layers.Layer):
  """Basic block (ResNet-18/34): two 3x3 convs. The published code uses SK only
  for its shortcuts here (ResNet-D), not for the 3x3 convs."""

  expansion = 1

  def __init__(self, filters, strides, use_projection, config, **kwargs):
    super().__init__(**kwargs)
    momentum = config.batch_norm_decay
    sync = use_synchronized_batch_norm(config.global_bn)
    self.shortcut = (Shortcut(filters, strides, config.sk_ratio > 0, momentum,
                              sync) if use_projection else None)
    self.conv1 = Conv2dFixedPadding(filters, 3, strides)
    self.bn1 = BatchNormRelu(momentum, synchronized=sync)
    self.conv2 = Conv2dFixedPadding(filters, 3, 1)
    self.bn2 = BatchNormRelu(momentum, relu=False, init_zero=True,
                             synchronized=sync)
    self.se = (SqueezeExcitation(filters, config.se_ratio)
               if config.se_ratio > 0 else None)

  def call(self, inputs, training=None):
    shortcut = inputs
    if self.shortcut is not None:
      shortcut = self.shortcut(inputs, training=training)
    x = self.bn1(self.conv1(inputs), training=training)
    x = self.bn2(self.conv2(x), training=training)
    if self.se is not None:
      x = self.se(x)
    return tf.nn.relu(x + shortcut)


class BottleneckBlock(tf_keras.layers.Layer):
  """Bottleneck block (ResNet-50+): 1x1, 3x3 (or SK), 1x1 to 4x filters."""

  expansion = 4

  def __init__(self, filters, strides, use_projection, config, **kwargs):
    super().__init__(**kwargs)
    momentum = config.batch_norm_decay
    sync = use_synchronized_batch_norm(config.global_bn)
    self.shortcut = (Shortcut(4 * filters, strides, config.sk_ratio > 0,
                              momentum, sync) if use_projection else None)
    self.conv1 = Conv2dFixedPadding(filters, 1, 1)
    self.bn1 = BatchNormRelu(momentum, synchronized=sync)
    if config.sk_ratio > 0:
      self.selective_kernel = SelectiveKernel(filters, strides,
                                              config.sk_ratio, momentum, sync)
    else:
      self.selective_kernel = None
      self.conv2 = Conv2dFixedPadding(filters, 3, strides)
      self.bn2 = BatchNormRelu(momentum, synchronized=sync)
    self.conv3 = Conv2dFixedPadding(4 * filters, 1, 1)
    self.bn3 = BatchNormRelu(momentum, relu=False, init_zero=True,
                             synchronized=sync)
    self.se = (SqueezeExcitation(filters, config.se_ratio)
               if config.se_ratio > 0 else None)

  def call(self, inputs, training=None):
    shortcut = inputs
    if self.shortcut is not None:
      shortcut = self.shortcut(inputs, training=training)
    x = self.bn1(self.conv1(inputs), training=training)
    if self.selective_kernel is not None:
      x = self.selective_kernel(x, training=training)
    else:
      x = self.bn2(self.conv2(x), training=training)
    x = self.bn3(self.conv3(x), training=training)
    if self.se is not None:
      x = self.se(x)
    return tf.nn.relu(x + shortcut)


class BlockGroup(tf_keras.layers.Layer):
  """`num_blocks` blocks; the first one strides and projects its shortcut."""

  def __init__(self, block_class, filters, num_blocks, strides, config,
               **kwargs):
    super().__init__(**kwargs)
    self.blocks = [
        block_class(filters, strides if i == 0 else 1, i == 0, config,
                    name=f'block{i + 1}') for i in range(num_blocks)
    ]

  def call(self, inputs, training=None):
    for block in self.blocks:
      inputs = block(inputs, training=training)
    return inputs


class Stem(tf_keras.layers.Layer):
  """CIFAR stem (3x3 stride 1, no pooling) for image_size <= 32; otherwise a
  7x7 stride-2 conv, or with SK the ResNet-D stem of three 3x3 convs
  (stride 2, then 1, 1); then BN-ReLU and a 3x3 stride-2 max pool.

  Returns (initial_conv, initial_max_pool): the last conv's output before BN,
  and the stem's output.
  """

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    momentum = config.batch_norm_decay
    sync = use_synchronized_batch_norm(config.global_bn)
    width = stem_width(config.width_multiplier)
    self.cifar = config.cifar_stem
    self.resnet_d = (not self.cifar) and config.sk_ratio > 0
    # Convs before the last one, each followed by BN-ReLU (ResNet-D only).
    self.deep_convs, self.deep_bns = [], []
    if self.cifar:
      self.conv = Conv2dFixedPadding(width, 3, 1)
    elif self.resnet_d:
      for strides in (2, 1):
        self.deep_convs.append(Conv2dFixedPadding(width // 2, 3, strides))
        self.deep_bns.append(BatchNormRelu(momentum, synchronized=sync))
      self.conv = Conv2dFixedPadding(width, 3, 1)
    else:
      self.conv = Conv2dFixedPadding(width, 7, 2)
    self.bn = BatchNormRelu(momentum, synchronized=sync)
    self.max_pool = (None if self.cifar else tf_keras.layers.MaxPooling2D(
        pool_size=3, strides=2, padding='same'))

  def call(self, inputs, training=None):
    x = inputs
    for conv, bn in zip(self.deep_convs, self.deep_bns):
      x = bn(conv(x), training=training)
    initial_conv = self.conv(x)
    x = self.bn(initial_conv, training=training)
    if self.max_pool is not None:
      x = self.max_pool(x)
    return initial_conv, x


def stem_width(width_multiplier) -> int:
  return int(round(64 * width_multiplier))


class ResNet(tf_keras.layers.Layer):
  """The encoder f: images [B, H, W, 3] -> dict of named feature maps and
  `final_avg_pool` [B, C] (C = 512 or 2048 times the width).

  Freezing (`fine_tune_after_block` k >= 0): the stem and block groups 1..k are
  built non-trainable, always run in inference mode (BN uses its moving
  statistics and does not update them), and the gradient stops after them.
  """

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    self.frozen_stages = config.fine_tune_after_block + 1  # stem is stage 0
    block_kind, blocks = BLOCKS_PER_GROUP[config.resnet_depth]
    block_class = ResidualBlock if block_kind == 'basic' else BottleneckBlock
    width = stem_width(config.width_multiplier)
    self.stem = Stem(config, name='stem', trainable=self.frozen_stages < 1)
    self.block_groups = [
        BlockGroup(block_class, width * 2**i, blocks[i], 1 if i == 0 else 2,
                   config, name=f'block_group{i + 1}',
                   trainable=self.frozen_stages < i + 2) for i in range(4)
    ]

  def call(self, images, training=None) -> Dict[str, tf.Tensor]:
    outputs = {}
    stem_training = False if self.frozen_stages >= 1 else training
    outputs['initial_conv'], x = self.stem(images, training=stem_training)
    outputs['initial_max_pool'] = x
    if self.frozen_stages == 1:
      x = tf.stop_gradient(x)
    for i, group in enumerate(self.block_groups):
      stage = i + 1
      frozen = stage < self.frozen_stages
      x = group(x, training=False if frozen else training)
      if stage == self.frozen_stages - 1:
        x = tf.stop_gradient(x)
      outputs[f'block_group{stage}'] = x
    outputs['final_avg_pool'] = tf.reduce_mean(x, [1, 2])
    return outputs
