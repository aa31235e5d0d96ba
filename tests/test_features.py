"""Feature extraction (simclr/features.py), the .npz files it writes, and the
command lines tf2/extract_features.py and tf2/show_embedding.py."""

import os
import re

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors
import tensorflow as tf
import tensorflow_datasets as tfds

import simclr
from simclr import features
from simclr.configs import DataConfig
from simclr.configs import ModelConfig
from conftest import reference_dir

import script_runner  # tests/script_runner.py

ROOT = os.path.join(os.path.dirname(__file__), '..')


def eval_batches(images, batch_size, padding):
  """An 'eval'-pipeline-like dataset: (images, labels, weights) batches with
  `padding` blank rows of weight 0 at the end."""
  blank = np.zeros([padding] + list(images.shape[1:]), np.float32)
  images = np.concatenate([images, blank])
  weights = np.concatenate([np.ones(len(images) - padding),
                            np.zeros(padding)]).astype(np.float32)
  labels = np.arange(len(images), dtype=np.int32)
  return tf.data.Dataset.from_tensor_slices(
      (images, labels, weights)).batch(batch_size)


def test_features_of_the_published_export_are_its_reference_outputs():
  ref = reference_dir('r18_cifar')
  io = np.load(os.path.join(ref, 'io.npz'))
  model = simclr.load_model(os.path.join(ref, 'saved_model'))
  extracted, labels = features.FeatureExtractor(model, 'final_avg_pool')(
      eval_batches(io['inputs'], batch_size=3, padding=2))
  expected = io['final_avg_pool']
  assert extracted.shape == expected.shape == (4, 512)
  np.testing.assert_array_equal(labels, np.arange(4))
  np.testing.assert_allclose(extracted, expected,
                             atol=1e-4 * np.abs(expected).max())


def tiny_model():
  """A randomly initialised ResNet-18 (0.25x) for 32x32 images."""
  return simclr.build_model(ModelConfig(resnet_depth=18, width_multiplier=0.25,
                                        image_size=32, num_classes=10))


def digits_split(data_dir, split):
  """(ids str [N], labels [N], images float32 [N, 32, 32, 3] in [0, 1]) of
  a digits split in the order TFDS itself reads it."""
  dataset = tfds.builder('digits', data_dir=data_dir).as_dataset(split=split)
  ids, labels, images = [], [], []
  for example in tfds.as_numpy(dataset.batch(512)):
    ids += [i.decode() for i in example['id']]
    labels.append(example['label'])
    images.append(tf.image.convert_image_dtype(example['image'],
                                               tf.float32).numpy())
  return np.array(ids), np.concatenate(labels), np.concatenate(images)


@pytest.fixture(scope='module')
def digits_test_features(digits_dir):
  """(model, the extracted FeatureSet of digits' test split)."""
  model = tiny_model()
  config = DataConfig(dataset='digits', data_dir=digits_dir, image_size=32,
                      eval_batch_size=128)
  return model, features.extract_features(model, config, 'test')


def test_extraction_covers_the_split_once_with_its_ids_and_labels_in_order(
    digits_dir, digits_test_features):
  _, extracted = digits_test_features
  ids, labels, _ = digits_split(digits_dir, 'test')
  assert extracted.features.shape == (359, 128)
  assert len(set(extracted.ids)) == 359
  np.testing.assert_array_equal(extracted.ids, ids)
  np.testing.assert_array_equal(extracted.labels, labels)


def test_each_feature_row_is_the_model_output_of_its_id(digits_dir,
                                                        digits_test_features):
  model, extracted = digits_test_features
  _, _, images = digits_split(digits_dir, 'test')
  direct = model(images, training=False)['final_avg_pool'].numpy()
  np.testing.assert_allclose(extracted.features, direct, rtol=1e-4,
                             atol=1e-5)


def test_two_replicas_gather_the_rows_in_the_dataset_order(
    two_replica_strategy):
  model = tiny_model()
  images = np.random.RandomState(0).rand(23, 32, 32, 3).astype(np.float32)
  # Per replica batches of 4; 23 rows padded to 24 for full batches.
  dataset = two_replica_strategy.experimental_distribute_dataset(
      eval_batches(images, batch_size=8, padding=1))
  extracted, labels = features.FeatureExtractor(
      model, 'proj_head_output', two_replica_strategy)(dataset)
  np.testing.assert_array_equal(labels, np.arange(23))
  np.testing.assert_allclose(
      extracted, model(images, training=False)['proj_head_output'].numpy(),
      rtol=1e-4, atol=1e-5)


def test_a_failed_write_leaves_no_file_that_looks_finished(tmp_path,
                                                          monkeypatch):
  def write_half_then_fail(f, **arrays):
    del arrays
    f.write(b'PK\x03\x04 half an archive')
    raise OSError('disk full')

  monkeypatch.setattr(np, 'savez', write_half_then_fail)
  path = tmp_path / 'features.npz'
  with pytest.raises(OSError, match='disk full'):
    features.save_features(str(path), features.FeatureSet(
        np.zeros([2, 3]), np.zeros(2), np.array(['a', 'b'])))
  assert os.listdir(tmp_path) == []


def test_saved_features_read_back_unchanged(tmp_path):
  saved = features.FeatureSet(
      np.random.RandomState(0).randn(5, 3).astype(np.float32),
      np.array([0, 2, -1, 1, 0], np.int32),
      np.array(['a/1.png', 'a/2.png', 'b', 'c', 'd']))
  path = str(tmp_path / 'f.npz')
  features.save_features(path, saved)
  loaded = features.load_features(path)
  for name in features.NPZ_ARRAYS:
    np.testing.assert_array_equal(getattr(loaded, name), getattr(saved, name))
  assert os.listdir(tmp_path) == ['f.npz']


def test_a_file_without_ids_is_refused_naming_it(tmp_path):
  path = str(tmp_path / 'f.npz')
  np.savez(path, features=np.zeros([2, 3]), labels=np.zeros(2))
  with pytest.raises(ValueError, match=r'f\.npz: lacks the array\(s\) ids'):
    features.load_features(path)


# -- command lines -------------------------------------------------------------


def write_model(directory):
  """tiny_model() saved as our checkpoint beside its model_config.json;
  returns (checkpoint prefix, model)."""
  model = tiny_model()
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'model_config.json'), 'w') as f:
    f.write(model.config.to_json())
  prefix = simclr.checkpoints.training_checkpoint(model).write(
      os.path.join(directory, 'ckpt-0'))
  return prefix, model


def run_script(name, args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return script_runner.shared().run(os.path.join(ROOT, 'tf2', name), args,
                                    timeout=300, env=env, cwd=ROOT)


def numpy_leave_one_out_top1(x, labels, k=200, temperature=0.1):
  """Top-1 of each row's exp(cosine / T)-weighted vote of its k nearest
  other rows (scikit-learn neighbours, numpy vote)."""
  distances, rows = NearestNeighbors(
      n_neighbors=k, metric='cosine', algorithm='brute').fit(x).kneighbors()
  votes = np.zeros([len(x), labels.max() + 1])
  for row in range(len(x)):
    np.add.at(votes[row], labels[rows[row]],
              np.exp((1 - distances[row]) / temperature))
  return np.mean(np.argmax(votes, axis=1) == labels)


def test_extract_then_show_embedding_end_to_end(digits_dir, tmp_path):
  checkpoint, model = write_model(str(tmp_path / 'model'))
  npz = tmp_path / 'test.npz'
  proc = run_script('extract_features.py', [
      f'--checkpoint={checkpoint}', '--dataset=digits',
      f'--data_dir={digits_dir}', '--split=test', f'--out={npz}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  ids, labels, images = digits_split(digits_dir, 'test')
  with np.load(npz) as written:
    np.testing.assert_array_equal(written['ids'], ids)
    np.testing.assert_array_equal(written['labels'], labels)
    np.testing.assert_allclose(
        written['features'],
        model(images, training=False)['final_avg_pool'].numpy(), rtol=1e-4,
        atol=1e-5)
    top1 = numpy_leave_one_out_top1(written['features'], labels)

  png = tmp_path / 'embedding.png'
  proc = run_script('show_embedding.py', [f'--features={npz}',
                                          f'--out={png}', '--method=pca'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  printed = re.search(r'k-NN top-1 ([0-9.]+) \(leave-one-out\)', proc.stdout)
  assert printed, proc.stdout
  # An untrained encoder's features are nearly parallel (cosines ~0.998):
  # float32 against float64 may order a tie at the k-th neighbour
  # differently and move one query of the 359; the script prints 4
  # decimals, so its rounding (up to 5e-5) comes on top.
  assert abs(float(printed.group(1)) - top1) <= 1 / 359 + 5e-5 + 1e-9


@pytest.mark.parametrize('flag, args', [
    ('output_key', ['--output_key=logits']),
    ('split', ['--split=validation']),
    ('out', ['--out={tmp}/missing/features.npz']),
])
def test_extract_features_bad_input_is_one_line_naming_the_flag(
    flag, args, digits_dir, tmp_path):
  checkpoint, _ = write_model(str(tmp_path / 'model'))
  args = [a.format(tmp=tmp_path) for a in args]
  proc = run_script('extract_features.py', [
      f'--checkpoint={checkpoint}', '--dataset=digits',
      f'--data_dir={digits_dir}', f'--out={tmp_path}/f.npz'] + args)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f'error: --{flag}'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'f.npz')


@pytest.mark.parametrize('problem', ['missing', 'no ids'])
def test_show_embedding_bad_features_file_is_one_line_naming_it(problem,
                                                               tmp_path):
  path = tmp_path / 'f.npz'
  if problem == 'no ids':
    np.savez(path, features=np.zeros([3, 2]), labels=np.zeros(3))
  proc = run_script('show_embedding.py', [f'--features={path}',
                                          f'--out={tmp_path}/e.png'])
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: --features: {path}'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
