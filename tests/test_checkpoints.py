"""Loading published-format models (../shared/reference exports) and refusing
what does not fit."""

import os

import numpy as np
import pytest
import tensorflow as tf

import simclr
from simclr import checkpoints
from simclr import optimization
from conftest import reference_dir


def _reference_io(ref):
  io = np.load(os.path.join(ref, 'io.npz'))
  return io['inputs'], {k: io[k] for k in io.files if k != 'inputs'}


def _assert_outputs_match(model, ref):
  inputs, expected = _reference_io(ref)
  out = model(inputs, training=False)
  assert set(expected) == set(simclr.OUTPUT_KEYS)
  for key, value in expected.items():
    scale = np.abs(value).max()
    diff = np.abs(out[key].numpy() - value).max()
    assert diff <= 1e-4 * scale, (key, diff, scale)


@pytest.mark.parametrize('form', ['saved_model', 'checkpoint/ckpt'])
def test_published_r18_cifar_loads_with_identical_outputs(form):
  ref = reference_dir('r18_cifar')
  model = simclr.load_model(os.path.join(ref, form))
  _assert_outputs_match(model, ref)


def test_published_architecture_is_inferred_from_the_variables():
  ref = reference_dir('r18_cifar')
  import json
  with open(os.path.join(ref, 'config.json')) as f:
    published = json.load(f)
  config = simclr.load_model(os.path.join(ref, 'saved_model')).config
  for field in ('resnet_depth', 'width_multiplier', 'sk_ratio', 'image_size',
                'num_classes', 'proj_head_mode', 'num_proj_layers',
                'proj_out_dim'):
    assert getattr(config, field) == published[field], field


def test_checkpoint_directory_with_single_prefix_is_found():
  ref = reference_dir('r18_cifar')
  kind, prefix = checkpoints.resolve_checkpoint(os.path.join(ref, 'checkpoint'))
  assert kind == 'checkpoint' and prefix.endswith('ckpt')


def test_every_published_variable_is_used_exactly_once():
  ref = reference_dir('r18_cifar')
  model = simclr.load_model(os.path.join(ref, 'checkpoint', 'ckpt'))
  paths = checkpoints.object_graph_paths(
      os.path.join(ref, 'checkpoint', 'ckpt'))
  model_paths = {p for p in paths if p.startswith('model/')}
  mapped = ['model/' + p for _, p in checkpoints.published_paths(model)]
  assert len(mapped) == len(set(mapped)) == len(model_paths)
  assert set(mapped) == model_paths
  assert len(mapped) == len(model.variables)


def test_missing_path_is_an_error_that_says_so(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='does not exist'):
    simclr.load_model(str(tmp_path / 'nowhere'))


def test_directory_without_a_model_is_an_error_listing_its_contents(tmp_path):
  (tmp_path / 'notes.txt').write_text('hello')
  with pytest.raises(checkpoints.CheckpointError, match='notes.txt'):
    simclr.load_model(str(tmp_path))


def test_checkpoint_of_something_else_is_refused(tmp_path):
  thing = tf.train.Checkpoint(weights=tf.Variable(tf.zeros([3, 3])))
  prefix = thing.write(str(tmp_path / 'other'))
  with pytest.raises(checkpoints.CheckpointError,
                     match='published model structure'):
    simclr.load_model(prefix)


def _rewrite_published(tmp_path, keep=lambda path: True,
                       change=lambda path, value: value):
  """Rebuilds the reference checkpoint's object graph from plain modules,
  leaving out the paths `keep` rejects and passing values through `change`;
  returns the new checkpoint's prefix."""
  prefix = os.path.join(reference_dir('r18_cifar'), 'checkpoint', 'ckpt')
  reader = tf.train.load_checkpoint(prefix)
  root = tf.Module()
  for path, key in checkpoints.object_graph_paths(prefix).items():
    if not keep(path):
      continue
    node = root
    *parents, leaf = path.split('/')
    for part in parents:
      if not hasattr(node, part):
        setattr(node, part, tf.Module())
      node = getattr(node, part)
    setattr(node, leaf, tf.Variable(change(path, reader.get_tensor(key))))
  return tf.train.Checkpoint(model=root.model).write(str(tmp_path / 'ckpt'))


def test_truncated_published_checkpoint_names_the_missing_variables(tmp_path):
  # Without the last block group's last block, the blocks form no ResNet.
  written = _rewrite_published(
      tmp_path, keep=lambda path: '/block_groups/3/layers/1/' not in path)
  with pytest.raises(checkpoints.CheckpointError, match='ResNet depth'):
    simclr.load_model(written)


def test_published_weights_that_do_not_fit_are_listed(tmp_path):
  target = 'block_groups/1/layers/0/conv2d_bn_layers/2/conv2d/kernel'
  written = _rewrite_published(
      tmp_path, change=lambda path, value: value[:, :, :, :100]
      if path.endswith(target) else value)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'wrong shape \(1\).*conv2d_bn_layers/2'):
    simclr.load_model(written)


# ---------------------------------------------------------------------------
# Training checkpoints (model_dir/ckpt-N) in the published and legacy layouts.

_REFERENCE_CKPT = ('checkpoint', 'ckpt')


def _r18_cifar_config():
  """The ModelConfig of ../shared/reference/r18_cifar (its config.json and
  README: global_bn off)."""
  import json
  with open(os.path.join(reference_dir('r18_cifar'), 'config.json')) as f:
    published = json.load(f)
  fields = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'image_size',
            'num_classes', 'proj_head_mode', 'num_proj_layers',
            'proj_out_dim')
  return simclr.ModelConfig(global_bn=False,
                            **{name: published[name] for name in fields})


def _lars_after_one_step(model, weight_decay=1e-6, zero_gradients=False):
  """A LARS optimizer of simclr.optimization (momentum 0.9) after one step on
  `model`, so that its momentum slots exist. Random gradients make the slots
  non-zero; zero gradients without weight decay leave the weights as they
  were."""
  config = optimization.OptimizerConfig(optimizer='lars',
                                        weight_decay=weight_decay)
  optimizer = optimization.build_optimizer(config, 0.1)
  rng = np.random.RandomState(0)
  optimizer.apply_gradients(
      (tf.zeros_like(v) if zero_gradients else
       tf.constant(rng.normal(size=v.shape), v.dtype), v)
      for v in model.trainable_variables)
  return optimizer


def _keys(prefix):
  return {key for key, _ in tf.train.list_variables(prefix)}


def _write_our_model_dir(model_dir, model, **checkpoint_args):
  """A model_dir as training leaves it: model_config.json and ckpt-1."""
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, checkpoints.MODEL_CONFIG_FILE), 'w') as f:
    f.write(model.config.to_json())
  checkpoint = checkpoints.training_checkpoint(model, **checkpoint_args)
  return checkpoint.save(os.path.join(model_dir, 'ckpt'))


def test_training_checkpoint_holds_the_model_variables_under_the_published_keys(
    tmp_path):
  reference = _keys(os.path.join(reference_dir('r18_cifar'), *_REFERENCE_CKPT))
  model = simclr.build_model(_r18_cifar_config())
  optimizer = _lars_after_one_step(model)
  written = checkpoints.training_checkpoint(
      model, optimizer=optimizer, global_step=optimizer.iterations).save(
          str(tmp_path / 'ckpt'))
  ours = {key for key in _keys(written)
          if key.startswith('model/') and '/.OPTIMIZER_SLOT/' not in key}
  theirs = {key for key in reference if key.startswith('model/')}
  assert len(theirs) == 121
  assert ours == theirs


def test_optimizer_slots_are_recorded_at_the_published_variable_paths(tmp_path):
  reference = _keys(os.path.join(reference_dir('r18_cifar'), *_REFERENCE_CKPT))
  # The reference was written without optimizer; were its slot keys there,
  # they would be compared here as the model keys are above.
  assert not [key for key in reference if '/.OPTIMIZER_SLOT/' in key]
  model = simclr.build_model(_r18_cifar_config())
  optimizer = _lars_after_one_step(model)
  written = checkpoints.training_checkpoint(
      model, optimizer=optimizer, global_step=optimizer.iterations).save(
          str(tmp_path / 'ckpt'))
  slot_keys = [key for key in _keys(written) if '/.OPTIMIZER_SLOT/' in key]
  # One momentum slot per trainable variable, keyed
  # <variable path>/.OPTIMIZER_SLOT/optimizer/<slot name>/... .
  assert len(slot_keys) == len(model.trainable_variables)
  variable_keys = {key.split('/.OPTIMIZER_SLOT/')[0] +
                   '/.ATTRIBUTES/VARIABLE_VALUE' for key in slot_keys}
  assert len(variable_keys) == len(slot_keys)
  assert variable_keys <= reference
  assert all('/.OPTIMIZER_SLOT/optimizer/' in key for key in slot_keys)


def test_resuming_a_published_layout_checkpoint_restores_the_momentum(
    tmp_path):
  config = _r18_cifar_config()
  model = simclr.build_model(config)
  optimizer = _lars_after_one_step(model, weight_decay=0.0)
  written = checkpoints.training_checkpoint(
      model, optimizer=optimizer, global_step=optimizer.iterations).save(
          str(tmp_path / 'ckpt'))
  saved = {v.ref(): optimizer.get_slot(v, 'momentum').numpy()
           for v in model.trainable_variables}
  resumed = simclr.build_model(config)
  resumed_optimizer = optimization.build_optimizer(
      optimization.OptimizerConfig(optimizer='lars', weight_decay=0.0), 0.1)
  checkpoints.training_checkpoint(
      resumed, optimizer=resumed_optimizer,
      global_step=resumed_optimizer.iterations).restore(
          written).assert_existing_objects_matched()
  assert int(resumed_optimizer.iterations.numpy()) == 1
  # A zero gradient leaves LARS' classic momentum at 0.9 times its value, so
  # the slots (created at this step) show what was restored into them.
  resumed_optimizer.apply_gradients(
      (tf.zeros_like(v), v) for v in resumed.trainable_variables)
  for old, new in zip(model.trainable_variables, resumed.trainable_variables):
    np.testing.assert_allclose(
        resumed_optimizer.get_slot(new, 'momentum').numpy(),
        0.9 * saved[old.ref()], rtol=1e-6, atol=1e-12)


def test_published_layout_model_dir_loads_with_identical_outputs(tmp_path):
  ref = reference_dir('r18_cifar')
  model = simclr.load_model(os.path.join(ref, *_REFERENCE_CKPT))
  # With slots in the checkpoint, as training writes it; weights unchanged.
  optimizer = _lars_after_one_step(model, weight_decay=0.0,
                                   zero_gradients=True)
  _write_our_model_dir(str(tmp_path), model, optimizer=optimizer,
                       global_step=optimizer.iterations)
  _assert_outputs_match(simclr.load_model(str(tmp_path)), ref)


def test_legacy_layout_model_dir_still_loads_with_identical_outputs(tmp_path):
  ref = reference_dir('r18_cifar')
  model = simclr.load_model(os.path.join(ref, *_REFERENCE_CKPT))
  written = _write_our_model_dir(str(tmp_path), model, layout='legacy',
                                 global_step=tf.Variable(7, dtype=tf.int64))
  assert any(key.startswith('model/resnet/') for key in _keys(written))
  _assert_outputs_match(simclr.load_model(str(tmp_path)), ref)


def test_checkpoint_layout_tells_the_two_layouts_apart(tmp_path):
  model = simclr.build_model(_r18_cifar_config())
  step = tf.Variable(3, dtype=tf.int64)
  published = _write_our_model_dir(str(tmp_path / 'new'), model,
                                   global_step=step)
  legacy = _write_our_model_dir(str(tmp_path / 'old'), model,
                                layout='legacy', global_step=step)
  assert checkpoints.checkpoint_layout(published) == 'published'
  assert checkpoints.checkpoint_layout(legacy) == 'legacy'
  assert checkpoints.checkpoint_layout(str(tmp_path / 'old')) == 'legacy'


def test_published_run_py_checkpoint_has_the_published_layout():
  prefix = os.path.join(reference_dir('r18_cifar'), *_REFERENCE_CKPT)
  assert checkpoints.checkpoint_layout(prefix) == 'published'


def test_checkpoint_layout_without_a_model_is_an_error(tmp_path):
  prefix = tf.train.Checkpoint(step=tf.Variable(1)).write(str(tmp_path / 'x'))
  with pytest.raises(checkpoints.CheckpointError, match='no model'):
    checkpoints.checkpoint_layout(prefix)


def test_published_model_tree_holds_the_models_own_variables():
  model = simclr.build_model(_r18_cifar_config())
  tree = checkpoints.published_model_tree(model)
  # The published basic block's first conv2d_bn_layers entry is its first
  # convolution.
  published = tree.resnet_model.block_groups[0].layers[0].conv2d_bn_layers[0]
  ours = model.resnet.block_groups[0].blocks[0].conv1
  assert published.conv2d.kernel is ours.conv2d.kernel
