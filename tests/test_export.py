"""simclr.export_saved_model: one SavedModel for every way users load one
(tf.saved_model.load with the published signature, hub.KerasLayer,
saved_model_cli, Keras 3 TFSMLayer, simclr.load_model), written atomically.

References are the outputs of the tf_keras model computed before export, and
sizes derived from the architecture by hand."""

import collections
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

import simclr
from simclr import checkpoints
from simclr import export
from conftest import reference_dir

# ResNet-18 at width 1/4: stem 16 channels, block groups 16, 32, 64, 128;
# CIFAR stem (image_size 32): the network downsamples by 8 in total.
CONFIG = simclr.ModelConfig(resnet_depth=18, width_multiplier=0.25,
                            image_size=32, num_classes=10, global_bn=False)
ENCODER_CHANNELS = 128
SUBPROCESS_TIMEOUT = 240

Exported = collections.namedtuple(
    'Exported', 'path model images inference training odd_images odd_inference')


def _numpy(outputs):
  return {key: outputs[key].numpy() for key in simclr.OUTPUT_KEYS}


def _randomise(model, rng):
  """Random batch-norm parameters and statistics: inference and training
  mode then differ clearly, and no residual branch is muted by a zero gamma
  (so every encoder variable gets a gradient)."""
  for variable in model.variables:
    name = variable.name.split('/')[-1].split(':')[0]
    shape = variable.shape
    value = {
        'gamma': lambda: rng.uniform(0.5, 1.5, shape),
        'beta': lambda: rng.normal(0, 0.1, shape),
        'moving_mean': lambda: rng.normal(0, 0.1, shape),
        'moving_variance': lambda: rng.uniform(0.5, 2.0, shape),
    }.get(name)
    if value is not None:
      variable.assign(value().astype(np.float32))


def _assert_close(actual, expected, tolerance=1e-5):
  for key, value in expected.items():
    scale = max(np.abs(value).max(), 1e-6)
    diff = np.abs(np.asarray(actual[key]) - value).max()
    assert diff <= tolerance * scale, (key, diff, scale)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  model = simclr.build_model(CONFIG)
  rng = np.random.RandomState(0)
  _randomise(model, rng)
  images = rng.uniform(0, 1, [4, 32, 32, 3]).astype(np.float32)
  odd_images = rng.uniform(0, 1, [2, 40, 48, 3]).astype(np.float32)
  inference = _numpy(model(images, training=False))
  odd_inference = _numpy(model(odd_images, training=False))
  path = str(tmp_path_factory.mktemp('model_dir') / 'saved_model' / '100')
  assert export.export_saved_model(model, path) == path
  # Training mode does not depend on the moving averages, but updates them:
  # they are put back so that `model` stays equal to the export.
  values = [v.numpy() for v in model.variables]
  training = _numpy(model(images, training=True))
  for variable, value in zip(model.variables, values):
    variable.assign(value)
  return Exported(path, model, images, inference, training, odd_images,
                  odd_inference)


def _files(directory):
  """{relative path: bytes} of every file under directory."""
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, directory)] = f.read()
  return found


def _keras_classifier(layer, num_classes=3):
  inputs = tf_keras.Input([32, 32, 3])
  outputs = tf_keras.layers.Dense(num_classes, name='user_head')(layer(inputs))
  classifier = tf_keras.Model(inputs, outputs)
  classifier.compile(
      optimizer=tf_keras.optimizers.SGD(learning_rate=0.1),
      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return classifier


def _changed(weights, before):
  return {w.name for w in weights if not np.array_equal(w.numpy(),
                                                        before[w.name])}


def _saved_model_cli(*args):
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  if not os.path.exists(cli):
    cli = shutil.which('saved_model_cli')
  assert cli, 'saved_model_cli not found beside python nor on PATH'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([cli, *args], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


# ---------------------------------------------------------------------------
# The published interface: m(images, trainable=...).


def test_published_call_in_inference_mode_returns_the_keras_outputs(exported):
  m = tf.saved_model.load(exported.path)
  outputs = m(exported.images, trainable=False)
  assert sorted(outputs) == sorted(simclr.OUTPUT_KEYS)
  assert len(outputs) == 10
  _assert_close(outputs, exported.inference)


def test_published_call_with_trainable_runs_batch_norm_in_training_mode(
    exported):
  m = tf.saved_model.load(exported.path)
  outputs = m(exported.images, trainable=True)
  _assert_close(outputs, exported.training)
  pooled = exported.inference['final_avg_pool']
  assert np.abs(outputs['final_avg_pool'] - pooled).max() > 1e-2 * np.abs(
      pooled).max()


def test_published_call_accepts_any_image_size(exported):
  m = tf.saved_model.load(exported.path)
  outputs = m(exported.odd_images, trainable=False)
  # 40 x 48 images: three stride-2 groups give ceil(40/8) x ceil(48/8).
  assert outputs['block_group4'].shape == [2, 5, 6, ENCODER_CHANNELS]
  assert outputs['final_avg_pool'].shape == [2, ENCODER_CHANNELS]
  _assert_close(outputs, exported.odd_inference)


def test_export_has_the_published_attributes(exported):
  m = tf.saved_model.load(exported.path)
  for child in ('resnet_model', '_projection_head', 'supervised_head'):
    assert hasattr(m.model, child), child
  names = sorted(v.name for v in m.trainable_variables_list)
  assert names == sorted(v.name for v in exported.model.trainable_variables)


def test_variables_sit_at_the_paths_of_a_published_export(tmp_path):
  ref = reference_dir('r18_cifar')
  with open(os.path.join(ref, 'config.json')) as f:
    published = json.load(f)
  fields = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'image_size',
            'num_classes', 'proj_head_mode', 'num_proj_layers',
            'proj_out_dim')
  config = simclr.ModelConfig(global_bn=False,
                              **{name: published[name] for name in fields})
  path = export.export_saved_model(simclr.build_model(config),
                                   str(tmp_path / 'ours'))

  def shapes_by_path(saved_model):
    prefix = os.path.join(saved_model, 'variables', 'variables')
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    return {p: shapes[key] for p, key in
            checkpoints.object_graph_paths(prefix).items()}

  theirs = shapes_by_path(os.path.join(ref, 'saved_model'))
  assert len(theirs) > 100
  assert shapes_by_path(path) == theirs


@pytest.mark.slow
def test_model_built_under_two_replicas_exports_with_the_same_outputs(
    tmp_path, two_replica_strategy):
  with two_replica_strategy.scope():
    model = simclr.build_model(CONFIG.replace(global_bn=True))
  _randomise(model, np.random.RandomState(1))
  images = np.random.RandomState(2).uniform(0, 1, [8, 32, 32, 3]).astype(
      np.float32)
  inference = _numpy(model(images, training=False))
  path = export.export_saved_model(model, str(tmp_path / 'export'))
  # In the strategy's cross-replica context, as the export was traced, global
  # batch norm computes the statistics of the batch it is given.
  with two_replica_strategy.scope():
    training = _numpy(model(images, training=True))
  m = tf.saved_model.load(path)
  _assert_close(m(images, trainable=False), inference)
  # Unfused batch norm in training mode, eager here and a graph in the
  # export, differs by float32 rounding (measured up to 1e-5 relative on the
  # projection head output, whose small activations the batch std divides).
  _assert_close(m(images, trainable=True), training, tolerance=1e-4)


# ---------------------------------------------------------------------------
# TF-Hub: hub.KerasLayer inside a user's tf_keras model.


def test_trainable_hub_layer_runs_batch_norm_in_training_mode(exported):
  layer = hub.KerasLayer(exported.path, trainable=True,
                         output_key='final_avg_pool')
  _assert_close({'final_avg_pool': layer(exported.images, training=True)},
                {'final_avg_pool': exported.training['final_avg_pool']})


def test_trainable_hub_layer_fine_tunes_the_encoder_in_one_step(exported):
  layer = hub.KerasLayer(exported.path, trainable=True,
                         output_key='final_avg_pool')
  classifier = _keras_classifier(layer)
  before = {w.name: w.numpy() for w in layer.weights}
  classifier.train_on_batch(exported.images, np.array([0, 1, 2, 0]))
  # Every encoder variable moves; the heads do not feed final_avg_pool.
  encoder = {v.name for v in exported.model.resnet.trainable_variables}
  assert _changed(layer.trainable_weights, before) == encoder
  # Batch norm ran in training mode: every moving average was updated.
  moving = {w.name for w in layer.non_trainable_weights}
  assert moving and all('moving_' in name for name in moving)
  assert _changed(layer.non_trainable_weights, before) == moving


def test_frozen_hub_layer_gives_fixed_features(exported):
  layer = hub.KerasLayer(exported.path, trainable=False,
                         output_key='logits_sup')
  classifier = _keras_classifier(layer)
  before = {w.name: w.numpy() for w in layer.weights}
  head = classifier.get_layer('user_head').kernel.numpy()
  classifier.train_on_batch(exported.images, np.array([0, 1, 2, 0]))
  assert not layer.trainable_weights
  assert not _changed(layer.weights, before)
  assert not np.array_equal(classifier.get_layer('user_head').kernel.numpy(),
                            head)
  # Batch norm stays in inference mode even when the user model trains.
  _assert_close({'logits_sup': layer(exported.images, training=True)},
                {'logits_sup': exported.inference['logits_sup']})


# ---------------------------------------------------------------------------
# The serving signature: saved_model_cli, Keras 3.


def test_saved_model_cli_show_lists_the_serving_signature(exported):
  shown = _saved_model_cli('show', '--dir', exported.path, '--all')
  serving = shown.split("signature_def['serving_default']")[1]
  assert re.search(r"inputs\['images'\] tensor_info:\s+dtype: DT_FLOAT\s+"
                   r"shape: \(-1, -1, -1, 3\)", serving)
  outputs = dict(re.findall(
      r"outputs\['(\w+)'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(([^)]*)\)",
      serving))
  assert sorted(outputs) == sorted(simclr.OUTPUT_KEYS)
  assert outputs['final_avg_pool'] == f'-1, {ENCODER_CHANNELS}'
  assert outputs['block_group4'] == f'-1, -1, -1, {ENCODER_CHANNELS}'
  assert outputs['logits_sup'] == f'-1, {CONFIG.num_classes}'


def test_saved_model_cli_run_computes_the_inference_outputs(exported,
                                                            tmp_path):
  np.save(tmp_path / 'images.npy', exported.images)
  _saved_model_cli('run', '--dir', exported.path, '--tag_set', 'serve',
                   '--signature_def', 'serving_default', '--inputs',
                   f'images={tmp_path / "images.npy"}', '--outdir',
                   str(tmp_path / 'outputs'))
  outputs = {key: np.load(tmp_path / 'outputs' / f'{key}.npy')
             for key in simclr.OUTPUT_KEYS}
  _assert_close(outputs, exported.inference)


def test_keras3_tfsm_layer_runs_inference(exported):
  import keras  # Keras 3, beside tf_keras
  assert keras.__version__.startswith('3.')
  layer = keras.layers.TFSMLayer(exported.path,
                                 call_endpoint='serving_default')
  outputs = layer(exported.images)
  _assert_close({k: np.asarray(v) for k, v in outputs.items()},
                exported.inference)


# ---------------------------------------------------------------------------
# simclr.load_model.


def test_load_model_round_trip_gives_identical_outputs(exported):
  model = simclr.load_model(exported.path)
  assert isinstance(model, simclr.SimCLRModel)
  assert isinstance(model, tf_keras.Model)
  assert model.config == exported.model.config
  _assert_close(_numpy(model(exported.images, training=False)),
                exported.inference)


def test_load_model_returns_a_trainable_model(exported):
  model = simclr.load_model(exported.path)
  assert len(model.trainable_variables) == len(
      exported.model.trainable_variables)
  with tf.GradientTape() as tape:
    outputs = model(exported.images, training=True)
    # proj_head_output reaches the projection head, logits_sup the rest.
    loss = (tf.reduce_sum(outputs['proj_head_output']**2) +
            tf.reduce_sum(outputs['logits_sup']**2))
  gradients = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None for g in gradients)


def test_export_without_its_config_file_loads_as_a_published_model(
    exported, tmp_path):
  path = str(tmp_path / 'copy')
  shutil.copytree(exported.path, path)
  os.remove(os.path.join(path, 'assets', checkpoints.MODEL_CONFIG_FILE))
  model = simclr.load_model(path)
  _assert_close(_numpy(model(exported.images, training=False)),
                exported.inference)


# ---------------------------------------------------------------------------
# Atomic writes and pruning.


def _crash_midway(obj, export_dir, **kwargs):
  """Stands in for tf.saved_model.save: writes part of a SavedModel, then
  fails like a full disk."""
  del obj, kwargs
  os.makedirs(os.path.join(export_dir, 'variables'))
  with open(os.path.join(export_dir, 'saved_model.pb'), 'wb') as f:
    f.write(b'partial')
  raise OSError('No space left on device')


def test_failed_export_leaves_no_directory_behind(exported, tmp_path,
                                                  monkeypatch):
  monkeypatch.setattr(tf.saved_model, 'save', _crash_midway)
  with pytest.raises(OSError, match='No space left'):
    export.export_saved_model(exported.model, str(tmp_path / 'exports' / '7'))
  assert os.listdir(tmp_path / 'exports') == []


def test_failed_export_keeps_the_previous_export(exported, tmp_path,
                                                 monkeypatch):
  path = str(tmp_path / 'exports' / '7')
  shutil.copytree(exported.path, path)
  files = _files(path)
  monkeypatch.setattr(tf.saved_model, 'save', _crash_midway)
  with pytest.raises(OSError, match='No space left'):
    export.export_saved_model(exported.model, path)
  assert os.listdir(tmp_path / 'exports') == ['7']
  assert _files(path) == files


def test_export_dir_appears_only_once_complete(exported, tmp_path,
                                               monkeypatch):
  path = str(tmp_path / 'exports' / '7')
  save = tf.saved_model.save
  written_to = []

  def checked_save(obj, export_dir, **kwargs):
    # While the SavedModel is written, readers find nothing at `path` and
    # nothing that looks like a numbered export.
    assert not os.path.exists(path)
    assert os.path.basename(export_dir).startswith('.')
    written_to.append(export_dir)
    save(obj, export_dir, **kwargs)

  monkeypatch.setattr(tf.saved_model, 'save', checked_save)
  export.export_saved_model(exported.model, path)
  assert written_to and not os.path.exists(written_to[0])
  assert os.listdir(tmp_path / 'exports') == ['7']
  assert os.path.exists(os.path.join(path, 'saved_model.pb'))


def test_export_replaces_an_existing_export(exported, tmp_path):
  path = str(tmp_path / 'exports' / '7')
  os.makedirs(path)
  with open(os.path.join(path, 'stale.txt'), 'w') as f:
    f.write('from an older run')
  export.export_saved_model(exported.model, path)
  assert os.listdir(tmp_path / 'exports') == ['7']
  assert not os.path.exists(os.path.join(path, 'stale.txt'))
  _assert_close(tf.saved_model.load(path)(exported.images, trainable=False),
                exported.inference)


def test_prune_exports_keeps_the_newest_numbered_exports(tmp_path):
  # 5 < 10 < 100 as numbers but not as strings.
  for name in ('5', '10', '100', 'notes', '.incomplete-200-0123abcd'):
    os.makedirs(tmp_path / name)
  deleted = export.prune_exports(str(tmp_path), keep_max=2)
  assert deleted == [str(tmp_path / '5')]
  assert sorted(os.listdir(tmp_path)) == [
      '.incomplete-200-0123abcd', '10', '100', 'notes']


def test_prune_exports_with_keep_max_zero_keeps_everything(tmp_path):
  for name in ('5', '10'):
    os.makedirs(tmp_path / name)
  assert export.prune_exports(str(tmp_path), keep_max=0) == []
  assert sorted(os.listdir(tmp_path)) == ['10', '5']


def test_export_with_keep_max_prunes_older_exports(exported, tmp_path):
  for step in ('5', '10', '100'):
    os.makedirs(tmp_path / step)
  export.export_saved_model(exported.model, str(tmp_path / '200'),
                            keep_max=2)
  assert sorted(os.listdir(tmp_path), key=int) == ['100', '200']
