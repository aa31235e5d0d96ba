"""Projection head g (SimCLR's MLP) and the linear supervised head."""

from typing import List

import tensorflow as tf
import tf_keras

from simclr.models.resnet import BatchNormRelu
from simclr.models.resnet import use_synchronized_batch_norm


class DenseBatchNorm(tf_keras.layers.Layer):
  """Bias-free dense layer followed by batch norm; BN's beta plays the bias
  when `use_bias` (middle layers), and is absent otherwise (last layer).

  units=None keeps the input width (the published middle layers)."""

  def __init__(self, units, use_bias: bool, bn_momentum: float,
               synchronized: bool, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.bn = BatchNormRelu(bn_momentum, relu=False, center=use_bias,
                            synchronized=synchronized)

  def build(self, input_shape):
    self.dense = tf_keras.layers.Dense(
        self.units or int(input_shape[-1]),
        use_bias=False,
        kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01))
    super().build(input_shape)

  def call(self, inputs, training=None):
    return self.bn(self.dense(inputs), training=training)


class ProjectionHead(tf_keras.layers.Layer):
  """`nonlinear`: num_proj_layers dense+BN layers, ReLU after all but the last,
  middle layers as wide as their input, the last proj_out_dim wide without
  bias. `linear`: one such last layer.

  call(h) returns the list [h, layer 1 output, ..., layer n output]; the
  published ft_proj_selector indexes this list.
  """

  def __init__(self, config, **kwargs):
    super().__init__(**kwargs)
    sync = use_synchronized_batch_norm(config.global_bn)
    n = config.num_head_layers
    self.head_layers = []
    for j in range(n):
      last = j == n - 1
      self.head_layers.append(
          DenseBatchNorm(config.proj_out_dim if last else None,
                         use_bias=not last,
                         bn_momentum=config.batch_norm_decay,
                         synchronized=sync,
                         name=f'layer{j + 1}'))

  def call(self, inputs, training=None) -> List[tf.Tensor]:
    hiddens = [inputs]
    for j, layer in enumerate(self.head_layers):
      x = layer(hiddens[-1], training=training)
      if j != len(self.head_layers) - 1:
        x = tf.nn.relu(x)
      hiddens.append(x)
    return hiddens


class SupervisedHead(tf_keras.layers.Layer):
  """Linear classifier (with bias) giving logits_sup [B, num_classes]."""

  def __init__(self, num_classes: int, zero_init: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.dense = tf_keras.layers.Dense(
        num_classes,
        kernel_initializer=('zeros' if zero_init else
                            tf_keras.initializers.RandomNormal(stddev=0.01)))

  def call(self, inputs, training=None):
    return self.dense(inputs)
