r"""`make study`: SimCLRv2's own claims measured on the embedded digits (and,
with --dataset=fashion_mnist, on Fashion-MNIST's 60,000 images: `make
study-fashion`), at a size a 2-core CPU carries, with the demo's baselines
beside every row.

  1. size: bigger networks gain more from pretraining, the more so the fewer
     the labels (SimCLRv2 Figure 1, Table 1, Figure 4). ResNet-18 at several
     widths, each pretrained with the same recipe, fine-tuned at each label
     fraction on several label subsets, beside the same network trained from
     scratch on the same labels, its linear evaluation and the raw-pixel
     baselines;
  2. head: a deeper projection head, fine-tuned from its middle layer
     (Figure 5): heads of 2, 3 and 4 layers, fine-tuned from each layer
     (--ft_proj_selector), at 1% and 10%;
  3. targets: which targets teach a student from scratch (Table 2): label
     only; label + distillation on the labeled images; label + distillation
     on all images; distillation only. Teacher: the largest network of 1;
  4. distillation: that teacher distilled into itself and into each smaller
     width (Table 3), beside each width's own SimCLR fine-tuning and its
     supervised training.

    python tools/study.py                 # make study: seed 0, writes study_out/
    python tools/study.py --seeds=0,1,2   # mean and spread over seeds too
    python tools/study.py --dataset=fashion_mnist   # study_fashion_out/
    python tools/study.py --dataset=fashion_mnist --tune   # its recipe's grids

Every setting is the dataset's recipe (tools/experiment.py), chosen on the
validation part of the training split (--tune shows how); the test split
gives only the final numbers. Section 1 also has a randomly initialised
encoder of the largest width under the same linear evaluation.
A stage whose result exists is not run again: a killed study continues
where it stopped (run the same command). Outputs: study_out/results.json
(every row of every seed, the summaries, the machine), study_out/study.md,
study_out/size.png, head.png, targets.png, distillation.png. The terminal
shows one line per stage and the tables; every other line (absl, TFDS,
TensorFlow) goes to study_out/log.txt; --verbose shows them on the terminal
(tools/console.py).
"""

import os
import sys
import time

from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

from tools import console  # pylint: disable=g-import-not-at-top,wrong-import-position
from tools import demo_tuning  # pylint: disable=g-import-not-at-top,wrong-import-position
from tools import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_enum('dataset', 'digits', ['digits', 'fashion_mnist'],
                  'The dataset and its recipe (tools/experiment.py).')
flags.DEFINE_string('out', None, 'Output folder (default: study_out/ for the '
                    'digits, study_fashion_out/ for Fashion-MNIST).')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: '
                    '<out>/tensorflow_datasets).')
flags.DEFINE_list('seeds', ['0'], 'Seeds of weights, data order and '
                  'augmentation; each seed draws its own label subsets.')
flags.DEFINE_float('scale', 1.0, 'Multiplies every step count (a quick '
                   'check; the reported study uses 1).')
flags.DEFINE_list('widths', None,
                  'ResNet-18 width multipliers of section 1 (the largest is '
                  'the teacher of sections 3 and 4; default: the recipe\'s, '
                  'on the digits 0.03125,0.0625,0.125,0.25, 50x in '
                  'parameters; on Fashion-MNIST 0.125,0.25).')
flags.DEFINE_list('label_fractions', ['0.01', '0.1', '1.0'],
                  'Label fractions of section 1 (sections 2-4 use those '
                  'below 1).')
flags.DEFINE_integer('subsets', None, 'Label subsets per fraction below 1 '
                     'in sections 1 and 2 (each seed draws its own; default: '
                     'the recipe\'s, 2 on the digits, 1 on Fashion-MNIST).')
flags.DEFINE_integer('distill_subsets', 1, 'Label subsets per fraction in '
                     'sections 3 and 4 (distillation is the costly part).')
flags.DEFINE_list('head_layers', ['2', '3', '4'], 'Projection-head depths '
                  'of section 2.')
flags.DEFINE_float('head_width', None, 'Width of section 2\'s networks and '
                   'of section 3\'s student (default: the recipe\'s small '
                   'student, 0.125).')
flags.DEFINE_list('sections', None, 'Sections to run (default: the '
                  'recipe\'s, 1,2,3,4 on the digits, 1,3,4 on '
                  'Fashion-MNIST).')
flags.DEFINE_bool('tune', False, 'Run the recipe\'s validation grids '
                  '(train[:80%] / train[80%:]) instead of the study; writes '
                  '<out>/tuning.md.')
flags.DEFINE_list('tune_groups', list(demo_tuning.GROUPS),
                  'With --tune: the grids to run (some of '
                  f'{",".join(demo_tuning.GROUPS)}).')
flags.DEFINE_bool('verbose', False, 'Show every log line (absl, TFDS, '
                  'TensorFlow\'s C++ log) on the terminal; without it they '
                  'go to <out>/log.txt.')

SECTIONS = ('1', '2', '3', '4')
# Table 2's four targets: (row name, distill flags); 'label only' is the
# supervised baseline of section 1.
TARGETS = (
    ('label + distillation (labeled images)',
     dict(distill_on='labeled', distill_alpha=0.5)),
    ('label + distillation (labeled + unlabeled images)',
     dict(distill_on='all', distill_alpha=0.5)),
    ('distillation only (labeled + unlabeled images)',
     dict(distill_on='all', distill_alpha=1.0)),
)
LABEL_ONLY = 'label only (supervised from scratch)'


def steps(n):
  return max(2, int(round(n * FLAGS.scale)))


def arch(width):
  return dict(resnet_depth=18, width_multiplier=width)


def pct(fraction):
  return f'{100 * fraction:g}pct'


def stage_cost(values):
  """Relative cost of a stage for the time estimate: a fixed part (tracing,
  evaluation, export) plus images trained x a width and pixel factor."""
  width = values.get('width_multiplier', 0.25)
  views = 2 if values.get('train_mode') == 'pretrain' else 1
  images = values.get('train_steps', 0) * values.get('train_batch_size',
                                                     64) * views
  pixels = (values.get('image_size', 16) / 16) ** 2
  return 20.0 + images * pixels * (0.4 + 8 * width * width) / 1000.0


class Study:
  """The stages of one seed, then its rows."""

  def __init__(self, seed, out, data_dir, widths, fractions,
               recipe=experiment.DIGITS):
    self.recipe = recipe
    self.seed = seed
    self.out = out
    self.data_dir = data_dir
    self.widths = sorted(widths)
    self.fractions = fractions
    self.few = [f for f in fractions if f < 1]
    self.teacher_width = self.widths[-1]
    self.plan = []     # (name, flag values, row builder or None)
    self.random_encoders = {}  # stage name -> (encoder dir, width)

  # -- what to run --------------------------------------------------------

  def flags(self, name, width, **values):
    base = dict(
        dataset=self.recipe.dataset, data_dir=self.data_dir,
        train_split=experiment.TRAIN_SPLIT, eval_split=experiment.TEST_SPLIT,
        image_size=self.recipe.image_size, use_tpu=False, seed=self.seed,
        deterministic=True, global_bn=False, eval_batch_size=400,
        steps_per_loop=50, mode='train_then_eval', export_saved_model=False,
        model_dir=os.path.join(self.out, name), **arch(width),
        **self.recipe.augment)
    base.update(values)
    if 'train_steps' in base:
      base['train_steps'] = steps(base['train_steps'])
      base.setdefault('checkpoint_steps', base['train_steps'])
    return base

  def subset_seed(self, j):
    return 100 * self.seed + j

  def subsets(self, fraction, count):
    return [0] if fraction >= 1 else list(range(count))

  def add(self, name, values, **row):
    """Plans stage `name` (once) and a table row from its result (several
    sections may share one stage: the same configuration runs once)."""
    for planned_name, planned_values, rows in self.plan:
      if planned_name == name:
        assert planned_values == values, name
        # One row per method: tables select rows by method, not section.
        if row and all(r['method'] != row['method'] for r in rows):
          rows.append(row)
        return
    self.plan.append((name, values, [row] if row else []))

  def pretrain_dir(self, width, layers=3):
    name = (f'pretrain_w{width:g}' if layers == 3 else
            f'pretrain_w{width:g}_head{layers}')
    return name, os.path.join(self.out, name)

  def finetune_name(self, width, fraction, j, layers=3, selector=1):
    name = f'finetune_w{width:g}_{pct(fraction)}_s{j}'
    if (layers, selector) != (3, 1):
      name += f'_head{layers}_sel{selector}'
    return name

  def build_plan(self, sections, subsets, distill_subsets, head_layers,
                 head_width):
    self.subset_count = subsets
    recipe = self.recipe
    def pretrain(width, layers=3):
      name, path = self.pretrain_dir(width, layers)
      self.add(name, self.flags(name, width, train_mode='pretrain',
                                num_proj_layers=layers, **recipe.pretrain))
      return path

    def finetune(width, fraction, j, section, layers=3, selector=1):
      name = self.finetune_name(width, fraction, j, layers, selector)
      self.add(name, self.flags(
          name, width, train_mode='finetune',
          checkpoint=pretrain(width, layers), num_proj_layers=layers,
          train_label_fraction=fraction,
          label_subset_seed=self.subset_seed(j),
          **dict(recipe.finetune_settings(fraction),
                 ft_proj_selector=selector)),
               section=section, method='simclr_finetune', width=width,
               head_layers=layers, selector=selector,
               label_fraction=fraction, subset=j)
      return name

    def supervised(width, fraction, j, section):
      name = f'supervised_w{width:g}_{pct(fraction)}_s{j}'
      self.add(name, self.flags(
          name, width, train_mode='finetune', train_label_fraction=fraction,
          label_subset_seed=self.subset_seed(j),
          **recipe.supervised_settings(fraction)),
               section=section, method='supervised', width=width,
               label_fraction=fraction, subset=j)
      return name

    if '1' in sections:
      for width in self.widths:
        path = pretrain(width)
        name = f'linear_eval_w{width:g}'
        self.add(name, self.flags(name, width, train_mode='linear_eval',
                                  checkpoint=path),
                 section='1', method='simclr_linear_eval', width=width,
                 label_fraction=1.0, subset=0)
        if width == self.teacher_width:
          # The same linear evaluation of a randomly initialised encoder:
          # what the architecture alone gives.
          name = f'random_linear_eval_w{width:g}'
          self.random_encoders[name] = (
              os.path.join(self.out, f'random_encoder_w{width:g}'), width)
          self.add(name, self.flags(
              name, width, train_mode='linear_eval',
              checkpoint=self.random_encoders[name][0]),
                   section='1', method='random_encoder_linear_eval',
                   width=width, label_fraction=1.0, subset=0)
        for fraction in self.fractions:
          for j in self.subsets(fraction, subsets):
            finetune(width, fraction, j, '1')
            supervised(width, fraction, j, '1')
    if '2' in sections:
      for layers in head_layers:
        for fraction in self.few:
          for j in self.subsets(fraction, subsets):
            for selector in range(layers + 1):
              finetune(head_width, fraction, j, '2', layers, selector)
    teacher = self.teacher_width
    if '3' in sections or '4' in sections:
      for fraction in self.few:
        for j in self.subsets(fraction, distill_subsets):
          teacher_dir = os.path.join(self.out, finetune(teacher, fraction,
                                                        j, 'teacher'))
          students = []
          if '3' in sections:
            supervised(head_width, fraction, j, '3')
            students += [('3', method, head_width, changes)
                         for method, changes in TARGETS]
          if '4' in sections:
            for width in self.widths:
              finetune(width, fraction, j, '4')
              supervised(width, fraction, j, '4')
              students.append(('4', 'simclr_distill', width, dict(
                  distill_on='all', distill_alpha=1.0)))
          for section, method, width, changes in students:
            values = dict(recipe.distill, **changes)
            extra, tag = {}, ''
            if section == '4' and width == teacher:
              # Self-distillation starts from the teacher's own
              # pretraining, as the demo's (its probe is not reused: it saw
              # every label), with the recipe's settings for that student.
              values.update(recipe.self_distill)
              extra['checkpoint'] = pretrain(width)
              tag = '_self'
            name = (f'distill_w{width:g}_{pct(fraction)}_s{j}_'
                    f'{values["distill_on"]}_a{values["distill_alpha"]:g}'
                    f'{tag}')
            self.add(name, self.flags(
                name, width, train_mode='distill',
                teacher_checkpoint=teacher_dir, **values, **extra),
                     section=section, method=method, width=width,
                     label_fraction=fraction, subset=j,
                     teacher_width=teacher)

  # -- running ------------------------------------------------------------

  def run(self, progress, total_stages, after_stage=None):
    """Runs the plan; after_stage(rows so far) is called after each stage
    (the outputs are rewritten, so a killed study leaves its tables)."""
    rows = self.raw_pixel_rows(self.subset_count)
    for name, values, stage_rows in self.plan:
      if name in self.random_encoders:
        path, width = self.random_encoders[name]
        experiment.random_encoder(path, self.seed, arch(width),
                                  self.recipe.image_size)
      def run_one(on_progress, values=values):
        result, params, reused = experiment.run_stage(values, on_progress)
        return (result, params), reused
      result, params = progress.stage(
          f'seed {self.seed} {name}', stage_cost(values), total_stages,
          run_one, lambda output: _describe(output[0]))
      for row in stage_rows:
        rows.append(dict(row, seed=self.seed, stage=name, params=params,
                         top1=result['eval/label_top_1_accuracy'],
                         top5=result['eval/label_top_5_accuracy']))
      if after_stage is not None:
        after_stage(rows)
    return rows

  def raw_pixel_rows(self, count):
    """The raw-pixel baselines' rows; each (fraction, subset, C, k) is
    fitted once and kept in <seed dir>/raw_pixels.json (a restarted study
    does not refit them: logistic regression on 60,000 Fashion-MNIST images
    takes minutes)."""
    import json  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.out, 'raw_pixels.json')
    done = {}
    if os.path.exists(path):
      with open(path) as f:
        done = json.load(f)
    rows = []
    for fraction in self.fractions:
      for j in self.subsets(fraction, count):
        settings = (self.recipe.dataset, fraction, self.subset_seed(j),
                    self.recipe.raw_logistic_c[fraction],
                    self.recipe.raw_knn_k[fraction])
        key = json.dumps(settings)
        if key not in done:
          done[key] = experiment.raw_pixel_scores(
              self.data_dir, experiment.TRAIN_SPLIT, experiment.TEST_SPLIT,
              fraction, self.subset_seed(j), settings[3], settings[4],
              self.recipe.dataset)
          os.makedirs(self.out, exist_ok=True)
          experiment.write_json(path, done)
        for method, result in done[key].items():
          rows.append(dict(section='1', method=method, width=0,
                           label_fraction=fraction, subset=j, seed=self.seed,
                           stage=None, params=0,
                           top1=result['eval/label_top_1_accuracy'],
                           top5=result['eval/label_top_5_accuracy']))
    return rows


def _describe(result):
  top1 = result.get('eval/label_top_1_accuracy')
  return '' if top1 is None else f', top-1 {100 * top1:.1f}%'


# ---------------------------------------------------------------------------
# Tables.

def _plain(method):
  """The fine-tuning of section 1 (3-layer head, from its first layer)."""
  return dict(head_layers=3, selector=1) if method == 'simclr_finetune' else {}


def _group(rows, **match):
  return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _cell(rows):
  """'mean ± std (n)' of top-1 % over the rows (seeds x label subsets)."""
  if not rows:
    return '-'
  return f'{experiment.mean_std(r["top1"] for r in rows)} ({len(rows)})'


def _params(rows, width):
  """The encoder's parameter count at `width` ('-' before any run of it)."""
  counts = [r['params'] for r in rows if r.get('width') == width and
            r.get('params')]
  return f'{counts[0] / 1e6:.3f}M' if counts else '-'


def _mean(rows):
  return sum(r['top1'] for r in rows) / len(rows) if rows else None


def size_section(rows, widths, fractions):
  lines = ['| labels | width | params | SimCLR fine-tuned | supervised | '
           'SimCLR - supervised | linear eval (all labels) |',
           '|---|---|---|---|---|---|---|']
  for fraction in fractions:
    for width in widths:
      simclr = _group(rows, method='simclr_finetune', width=width,
                      head_layers=3, selector=1, label_fraction=fraction)
      supervised = _group(rows, method='supervised', width=width,
                          label_fraction=fraction)
      linear = _group(rows, method='simclr_linear_eval', width=width)
      params = _params(rows, width)
      gap = (experiment.percent(_mean(simclr) - _mean(supervised))
             if simclr and supervised else '-')
      lines.append(f'| {100 * fraction:g}% | {width:g}x | '
                   f'{params} | {_cell(simclr)} | '
                   f'{_cell(supervised)} | {gap} | '
                   f'{_cell(linear) if fraction == 1 else ""} |')
    for method in ('raw_pixels_logistic_regression', 'raw_pixels_knn'):
      lines.append(f'| {100 * fraction:g}% | {method} | - | | '
                   f'{_cell(_group(rows, method=method, label_fraction=fraction))}'
                   f' | | |')
  random = _group(rows, method='random_encoder_linear_eval')
  if random:
    lines.append(f'| 100% | random encoder {widths[-1]:g}x | '
                 f'{_params(rows, widths[-1])} | | | | {_cell(random)} |')
  gains = ['', '| labels | SimCLR: largest - smallest width | supervised: '
           'largest - smallest | best baseline (headroom to 100%) |',
           '|---|---|---|---|']
  for fraction in fractions:
    def gain(method):
      small = _group(rows, method=method, width=widths[0],
                     label_fraction=fraction, **_plain(method))
      large = _group(rows, method=method, width=widths[-1],
                     label_fraction=fraction, **_plain(method))
      if not small or not large:
        return '-'
      return experiment.percent(_mean(large) - _mean(small))
    baselines = [
        _mean(_group(rows, method=m, label_fraction=fraction))
        for m in ('raw_pixels_logistic_regression', 'raw_pixels_knn')] + [
            _mean(_group(rows, method='supervised', width=w,
                         label_fraction=fraction)) for w in widths]
    baselines = [b for b in baselines if b is not None]
    best = max(baselines) if baselines else None
    headroom = '-' if best is None else (
        f'{experiment.percent(best)} ({experiment.percent(1 - best)})')
    gains.append(f'| {100 * fraction:g}% | {gain("simclr_finetune")} | '
                 f'{gain("supervised")} | {headroom} |')
  return '\n'.join(lines + gains)


def head_section(rows, head_layers, fractions, width):
  header = '| head layers | fine-tuned from | ' + ' | '.join(
      f'{100 * f:g}% labels' for f in fractions) + ' |'
  lines = [header, '|---|---|' + '---|' * len(fractions)]
  for layers in head_layers:
    for selector in range(layers + 1):
      where = ('head input' if selector == 0 else
               f'layer {selector}' + (' (output)' if selector == layers
                                      else ''))
      cells = [_cell(_group(rows, method='simclr_finetune', width=width,
                            head_layers=layers, selector=selector,
                            label_fraction=f))
               for f in fractions]
      lines.append(f'| {layers} | {where} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _target_rows(rows, fraction, teacher_width, student_width):
  """[(name, rows)] of Table 2 at `fraction`: the teacher, label only, then
  each of TARGETS (the table and the plot both read this)."""
  return ([(f'teacher: SimCLR fine-tuned {teacher_width:g}x',
            _teacher_rows(rows, teacher_width, fraction)),
           (LABEL_ONLY, _distill_matched(rows, _group(
               rows, method='supervised', width=student_width,
               label_fraction=fraction)))] +
          [(method, _group(rows, section='3', method=method,
                           label_fraction=fraction))
           for method, _ in TARGETS])


def targets_section(rows, fractions, teacher_width, student_width):
  header = '| targets | ' + ' | '.join(f'{100 * f:g}% labels'
                                      for f in fractions) + ' |'
  lines = [header, '|---|' + '---|' * len(fractions)]
  columns = [_target_rows(rows, f, teacher_width, student_width)
             for f in fractions]
  for i, (name, _) in enumerate(columns[0] if columns else []):
    lines.append(f'| {name} | ' + ' | '.join(
        _cell(column[i][1]) for column in columns) + ' |')
  return '\n'.join(lines)


def _teacher_rows(rows, teacher_width, fraction):
  return _distill_matched(rows, _group(
      rows, method='simclr_finetune', width=teacher_width, selector=1,
      head_layers=3, label_fraction=fraction))


def _distill_matched(rows, candidates):
  """The candidates on the (seed, subset) pairs the students used."""
  used = {(r['seed'], r['subset'], r['label_fraction']) for r in rows
          if r['section'] in ('3', '4') and r['method'] != 'supervised'}
  seen, matched = set(), []
  for r in candidates:
    key = (r['seed'], r['subset'], r['label_fraction'])
    if key in used and key not in seen:
      seen.add(key)
      matched.append(r)
  return matched


def _student_rows(rows, width, fraction):
  """(distilled, its own SimCLR fine-tuning, its supervised training) of the
  `width` student at `fraction`, the last two on the students' subsets (the
  table and the plot both read this)."""
  distilled = _group(rows, section='4', method='simclr_distill', width=width,
                     label_fraction=fraction)
  own = _distill_matched(rows, _group(
      rows, method='simclr_finetune', width=width, selector=1, head_layers=3,
      label_fraction=fraction))
  supervised = _distill_matched(rows, _group(
      rows, method='supervised', width=width, label_fraction=fraction))
  return distilled, own, supervised


def distill_section(rows, widths, fractions, teacher_width):
  lines = ['| labels | student width | params | distilled from the '
           f'{teacher_width:g}x teacher | its own SimCLR fine-tuning | '
           'its supervised training | teacher |',
           '|---|---|---|---|---|---|---|']
  for fraction in fractions:
    teacher = _cell(_teacher_rows(rows, teacher_width, fraction))
    for width in widths:
      distilled, own, supervised = _student_rows(rows, width, fraction)
      params = _params(rows, width)
      name = f'{width:g}x' + (' (self)' if width == teacher_width else '')
      lines.append(f'| {100 * fraction:g}% | {name} | {params} | '
                   f'{_cell(distilled)} | {_cell(own)} | '
                   f'{_cell(supervised)} | {teacher} |')
  return '\n'.join(lines)


def write_outputs(rows, out, seconds, settings, machine, plots=True):
  """Writes study.md and results.json (and the plots, unless plots=False);
  returns study.md's text."""
  widths = sorted({float(w) for w in settings['widths']})
  fractions = sorted(settings['label_fractions'])
  few = [f for f in fractions if f < 1]
  sections = settings['sections']
  teacher = widths[-1]
  recipe = experiment.RECIPES[settings.get('dataset', 'digits')]
  parts = [
      f'# SimCLRv2\'s claims on {recipe.name} (seeds {settings["seeds"]}, '
      f'scale {settings["scale"]:g})\n',
      f'Top-1 % on the {recipe.test_images}: mean ± standard deviation over '
      f'seeds x label subsets, (n) runs. Made on: '
      f'{experiment.machine_line(machine)}; {seconds / 60:.1f} minutes.\n']
  if '1' in sections:
    parts += ['## 1. Network size and label fraction\n',
              size_section(rows, widths, fractions) + '\n']
  if '2' in sections:
    parts += [f'## 2. Projection-head depth and the layer fine-tuned from '
              f'({settings["head_width"]:g}x)\n',
              head_section(rows, settings['head_layers'], few,
                           settings['head_width']) + '\n']
  if '3' in sections:
    parts += [f'## 3. Which targets teach a student ('
              f'{settings["head_width"]:g}x from scratch)\n',
              targets_section(rows, few, teacher, settings['head_width']) +
              '\n']
  if '4' in sections:
    parts += ['## 4. Self-distillation and big-to-small distillation\n',
              distill_section(rows, widths, few, teacher) + '\n']
  text = '\n'.join(parts)
  with open(os.path.join(out, 'study.md'), 'w') as f:
    f.write(text)
  experiment.write_json(os.path.join(out, 'results.json'), dict(
      rows=rows, seconds=seconds, settings=settings, machine=machine))
  if plots:
    plot(rows, out, widths, fractions, settings)
  return text


# ---------------------------------------------------------------------------
# Plots.

def plot(rows, out, widths, fractions, settings):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def errorbar(ax, xs, groups, **kwargs):
    points = [(x, g) for x, g in zip(xs, groups) if g]
    if not points:
      return
    ax.errorbar([p[0] for p in points],
                [100 * np.mean([r['top1'] for r in p[1]]) for p in points],
                yerr=[100 * np.std([r['top1'] for r in p[1]])
                      for p in points], marker='o', capsize=3, **kwargs)

  if '1' in settings['sections']:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, fraction in enumerate(fractions):
      color = f'C{i}'
      for method, style in (('simclr_finetune', '-'), ('supervised', '--')):
        groups = [_group(rows, method=method, width=w,
                         label_fraction=fraction, **_plain(method))
                  for w in widths]
        xs = [g[0]['params'] if g else 0 for g in groups]
        errorbar(ax, xs, groups, color=color, linestyle=style,
                 label=f'{100 * fraction:g}% labels, '
                       f'{"SimCLR" if method != "supervised" else "supervised"}')
    ax.set_xscale('log')
    ax.set_xlabel('parameters (ResNet-18 up to the average pool)')
    ax.set_ylabel('top-1 on test (%)')
    ax.set_title('Network size (dashed: supervised from scratch)')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'size.png'), dpi=120)
    plt.close(fig)
  few = [f for f in fractions if f < 1]
  if '2' in settings['sections'] and few:
    fig, axes = plt.subplots(1, len(few), figsize=(4 * len(few), 3.6),
                             squeeze=False)
    for ax, fraction in zip(axes[0], few):
      for layers in settings['head_layers']:
        selectors = list(range(layers + 1))
        errorbar(ax, selectors, [
            _group(rows, method='simclr_finetune',
                   width=settings['head_width'], head_layers=layers,
                   selector=s, label_fraction=fraction)
            for s in selectors],
                 label=f'{layers}-layer head')
      ax.set_xlabel('fine-tuned from (0: head input)')
      ax.set_ylabel('top-1 on test (%)')
      ax.set_title(f'{100 * fraction:g}% labels')
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'head.png'), dpi=120)
    plt.close(fig)
  teacher_width = max(widths)
  if '3' in settings['sections'] and few:
    # Table 2: one group of bars per label fraction, the teacher beside.
    columns = [_target_rows(rows, f, teacher_width, settings['head_width'])
               for f in few]
    names = [name for name, _ in columns[0]]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    lowest = 100.0
    for i, name in enumerate(names):
      groups = [column[i][1] for column in columns]
      xs = np.arange(len(few)) + 0.8 * i / len(names)
      heights = [100 * np.mean([r['top1'] for r in g]) if g else 0
                 for g in groups]
      lowest = min([lowest] + [h for h in heights if h])
      ax.bar(xs, heights, width=0.8 / len(names),
             label=name.replace(' (supervised from scratch)', '').replace(
                 'teacher: SimCLR fine-tuned ', 'teacher '))
    ax.set_xticks(np.arange(len(few)) + 0.4 - 0.4 / len(names))
    ax.set_xticklabels([f'{100 * f:g}% labels' for f in few])
    ax.set_ylabel('top-1 on test (%)')
    ax.set_title(f'Which targets teach a {settings["head_width"]:g}x student')
    ax.set_ylim(bottom=max(0, 10 * int(lowest // 10) - 10))
    ax.grid(True, axis='y', alpha=0.3)
    ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.1),
              ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'targets.png'), dpi=120)
    plt.close(fig)
  if '4' in settings['sections'] and few:
    # Table 3: each width distilled, fine-tuned on its own and trained from
    # scratch, against parameters; the teacher as a line.
    fig, axes = plt.subplots(1, len(few), figsize=(4.5 * len(few), 3.8),
                             squeeze=False)
    for ax, fraction in zip(axes[0], few):
      students = [_student_rows(rows, w, fraction) for w in widths]
      for k, (label, style) in enumerate((
          (f'distilled from {teacher_width:g}x', '-'),
          ('its own SimCLR fine-tuning', '--'),
          ('supervised from scratch', ':'))):
        groups = [student[k] for student in students]
        xs = [g[0]['params'] if g else 0 for g in groups]
        errorbar(ax, xs, groups, linestyle=style, label=label)
      teacher = _teacher_rows(rows, teacher_width, fraction)
      if teacher:
        ax.axhline(100 * np.mean([r['top1'] for r in teacher]),
                   color='grey', linewidth=0.8, label='teacher')
      ax.set_xscale('log')
      ax.set_xlabel('student parameters')
      ax.set_ylabel('top-1 on test (%)')
      ax.set_title(f'{100 * fraction:g}% labels')
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'distillation.png'), dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------

def _recipe_defaults(recipe):
  """Flags left unset take the recipe's study settings."""
  if FLAGS.out is None:
    FLAGS.out = os.path.join(ROOT, recipe.study_out)
  if FLAGS.widths is None:
    FLAGS.widths = [f'{w:g}' for w in recipe.study_widths]
  if FLAGS.sections is None:
    FLAGS.sections = list(recipe.study_sections)
  if FLAGS.subsets is None:
    FLAGS.subsets = recipe.study_subsets
  if FLAGS.head_width is None:
    FLAGS.head_width = recipe.small['width_multiplier']


def _check_flags(recipe):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.check_demo_flags(
      FLAGS, supported_fractions=list(recipe.raw_logistic_c))
  for flag in ('widths', 'head_layers'):
    for value in getattr(FLAGS, flag):
      try:
        number = float(value)
      except ValueError:
        cli_checks.fail(f'--{flag}: {value!r} is not a number')
      if not number > 0 or (flag == 'head_layers' and number != int(number)):
        cli_checks.fail(f'--{flag}: {value!r}: expected '
                        f'{"a positive integer" if flag == "head_layers" else "> 0"}')
  if not FLAGS.widths:
    cli_checks.fail('--widths: empty (e.g. --widths=0.125,0.5)')
  for section in FLAGS.sections:
    if section not in SECTIONS:
      cli_checks.fail(f'--sections: {section!r}: expected some of '
                      f'{",".join(SECTIONS)}')
  for flag in ('subsets', 'distill_subsets'):
    if getattr(FLAGS, flag) < 1:
      cli_checks.fail(f'--{flag}={getattr(FLAGS, flag)}: expected >= 1')


def main(argv):
  del argv
  recipe = experiment.RECIPES[FLAGS.dataset]
  _recipe_defaults(recipe)
  _check_flags(recipe)
  out = os.path.abspath(FLAGS.out)
  data_dir = FLAGS.data_dir or os.path.join(out, 'tensorflow_datasets')
  os.makedirs(out, exist_ok=True)
  with console.Console(out, FLAGS.verbose, 'study') as terminal:
    if FLAGS.tune:
      demo_tuning.tune(
          recipe, data_dir, steps, out,
          [f for f in sorted(float(f) for f in FLAGS.label_fractions)
           if f < 1], groups=FLAGS.tune_groups, say=terminal.say)
    else:
      run_study(terminal, out, data_dir, recipe)


PLOT_SECONDS = 300


def run_study(terminal, out, data_dir, recipe=experiment.DIGITS):
  widths = sorted(float(w) for w in FLAGS.widths)
  fractions = sorted(float(f) for f in FLAGS.label_fractions)
  head_layers = [int(n) for n in FLAGS.head_layers]
  settings = dict(dataset=recipe.dataset,
                  seeds=[int(s) for s in FLAGS.seeds], scale=FLAGS.scale,
                  widths=widths, label_fractions=fractions,
                  subsets=FLAGS.subsets,
                  distill_subsets=FLAGS.distill_subsets,
                  head_layers=head_layers, head_width=FLAGS.head_width,
                  sections=list(FLAGS.sections))
  studies = []
  for seed in settings['seeds']:
    study = Study(seed, os.path.join(out, f'seed{seed}'), data_dir, widths,
                  fractions, recipe)
    study.build_plan(settings['sections'], FLAGS.subsets,
                     FLAGS.distill_subsets, head_layers, FLAGS.head_width)
    studies.append(study)
  total = sum(len(s.plan) for s in studies)
  progress = experiment.Progress(sum(
      stage_cost(values) for s in studies for _, values, _ in s.plan),
                                 terminal)
  terminal.say(f'study: {total} stages over {len(studies)} seed(s), outputs '
               f'in {out}')
  started = time.time()
  machine = experiment.machine()
  rows = []
  plotted = [time.time()]
  for study in studies:
    def partial(seed_rows, done=list(rows)):
      # The tables after every stage; the plots (about a second) at most
      # every PLOT_SECONDS, and after each seed.
      plots = time.time() - plotted[0] >= PLOT_SECONDS
      if plots:
        plotted[0] = time.time()
      write_outputs(done + seed_rows, out, time.time() - started, settings,
                    machine, plots=plots)
    rows += study.run(progress, total, after_stage=partial)
    text = write_outputs(rows, out, time.time() - started, settings, machine)
  terminal.say(text)
  terminal.say(f'study finished in {(time.time() - started) / 60:.1f} '
               f'minutes; outputs in {out}')


if __name__ == '__main__':
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)
