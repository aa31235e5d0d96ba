"""docs/faq.md: every Python snippet of the page runs, in the page's order, in
a folder holding what the page says (`my_images/`, `r50_1x_sk1/saved_model`),
and gives what its answer claims, checked against numbers computed here
without the project's pipeline (PIL-decoded images, the published export's
own outputs)."""

import os
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests.conftest import REFERENCE_DIR

FAQ = os.path.join(os.path.dirname(__file__), '..', 'docs', 'faq.md')
REFERENCE = os.path.join(REFERENCE_DIR, 'r18_cifar')
IMAGES_PER_CLASS = 8


def faq_snippets():
  """{entry number: [python code blocks]} of docs/faq.md."""
  text = open(FAQ).read()
  snippets = {}
  for section in re.split(r'^## ', text, flags=re.M)[1:]:
    number = int(section.split('.', 1)[0])
    snippets[number] = re.findall(r'^```python\n(.*?)^```', section,
                                  flags=re.M | re.S)
  return snippets


def write_image_folder(root):
  """my_images/<digit>/<n>.png: scikit-learn's digits at 32x32 RGB."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  for label in range(10):
    os.makedirs(os.path.join(root, str(label)))
    indices = np.flatnonzero(digits.target == label)[:IMAGES_PER_CLASS]
    for n, index in enumerate(indices):
      pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
      image = Image.fromarray(pixels).resize((32, 32), Image.BILINEAR)
      image.convert('RGB').save(os.path.join(root, str(label), f'{n}.png'))


@pytest.fixture(scope='module')
def faq_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('faq')
  write_image_folder(str(root / 'my_images'))
  if os.path.isdir(REFERENCE):
    os.makedirs(root / 'r50_1x_sk1')
    os.symlink(os.path.abspath(os.path.join(REFERENCE, 'saved_model')),
               root / 'r50_1x_sk1' / 'saved_model')
  return root


def run_entry(number, directory):
  """Runs entry `number`'s snippets in `directory`; returns their names."""
  snippets = faq_snippets()[number]
  assert snippets, f'FAQ entry {number} has no Python snippet'
  namespace = {}
  cwd = os.getcwd()
  os.chdir(directory)
  try:
    for code in snippets:
      exec(compile(code, f'{FAQ}#{number}', 'exec'), namespace)  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  return namespace


def needs_reference():
  if not os.path.isdir(REFERENCE):
    pytest.skip(f'the published export {REFERENCE} is not beside the '
                f'checkout')


def test_every_entry_has_a_snippet_and_is_tested():
  assert sorted(faq_snippets()) == [1, 2, 3, 4, 5, 6]


def test_1_fine_tuning_a_released_model_trains_its_weights(faq_dir):
  needs_reference()
  names = run_entry(1, faq_dir)
  assert np.isfinite(float(names['loss']))
  # The published model's own outputs before training: the encoder moved.
  published = np.load(os.path.join(REFERENCE, 'io.npz'))
  after = names['encoder'](published['inputs'], training=False)
  assert not np.allclose(after['final_avg_pool'], published['final_avg_pool'],
                         rtol=1e-3, atol=1e-5)


def test_2_top_1_is_the_share_of_argmax_logits_equal_to_the_label(faq_dir):
  needs_reference()
  names = run_entry(2, faq_dir)
  outputs = names['outputs']
  assert len(outputs.labels) == 10 * IMAGES_PER_CLASS // 2
  # Independently: decode each listed file with PIL, label from its folder.
  images = np.stack([
      np.asarray(Image.open(faq_dir / 'my_images' / path), np.float32) / 255
      for path in outputs.ids])
  labels = np.array([int(path.split('/')[0]) for path in outputs.ids])
  np.testing.assert_array_equal(outputs.labels, labels)
  logits = names['model'](tf.constant(images), training=False)['logits_sup']
  assert names['top_1'] == pytest.approx(
      np.mean(np.argmax(logits, axis=1) == labels))


def test_3_pretraining_on_a_folder_writes_a_loadable_model(faq_dir):
  run_entry(3, faq_dir)
  import simclr  # pylint: disable=g-import-not-at-top
  model = simclr.load_model(str(faq_dir / 'my_model_dir'))
  assert (model.config.resnet_depth, model.config.width_multiplier) == (
      18, 0.125)
  assert model.config.image_size == 32


def test_4_two_replicas_with_global_batch_norm_train(faq_dir):
  # In a process of its own, as a user runs it: a MirroredStrategy made
  # after other tests' strategies in this process can reuse their
  # collective keys and abort.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = '\n'.join(faq_snippets()[4])
  proc = subprocess.run([sys.executable, '-c', code], cwd=str(faq_dir),
                        capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  model_dir = faq_dir / 'my_two_replica_dir'
  assert any(name.startswith('ckpt-2') for name in os.listdir(model_dir))


def test_5_features_follow_the_folder_labels(faq_dir):
  names = run_entry(5, faq_dir)
  train = names['train']
  assert train.features.shape == (10 * IMAGES_PER_CLASS, 64)  # 512 x 0.125
  labels = [int(path.split('/')[0]) for path in train.ids]
  np.testing.assert_array_equal(train.labels, labels)
  assert 0 <= names['classifier'].score(train.features, train.labels) <= 1


def test_6_onnx_export_reproduces_the_model(faq_dir):
  names = run_entry(6, faq_dir)
  import simclr  # pylint: disable=g-import-not-at-top
  model = simclr.load_model(str(faq_dir / 'my_model_dir'))
  expected = model(tf.constant(names['images']), training=False)
  np.testing.assert_allclose(names['final_avg_pool'],
                             expected['final_avg_pool'], rtol=1e-4,
                             atol=1e-5)
