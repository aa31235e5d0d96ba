"""Test session setup: the host CPU is split into logical devices before
TensorFlow initialises, so multi-replica code paths (MirroredStrategy over
'/cpu:0', '/cpu:1') run on a CPU-only machine."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import contextlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

NUM_LOGICAL_CPUS = 2
SHARED_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')
REFERENCE_DIR = os.path.join(SHARED_DIR, 'reference')

_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


# The slowest files first (end-to-end subprocess runs), in order: with
# `make test`'s two xdist processes taking whole files in collection order,
# a slow file collected last ran alone at the end of the suite.
SLOW_FILES_FIRST = ('test_run.py', 'test_reliability.py', 'test_colabs.py',
                    'test_bad_input.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return (SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST
            else len(SLOW_FILES_FIRST))
  items.sort(key=rank)  # Stable: tests keep their order within a file.


def make_two_replica_strategy():
  """MirroredStrategy over two logical CPU devices.

  Every MirroredStrategy of a process starts from the same collective keys;
  a later one reusing a key for another kind of collective aborts, so each
  gets its own key range (as TF's own strategy_combinations do)."""
  tf.distribute.MirroredStrategy._collective_key_base += 100000  # pylint: disable=protected-access
  return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


@pytest.fixture
def two_replica_strategy():
  return make_two_replica_strategy()


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A TFDS data_dir with the embedded digits prepared, shared by the whole
  session."""
  from simclr.data import digits  # pylint: disable=g-import-not-at-top
  # The path tests/test_run.py's subprocesses use too.
  path = str(tmp_path_factory.getbasetemp() / 'tfds')
  digits.prepare(path)
  return path


def reference_dir(name):
  """Path of ../shared/reference/<name>, or skips the test when the shared
  folder is not beside the checkout (a user's clone)."""
  path = os.path.join(REFERENCE_DIR, name)
  if not os.path.isdir(path):
    pytest.skip(f'reference export {name} not found at {path} (../shared is '
                f'only beside the checkout in the project\'s CI)')
  return path


@contextlib.contextmanager
def layers_in(dtype):
  """Models built inside the block get `dtype` variables and computation
  (e.g. float64 for equality tests tighter than float32 round-off)."""
  floatx = tf_keras.backend.floatx()
  policy = tf_keras.mixed_precision.global_policy()
  tf_keras.backend.set_floatx(dtype)
  # A global policy set earlier in the process (every in-process run sets
  # one, 'float32' included) would otherwise override floatx.
  tf_keras.mixed_precision.set_global_policy(dtype)
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(policy)
    tf_keras.backend.set_floatx(floatx)


def numpy_gradient(loss_fn, x, step=1e-6):
  """Central finite differences of a float64 numpy function."""
  x = np.asarray(x, np.float64)
  gradient = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[index] += step
    minus[index] -= step
    gradient[index] = (loss_fn(plus) - loss_fn(minus)) / (2 * step)
  return gradient
