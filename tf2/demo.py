r"""The SimCLRv2 semi-supervised pipeline end to end on real images (the
embedded `digits`), sized for a 2-core CPU, with honest baselines:

  1. pretrain a small ResNet with NT-Xent (and the memory buffer);
  2. linear evaluation of its frozen features (all labels), and of a randomly
     initialised encoder under the same protocol;
  3. fine-tune from the first projection-head layer on 1% and 10% of labels;
  4. self-distill (same architecture, initialised from the pretrained
     encoder) and distill into a smaller student, on the training images with
     only the subset's labels, from each fine-tuned teacher;
  5. baselines on the same split and label subsets: a supervised network of
     the same architecture trained from scratch, and logistic regression and
     k-nearest-neighbours on the raw 8x8 pixels (scikit-learn).

    python tf2/demo.py                  # make demo: one seed, writes demo_out/
    python tf2/demo.py --seeds=0,1,2    # the README table: mean and std
    python tf2/demo.py --tune           # how the settings below were chosen

Every setting below (augmentations, learning rates, steps, the supervised
baseline's optimiser, the raw-pixel baselines' C and k) was chosen by
`--tune` on a validation part of the training split (its first 80% train,
the last 20% validate), never on the test split. Runs are deterministic
(--deterministic): the same seed gives the same table bit for bit.

Every step's model_dir stays in demo_out/seed<N>/ (checkpoints, TensorBoard
events, SavedModels). The table goes to demo_out/results.md and
demo_out/results.json (every row of every seed, and the summary), the
label-efficiency plot to demo_out/label_efficiency.png, the embedding of the
test digits (pretrained encoder, raw pixels, random encoder) to
demo_out/embedding.png, the augmentation picture to
demo_out/augmentations.png.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_string('out', os.path.join(ROOT, 'demo_out'), 'Output folder.')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: '
                    '<out>/tensorflow_datasets).')
flags.DEFINE_list('seeds', ['0'], 'Seeds of weights, data order, '
                  'augmentation and label subsets; the table reports the '
                  'mean and standard deviation over them.')
flags.DEFINE_float('scale', 1.0, 'Multiplies every step count (for quick '
                   'checks; the README figures use 1).')
flags.DEFINE_list('label_fractions', ['0.01', '0.1'],
                  'Label fractions for fine-tuning, distillation and the '
                  'baselines.')
flags.DEFINE_bool('tune', False, 'Run the validation grids that chose the '
                  'settings (train[:80%] / train[80%:]) instead of the demo; '
                  'writes <out>/tuning.md.')
flags.DEFINE_list('tune_groups', ['pretrain', 'finetune', 'supervised',
                                  'distill', 'raw'],
                  'With --tune: the grids to run (pretrain, finetune, '
                  'supervised, distill, raw).')

TRAIN_SPLIT, TEST_SPLIT = 'train', 'test'
VALIDATION_SPLITS = ('train[:80%]', 'train[80%:]')

# Architectures: the teacher / self-distilled student, and the smaller
# student of big-to-small distillation.
TEACHER = dict(resnet_depth=18, width_multiplier=0.25)
SMALL = dict(resnet_depth=18, width_multiplier=0.125)
# The digits are 8x8 scans: 16x16 keeps every pixel at a quarter of the cost
# of 32x32 (--tune compares both at equal time).
IMAGE_SIZE = 16
# Crops keep at least 30% of the digit, never flipped (a flip turns some
# digits into others), no blur (one tap at 16x16); the colour jitter acts on
# brightness and contrast only, the digits being grey.
AUGMENT = dict(crop_min_area=0.3, use_flip=False, color_jitter_strength=0.5,
               use_blur=False)
PRETRAIN = dict(
    train_batch_size=128, train_steps=600, learning_rate=1.0,
    learning_rate_scaling='linear', weight_decay=1e-4, warmup_epochs=2,
    temperature=0.5, memory_size=0, lineareval_while_pretraining=True)
# Fine-tuning sees whole digits (crops cost 4 to 5 points at 10% of the labels
# on validation).
FINETUNE = dict(
    train_batch_size=64, train_steps=100, optimizer='momentum',
    learning_rate=0.01, learning_rate_scaling='linear', warmup_epochs=0,
    weight_decay=0.0, ft_proj_selector=1, crop_min_area=1.0)
# The supervised baseline from scratch: optimiser, learning rate, steps and
# crops per label fraction (crops helped it at 1%, whole digits at 10%).
SUPERVISED = {
    0.01: dict(optimizer='adam', learning_rate=0.01, train_steps=600,
               crop_min_area=0.3),
    0.1: dict(optimizer='adam', learning_rate=0.01, train_steps=600,
              crop_min_area=1.0),
}
DISTILL = dict(
    train_batch_size=64, train_steps=200, optimizer='momentum',
    learning_rate=0.4, learning_rate_scaling='linear', warmup_epochs=0,
    weight_decay=0.0, distill_temperature=1.0, distill_alpha=1.0,
    crop_min_area=0.3)
# Raw-pixel baselines: logistic regression's inverse L2 strength C and the
# neighbours k, per label fraction (1.0: all labels).
RAW_LOGISTIC_C = {0.01: 100.0, 0.1: 1.0, 1.0: 1.0}
RAW_KNN_K = {0.01: 1, 0.1: 1, 1.0: 1}


def architecture_name(arch):
  return f'ResNet-{arch["resnet_depth"]} ({arch["width_multiplier"]:g}x)'


def steps(n):
  return max(2, int(round(n * FLAGS.scale)))


class Pipeline:
  """One seed of the demo on (train_split, eval_split), written under out."""

  def __init__(self, seed, out, train_split, eval_split, data_dir):
    self.seed = seed
    self.out = out
    self.train_split = train_split
    self.eval_split = eval_split
    self.data_dir = data_dir
    self.rows = []

  def flags(self, name, **values):
    """The tf2/run.py flag values of one step (a dict)."""
    base = dict(
        dataset='digits', data_dir=self.data_dir,
        train_split=self.train_split, eval_split=self.eval_split,
        image_size=IMAGE_SIZE, use_tpu=False, seed=self.seed,
        label_subset_seed=self.seed, deterministic=True, global_bn=False,
        eval_batch_size=400, steps_per_loop=50, mode='train_then_eval',
        model_dir=os.path.join(self.out, name), **TEACHER, **AUGMENT)
    base.update(values)
    # One checkpoint, at the end (an epoch of 1% of the digits is less than
    # a batch: the published default of one per epoch would save every step).
    base.setdefault('checkpoint_steps', base.get('train_steps', 0))
    return base

  def add(self, method, arch, fraction, result, params):
    self.rows.append(dict(
        method=method, architecture=architecture_name(arch),
        label_fraction=fraction, seed=self.seed,
        top1=result['eval/label_top_1_accuracy'],
        top5=result['eval/label_top_5_accuracy'], params=params))

  def stage(self, method, arch, fraction, values):
    started = time.time()
    result, params = run_stage(values)
    top1 = result.get('eval/label_top_1_accuracy')
    print(f'  seed {self.seed} {os.path.basename(values["model_dir"])}: '
          f'{time.time() - started:.0f}s'
          + (f', top-1 {100 * top1:.1f}%' if top1 is not None else ''),
          flush=True)
    if method:
      self.add(method, arch, fraction, result, params)
    return result

  def run(self, fractions, pretrain=None, finetune=None, supervised=None,
          distill=None):
    """Every row of the demo for this seed; the keyword arguments replace
    the module's settings (for --tune)."""
    pretrain = dict(PRETRAIN, **(pretrain or {}))
    pretrain['train_steps'] = steps(pretrain['train_steps'])
    pretrain_dir = os.path.join(self.out, 'pretrain')
    self.stage(None, TEACHER, None, self.flags(
        'pretrain', train_mode='pretrain', **pretrain))
    self.stage('simclr_linear_eval', TEACHER, 1.0, self.flags(
        'linear_eval', train_mode='linear_eval', checkpoint=pretrain_dir))
    self.stage('random_encoder_linear_eval', TEACHER, 1.0, self.flags(
        'random_linear_eval', train_mode='linear_eval',
        checkpoint=self.random_encoder()))
    self.raw_pixels([1.0] + list(fractions))
    for fraction in fractions:
      pct = f'{100 * fraction:g}pct'
      finetune_dir = os.path.join(self.out, f'finetune_{pct}')
      tuned = dict(FINETUNE, **(finetune or {}))
      tuned['train_steps'] = steps(tuned['train_steps'])
      self.stage('simclr_finetune', TEACHER, fraction, self.flags(
          f'finetune_{pct}', train_mode='finetune', checkpoint=pretrain_dir,
          train_label_fraction=fraction, **tuned))
      baseline = dict(FINETUNE, ft_proj_selector=0,
                      **SUPERVISED[fraction], **(supervised or {}))
      baseline['train_steps'] = steps(baseline['train_steps'])
      self.stage('supervised', TEACHER, fraction, self.flags(
          f'supervised_{pct}', train_mode='finetune',
          train_label_fraction=fraction, **baseline))
      students = dict(DISTILL, **(distill or {}))
      students['train_steps'] = steps(students['train_steps'])
      # The self-distilled student starts from the pretrained encoder, the
      # smaller one from scratch; both read only the subset's labels.
      self.stage('simclr_self_distill', TEACHER, fraction, self.flags(
          f'self_distill_{pct}', train_mode='distill',
          teacher_checkpoint=finetune_dir, checkpoint=pretrain_dir,
          train_label_fraction=fraction, **students))
      self.stage('simclr_distill', SMALL, fraction, self.flags(
          f'distill_small_{pct}', train_mode='distill',
          teacher_checkpoint=finetune_dir, train_label_fraction=fraction,
          **dict(students, **SMALL)))
    return self.rows

  def random_encoder(self):
    """Exports a randomly initialised encoder (this seed) and returns it."""
    import simclr  # pylint: disable=g-import-not-at-top
    import tf_keras  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.out, 'random_encoder')
    if not os.path.isdir(path):
      tf_keras.utils.set_random_seed(self.seed)
      model = simclr.build_model(simclr.ModelConfig(
          **TEACHER, image_size=IMAGE_SIZE, num_classes=None,
          global_bn=False))
      simclr.export_saved_model(model, path)
    return path

  def raw_pixels(self, fractions):
    """Logistic regression and k-NN on the 8x8 pixels, with the label
    subsets fine-tuning draws."""
    from sklearn import linear_model  # pylint: disable=g-import-not-at-top
    from sklearn import neighbors  # pylint: disable=g-import-not-at-top
    train_ids, train_x, train_y = raw_pixels(self.data_dir, self.train_split)
    _, test_x, test_y = raw_pixels(self.data_dir, self.eval_split)
    for fraction in fractions:
      keep = label_subset_mask(train_ids, train_y, fraction, self.seed)
      for method, classifier in (
          ('raw_pixels_logistic_regression', linear_model.LogisticRegression(
              C=RAW_LOGISTIC_C[fraction], max_iter=5000)),
          ('raw_pixels_knn', neighbors.KNeighborsClassifier(
              RAW_KNN_K[fraction]))):
        classifier.fit(train_x[keep], train_y[keep])
        top = classifier.classes_[np.argsort(
            -classifier.predict_proba(test_x), axis=1)]
        self.add(method, dict(resnet_depth=0, width_multiplier=0), fraction,
                 {'eval/label_top_1_accuracy':
                      float(np.mean(top[:, 0] == test_y)),
                  'eval/label_top_5_accuracy':
                      float(np.mean((top[:, :5] == test_y[:, None]).any(1)))},
                 0)
        self.rows[-1]['architecture'] = '8x8 pixels'


def raw_pixels(data_dir, split):
  """(ids [N], the 8x8 digits' pixels float [N, 64] in [0, 1], labels [N])
  of a digits split, in the split's order."""
  from simclr.data import datasets  # pylint: disable=g-import-not-at-top
  from simclr.data import digits  # pylint: disable=g-import-not-at-top
  ids, labels = datasets.load_source('digits', data_dir).ids_and_labels(split)
  index = [int(i.split('_')[1]) for i in ids]
  return np.asarray(ids), digits.load_digits().data[index] / 16.0, labels


def label_subset_mask(ids, labels, fraction, seed):
  """Which examples carry a label at `fraction`: the subset fine-tuning
  draws with label_subset_seed=seed (simclr.data.subsets.draw_subset)."""
  from simclr.data import subsets  # pylint: disable=g-import-not-at-top
  if fraction >= 1:
    return np.ones(len(ids), bool)
  chosen = set(subsets.draw_subset(ids, labels, fraction, seed))
  return np.array([i in chosen for i in ids])


def run_stage(flag_values):
  """Runs one tf2/run.py configuration in this process; returns (result
  dict, the trained model's encoder parameter count)."""
  import simclr  # pylint: disable=g-import-not-at-top
  result = simclr.train(**flag_values)
  model = simclr.load_model(flag_values['model_dir'])
  # The ResNet's weights up to the average pool (frozen ones too), as in
  # Table 1, without BN moving statistics.
  params = int(sum(np.prod(v.shape) for v in model.resnet.variables
                   if 'moving_' not in v.name))
  return result, params


def summarise(rows):
  """Mean and standard deviation of top-1 / top-5 over seeds, per (method,
  architecture, label fraction), in the order rows first name them."""
  groups = {}
  for row in rows:
    key = (row['method'], row['architecture'], row['label_fraction'])
    groups.setdefault(key, []).append(row)
  summary = []
  for (method, arch, fraction), members in groups.items():
    top1 = np.array([m['top1'] for m in members])
    top5 = np.array([m['top5'] for m in members])
    summary.append(dict(
        method=method, architecture=arch, label_fraction=fraction,
        seeds=[m['seed'] for m in members], top1_mean=float(top1.mean()),
        top1_std=float(top1.std()), top5_mean=float(top5.mean()),
        top5_std=float(top5.std()), params=members[0]['params']))
  return summary


ORDER = ('raw_pixels_logistic_regression', 'raw_pixels_knn',
         'random_encoder_linear_eval', 'simclr_linear_eval', 'supervised',
         'simclr_finetune', 'simclr_self_distill', 'simclr_distill')


def table(summary):
  lines = ['| method | architecture | labels | top-1 | top-5 | params |',
           '|---|---|---|---|---|---|']
  ordered = sorted(summary, key=lambda s: (s['label_fraction'],
                                           ORDER.index(s['method'])))
  for s in ordered:
    spread = (f' ± {100 * s["top1_std"]:.1f}' if len(s['seeds']) > 1
              else '')
    params = f'{s["params"] / 1e6:.2f}M' if s['params'] else '-'
    lines.append(
        f'| {s["method"]} | {s["architecture"]} | '
        f'{100 * s["label_fraction"]:g}% | {100 * s["top1_mean"]:.1f}{spread}'
        f' | {100 * s["top5_mean"]:.1f} | {params} |')
  return '\n'.join(lines)


def write_outputs(rows, out, seconds):
  os.makedirs(out, exist_ok=True)
  summary = summarise(rows)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(dict(rows=rows, summary=summary, seconds=seconds), f,
              indent=1)
  seeds = sorted({row['seed'] for row in rows})
  text = table(summary)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(f'# SimCLRv2 on digits (seeds {seeds}, scale {FLAGS.scale:g})\n\n'
            f'Top-1 / top-5 accuracy (%) on the 359 test digits; mean '
            f'± standard deviation over the seeds.\n\n{text}\n')
  print(text, flush=True)
  plot(summary, os.path.join(out, 'label_efficiency.png'))


def plot(summary, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for method in ORDER:
    for arch in sorted({s['architecture'] for s in summary
                        if s['method'] == method}):
      points = sorted((s['label_fraction'], s['top1_mean'], s['top1_std'])
                      for s in summary
                      if (s['method'], s['architecture']) == (method, arch))
      xs, ys, errors = zip(*points)
      baseline = method.startswith(('raw_pixels', 'random', 'supervised'))
      ax.errorbar([100 * x for x in xs], [100 * y for y in ys],
                  yerr=[100 * e for e in errors], marker='o', capsize=3,
                  linestyle='--' if baseline else '-',
                  label=f'{method} ({arch})')
  ax.set_xscale('log')
  ax.set_xlabel('labels used (% of the training digits)')
  ax.set_ylabel('top-1 accuracy on test (%)')
  ax.set_title('Label efficiency on digits (dashed: baselines)')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def draw_embedding(seed_dir, out, data_dir):
  """demo_out/embedding.png: the test digits as seen by the pretrained
  encoder, by the raw pixels and by the random encoder, side by side."""
  import simclr  # pylint: disable=g-import-not-at-top
  from simclr import data  # pylint: disable=g-import-not-at-top
  from simclr import features as features_lib  # pylint: disable=g-import-not-at-top
  from tf2 import show_embedding  # pylint: disable=g-import-not-at-top
  config = data.DataConfig(dataset='digits', data_dir=data_dir,
                           image_size=IMAGE_SIZE, eval_batch_size=400)
  panels = []
  for title, path in (('pretrained encoder (SimCLR)',
                       os.path.join(seed_dir, 'pretrain')),
                      ('random encoder', os.path.join(seed_dir,
                                                      'random_encoder'))):
    feature_set = features_lib.extract_features(simclr.load_model(path),
                                                config, TEST_SPLIT)
    panels.append((title, feature_set.features, feature_set.labels))
  _, pixels, labels = raw_pixels(data_dir, TEST_SPLIT)
  panels.insert(1, ('raw 8x8 pixels', pixels, labels))
  show_embedding.draw_embeddings(panels, os.path.join(out, 'embedding.png'))


def draw_augmentations(out):
  import subprocess  # pylint: disable=g-import-not-at-top
  augment_flags = [f'--{k}={v}' for k, v in AUGMENT.items()]
  subprocess.run([sys.executable, os.path.join(ROOT, 'tf2',
                                               'show_augmentations.py'),
                  '--out=' + os.path.join(out, 'augmentations.png'),
                  '--dataset=digits', f'--image_size={IMAGE_SIZE}',
                  f'--data_dir={FLAGS.data_dir}'] + augment_flags,
                 check=True, capture_output=True, timeout=300)


def main(argv):
  del argv
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.check_demo_flags(FLAGS, supported_fractions=SUPERVISED)
  out = os.path.abspath(FLAGS.out)
  FLAGS.out = out
  if FLAGS.data_dir is None:
    FLAGS.data_dir = os.path.join(out, 'tensorflow_datasets')
  fractions = [float(f) for f in FLAGS.label_fractions]
  started = time.time()
  if FLAGS.tune:
    from tf2 import demo_tuning  # pylint: disable=g-import-not-at-top
    demo_tuning.tune(sys.modules[__name__], out, FLAGS.data_dir, fractions,
                     groups=FLAGS.tune_groups)
    return
  rows = []
  for seed in [int(s) for s in FLAGS.seeds]:
    print(f'[{time.time() - started:5.0f}s] seed {seed}', flush=True)
    pipeline = Pipeline(seed, os.path.join(out, f'seed{seed}'), TRAIN_SPLIT,
                        TEST_SPLIT, FLAGS.data_dir)
    rows += pipeline.run(fractions)
    write_outputs(rows, out, time.time() - started)
  first_seed_dir = os.path.join(out, f'seed{int(FLAGS.seeds[0])}')
  for name, draw in (('embedding', lambda: draw_embedding(
      first_seed_dir, out, FLAGS.data_dir)), ('augmentation',
                                              lambda: draw_augmentations(out))):
    try:
      draw()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('%s picture not drawn: %s', name, e)
  print(f'demo finished in {time.time() - started:.0f}s; outputs in {out}',
        flush=True)


if __name__ == '__main__':
  app.run(main)
