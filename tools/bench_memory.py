r"""Benchmark: what SimCLRv2's memory costs per pretraining step, for each
--memory_mode, against pretraining without memory, on the real train step
(simclr.tasks.trainer.Trainer with the pretrain task) and in-memory images.
All settings are timed in this one process, one after the other, so their
figures compare; the CPU flags are printed with them.

    python tools/bench_memory.py                       # ResNet-18, 32x32
    python tools/bench_memory.py --depth=50 --image_size=224 --batch=16
"""

import os
import sys
import time

from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_integer('depth', 18, 'ResNet depth.')
flags.DEFINE_float('width', 1.0, 'Width multiplier.')
flags.DEFINE_integer('image_size', 32, 'Image side.')
flags.DEFINE_integer('batch', 128, 'Images per step (2x views).')
flags.DEFINE_integer('memory_steps', 16, 'Steps of keys the queue holds '
                     '(memory_size = 2 x batch x memory_steps).')
flags.DEFINE_integer('steps', 10, 'Timed steps per setting.')


def time_setting(memory_size, memory_mode):
  """Seconds per step (after one traced step) of one setting."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr.configs import configs_from_values  # pylint: disable=g-import-not-at-top
  from simclr.data import pipeline  # pylint: disable=g-import-not-at-top
  from simclr.tasks.build import build_trainer  # pylint: disable=g-import-not-at-top
  from simclr.tasks.build import build_training_state  # pylint: disable=g-import-not-at-top
  from simclr.tasks.pretrain import PretrainTask  # pylint: disable=g-import-not-at-top

  batch, size = FLAGS.batch, FLAGS.image_size
  configs = configs_from_values(dict(
      train_mode='pretrain', resnet_depth=FLAGS.depth,
      width_multiplier=FLAGS.width, image_size=size, train_batch_size=batch,
      train_steps=1000, memory_size=memory_size, memory_mode=memory_mode,
      global_bn=False))
  task = PretrainTask(configs, num_classes=10)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  state = build_training_state(configs, task, strategy,
                               num_examples=1000 * batch, train_steps=1000)
  images = tf.random.stateless_uniform([2 * batch, size, size, 3], [1, 2])
  labels = tf.zeros([2 * batch], tf.int32)
  dataset = pipeline.distribute(
      strategy, tf.data.Dataset.from_tensors((images, labels)).repeat())
  trainer = build_trainer(configs, task, state, dataset, strategy,
                          summary_images=0)
  trainer.train(tf.constant(1, tf.int32))
  start = time.time()
  trainer.train(tf.constant(FLAGS.steps, tf.int32))
  return (time.time() - start) / FLAGS.steps


def main(argv):
  del argv
  from simclr import cpu  # pylint: disable=g-import-not-at-top
  model_name, cores, cpu_flags = cpu.description()
  memory_size = 2 * FLAGS.batch * FLAGS.memory_steps
  print(f'CPU: {model_name}, {cores} cores, flags: {cpu_flags}')
  print(f'ResNet-{FLAGS.depth} {FLAGS.width:g}x, {FLAGS.image_size}x'
        f'{FLAGS.image_size}, batch {FLAGS.batch}, memory_size '
        f'{memory_size}, {FLAGS.steps} steps each')
  baseline = None
  for memory, mode in ((0, 'negatives'), (memory_size, 'negatives'),
                       (memory_size, 'moco')):
    seconds = time_setting(memory, mode)
    baseline = baseline or seconds
    name = 'no memory' if not memory else f'--memory_mode={mode}'
    print(f'{name:24s} {seconds * 1000:8.1f} ms/step  '
          f'{2 * FLAGS.batch / seconds:7.1f} views/s  '
          f'{seconds / baseline:5.2f}x the step without memory', flush=True)


if __name__ == '__main__':
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)
