"""Test session setup: the host CPU is split into logical devices before
TensorFlow initialises, so multi-replica code paths (MirroredStrategy over
'/cpu:0', '/cpu:1') run on a CPU-only machine."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One BLAS thread per test process: `make test` runs two processes on two
# cores, and scikit-learn's fits (linear evaluation, raw-pixel baselines)
# with OpenBLAS's default of a thread per core ran 4 to 50 times slower when
# the other process was busy. (Set again by the Makefile, in case numpy was
# imported before this file.)
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

# Before TensorFlow: the package sets TensorFlow's CPU kernel choice
# (oneDNN) that every run of the project gets (simclr/__init__.py).
import simclr  # noqa: E402,F401  pylint: disable=unused-import

import contextlib  # noqa: E402
import fcntl  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

import script_runner  # noqa: E402  (tests/script_runner.py)

NUM_LOGICAL_CPUS = 2
SHARED_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')
REFERENCE_DIR = os.path.join(SHARED_DIR, 'reference')

_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


# The slowest files first (end-to-end subprocess runs), in order: with
# `make test`'s two xdist processes taking whole files in collection order,
# a slow file collected last ran alone at the end of the suite. The Makefile
# passes --no-loadscope-reorder: by default pytest-xdist (3.5 and later)
# hands out the files with the most tests first, which put these few-test
# files at the end of the suite again.
SLOW_FILES_FIRST = ('test_run.py', 'test_study.py', 'test_reliability.py',
                    'test_console.py', 'test_colabs.py',
                    'test_semi_supervision.py', 'test_knn.py', 'test_faq.py',
                    'test_tasks.py', 'test_onnx.py', 'test_features.py',
                    'test_export.py', 'test_bad_input.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return (SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST
            else len(SLOW_FILES_FIRST))
  items.sort(key=rank)  # Stable: tests keep their order within a file.


def make_two_replica_strategy():
  """MirroredStrategy over two logical CPU devices.

  Every MirroredStrategy of a process starts from the same collective keys;
  a later one reusing a key for another kind of collective aborts ("Collective
  instance 100 expected type 0 ... but got type 2", TF 2.20: an all_reduce in
  one strategy, an all_gather in the next), so each gets its own key range,
  as TF's own strategy_combinations do. No public API sets the range, and
  cross_device_ops=ReductionToOneDevice() would avoid collectives only by
  testing another reduction than the one the runs use."""
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


# The one pretraining run the end-to-end modules share (tests/test_run.py
# fine-tunes, distils, resumes and linear-evaluates from it; tests/test_knn.py
# checks the k-NN accuracy it reported): a tiny ResNet-18 on 32x32 digits,
# two replicas (logical CPUs), a memory buffer, k-NN evaluation at step 3
# and 6, checkpoints at 3 and 6, then evaluation and an export. Batch norm
# per replica (--global_bn=False), whose moving statistics the k-NN
# evaluation must average over the replicas to report the saved model's
# accuracy (tests/test_knn.py checks it); the published default, synchronised
# batch norm, doubled this run's first loop (37 s against 18 s alone, on a
# 2-core AVX2-only AMD EPYC) and is run end to end on two replicas by
# tests/test_faq.py (entry 4) and checked against one device by
# tests/test_global_bn.py and tests/test_memory.py.
# TINY_RUN_FLAGS are the architecture and data flags the runs that start from
# it (tests/test_run.py) use too.
TINY_RUN_FLAGS = [
    '--dataset=digits', '--eval_split=test', '--image_size=32',
    '--resnet_depth=18', '--width_multiplier=0.25', '--train_batch_size=32',
    '--eval_batch_size=128', '--use_tpu=False', '--seed=1']
SHARED_PRETRAIN_FLAGS = TINY_RUN_FLAGS + [
    '--train_mode=pretrain', '--mode=train_then_eval', '--train_steps=6',
    '--checkpoint_steps=3', '--memory_size=128', '--temperature=0.5',
    '--knn_eval_steps=3', '--num_logical_cpus=2', '--global_bn=False']


@pytest.fixture(scope='session')
def shared_pretrain(tmp_path_factory, digits_dir):
  """(model_dir, the run's stdout + stderr) of tf2/run.py with
  SHARED_PRETRAIN_FLAGS. Run once for the whole suite: the first xdist
  worker to ask runs it under a file lock in the directory the workers
  share; the other waits for the lock and reuses the model_dir. Tests only
  read it."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # The workers' basetemps are siblings in it.
  model_dir, log = root / 'shared_pretrain', root / 'shared_pretrain.log'
  with open(root / 'shared_pretrain.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (model_dir / 'result.json').exists():
      run = os.path.join(os.path.dirname(__file__), '..', 'tf2', 'run.py')
      proc = script_runner.shared().run(
          run, SHARED_PRETRAIN_FLAGS +
          [f'--data_dir={digits_dir}', f'--model_dir={model_dir}'],
          timeout=900, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
      if proc.returncode:
        shutil.rmtree(model_dir, ignore_errors=True)  # No half run reused.
        raise AssertionError(f'the shared pretraining failed '
                             f'({proc.returncode}):\n{proc.stderr[-6000:]}')
      log.write_text(proc.stdout + proc.stderr)
  return str(model_dir), log.read_text()


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


@pytest.fixture(scope='session', autouse=True)
def scripts():
  """tests/script_runner.py's ScriptRunner: scripts run as forks of one
  process that imported TensorFlow once (one per test process; its helper
  starts on the first run)."""
  yield script_runner.shared()
  script_runner.close_shared()
