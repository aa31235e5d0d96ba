"""Each behaviour of TensorFlow / orbit / TFDS that simclr/compat.py relies on
without a public API; a test here fails by name, naming the installed
version, on the version that changes it."""

from importlib import metadata
import os

import numpy as np
import orbit
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import tf_keras

from simclr import compat


def installed(module_name):
  """'tf-models-official 2.20.0' for 'orbit': the distributions that provide
  a top-level module, with their versions."""
  names = metadata.packages_distributions().get(module_name, [])
  return ', '.join(f'{n} {metadata.version(n)}' for n in names) or module_name


TENSORFLOW = installed('tensorflow')
ORBIT = installed('orbit')
TFDS = installed('tensorflow_datasets')


def test_orbit_controller_still_logs_through_its_module_function():
  # compat.quiet_orbit_controller replaces it; if orbit renames it, the
  # Controller's per-loop lines come back on stdout.
  assert callable(getattr(orbit.controller, '_log', None)), (
      f'{ORBIT}: orbit.controller._log is gone; the Controller\'s per-loop '
      f'lines can no longer be sent to the debug log')
  compat.quiet_orbit_controller()
  assert orbit.controller._log.__module__ == compat.__name__  # pylint: disable=protected-access


def test_a_non_finite_loss_error_names_the_step_and_every_term():
  @tf.function
  def step(loss, other):
    return compat.assert_finite(loss, tf.constant(7, tf.int64),
                                {'contrast_loss': loss, 'weight_decay': other})

  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    step(tf.constant(np.nan, tf.float32), tf.constant(0.5, tf.float32))
  message = compat.non_finite_message(raised.value)
  assert message and message.startswith(
      'non-finite loss at step 7: contrast_loss=nan, weight_decay=0.5.'), (
          f'{TENSORFLOW}: tf.debugging.Assert\'s error text changed; read '
          f'back {message!r} from {raised.value.message[:300]!r}')


def test_a_finite_loss_passes_and_other_errors_are_not_ours():
  loss = compat.assert_finite(tf.constant(1.5), 1, {'a_loss': 1.5})
  assert float(loss) == 1.5
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    tf.debugging.Assert(False, ['something else'])
  assert compat.non_finite_message(raised.value) is None


def variable_paths(prefix):
  """compat.object_graph_variable_paths of the checkpoint at `prefix`, or a
  failure naming the TensorFlow that no longer provides its object graph."""
  try:
    return compat.object_graph_variable_paths(tf.train.load_checkpoint(prefix))
  except (ImportError, AttributeError, tf.errors.NotFoundError) as e:
    pytest.fail(f'{TENSORFLOW}: a checkpoint\'s object graph is no longer a '
                f'TrackableObjectGraph under {compat.OBJECT_GRAPH_KEY!r}, so '
                f'published files cannot be read by structure '
                f'({type(e).__name__}: {e})')


def test_the_object_graph_names_each_variable_by_attributes_and_positions(
    tmp_path):
  root = tf.Module()
  root.encoder = tf.Module()
  root.encoder.kernel = tf.Variable([[1.0, 2.0]])
  root.blocks = [tf.Module(), tf.Module()]
  root.blocks[1].bias = tf.Variable([3.0])
  prefix = tf.train.Checkpoint(model=root).write(str(tmp_path / 'ckpt'))
  paths = variable_paths(prefix)
  assert sorted(paths) == ['model/blocks/1/bias', 'model/encoder/kernel'], (
      f'{TENSORFLOW}: object graph paths {sorted(paths)}')
  reader = tf.train.load_checkpoint(prefix)
  np.testing.assert_array_equal(
      reader.get_tensor(paths['model/encoder/kernel']), [[1.0, 2.0]])
  np.testing.assert_array_equal(
      reader.get_tensor(paths['model/blocks/1/bias']), [3.0])


class TinyModel(tf_keras.Model):
  """Two layers held by attributes, as SimCLRModel and the published model
  hold theirs."""

  def __init__(self):
    super().__init__()
    self.dense = tf_keras.layers.Dense(3)
    self.bn = tf_keras.layers.BatchNormalization()

  def call(self, inputs, training=False):
    return self.bn(self.dense(inputs), training=training)


def test_a_keras_saved_model_holds_no_alias_that_compat_does_not_skip(
    tmp_path):
  # A SavedModel also lists its variables under aliases (`variables`,
  # `keras_api`, ...; older TensorFlows also wrote
  # `_self_unconditional_dependency_names`): an alias the list lacks would
  # give the variables a second path, which load_model refuses as not used.
  model = TinyModel()
  model(tf.zeros([1, 2]))
  tf.saved_model.save(model, str(tmp_path))
  paths = variable_paths(os.path.join(str(tmp_path), 'variables',
                                      'variables'))
  expected = ['bn/beta', 'bn/gamma', 'bn/moving_mean', 'bn/moving_variance',
              'dense/bias', 'dense/kernel']
  extra = sorted(set(paths) - set(expected))
  assert not extra, (
      f'{TENSORFLOW} writes variables under children that are not structure; '
      f'add their names to compat.OBJECT_GRAPH_ALIASES: {extra[:10]}')
  assert sorted(paths) == expected


def test_tfds_still_suggests_the_closest_dataset_name(tmp_path):
  with pytest.raises(tfds.core.DatasetNotFoundError) as raised:
    tfds.builder('mnistt', data_dir=str(tmp_path))
  hint = [line for line in str(raised.value).splitlines() if 'mean' in line]
  assert compat.tfds_suggested_name(raised.value) == 'mnist', (
      f'{TFDS}: DatasetNotFoundError no longer suggests a name as "Did you '
      f'mean: mnistt -> mnist"; its lines about it: {hint}')


def test_tfds_fashion_mnist_generator_still_reads_a_decompressed_idx_pair(
    tmp_path):
  images = (np.arange(2 * 28 * 28) % 251).astype(np.uint8).reshape(2, 28, 28)
  labels = np.array([7, 2], np.uint8)
  # idx: big-endian int32 magic and dimensions, then the bytes.
  images_path, labels_path = tmp_path / 'images', tmp_path / 'labels'
  images_path.write_bytes(np.array([2051, 2, 28, 28], '>i4').tobytes() +
                          images.tobytes())
  labels_path.write_bytes(np.array([2049, 2], '>i4').tobytes() +
                          labels.tobytes())
  builder = tfds.image_classification.FashionMNIST(
      data_dir=str(tmp_path / 'data'))
  try:
    examples = list(compat.fashion_mnist_examples(
        builder, 2, str(images_path), str(labels_path)))
  except (AttributeError, TypeError) as e:
    pytest.fail(f'{TFDS}: FashionMNIST._generate_examples(num_examples, '
                f'data_path, label_path) is gone or changed, so fashion_mnist '
                f'cannot be prepared offline ({type(e).__name__}: {e})')
  assert [key for key, _ in examples] == [0, 1]
  for (_, record), image, label in zip(examples, images, labels):
    np.testing.assert_array_equal(record['image'], image[..., None])
    assert record['label'] == label


def test_flag_values_become_configs_without_tensorflow():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys; from simclr.configs import configs_from_values; '
          'c = configs_from_values(dict(train_mode="distill", '
          'teacher_checkpoint="t", dataset="digits", train_batch_size=8)); '
          'assert c.data.train_batch_size == 8, c; '
          'assert "tensorflow" not in sys.modules, "tensorflow imported"')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.join(
      os.path.dirname(__file__), '..'))


def test_a_released_orbit_trainer_frees_its_iterator_without_the_collector():
  import gc  # pylint: disable=g-import-not-at-top
  import weakref  # pylint: disable=g-import-not-at-top

  class Summing(orbit.StandardTrainer):

    def __init__(self):
      self.total = tf.Variable(0, dtype=tf.int64)
      super().__init__(tf.data.Dataset.range(10))

    def train_step(self, iterator):
      self.total.assign_add(next(iterator))

  trainer = Summing()
  trainer.train(tf.constant(3))
  assert int(trainer.total.numpy()) == 0 + 1 + 2
  # compat.release_train_iterator reads orbit's attribute by this name.
  iterator = getattr(trainer, '_train_iter', None)
  assert isinstance(iterator, tf.data.Iterator), (
      f'{ORBIT}: StandardTrainer no longer keeps its iterator in '
      f'_train_iter; compat.release_train_iterator lets nothing go')
  alive = weakref.ref(iterator)
  del iterator
  gc.disable()
  try:
    compat.release_train_iterator(trainer)
    assert alive() is None, (
        f'{ORBIT} / {TENSORFLOW}: the trainer still holds its iterator '
        f'after compat.release_train_iterator')
  finally:
    gc.enable()
  assert trainer.train_dataset is None
