"""What the demo (tools/demo.py) and the study (tools/study.py) share: running a
stage (one simclr.train configuration) so that a finished stage is not run
again, the raw-pixel baselines on the digits, grouping rows into means and
spreads, the stage lines (Progress, through tools/console.py), and where a
table was made.

A stage is resumable: its flag values are written to <model_dir>/stage.json
when it finishes; a later run with the same values reads result.json
instead of training again. A stage killed midway resumes from its newest
checkpoint (simclr.train does that by itself).
"""

import json
import math
import os
import platform
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from tools import console as console_lib

STAGE_FILE = 'stage.json'

# ---------------------------------------------------------------------------
# The digits recipe: every setting chosen on the validation part of the
# training split by `python tools/demo.py --tune` (docs/demo_tuning.md).

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
# With every label (the study; not in the validation grids): the 10%
# setting.
SUPERVISED_ALL_LABELS = SUPERVISED[0.1]
DISTILL = dict(
    train_batch_size=64, train_steps=200, optimizer='momentum',
    learning_rate=0.4, learning_rate_scaling='linear', warmup_epochs=0,
    weight_decay=0.0, distill_temperature=1.0, distill_alpha=1.0,
    crop_min_area=0.3)
# Raw-pixel baselines: logistic regression's inverse L2 strength C and the
# neighbours k, per label fraction (1.0: all labels).
RAW_LOGISTIC_C = {0.01: 100.0, 0.1: 1.0, 1.0: 1.0}
RAW_KNN_K = {0.01: 1, 0.1: 1, 1.0: 1}


def _jsonable(values: Dict[str, Any]) -> Dict[str, Any]:
  return json.loads(json.dumps(values, sort_keys=True, default=str))


def encoder_params(model) -> int:
  """The ResNet's weights up to the average pool (frozen ones too), as in
  SimCLRv2's Table 1, without BN moving statistics."""
  return int(sum(np.prod(v.shape) for v in model.resnet.variables
                 if 'moving_' not in v.name))


def run_stage(flag_values: Dict[str, Any], on_progress=None):
  """Runs one tf2/run.py configuration in this process, unless the same
  configuration already finished in its model_dir. Returns (result dict,
  encoder parameter count, whether it was reused). on_progress: passed to
  simclr.train (a Console.live line's callback)."""
  import simclr  # pylint: disable=g-import-not-at-top
  model_dir = flag_values['model_dir']
  stage_path = os.path.join(model_dir, STAGE_FILE)
  result_path = os.path.join(model_dir, 'result.json')
  wanted = _jsonable(flag_values)
  if os.path.exists(stage_path) and os.path.exists(result_path):
    with open(stage_path) as f:
      done = json.load(f)
    if done.get('flags') == wanted:
      with open(result_path) as f:
        return json.load(f), done['params'], True
  result = simclr.train(on_progress=on_progress, **flag_values)
  params = encoder_params(simclr.load_model(model_dir))
  with open(stage_path + '.tmp', 'w') as f:
    json.dump(dict(flags=wanted, params=params), f, indent=1)
  os.replace(stage_path + '.tmp', stage_path)
  return result, params, False


def raw_pixels(data_dir: str, split: str):
  """(ids [N], the 8x8 digits' pixels float [N, 64] in [0, 1], labels [N])
  of a digits split, in the split's order."""
  from simclr.data import datasets  # pylint: disable=g-import-not-at-top
  from simclr.data import digits  # pylint: disable=g-import-not-at-top
  ids, labels = datasets.load_source('digits', data_dir).ids_and_labels(split)
  index = [int(i.split('_')[1]) for i in ids]
  return np.asarray(ids), digits.load_digits().data[index] / 16.0, labels


def label_subset_mask(ids, labels, fraction: float, seed: int) -> np.ndarray:
  """Which examples carry a label at `fraction`: the subset fine-tuning
  draws with label_subset_seed=seed (simclr.data.subsets.draw_subset)."""
  from simclr.data import subsets  # pylint: disable=g-import-not-at-top
  if fraction >= 1:
    return np.ones(len(ids), bool)
  chosen = set(subsets.draw_subset(ids, labels, fraction, seed))
  return np.array([i in chosen for i in ids])


def raw_pixel_scores(data_dir: str, train_split: str, eval_split: str,
                     fraction: float, subset_seed: int, logistic_c: float,
                     knn_k: int) -> Dict[str, Dict[str, float]]:
  """Top-1 / top-5 of logistic regression and k-NN on the raw 8x8 pixels,
  fitted on the label subset of (fraction, subset_seed)."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top
  train_ids, train_x, train_y = raw_pixels(data_dir, train_split)
  _, test_x, test_y = raw_pixels(data_dir, eval_split)
  keep = label_subset_mask(train_ids, train_y, fraction, subset_seed)
  scores = {}
  for method, classifier in (
      ('raw_pixels_logistic_regression', linear_model.LogisticRegression(
          C=logistic_c, max_iter=5000)),
      ('raw_pixels_knn', neighbors.KNeighborsClassifier(knn_k))):
    classifier.fit(train_x[keep], train_y[keep])
    top = classifier.classes_[np.argsort(-classifier.predict_proba(test_x),
                                         axis=1)]
    scores[method] = {
        'eval/label_top_1_accuracy': float(np.mean(top[:, 0] == test_y)),
        'eval/label_top_5_accuracy': float(np.mean(
            (top[:, :5] == test_y[:, None]).any(1)))}
  return scores


def summarise(rows: Sequence[Dict[str, Any]], keys: Sequence[str]
              ) -> List[Dict[str, Any]]:
  """Mean and standard deviation of top1 / top5 over the rows that agree on
  `keys` (e.g. over seeds and label subsets), in the order rows first name
  each group. Each summary holds the keys, n, top1/top5 mean and std, the
  runs' top1 values and params."""
  groups = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in keys), []).append(row)
  summary = []
  for key, members in groups.items():
    top1 = np.array([m['top1'] for m in members])
    top5 = np.array([m['top5'] for m in members])
    summary.append(dict(
        zip(keys, key), n=len(members), seeds=[m['seed'] for m in members],
        top1_runs=[float(v) for v in top1], top1_mean=float(top1.mean()),
        top1_std=float(top1.std()), top5_mean=float(top5.mean()),
        top5_std=float(top5.std()), params=members[0]['params']))
  return summary


def machine() -> Dict[str, Any]:
  """Where a table was made: CPU model, cores, the kernel-relevant flags,
  TensorFlow's version (results differ in the last digits between machine
  kinds: oneDNN picks other kernels)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr import cpu  # pylint: disable=g-import-not-at-top
  model, cores, flags = cpu.description()
  return dict(cpu=model, cores=cores, cpu_flags=list(flags),
              tensorflow=tf.__version__, python=platform.python_version())


def machine_line(info: Dict[str, Any]) -> str:
  return (f'{info["cpu"]}, {info["cores"]} cores, flags '
          f'{" ".join(info["cpu_flags"]) or "unknown"}; TensorFlow '
          f'{info["tensorflow"]}')


class Progress:
  """One line per stage on the console: 'stage k/n name: 41s, top-1 83.0% |
  5m12s elapsed, about 20m left', and the stage's live line while it runs.
  The estimate weighs the remaining stages by `cost` (e.g. steps x width
  factor) at the rate measured so far."""

  def __init__(self, total_cost: float, console: console_lib.Console):
    self.total_cost = total_cost
    self.done_cost = 0.0
    self.trained_cost = 0.0
    self.trained_seconds = 0.0
    self.count = 0
    self.started = time.time()
    self.console = console

  def stage(self, name: str, cost: float, total_stages: int,
            run: Callable[[Any], Any], describe: Callable[[Any], str]):
    """run(on_progress) -> (output, reused) runs the stage; describe(output)
    is the result's part of the line (e.g. ', top-1 83.0%')."""
    started = time.time()
    with self.console.live(
        f'stage {self.count + 1}/{total_stages} {name}') as on_progress:
      output, reused = run(on_progress)
    seconds = time.time() - started
    self.count += 1
    self.done_cost += cost
    if not reused:
      self.trained_cost += cost
      self.trained_seconds += seconds
    left = max(self.total_cost - self.done_cost, 0.0)
    eta = console_lib.duration(
        left * self.trained_seconds / self.trained_cost
        if self.trained_cost else math.nan)
    self.console.say(
        f'stage {self.count}/{total_stages} {name}: '
        f'{"done before" if reused else console_lib.duration(seconds)}'
        f'{describe(output)} | '
        f'{console_lib.duration(time.time() - self.started)} elapsed, about '
        f'{eta} left')
    return output


def percent(value: Optional[float], digits: int = 1) -> str:
  return '-' if value is None else f'{100 * value:.{digits}f}'


def write_json(path: str, value):
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(path + '.tmp', path)


def mean_std(values: Iterable[float]) -> str:
  values = np.asarray(list(values), float)
  if values.size > 1:
    return f'{100 * values.mean():.1f} ± {100 * values.std():.1f}'
  return f'{100 * values.mean():.1f}'
