"""Damaged checkpoints (a partial copy, a full disk, a flipped bit): finding
them before a restore, the newest intact one of a model_dir, and which
checkpoint a run resumes from.
"""

import os
import re
from typing import List, Optional, Tuple

from absl import logging
import tensorflow as tf

from simclr.checkpoints.resolve import CHECKPOINT_STATE_FILE
from simclr.checkpoints.resolve import checkpoint_state
from simclr.checkpoints.resolve import CheckpointError
from simclr.checkpoints.resolve import READ_ERRORS


def _first_line(error: Exception) -> str:
  text = getattr(error, 'message', None) or str(error) or type(error).__name__
  return text.strip().splitlines()[0][:300]


def _data_files(prefix: str) -> List[str]:
  return sorted(tf.io.gfile.glob(prefix + '.data-?????-of-?????'))


def checkpoint_damage(prefix: str) -> Optional[str]:
  """None when the checkpoint at `prefix` reads back whole, else what is
  wrong, naming the file, e.g. '/m/ckpt-6.index is unreadable (not an
  sstable (bad magic number))'.

  Reads the index and every tensor once: TensorFlow checks each tensor
  against the CRC32C and length the index records, so a truncated or
  corrupted data file is found here rather than by a restore that has
  already assigned some variables (or, for optimizer slots, restores them
  lazily in the middle of training)."""
  index = prefix + '.index'
  if not tf.io.gfile.exists(index):
    return f'{index} is missing'
  data = _data_files(prefix)
  if not data:
    return f'{prefix}.data-* is missing (no data file beside {index})'
  shards = int(data[0].rsplit('-of-', 1)[1])
  for shard in range(shards):
    name = f'{prefix}.data-{shard:05d}-of-{shards:05d}'
    if name not in data:
      return f'{name} is missing'
  try:
    reader = tf.train.load_checkpoint(prefix)
    keys = sorted(reader.get_variable_to_dtype_map())
  except READ_ERRORS as e:
    return f'{index} is unreadable ({_first_line(e)})'
  for key in keys:
    try:
      reader.get_tensor(key)
    except READ_ERRORS as e:
      where = (data[0] if len(data) == 1 else
               f'one of {", ".join(data)}')
      return (f'{where} is unreadable (tensor {key}: '
              f'{_first_line(e)})')
  return None


def checkpoint_step(prefix: str) -> Optional[int]:
  """The number a checkpoint prefix ends with ('/m/ckpt-40' -> 40)."""
  match = re.search(r'-(\d+)$', prefix)
  return int(match.group(1)) if match else None


def _prefixes_on_disk(model_dir: str) -> List[str]:
  """Numbered checkpoint prefixes with an .index in model_dir, oldest first."""
  prefixes = [p[:-len('.index')] for p in
              tf.io.gfile.glob(os.path.join(model_dir, '*-*.index'))]
  return sorted((p for p in prefixes if checkpoint_step(p) is not None),
                key=checkpoint_step)


def newest_intact_checkpoint(model_dir: str, below_step: Optional[int] = None
                             ) -> Tuple[Optional[str], List[str]]:
  """(the newest checkpoint of model_dir that reads back whole, every intact
  one up to it, oldest first), among those numbered below `below_step`;
  (None, []) when there is none. Checks newest first and stops at the
  first intact one."""
  # The index may list checkpoints whose files are gone, and miss some that
  # are there; by step, the first path seen wins.
  by_step = {}
  state = checkpoint_state(model_dir)
  listed = list(state.all_model_checkpoint_paths) if state else []
  for prefix in _prefixes_on_disk(model_dir) + listed:
    step = checkpoint_step(prefix)
    if step is not None and (below_step is None or step < below_step):
      by_step.setdefault(step, prefix)
  candidates = [by_step[step] for step in sorted(by_step)]
  for i in range(len(candidates) - 1, -1, -1):
    if checkpoint_damage(candidates[i]) is None:
      older = [p for p in candidates[:i] if tf.io.gfile.exists(p + '.index')]
      return candidates[i], older + [candidates[i]]
  return None, []


def resume_command(model_dir: str, prefix: str, kept: List[str]) -> str:
  """The command that makes `prefix` the newest checkpoint of model_dir's
  index (keeping `kept` listed for rotation), so that the run resumes from
  it."""
  names = [os.path.basename(p) for p in kept]
  return (f'python -c "import tensorflow as tf; '
          f'tf.compat.v1.train.update_checkpoint_state('
          f'{_absolute(model_dir)!r}, {os.path.basename(prefix)!r}, '
          f'{names!r})"')


def _absolute(model_dir: str) -> str:
  # update_checkpoint_state keeps names relative to an absolute directory
  # as they are, but rewrites them against a relative one.
  return model_dir if '://' in model_dir else os.path.abspath(model_dir)


def resumable_checkpoint(model_dir: str) -> Optional[str]:
  """The checkpoint a run in model_dir resumes from: the newest one its
  `checkpoint` index names, or None for a model_dir without checkpoints.

  Raises CheckpointError, naming the file, when that checkpoint is damaged
  or missing, when the index is unreadable, or when checkpoint files lie in
  model_dir without an index naming an intact one: a run never trains over
  them from random weights. The message names the newest intact checkpoint
  and the command that resumes from it (resume_command). An index lost with
  the newest checkpoint intact (a kill during the first save, a copy that
  left it out) is rewritten, with a warning."""
  state_file = os.path.join(model_dir, CHECKPOINT_STATE_FILE)
  on_disk = _prefixes_on_disk(model_dir)
  if not tf.io.gfile.exists(state_file):
    if not on_disk:
      return None
    newest = on_disk[-1]
    problem = checkpoint_damage(newest)
    if problem is None:
      tf.compat.v1.train.update_checkpoint_state(
          _absolute(model_dir), os.path.basename(newest),
          [os.path.basename(p) for p in on_disk])
      logging.warning('%s was missing; rewrote it naming %s, the newest '
                      'checkpoint there, to resume from', state_file, newest)
      return newest
    raise CheckpointError(_damage_message(
        model_dir, f'holds checkpoint files but no {CHECKPOINT_STATE_FILE} '
        f'index, and the newest, {os.path.basename(newest)}, is damaged: '
        f'{problem}', checkpoint_step(newest)))
  state = checkpoint_state(model_dir)
  if state is None or not state.model_checkpoint_path:
    raise CheckpointError(_damage_message(
        model_dir, f'its index {state_file} is unreadable or names no '
        f'checkpoint', None))
  latest = state.model_checkpoint_path
  problem = checkpoint_damage(latest)
  if problem is None:
    return latest
  raise CheckpointError(_damage_message(
      model_dir, f'its newest checkpoint {os.path.basename(latest)} is '
      f'damaged: {problem}', checkpoint_step(latest)))


def _damage_message(model_dir: str, problem: str,
                    step: Optional[int]) -> str:
  intact, kept = newest_intact_checkpoint(model_dir, below_step=step)
  message = (f'{model_dir}: {problem}; not resuming from it nor training '
             f'over it.')
  if intact is None:
    return (message + ' No older intact checkpoint is there: to start '
            'afresh, use a new --model_dir.')
  return (message + f' The newest intact checkpoint is '
          f'{os.path.basename(intact)}; to resume from it run '
          f'{resume_command(model_dir, intact, kept)} and then the same '
          f'command again.')


def unreadable(path: str, prefix: str, error: Exception) -> CheckpointError:
  """The error for a checkpoint that failed to read, naming the damaged
  file when checkpoint_damage finds it."""
  problem = checkpoint_damage(prefix) or f'{prefix}: {_first_line(error)}'
  where = '' if path == prefix else f'{path}: '
  return CheckpointError(f'{where}damaged checkpoint: {problem}')
