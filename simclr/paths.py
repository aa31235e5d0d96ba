"""Checks of the paths a run is given, made before any computation, so that a
wrong path stops a command with one line instead of a traceback hours later:

- output directories (a run's model_dir, the demo's output folder) are
  created if missing and must take a new file (a probe file is written and
  removed);
- output files (--out of the scripts) must be creatable: not a directory,
  in a directory that exists (or is created, when asked) and takes a file;
- input files and directories must exist and be of the right kind.

Errors are PathError (a ValueError) saying what the path is and why it does
not do, e.g. "/data/run: is a file (812 bytes), not a directory"; callers
prefix the flag. Local paths are checked with the os module (no TensorFlow
import, so that scripts fail fast); paths with a scheme (gs://...) through
tf.io.gfile.

Also here: write_text / write_json, which write aside and rename, so that a
reader (or a crash) never sees half a file.
"""

import json
import os
import stat
from typing import Optional


class PathError(ValueError):
  """A path that cannot be used as asked."""


def _is_url(path: str) -> bool:
  return '://' in path


def describe(path: str) -> str:
  """What a local path is, in words: 'missing', 'a directory', 'a file (12
  bytes)', 'a broken symbolic link to ...', 'a socket', ..."""
  if os.path.islink(path) and not os.path.exists(path):
    return f'a broken symbolic link (to {os.readlink(path)})'
  try:
    info = os.stat(path)
  except FileNotFoundError:
    return 'missing'
  except NotADirectoryError:
    return 'missing (a parent is a file)'
  except OSError as e:
    return f'unreadable ({e.strerror})'
  if stat.S_ISDIR(info.st_mode):
    return 'a directory'
  if stat.S_ISREG(info.st_mode):
    return f'a file ({info.st_size} bytes)'
  for test, name in ((stat.S_ISFIFO, 'a named pipe'),
                     (stat.S_ISSOCK, 'a socket'),
                     (stat.S_ISCHR, 'a character device'),
                     (stat.S_ISBLK, 'a block device')):
    if test(info.st_mode):
      return name
  return 'neither a file nor a directory'


def _file_in_the_way(path: str) -> Optional[str]:
  """The nearest existing ancestor of `path` (or `path` itself) when it is
  not a directory, else None."""
  current = os.path.abspath(path)
  while True:
    if os.path.lexists(current):
      return None if os.path.isdir(current) else current
    parent = os.path.dirname(current)
    if parent == current:
      return None
    current = parent


def _probe(directory: str):
  """Writes and removes a small file in `directory`; raises OSError."""
  probe = os.path.join(directory, f'.write_probe_{os.getpid()}')
  try:
    with open(probe, 'wb') as f:
      f.write(b'probe')
  finally:
    if os.path.lexists(probe):
      os.remove(probe)


def _reason(error: OSError) -> str:
  return error.strerror or str(error)


def check_output_dir(path: str):
  """Creates directory `path` (with its parents) if missing and checks that
  a file can be written in it. Raises PathError saying why not."""
  if not path:
    raise PathError('empty path')
  if _is_url(path):
    _check_remote_dir(path)
    return
  blocker = _file_in_the_way(path)
  if blocker is not None:
    if os.path.abspath(blocker) == os.path.abspath(path):
      raise PathError(f'{path}: is {describe(path)}, not a directory')
    raise PathError(f'{path}: cannot be created: {blocker} is '
                    f'{describe(blocker)}, not a directory')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise PathError(f'{path}: cannot be created: {_reason(e)}') from None
  try:
    _probe(path)
  except OSError as e:
    raise PathError(f'{path}: cannot write a file there: '
                    f'{_reason(e)}') from None


def check_output_file(path: str, create_directory: bool = False):
  """Checks that a file can be written at `path`: not a directory, in a
  directory that exists (created first with create_directory) and takes a
  new file. An existing file is fine (it will be replaced). Raises
  PathError."""
  if not path:
    raise PathError('empty path')
  if _is_url(path):
    _check_remote_dir(os.path.dirname(path))
    return
  if os.path.lexists(path) and not os.path.isfile(path):
    raise PathError(f'{path}: is {describe(path)}; expected a file name')
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    blocker = _file_in_the_way(directory)
    if blocker is not None:
      raise PathError(f'{path}: cannot be created: {blocker} is '
                      f'{describe(blocker)}, not a directory')
    if not create_directory:
      raise PathError(f'{path}: directory {directory} does not exist (create '
                      f'it first)')
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      raise PathError(f'{path}: cannot create its directory {directory}: '
                      f'{_reason(e)}') from None
  try:
    _probe(directory)
  except OSError as e:
    raise PathError(f'{path}: cannot write a file in {directory}: '
                    f'{_reason(e)}') from None


def check_input_file(path: str):
  """Raises PathError unless `path` is an existing file (remote paths are
  only checked for existence)."""
  if _is_url(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
      raise PathError(f'{path}: no such file')
    return
  if not os.path.isfile(path):
    raise PathError(f'{path}: is {describe(path)}; expected a file')


def check_input_dir(path: str):
  """Raises PathError unless `path` is an existing directory."""
  if _is_url(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.io.gfile.isdir(path):
      raise PathError(f'{path}: no such directory')
    return
  if not os.path.isdir(path):
    raise PathError(f'{path}: is {describe(path)}; expected a directory')


def _check_remote_dir(path: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  probe = f'{path.rstrip("/")}/.write_probe_{os.getpid()}'
  try:
    tf.io.gfile.makedirs(path)
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('probe')
    tf.io.gfile.remove(probe)
  except tf.errors.OpError as e:
    raise PathError(f'{path}: cannot be created or written: '
                    f'{e.message}') from None


def write_text(path: str, text: str):
  """Writes `path` whole: into path.tmp, then renamed over `path` (local
  paths with the os module, others through tf.io.gfile)."""
  if not _is_url(path):
    with open(path + '.tmp', 'w') as f:
      f.write(text)
    os.replace(path + '.tmp', path)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
    f.write(text)
  tf.io.gfile.rename(path + '.tmp', path, overwrite=True)


def write_json(path: str, value):
  """write_text of `value` as indented JSON with sorted keys."""
  write_text(path, json.dumps(value, indent=1, sort_keys=True))
