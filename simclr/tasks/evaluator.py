"""Evaluation of the supervised head: top-1 / top-5 accuracy and the
regularisation loss, as an orbit StandardEvaluator over the 'eval' input
(the split exactly once; padded rows have weight 0), and
evaluate_and_record: one evaluation of a run, written as TensorBoard
scalars and result.json."""

import os
from typing import Dict, Optional

from absl import logging
import orbit
import tensorflow as tf
import tf_keras

from simclr import distribute
from simclr import optimization
from simclr import paths
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
    # The statistics of the model a checkpoint would save, on every replica.
    distribute.agree_on_read_variables(self.model.variables, self.strategy)
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


def evaluate_and_record(model: SimCLRModel, eval_dataset,
                        strategy: tf.distribute.Strategy,
                        optimizer_config: optimization.OptimizerConfig,
                        model_dir: str, step: int, eval_steps: int = 0,
                        eval_name: Optional[str] = None,
                        extra: Optional[Dict[str, float]] = None
                        ) -> Dict[str, float]:
  """Evaluates `model` on `eval_dataset` (eval_steps batches; 0: the whole
  split), writes the metrics as TensorBoard scalars under
  model_dir/<eval_name or 'eval'> at `step`, and result.json and
  result_<step>.json (with `extra`, e.g. the last k-NN values of training,
  whose scalars are training's) into model_dir. Returns the result."""
  evaluator = ClassificationEvaluator(model, eval_dataset, strategy,
                                      optimizer_config)
  output = evaluator.evaluate(tf.constant(eval_steps or -1, tf.int32))
  result = {k: float(v) for k, v in output.items()}
  result['global_step'] = step
  logging.info('eval at step %d: %s', step, result)
  writer = tf.summary.create_file_writer(
      os.path.join(model_dir, eval_name or 'eval'))
  with writer.as_default():
    for key, value in result.items():
      if key != 'global_step':
        tf.summary.scalar(key, value, step=step)
  writer.flush()
  result.update(extra or {})
  write_result(model_dir, step, result)
  return result


def write_result(model_dir: str, step: int, result: Dict[str, float]):
  """model_dir/result.json (the newest) and result_<step>.json."""
  paths.write_json(os.path.join(model_dir, 'result.json'), result)
  paths.write_json(os.path.join(model_dir, f'result_{step}.json'), result)
