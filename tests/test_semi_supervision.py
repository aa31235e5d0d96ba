"""A run on a label subset uses only that subset's labels (SimCLRv2's
semi-supervised protocol): no classifier head, teacher or memory state comes
from elsewhere without a flag asking for it.

The data: a folder of two visually distinct classes (dark and bright
images). Pretraining's linear probe, fitted on every label, learns them; a
fine-tuning on a subset holding the dark class only must not start out
knowing the bright one.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

import simclr
from simclr import head_labels
from simclr import losses
from simclr.tasks.base import RunError

IMAGE_SIZE = 16
PER_CLASS = 16
COMMON = dict(
    image_size=IMAGE_SIZE, resnet_depth=18, width_multiplier=0.125,
    use_tpu=False, global_bn=False, seed=0, deterministic=True,
    train_batch_size=8, eval_batch_size=16, steps_per_loop=1,
    color_jitter_strength=0.0, use_blur=False, crop_min_area=0.5,
    mode='train', export_saved_model=False)


@pytest.fixture(scope='module')
def two_class_folder(tmp_path_factory):
  """folder:<root> with classes 'bright' (pixels near 0.9) and 'dark' (near
  0.1), PER_CLASS noisy 16x16 images each."""
  root = tmp_path_factory.mktemp('two_classes')
  rng = np.random.RandomState(0)
  for name, level in (('bright', 0.9), ('dark', 0.1)):
    os.makedirs(root / name)
    for i in range(PER_CLASS):
      pixels = np.clip(level + 0.05 * rng.randn(IMAGE_SIZE, IMAGE_SIZE, 3),
                       0, 1)
      Image.fromarray((255 * pixels).astype(np.uint8)).save(
          root / name / f'{i:02d}.png')
  return str(root)


def images_of(folder, name):
  files = sorted(os.listdir(os.path.join(folder, name)))
  return np.stack([np.asarray(Image.open(os.path.join(folder, name, f)),
                              np.float32) / 255 for f in files])


def bright_margin(model_path, folder):
  """Mean over the bright images of logit(bright) - logit(dark): how much
  the model's classifier knows the bright class (classes are numbered in
  sorted folder order: bright 0, dark 1)."""
  model = simclr.load_model(model_path)
  logits = model(images_of(folder, 'bright'), training=False)['logits_sup']
  logits = np.asarray(logits)
  return float(np.mean(logits[:, 0] - logits[:, 1]))


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, two_class_folder):
  """A pretraining whose linear probe (every label) learned both classes."""
  model_dir = str(tmp_path_factory.mktemp('runs') / 'pretrain')
  simclr.train(**COMMON, train_mode='pretrain',
               dataset='folder:' + two_class_folder, train_steps=30,
               optimizer='adam', learning_rate=0.5, warmup_epochs=0,
               temperature=0.5, model_dir=model_dir)
  return model_dir


@pytest.fixture(scope='module')
def dark_subset_file(tmp_path_factory, two_class_folder):
  path = tmp_path_factory.mktemp('subsets') / 'dark.txt'
  path.write_text(''.join(f'dark/{f}\n' for f in sorted(
      os.listdir(os.path.join(two_class_folder, 'dark')))))
  return str(path)


def finetune_flags(folder, model_dir, **extra):
  # One step at learning rate 0: the model as fine-tuning starts it.
  return dict(COMMON, train_mode='finetune', dataset='folder:' + folder,
              train_steps=1, optimizer='momentum', learning_rate=0.0,
              warmup_epochs=0, weight_decay=0.0, model_dir=model_dir,
              **extra)


@pytest.fixture(scope='module')
def dark_only_finetune(tmp_path_factory, two_class_folder, pretrained,
                       dark_subset_file):
  model_dir = str(tmp_path_factory.mktemp('runs') / 'finetune_dark')
  simclr.train(**finetune_flags(two_class_folder, model_dir,
                                checkpoint=pretrained,
                                label_subset_file=dark_subset_file,
                                export_saved_model=True))
  return model_dir


def test_pretraining_probe_learned_both_classes(pretrained,
                                                two_class_folder):
  # The premise of the next test: the probe, fitted on every label, knows
  # the bright class.
  assert bright_margin(pretrained, two_class_folder) > 1.0
  record = json.loads(open(os.path.join(
      pretrained, head_labels.HEAD_LABELS_FILE)).read())
  assert record['subset_sha256'] is None
  assert record['split'] == 'train'


def test_one_class_finetuning_does_not_start_knowing_the_other_class(
    pretrained, dark_only_finetune, two_class_folder):
  probe = bright_margin(pretrained, two_class_folder)
  started = bright_margin(dark_only_finetune, two_class_folder)
  # A fresh head (random normal, stddev 0.01) gives a margin near zero; the
  # probe's would be `probe`.
  assert abs(started) < 0.1 * probe, (started, probe)


def test_all_label_finetuning_starts_from_the_probe(
    tmp_path, pretrained, two_class_folder):
  # Every label: the probe's labels are the run's own, so it is reused.
  model_dir = str(tmp_path / 'finetune_all')
  simclr.train(**finetune_flags(two_class_folder, model_dir,
                                checkpoint=pretrained))
  probe = bright_margin(pretrained, two_class_folder)
  np.testing.assert_allclose(bright_margin(model_dir, two_class_folder),
                             probe, rtol=0.05)


def test_subset_finetuning_records_its_subset(dark_only_finetune,
                                              dark_subset_file):
  ids = [line.strip() for line in open(dark_subset_file)]
  record = head_labels.read(dark_only_finetune)
  assert record.subset_size == PER_CLASS
  assert record.subset_sha256 == head_labels.ids_sha256(reversed(ids))
  assert sorted(record.subset_ids) == sorted(ids)
  # The export carries the record: load_model reads it from there too.
  export = os.path.join(dark_only_finetune, 'saved_model', '1')
  assert simclr.load_model(export).head_labels == record


def test_momentum_encoder_starts_from_the_checkpoint(
    tmp_path, pretrained, two_class_folder):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / 'pretrain_memory')
  # Learning rate 0: after one step the online weights are still the
  # checkpoint's, so the EMA keeps the momentum weights where they started.
  simclr.train(**dict(COMMON, train_mode='pretrain',
                      dataset='folder:' + two_class_folder, train_steps=1,
                      optimizer='momentum', learning_rate=0.0,
                      warmup_epochs=0, memory_size=16, memory_momentum=0.999,
                      checkpoint=pretrained, model_dir=model_dir))
  source = tf.train.load_checkpoint(tf.train.latest_checkpoint(pretrained))
  kernels = [source.get_tensor(k) for k in source.get_variable_to_shape_map()
             if k.startswith('model/') and '/kernel/' in k and
             'OPTIMIZER_SLOT' not in k and 'supervised_head' not in k]
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  momentum = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
              if k.startswith('momentum_encoder/') and '/kernel/' in k]
  assert len(momentum) == len(kernels) > 20
  for value in momentum:
    assert any(value.shape == k.shape and np.allclose(value, k, atol=1e-6)
               for k in kernels), value.shape


def test_student_takes_its_teachers_label_subset(
    tmp_path, pretrained, dark_only_finetune, two_class_folder):
  # Self-distillation as the demo runs it: teacher fine-tuned on the dark
  # subset, student initialised from the pretraining (whose probe saw every
  # label). The student must read the teacher's subset and not start from
  # the probe.
  model_dir = str(tmp_path / 'student')
  simclr.train(**dict(
      COMMON, train_mode='distill', dataset='folder:' + two_class_folder,
      teacher_checkpoint=dark_only_finetune, checkpoint=pretrained,
      train_steps=1, optimizer='momentum', learning_rate=0.0,
      warmup_epochs=0, weight_decay=0.0, distill_alpha=0.5,
      model_dir=model_dir))
  assert (head_labels.read(model_dir) ==
          head_labels.read(dark_only_finetune))
  probe = bright_margin(pretrained, two_class_folder)
  assert abs(bright_margin(model_dir, two_class_folder)) < 0.1 * probe


def test_student_with_another_subset_than_its_teacher_is_refused(
    tmp_path, dark_only_finetune, two_class_folder):
  flags = dict(COMMON, train_mode='distill',
               dataset='folder:' + two_class_folder,
               teacher_checkpoint=dark_only_finetune, train_steps=1,
               train_label_fraction=0.5, model_dir=str(tmp_path / 's'))
  with pytest.raises(RunError, match=r'--train_label_fraction=0\.5 .*'
                                     r'teacher .*finetune_dark.* was '
                                     r'fine-tuned on a subset of 16 labels'):
    simclr.train(**flags)


def test_student_with_a_subset_under_an_all_label_teacher_is_refused(
    tmp_path, pretrained, two_class_folder, dark_subset_file):
  # The pretraining's probe as teacher: fitted on every label.
  flags = dict(COMMON, train_mode='distill',
               dataset='folder:' + two_class_folder,
               teacher_checkpoint=pretrained, train_steps=1,
               label_subset_file=dark_subset_file,
               model_dir=str(tmp_path / 's'))
  with pytest.raises(RunError, match=r'fitted on every label of .* or pass '
                                     r'--allow_other_label_subset'):
    simclr.train(**flags)
  # On purpose: it runs, and the student counts as trained on every label.
  simclr.train(**dict(flags, allow_other_label_subset=True))
  assert not head_labels.read(flags['model_dir']).is_subset


def test_distill_on_labeled_reads_only_the_subset(
    tmp_path, dark_only_finetune, two_class_folder):
  # One epoch is examples // batch + 1 steps (the published rule): the
  # labeled subset's 16 examples give 3 steps (all 32 images would give 5).
  model_dir = str(tmp_path / 'labeled')
  simclr.train(**dict(
      COMMON, train_mode='distill', dataset='folder:' + two_class_folder,
      teacher_checkpoint=dark_only_finetune, train_epochs=1,
      distill_on='labeled', optimizer='momentum', learning_rate=0.0,
      warmup_epochs=0, model_dir=model_dir))
  metrics = json.load(open(os.path.join(model_dir, 'train_metrics.json')))
  assert metrics['global_step'] == PER_CLASS // 8 + 1
  assert json.load(open(os.path.join(model_dir, 'flags.json')))[
      'distill_on'] == 'labeled'


def test_distill_on_must_be_all_or_labeled():
  from simclr import configs  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"distill_on='unlabeled': expected "
                                       r"one of \('all', 'labeled'\)"):
    configs.TrainConfig(distill_on='unlabeled')


def test_distillation_temperature_squared_scales_the_term():
  rng = np.random.RandomState(0)
  teacher = rng.randn(6, 4).astype(np.float32)
  student = rng.randn(6, 4).astype(np.float32)
  labels = np.array([0, -1, 2, -1, -1, 3], np.int32)
  tau, alpha = 0.1, 0.7

  def log_softmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))
  target = np.exp(log_softmax(teacher / tau))
  eq2 = -(target * log_softmax(student / tau)).sum(1)   # [B]
  for squared, factor in ((False, 1.0), (True, tau ** 2)):
    terms = losses.distillation_terms(teacher, student, labels, alpha, tau,
                                      temperature_squared=squared)
    np.testing.assert_allclose(float(terms.distill_loss),
                               alpha * factor * eq2.sum() / 6, rtol=1e-5)


# ------------------------------------------------------------- the rule --

def test_reuse_rule():
  every = head_labels.HeadLabels.every_label('digits', 'train')
  subset = head_labels.HeadLabels.of_subset('digits', 'train', ['a', 'b'])
  same = head_labels.HeadLabels.of_subset('digits', 'train', ['b', 'a'])
  other = head_labels.HeadLabels.of_subset('digits', 'train', ['a', 'c'])
  unrecorded = head_labels.UNRECORDED
  allowed = head_labels.why_not_reusable
  assert allowed(every, every) is None
  assert allowed(subset, every) is None          # a subset of the run's own
  assert allowed(subset, same) is None
  assert allowed(unrecorded, every) is None      # published: every label
  assert 'every label of digits train' in allowed(every, subset)
  assert allowed(other, subset) is not None
  assert allowed(unrecorded, subset) is not None
  # Every label of another split is not this run's labels.
  assert allowed(every, head_labels.HeadLabels.every_label(
      'digits', 'train[:80%]')) is not None


def test_export_saved_model_false_writes_no_saved_model(pretrained,
                                                        dark_only_finetune):
  assert not os.path.exists(os.path.join(pretrained, 'saved_model'))
  assert os.listdir(os.path.join(dark_only_finetune, 'saved_model')) == ['1']
