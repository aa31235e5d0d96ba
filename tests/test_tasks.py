"""One training step of each task (simclr/tasks/<train_mode>.py) through the
real Trainer, checked against numpy: the supervised head's update (plain SGD,
so w' = w - lr * dL/dw) and the reported loss terms, computed from the
model's own features of the same forward pass."""

import numpy as np
import pytest
import tensorflow as tf

import simclr
from simclr import compat
from simclr.configs import configs_from_values
from simclr.data import pipeline
from simclr.tasks import TASKS
from simclr.tasks.base import RunError
from simclr.tasks.build import build_trainer
from simclr.tasks.build import build_training_state

NUM_CLASSES = 3
BATCH = 4  # images
LEARNING_RATE = 0.5
TINY = dict(resnet_depth=18, width_multiplier=0.125, image_size=8,
            proj_out_dim=4, num_proj_layers=2, global_bn=False,
            optimizer='momentum', momentum=0.0, learning_rate=LEARNING_RATE,
            learning_rate_scaling='sqrt', warmup_epochs=0, weight_decay=0.0,
            train_batch_size=BATCH, train_steps=1000, use_tpu=False)


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def make_task(**values):
  configs = configs_from_values(dict(TINY, **values))
  return TASKS[configs.train.train_mode](configs, NUM_CLASSES)


def one_step(task, images, labels, return_trainer=False):
  """Runs one Trainer step of `task` on (images, labels) with plain SGD at
  the schedule's first learning rate; returns (state, loop outputs, the
  forward outputs of the model before the step, the supervised head's
  (kernel, bias) before the step[, the trainer])."""
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  configs = task.configs
  # Cosine decay at step 0 is the peak: sqrt scaling gives lr * sqrt(B).
  state = build_training_state(configs, task, strategy, num_examples=100,
                               train_steps=1000)
  model = state.model
  before = model(images, training=True)
  before = {k: v.numpy() for k, v in before.items()}
  # Read as a run reads it (on one CPU: not through tf.distribute).
  dataset = pipeline.distribute(
      strategy, tf.data.Dataset.from_tensors((images, labels)).repeat())
  trainer = build_trainer(configs, task, state, dataset, strategy,
                          summary_images=0)
  head = model.supervised_head
  kernel, bias = ((head.dense.kernel.numpy(), head.dense.bias.numpy())
                  if head is not None else (None, None))
  outputs = trainer.train(tf.constant(1, tf.int32))
  outputs = {k.split('/')[-1]: float(v) for k, v in outputs.items()}
  if return_trainer:
    return state, outputs, before, (kernel, bias), trainer
  # As a run does when it ends: a later collection would free the iterator
  # only after the idle tf.data autotuner's sleep.
  compat.release_train_iterator(trainer)
  return state, outputs, before, (kernel, bias)


def step_size():
  return LEARNING_RATE * np.sqrt(BATCH)


def expected_head(before_params, features, logit_gradient):
  kernel, bias = before_params
  return (kernel - step_size() * features.T @ logit_gradient,
          bias - step_size() * logit_gradient.sum(0))


def images_and_labels(num_images, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(num_images, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, num_images).astype(np.int32)
  return tf.constant(images), tf.constant(labels)


def test_finetune_step_follows_the_cross_entropy_of_the_labeled_rows():
  task = make_task(train_mode='finetune', ft_proj_selector=1)
  images, labels = images_and_labels(BATCH)
  labels = tf.constant([2, -1, 0, 1], tf.int32)  # One unlabeled row.
  state, outputs, before, params = one_step(task, images, labels)
  features, logits = before['supervised_head_input'], before['logits_sup']
  y = labels.numpy()
  labeled = y >= 0
  onehot = np.eye(NUM_CLASSES)[np.where(labeled, y, 0)] * labeled[:, None]
  loss = -(onehot * log_softmax(logits)).sum(-1)[labeled].mean()
  gradient = (softmax(logits) - onehot) * labeled[:, None] / labeled.sum()
  kernel, bias = expected_head(params, features, gradient)
  np.testing.assert_allclose(outputs['supervised_loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(
      outputs['supervised_acc'],
      (logits.argmax(-1) == y)[labeled].mean(), atol=1e-7)
  head = state.model.supervised_head.dense
  np.testing.assert_allclose(head.kernel.numpy(), kernel, atol=2e-6)
  np.testing.assert_allclose(head.bias.numpy(), bias, atol=2e-6)


def test_pretrain_step_reports_nt_xent_and_trains_the_probe_on_stopped_features():
  task = make_task(train_mode='pretrain', temperature=0.5)
  images, labels = images_and_labels(2 * BATCH)
  labels = tf.concat([labels[:BATCH], labels[:BATCH]], 0)  # Views share it.
  state, outputs, before, params = one_step(task, images, labels)
  z = before['proj_head_output']
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  similarity = z @ z.T / 0.5
  np.fill_diagonal(similarity, -np.inf)
  positive = np.concatenate([np.arange(BATCH, 2 * BATCH), np.arange(BATCH)])
  per_view = -log_softmax(similarity)[np.arange(2 * BATCH), positive]
  # The published scale: both views' losses added, mean over the pairs.
  np.testing.assert_allclose(outputs['contrast_loss'], 2 * per_view.mean(),
                             rtol=1e-5)
  features, logits = before['proj_head_input'], before['logits_sup']
  onehot = np.eye(NUM_CLASSES)[labels.numpy()]
  gradient = (softmax(logits) - onehot) / (2 * BATCH)
  kernel, bias = expected_head(params, features, gradient)
  head = state.model.supervised_head.dense
  np.testing.assert_allclose(head.kernel.numpy(), kernel, atol=2e-6)
  np.testing.assert_allclose(head.bias.numpy(), bias, atol=2e-6)


def numpy_nt_xent(z, temperature, negatives=None):
  """2 x mean over the 2n anchors (the published scale) of -log softmax of
  the positive among all other rows of z (+ the extra negatives)."""
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z) // 2
  candidates = z
  if negatives is not None:
    negatives = negatives / np.linalg.norm(negatives, axis=1, keepdims=True)
    candidates = np.concatenate([z, negatives])
  logits = z @ candidates.T / temperature
  logits[np.arange(2 * n), np.arange(2 * n)] = -np.inf
  positive = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  return 2 * (-log_softmax(logits)[np.arange(2 * n), positive]).mean()


def test_pretrain_with_memory_negatives_adds_the_queued_keys_as_negatives():
  task = make_task(train_mode='pretrain', temperature=0.5,
                   memory_size=4 * BATCH, memory_momentum=0.9,
                   lineareval_while_pretraining=False)
  images, labels = images_and_labels(2 * BATCH)
  state, outputs, before, _, trainer = one_step(task, images, labels,
                                                return_trainer=True)
  # First step: an empty queue, so SimCLR's loss; the momentum encoder
  # starts as a copy of the online one, so the keys it queued are the
  # step's projections (both views, in row order).
  np.testing.assert_allclose(outputs['contrast_loss'],
                             numpy_nt_xent(before['proj_head_output'], 0.5),
                             rtol=1e-5)
  queue = state.extras['memory_queue']
  assert int(queue.length.numpy()) == 2 * BATCH
  np.testing.assert_allclose(queue.queue.numpy()[:2 * BATCH],
                             before['proj_head_output'], atol=1e-5)
  queued = queue.queue.numpy()[:2 * BATCH]
  second = state.model(images, training=True)['proj_head_output'].numpy()
  outputs = trainer.train(tf.constant(1, tf.int32))
  compat.release_train_iterator(trainer)
  np.testing.assert_allclose(
      float(outputs['train/contrast_loss']),
      numpy_nt_xent(second, 0.5, negatives=queued), rtol=1e-5)


def test_linear_eval_step_trains_only_the_head_on_frozen_features():
  task = make_task(train_mode='linear_eval', linear_eval_protocol='augmented',
                   checkpoint='unused-by-this-test')
  images, labels = images_and_labels(BATCH)
  state, outputs, before, params = one_step(task, images, labels)
  model = state.model
  onehot = np.eye(NUM_CLASSES)[labels.numpy()]
  # Frozen blocks run batch norm in inference mode: the features of the
  # step are the inference-mode ones, now and after the step.
  frozen = model(images, training=False)
  logits = before['logits_sup']
  gradient = (softmax(logits) - onehot) / BATCH
  kernel, bias = expected_head(params, frozen['final_avg_pool'].numpy(),
                               gradient)
  head = state.model.supervised_head.dense
  np.testing.assert_allclose(head.kernel.numpy(), kernel, atol=2e-6)
  # The encoder did not move: its features are still those of the step.
  np.testing.assert_array_equal(frozen['final_avg_pool'].numpy(),
                                before['final_avg_pool'])
  np.testing.assert_allclose(
      outputs['supervised_loss'],
      -(onehot * log_softmax(logits)).sum(-1).mean(), rtol=1e-5)


@pytest.mark.parametrize('alpha, squared', [(1.0, False), (0.25, False),
                                             (0.25, True)])
def test_distill_step_follows_equation_3_with_unlabeled_rows(alpha, squared,
                                                             tmp_path):
  teacher = simclr.build_model(simclr.ModelConfig(
      **{k: TINY[k] for k in ('resnet_depth', 'width_multiplier',
                              'image_size', 'proj_out_dim', 'num_proj_layers',
                              'global_bn')},
      num_classes=NUM_CLASSES, ft_proj_selector=1))
  teacher_dir = str(tmp_path / 'teacher')
  simclr.export_saved_model(teacher, teacher_dir)
  task = make_task(train_mode='distill', teacher_checkpoint=teacher_dir,
                   distill_alpha=alpha, distill_temperature=0.5,
                   distill_temperature_squared=squared, ft_proj_selector=0)
  images, _ = images_and_labels(BATCH)
  labels = tf.constant([1, -1, -1, 2], tf.int32)
  state, outputs, before, params = one_step(task, images, labels)
  teacher_logits = teacher(images, training=False)['logits_sup'].numpy()
  student_logits = before['logits_sup']
  tau = 0.5
  # Eq. 2, times tau^2 with --distill_temperature_squared (Hinton et al.).
  scale = tau ** 2 if squared else 1.0
  target = softmax(teacher_logits / tau)
  distill = scale * -(target * log_softmax(student_logits / tau)).sum(-1)
  y = labels.numpy()
  labeled = y >= 0
  onehot = np.eye(NUM_CLASSES)[np.where(labeled, y, 0)] * labeled[:, None]
  cross_entropy = -(onehot * log_softmax(student_logits)).sum(-1)
  np.testing.assert_allclose(outputs['distill_loss'], alpha * distill.mean(),
                             rtol=1e-5)
  if alpha < 1:
    np.testing.assert_allclose(outputs['supervised_loss'],
                               (1 - alpha) * cross_entropy.sum() / BATCH,
                               rtol=1e-5)
  else:
    assert 'supervised_loss' not in outputs
  gradient = (alpha * scale * (softmax(student_logits / tau) - target) / tau +
              (1 - alpha) * (softmax(student_logits) - onehot) *
              labeled[:, None]) / BATCH
  kernel, bias = expected_head(params, before['supervised_head_input'],
                               gradient)
  head = state.model.supervised_head.dense
  np.testing.assert_allclose(head.kernel.numpy(), kernel, atol=2e-6)
  np.testing.assert_allclose(head.bias.numpy(), bias, atol=2e-6)


def test_pretraining_refuses_frozen_blocks():
  task = make_task(train_mode='pretrain', fine_tune_after_block=2)
  with pytest.raises(RunError, match='fine_tune_after_block'):
    task.check()


def test_finetune_needs_labels():
  configs = configs_from_values(dict(TINY, train_mode='finetune'))
  with pytest.raises(RunError, match='needs labels'):
    TASKS['finetune'](configs, num_classes=0).check()


def test_every_train_mode_has_a_task_named_after_it():
  from simclr.configs import TRAIN_MODES  # pylint: disable=g-import-not-at-top
  assert sorted(TASKS) == sorted(TRAIN_MODES)
  assert all(TASKS[mode].name == mode for mode in TRAIN_MODES)


def tiny_model(**changes):
  return simclr.build_model(simclr.ModelConfig(
      **{k: TINY[k] for k in ('resnet_depth', 'width_multiplier',
                              'image_size', 'proj_out_dim', 'num_proj_layers',
                              'global_bn')},
      num_classes=NUM_CLASSES, **changes))


def published_format_checkpoint(model, directory):
  """The model's variables at the published object-graph paths and nothing
  else (no model_config.json): what the published run.py writes."""
  from simclr import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.training_checkpoint(model).write(
      str(directory / 'ckpt'))


def test_a_published_teacher_uses_the_flagged_projection_layer(tmp_path):
  teacher = tiny_model(ft_proj_selector=1)
  path = published_format_checkpoint(teacher, tmp_path)
  images, _ = images_and_labels(BATCH)
  expected = teacher(images, training=False)['logits_sup'].numpy()
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  flagged = make_task(train_mode='distill', teacher_checkpoint=path,
                      teacher_ft_proj_selector=1)
  flagged.prepare(strategy)
  np.testing.assert_allclose(
      flagged.teacher(images, training=False)['logits_sup'], expected,
      atol=1e-6)
  # Without the flag the file cannot tell: the head input layer (0) is
  # assumed, and the logits are those of another network.
  unflagged = make_task(train_mode='distill', teacher_checkpoint=path)
  unflagged.prepare(strategy)
  assert np.abs(unflagged.teacher(images, training=False)['logits_sup'] -
                expected).max() > 1e-3


def test_a_teacher_selector_flag_contradicting_our_files_is_refused(tmp_path):
  from simclr import checkpoints  # pylint: disable=g-import-not-at-top
  teacher_dir = str(tmp_path / 'teacher')
  simclr.export_saved_model(tiny_model(ft_proj_selector=1), teacher_dir)
  task = make_task(train_mode='distill', teacher_checkpoint=teacher_dir,
                   teacher_ft_proj_selector=0)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'--teacher_ft_proj_selector=0 contradicts '
                           r'ft_proj_selector=1'):
    task.prepare(tf.distribute.OneDeviceStrategy('/cpu:0'))


def test_checkpoint_head_is_reused_only_on_the_layer_it_was_trained_on(
    tmp_path):
  from simclr import checkpoints  # pylint: disable=g-import-not-at-top
  source = tiny_model(ft_proj_selector=1)
  path = published_format_checkpoint(source, tmp_path)
  images, _ = images_and_labels(BATCH)
  expected = source(images, training=False)['logits_sup'].numpy()
  model = tiny_model(ft_proj_selector=1)
  assert checkpoints.init_from_checkpoint(model, path,
                                          source_ft_proj_selector=1)
  np.testing.assert_allclose(model(images, training=False)['logits_sup'],
                             expected, atol=1e-6)
  # Published files do not record the layer: 0 is assumed, which differs
  # from the model's 1, so the head is not reused; evaluation refuses.
  model = tiny_model(ft_proj_selector=1)
  assert not checkpoints.init_from_checkpoint(model, path)
  with pytest.raises(checkpoints.CheckpointError,
                     match='projection-head output 0 there, 1 here'):
    checkpoints.init_from_checkpoint(model, path,
                                     require_supervised_head=True)


@pytest.mark.parametrize('cv_max_examples', [None, 60])
def test_cached_linear_eval_head_gives_the_fitted_logistic_regression(
    monkeypatch, cv_max_examples):
  # With 60: the strength is searched on a sample of half the examples, and
  # the head must still be the fit to all 120 at that strength.
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import pipeline  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top
  from simclr.models.heads import SupervisedHead  # pylint: disable=g-import-not-at-top
  from simclr.tasks import linear_eval  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 6)) * 3
  labels = np.repeat(np.arange(4), 30)
  # Features on very different scales and offsets, as encoder outputs are.
  features = (centres[labels] + rng.normal(size=(120, 6))) * [
      1, 10, 0.1, 5, 1, 100] + 50
  head = SupervisedHead(5, False)  # Class 4 never occurs.
  head(tf.zeros([1, 6]))
  if cv_max_examples:
    monkeypatch.setattr(linear_eval, 'CV_MAX_EXAMPLES', cv_max_examples)
  chosen = linear_eval.fit_linear_head(head, features, labels)
  assert chosen in linear_eval.CACHED_INVERSE_L2
  reference = pipeline.make_pipeline(
      preprocessing.StandardScaler(),
      # L-BFGS to a tight tolerance: another solver than the library's.
      linear_model.LogisticRegression(C=chosen, max_iter=100000,
                                      tol=1e-10)).fit(
          features, labels)
  logits = head(tf.constant(features, tf.float32)).numpy()
  np.testing.assert_allclose(logits[:, :4], reference.decision_function(
      features), rtol=1e-3, atol=1e-3)
  assert (logits[:, 4] < logits[:, :4].min(1) - 100).all()


@pytest.mark.parametrize('values', [
    dict(train_mode='pretrain', optimizer='lars'),
    dict(train_mode='finetune', optimizer='momentum', ft_proj_selector=0),
    dict(train_mode='finetune', optimizer='adam', ft_proj_selector=1),
], ids=['pretrain-lars', 'finetune-momentum-head-input', 'finetune-adam'])
def test_the_train_step_is_traced_once(values):
  """The optimizer's slots exist before the first loop (build.py), so the
  loop's function creates no variable and TensorFlow traces it once, not a
  second time; only the layers the loss reaches get slots."""
  task = make_task(**values)
  traces = []
  loss_terms = task.loss_terms

  def counted(*args):
    traces.append(1)  # Python runs only while TensorFlow traces.
    return loss_terms(*args)

  task.loss_terms = counted
  pretrain = values['train_mode'] == 'pretrain'
  images, labels = images_and_labels(2 * BATCH if pretrain else BATCH)
  state, _, _, _, trainer = one_step(task, images, labels,
                                     return_trainer=True)
  for _ in range(3):
    trainer.train(tf.constant(2, tf.int32))
  assert len(traces) == 1
  assert int(state.global_step.numpy()) == 7
  head = {id(v) for v in state.model.projection_head.head_layers[
      values.get('ft_proj_selector', 0):][0].trainable_variables}
  trained = {id(v) for v in trainer.trained_variables}
  compat.release_train_iterator(trainer)
  # Pretraining updates every layer; fine-tuning from the head input none of
  # the head's, from its first layer not the second.
  assert head <= trained if pretrain else not head & trained


def test_a_finished_run_leaves_no_input_iterator_for_the_collector(tmp_path):
  # Its iterator is freed when the run ends, not at a later collection that
  # would wait for the tf.data autotuner's sleep (simclr.compat,
  # release_train_iterator). The collector is off during the run, so that
  # nothing it frees meanwhile can hide a new iterator.
  import gc  # pylint: disable=g-import-not-at-top

  def live_iterators():
    return sum(isinstance(o, tf.data.Iterator) for o in gc.get_objects())

  gc.collect()
  before = live_iterators()
  gc.disable()
  try:
    result = simclr.train(
        train_mode='pretrain', dataset='digits',
        data_dir=str(tmp_path / 'tfds'), image_size=16, resnet_depth=18,
        width_multiplier=0.125, train_batch_size=16, eval_batch_size=64,
        train_steps=2, steps_per_loop=1, use_tpu=False,
        model_dir=str(tmp_path / 'run'), mode='train_then_eval',
        eval_split='test', export_saved_model=False)
    after = live_iterators()
  finally:
    gc.enable()
  assert result['global_step'] == 2
  assert after == before
