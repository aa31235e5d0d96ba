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

    python tools/demo.py                  # make demo: one seed, writes demo_out/
    python tools/demo.py --seeds=0,1,2    # docs/demo.md's table: mean and std
    python tools/demo.py --tune           # how the settings below were chosen

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
demo_out/augmentations.png. The terminal shows one line per stage (and,
on a terminal, an updating line of the running stage's steps, images/s and
time left) and the table; every other line (absl, TFDS, TensorFlow) goes to
demo_out/log.txt; --verbose shows them on the terminal (tools/console.py).
"""

import os
import sys
import time

from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

from tools import console  # pylint: disable=g-import-not-at-top,wrong-import-position
from tools import demo_pictures  # pylint: disable=g-import-not-at-top,wrong-import-position
from tools import demo_tuning  # pylint: disable=g-import-not-at-top,wrong-import-position
from tools import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position

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
flags.DEFINE_list('tune_groups', list(demo_tuning.GROUPS),
                  'With --tune: the grids to run (some of '
                  f'{",".join(demo_tuning.GROUPS)}).')
flags.DEFINE_integer('stage_workers', 2, 'Stages that do not wait on each '
                     'other run side by side in this many processes (2m45s-'
                     '3m13s against 3m20s for 1 on 2 cores, same table). 1: '
                     'one stage after another in this process.')
flags.DEFINE_integer('stage_threads', 0, 'With --stage_workers of 2 or more: '
                     'TensorFlow threads of each stage process; 0: every '
                     'core, which gives --stage_workers=1\'s numbers to the '
                     'digit. 1 was 10% faster on 2 cores (3m00s against '
                     '3m19s) but changes the numbers: one thread sums in '
                     'another order (linear evaluation 0.5 points lower on '
                     'average over nine seeds, docs/demo.md).')
flags.DEFINE_bool('verbose', False, 'Show every log line (absl, TFDS, '
                  'TensorFlow\'s C++ log) on the terminal; without it they '
                  'go to <out>/log.txt.')

# The digits recipe (chosen on validation by --tune) lives in
# tools/experiment.py, which the study shares.
from tools.experiment import DISTILL, FINETUNE, IMAGE_SIZE, PRETRAIN  # pylint: disable=g-import-not-at-top,wrong-import-position,g-multiple-import
from tools.experiment import RAW_KNN_K, RAW_LOGISTIC_C, SUPERVISED  # pylint: disable=g-import-not-at-top,wrong-import-position,g-multiple-import
from tools.experiment import SMALL, TEACHER, TEST_SPLIT, TRAIN_SPLIT  # pylint: disable=g-import-not-at-top,wrong-import-position,g-multiple-import


def architecture_name(arch):
  return f'ResNet-{arch["resnet_depth"]} ({arch["width_multiplier"]:g}x)'


def steps(n):
  return max(2, int(round(n * FLAGS.scale)))


class Pipeline:
  """One seed of the demo on (train_split, eval_split), written under out;
  its stage lines go to `terminal` (a console.Console)."""

  def __init__(self, seed, out, train_split, eval_split, data_dir, terminal,
               pictures=None):
    self.seed = seed
    self.out = out
    self.train_split = train_split
    self.eval_split = eval_split
    self.data_dir = data_dir
    self.terminal = terminal
    # A Pictures told when the dataset is prepared and as stages finish.
    self.pictures = pictures
    self.rows = []

  def flags(self, name, **values):
    """The tf2/run.py flag values of one step (a dict)."""
    return experiment.stage_flags(
        experiment.DIGITS, self.data_dir, self.train_split, self.eval_split,
        self.seed, os.path.join(self.out, name), **values)

  def add(self, method, arch, fraction, result, params):
    self.rows.append(dict(
        method=method, architecture=architecture_name(arch),
        label_fraction=fraction, seed=self.seed,
        top1=result['eval/label_top_1_accuracy'],
        top5=result['eval/label_top_5_accuracy'], params=params))

  def run(self, fractions, workers=1, pretrain=None, finetune=None,
          supervised=None, distill=None, threads=0):
    """Every row of the demo for this seed; `workers` stage processes of
    `threads` TensorFlow threads each (experiment.run_stages); the other
    keyword arguments replace the module's settings."""
    pretrain = dict(PRETRAIN, **(pretrain or {}))
    pretrain['train_steps'] = steps(pretrain['train_steps'])
    pretrain_dir = os.path.join(self.out, 'pretrain')
    # (row method or None, architecture, label fraction, experiment.Job),
    # the longest chain first: a free stage process takes the first job
    # whose stages before it have finished.
    stages = [(None, TEACHER, None, self.job('pretrain', train_mode='pretrain',
                                             **pretrain))]
    stages.append(('simclr_linear_eval', TEACHER, 1.0, self.job(
        'linear_eval', after=['pretrain'], train_mode='linear_eval',
        checkpoint=pretrain_dir)))
    for fraction in fractions:
      pct = f'{100 * fraction:g}pct'
      tuned = dict(FINETUNE, **(finetune or {}))
      tuned['train_steps'] = steps(tuned['train_steps'])
      stages.append(('simclr_finetune', TEACHER, fraction, self.job(
          f'finetune_{pct}', after=['pretrain'], train_mode='finetune',
          checkpoint=pretrain_dir, train_label_fraction=fraction, **tuned)))
      students = dict(DISTILL, **(distill or {}))
      students['train_steps'] = steps(students['train_steps'])
      # The self-distilled student starts from the pretrained encoder, the
      # smaller one from scratch; both read only the subset's labels.
      finetune_dir = os.path.join(self.out, f'finetune_{pct}')
      stages.append(('simclr_self_distill', TEACHER, fraction, self.job(
          f'self_distill_{pct}', after=[f'finetune_{pct}'],
          train_mode='distill', teacher_checkpoint=finetune_dir,
          checkpoint=pretrain_dir, train_label_fraction=fraction,
          **students)))
      stages.append(('simclr_distill', SMALL, fraction, self.job(
          f'distill_small_{pct}', after=[f'finetune_{pct}'],
          train_mode='distill', teacher_checkpoint=finetune_dir,
          train_label_fraction=fraction, **dict(students, **SMALL))))
    random_dir = os.path.join(self.out, 'random_encoder')
    stages.append(('random_encoder_linear_eval', TEACHER, 1.0, self.job(
        'random_linear_eval', train_mode='linear_eval', checkpoint=random_dir,
        random_encoder=(random_dir, self.seed, TEACHER, IMAGE_SIZE))))
    for fraction in fractions:
      pct = f'{100 * fraction:g}pct'
      baseline = dict(FINETUNE, ft_proj_selector=0,
                      **SUPERVISED[fraction], **(supervised or {}))
      baseline['train_steps'] = steps(baseline['train_steps'])
      stages.append(('supervised', TEACHER, fraction, self.job(
          f'supervised_{pct}', train_mode='finetune',
          train_label_fraction=fraction, **baseline)))
    # The raw-pixel baselines here first: they prepare the dataset (TFDS)
    # before any stage process reads it.
    raw = {fraction: self.raw_pixels(fraction)
           for fraction in [1.0] + list(fractions)}
    if self.pictures:
      self.pictures.dataset_ready()
    done = experiment.run_stages([job for *_, job in stages], workers,
                                 self.terminal, self.say_done,
                                 threads=threads)
    # The rows in one order whatever finished first.
    by_name = {job.name: (method, arch, fraction)
               for method, arch, fraction, job in stages}
    prefix = f'seed {self.seed} '
    order = (['linear_eval', 'random_linear_eval'] + ['raw'] + [
        f'{kind}_{100 * fraction:g}pct' for fraction in fractions
        for kind in ('finetune', 'supervised', 'self_distill',
                     'distill_small')])
    for name in order:
      if name == 'raw':
        for fraction, scores in raw.items():
          for method, result in scores.items():
            self.add(method, dict(resnet_depth=0, width_multiplier=0),
                     fraction, result, 0)
            self.rows[-1]['architecture'] = '8x8 pixels'
        continue
      method, arch, fraction = by_name[prefix + name]
      self.add(method, arch, fraction, done[prefix + name].result,
               done[prefix + name].params)
    return self.rows

  def job(self, name, after=(), random_encoder=None, **values):
    return experiment.Job(f'seed {self.seed} {name}', self.flags(
        name, **values), after=[f'seed {self.seed} {a}' for a in after],
                          random_encoder=random_encoder)

  def say_done(self, job, done):
    top1 = done.result.get('eval/label_top_1_accuracy')
    self.terminal.say(
        f'  {job.name}: {done.seconds:.0f}s'
        + (f', top-1 {100 * top1:.1f}%' if top1 is not None else ''))
    if self.pictures:
      self.pictures.stage_done(job.name[len(f'seed {self.seed} '):])

  def raw_pixels(self, fraction):
    """Logistic regression and k-NN on the 8x8 pixels, with the label
    subset fine-tuning draws: {method: result}."""
    return experiment.raw_pixel_scores(
        self.data_dir, self.train_split, self.eval_split, fraction,
        self.seed, RAW_LOGISTIC_C[fraction], RAW_KNN_K[fraction])


def summarise(rows):
  """Mean and standard deviation of top-1 / top-5 over seeds, per (method,
  architecture, label fraction), in the order rows first name them."""
  return experiment.summarise(rows, ('method', 'architecture',
                                     'label_fraction'))


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


def write_outputs(rows, out, seconds, terminal):
  os.makedirs(out, exist_ok=True)
  summary = summarise(rows)
  machine = experiment.machine()
  experiment.write_json(os.path.join(out, 'results.json'), dict(
      rows=rows, summary=summary, seconds=seconds, machine=machine))
  seeds = sorted({row['seed'] for row in rows})
  text = table(summary)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(f'# SimCLRv2 on digits (seeds {seeds}, scale {FLAGS.scale:g})\n\n'
            f'Top-1 / top-5 accuracy (%) on the 359 test digits; mean '
            f'± standard deviation over the seeds. Made on: '
            f'{experiment.machine_line(machine)}.\n\n{text}\n')
  terminal.say(text)
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


def main(argv):
  del argv
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.check_demo_flags(FLAGS, supported_fractions=SUPERVISED)
  out = os.path.abspath(FLAGS.out)
  FLAGS.out = out
  if FLAGS.data_dir is None:
    FLAGS.data_dir = os.path.join(out, 'tensorflow_datasets')
  with console.Console(out, FLAGS.verbose, 'demo') as terminal:
    run_demo(terminal, out)


def run_demo(terminal, out):
  """The demo's stages (or, with --tune, the validation grids) and its
  outputs, said on `terminal` (a console.Console)."""
  fractions = [float(f) for f in FLAGS.label_fractions]
  started = time.time()
  if FLAGS.tune:
    demo_tuning.tune(experiment.DIGITS, FLAGS.data_dir, steps, out, fractions,
                     groups=FLAGS.tune_groups, say=terminal.say)
    return
  rows = []
  seeds = [int(s) for s in FLAGS.seeds]
  pictures = demo_pictures.Pictures(
      out, FLAGS.data_dir, os.path.join(out, f'seed{seeds[0]}'), terminal)
  try:
    for seed in seeds:
      terminal.say(f'[{time.time() - started:5.0f}s] seed {seed}')
      pipeline = Pipeline(seed, os.path.join(out, f'seed{seed}'),
                          TRAIN_SPLIT, TEST_SPLIT, FLAGS.data_dir, terminal,
                          pictures=pictures if seed == seeds[0] else None)
      rows += pipeline.run(fractions, FLAGS.stage_workers,
                           threads=FLAGS.stage_threads)
      # matplotlib's pyplot is not for two threads at once.
      pictures.wait_for_embedding()
      write_outputs(rows, out, time.time() - started, terminal)
    pictures.finish()
  finally:
    pictures.cancel()
  terminal.say(f'demo finished in {time.time() - started:.0f}s; outputs in '
               f'{out}')


if __name__ == '__main__':
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)
