"""Loading published-format models (../shared/reference exports) and refusing
what does not fit."""

import os

import numpy as np
import pytest
import tensorflow as tf

import simclr
from simclr import checkpoints
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
