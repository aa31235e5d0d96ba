"""`fashion_mnist` prepared offline from idx files (simclr.data.fashion_mnist),
and grey images through every input pipeline.

The idx files here are small ones written by the tests themselves (the
format by hand: a big-endian magic, 2051 for images and 2049 for labels, the
dimensions, then the bytes), pointed to by SIMCLR_FASHION_MNIST_DIR; nothing
needs the Debian package. Expected values come from the fixture's own
arrays."""

import gzip
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr import data
from simclr.data import fashion_mnist

ROOT = os.path.join(os.path.dirname(__file__), '..')
NUM_EXAMPLES = {'train': 6, 'test': 4}
PREFIX = {'train': 'train', 'test': 't10k'}
CLASS_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
               'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']
MODES = ('pretrain', 'finetune', 'distill', 'linear_eval', 'eval')
BATCH = 4


def write_idx(path, array, magic):
  """A gzipped idx file: magic and dimensions as big-endian int32, then the
  uint8 values in row-major order."""
  header = np.array([magic] + list(array.shape), '>i4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + np.asarray(array, np.uint8).tobytes())


def fixture_arrays():
  """{split: (images uint8 [N, 28, 28], labels uint8 [N])}, every image
  different, labels covering several classes."""
  rng = np.random.RandomState(7)
  arrays = {}
  for split, count in NUM_EXAMPLES.items():
    images = rng.randint(0, 256, size=(count, 28, 28)).astype(np.uint8)
    labels = (np.arange(count) * 3 + (split == 'test')) % 10
    arrays[split] = images, labels.astype(np.uint8)
  return arrays


def write_files(directory, arrays):
  for split, (images, labels) in arrays.items():
    write_idx(os.path.join(directory, f'{PREFIX[split]}-images-idx3-ubyte.gz'),
              images, 2051)
    write_idx(os.path.join(directory, f'{PREFIX[split]}-labels-idx1-ubyte.gz'),
              labels, 2049)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fashion_files')
  arrays = fixture_arrays()
  write_files(str(directory), arrays)
  return str(directory), arrays


@pytest.fixture(scope='module')
def empty_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('no_files'))


@pytest.fixture(scope='module')
def prepared(files, tmp_path_factory):
  """data_dir where fashion_mnist was prepared from the fixture's files."""
  data_dir = str(tmp_path_factory.mktemp('fashion_tfds'))
  fashion_mnist.prepare(data_dir, directory=files[0])
  return data_dir


@pytest.fixture
def files_variable(monkeypatch):
  """Sets SIMCLR_FASHION_MNIST_DIR for one test."""
  return lambda directory: monkeypatch.setenv(
      fashion_mnist.FILES_DIR_VARIABLE, directory)


def read_all(source, split):
  examples = list(source.read(split).as_numpy_iterator())
  return ([e['image'] for e in examples], [int(e['label']) for e in examples],
          [e['id'].decode() for e in examples])


def test_prepared_splits_have_the_files_example_counts(prepared, empty_dir,
                                                       files_variable):
  files_variable(empty_dir)  # Prepared already: the files are not needed.
  source = data.load_source('fashion_mnist', prepared)
  assert source.splits == NUM_EXAMPLES
  assert source.num_classes == 10


@pytest.mark.parametrize('split', sorted(NUM_EXAMPLES))
def test_every_example_is_a_fixture_image_and_its_label_in_three_channels(
    prepared, files, split):
  images, labels = files[1][split]
  got_images, got_labels, _ = read_all(
      data.load_source('fashion_mnist', prepared), split)
  expected = {images[i].tobytes(): int(labels[i]) for i in range(len(images))}
  seen = set()
  for image, label in zip(got_images, got_labels):
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    for channel in range(3):
      assert image[..., channel].tobytes() in expected
    grey = image[..., 0].tobytes()
    np.testing.assert_array_equal(image[..., 1], image[..., 0])
    np.testing.assert_array_equal(image[..., 2], image[..., 0])
    assert label == expected[grey]
    seen.add(grey)
  assert seen == set(expected)


@pytest.mark.parametrize('split', sorted(NUM_EXAMPLES))
def test_ids_are_tfds_ids_of_the_single_shard(prepared, split):
  # TFDS's builder has no id feature: ids are '<shard file>__<position>'.
  source = data.load_source('fashion_mnist', prepared)
  assert source.id_key == 'tfds_id'
  _, labels, ids = read_all(source, split)
  shard = f'fashion_mnist-{split}.tfrecord-00000-of-00001'
  assert ids == [f'{shard}__{k}' for k in range(NUM_EXAMPLES[split])]
  listed_ids, listed_labels = source.ids_and_labels(split)
  assert list(listed_ids) == ids
  assert list(listed_labels) == labels


def test_each_id_names_the_same_example_in_every_read(prepared):
  source = data.load_source('fashion_mnist', prepared)
  first = dict(zip(read_all(source, 'train')[2],
                   (i.tobytes() for i in read_all(source, 'train')[0])))
  shuffled = source.read('train', shuffle=True, seed=3).as_numpy_iterator()
  for example in shuffled:
    assert first[example['id'].decode()] == example['image'].tobytes()
  chosen = sorted(first)[:2]
  subset = list(source.read('train', ids=chosen).as_numpy_iterator())
  assert sorted(e['id'].decode() for e in subset) == chosen


def test_prepared_dataset_is_tfds_own_fashion_mnist(prepared, tmp_path):
  # What TFDS's registered builder declares, before anything is prepared.
  declared = tfds.builder('fashion_mnist', data_dir=str(tmp_path)).info
  builder = data.load_source('fashion_mnist', prepared).builder
  assert type(builder) is tfds.image_classification.FashionMNIST
  assert str(builder.version) == str(declared.version) == '3.0.1'
  assert builder.data_dir == os.path.join(prepared, 'fashion_mnist', '3.0.1')
  features = builder.info.features
  assert features.get_serialized_info() == (
      declared.features.get_serialized_info())
  assert features['image'].shape == (28, 28, 1)
  assert features['image'].dtype == tf.uint8
  assert features['label'].names == CLASS_NAMES
  assert set(features.keys()) == {'image', 'label'}


def test_the_files_directory_comes_from_the_environment(
    files, tmp_path, files_variable):
  files_variable(files[0])
  source = data.load_source('fashion_mnist', str(tmp_path))
  assert source.splits == NUM_EXAMPLES


def test_without_files_or_prepared_data_the_error_says_what_to_install(
    empty_dir, tmp_path, files_variable):
  files_variable(empty_dir)
  with pytest.raises(ValueError) as error:
    data.load_source('fashion_mnist', str(tmp_path))
  message = str(error.value)
  assert '\n' not in message
  assert 'apt-get install dataset-fashion-mnist' in message
  assert 'train-images-idx3-ubyte.gz' in message
  assert str(tmp_path) in message


def test_the_debian_directory_is_the_default(monkeypatch):
  monkeypatch.delenv(fashion_mnist.FILES_DIR_VARIABLE, raising=False)
  assert fashion_mnist.files_dir() == '/usr/share/datasets/fashion-mnist'


@pytest.mark.parametrize('name, magic, shape, named', [
    ('train-images-idx3-ubyte.gz', 2049, (6, 28, 28), 'magic 2049'),
    ('train-images-idx3-ubyte.gz', 2051, (6, 28, 27), '[6, 28, 27]'),
    ('train-labels-idx1-ubyte.gz', 2049, (5,), '5 labels'),
])
def test_a_wrong_idx_file_is_refused_naming_it(files, tmp_path, name, magic,
                                               shape, named):
  directory = tmp_path / 'files'
  directory.mkdir()
  write_files(str(directory), files[1])
  write_idx(str(directory / name), np.zeros(shape, np.uint8), magic)
  with pytest.raises(ValueError, match='idx|labels') as error:
    fashion_mnist.prepare(str(tmp_path / 'tfds'), directory=str(directory))
  assert name in str(error.value) and named in str(error.value)


def test_run_without_the_package_exits_2_with_one_line_naming_it(
    empty_dir, tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tf2', 'run.py'),
       '--dataset=fashion_mnist', f'--data_dir={tmp_path}/tfds',
       f'--model_dir={tmp_path}/model', '--resnet_depth=18',
       '--width_multiplier=0.125', '--image_size=28', '--train_batch_size=4',
       '--train_steps=1', '--eval_split=test', '--use_tpu=False'],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
               **{fashion_mnist.FILES_DIR_VARIABLE: empty_dir}))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  # As for every bad input (tests/test_bad_input.py): one error line among
  # whatever TensorFlow and TFDS log.
  errors = [line for line in proc.stderr.splitlines()
            if line.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith('error: --dataset=fashion_mnist: not prepared')
  assert 'apt-get install dataset-fashion-mnist' in errors[0]
  assert not os.path.exists(tmp_path / 'model' / 'checkpoint')


# ------------------------------------------------- grey through pipelines --


@pytest.fixture(scope='module')
def grey_folder(tmp_path_factory):
  """Grey PNGs (PIL mode 'L', one grey + alpha 'LA') in two class folders;
  returns (root, {relative path: grey values uint8 [20, 20]})."""
  root = tmp_path_factory.mktemp('grey_images')
  rng = np.random.RandomState(3)
  values = {}
  for i in range(6):
    folder = root / f'class{i % 2}'
    folder.mkdir(exist_ok=True)
    grey = rng.randint(0, 256, size=(20, 20)).astype(np.uint8)
    if i == 5:
      alpha = np.full_like(grey, 255)
      Image.fromarray(np.stack([grey, alpha], -1), 'LA').save(
          folder / f'{i}.png')
    else:
      Image.fromarray(grey, 'L').save(folder / f'{i}.png')
    values[f'class{i % 2}/{i}.png'] = grey
  return str(root), values


def test_grey_png_files_read_as_their_values_in_three_channels(grey_folder):
  root, values = grey_folder
  source = data.load_source('folder:' + root)
  images, _, ids = read_all(source, 'train')
  assert sorted(ids) == sorted(values)
  for image, relative in zip(images, ids):
    assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    for channel in range(3):
      np.testing.assert_array_equal(image[..., channel], values[relative])


def grey_inputs(source_kind, prepared, grey_folder):
  if source_kind == 'fashion_mnist':
    config = data.DataConfig(dataset='fashion_mnist', data_dir=prepared,
                             eval_split='test')
  else:
    config = data.DataConfig(dataset='folder:' + grey_folder[0],
                             eval_split='train')
  return data.Inputs(config.replace(
      image_size=28, train_batch_size=BATCH, eval_batch_size=BATCH, seed=0,
      shuffle_buffer_size=8))


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('source_kind', ['fashion_mnist', 'grey_folder'])
def test_grey_images_become_three_equal_channels_in_every_pipeline(
    source_kind, mode, prepared, grey_folder):
  # Pretraining views go through colour jitter, greyscale and blur; on a
  # grey image each of them keeps the three channels equal.
  inputs = grey_inputs(source_kind, prepared, grey_folder)
  images = next(iter(inputs.dataset(mode)))[0].numpy()
  rows = 2 * BATCH if mode == 'pretrain' else BATCH
  assert images.shape == (rows, 28, 28, 3)
  assert images.dtype == np.float32
  np.testing.assert_allclose(images[..., 1], images[..., 0], atol=1e-6)
  np.testing.assert_allclose(images[..., 2], images[..., 0], atol=1e-6)
  assert 0.0 <= images.min() and images.max() <= 1.0
  assert images.std() > 0.05  # Images, not blanks.


def test_eval_rows_are_the_test_images_over_255(prepared, files):
  # 28x28 at image_size 28: evaluation neither crops nor resizes.
  images, _ = files[1]['test']
  inputs = grey_inputs('fashion_mnist', prepared, None)
  rows = []
  for batch_images, _, weights in inputs.dataset('eval'):
    rows.extend(batch_images.numpy()[weights.numpy() > 0])
  assert len(rows) == len(images)
  expected = sorted(images, key=lambda image: image.tobytes())
  rows = sorted(rows, key=lambda row: np.round(row[..., 0] * 255).astype(
      np.uint8).tobytes())
  for row, image in zip(rows, expected):
    for channel in range(3):
      np.testing.assert_allclose(row[..., channel],
                                 image.astype(np.float32) / 255, atol=1e-6)


# ---------------------------------------------------------------------------
# The study's Fashion-MNIST recipe (tools/experiment.py, tools/study.py).

@pytest.mark.parametrize('split', sorted(NUM_EXAMPLES))
def test_raw_pixel_baselines_see_the_idx_bytes_and_their_labels(
    prepared, files, split):
  sys.path.insert(0, ROOT)
  from tools import experiment  # pylint: disable=g-import-not-at-top
  images, labels = files[1][split]
  expected = {images[i].tobytes(): int(labels[i]) for i in range(len(images))}
  ids, pixels, got_labels = experiment.raw_pixels(prepared, split,
                                                  'fashion_mnist')
  assert pixels.shape == (len(images), 28 * 28)  # One channel: grey.
  seen = set()
  for row, label in zip(pixels, got_labels):
    key = np.round(row * 255).astype(np.uint8).tobytes()
    assert expected[key] == label
    seen.add(key)
  assert seen == set(expected)
  listed_ids, listed_labels = data.load_source(
      'fashion_mnist', prepared).ids_and_labels(split)
  assert list(ids) == list(listed_ids)
  np.testing.assert_array_equal(got_labels, listed_labels)


PLAN = r'''
import json, sys
sys.argv = ['study']
from tools import experiment, study
study.FLAGS(['study', '--dataset=' + DATASET])
recipe = experiment.RECIPES[DATASET]
study._recipe_defaults(recipe)
s = study.Study(0, '/nowhere', '/nowhere/tfds',
                [float(w) for w in study.FLAGS.widths],
                [float(f) for f in study.FLAGS.label_fractions], recipe)
s.build_plan(study.FLAGS.sections, study.FLAGS.subsets,
             study.FLAGS.distill_subsets,
             [int(n) for n in study.FLAGS.head_layers], study.FLAGS.head_width)
print(json.dumps(dict(plan=[(n, v) for n, v, _ in s.plan],
                      widths=study.FLAGS.widths,
                      sections=study.FLAGS.sections)))
'''


@pytest.mark.parametrize('dataset', ['digits', 'fashion_mnist'])
def test_study_plan_uses_only_each_run_own_labels(dataset):
  import json  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, '-c', f'DATASET = {dataset!r}\n' + PLAN],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  planned = json.loads(proc.stdout.strip().splitlines()[-1])
  stages = dict(planned['plan'])
  for name, values in stages.items():
    assert values['dataset'] == dataset, name
    assert values['eval_split'] == 'test'
  if dataset == 'fashion_mnist':
    assert planned['widths'] == ['0.125', '0.25']
    assert planned['sections'] == ['1', '3', '4']
  distills = {n: v for n, v in stages.items() if v['train_mode'] == 'distill'}
  assert distills
  for name, values in distills.items():
    # The student's labels are its teacher's subset (simclr.tasks.distill
    # takes it from the teacher): a fine-tuning on a fraction below 1, and
    # the student names no other.
    teacher = stages[values['teacher_checkpoint'].split('/')[-1]]
    assert teacher['train_mode'] == 'finetune', name
    assert teacher['train_label_fraction'] < 1, name
    assert not teacher.get('checkpoint') or stages[
        teacher['checkpoint'].split('/')[-1]]['train_mode'] == 'pretrain'
    for key in ('train_label_fraction', 'label_subset_seed',
                'label_subset_file', 'allow_other_label_subset'):
      assert key not in values, (name, key)
    # A student starts from pretraining (no labels) or from scratch, never
    # from a run that saw other labels.
    start = values.get('checkpoint')
    if start:
      assert stages[start.split('/')[-1]]['train_mode'] == 'pretrain', name
  for name, values in stages.items():
    if values['train_mode'] == 'finetune' and values.get('checkpoint'):
      assert stages[values['checkpoint'].split('/')[-1]]['train_mode'] == (
          'pretrain'), name
