"""Evaluation of the supervised head: top-1 / top-5 accuracy and the
regularisation loss, as an orbit StandardEvaluator over the 'eval' pipeline
(the split exactly once; padded rows have weight 0)."""

from typing import Dict

import orbit
import tensorflow as tf
import tf_keras

from simclr import optimization
from simclr.models.simclr_model import SimCLRModel

# The published metric names (they are also the keys of result.json).
TOP1 = 'eval/label_top_1_accuracy'
TOP5 = 'eval/label_top_5_accuracy'
REGULARIZATION = 'eval/regularization_loss'


class ClassificationEvaluator(orbit.StandardEvaluator):
  """eval_dataset: distributed batches (images, labels, weights)."""

  def __init__(self, model: SimCLRModel, eval_dataset,
               strategy: tf.distribute.Strategy,
               optimizer_config: optimization.OptimizerConfig):
    self.model = model
    self.strategy = strategy
    self.optimizer_config = optimizer_config
    num_classes = model.config.num_classes
    with strategy.scope():
      self.top1 = tf_keras.metrics.SparseCategoricalAccuracy(TOP1)
      self.top5 = tf_keras.metrics.SparseTopKCategoricalAccuracy(
          min(5, num_classes), TOP5)
      self.regularization = tf_keras.metrics.Mean(REGULARIZATION)
      self.examples = tf_keras.metrics.Sum('eval/num_examples')
    super().__init__(eval_dataset,
                     options=orbit.StandardEvaluatorOptions(
                         use_tf_while_loop=False))

  def eval_begin(self):
    for metric in (self.top1, self.top5, self.regularization, self.examples):
      metric.reset_states()

  def eval_step(self, iterator):
    def step(images, labels, weights):
      logits = self.model(images, training=False)['logits_sup']
      self.top1.update_state(labels, logits, sample_weight=weights)
      self.top5.update_state(labels, logits, sample_weight=weights)
      self.examples.update_state(tf.reduce_sum(weights))
      self.regularization.update_state(
          optimization.weight_decay_loss(self.model, self.optimizer_config))

    self.strategy.run(step, args=next(iterator))

  def eval_end(self) -> Dict[str, tf.Tensor]:
    return {metric.name: metric.result() for metric in
            (self.top1, self.top5, self.regularization, self.examples)}
