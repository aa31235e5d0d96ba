"""What a checkpoint path means: a SavedModel directory, a model_dir (the
checkpoint its index names) or a checkpoint prefix, resolved to the prefix
tf.train.load_checkpoint reads; and the error the whole package raises.
"""

import os
import re
from typing import Tuple

import tensorflow as tf

# Our own model_dirs and exports carry the ModelConfig in this file.
MODEL_CONFIG_FILE = 'model_config.json'


# The index of a model_dir's checkpoints that tf.train.CheckpointManager
# keeps (tf.train.get_checkpoint_state reads it).
CHECKPOINT_STATE_FILE = 'checkpoint'


class CheckpointError(ValueError):
  """A path that is not a loadable model, or whose variables do not fit."""


# What reading a damaged checkpoint raises: OpError (an index that is not an
# sstable or fails its checksum, a tensor whose CRC32C does not match, a
# missing file), IndexError (a data file shorter than the index says).
READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, RuntimeError,
                OSError)


def resolve_checkpoint(path: str) -> Tuple[str, str]:
  """Returns (kind, prefix) for a SavedModel dir, a model_dir, or a checkpoint
  prefix. kind is 'saved_model' or 'checkpoint'; prefix is what
  tf.train.load_checkpoint reads."""
  if not path:
    raise CheckpointError('no checkpoint path given')
  if tf.io.gfile.isdir(path):
    if tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
      prefix = os.path.join(path, 'variables', 'variables')
      if not tf.io.gfile.exists(prefix + '.index'):
        raise CheckpointError(
            f'{path}: SavedModel without variables/variables.index')
      return 'saved_model', prefix
    # The checkpoint a model_dir's index names, even when its files are gone
    # (tf.train.latest_checkpoint would then say None): checkpoint_damage
    # names what is missing.
    state = checkpoint_state(path)
    if state is not None and state.model_checkpoint_path:
      return 'checkpoint', state.model_checkpoint_path
    indexes = sorted(tf.io.gfile.glob(os.path.join(path, '*.index')))
    if len(indexes) == 1:
      return 'checkpoint', indexes[0][:-len('.index')]
    raise CheckpointError(
        f'{path}: expected a SavedModel (saved_model.pb), a model_dir with a '
        f'"checkpoint" file, or a checkpoint prefix; found '
        f'{sorted(tf.io.gfile.listdir(path))[:10]}')
  if tf.io.gfile.exists(path + '.index'):
    return 'checkpoint', path
  if path.endswith('.index') and tf.io.gfile.exists(path):
    return 'checkpoint', path[:-len('.index')]
  data_file = re.match(r'^(.*)\.data-\d{5}-of-\d{5}$', path)
  if data_file and tf.io.gfile.exists(data_file.group(1) + '.index'):
    return 'checkpoint', data_file.group(1)
  if tf.io.gfile.exists(path):
    raise CheckpointError(f'{path}: {_wrong_kind_of_file(path)}')
  raise CheckpointError(
      f'{path}: does not exist (expected a SavedModel directory, a model_dir '
      f'or a checkpoint prefix such as model_dir/ckpt-1000)')


def _wrong_kind_of_file(path: str) -> str:
  """Why the existing non-directory `path` is not a model path, and what
  to pass instead."""
  name, parent = os.path.basename(path), os.path.dirname(path) or '.'
  size = tf.io.gfile.stat(path).length
  expected = ('not a SavedModel directory, a model_dir or a checkpoint prefix '
              '(such as model_dir/ckpt-1000)')
  if name == 'saved_model.pb':
    return (f'is the graph file of a SavedModel, {expected}; pass its '
            f'directory {parent}')
  if name == CHECKPOINT_STATE_FILE:
    return (f'is the checkpoint index of a model_dir, {expected}; pass the '
            f'directory {parent}')
  if name.endswith('.index') or re.search(r'\.data-\d{5}-of-\d{5}$', name):
    return (f'is a file ({size} bytes) of a checkpoint whose .index is '
            f'missing, {expected}')
  return f'is a file ({size} bytes), {expected}'


def checkpoint_state(model_dir: str):
  """The parsed CHECKPOINT_STATE_FILE of model_dir
  (tf.train.get_checkpoint_state), None when it is missing or unreadable."""
  try:
    return tf.train.get_checkpoint_state(model_dir)
  except READ_ERRORS:
    return None
