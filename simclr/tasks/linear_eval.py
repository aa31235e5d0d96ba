"""Linear evaluation, 'cached' protocol: the frozen encoder's final_avg_pool
features of centre crops are computed once for the train and eval splits, and
a linear classifier (the model's supervised head) is trained on them with
Adam and a cosine-decayed learning rate. Much faster than the published
protocol (crop + flip augmentation through the frozen encoder every step,
--linear_eval_protocol=augmented, run by the regular trainer)."""

import math

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from simclr import data as data_lib

LEARNING_RATE = 1e-3


def extract_features(model, inputs: data_lib.Inputs):
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
                      weight_decay: float, seed: int = 0):
  """Fits `head` (a SupervisedHead) to (features, labels) by minimising
  softmax cross-entropy + weight_decay * ||kernel||^2 / 2. Returns the number
  of optimiser steps."""
  n = len(features)
  batch_size = min(batch_size, n)
  steps_per_epoch = math.ceil(n / batch_size)
  total = max(1, epochs * steps_per_epoch)
  schedule = tf_keras.optimizers.schedules.CosineDecay(LEARNING_RATE, total)
  optimizer = tf_keras.optimizers.Adam(schedule)
  num_classes = head.dense.units
  dataset = (tf.data.Dataset.from_tensor_slices((features, labels))
             .shuffle(n, seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size).repeat(epochs))

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      logits = head(x, training=True)
      loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
          tf.one_hot(y, num_classes), logits))
      loss += weight_decay * tf.nn.l2_loss(head.dense.kernel)
    variables = head.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  loss = None
  for i, (x, y) in enumerate(dataset):
    loss = step(x, y)
    if (i + 1) % max(1, total // 5) == 0:
      logging.info('linear eval: step %d/%d, loss %.4f', i + 1, total,
                   float(loss))
  return total


def run_cached(run):
  """Runs --train_mode=linear_eval with the cached protocol for a
  simclr.tasks.runner.Run; returns the eval result when mode asks for it."""
  from simclr.tasks import runner as runner_lib  # pylint: disable=g-import-not-at-top
  configs, train = run.configs, run.configs.train
  data = configs.data
  if data.train_label_fraction < 1 or data.label_subset_file:
    raise runner_lib.RunError(
        '--linear_eval_protocol=cached reads the whole train split; use '
        '--linear_eval_protocol=augmented with --train_label_fraction / '
        '--label_subset_file')
  state = run.build_state()
  model = state.model
  runner_lib.init_from_checkpoint(model, train.checkpoint,
                                  with_supervised_head=False)
  train_inputs = data_lib.Inputs(data.replace(eval_split=data.train_split,
                                              model_dir=None))
  features, labels = extract_features(model, train_inputs)
  logging.info('linear eval: %d cached training features of width %d',
               len(features), features.shape[1])
  steps = train_linear_head(model.supervised_head, features, labels,
                            train.linear_eval_epochs, data.train_batch_size,
                            configs.optimizer.weight_decay)
  state.global_step.assign(steps)
  manager = run._checkpoint_manager(state, 1)  # pylint: disable=protected-access
  run._write_model_config(model)  # pylint: disable=protected-access
  manager.save(checkpoint_number=steps)
  result = None
  if train.mode == 'train_then_eval':
    result = run.evaluate(model, steps)
  runner_lib.export(model, run.model_dir, steps, train.keep_hub_module_max)
  return result
