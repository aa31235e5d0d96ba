"""The SimCLR model: encoder + projection head + supervised head, returning the
published dict of named tensors."""

from typing import Dict, List

import tensorflow as tf
import tf_keras

from simclr.configs import ModelConfig
from simclr.models.heads import ProjectionHead
from simclr.models.heads import SupervisedHead
from simclr.models.resnet import ResNet

# Keys of the published SavedModels' output dict, in their order.
OUTPUT_KEYS = ('initial_conv', 'initial_max_pool', 'block_group1',
               'block_group2', 'block_group3', 'block_group4',
               'final_avg_pool', 'proj_head_input', 'proj_head_output',
               'logits_sup')
# Cast to float32 under a mixed-precision policy: losses are computed on these.
FLOAT32_KEYS = ('final_avg_pool', 'proj_head_input', 'proj_head_output',
                'supervised_head_input', 'logits_sup')


class SimCLRModel(tf_keras.Model):
  """model(images, training) with images float32 [B, H, W, 3] in [0, 1].

  Returns a dict with OUTPUT_KEYS (logits_sup only when the model has a
  supervised head) plus `supervised_head_input` (the projection-head output
  selected by ft_proj_selector). With proj_head_mode='none',
  proj_head_output is the encoder output, as published.
  """

  def __init__(self, config: ModelConfig, **kwargs):
    super().__init__(**kwargs)
    config.validate()
    self.config = config
    self.resnet = ResNet(config, name='resnet')
    self.projection_head = (ProjectionHead(config, name='projection_head')
                            if config.num_head_layers else None)
    self.supervised_head = (SupervisedHead(
        config.num_classes, config.zero_init_logits_layer,
        name='supervised_head') if config.num_classes else None)

  def call(self, images, training=None) -> Dict[str, tf.Tensor]:
    outputs = self.resnet(images, training=training)
    hidden = outputs['final_avg_pool']
    if self.projection_head is not None:
      hiddens = self.projection_head(hidden, training=training)
    else:
      hiddens = [hidden]
    outputs['proj_head_input'] = hidden
    outputs['proj_head_output'] = hiddens[-1]
    supervised_input = hiddens[self.config.ft_proj_selector]
    if self.config.linear_probe:
      # Linear evaluation while pretraining must not shape the encoder.
      supervised_input = tf.stop_gradient(supervised_input)
    outputs['supervised_head_input'] = supervised_input
    if self.supervised_head is not None:
      outputs['logits_sup'] = self.supervised_head(supervised_input,
                                                   training=training)
    for key in FLOAT32_KEYS:
      if key in outputs:
        outputs[key] = tf.cast(outputs[key], tf.float32)
    return outputs


  def head_variables_after_selector(self) -> List[tf.Variable]:
    """Trainable variables of the projection-head layers after the one the
    supervised head reads (ft_proj_selector): no loss but the contrastive
    one reaches them."""
    if self.projection_head is None:
      return []
    return [v for layer in
            self.projection_head.head_layers[self.config.ft_proj_selector:]
            for v in layer.trainable_variables]


def build_model(config: ModelConfig, build: bool = True) -> SimCLRModel:
  """Returns a SimCLRModel; with `build`, its variables are created by a call
  on a small batch of zeros (the network accepts any image size afterwards)."""
  model = SimCLRModel(config, name='simclr')
  if build:
    size = min(config.image_size, 64)
    model(tf.zeros([2, size, size, 3]), training=False)
  return model
