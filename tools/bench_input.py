r"""Input-pipeline throughput: augmented pretraining pairs per second at 32x32
and 224x224 on this machine, where the time goes, and how fast the model
consumes pairs, so one can see whether training would starve.

    python tools/bench_input.py                 # both sizes, with the model
    python tools/bench_input.py --sizes=32 --nomodel

Data: at 32, the embedded `digits` (real 32x32 images, prepared into a
temporary data_dir unless --data_dir is given); at 224, a temporary folder of
JPEGs cut at 500x375 (ImageNet's typical size) from scikit-learn's sample
photos, so JPEG decoding is included as in ImageNet training.

Reported per size:
- pipeline pairs/s for DataConfig.batch_augmentation 'none' (every
  augmentation per image in Dataset.map), 'blur' (the default: blur once per
  batch) and 'all' (colour distortion vectorised over the batch too);
- stage costs: read + decode, + crop/flip of two views, + colour, + blur,
  each as pairs/s of a pipeline that stops there;
- the model's consumption (--model): pretraining forward + backward of
  ResNet-18 (CIFAR stem) at 32 and ResNet-50 at 224, in pairs/s.
"""

import os
import sys
import tempfile
import time

from absl import flags
from absl import logging

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

import simclr  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position  before TensorFlow: its CPU kernel choice
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from simclr import data  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from simclr.data import augment  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from tools.bench_utils import photo_folder  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from tools.bench_utils import rate  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list('sizes', ['32', '224'], 'Image sizes to measure.')
flags.DEFINE_integer('batch_size_32', 128, 'Images (pairs) per batch at 32.')
flags.DEFINE_integer('batch_size_224', 32, 'Images (pairs) per batch at 224.')
flags.DEFINE_float('seconds', 5.0, 'Measuring time per pipeline.')
flags.DEFINE_bool('model', True, 'Also measure the model\'s consumption.')
flags.DEFINE_integer('model_steps', 3, 'Timed model steps (after one warm-up).')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir for digits (default: a '
                    'temporary directory).')


def stage_pipelines(inputs, batch_size):
  """Pipelines that stop after each augmentation stage (per image)."""
  config = inputs.config
  size = config.image_size
  kernel = augment.blur_kernel_size(size)
  blur = augment.blur_enabled(size, config.use_blur)
  strength = config.color_jitter_strength

  def source():
    dataset = inputs.source.read(config.train_split, shuffle=True)
    return dataset.map(lambda e: e['image']).repeat()

  def two(fn):
    def views(image, seed):
      first, second = tf.unstack(
          tf.random.experimental.stateless_split(seed, 2))
      return tf.stack([fn(image, first), fn(image, second)])
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    return tf.data.Dataset.zip(source(), seeds).map(
        views, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

  stages = [
      ('read + decode (1 image)', source().batch(
          batch_size, drop_remainder=True) if size <= 32 else
       source().map(tf.shape).batch(batch_size)),
      ('+ crop, resize, flip (2 views)',
       two(lambda x, s: augment.crop_and_flip(x, size, s))),
      ('+ colour jitter, greyscale',
       two(lambda x, s: augment.pretrain_view(x, s, size, strength, False,
                                              kernel))),
  ]
  if blur:
    stages.append(('+ blur (per image)', two(
        lambda x, s: augment.pretrain_view(x, s, size, strength, True,
                                           kernel))))
  return [(name, ds.prefetch(2)) for name, ds in stages]


def model_pairs_per_second(size, batch_size, steps):
  """Pretraining forward + backward (NT-Xent) rate of the model in pairs/s."""
  import simclr  # pylint: disable=g-import-not-at-top
  from simclr import losses  # pylint: disable=g-import-not-at-top
  depth = 18 if size <= 32 else 50
  model = simclr.build_model(simclr.ModelConfig(
      resnet_depth=depth, image_size=size, num_classes=None,
      linear_probe=True))
  images = tf.random.uniform([2 * batch_size, size, size, 3])

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = losses.nt_xent(outputs['proj_head_output'])
    return tape.gradient(loss, model.trainable_variables)

  tf.nest.map_structure(lambda g: g.numpy(), step(images))
  start = time.perf_counter()
  for _ in range(steps):
    gradients = step(images)
  tf.nest.map_structure(lambda g: g.numpy(), gradients)
  return depth, steps * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  temp = tempfile.mkdtemp(prefix='bench_input_')
  print(f'TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; '
        f'measuring {FLAGS.seconds:g} s per pipeline.')
  for size in (int(s) for s in FLAGS.sizes):
    if size <= 32:
      dataset = 'digits'
      batch_size = FLAGS.batch_size_32
    else:
      dataset = photo_folder(os.path.join(temp, 'photos'))
      batch_size = FLAGS.batch_size_224
    config = data.DataConfig(
        dataset=dataset, data_dir=FLAGS.data_dir or os.path.join(temp, 'tfds'),
        image_size=size, train_batch_size=batch_size,
        shuffle_buffer_size=4 * batch_size)
    inputs = data.Inputs(config)
    print(f'\n== {size}x{size}: {inputs.source.name if size > 32 else dataset}'
          f', batch {batch_size} images = {2 * batch_size} views ==')
    print('pretraining pipeline (pairs/s):')
    for mode in data.config.BATCH_AUGMENTATION:
      pipeline = data.Inputs(config.replace(batch_augmentation=mode),
                             source=inputs.source)
      pairs = rate(pipeline.dataset('views'), batch_size, FLAGS.seconds)
      print(f'  batch_augmentation={mode!r:7} {pairs:8.1f}')
    print('stages, per image in Dataset.map (pairs/s; decode: images/s):')
    for name, pipeline in stage_pipelines(inputs, batch_size):
      pairs = rate(pipeline, batch_size, FLAGS.seconds)
      print(f'  {name:34} {pairs:8.1f}  ({1000 / pairs:.2f} ms per pair)')
    if FLAGS.model:
      model_batch = 64 if size <= 32 else 8
      depth, pairs = model_pairs_per_second(size, model_batch,
                                            FLAGS.model_steps)
      print(f'model consumption: ResNet-{depth} forward + backward, '
            f'{model_batch} pairs per step: {pairs:.1f} pairs/s '
            f'({2 * pairs:.1f} views/s)')


if __name__ == '__main__':
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)
