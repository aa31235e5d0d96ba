r"""Features of every example of a split, for use outside this project
(scikit-learn, a plot, a retrieval index): one .npz with

  features  float32 [N, d]   the model output --output_key (flattened)
  labels    int32 [N]        -1 where the dataset has no labels
  ids       str [N]          example ids, as label-subset files name them

in the split's order, each example once, with the evaluation preprocessing
(centre crop / resize to --image_size, the model's own by default).

    python tf2/extract_features.py --checkpoint=/tmp/pretrain \
      --dataset=digits --split=test --out=test_features.npz

(installed as `simclr-extract`). The file is written under a temporary name
beside --out and renamed when complete, so a killed run leaves no file that
looks finished. Progress: a log line every 10% of the batches. Bad input:
one line on stderr naming the flag, exit code 2.
"""

import os
import sys
import time

from absl import flags
from absl import logging

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, 'The model: anything '
                    'simclr.load_model reads.')
flags.DEFINE_string('dataset', None, "A TFDS name, 'digits' or "
                    "'folder:/path'.")
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_string('split', 'train', 'Split to extract (TFDS slicing '
                    'allowed).')
flags.DEFINE_string('output_key', 'final_avg_pool', 'Model output to save '
                    '(spatial outputs are flattened).')
flags.DEFINE_integer('image_size', None, 'Side of the model input (default: '
                     'the image_size of the model\'s own config).')
flags.DEFINE_integer('batch_size', 256, 'Images per batch.')
flags.DEFINE_string('out', None, 'The .npz file to write.')


def extract():
  """Writes --out; raises BadInput before any feature is computed."""
  from tf2.cli_checks import BadInput, checked  # pylint: disable=g-import-not-at-top
  from simclr import paths  # pylint: disable=g-import-not-at-top

  for flag in ('checkpoint', 'dataset', 'out'):
    if not getattr(FLAGS, flag):
      raise BadInput(flag, 'required')
  for flag in ('batch_size', 'image_size'):
    value = getattr(FLAGS, flag)
    if value is not None and value < 1:
      raise BadInput(flag, f'{value}: expected >= 1')
  checked('out', paths.check_output_file, FLAGS.out)
  # TensorFlow is imported only once the flags above are known to be good.
  import simclr  # pylint: disable=g-import-not-at-top
  from simclr import data  # pylint: disable=g-import-not-at-top
  from simclr import features  # pylint: disable=g-import-not-at-top
  checked('checkpoint', simclr.checkpoints.resolve_checkpoint,
          FLAGS.checkpoint)
  source = checked('dataset', data.load_source, FLAGS.dataset, FLAGS.data_dir)
  checked('split', source.check_split, FLAGS.split)
  model = checked('checkpoint', simclr.load_model, FLAGS.checkpoint)
  checked('output_key', features.check_output_key, model, FLAGS.output_key)
  config = data.DataConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      image_size=FLAGS.image_size or model.config.image_size,
      eval_batch_size=FLAGS.batch_size)

  start = time.time()
  feature_set = features.extract_features(
      model, config, FLAGS.split, FLAGS.output_key, source=source,
      progress=features.log_progress(f'{FLAGS.dataset} {FLAGS.split}'))
  features.save_features(FLAGS.out, feature_set)
  logging.info('Wrote %s: features %s, %d labeled, in %.1f s', FLAGS.out,
               feature_set.features.shape,
               int((feature_set.labels >= 0).sum()), time.time() - start)


def main(argv):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  try:
    extract()
  except cli_checks.BadInput as e:
    if FLAGS.verbosity >= 1:
      raise
    cli_checks.fail(e)


def run_main():
  """Console-script entry point (simclr-extract)."""
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)


if __name__ == '__main__':
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  '..'))
  run_main()
