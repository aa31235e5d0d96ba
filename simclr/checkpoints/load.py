"""Loading models: published-format SavedModels and checkpoints, and our own
exports and model_dirs (which record their ModelConfig and the labels their
supervised head was fitted on), with the architecture inferred or read and
every variable accounted for; strict restores and copies of layers.
"""

import os
from typing import Dict, Optional

import tensorflow as tf

from simclr import head_labels
from simclr.checkpoints.damage import unreadable
from simclr.checkpoints.published import infer_published_config
from simclr.checkpoints.published import layout_of
from simclr.checkpoints.published import published_model_root
from simclr.checkpoints.published import published_paths
from simclr.checkpoints.published import read_object_graph
from simclr.checkpoints.resolve import CheckpointError
from simclr.checkpoints.resolve import MODEL_CONFIG_FILE
from simclr.checkpoints.resolve import READ_ERRORS
from simclr.checkpoints.resolve import resolve_checkpoint
from simclr.configs import ModelConfig
from simclr.models.simclr_model import build_model
from simclr.models.simclr_model import SimCLRModel

def _assign_published(model: SimCLRModel, prefix: str, root: str,
                      paths: Dict[str, str], source: str):
  """Copies every variable of `model` from the published checkpoint; raises
  CheckpointError listing what is missing, left over, or of the wrong shape."""
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  missing, wrong_shape, used = [], [], set()
  pairs = published_paths(model)
  for variable, path in pairs:
    key = paths.get(root + path)
    if key is None:
      missing.append(path)
      continue
    used.add(root + path)
    if list(shapes[key]) != variable.shape.as_list():
      wrong_shape.append(
          f'{path}: file {shapes[key]}, model {variable.shape.as_list()}')
  unused = sorted(p for p in paths if p.startswith(root) and p not in used)
  if missing or wrong_shape or unused:
    lines = [f'{source}: the published-format variables do not fit the '
             f'inferred architecture {model.config}']
    for title, items in (('missing', missing), ('wrong shape', wrong_shape),
                         ('not used', unused)):
      if items:
        lines.append(f'  {title} ({len(items)}): ' + '; '.join(items[:8]) +
                     (' ...' if len(items) > 8 else ''))
    raise CheckpointError('\n'.join(lines))
  try:
    for variable, path in pairs:
      variable.assign(reader.get_tensor(paths[root + path]))
  except READ_ERRORS as e:
    raise unreadable(source, prefix, e) from None


def _our_files_dir(kind: str, prefix: str, path: str) -> Optional[str]:
  """The directory holding our model_config.json (and head-labels record)
  for the model at `path`: an export's assets, or the checkpoint's
  model_dir; None for published-format files."""
  candidates = []
  if kind == 'saved_model':
    candidates.append(os.path.join(path, 'assets'))
  candidates.append(os.path.dirname(prefix))
  for candidate in candidates:
    if tf.io.gfile.exists(os.path.join(candidate, MODEL_CONFIG_FILE)):
      return candidate
  return None


def _read_our_config(kind: str, prefix: str, path: str) -> Optional[str]:
  directory = _our_files_dir(kind, prefix, path)
  if directory is None:
    return None
  with tf.io.gfile.GFile(os.path.join(directory, MODEL_CONFIG_FILE)) as f:
    return f.read()


def recorded_config(path: str) -> Optional[ModelConfig]:
  """The ModelConfig our model_dirs and exports record next to their
  weights, or None for published-format files (which do not record it)."""
  kind, prefix = resolve_checkpoint(path)
  text = _read_our_config(kind, prefix, path)
  return None if text is None else ModelConfig.from_json(text)


def head_labels_of(path: str) -> head_labels.HeadLabels:
  """Which labels the supervised head of the model at `path` (any form
  load_model reads) was fitted on: our record, or UNRECORDED (every label
  of an unknown split) for published-format files and model_dirs written
  before the record existed."""
  kind, prefix = resolve_checkpoint(path)
  directory = _our_files_dir(kind, prefix, path)
  record = None
  if directory is not None:
    try:
      record = head_labels.read(directory)
    except ValueError as e:
      raise CheckpointError(f'{path}: {e}') from None
  return record or head_labels.UNRECORDED


def restore_strict(checkpoint: tf.train.Checkpoint, prefix: str, source: str):
  """Restores `checkpoint` and fails, naming them, if any of its variables got
  no value (the published code's expect_partial() would train them from their
  random initialisation without a word)."""
  # read(), unlike restore(), leaves the save counter alone, which
  # checkpoints written with write() do not have.
  try:
    status = checkpoint.read(prefix)
  except READ_ERRORS as e:
    raise unreadable(source, prefix, e) from None
  try:
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise CheckpointError(
        f'{source}: does not provide every variable of the model: '
        f'{str(e)[:2000]}') from None
  return status


def load_model(path: str, **config_overrides) -> SimCLRModel:
  """Builds a SimCLRModel and loads its weights from `path`.

  `path` is a published-format SavedModel or checkpoint (architecture inferred
  from the variables), or one of ours (architecture read from its
  model_config.json; checkpoints in either layout of training_checkpoint).
  `config_overrides` set what the files cannot tell (e.g. ft_proj_selector,
  train_mode, fine_tune_after_block) or change the head only where the
  variables still fit. Raises CheckpointError when the path is
  none of these, a file is damaged, or the variables do not fit; nothing is
  left randomly initialised. The model's `head_labels` attribute says which
  labels its supervised head was fitted on (simclr.head_labels.HeadLabels;
  UNRECORDED for files that do not record it).

  Data only: this reads tensors (the variables' values and the checkpoint's
  object graph, a protocol buffer of names) and JSON, and builds the model
  from this package's own code. It never loads a SavedModel's graph
  (saved_model.pb, the program that tf.saved_model.load and hub.KerasLayer
  run), so a file from an untrusted source cannot run code through it. Keep
  it that way: do not add tf.saved_model.load here.
  """
  kind, prefix = resolve_checkpoint(path)
  paths = read_object_graph(path, prefix)
  root = published_model_root(paths)
  our_config = _read_our_config(kind, prefix, path)
  if our_config is not None:
    config = ModelConfig.from_json(our_config).replace(**config_overrides)
    model = build_model(config)
    # simclr.export_saved_model and training_checkpoint (layout 'published')
    # keep the variables at the published paths; older model_dirs hold the
    # tf_keras model (layout 'legacy').
    if kind == 'checkpoint':
      layout = layout_of(paths)
      if layout == 'legacy':
        restore_strict(tf.train.Checkpoint(model=model), prefix, path)
        model.head_labels = head_labels_of(path)
        return model
      if layout == 'published':
        root = 'model/'
    if root is None:
      raise CheckpointError(
          f'{path}: has our {MODEL_CONFIG_FILE} but no variables under the '
          f'published model structure (model/resnet_model/...) nor our '
          f'tf_keras model (model/resnet/...); variables seen: '
          f'{sorted(paths)[:5]}')
    _assign_published(model, prefix, root, paths, path)
    model.head_labels = head_labels_of(path)
    return model
  if root is None:
    raise CheckpointError(
        f'{path}: found neither our {MODEL_CONFIG_FILE} nor the published '
        f'model structure (resnet_model/block_groups/...); variables seen: '
        f'{sorted(paths)[:5]}')
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  relative = {p[len(root):]: k for p, k in paths.items() if p.startswith(root)}
  config = infer_published_config(relative, shapes)
  config = config.replace(**config_overrides)
  model = build_model(config)
  _assign_published(model, prefix, root, paths, path)
  model.head_labels = head_labels.UNRECORDED
  return model


def copy_layer(source, target, source_name: str, what: str):
  """Copies the variables of Keras layer `source` into `target`, an equally
  structured layer, matching them by object structure (not by name or list
  order, which differ between models and between frozen and trainable
  layers). Raises CheckpointError if any variable of `target` got no value."""
  scratch = f'ram://simclr_copy_layer/{id(source)}_{id(target)}/ckpt'
  written = tf.train.Checkpoint(layer=source).write(scratch)
  try:
    status = tf.train.Checkpoint(layer=target).read(written)
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise CheckpointError(
        f'{source_name}: its {what} does not match the model\'s: '
        f'{str(e)[:1500]}') from None
  finally:
    tf.io.gfile.rmtree(os.path.dirname(scratch))
