"""What the demo (tools/demo.py) and the study (tools/study.py) share: each
dataset's recipe (Recipe: every setting, chosen on validation), running a
stage (one simclr.train configuration) so that a finished stage is not run
again, the raw-pixel and random-encoder baselines, grouping rows into means
and spreads, the stage lines (Progress, through tools/console.py), and where
a table was made.

A stage is resumable: its flag values are written to <model_dir>/stage.json
when it starts and, with its parameter count, when it finishes; a later run
with the same values reads result.json instead of training again. A stage
killed midway resumes from its newest checkpoint (simclr.train does that by
itself). A stage whose values changed (a recipe or grid edited since) starts
afresh: its model_dir is emptied first, never resumed from the other
configuration's checkpoints.
"""

import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from absl import logging
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
# With every label the study fine-tunes for the supervised baseline's step
# budget (600 steps, chosen on validation for the baseline): the demo's 100
# steps were tuned at 1% and 10% only and are 4.5 epochs of all 1,438 digits.
ALL_LABELS_FINETUNE_STEPS = 600


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Every setting of the demo / study on one dataset.

  dataset: the --dataset name; teacher / small: architectures (the teacher
  and self-distilled student, the smaller student); augment: pretraining's
  (and, unless a stage overrides crop_min_area, every stage's) augmentation;
  pretrain / finetune / distill: stage settings; self_distill: what the
  self-distilled student (initialised from pretraining) changes in distill;
  finetune_steps and supervised: per label fraction (1.0: every label);
  raw_logistic_c / raw_knn_k: the raw-pixel baselines per label fraction;
  study_*: the study's defaults on this dataset.
  """
  dataset: str
  name: str             # 'the digits', in titles
  test_images: str      # '359 test digits', in titles
  image_size: int
  teacher: Dict[str, Any]
  small: Dict[str, Any]
  augment: Dict[str, Any]
  pretrain: Dict[str, Any]
  finetune: Dict[str, Any]
  finetune_steps: Dict[float, int]
  supervised: Dict[float, Dict[str, Any]]
  distill: Dict[str, Any]
  raw_logistic_c: Dict[float, float]
  raw_knn_k: Dict[float, int]
  study_widths: Sequence[float]
  study_sections: Sequence[str]
  study_subsets: int
  study_out: str
  self_distill: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def finetune_settings(self, fraction: float) -> Dict[str, Any]:
    """Fine-tuning's flags at a label fraction."""
    return dict(self.finetune, train_steps=self.finetune_steps[fraction])

  def supervised_settings(self, fraction: float) -> Dict[str, Any]:
    """The supervised baseline's flags at a label fraction: fine-tuning's
    with no pretrained weights (ft_proj_selector=0) and its own optimiser,
    learning rate, steps and crops."""
    return dict(self.finetune, ft_proj_selector=0, **self.supervised[fraction])


DIGITS = Recipe(
    dataset='digits', name='the digits', test_images='359 test digits',
    image_size=IMAGE_SIZE, teacher=TEACHER,
    small=SMALL, augment=AUGMENT, pretrain=PRETRAIN, finetune=FINETUNE,
    finetune_steps={0.01: FINETUNE['train_steps'],
                    0.1: FINETUNE['train_steps'],
                    1.0: ALL_LABELS_FINETUNE_STEPS},
    supervised={**SUPERVISED, 1.0: SUPERVISED[0.1]}, distill=DISTILL,
    raw_logistic_c=RAW_LOGISTIC_C, raw_knn_k=RAW_KNN_K,
    study_widths=(0.03125, 0.0625, 0.125, 0.25),
    study_sections=('1', '2', '3', '4'), study_subsets=2,
    study_out='study_out')

# ---------------------------------------------------------------------------
# The Fashion-MNIST recipe: 60,000 training images (the unlabeled pool),
# 10,000 test images, 28x28 grey. Chosen on train[:80%] / train[80%:] by
# `python tools/study.py --dataset=fashion_mnist --tune`
# (docs/study_fashion_mnist.md), sized so that one seed of the study runs in
# about an hour on 2 cores.
FASHION_MNIST = Recipe(
    dataset='fashion_mnist', name='Fashion-MNIST',
    test_images='10,000 test images',
    image_size=16,
    teacher=dict(resnet_depth=18, width_multiplier=0.25),
    # A quarter of the teacher's parameters.
    small=dict(resnet_depth=18, width_multiplier=0.125),
    # Clothes stay clothes when mirrored; grey: brightness and contrast, at
    # strength 1.0 (validation, 900 steps: fine-tuned 79.3% / 87.7% at 1% /
    # 10% against 78.1% / 87.3% at 0.5).
    augment=dict(crop_min_area=0.3, use_flip=True, color_jitter_strength=1.0,
                 use_blur=False),
    # 2,700 steps of 128 pairs: about six epochs of the 60,000 images
    # (validation, jitter 0.5: fine-tuned 79.1% / 88.2% against 78.1% /
    # 87.3% after 900 steps; temperature 0.2 and the paper's crops gained
    # nothing at 900 steps).
    pretrain=dict(
        train_batch_size=128, train_steps=2700, learning_rate=1.0,
        learning_rate_scaling='linear', weight_decay=1e-4, warmup_epochs=0.2,
        temperature=0.5, memory_size=0, lineareval_while_pretraining=True),
    # Momentum lr 0.05 (x 64/256), whole images, 800 steps of 64 at 1% and
    # 10% (85 and 8.5 epochs of their 600 and 6,000 labels): the best of the
    # validation grid (200 steps were 2.7 epochs at 10%: 76.6% there). With
    # every label, the supervised baseline's 3,000 steps (3.2 epochs; not
    # tuned for fine-tuning at 100%).
    finetune=dict(
        train_batch_size=64, optimizer='momentum', learning_rate=0.05,
        learning_rate_scaling='linear', warmup_epochs=0, weight_decay=0.0,
        ft_proj_selector=1, crop_min_area=1.0),
    finetune_steps={0.01: 800, 0.1: 800, 1.0: 3000},
    # Adam lr 0.01 for 1,500 steps of 64, crops at 1% and whole images at
    # 10% (validation: 78.1% and 87.0%); with every label (not in the grid)
    # the 10% setting for 3,000 steps.
    supervised={
        0.01: dict(optimizer='adam', learning_rate=0.01, train_steps=1500,
                   crop_min_area=0.3),
        0.1: dict(optimizer='adam', learning_rate=0.01, train_steps=1500,
                  crop_min_area=1.0),
        1.0: dict(optimizer='adam', learning_rate=0.01, train_steps=3000,
                  crop_min_area=1.0),
    },
    # Distillation on all 60,000 images at temperature 1 (validation, the
    # teachers at 80.8% / 87.9%): the 0.125x student from scratch takes
    # momentum lr 0.4 for 1,800 steps of 128, 3.8 epochs (81.2% / 87.2%
    # against 80.9% / 86.2% after 600 steps); the self-distilled 0.25x
    # student, which starts from pretraining, lr 0.1 for 600 steps (81.2% /
    # 87.1%; lr 0.4 pulled it under its teacher: 79.8% / 84.7%).
    distill=dict(
        train_batch_size=128, train_steps=1800, optimizer='momentum',
        learning_rate=0.4, learning_rate_scaling='linear', warmup_epochs=0,
        weight_decay=0.0, distill_temperature=1.0, distill_alpha=1.0,
        crop_min_area=0.3),
    self_distill=dict(learning_rate=0.1, train_steps=600),
    # Raw pixels (784 grey values / 255): C=0.1 and k=5 at every fraction
    # (validation: 78.5 / 83.8 / 85.7 and 72.9 / 80.7 / 85.6).
    raw_logistic_c={0.01: 0.1, 0.1: 0.1, 1.0: 0.1},
    raw_knn_k={0.01: 5, 0.1: 5, 1.0: 5},
    study_widths=(0.125, 0.25), study_sections=('1', '3', '4'),
    study_subsets=1, study_out='study_fashion_out')

RECIPES = {recipe.dataset: recipe for recipe in (DIGITS, FASHION_MNIST)}


def stage_flags(recipe: Recipe, data_dir: str, train_split: str,
                eval_split: str, seed: int, model_dir: str,
                **values) -> Dict[str, Any]:
  """The tf2/run.py flag values of one stage on `recipe`'s dataset: the
  teacher's architecture and the pretraining augmentation unless `values`
  say otherwise; one checkpoint, at the end (an epoch of 1% of the digits is
  less than a batch: the published default of one per epoch would save every
  step)."""
  flag_values = dict(
      dataset=recipe.dataset, data_dir=data_dir, train_split=train_split,
      eval_split=eval_split, image_size=recipe.image_size, use_tpu=False,
      seed=seed, label_subset_seed=seed, deterministic=True, global_bn=False,
      eval_batch_size=400, steps_per_loop=50, mode='train_then_eval',
      export_saved_model=False, model_dir=model_dir, **recipe.teacher,
      **recipe.augment)
  flag_values.update(values)
  flag_values.setdefault('checkpoint_steps',
                         flag_values.get('train_steps', 0))
  return flag_values


def random_encoder(path: str, seed: int, architecture: Dict[str, Any],
                   image_size: int) -> str:
  """Writes a randomly initialised encoder (weights from `seed`) to path,
  unless it is there; returns path. Linear evaluation of it is the baseline
  that says what pretraining adds over the architecture alone.

  A checkpoint in the published object-graph layout beside our
  model_config.json, which --checkpoint reads like a model_dir (a SavedModel
  export of the same weights, as written before, took 10-20 s of tracing
  and is still read when it is there)."""
  import simclr  # pylint: disable=g-import-not-at-top
  from simclr import checkpoints  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    tf_keras.utils.set_random_seed(seed)
    model = simclr.build_model(simclr.ModelConfig(
        **architecture, image_size=image_size, num_classes=None,
        global_bn=False))
    partial = os.path.join(os.path.dirname(path) or '.',
                           '.incomplete-' + os.path.basename(path))
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    checkpoints.training_checkpoint(model).write(
        os.path.join(partial, 'random-0'))
    with open(os.path.join(partial, checkpoints.MODEL_CONFIG_FILE), 'w') as f:
      f.write(model.config.to_json())
    os.rename(partial, path)  # Whole or not at all.
  return path


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
  if os.path.exists(stage_path):
    with open(stage_path) as f:
      recorded = json.load(f)
    if recorded.get('flags') != wanted:
      # Another configuration's checkpoints: resuming from them would mix
      # two runs (e.g. continue 600 finished steps under a new schedule).
      logging.warning('%s: the stage\'s settings changed since it ran; '
                      'starting it afresh', model_dir)
      shutil.rmtree(model_dir)
    elif 'params' in recorded and os.path.exists(result_path):
      with open(result_path) as f:
        return json.load(f), recorded['params'], True
  if not os.path.exists(model_dir):
    os.makedirs(model_dir)
  if os.path.isdir(model_dir):  # Else simclr.train says what is wrong.
    write_json(stage_path, dict(flags=wanted))
  # Not part of the stage's identity (it changes speed, not results): the
  # stages share this process, where tf.data's autotuner would make the
  # release of each finished pipeline wait for its sleep, up to about a
  # minute at a time (bench/NOTES.md).
  result = simclr.train(on_progress=on_progress,
                        **dict(flag_values, input_autotune=False))
  params = encoder_params(simclr.load_model(model_dir))
  write_json(stage_path, dict(flags=wanted, params=params))
  return result, params, False



# ---------------------------------------------------------------------------
# Stages side by side: on a 2-core CPU one small network's training step
# leaves part of the second core idle (tracing is single-threaded, the input
# pipeline waits on the step and the step on it), so two stage processes,
# each on every core as one process would be, did the demo in 2m45s-3m13s
# instead of 3m20s-3m21s with the same table to the digit. One thread per
# process was faster still (2m31s) but one thread sums floats in another
# order than two, and a deterministic run carries that over hundreds of
# steps: the SimCLR rows came out lower on each of three seeds (docs/demo.md,
# bench/NOTES.md). Three processes were slower (3m30s): the cores were
# oversubscribed.


@dataclasses.dataclass
class Job:
  """One stage for run_stages: its tf2/run.py flag values, the names of the
  jobs that must finish first, and a random encoder to export first
  (random_encoder's arguments: path, seed, architecture, image size)."""
  name: str
  flag_values: Dict[str, Any]
  after: Sequence[str] = ()
  random_encoder: Optional[tuple] = None


@dataclasses.dataclass
class Done:
  """A finished job: run_stage's result, parameter count and whether the
  stage was reused, and its seconds (in the process that ran it)."""
  result: Dict[str, Any]
  params: int
  reused: bool
  seconds: float


_WORKER = {}


def _worker_init(progress, threads: int, verbosity: int, quiet: bool,
                 log_path: Optional[str]):
  """A stage process (spawned): absl at the tool's verbosity, library prints
  where the tool's go (file descriptor 2 is the log unless --verbose; with
  it, log_path gets the Python log as the tool's does), TensorFlow on
  `threads` intra-op threads (0: its default). Tells the tool its process
  id."""
  # First of all: an idle stage process ignores SIGTERM and SIGINT (Ctrl-C
  # reaches the whole process group). Killed by one, it would break the pool,
  # and the pool would then kill the stages still training before they save
  # (_run_job and the training loop handle the signals while a stage runs).
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  from absl import flags  # pylint: disable=g-import-not-at-top
  if quiet:
    os.dup2(2, 1)
  flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()  # absl's line format, as in the tool.
  logging.set_verbosity(verbosity)
  if log_path:
    import logging as python_logging  # pylint: disable=g-import-not-at-top
    handler = python_logging.StreamHandler(open(log_path, 'a', buffering=1))
    handler.setFormatter(logging.PythonFormatter())
    python_logging.getLogger().addHandler(handler)
  import simclr  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
  _WORKER['progress'] = progress
  progress.put((_PID, os.getpid()))


_PID = '(process id)'


class StageStopped(RuntimeError):
  """A stage process received SIGTERM or SIGINT outside a training loop
  (inside one, the loop saves a checkpoint and raises Preempted)."""

  def __init__(self, signal_name: str):
    super().__init__(f'{signal_name} received outside a training loop')
    self.signal_name = signal_name

  def __reduce__(self):
    return StageStopped, (self.signal_name,)


def _stop_stage(signum, frame):
  del frame
  raise StageStopped(signal.Signals(signum).name)


def _run(job: Job, runner: Callable, on_progress) -> Done:
  """One job, in whichever process runs it: its random encoder, then the
  stage."""
  started = time.time()
  if job.random_encoder:
    random_encoder(*job.random_encoder)
  result, params, reused = runner(job.flag_values, on_progress)
  return Done(result, params, reused, time.time() - started)


def _run_job(job: Job, runner: Callable) -> Done:
  """A job in a stage process: SIGTERM and SIGINT stop it (StageStopped, or
  Preempted with a checkpoint when they arrive in a training loop)."""
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _stop_stage)
  try:
    progress = _WORKER['progress']
    return _run(job, runner, lambda p: progress.put((job.name, p)))
  finally:
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, signal.SIG_IGN)


def run_stages(jobs: Sequence[Job], workers: int,
               console: console_lib.Console,
               on_done: Callable[[Job, Done], None],
               runner: Optional[Callable] = None,
               threads: int = 0) -> Dict[str, Done]:
  """Runs `jobs` (each after the jobs its `after` names) and returns their
  Done by name; on_done(job, done) as each finishes. runner(flag_values,
  on_progress) -> (result, params, reused) runs one stage: run_stage unless
  given (a module-level function, so that a stage process can import it).

  workers=1: one after another in this process, in the given order (each
  job's `after` must come before it), on every core. workers>1: that many
  spawned processes, each on `threads` intra-op threads (0: TensorFlow's
  default, every core, as in this process); a free process takes the first
  job in the given order whose `after` have finished, so list the longest
  chain first. The console shows the running jobs' progress on one updating
  line. A job's results do not depend on which process ran it or what ran
  there before (each stage seeds itself), but they differ in the last digits
  with the number of threads, which a deterministic run carries over its
  steps: threads=0 gives workers=1's numbers."""
  names = [job.name for job in jobs]
  if len(set(names)) != len(names):
    raise ValueError(f'jobs with the same name: {names}')
  for i, job in enumerate(jobs):
    unknown = [a for a in job.after if a not in names]
    if unknown:
      raise ValueError(f'job {job.name} runs after unknown jobs {unknown}')
    if workers <= 1 and any(names.index(a) > i for a in job.after):
      raise ValueError(f'job {job.name} is listed before what it runs after')
  runner = runner or run_stage
  done = {}
  if workers <= 1:
    for job in jobs:
      with console.live(job.name) as on_progress:
        done[job.name] = _run(job, runner, on_progress)
      on_done(job, done[job.name])
    return done
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top
  import queue as queue_lib  # pylint: disable=g-import-not-at-top
  context = multiprocessing.get_context('spawn')
  progress = context.Queue()
  waiting = list(jobs)
  running = {}  # future -> job
  shown = {}  # job name -> its latest LoopProgress
  pids = set()

  def stop(signum, frame):
    del frame
    # The stage processes save a checkpoint and stop (simclr.train's
    # preemption handling); the finally below waits for them.
    for pid in pids:
      try:
        os.kill(pid, signum)
      except ProcessLookupError:
        pass
    raise StagesStopped(f'{signal.Signals(signum).name} received: the '
                        f'running stages saved a checkpoint; run the same '
                        f'command again to resume them')

  import threading  # pylint: disable=g-import-not-at-top
  in_main_thread = threading.current_thread() is threading.main_thread()
  if in_main_thread:
    previous = signal.signal(signal.SIGTERM, stop)
  pool = concurrent.futures.ProcessPoolExecutor(
      max_workers=workers, mp_context=context, initializer=_worker_init,
      initargs=(progress, threads, logging.get_verbosity(),
                not console.verbose,
                console.log_path if console.verbose else None))
  try:
    while waiting or running:
      for job in list(waiting):
        if len(running) >= workers:
          break
        if all(a in done for a in job.after):
          waiting.remove(job)
          running[pool.submit(_run_job, job, runner)] = job
      if not running:
        raise ValueError('jobs wait on each other: '
                         f'{[job.name for job in waiting]}')
      finished, _ = concurrent.futures.wait(
          running, timeout=0.5,
          return_when=concurrent.futures.FIRST_COMPLETED)
      while True:
        try:
          name, loop = progress.get_nowait()
        except queue_lib.Empty:
          break
        if name == _PID:
          pids.add(loop)
        else:
          shown[name] = loop
      for future in finished:
        job = running.pop(future)
        done[job.name] = future.result()
        shown.pop(job.name, None)
        on_done(job, done[job.name])
      console.update(' | '.join(
          console_lib.progress_text(job.name, shown.get(job.name))
          for job in running.values()))
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    progress.close()
    for future, job in running.items():  # What the stopped stages said.
      if future.done() and not future.cancelled() and future.exception():
        error = future.exception()
        logging.warning('%s stopped: %s: %s', job.name,
                        type(error).__name__, error)
    if in_main_thread:
      signal.signal(signal.SIGTERM, previous)
  return done


class StagesStopped(RuntimeError):
  """run_stages received SIGTERM: its running stages saved a checkpoint."""

def raw_pixels(data_dir: str, split: str, dataset: str = 'digits'):
  """(ids [N], pixels float [N, D] in [0, 1], labels [N]) of a split, in the
  split's order: the digits' original 8x8 scans (64 values; the TFDS images
  are upsampled from them), other datasets' stored images (one channel when
  the image is grey: Fashion-MNIST's 784 values)."""
  from simclr.data import datasets  # pylint: disable=g-import-not-at-top
  source = datasets.load_source(dataset, data_dir)
  if dataset == 'digits':
    from simclr.data import digits  # pylint: disable=g-import-not-at-top
    ids, labels = source.ids_and_labels(split)
    index = [int(i.split('_')[1]) for i in ids]
    return np.asarray(ids), digits.load_digits().data[index] / 16.0, labels
  ids, images, labels = [], [], []
  for batch in source.read(split).batch(4096).as_numpy_iterator():
    ids.extend(i.decode('utf-8') for i in batch['id'])
    images.append(batch['image'])
    labels.append(batch['label'])
  images = np.concatenate(images)
  if (images == images[..., :1]).all():
    images = images[..., :1]  # Grey, repeated into three channels on read.
  return (np.asarray(ids, dtype=object),
          images.reshape(len(images), -1).astype(np.float32) / 255.0,
          np.concatenate(labels))


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
                     knn_k: int, dataset: str = 'digits'
                     ) -> Dict[str, Dict[str, float]]:
  """Top-1 / top-5 of logistic regression and k-NN on the raw pixels
  (raw_pixels), fitted on the label subset of (fraction, subset_seed)."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top
  train_ids, train_x, train_y = raw_pixels(data_dir, train_split, dataset)
  _, test_x, test_y = raw_pixels(data_dir, eval_split, dataset)
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
              onednn=cpu.onednn(), tensorflow=tf.__version__,
              python=platform.python_version())


def machine_line(info: Dict[str, Any]) -> str:
  kernels = {True: ', oneDNN kernels', False: ', Eigen kernels (oneDNN off)',
             None: ''}[info.get('onednn')]
  return (f'{info["cpu"]}, {info["cores"]} cores, flags '
          f'{" ".join(info["cpu_flags"]) or "unknown"}; TensorFlow '
          f'{info["tensorflow"]}{kernels}')


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
