"""Damaged checkpoints (simclr/checkpoints/damage.py): checkpoint_damage
names the damaged file, resumable_checkpoint refuses a damaged or missing
newest checkpoint and names the newest intact one, load_model refuses a
damaged file by name. End to end through tf2/run.py: tests/test_reliability.py."""

import os

import numpy as np
import pytest
import tensorflow as tf

import simclr
from simclr import checkpoints

DATA = '.data-00000-of-00001'


@pytest.fixture
def model_dir(tmp_path):
  """ckpt-1, ckpt-2, ckpt-3 of a small object, saved by a CheckpointManager
  as a training run saves them."""
  variables = tf.train.Checkpoint(
      weights=tf.Variable(np.arange(3000, dtype=np.float32)),
      bias=tf.Variable(np.ones([7], np.float32)))
  manager = tf.train.CheckpointManager(variables, str(tmp_path), 5)
  for step in (1, 2, 3):
    variables.weights.assign_add(tf.ones([3000]))
    manager.save(checkpoint_number=step)
  return str(tmp_path)


def prefix(model_dir, step):
  return os.path.join(model_dir, f'ckpt-{step}')


def truncate(path, size=None):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2 if size is None else size)


def flip_a_byte(path, at=0.5):
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    data[int(len(data) * at)] ^= 0xFF
    f.seek(0)
    f.write(data)


def test_an_intact_checkpoint_has_no_damage(model_dir):
  assert checkpoints.checkpoint_damage(prefix(model_dir, 3)) is None


@pytest.mark.parametrize('damage', [truncate, flip_a_byte,
                                    lambda p: truncate(p, 0)],
                         ids=['truncated', 'bit_flip', 'empty'])
def test_a_damaged_data_file_is_named(model_dir, damage):
  path = prefix(model_dir, 3) + DATA
  damage(path)
  problem = checkpoints.checkpoint_damage(prefix(model_dir, 3))
  assert problem.startswith(f'{path} is unreadable')


@pytest.mark.parametrize('damage', [truncate, flip_a_byte,
                                    lambda p: truncate(p, 0)],
                         ids=['truncated', 'bit_flip', 'empty'])
def test_a_damaged_index_file_is_named(model_dir, damage):
  path = prefix(model_dir, 3) + '.index'
  damage(path)
  problem = checkpoints.checkpoint_damage(prefix(model_dir, 3))
  assert problem.startswith(f'{path} is unreadable')


def test_a_missing_data_file_is_named(model_dir):
  os.remove(prefix(model_dir, 3) + DATA)
  assert checkpoints.checkpoint_damage(prefix(model_dir, 3)).startswith(
      f'{prefix(model_dir, 3)}.data-* is missing')


def test_a_missing_shard_is_named(model_dir):
  # One shard of two gone (as if a copy stopped between them).
  os.rename(prefix(model_dir, 3) + DATA,
            prefix(model_dir, 3) + '.data-00001-of-00002')
  assert checkpoints.checkpoint_damage(prefix(model_dir, 3)) == (
      f'{prefix(model_dir, 3)}.data-00000-of-00002 is missing')


def test_resumes_from_the_newest_intact_checkpoint(model_dir):
  assert checkpoints.resumable_checkpoint(model_dir) == prefix(model_dir, 3)


def test_a_model_dir_without_checkpoints_starts_afresh(tmp_path):
  assert checkpoints.resumable_checkpoint(str(tmp_path)) is None


def test_damaged_newest_names_the_file_the_intact_one_and_the_command(
    model_dir):
  flip_a_byte(prefix(model_dir, 3) + DATA, at=0.3)
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.resumable_checkpoint(model_dir)
  message = str(error.value)
  assert f'{prefix(model_dir, 3)}{DATA} is unreadable' in message
  assert 'newest intact checkpoint is ckpt-2' in message
  assert '\n' not in message
  # The command given makes ckpt-2 the one to resume from.
  command = message.split('python -c "', 1)[1].split('"', 1)[0]
  exec(command, {})  # pylint: disable=exec-used
  assert checkpoints.resumable_checkpoint(model_dir) == prefix(model_dir, 2)
  assert tf.train.get_checkpoint_state(model_dir).all_model_checkpoint_paths[
      -1] == prefix(model_dir, 2)


def test_older_damaged_checkpoints_are_passed_over(model_dir):
  truncate(prefix(model_dir, 3) + '.index')
  truncate(prefix(model_dir, 2) + DATA)
  with pytest.raises(checkpoints.CheckpointError,
                     match='newest intact checkpoint is ckpt-1'):
    checkpoints.resumable_checkpoint(model_dir)


def test_no_intact_checkpoint_says_to_start_in_a_new_model_dir(model_dir):
  for step in (1, 2, 3):
    truncate(prefix(model_dir, step) + DATA)
  with pytest.raises(checkpoints.CheckpointError,
                     match='No older intact checkpoint'):
    checkpoints.resumable_checkpoint(model_dir)


def test_an_unreadable_index_of_checkpoints_is_refused(model_dir):
  with open(os.path.join(model_dir, 'checkpoint'), 'w') as f:
    f.write('not a checkpoint state {')
  with pytest.raises(checkpoints.CheckpointError,
                     match='unreadable.*newest intact checkpoint is ckpt-3'):
    checkpoints.resumable_checkpoint(model_dir)


def test_a_lost_index_is_rewritten_when_the_newest_is_intact(model_dir):
  os.remove(os.path.join(model_dir, 'checkpoint'))
  assert checkpoints.resumable_checkpoint(model_dir) == prefix(model_dir, 3)
  state = tf.train.get_checkpoint_state(model_dir)
  assert state.model_checkpoint_path == prefix(model_dir, 3)
  assert list(state.all_model_checkpoint_paths) == [
      prefix(model_dir, s) for s in (1, 2, 3)]


def test_a_lost_index_with_a_damaged_newest_is_refused(model_dir):
  os.remove(os.path.join(model_dir, 'checkpoint'))
  truncate(prefix(model_dir, 3) + DATA)
  with pytest.raises(checkpoints.CheckpointError,
                     match='no checkpoint index.*ckpt-2'):
    checkpoints.resumable_checkpoint(model_dir)
  assert not os.path.exists(os.path.join(model_dir, 'checkpoint'))


def test_load_model_refuses_a_damaged_data_file_by_name(tmp_path):
  model = simclr.build_model(simclr.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, image_size=16, num_classes=10,
      global_bn=False))
  path = simclr.export_saved_model(model, str(tmp_path / 'export'))
  data = os.path.join(path, 'variables', 'variables' + DATA)
  flip_a_byte(data, at=0.7)
  with pytest.raises(checkpoints.CheckpointError) as error:
    simclr.load_model(str(tmp_path / 'export'))
  assert f'{data} is unreadable' in str(error.value)


def test_a_plain_file_is_said_to_be_a_file(tmp_path):
  path = tmp_path / 'weights.h5'
  path.write_bytes(b'12345')
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'is a file \(5 bytes\), not a SavedModel'):
    checkpoints.resolve_checkpoint(str(path))


def test_a_data_file_resolves_to_its_checkpoint(model_dir):
  assert checkpoints.resolve_checkpoint(prefix(model_dir, 2) + DATA) == (
      'checkpoint', prefix(model_dir, 2))


def test_a_model_dir_whose_newest_files_are_gone_resolves_to_them(model_dir):
  # tf.train.latest_checkpoint says None here; the damage is named instead.
  os.remove(prefix(model_dir, 3) + '.index')
  kind, resolved = checkpoints.resolve_checkpoint(model_dir)
  assert (kind, resolved) == ('checkpoint', prefix(model_dir, 3))
  assert checkpoints.checkpoint_damage(resolved) == (
      f'{prefix(model_dir, 3)}.index is missing')
