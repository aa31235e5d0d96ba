"""--train_mode=linear_eval: a linear classifier on the frozen encoder's
final_avg_pool features of --checkpoint (fine_tune_after_block=4,
ft_proj_selector=0).

Two protocols (--linear_eval_protocol):
- 'cached' (default): the features of centre crops of the train split are
  computed once, in inference mode, and the classifier (the model's
  supervised head) is trained on them with Adam and a cosine-decayed learning
  rate for --linear_eval_epochs. Much faster; no label subsets.
- 'augmented' (published): crop + flip views through the frozen encoder at
  every step of the regular training loop, with the run's optimiser.
"""

import math
from typing import List, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from simclr import checkpoints
from simclr import losses
from simclr.configs import ModelConfig
from simclr.data import Inputs
from simclr.tasks.base import RunError
from simclr.tasks.base import StepTerms
from simclr.tasks.base import Task
from simclr.tasks.base import TrainingState
from simclr.tasks.base import supervised_terms

# Adam's learning rate of the cached protocol (cosine-decayed to 0).
CACHED_LEARNING_RATE = 1e-3


class LinearEvalTask(Task):
  name = 'linear_eval'
  pipeline = 'linear_eval'

  @property
  def cached(self) -> bool:
    return self.configs.train.linear_eval_protocol == 'cached'

  def check(self):
    data = self.configs.data
    if not self.num_classes:
      raise RunError(f'--train_mode={self.name} needs labels, but --dataset='
                     f'{data.dataset} has none')
    if self.cached and self.configs.train.mode != 'eval' and (
        data.train_label_fraction < 1 or data.label_subset_file):
      raise RunError(
          '--linear_eval_protocol=cached reads the whole train split; use '
          '--linear_eval_protocol=augmented with --train_label_fraction / '
          '--label_subset_file')

  def model_config(self) -> ModelConfig:
    return self.configs.model.replace(
        num_classes=self.num_classes, fine_tune_after_block=4,
        ft_proj_selector=0, linear_probe=False)

  def initialize(self, model, path):
    # The classifier always starts afresh: it is what linear evaluation fits.
    checkpoints.init_from_checkpoint(model, path, with_supervised_head=False)

  def metric_names(self) -> List[str]:
    return ['supervised_loss', 'supervised_acc']

  def loss_terms(self, state, images, labels, outputs) -> StepTerms:
    return supervised_terms(labels, outputs)

  def fit(self, state: TrainingState) -> Optional[int]:
    if not self.cached:
      return None
    if int(state.global_step.numpy()) > 0:
      return int(state.global_step.numpy())  # Restored a finished fit.
    data = self.configs.data
    train_inputs = Inputs(data.replace(eval_split=data.train_split,
                                       model_dir=None),
                          source=self.inputs.source)
    features, labels = extract_features(state.model, train_inputs)
    logging.info('linear eval: %d cached training features of width %d',
                 len(features), features.shape[1])
    steps = train_linear_head(
        state.model.supervised_head, features, labels,
        self.configs.train.linear_eval_epochs, data.train_batch_size,
        self.configs.optimizer.weight_decay)
    state.global_step.assign(steps)
    return steps


def extract_features(model, inputs: Inputs):
  """(features float32 [N, D], labels int32 [N]) of inputs' eval split, each
  example exactly once, inference mode."""
  features, labels = [], []

  @tf.function
  def encode(images):
    return model(images, training=False)['final_avg_pool']

  for images, batch_labels, weights in inputs.dataset('eval'):
    keep = weights.numpy() > 0
    features.append(encode(images).numpy()[keep])
    labels.append(batch_labels.numpy()[keep])
  return np.concatenate(features), np.concatenate(labels).astype(np.int32)


def train_linear_head(head, features, labels, epochs: int, batch_size: int,
                      weight_decay: float, seed: int = 0) -> int:
  """Fits `head` (a SupervisedHead) to (features, labels) by minimising
  softmax cross-entropy (simclr.losses) + weight_decay * ||kernel||^2 / 2
  with Adam. Returns the number of optimiser steps."""
  n = len(features)
  batch_size = min(batch_size, n)
  total = max(1, epochs * math.ceil(n / batch_size))
  schedule = tf_keras.optimizers.schedules.CosineDecay(CACHED_LEARNING_RATE,
                                                       total)
  optimizer = tf_keras.optimizers.Adam(schedule)
  dataset = (tf.data.Dataset.from_tensor_slices((features, labels))
             .shuffle(n, seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size).repeat(epochs))

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = losses.supervised_with_labels(y, head(x, training=True)).loss
      loss += weight_decay * tf.nn.l2_loss(head.dense.kernel)
    variables = head.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  for i, (x, y) in enumerate(dataset):
    loss = step(x, y)
    if (i + 1) % max(1, total // 5) == 0:
      logging.info('linear eval: step %d/%d, loss %.4f', i + 1, total,
                   float(loss))
  return total
