r"""Weighted k-NN accuracy of a model's features (simclr/knn.py): the train
split is the bank, the eval split the queries, both with the evaluation
preprocessing (centre crop / resize, each example once).

    python tf2/knn_eval.py --checkpoint=/tmp/pretrain --dataset=digits \
      --eval_split=test --out=knn.json

--checkpoint is anything simclr.load_model reads (our model_dir, checkpoint
or SavedModel; a published-format SavedModel or run.py checkpoint). Prints
the result as JSON and, with --out, writes it there (aside, then renamed).
Bad input: one line on stderr naming the flag, exit code 2.
"""

import json
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
flags.DEFINE_string('train_split', 'train', 'Split of the bank (labeled).')
flags.DEFINE_string('eval_split', 'validation', 'Split of the queries.')
flags.DEFINE_string('output_key', 'final_avg_pool', 'Model output whose '
                    'features are compared (spatial outputs are flattened).')
flags.DEFINE_integer('k', 200, 'Neighbours per query.')
flags.DEFINE_float('temperature', 0.1, 'Each neighbour votes '
                   'exp(cosine similarity / temperature).')
flags.DEFINE_integer('image_size', None, 'Side of the model input (default: '
                     'the image_size of the model\'s own config).')
flags.DEFINE_integer('batch_size', 256, 'Images per batch of the feature '
                     'pass.')
flags.DEFINE_string('out', None, 'Optional JSON file for the result.')


def knn_eval():
  """The result dict; raises BadInput before any feature is computed."""
  from tf2.cli_checks import BadInput, checked  # pylint: disable=g-import-not-at-top
  from simclr import paths  # pylint: disable=g-import-not-at-top

  for flag in ('checkpoint', 'dataset'):
    if not getattr(FLAGS, flag):
      raise BadInput(flag, 'required')
  for flag in ('batch_size', 'image_size'):
    value = getattr(FLAGS, flag)
    if value is not None and value < 1:
      raise BadInput(flag, f'{value}: expected >= 1')
  if FLAGS.out:
    checked('out', paths.check_output_file, FLAGS.out)
  if not 0 < FLAGS.temperature < float('inf'):
    raise BadInput('temperature', f'{FLAGS.temperature}: expected > 0')
  if FLAGS.k < 1:
    raise BadInput('k', f'{FLAGS.k}: expected >= 1')
  # TensorFlow is imported only once the flags above are known to be good.
  import simclr  # pylint: disable=g-import-not-at-top
  from simclr import data  # pylint: disable=g-import-not-at-top
  from simclr import features  # pylint: disable=g-import-not-at-top
  from simclr import knn  # pylint: disable=g-import-not-at-top
  checked('checkpoint', simclr.checkpoints.resolve_checkpoint,
          FLAGS.checkpoint)
  source = checked('dataset', data.load_source, FLAGS.dataset, FLAGS.data_dir)
  if not source.num_classes:
    raise BadInput('dataset', f'{FLAGS.dataset} has no labels: the k-NN bank '
                              f'needs them')
  num_bank = checked('train_split', source.check_split, FLAGS.train_split)
  checked('eval_split', source.check_split, FLAGS.eval_split)
  if FLAGS.k > num_bank:
    raise BadInput('k', f'{FLAGS.k}: expected 1 <= k <= {num_bank}, the '
                        f'examples of --train_split={FLAGS.train_split} (the '
                        f'bank)')
  model = checked('checkpoint', simclr.load_model, FLAGS.checkpoint)
  checked('output_key', features.check_output_key, model, FLAGS.output_key)
  config = data.DataConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      train_split=FLAGS.train_split, eval_split=FLAGS.eval_split,
      image_size=FLAGS.image_size or model.config.image_size,
      eval_batch_size=FLAGS.batch_size)

  start = time.time()
  result = knn.evaluate_model(
      model, config, output_key=FLAGS.output_key, k=FLAGS.k,
      temperature=FLAGS.temperature, source=source, log_progress=True)
  return dict(result.as_dict(), checkpoint=FLAGS.checkpoint,
              dataset=FLAGS.dataset, train_split=FLAGS.train_split,
              eval_split=FLAGS.eval_split, output_key=FLAGS.output_key,
              image_size=config.image_size,
              seconds=round(time.time() - start, 2))


def main(argv):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  try:
    result = knn_eval()
  except cli_checks.BadInput as e:
    if FLAGS.verbosity >= 1:
      raise
    cli_checks.fail(e)
  text = json.dumps(result, indent=1, sort_keys=True)
  print(text)
  if FLAGS.out:
    from simclr import features  # pylint: disable=g-import-not-at-top
    features.write_atomically(FLAGS.out, lambda f: f.write(text + '\n'),
                              mode='w')
    logging.info('Wrote %s', FLAGS.out)


def run_main():
  """Console-script entry point."""
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)


if __name__ == '__main__':
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  '..'))
  run_main()
