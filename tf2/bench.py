r"""Benchmark: pretraining step throughput, input-pipeline throughput, peak
memory and achieved GFLOP/s against this machine's measured matmul peak.
Writes bench/results.md.

    python tf2/bench.py                  # everything (make bench), ~10 min
    python tf2/bench.py --configs=r18_32 --precisions=float32 --xla=false

Each model setting runs in its own process (so peak memory and the XLA /
mixed-precision state are its own) through the project's real train step
(simclr.tasks.trainer.Trainer with the pretrain task: forward of both views,
NT-Xent, linear head, weight decay, LARS update), on in-memory random images so that the
input pipeline, measured separately, does not limit it. Images/s count both
views, as the published figures in ../shared/SPEC.md section 5 do.
"""

import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', ['r18_32', 'r50_224'],
                  'r18_32: ResNet-18 CIFAR stem, 32x32, batch 128; r50_224: '
                  'ResNet-50, 224x224, batch 16.')
flags.DEFINE_list('precisions', ['float32', 'bfloat16'], 'Precisions.')
flags.DEFINE_list('xla', ['false', 'true'], 'jit_compile settings.')
flags.DEFINE_integer('steps', 0, 'Timed steps per setting (0: about '
                     '--seconds worth).')
flags.DEFINE_float('seconds', 20, 'Approximate timing per setting.')
flags.DEFINE_bool('input', True, 'Also measure the input pipeline.')
flags.DEFINE_string('out', os.path.join(ROOT, 'bench', 'results.md'),
                    'Where to write the results table.')
flags.DEFINE_string('one', None, 'Internal: run one setting '
                    '(config,precision,xla) and print its JSON.')
flags.DEFINE_string('published_tf2_dir', None,
                    'Optional: the tf2/ folder of a google-research/simclr '
                    'checkout; its pretraining step is then timed side by '
                    'side (float32, no XLA) in the same run.')
flags.DEFINE_string('one_published', None, 'Internal: time the published '
                    'code for one config and print its JSON.')

# The published code on 2 cores of this CPU class (SPEC section 5), fp32.
PUBLISHED = {'r18_32': 94.0, 'r50_224': 8.9}
SETTINGS = {
    'r18_32': dict(depth=18, image_size=32, batch=128),
    'r50_224': dict(depth=50, image_size=224, batch=16),
}


def _model_flops_per_view(model, image_size):
  """Forward FLOPs of one image through the model (graph profiler count)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  fn = tf.function(lambda x: model(x, training=False))
  graph = fn.get_concrete_function(
      tf.TensorSpec([1, image_size, image_size, 3], tf.float32)).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  profile = tf.compat.v1.profiler.profile(graph, options=options)
  return profile.total_float_ops


def run_one(config_name, precision, xla):
  """Times the real pretraining step for one setting; returns a dict."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr import optimization  # pylint: disable=g-import-not-at-top
  from simclr.configs import configs_from_values  # pylint: disable=g-import-not-at-top
  from simclr.models.simclr_model import build_model  # pylint: disable=g-import-not-at-top
  from simclr.tasks import runner  # pylint: disable=g-import-not-at-top
  from simclr.tasks.base import TrainingState  # pylint: disable=g-import-not-at-top
  from simclr.tasks.pretrain import PretrainTask  # pylint: disable=g-import-not-at-top
  from simclr.tasks.trainer import Trainer  # pylint: disable=g-import-not-at-top

  setting = SETTINGS[config_name]
  size, batch = setting['image_size'], setting['batch']
  runner.set_precision(precision)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  configs = configs_from_values(dict(
      train_mode='pretrain', resnet_depth=setting['depth'], image_size=size,
      train_batch_size=batch, train_steps=1000, jit_compile=xla))
  task = PretrainTask(configs, num_classes=10)
  with strategy.scope():
    model = build_model(task.model_config())
    lr = optimization.build_learning_rate(configs.optimizer, batch,
                                          1000 * batch, 1000)
    optimizer = optimization.build_optimizer(configs.optimizer, lr)
    state = TrainingState(model=model, optimizer=optimizer)
  images = tf.random.stateless_uniform([2 * batch, size, size, 3], [1, 2])
  labels = tf.random.stateless_uniform([2 * batch], [3, 4], maxval=10,
                                       dtype=tf.int32)
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  dataset = strategy.experimental_distribute_dataset(dataset)
  trainer = Trainer(task, state, configs.optimizer, dataset, strategy,
                    learning_rate=lr, jit_compile=xla, summary_images=0)
  start = time.time()
  trainer.train(tf.constant(1, tf.int32))  # trace + compile + first step
  compile_seconds = time.time() - start
  start = time.time()
  trainer.train(tf.constant(1, tf.int32))
  one_step = time.time() - start
  steps = FLAGS.steps or max(2, int(FLAGS.seconds / max(one_step, 1e-3)))
  start = time.time()
  trainer.train(tf.constant(steps, tf.int32))
  seconds = time.time() - start
  views_per_second = steps * 2 * batch / seconds
  flops = _model_flops_per_view(model, size)
  return dict(
      config=config_name, precision=precision, xla=xla, steps=steps,
      images_per_second=views_per_second,
      # Training ~ 3x the forward FLOPs (forward, two backward products).
      gflops_per_second=3 * flops * views_per_second / 1e9,
      forward_gflops_per_view=flops / 1e9, compile_seconds=compile_seconds,
      peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss /
      1024)


def run_one_published(config_name, tf2_dir):
  """Times the published code's pretraining step (its model, contrastive
  loss, weight decay and LARS, as its run.py's single_step combines them) on
  the same in-memory images. Runs with TF_USE_LEGACY_KERAS=1, as that code
  needs the Keras 2 API."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, tf2_dir)
  import run as published_run  # pylint: disable=g-import-not-at-top,unused-import  (defines its flags)
  import model as published_model  # pylint: disable=g-import-not-at-top
  import objective as published_objective  # pylint: disable=g-import-not-at-top
  setting = SETTINGS[config_name]
  size, batch = setting['image_size'], setting['batch']
  FLAGS(['bench', f'--resnet_depth={setting["depth"]}',
         f'--image_size={size}', f'--train_batch_size={batch}',
         '--train_mode=pretrain', '--use_blur=False', '--global_bn=False'],
        known_only=True)
  model = published_model.Model(10)
  optimizer = published_model.build_optimizer(0.1)
  views = tf.random.stateless_uniform([batch, size, size, 6], [1, 2])
  labels = tf.one_hot(tf.random.stateless_uniform(
      [batch], [3, 4], maxval=10, dtype=tf.int32), 10)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      projections, logits = model(views, training=True)
      loss, _, _ = published_objective.add_contrastive_loss(
          projections, hidden_norm=True, temperature=0.1)
      loss += published_objective.add_supervised_loss(
          tf.concat([labels, labels], 0), logits)
      loss += published_model.add_weight_decay(model)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  step()
  start = time.time()
  step()
  one_step = time.time() - start
  steps = FLAGS.steps or max(2, int(FLAGS.seconds / max(one_step, 1e-3)))
  start = time.time()
  for _ in range(steps):
    step()
  tf.constant(0).numpy()
  seconds = time.time() - start
  return dict(config=config_name, steps=steps,
              images_per_second=steps * 2 * batch / seconds)


def matmul_peak():
  """Best GFLOP/s of a 2048^3 matmul chain, float32 and bfloat16."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  results = {}
  n, reps = 2048, 10
  for dtype in (tf.float32, tf.bfloat16):
    a = tf.random.uniform([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)

    @tf.function
    def chain(x):
      y = x
      for _ in range(reps):
        y = tf.matmul(x, y) * tf.cast(1e-3, dtype)
      return y

    chain(a).numpy()
    best = 0
    for _ in range(3):
      start = time.time()
      chain(a).numpy()
      best = max(best, 2 * n**3 * reps / (time.time() - start) / 1e9)
    results[dtype.name] = best
  return results


def input_throughput(seconds=8.0):
  """Augmented pretraining pairs/s of the project's pipeline at 32 (digits,
  batch 128) and 224 (JPEG photos, batch 16)."""
  from simclr import data  # pylint: disable=g-import-not-at-top
  from tf2 import bench_utils  # pylint: disable=g-import-not-at-top
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    inputs = data.Inputs(data.DataConfig(
        dataset='digits', data_dir=os.path.join(tmp, 'tfds'), image_size=32,
        train_batch_size=128, eval_split='test', use_blur=True))
    out['r18_32'] = bench_utils.rate(inputs.dataset('pretrain'), 128, seconds)
    folder = os.path.join(tmp, 'photos')
    bench_utils.photo_folder(folder)
    inputs = data.Inputs(data.DataConfig(
        dataset='folder:' + folder, image_size=224, train_batch_size=16,
        eval_split='train', use_blur=True))
    out['r50_224'] = bench_utils.rate(inputs.dataset('pretrain'), 16, seconds)
  return out


PRECISIONS = ('float32', 'bfloat16', 'float16')
XLA_VALUES = ('false', 'true')


def check_flags():
  """Raises ValueError naming the flag for bad input, before anything is
  timed (the internal --one / --one_published are checked by their
  caller)."""
  from simclr import paths  # pylint: disable=g-import-not-at-top
  for flag, values, allowed in (('configs', FLAGS.configs, SETTINGS),
                                ('precisions', FLAGS.precisions, PRECISIONS),
                                ('xla', FLAGS.xla, XLA_VALUES)):
    if not values:
      raise ValueError(f'--{flag}: empty; expected some of '
                       f'{",".join(allowed)}')
    for value in values:
      if value not in allowed:
        raise ValueError(f'--{flag}: {value!r} is not one of '
                         f'{",".join(allowed)}')
  if FLAGS.steps < 0:
    raise ValueError(f'--steps={FLAGS.steps}: expected >= 0 (0: about '
                     f'--seconds worth)')
  if not FLAGS.seconds > 0:
    raise ValueError(f'--seconds={FLAGS.seconds}: expected > 0')
  try:
    paths.check_output_file(FLAGS.out, create_directory=True)
  except paths.PathError as e:
    raise ValueError(f'--out: {e}') from None
  if FLAGS.published_tf2_dir:
    try:
      paths.check_input_dir(FLAGS.published_tf2_dir)
    except paths.PathError as e:
      raise ValueError(f'--published_tf2_dir: {e}') from None
    for name in ('run.py', 'model.py', 'objective.py'):
      if not os.path.isfile(os.path.join(FLAGS.published_tf2_dir, name)):
        raise ValueError(
            f'--published_tf2_dir: {FLAGS.published_tf2_dir} has no {name}; '
            f'expected the tf2/ folder of a google-research/simclr checkout')


def main(argv):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    cli_checks.fail(f'unexpected arguments {argv[1:]}: flags are written '
                    f'--name=value')
  if not (FLAGS.one or FLAGS.one_published):
    try:
      check_flags()
    except ValueError as e:
      cli_checks.fail(e)
  if FLAGS.one_published:
    print('RESULT ' + json.dumps(run_one_published(
        FLAGS.one_published, FLAGS.published_tf2_dir)), flush=True)
    return
  if FLAGS.one:
    config_name, precision, xla = FLAGS.one.split(',')
    print('RESULT ' + json.dumps(run_one(config_name, precision,
                                         xla == 'true')), flush=True)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr import cpu  # pylint: disable=g-import-not-at-top
  model_name, cores, cpu_flags = cpu.description()
  print(f'CPU: {model_name}, {cores} cores, flags {cpu_flags}', flush=True)
  peak = matmul_peak()
  print(f'matmul peak: {peak}', flush=True)
  rows = []
  for config_name in FLAGS.configs:
    for precision in FLAGS.precisions:
      for xla in FLAGS.xla:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__),
             f'--one={config_name},{precision},{xla}',
             f'--seconds={FLAGS.seconds}', f'--steps={FLAGS.steps}'],
            capture_output=True, text=True, cwd=ROOT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        lines = [l for l in proc.stdout.splitlines()
                 if l.startswith('RESULT ')]
        if proc.returncode or not lines:
          print(f'{config_name} {precision} xla={xla}: failed\n'
                f'{proc.stderr[-2000:]}', flush=True)
          rows.append(dict(config=config_name, precision=precision,
                           xla=xla == 'true', failed=True))
          continue
        row = json.loads(lines[0][len('RESULT '):])
        rows.append(row)
        print(f'{config_name} {precision} xla={xla}: '
              f'{row["images_per_second"]:.1f} images/s, '
              f'{row["gflops_per_second"]:.0f} GFLOP/s, peak '
              f'{row["peak_memory_mb"]:.0f} MB', flush=True)
  published = {}
  if FLAGS.published_tf2_dir:
    for config_name in FLAGS.configs:
      proc = subprocess.run(
          [sys.executable, os.path.abspath(__file__),
           f'--one_published={config_name}',
           f'--published_tf2_dir={FLAGS.published_tf2_dir}',
           f'--seconds={FLAGS.seconds}', f'--steps={FLAGS.steps}'],
          capture_output=True, text=True, cwd=ROOT,
          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
                   TF_USE_LEGACY_KERAS='1'))
      lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      if proc.returncode or not lines:
        print(f'published {config_name}: failed\n{proc.stderr[-2000:]}')
        continue
      published[config_name] = json.loads(
          lines[0][len('RESULT '):])['images_per_second']
      print(f'published code {config_name} float32: '
            f'{published[config_name]:.1f} images/s', flush=True)
  pipeline = input_throughput() if FLAGS.input else {}
  if pipeline:
    print(f'input pipeline pairs/s: {pipeline}', flush=True)
  write_results(rows, peak, pipeline, model_name, cores, cpu_flags,
                published)
  del tf


def write_results(rows, peak, pipeline, model_name, cores, cpu_flags,
                  published):
  lines = [
      '# Benchmark results', '',
      f'Measured {datetime.date.today().isoformat()} by `python tf2/bench.py` '
      f'on {model_name}, {cores} cores (CPU flags: {", ".join(cpu_flags)}); '
      f'TensorFlow {_tf_version()}.', '',
      f'Matmul peak measured in the same run: {peak["float32"]:.0f} GFLOP/s '
      f'float32, {peak["bfloat16"]:.0f} GFLOP/s bfloat16.', '',
      'Pretraining step (forward of both views, NT-Xent, linear head, LARS '
      'update); images/s count both views. "vs published" divides by the '
      'published code\'s float32 step ' + (
          'timed in this same run (--published_tf2_dir).' if published else
          'as quoted for 2 cores of this CPU class in SPEC section 5 (94 and '
          '8.9 images/s; not timed in this run).'),
      '',
      '| setting | precision | XLA | images/s | vs published fp32 | GFLOP/s | '
      '% of matmul peak | peak memory (MB) | input pipeline (images/s) |',
      '|---|---|---|---|---|---|---|---|---|']
  for config_name, value in published.items():
    label = {'r18_32': 'ResNet-18 CIFAR 32x32, batch 128',
             'r50_224': 'ResNet-50 224x224, batch 16'}[config_name]
    lines.append(f'| {label}, **published code** | float32 | off | '
                 f'{value:.1f} | 1.00x | | | | |')
  reference = dict(PUBLISHED, **published)
  for row in rows:
    label = {'r18_32': 'ResNet-18 CIFAR 32x32, batch 128',
             'r50_224': 'ResNet-50 224x224, batch 16'}[row['config']]
    if row.get('failed'):
      lines.append(f'| {label} | {row["precision"]} | {row["xla"]} | failed '
                   f'| | | | | |')
      continue
    peak_value = peak['bfloat16' if row['precision'] == 'bfloat16' else
                      'float32']
    pipe = pipeline.get(row['config'])
    pipe_text = f'{2 * pipe:.0f}' if pipe else '-'
    lines.append(
        f'| {label} | {row["precision"]} | {"on" if row["xla"] else "off"} | '
        f'{row["images_per_second"]:.1f} | '
        f'{row["images_per_second"] / reference[row["config"]]:.2f}x | '
        f'{row["gflops_per_second"]:.0f} | '
        f'{100 * row["gflops_per_second"] / peak_value:.0f}% | '
        f'{row["peak_memory_mb"]:.0f} | {pipe_text} |')
  os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print(f'Wrote {FLAGS.out}')


def _tf_version():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.__version__


if __name__ == '__main__':
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=cli_checks.parse_flags)
