"""ONNX export (simclr/onnx_export.py, tf2/export_onnx.py): onnxruntime, an
implementation independent of TensorFlow, must reproduce the tf_keras model's
outputs, and the published code's own outputs for a published export."""

import os
import re

import numpy as np
import onnx
import pytest
import tf_keras

import simclr
from simclr import onnx_export
from simclr import paths
from tests.conftest import reference_dir

import script_runner  # tests/script_runner.py

REPO = os.path.join(os.path.dirname(__file__), '..')
SCRIPT = os.path.join(REPO, 'tf2', 'export_onnx.py')
# float32 round-off through a ResNet: measured 2e-7..9e-7 (docs/models.md);
# a wrong padding, stem or batch-norm fold gives differences of order 1.
TOLERANCE = 1e-5


def randomise_batch_norm(model, seed=0):
  """Non-trivial BN statistics and affine weights (gamma starts at 0 in the
  last BN of every block, which would hide the residual branch), so that a
  wrong fold or a skipped layer shows in the outputs."""
  rng = np.random.RandomState(seed)
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      shape = layer.moving_mean.shape
      layer.moving_mean.assign(rng.normal(0, 0.2, shape))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))
      if layer.gamma is not None:
        layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
      if layer.beta is not None:
        layer.beta.assign(rng.normal(0, 0.2, shape))
  return model


def random_images(batch, size, seed=1):
  return np.random.RandomState(seed).uniform(
      size=(batch, size, size, 3)).astype(np.float32)


def test_relative_max_difference_is_the_largest_error_over_the_largest_value():
  expected = np.array([[1.0, -4.0], [2.0, 0.5]])
  actual = np.array([[1.1, -4.0], [2.0, 0.3]])
  assert onnx_export.relative_max_difference(actual, expected) == (
      pytest.approx(0.2 / 4.0))


def test_resnet18_cifar_stem_matches_onnxruntime_at_any_batch(tmp_path):
  model = randomise_batch_norm(simclr.build_model(simclr.ModelConfig(
      resnet_depth=18, width_multiplier=0.5, image_size=32, num_classes=10)))
  path = str(tmp_path / 'r18.onnx')
  names = simclr.export_onnx(model, path)

  assert set(names) == set(simclr.OUTPUT_KEYS)
  assert os.listdir(tmp_path) == ['r18.onnx']  # nothing half-written left
  graph = onnx.load(path).graph
  assert [i.name for i in graph.input] == ['images']
  assert [d.dim_param or d.dim_value
          for d in graph.input[0].type.tensor_type.shape.dim] == [
              'batch', 32, 32, 3]
  for batch in (1, 5):
    errors = onnx_export.parity(model, path, random_images(batch, 32))
    assert set(errors) == set(simclr.OUTPUT_KEYS)
    assert max(errors.values()) < TOLERANCE, errors
  outputs = onnx_export.onnx_outputs(path, random_images(5, 32))
  assert outputs['block_group4'].shape == (5, 4, 4, 256)
  assert outputs['logits_sup'].shape == (5, 10)


def test_resnet50_with_selective_kernels_and_se_matches_onnxruntime(tmp_path):
  model = randomise_batch_norm(simclr.build_model(simclr.ModelConfig(
      resnet_depth=50, width_multiplier=0.25, sk_ratio=0.0625, se_ratio=0.25,
      image_size=64, num_classes=7)))
  path = str(tmp_path / 'r50_sk.onnx')
  simclr.export_onnx(model, path, output_keys=[
      'block_group4', 'final_avg_pool', 'proj_head_output', 'logits_sup'])

  errors = onnx_export.parity(model, path, random_images(3, 64))
  assert sorted(errors) == ['block_group4', 'final_avg_pool', 'logits_sup',
                            'proj_head_output']
  assert max(errors.values()) < TOLERANCE, errors


def test_weights_in_an_external_data_file_give_the_same_outputs(tmp_path):
  model = randomise_batch_norm(simclr.build_model(simclr.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, image_size=16,
      proj_head_mode='linear', num_classes=0)))
  path = str(tmp_path / 'small.onnx')
  names = simclr.export_onnx(model, path, external_data=True)

  assert 'logits_sup' not in names
  assert sorted(os.listdir(tmp_path)) == ['small.onnx', 'small.onnx.data']
  # The weights are in the side file: the graph file alone is small.
  assert os.path.getsize(path) < os.path.getsize(path + '.data') / 10
  errors = onnx_export.parity(model, path, random_images(2, 16))
  assert max(errors.values()) < TOLERANCE, errors


def test_unknown_output_key_and_unwritable_path_are_refused(tmp_path):
  model = simclr.build_model(simclr.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, image_size=16, num_classes=0))
  with pytest.raises(onnx_export.OnnxExportError, match='logits_sup'):
    simclr.export_onnx(model, str(tmp_path / 'm.onnx'),
                       output_keys=['logits_sup'])
  (tmp_path / 'file').write_text('x')
  with pytest.raises(paths.PathError, match='not a directory'):
    simclr.export_onnx(model, str(tmp_path / 'file' / 'm.onnx'))
  assert not os.path.exists(tmp_path / 'm.onnx')


def run_script(*flags):
  return script_runner.shared().run(SCRIPT, list(flags), cwd=REPO,
                                    timeout=300)


def test_published_export_converts_and_reproduces_the_published_outputs(
    tmp_path):
  """The command on a SavedModel written by the published code: onnxruntime
  must give what the published model itself gave (io.npz)."""
  reference = reference_dir('r18_cifar')
  path = str(tmp_path / 'published.onnx')
  result = run_script(f'--checkpoint={reference}/saved_model', f'--out={path}')
  assert result.returncode == 0, result.stderr[-2000:]
  # The command's own parity report, one line per output.
  report = [line.split() for line in result.stdout.splitlines()
            if line.startswith('  ')]
  assert sorted(name for name, _ in report) == sorted(simclr.OUTPUT_KEYS)
  assert all(float(value) < TOLERANCE for _, value in report), result.stdout

  published = np.load(os.path.join(reference, 'io.npz'))
  outputs = onnx_export.onnx_outputs(path, published['inputs'])
  for key in simclr.OUTPUT_KEYS:
    error = onnx_export.relative_max_difference(outputs[key], published[key])
    assert error < TOLERANCE, (key, error)


@pytest.mark.parametrize('flags, message', [
    (['--checkpoint={tmp}/not_a_model', '--out={tmp}/m.onnx'],
     r'^error: --checkpoint: .*not_a_model: is a file \(5 bytes\), not a '
     r'SavedModel directory'),
    (['--checkpoint={tmp}', '--out={tmp}/not_a_model/m.onnx'],
     r'^error: --out: .*not_a_model is a file \(5 bytes\), not a directory'),
    (['--checkpoint={tmp}', '--out={tmp}'],
     r'^error: --out: .*: is a directory; expected a file name'),
    (['--out={tmp}/m.onnx'], r'^error: --checkpoint: required'),
    (['--checkpoint={tmp}', '--out={tmp}/m.onnx', '--image_size=4'],
     r'^error: --image_size: 4: expected >= 8'),
])
def test_bad_input_is_refused_with_one_line(tmp_path, flags, message):
  (tmp_path / 'not_a_model').write_text('hello')
  result = run_script(*[flag.format(tmp=tmp_path) for flag in flags])
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('error:')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert re.search(message, errors[0]), errors[0]
  assert not os.path.exists(tmp_path / 'm.onnx')
