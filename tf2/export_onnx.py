r"""Exports a model for use outside this project: ONNX (onnxruntime, other
frameworks through ONNX converters) or a SavedModel of this project's format.

    python tf2/export_onnx.py --checkpoint=/tmp/pretrain --out=model.onnx

(installed as `simclr-export`). --checkpoint is anything simclr.load_model
reads: our model_dir, checkpoint or SavedModel, or a published-format
SavedModel or run.py checkpoint. The ONNX file takes `images`, float32
[batch, S, S, 3] in [0, 1] (S = --image_size, default the model's), and
returns the published output keys (`final_avg_pool`, `proj_head_output`,
`logits_sup`, ...) in inference mode. After writing it, the command runs
onnxruntime and the tf_keras model on --parity_images random images and
prints, per output, the relative max difference max|onnx - tf| / max|tf|;
above --max_relative_difference it fails with exit code 1.

Bad input (a --checkpoint that is not a model, an --out that cannot be
written, an unknown --output_keys entry): one line on stderr starting
`error:`, exit code 2, before any conversion.
"""

import os
import sys
import time

from absl import flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, 'The model: anything '
                    'simclr.load_model reads.')
flags.DEFINE_string('out', None, 'The file to write (--format=onnx; with '
                    'large models also <out>.data), or the SavedModel '
                    'directory (--format=saved_model).')
flags.DEFINE_enum('format', 'onnx', ['onnx', 'saved_model'],
                  'onnx, or saved_model (this project\'s SavedModel: '
                  'published signature, TF-Hub, serving).')
flags.DEFINE_integer('image_size', None, 'ONNX input height and width '
                     '(default: the image_size of the model\'s config).')
flags.DEFINE_list('output_keys', None, 'ONNX outputs (default: every '
                  'published output key the model has).')
flags.DEFINE_integer('opset', 17, 'ONNX opset.')
flags.DEFINE_integer('parity_images', 4, 'Random images on which onnxruntime '
                     'is compared with the tf_keras model (0: no check).')
flags.DEFINE_float('max_relative_difference', 1e-4, 'Largest relative max '
                   'difference accepted in the parity check.')

EXIT_PARITY_FAILED = 1


def export() -> bool:
  """Writes --out; returns whether the parity check passed (or was off).
  Raises BadInput before any conversion."""
  from tf2.cli_checks import BadInput, checked  # pylint: disable=g-import-not-at-top
  from simclr import paths  # pylint: disable=g-import-not-at-top

  for flag in ('checkpoint', 'out'):
    if not getattr(FLAGS, flag):
      raise BadInput(flag, 'required')
  if FLAGS.image_size is not None and FLAGS.image_size < 8:
    raise BadInput('image_size', f'{FLAGS.image_size}: expected >= 8')
  if FLAGS.parity_images < 0:
    raise BadInput('parity_images', f'{FLAGS.parity_images}: expected >= 0')
  if FLAGS.format == 'onnx':
    checked('out', paths.check_output_file, FLAGS.out)
  else:
    checked('out', paths.check_output_dir,
            os.path.dirname(os.path.abspath(FLAGS.out.rstrip('/'))))
  # TensorFlow is imported only once the flags above are known to be good.
  import numpy as np  # pylint: disable=g-import-not-at-top
  import simclr  # pylint: disable=g-import-not-at-top
  from simclr import onnx_export  # pylint: disable=g-import-not-at-top
  checked('checkpoint', simclr.checkpoints.resolve_checkpoint,
          FLAGS.checkpoint)
  model = checked('checkpoint', simclr.load_model, FLAGS.checkpoint)

  start = time.time()
  if FLAGS.format == 'saved_model':
    simclr.export_saved_model(model, FLAGS.out)
    print(f'wrote {FLAGS.out} in {time.time() - start:.1f} s')
    return True
  checked('output_keys', onnx_export.check_output_keys, model,
          FLAGS.output_keys)
  import logging as python_logging  # pylint: disable=g-import-not-at-top
  python_logging.getLogger('tf2onnx').setLevel(python_logging.WARNING)
  size = FLAGS.image_size or model.config.image_size
  names = onnx_export.export_onnx(model, FLAGS.out, image_size=size,
                                  output_keys=FLAGS.output_keys,
                                  opset=FLAGS.opset)
  megabytes = sum(os.path.getsize(p) for p in (FLAGS.out, FLAGS.out + '.data')
                  if os.path.exists(p)) / 1e6
  print(f'wrote {FLAGS.out} ({megabytes:.1f} MB) in {time.time() - start:.1f}'
        f' s: input images float32 [batch, {size}, {size}, 3] in [0, 1]; '
        f'outputs {", ".join(names)}')
  if not FLAGS.parity_images:
    return True
  images = np.random.RandomState(0).uniform(
      size=(FLAGS.parity_images, size, size, 3)).astype(np.float32)
  differences = onnx_export.parity(model, FLAGS.out, images)
  print(f'parity on {FLAGS.parity_images} random images, relative max '
        f'difference max|onnx - tf| / max|tf| per output:')
  for name, difference in differences.items():
    print(f'  {name:18s} {difference:.2e}')
  worst = max(differences, key=differences.get)
  if differences[worst] > FLAGS.max_relative_difference:
    print(f'error: {worst} differs by {differences[worst]:.2e} relative, '
          f'above --max_relative_difference={FLAGS.max_relative_difference}',
          file=sys.stderr)
    return False
  return True


def main(argv):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  try:
    passed = export()
  except cli_checks.BadInput as e:
    if FLAGS.verbosity >= 1:
      raise
    cli_checks.fail(e)
  if not passed:
    sys.exit(EXIT_PARITY_FAILED)


def run_main():
  """Console-script entry point (simclr-export)."""
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)


if __name__ == '__main__':
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  '..'))
  run_main()
