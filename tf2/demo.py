r"""The SimCLRv2 semi-supervised pipeline end to end on real images (the
embedded `digits`), sized for a 2-core CPU:

  1. pretrain a small ResNet with NT-Xent and the memory buffer;
  2. linear evaluation of its frozen features (all labels);
  3. fine-tune from the first projection-head layer on 1% and 10% of labels;
  4. self-distill (same architecture, initialised from the pretrained
     encoder) and distill into a smaller student (from scratch), on the
     unlabeled training images, from each fine-tuned teacher;
  5. a supervised baseline: the same architecture, labels and steps, from
     scratch.

    python tf2/demo.py                 # make demo; writes demo_out/
    python tf2/demo.py --scale=0.2     # a quicker, weaker run

Every step's model_dir stays in demo_out/ (checkpoints, TensorBoard events,
SavedModels). The results table, in the style of SimCLRv2's Table 3, goes to
demo_out/results.md and demo_out/results.json, the label-efficiency plot to
demo_out/label_efficiency.png, the augmentation picture to
demo_out/augmentations.png.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_string('out', os.path.join(ROOT, 'demo_out'), 'Output folder.')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: '
                    '<out>/tensorflow_datasets).')
flags.DEFINE_integer('seed', 0, 'Seed of data order, augmentation and label '
                     'subsets.')
flags.DEFINE_float('scale', 1.0, 'Multiplies every step count (for quick '
                   'checks; the README figures use 1).')
flags.DEFINE_list('label_fractions', ['0.01', '0.1'],
                  'Label fractions for fine-tuning, distillation and the '
                  'supervised baseline.')

# Architectures: the teacher / self-distilled student, and the smaller
# student of big-to-small distillation.
TEACHER = dict(resnet_depth=18, width_multiplier=0.25)
SMALL = dict(resnet_depth=18, width_multiplier=0.125)
IMAGE_SIZE = 32

PRETRAIN_STEPS = 240
FINETUNE_STEPS = 80
DISTILL_STEPS = 120
BATCH = 128
FINETUNE_BATCH = 64


def architecture_name(arch):
  return f'ResNet-{arch["resnet_depth"]} ({arch["width_multiplier"]:g}x)'


def steps(n):
  return max(2, int(round(n * FLAGS.scale)))


def base_flags(model_dir):
  """The flag values every step shares (a dict of tf2/run.py flag names)."""
  return dict(
      dataset='digits', data_dir=FLAGS.data_dir, train_split='train',
      eval_split='test', image_size=IMAGE_SIZE, use_tpu=False,
      model_dir=model_dir, seed=FLAGS.seed, eval_batch_size=359,
      label_subset_seed=FLAGS.seed, global_bn=False, **TEACHER)


def stages():
  """(name, method, architecture, label fraction, flag dict) of each run."""
  out = FLAGS.out
  pretrain_dir = os.path.join(out, 'pretrain')
  result = [(
      'pretrain', None, TEACHER, None, dict(
          base_flags(pretrain_dir), train_mode='pretrain',
          mode='train_then_eval', train_batch_size=BATCH,
          train_steps=steps(PRETRAIN_STEPS),
          checkpoint_steps=steps(PRETRAIN_STEPS), steps_per_loop=20,
          learning_rate=1.0, learning_rate_scaling='linear',
          weight_decay=1e-4, warmup_epochs=2, temperature=0.2,
          memory_size=4 * 2 * BATCH, memory_momentum=0.99,
          color_jitter_strength=0.5, use_blur=False,
          lineareval_while_pretraining=True)),
      ('linear_eval', 'simclr_linear_eval', TEACHER, 1.0, dict(
          base_flags(os.path.join(out, 'linear_eval')),
          train_mode='linear_eval', mode='train_then_eval',
          checkpoint=pretrain_dir, train_batch_size=256,
          weight_decay=0.0))]
  for fraction in [float(f) for f in FLAGS.label_fractions]:
    pct = f'{100 * fraction:g}pct'
    finetune_dir = os.path.join(out, f'finetune_{pct}')
    finetune = dict(
        train_mode='finetune', mode='train_then_eval',
        train_label_fraction=fraction, train_batch_size=FINETUNE_BATCH,
        train_steps=steps(FINETUNE_STEPS),
        checkpoint_steps=steps(FINETUNE_STEPS), steps_per_loop=20,
        optimizer='lars', learning_rate=0.1, learning_rate_scaling='linear',
        warmup_epochs=0, weight_decay=0.0)
    result.append(('finetune', 'simclr_finetune', TEACHER, fraction, dict(
        base_flags(finetune_dir), checkpoint=pretrain_dir,
        ft_proj_selector=1, **finetune)))
    result.append(('supervised', 'supervised', TEACHER, fraction, dict(
        base_flags(os.path.join(out, f'supervised_{pct}')),
        **dict(finetune, weight_decay=1e-4))))
    # SGD (not LARS, whose trust ratio allows the from-scratch student only
    # tiny steps at this batch size) and tau = 1: with tau = 0.1 the head's
    # gradients grow tenfold and the small student did not learn in a first
    # run (README, Demo).
    distill = dict(
        train_mode='distill', mode='train_then_eval',
        teacher_checkpoint=finetune_dir, train_batch_size=FINETUNE_BATCH,
        train_steps=steps(DISTILL_STEPS),
        checkpoint_steps=steps(DISTILL_STEPS), steps_per_loop=20,
        optimizer='momentum', learning_rate=0.4,
        learning_rate_scaling='linear', warmup_epochs=0, weight_decay=0.0,
        distill_temperature=1.0, train_label_fraction=fraction)
    # The self-distilled student starts from the pretrained encoder, the
    # smaller one from scratch.
    result.append(('self_distill', 'simclr_self_distill', TEACHER, fraction,
                   dict(base_flags(os.path.join(out, f'self_distill_{pct}')),
                        checkpoint=pretrain_dir, **distill)))
    result.append(('distill', 'simclr_distill', SMALL, fraction, dict(
        base_flags(os.path.join(out, f'distill_small_{pct}')),
        **dict(distill, **SMALL))))
  return result


def run_stage(flag_values):
  """Runs one tf2/run.py configuration (flag name -> value) in this process;
  returns (result dict, the trained model's encoder parameter count)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import simclr  # pylint: disable=g-import-not-at-top
  result = simclr.train(**flag_values)
  model = simclr.load_model(flag_values['model_dir'])
  # The ResNet's weights up to the average pool (frozen ones too), as in
  # Table 1, without BN moving statistics.
  params = int(sum(np.prod(v.shape) for v in model.resnet.variables
                   if 'moving_' not in v.name))
  return result, params


def write_outputs(rows, out):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  lines = ['| method | architecture | label fraction | top-1 | top-5 | '
           'params |', '|---|---|---|---|---|---|']
  for row in rows:
    lines.append(
        f'| {row["method"]} | {row["architecture"]} | '
        f'{100 * row["label_fraction"]:g}% | {100 * row["top1"]:.1f} | '
        f'{100 * row["top5"]:.1f} | {row["params"] / 1e6:.2f}M |')
  table = '\n'.join(lines)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(f'# SimCLRv2 on digits (seed {FLAGS.seed}, scale {FLAGS.scale:g})'
            f'\n\nTop-1 / top-5 accuracy (%) on the 359 test digits.\n\n'
            f'{table}\n')
  print(table, flush=True)
  plot(rows, os.path.join(out, 'label_efficiency.png'))


def plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  methods = []
  for row in rows:
    key = (row['method'], row['architecture'])
    if key not in methods:
      methods.append(key)
  for method, arch in methods:
    points = sorted((r['label_fraction'], r['top1']) for r in rows
                    if (r['method'], r['architecture']) == (method, arch))
    xs, ys = zip(*points)
    ax.plot([100 * x for x in xs], [100 * y for y in ys], marker='o',
            label=f'{method} {arch}')
  ax.set_xscale('log')
  ax.set_xlabel('labels used (% of the training digits)')
  ax.set_ylabel('top-1 accuracy on test (%)')
  ax.set_title('Label efficiency on digits')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def draw_augmentations(out):
  import subprocess  # pylint: disable=g-import-not-at-top
  subprocess.run([sys.executable, os.path.join(ROOT, 'tf2',
                                               'show_augmentations.py'),
                  '--out=' + os.path.join(out, 'augmentations.png')],
                 check=True, capture_output=True, timeout=300)


def main(argv):
  del argv
  out = os.path.abspath(FLAGS.out)
  FLAGS.out = out
  if FLAGS.data_dir is None:
    FLAGS.data_dir = os.path.join(out, 'tensorflow_datasets')
  started = time.time()
  plan = stages()
  rows = []
  for i, (stage, method, arch, fraction, values) in enumerate(plan):
    logging.info('=== demo step %d/%d: %s%s (%s) -> %s', i + 1, len(plan),
                 stage, f' {fraction:g}' if fraction else '',
                 architecture_name(arch), values['model_dir'])
    print(f'[{time.time() - started:5.0f}s] step {i + 1}/{len(plan)}: {stage}'
          f'{f" on {100 * fraction:g}% labels" if fraction else ""} '
          f'({architecture_name(arch)})', flush=True)
    result, params = run_stage(dict(values))
    if method is None:
      continue
    rows.append(dict(method=method, architecture=architecture_name(arch),
                     label_fraction=fraction,
                     top1=result['eval/label_top_1_accuracy'],
                     top5=result['eval/label_top_5_accuracy'],
                     params=params))
  write_outputs(rows, out)
  try:
    draw_augmentations(out)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('augmentation picture not drawn: %s', e)
  print(f'demo finished in {time.time() - started:.0f}s; outputs in {out}',
        flush=True)


if __name__ == '__main__':
  app.run(main)
