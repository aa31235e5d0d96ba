r"""Benchmark: pretraining step throughput, input-pipeline throughput, peak
memory and achieved GFLOP/s against this machine's measured matmul peak.
Writes bench/results.md.

    python tools/bench.py                  # everything (make bench), ~20 min
    python tools/bench.py --configs=r18_32 --precisions=float32 --xla=false

Each model setting runs in its own process (so peak memory and the XLA /
mixed-precision state are its own) through the project's real train step
(simclr.tasks.trainer.Trainer with the pretrain task: forward of both views,
NT-Xent, linear head, weight decay, LARS update), on in-memory random images so that the
input pipeline, measured separately, does not limit it. Images/s count both
views, as the published code's throughput figures do. The
float32 XLA-off setting runs --repeats times (alternating with the published
step when --published_tf2_dir is given) and the table gives the median.
"""

import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

from tools import experiment  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', ['r18_32', 'r50_224', 'demo_16'],
                  'r18_32: ResNet-18 CIFAR stem, 32x32, batch 128; r50_224: '
                  'ResNet-50, 224x224, batch 16; demo_16: the pretraining '
                  'stage of make demo (ResNet-18 0.25x, 16x16, batch 128, '
                  'its LARS learning rate and temperature; the published '
                  'code has no fractional widths); fashion (not by '
                  'default): the Fashion-MNIST study\'s pretraining, its '
                  'input row timed when Debian\'s files are there.')
flags.DEFINE_list('precisions', ['float32', 'bfloat16'], 'Precisions.')
flags.DEFINE_list('xla', ['false', 'true'], 'jit_compile settings.')
flags.DEFINE_integer('steps', 0, 'Timed steps per setting (0: about '
                     '--seconds worth).')
flags.DEFINE_float('seconds', 20, 'Approximate timing per setting.')
flags.DEFINE_integer('repeats', 3, 'Runs of each float32 XLA-off setting '
                     '(each in a fresh process, alternating with the '
                     'published step when --published_tf2_dir is given); '
                     'the table gives their median and range.')
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
    # The demo's pretraining stage: tools/experiment.py's TEACHER, IMAGE_SIZE
    # and PRETRAIN's step settings.
    'demo_16': dict(
        depth=experiment.TEACHER['resnet_depth'],
        width=experiment.TEACHER['width_multiplier'],
        image_size=experiment.IMAGE_SIZE,
        batch=experiment.PRETRAIN['train_batch_size'],
        flags={k: experiment.PRETRAIN[k] for k in (
            'learning_rate', 'learning_rate_scaling', 'weight_decay',
            'temperature')}),
    # The Fashion-MNIST study's pretraining (experiment.FASHION_MNIST).
    'fashion': dict(
        depth=experiment.FASHION_MNIST.teacher['resnet_depth'],
        width=experiment.FASHION_MNIST.teacher['width_multiplier'],
        image_size=experiment.FASHION_MNIST.image_size,
        batch=experiment.FASHION_MNIST.pretrain['train_batch_size'],
        flags={k: experiment.FASHION_MNIST.pretrain[k] for k in (
            'learning_rate', 'learning_rate_scaling', 'weight_decay',
            'temperature')}),
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


def build_step(config_name, precision, xla):
  """The project's real pretraining step for one setting, on in-memory
  random images. Returns (train, model): train(n) runs n steps and returns
  when they are done."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr.configs import configs_from_values  # pylint: disable=g-import-not-at-top
  from simclr.data import pipeline  # pylint: disable=g-import-not-at-top
  from simclr.tasks import runner  # pylint: disable=g-import-not-at-top
  from simclr.tasks.build import build_trainer  # pylint: disable=g-import-not-at-top
  from simclr.tasks.build import build_training_state  # pylint: disable=g-import-not-at-top
  from simclr.tasks.pretrain import PretrainTask  # pylint: disable=g-import-not-at-top

  setting = SETTINGS[config_name]
  size, batch = setting['image_size'], setting['batch']
  runner.set_precision(precision)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  configs = configs_from_values(dict(
      train_mode='pretrain', resnet_depth=setting['depth'], image_size=size,
      width_multiplier=setting.get('width', 1.0), train_batch_size=batch,
      train_steps=1000, jit_compile=xla, precision=precision,
      **setting.get('flags', {})))
  task = PretrainTask(configs, num_classes=10)
  # The state and trainer a run builds (float16: with loss scaling).
  state = build_training_state(configs, task, strategy,
                               num_examples=1000 * batch, train_steps=1000)
  model = state.model
  images = tf.random.stateless_uniform([2 * batch, size, size, 3], [1, 2])
  labels = tf.random.stateless_uniform([2 * batch], [3, 4], maxval=10,
                                       dtype=tf.int32)
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  # Read as training reads it (on one CPU: not through tf.distribute).
  dataset = pipeline.distribute(strategy, dataset)
  trainer = build_trainer(configs, task, state, dataset, strategy,
                          summary_images=0)
  # Trainer.train returns the loop's metrics as numbers: the steps are done.
  return lambda steps: trainer.train(tf.constant(steps, tf.int32)), model


def build_published_step(config_name, tf2_dir):
  """The published code's pretraining step (its model, contrastive loss,
  weight decay and LARS, as its run.py's single_step combines them) on the
  same in-memory images; needs TF_USE_LEGACY_KERAS=1 (that code uses the
  Keras 2 API). Returns train(n), as build_step does."""
  import importlib  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, tf2_dir)
  importlib.import_module('run')  # Defines the FLAGS its model.py reads.
  published_model = importlib.import_module('model')
  published_objective = importlib.import_module('objective')
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

  def train(steps):
    for _ in range(steps):
      step()
    tf.constant(0).numpy()  # Waits for the queued steps.
  return train


def _time(train):
  """(seconds of the first call: tracing + first step, steps timed, their
  seconds): about --seconds worth after one more untimed step."""
  start = time.time()
  train(1)
  compile_seconds = time.time() - start
  start = time.time()
  train(1)
  one_step = time.time() - start
  steps = FLAGS.steps or max(2, int(FLAGS.seconds / max(one_step, 1e-3)))
  start = time.time()
  train(steps)
  return compile_seconds, steps, time.time() - start


def run_one(config_name, precision, xla):
  """Times the real pretraining step for one setting; returns a dict."""
  train, model = build_step(config_name, precision, xla)
  compile_seconds, steps, seconds = _time(train)
  setting = SETTINGS[config_name]
  views_per_second = steps * 2 * setting['batch'] / seconds
  flops = _model_flops_per_view(model, setting['image_size'])
  return dict(
      config=config_name, precision=precision, xla=xla, steps=steps,
      images_per_second=views_per_second,
      # Training ~ 3x the forward FLOPs (forward, two backward products).
      gflops_per_second=3 * flops * views_per_second / 1e9,
      forward_gflops_per_view=flops / 1e9, compile_seconds=compile_seconds,
      peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss /
      1024)


def run_one_published(config_name, tf2_dir):
  """Times the published step (build_published_step); returns a dict."""
  _, steps, seconds = _time(build_published_step(config_name, tf2_dir))
  return dict(config=config_name, steps=steps, images_per_second=steps * 2 *
              SETTINGS[config_name]['batch'] / seconds)


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
  batch 128), at the demo's 16 and augmentation, and at 224 (JPEG photos,
  batch 16)."""
  from simclr import data  # pylint: disable=g-import-not-at-top
  from tools import bench_utils  # pylint: disable=g-import-not-at-top
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    inputs = data.Inputs(data.DataConfig(
        dataset='digits', data_dir=os.path.join(tmp, 'tfds'), image_size=32,
        train_batch_size=128, eval_split='test', use_blur=True))
    out['r18_32'] = bench_utils.rate(inputs.dataset('views'), 128, seconds)
    # The demo's pipeline (tools/experiment.py's IMAGE_SIZE and AUGMENT).
    inputs = data.Inputs(data.DataConfig(
        dataset='digits', data_dir=os.path.join(tmp, 'tfds'),
        image_size=experiment.IMAGE_SIZE, train_batch_size=128,
        eval_split='test', **experiment.AUGMENT))
    out['demo_16'] = bench_utils.rate(inputs.dataset('views'), 128, seconds)
    # The Fashion-MNIST study's pipeline, when Debian's files are here
    # (prepared into the temporary data_dir first: about 30 s).
    from simclr.data import fashion_mnist  # pylint: disable=g-import-not-at-top
    if not fashion_mnist.missing_files(fashion_mnist.files_dir()):
      recipe = experiment.FASHION_MNIST
      inputs = data.Inputs(data.DataConfig(
          dataset='fashion_mnist', data_dir=os.path.join(tmp, 'tfds'),
          image_size=recipe.image_size,
          train_batch_size=recipe.pretrain['train_batch_size'],
          eval_split='test', **recipe.augment))
      out['fashion'] = bench_utils.rate(inputs.dataset('views'),
                                        recipe.pretrain['train_batch_size'],
                                        seconds)
    folder = os.path.join(tmp, 'photos')
    bench_utils.photo_folder(folder)
    inputs = data.Inputs(data.DataConfig(
        dataset='folder:' + folder, image_size=224, train_batch_size=16,
        eval_split='train', use_blur=True))
    out['r50_224'] = bench_utils.rate(inputs.dataset('views'), 16, seconds)
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
  if FLAGS.repeats < 1:
    raise ValueError(f'--repeats={FLAGS.repeats}: expected >= 1')
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
  # The float32 XLA-off step of each config is timed FLAGS.repeats times,
  # alternating with the published step when it is timed too, so that a
  # drift in the machine's speed (1.5x within an hour has been seen on
  # shared machines) reaches both sides of each pair alike.
  rows, published = [], {}
  for config_name in FLAGS.configs:
    for precision in FLAGS.precisions:
      for xla in FLAGS.xla:
        if precision == 'float32' and xla == 'false':
          row, published[config_name] = _alternating(config_name, ours=True)
        else:
          row = _median_row(
              [_child(f'--one={config_name},{precision},{xla}')])
        rows.append(row or dict(config=config_name, precision=precision,
                                xla=xla == 'true', failed=True))
    if FLAGS.published_tf2_dir and config_name not in published:
      _, published[config_name] = _alternating(config_name, ours=False)
  pipeline = input_throughput() if FLAGS.input else {}
  if pipeline:
    print(f'input pipeline pairs/s: {pipeline}', flush=True)
  write_results(rows, peak, pipeline, model_name, cores, cpu_flags,
                {name: runs for name, runs in published.items() if runs})
  del tf


def _alternating(config_name, ours):
  """FLAGS.repeats runs of our float32 XLA-off step (if `ours`), each
  followed by a run of the published step when --published_tf2_dir is
  given. Returns (our median row or None, the published images/s list)."""
  runs, published_runs = [], []
  for _ in range(FLAGS.repeats):
    row = _child(f'--one={config_name},float32,false') if ours else None
    if row:
      runs.append(row)
    if FLAGS.published_tf2_dir and config_name in PUBLISHED:
      result = _child(f'--one_published={config_name}',
                      f'--published_tf2_dir={FLAGS.published_tf2_dir}',
                      TF_USE_LEGACY_KERAS='1')
      if result:
        published_runs.append(result['images_per_second'])
        print(f'published code {config_name} float32: '
              f'{published_runs[-1]:.1f} images/s', flush=True)
      if row and result:
        # Each of our runs against the published run just after it.
        row['pair_ratio'] = (row['images_per_second'] /
                             result['images_per_second'])
  return _median_row(runs), published_runs


def _child(*args, **env):
  """Runs this script with `args` in a fresh process; returns the dict it
  prints on its RESULT line, or None (after printing why) if it failed."""
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), *args,
       f'--seconds={FLAGS.seconds}', f'--steps={FLAGS.steps}'],
      capture_output=True, text=True, cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **env))
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    print(f'{" ".join(args)}: failed\n{proc.stderr[-2000:]}', flush=True)
    return None
  row = json.loads(lines[0][len('RESULT '):])
  if 'precision' in row:
    print(f'{row["config"]} {row["precision"]} xla='
          f'{str(row["xla"]).lower()}: {row["images_per_second"]:.1f} '
          f'images/s, {row["gflops_per_second"]:.0f} GFLOP/s, peak '
          f'{row["peak_memory_mb"]:.0f} MB', flush=True)
  return row


def _median_row(runs):
  """One row for repeated runs of a setting (None if every run failed): the
  median images/s (and the GFLOP/s it implies), every run's images/s and
  pair ratio beside it, the rest (memory, FLOPs per view) from the median
  run (the lower of the two middle ones for an even count)."""
  runs = [r for r in runs if r]
  if not runs:
    return None
  ordered = sorted(runs, key=lambda r: r['images_per_second'])
  row = dict(ordered[(len(ordered) - 1) // 2])
  row['all_images_per_second'] = [r['images_per_second'] for r in runs]
  row['pair_ratios'] = [r['pair_ratio'] for r in runs if 'pair_ratio' in r]
  row['images_per_second'] = statistics.median(row['all_images_per_second'])
  row['gflops_per_second'] = (3 * row['forward_gflops_per_view'] *
                              row['images_per_second'])
  return row


def _spread(values, fmt):
  """'median (v1, v2, v3)' for repeated values, the value alone for one."""
  text = fmt.format(statistics.median(values))
  if len(values) > 1:
    text += ' (' + ', '.join(fmt.format(v) for v in values) + ')'
  return text


LABELS = {'r18_32': 'ResNet-18 CIFAR 32x32, batch 128',
          'r50_224': 'ResNet-50 224x224, batch 16',
          'demo_16': 'make demo\'s pretraining: ResNet-18 0.25x 16x16, '
                     'batch 128',
          'fashion': (
              'make study-fashion\'s pretraining: ResNet-18 '
              f'{SETTINGS["fashion"]["width"]:g}x '
              f'{SETTINGS["fashion"]["image_size"]}x'
              f'{SETTINGS["fashion"]["image_size"]} (Fashion-MNIST), batch '
              f'{SETTINGS["fashion"]["batch"]}')}


def write_results(rows, peak, pipeline, model_name, cores, cpu_flags,
                  published):
  """bench/results.md. `published`: config -> the published step's images/s
  of each run."""
  from simclr import cpu  # pylint: disable=g-import-not-at-top
  lines = [
      '# Benchmark results', '',
      f'Measured {datetime.date.today().isoformat()} by `python tools/bench.py` '
      f'on {model_name}, {cores} cores (CPU flags: {", ".join(cpu_flags)}); '
      f'TensorFlow {_tf_version()}, '
      f'{"oneDNN" if cpu.onednn() else "Eigen (oneDNN off)"} kernels, for '
      'our step and the published one alike.', '',
      f'Matmul peak measured in the same run: {peak["float32"]:.0f} GFLOP/s '
      f'float32, {peak["bfloat16"]:.0f} GFLOP/s bfloat16.', '',
      'Pretraining step (forward of both views, NT-Xent, linear head, LARS '
      'update); images/s count both views. "vs published" divides by the '
      'published code\'s float32 step ' + (
          f'timed in this same run (--published_tf2_dir): our float32 XLA-off '
          f'step and the published one ran {FLAGS.repeats} times each, '
          f'alternating, each run in a fresh process; the table gives the '
          f'median with every run in brackets, and for our float32 row the '
          f'median of the ratios of each pair (our run / the published run '
          f'just after it). Other rows: one run, divided by the published '
          f'median.' if published else
          'as quoted for 2 cores of this CPU class in SPEC section 5 (94 and '
          '8.9 images/s; not timed in this run).'),
      '',
      '| setting | precision | XLA | images/s | vs published fp32 | GFLOP/s | '
      '% of matmul peak | peak memory (MB) | input pipeline (images/s) |',
      '|---|---|---|---|---|---|---|---|---|']
  for config_name, values in published.items():
    lines.append(f'| {LABELS[config_name]}, **published code** | float32 | '
                 f'off | {_spread(values, "{:.1f}")} | 1.00x | | | | |')
  reference = dict(PUBLISHED, **{name: statistics.median(values)
                                 for name, values in published.items()})
  for row in rows:
    label = LABELS[row['config']]
    if row.get('failed'):
      lines.append(f'| {label} | {row["precision"]} | '
                   f'{"on" if row["xla"] else "off"} | failed | | | | | |')
      continue
    peak_value = peak['bfloat16' if row['precision'] == 'bfloat16' else
                      'float32']
    pipe = pipeline.get(row['config'])
    pipe_text = f'{2 * pipe:.0f}' if pipe else '-'
    if row.get('pair_ratios'):
      versus = _spread(row['pair_ratios'], '{:.2f}x')
    elif row['config'] not in reference:
      versus = '-'
    else:
      versus = f'{row["images_per_second"] / reference[row["config"]]:.2f}x'
    lines.append(
        f'| {label} | {row["precision"]} | {"on" if row["xla"] else "off"} | '
        f'{_spread(row["all_images_per_second"], "{:.1f}")} | {versus} | '
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
  cli_checks.run(main)
