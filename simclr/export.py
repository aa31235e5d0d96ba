"""Exporting a SimCLRModel as one SavedModel that every loader accepts.

The exported root object offers:

- the published interface (that of gs://simclr-checkpoints-tf2 and the
  published `tf2/run.py`): `m(images, trainable=False|True)` returns the dict
  of the published output keys; `m.model` holds the variables under the
  published object-graph paths (`m.model.resnet_model.block_groups...`), and
  `m.trainable_variables_list` lists the trainable ones;
- the TF-Hub reusable SavedModel interface: `m(images, training=...)`,
  `m.variables`, `m.trainable_variables`, `m.regularization_losses` (empty:
  weight decay lives in the optimizer), so that `hub.KerasLayer` fine-tunes it;
- a `serving_default` signature `images -> {key: tensor}` in inference mode,
  for saved_model_cli, TF Serving and Keras 3's `TFSMLayer`;
- the ModelConfig as `assets/model_config.json`, from which
  `simclr.load_model` rebuilds the tf_keras model, and which labels the
  supervised head was fitted on (`assets/head_labels.json`, see
  simclr.head_labels).

Only the variables and the traced functions are saved, not the tf_keras
model: Keras' own SavedModel serialisation traces every layer separately,
which is slow and adds nothing the interfaces above use. Because the
variables sit at the published paths, loaders of published models (including
`simclr.load_model` without the config file) read our exports as well.

Everything here is plain TensorFlow (tf.saved_model, tf.io.gfile); written by
hand is only the atomic rename/pruning, which no library offers for
SavedModels (the object-graph mirror is simclr.checkpoints'
published_model_tree, shared with the training checkpoints).
"""

import contextlib
import os
import tempfile
import uuid
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from simclr.checkpoints import MODEL_CONFIG_FILE
from simclr.checkpoints import published_model_tree
from simclr.head_labels import HeadLabels
from simclr.models.simclr_model import OUTPUT_KEYS
from simclr.models.simclr_model import SimCLRModel

SERVING_SIGNATURE = 'serving_default'
SERVING_INPUT = 'images'
# Exports are written under a name no reader looks for (hidden, not a step
# number), then renamed into place.
_TEMPORARY_PREFIX = '.incomplete-'
_REPLACED_PREFIX = '.replaced-'

_IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32)


class ExportError(ValueError):
  """A model that cannot be exported as asked."""


class _ExportedModel(tf.Module):
  """The root object of an export (see the module docstring)."""

  # tf.Module computes these as read-only properties; the TF-Hub interface
  # needs them saved with the export, i.e. as plain attributes.
  variables = ()
  trainable_variables = ()

  def __init__(self, model: SimCLRModel, config_asset: str,
               other_assets: Sequence[str] = ()):
    super().__init__(name='simclr_export')
    # A plain function, not the Keras model, so that only the variables (via
    # `model` below) and the traced functions are saved.
    self._forward = model.__call__
    self._has_logits = model.supervised_head is not None
    self.model = published_model_tree(model)
    self.variables = list(model.variables)
    self.trainable_variables = list(model.trainable_variables)
    self.trainable_variables_list = list(model.trainable_variables)
    self.regularization_losses = []
    self.model_config_file = tf.saved_model.Asset(config_asset)
    self.other_files = [tf.saved_model.Asset(path) for path in other_assets]

  def _outputs(self, images, training: bool) -> Dict[str, tf.Tensor]:
    outputs = self._forward(images, training=training)
    return {key: tf.cast(outputs[key], tf.float32) for key in OUTPUT_KEYS
            if key != 'logits_sup' or self._has_logits}

  @tf.function
  def __call__(self, inputs, trainable=False, training=None):
    """inputs: float32 [batch, height, width, 3] in [0, 1], any size.
    `trainable` (published name) or `training` (TF-Hub name) True runs batch
    norm in training mode (batch statistics; moving averages updated)."""
    return self._outputs(inputs, training if training is not None
                         else trainable)

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.float32, name=SERVING_INPUT)])
  def serve(self, images):
    """The serving signature: inference mode."""
    return self._outputs(images, False)

  def trace(self):
    """Traces every mode a loader may ask for; a restored tf.function only
    accepts the argument combinations traced before saving."""
    for trainable in (False, True):
      self.__call__.get_concrete_function(_IMAGES_SPEC, trainable=trainable)
    for training in (False, True):
      self.__call__.get_concrete_function(_IMAGES_SPEC, training=training)
    return {SERVING_SIGNATURE: self.serve.get_concrete_function()}


def _cross_replica_context(model: SimCLRModel):
  """The scope of the strategy that made the model's variables, unless the
  caller is already inside a strategy's scope."""
  if tf.distribute.has_strategy():
    return contextlib.nullcontext()
  return model.distribute_strategy.scope()


def export_saved_model(model: SimCLRModel, export_dir: str,
                       keep_max: int = 0,
                       head_labels: Optional[HeadLabels] = None) -> str:
  """Writes `model` as a SavedModel at `export_dir` and returns that path.

  head_labels: which labels the supervised head was fitted on, kept as
  assets (simclr.head_labels) for load_model, fine-tuning and distillation
  to read; defaults to `model.head_labels` when load_model set it.

  The export is written to a hidden sibling directory and renamed into place,
  so `export_dir` is either absent, the previous export, or the complete new
  one (on local disks; object stores rename file by file). An existing export
  at `export_dir` is replaced. With keep_max > 0, numbered exports beside
  `export_dir` (model_dir/saved_model/<step>/) are then pruned to the newest
  keep_max (see prune_exports), as the published keep_hub_module_max.
  """
  export_dir = export_dir.rstrip('/')
  parent, name = os.path.split(export_dir)
  if not name:
    raise ExportError(f'export_dir {export_dir!r} names no directory')
  parent = parent or '.'
  tf.io.gfile.makedirs(parent)
  unique = uuid.uuid4().hex[:8]
  temporary = os.path.join(parent, f'{_TEMPORARY_PREFIX}{name}-{unique}')
  replaced = os.path.join(parent, f'{_REPLACED_PREFIX}{name}-{unique}')
  try:
    with tempfile.TemporaryDirectory() as local:
      config_path = os.path.join(local, MODEL_CONFIG_FILE)
      with open(config_path, 'w') as f:
        f.write(model.config.to_json())
      record = head_labels or getattr(model, 'head_labels', None)
      other_assets = []
      if record is not None and model.supervised_head is not None:
        record.write(local)
        other_assets = [os.path.join(local, name) for name in sorted(
            os.listdir(local)) if name != MODEL_CONFIG_FILE]
      # In a cross-replica context, synchronized (global) batch norm
      # computes plain batch statistics: the export holds no cross-replica
      # collectives (their custom gradients do not survive a SavedModel).
      with _cross_replica_context(model):
        exported = _ExportedModel(model, config_path, other_assets)
        signatures = exported.trace()
        tf.saved_model.save(exported, temporary, signatures=signatures)
    if tf.io.gfile.exists(export_dir):
      tf.io.gfile.rename(export_dir, replaced)
      try:
        tf.io.gfile.rename(temporary, export_dir)
      except Exception:
        tf.io.gfile.rename(replaced, export_dir)
        raise
      tf.io.gfile.rmtree(replaced)
    else:
      tf.io.gfile.rename(temporary, export_dir)
  finally:
    if tf.io.gfile.exists(temporary):
      tf.io.gfile.rmtree(temporary)
  prune_exports(parent, keep_max)
  return export_dir


def numbered_exports(parent_dir: str) -> List[str]:
  """Paths of the exports parent_dir/<step>/, oldest (smallest step) first."""
  if not tf.io.gfile.isdir(parent_dir):
    return []
  names = [name.rstrip('/') for name in tf.io.gfile.listdir(parent_dir)]
  return [os.path.join(parent_dir, name)
          for name in sorted((n for n in names if n.isdigit()), key=int)]


def prune_exports(parent_dir: str, keep_max: int) -> List[str]:
  """Deletes all but the newest `keep_max` numbered exports
  parent_dir/<step>/ (by step number) and returns the deleted paths;
  keep_max < 1 keeps everything, as the published keep_hub_module_max. Other
  entries (hidden in-progress exports, files) are left alone."""
  if keep_max < 1:
    return []
  deleted = numbered_exports(parent_dir)[:-keep_max]
  for path in deleted:
    tf.io.gfile.rmtree(path)
  return deleted
