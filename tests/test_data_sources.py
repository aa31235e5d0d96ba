"""Sources of images: the embedded `digits` TFDS builder, any TFDS dataset
(through tfds.testing.mock_data), and folders of image files."""

import contextlib
import io
import logging
import os

import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr import data
from simclr.data import datasets


# ------------------------------------------------------------------ digits --


def test_digits_is_a_prepared_tfds_dataset(digits_dir):
  splits = tfds.builder('digits', data_dir=digits_dir).info.splits
  assert splits['train'].num_examples + splits['test'].num_examples == 1797
  assert splits['test'].num_examples == pytest.approx(0.2 * 1797, abs=5)


def test_digits_splits_are_disjoint_and_stratified(digits_dir):
  source = data.load_source('digits', digits_dir)
  train_ids, _ = source.ids_and_labels('train')
  test_ids, _ = source.ids_and_labels('test')
  index = lambda ids: {int(i.split('_')[1]) for i in ids}
  assert not index(train_ids) & index(test_ids)
  assert index(train_ids) | index(test_ids) == set(range(1797))
  targets = sk_datasets.load_digits().target
  test_counts = np.bincount(targets[sorted(index(test_ids))], minlength=10)
  np.testing.assert_array_equal(
      test_counts, np.round(0.2 * np.bincount(targets)).astype(int))


def test_digits_images_are_sklearn_digits_upsampled_to_rgb(digits_dir):
  source = data.load_source('digits', digits_dir)
  digits = sk_datasets.load_digits()
  for example in source.read('test').take(50):
    image = example['image'].numpy().astype(np.float64)
    index = int(example['id'].numpy().decode().split('_')[1])
    assert image.shape == (32, 32, 3)
    assert np.all(image[..., 0] == image[..., 1])
    assert np.all(image[..., 0] == image[..., 2])
    # Averaging 4x4 blocks gives back the 8x8 original (0..16 -> 0..255).
    pooled = image[..., 0].reshape(8, 4, 8, 4).mean(axis=(1, 3))
    original = digits.images[index] * 255 / 16
    assert np.corrcoef(pooled.ravel(), original.ravel())[0, 1] > 0.95
    assert int(example['label']) == digits.target[index]


# -------------------------------------------------------- TFDS (mocked) --


@contextlib.contextmanager
def mocked_tfds(tmp_path, name, num_examples):
  """mock_data serving `num_examples` random examples per split of `name`,
  with split metadata claiming the same number (so the pipeline's counts and
  the data agree)."""
  builder = tfds.builder(name, data_dir=str(tmp_path))
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name=name, split='train',
      filetype_suffix='tfrecord')
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[num_examples],
                          num_bytes=0,
                          filename_template=template.replace(split=split))
      for split in ('train', 'test')]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
  with tfds.testing.mock_data(num_examples=num_examples,
                              data_dir=str(tmp_path),
                              policy=tfds.testing.MockPolicy.USE_FILES):
    yield str(tmp_path)


def test_tfds_source_reports_classes_and_split_sizes(tmp_path):
  with mocked_tfds(tmp_path, 'cifar10', 37) as data_dir:
    source = data.load_source('cifar10', data_dir)
    assert source.num_classes == 10
    assert source.num_examples('train') == 37
    assert source.splits == {'train': 37, 'test': 37}


def test_tfds_examples_are_rgb_uint8_with_int_labels(tmp_path):
  with mocked_tfds(tmp_path, 'cifar10', 5) as data_dir:
    examples = list(data.load_source('cifar10', data_dir).read('train'))
  assert len(examples) == 5
  for example in examples:
    assert example['image'].shape == (32, 32, 3)
    assert example['image'].dtype == tf.uint8
    assert 0 <= int(example['label']) < 10


def test_tfds_greyscale_dataset_is_read_as_rgb(tmp_path):
  with mocked_tfds(tmp_path, 'mnist', 3) as data_dir:
    example = next(iter(data.load_source('mnist', data_dir).read('train')))
  image = example['image'].numpy()
  assert image.shape == (28, 28, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_tfds_pipelines_give_documented_layouts(tmp_path):
  with mocked_tfds(tmp_path, 'cifar10', 37) as data_dir:
    inputs = data.Inputs(data.DataConfig(
        dataset='cifar10', data_dir=data_dir, eval_split='test',
        image_size=32, train_batch_size=8, eval_batch_size=10, seed=0))
    images, labels = next(iter(inputs.dataset('views')))
    assert images.shape == (16, 32, 32, 3) and labels.shape == (16,)
    np.testing.assert_array_equal(labels[:8], labels[8:])
    images, labels = next(iter(inputs.dataset('labeled')))
    assert images.shape == (8, 32, 32, 3) and labels.dtype == tf.int32
    batches = list(inputs.dataset('eval'))
  # 37 examples in batches of 10: 4 batches, the last with 7 real rows.
  assert len(batches) == inputs.eval_steps() == 4
  weights = np.concatenate([w.numpy() for _, _, w in batches])
  np.testing.assert_array_equal(weights, [1.0] * 37 + [0.0] * 3)


def test_unprepared_tfds_dataset_is_an_error_not_a_download(tmp_path):
  with pytest.raises(ValueError, match='not prepared'):
    data.load_source('cifar10', str(tmp_path))


# ----------------------------------------------------------------- folders --

# (file name, PIL format, PIL mode, size (w, h), colour as RGB).
IMAGE_FILES = [
    ('a.jpg', 'JPEG', 'RGB', (40, 30), (200, 40, 60)),
    ('b.png', 'PNG', 'RGBA', (17, 23), (10, 120, 250)),
    ('c.bmp', 'BMP', 'L', (64, 48), (90, 90, 90)),
    ('d.gif', 'GIF', 'P', (25, 25), (255, 0, 0)),
    ('e.JPEG', 'JPEG', 'L', (33, 21), (150, 150, 150)),
]
CORRUPT_FILES = ['ant/broken.jpg', 'bee/truncated.png', 'cat/truncated.jpg']


def encode(fmt, mode, size, colour):
  image = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour,
                                                                np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).convert(mode).save(buffer, fmt)
  return buffer.getvalue()


def write_tree(root, class_names, corrupt=()):
  """root/<class>/<IMAGE_FILES> plus the corrupt files and a text file."""
  for name in class_names:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for file_name, fmt, mode, size, colour in IMAGE_FILES:
      with open(os.path.join(root, name, file_name), 'wb') as f:
        f.write(encode(fmt, mode, size, colour))
    with open(os.path.join(root, name, 'notes.txt'), 'w') as f:
      f.write('not an image')
  for path in corrupt:
    good = encode('PNG' if path.endswith('png') else 'JPEG', 'RGB',
                  (64, 64), (1, 2, 3))
    content = b'garbage' if 'broken' in path else good[:len(good) // 2]
    with open(os.path.join(root, path), 'wb') as f:
      f.write(content)


@pytest.fixture
def labelled_tree(tmp_path):
  root = str(tmp_path / 'tree')
  write_tree(root, ['cat', 'ant', 'bee'], CORRUPT_FILES)
  return root


def test_folder_labels_follow_sorted_class_subfolders(labelled_tree):
  source = data.load_source('folder:' + labelled_tree)
  assert isinstance(source, datasets.FolderSource)
  assert source.num_classes == 3
  ids, labels = source.ids_and_labels('train')
  classes = {'ant': 0, 'bee': 1, 'cat': 2}
  assert sorted(ids) == sorted(f'{c}/{f[0]}' for c in classes
                               for f in IMAGE_FILES)
  assert [classes[i.split('/')[0]] for i in ids] == list(labels)


def test_folder_skips_undecodable_files_with_one_warning(labelled_tree,
                                                         caplog):
  with caplog.at_level(logging.WARNING):
    source = data.load_source('folder:' + labelled_tree)
  expected = sorted(os.path.join(labelled_tree, p) for p in CORRUPT_FILES)
  assert sorted(source.skipped) == expected
  assert source.num_examples('train') == 3 * len(IMAGE_FILES)
  warnings = [r.getMessage() for r in caplog.records
              if 'could not be decoded' in r.getMessage()]
  assert len(warnings) == 1
  assert 'skipped 3 of 18' in warnings[0]
  assert expected[0] in warnings[0]


def test_folder_decodes_every_format_to_rgb(labelled_tree):
  source = data.load_source('folder:' + labelled_tree)
  expected = {f[0]: f for f in IMAGE_FILES}
  for example in source.read('train'):
    name = example['id'].numpy().decode().split('/')[1]
    _, fmt, _, (width, height), colour = expected[name]
    image = example['image'].numpy()
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    # Solid colours survive (JPEG is lossy by a few levels).
    tolerance = 6 if fmt == 'JPEG' else 0
    np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), colour,
                               atol=tolerance)


def test_flat_folder_is_unlabeled(tmp_path):
  root = str(tmp_path / 'flat')
  write_tree(str(tmp_path), ['flat'])
  source = data.load_source('folder:' + root)
  assert source.num_classes == 0
  _, labels = source.ids_and_labels('train')
  np.testing.assert_array_equal(labels, [-1] * len(IMAGE_FILES))


def test_flat_folder_feeds_pretraining(tmp_path):
  write_tree(str(tmp_path), ['flat'])
  inputs = data.Inputs(data.DataConfig(
      dataset='folder:' + str(tmp_path / 'flat'), image_size=16,
      train_batch_size=4, seed=0))
  images, labels = next(iter(inputs.dataset('views')))
  assert images.shape == (8, 16, 16, 3)
  np.testing.assert_array_equal(labels, [-1] * 8)


@pytest.mark.parametrize('content', [None, 'notes.txt'])
def test_folder_without_images_is_an_error_naming_it(tmp_path, content):
  root = tmp_path / 'empty'
  root.mkdir()
  if content:
    (root / content).write_text('text')
  with pytest.raises(ValueError, match=str(root)):
    data.load_source(f'folder:{root}')


def test_folder_split_slices_partition_the_files(labelled_tree):
  source = data.load_source('folder:' + labelled_tree)
  first, _ = source.ids_and_labels('train[:60%]')
  rest, _ = source.ids_and_labels('train[60%:]')
  assert len(first) == 9 and len(rest) == 6
  assert sorted(list(first) + list(rest)) == sorted(
      source.ids_and_labels('train')[0])


def test_folder_has_no_other_split(labelled_tree):
  with pytest.raises(ValueError, match='one split'):
    data.load_source('folder:' + labelled_tree).num_examples('validation')
