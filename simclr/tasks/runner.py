"""A whole run from config objects: strategy, data, model, optimiser, the
orbit Controller (train / eval / checkpoints / summaries), results and
exports. tf2/run.py parses flags into these configs and calls `run`."""

import dataclasses
import json
import math
import os
import re
import signal
import time
from typing import Any, Dict, Optional

from absl import logging
import orbit
import tensorflow as tf
import tf_keras

from simclr import checkpoints
from simclr import data as data_lib
from simclr import distribute
from simclr import optimization
from simclr.configs import ModelConfig
from simclr.configs import TrainConfig
from simclr.models.momentum import MemoryQueue
from simclr.models.momentum import MomentumEncoder
from simclr.models.momentum import check_memory_size
from simclr.models.simclr_model import SimCLRModel
from simclr.models.simclr_model import build_model
from simclr.tasks import evaluator as evaluator_lib
from simclr.tasks import linear_eval
from simclr.tasks.trainer import NON_FINITE_MARKER
from simclr.tasks.trainer import NonFiniteLossError
from simclr.tasks.trainer import SimCLRTrainer
from simclr.tasks.trainer import TrainingState

# orbit's Controller prints a dict of every metric after each loop on top of
# logging it; ProgressReporter's one line replaces both on the console.
orbit.controller._log = lambda message: logging.debug('%s', message)  # pylint: disable=protected-access

DATA_MODE = {'pretrain': 'pretrain', 'finetune': 'finetune',
             'distill': 'distill', 'linear_eval': 'linear_eval'}
# Architecture fields a checkpoint must agree on with the flags.
ENCODER_FIELDS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                  'cifar_stem')


class RunError(ValueError):
  """A configuration that cannot work, found before any computation."""


class Preempted(RuntimeError):
  """SIGTERM (or SIGINT) arrived; a checkpoint of the current step was
  written. `step` is that step."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f'{signal_name} received: saved a checkpoint at step '
                     f'{step}; run the same command again to resume from it')
    self.step = step


class PreemptionWatcher:
  """Catches SIGTERM (the preemption notice of TPU VMs and most clusters) and
  SIGINT while training. Used as an orbit train action, it saves a checkpoint
  of the current step at the end of the running loop (a loop is
  --steps_per_loop steps inside one tf.function) and stops the run."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, manager: tf.train.CheckpointManager, global_step):
    self.manager = manager
    self.global_step = global_step
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: stop now.
    self.received = signal.Signals(signum).name
    logging.warning('%s received: will checkpoint and stop after the running '
                    'loop.', self.received)

  def __call__(self, output):
    del output
    if self.received is None:
      return
    step = int(self.global_step.numpy())
    self.manager.save(checkpoint_number=step, check_interval=False)
    raise Preempted(step, self.received)


@dataclasses.dataclass
class RunConfigs:
  model: ModelConfig
  data: data_lib.DataConfig
  optimizer: optimization.OptimizerConfig
  train: TrainConfig
  strategy: distribute.StrategyConfig = dataclasses.field(
      default_factory=distribute.StrategyConfig)


# tf2/run.py flags that only exist so that published command lines run.
COMPATIBILITY_KEYS = ('train_summary_steps', 'variable_schema')


def configs_from_values(values: Dict[str, Any]) -> RunConfigs:
  """RunConfigs from {tf2/run.py flag name: value}; absent names take the
  flags' defaults. Raises ValueError naming an unknown name or bad value.

      configs_from_values(dict(dataset='digits', image_size=32,
                               resnet_depth=18, model_dir='/tmp/m'))
  """
  values = dict(values)
  classes = (ModelConfig, data_lib.DataConfig, optimization.OptimizerConfig,
             TrainConfig, distribute.StrategyConfig)
  known = {f.name for cls in classes for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known - set(COMPATIBILITY_KEYS))
  if unknown:
    raise ValueError(f'unknown settings {unknown}: expected tf2/run.py flag '
                     f'names')
  if not values.get('steps_per_loop') and values.get('train_summary_steps'):
    values['steps_per_loop'] = values['train_summary_steps']

  def pick(cls, **fixed):
    names = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    return cls(**{k: v for k, v in values.items() if k in names}, **fixed)

  train_mode = values.get('train_mode', 'pretrain')
  model = pick(ModelConfig, num_classes=None,
               train_mode='pretrain' if train_mode == 'pretrain' else
               'finetune')
  return RunConfigs(model=model, data=pick(data_lib.DataConfig),
                    optimizer=pick(optimization.OptimizerConfig),
                    train=pick(TrainConfig),
                    strategy=pick(distribute.StrategyConfig))


@dataclasses.dataclass
class Schedule:
  """Step counts of a run."""
  num_examples: int
  train_steps: int
  checkpoint_steps: int
  steps_per_loop: int


def make_schedule(configs: RunConfigs, num_examples: int) -> Schedule:
  train, batch = configs.train, configs.data.train_batch_size
  total = optimization.train_steps(configs.optimizer, num_examples)
  epoch_steps = max(1, int(round(num_examples / batch)))
  every = train.checkpoint_steps or train.checkpoint_epochs * epoch_steps
  every = max(1, min(every, total))
  loop = math.gcd(train.steps_per_loop, every) if train.steps_per_loop else every
  return Schedule(num_examples, total, every, loop)


def set_precision(precision: str):
  policy = {'float32': 'float32', 'bfloat16': 'mixed_bfloat16',
            'float16': 'mixed_float16'}[precision]
  tf_keras.mixed_precision.set_global_policy(policy)


def _same_encoder(a: ModelConfig, b: ModelConfig):
  return [(f, getattr(a, f), getattr(b, f)) for f in ENCODER_FIELDS
          if getattr(a, f) != getattr(b, f)]


def init_from_checkpoint(model: SimCLRModel, path: str,
                         with_supervised_head: bool = True):
  """Copies the encoder and projection head of the model at `path` (any form
  simclr.load_model reads) into `model`, strictly; and the supervised head
  when it exists there with the same shape and zero_init_logits_layer is off.
  Raises CheckpointError naming what does not fit."""
  source = checkpoints.load_model(path)
  mismatch = _same_encoder(model.config, source.config)
  if mismatch:
    raise checkpoints.CheckpointError(
        f'{path}: architecture differs from the flags: ' + ', '.join(
            f'--{f}: checkpoint {s!r} vs flags {m!r}' for f, m, s in mismatch))
  checkpoints.copy_layer(source.resnet, model.resnet, path, 'encoder')
  if model.projection_head is not None:
    if (source.projection_head is None or
        len(source.projection_head.head_layers) !=
        len(model.projection_head.head_layers)):
      have = (0 if source.projection_head is None else
              len(source.projection_head.head_layers))
      raise checkpoints.CheckpointError(
          f'{path}: has a projection head of {have} layers, the flags ask for '
          f'{len(model.projection_head.head_layers)} (--proj_head_mode, '
          f'--num_proj_layers)')
    checkpoints.copy_layer(source.projection_head, model.projection_head,
                           path, 'projection head')
  head, source_head = model.supervised_head, source.supervised_head
  if (with_supervised_head and head is not None and source_head is not None
      and not model.config.zero_init_logits_layer and
      source_head.dense.kernel.shape == head.dense.kernel.shape and
      source.config.ft_proj_selector == model.config.ft_proj_selector):
    checkpoints.copy_layer(source_head, head, path, 'supervised head')
    logging.info('Supervised head restored from %s', path)
  elif head is not None:
    logging.info('Supervised head starts from its initialisation (%s)',
                 'zeros' if model.config.zero_init_logits_layer else
                 'random normal, stddev 0.01')
  return source.config


class ProgressReporter:
  """After each loop: step / total, images per second, ETA, main metrics."""

  def __init__(self, global_step, total_steps, batch_size, views=1):
    self.global_step = global_step
    self.total = total_steps
    self.images_per_step = batch_size * views
    self.start_step = int(global_step.numpy())
    self.start_time = time.time()
    self.last_output = {}

  def __call__(self, output: Dict[str, Any]):
    step = int(self.global_step.numpy())
    self.last_output = {k: float(v) for k, v in output.items()}
    self.last_output['global_step'] = step
    elapsed = max(time.time() - self.start_time, 1e-9)
    done = step - self.start_step
    rate = done / elapsed
    eta = (self.total - step) / rate if rate > 0 else float('nan')
    metrics = ' '.join(
        f'{k.split("/")[-1]}={float(v):.4g}' for k, v in sorted(output.items())
        if not k.startswith('steps_per'))
    logging.info('step %d/%d (%.0f%%) | %.1f images/s | ETA %s | %s', step,
                 self.total, 100 * step / max(self.total, 1),
                 rate * self.images_per_step, _format_seconds(eta), metrics)


def _non_finite_message(message: str) -> str:
  """'... SIMCLR_NON_FINITE_LOSS] [step] [3] [contrast_loss] [nan] ...' ->
  'non-finite loss at step 3: contrast_loss=nan, ...'."""
  tail = message.split(NON_FINITE_MARKER, 1)[1]
  items = re.findall(r'\[([^\[\]]*)\]', tail.split('\n', 1)[0])
  pairs = dict(zip(items[::2], items[1::2]))
  step = pairs.pop('step', '?')
  terms = ', '.join(f'{k}={v}' for k, v in pairs.items())
  return (f'non-finite loss at step {step}: {terms}. No checkpoint or export '
          f'was written for it; the latest checkpoint is the last good one.')


def _format_seconds(seconds):
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def write_json(path: str, value):
  with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1, sort_keys=True)
  tf.io.gfile.rename(path + '.tmp', path, overwrite=True)


def export(model: SimCLRModel, model_dir: str, step: int, keep: int):
  """Writes model_dir/saved_model/<step>/, keeping the newest `keep`.

  The export is made from a copy of the model built outside the training
  strategy: a SavedModel signature cannot capture distributed variables
  (MultiWorkerMirroredStrategy, TPUStrategy)."""
  from simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  directory = os.path.join(model_dir, 'saved_model')
  if tf.distribute.has_strategy() or isinstance(
      model.variables[0], tf.distribute.DistributedValues):
    plain = build_model(model.config)
    checkpoints.copy_layer(model, plain, 'the trained model', 'weights')
    model = plain
  export_lib.export_saved_model(model, os.path.join(directory, str(step)))
  export_lib.prune_exports(directory, keep)
  logging.info('Exported SavedModel to %s/%d', directory, step)


class Run:
  """One run of tf2/run.py. Build with the configs, then call `run()`."""

  def __init__(self, configs: RunConfigs,
               flags_dict: Optional[Dict[str, Any]] = None):
    self.configs = configs
    self.flags_dict = flags_dict or {}
    train = configs.train
    if not train.model_dir:
      raise RunError('--model_dir: required (checkpoints, summaries and '
                     'exports are written there)')
    self.model_dir = train.model_dir
    set_precision(train.precision)
    self.strategy = distribute.build_strategy(configs.strategy)
    replicas = self.strategy.num_replicas_in_sync
    for flag in ('train_batch_size', 'eval_batch_size'):
      value = getattr(configs.data, flag)
      if value % replicas:
        raise RunError(f'--{flag}={value} is not divisible by the {replicas} '
                       f'replicas')
    self.inputs = data_lib.Inputs(
        configs.data.replace(model_dir=self.model_dir))
    self.num_classes = self.inputs.num_classes
    if train.train_mode == 'pretrain' and train.memory_size:
      try:
        check_memory_size(train.memory_size, configs.data.train_batch_size)
      except ValueError as e:
        raise RunError(f'--memory_size: {e}') from None
    tf.io.gfile.makedirs(self.model_dir)

  # -- models -------------------------------------------------------------

  def _model_config(self, teacher: Optional[SimCLRModel]) -> ModelConfig:
    cfg, train = self.configs.model, self.configs.train
    mode = train.train_mode
    if mode == 'pretrain':
      num_classes = (self.num_classes if train.lineareval_while_pretraining
                     else None)
      return cfg.replace(train_mode='pretrain', num_classes=num_classes or None)
    if mode == 'distill':
      # The student: its own architecture flags, the teacher's classes, and a
      # projection head only if the classifier reads from one of its layers.
      changes = dict(train_mode='distill',
                     num_classes=teacher.config.num_classes)
      if cfg.ft_proj_selector == 0:
        changes['proj_head_mode'] = 'none'
      return cfg.replace(**changes)
    if not self.num_classes:
      raise RunError(f'--train_mode={mode} needs labels, but --dataset='
                     f'{self.configs.data.dataset} has none')
    changes = dict(train_mode='finetune', num_classes=self.num_classes)
    if mode == 'linear_eval':
      changes.update(fine_tune_after_block=4, ft_proj_selector=0)
    return cfg.replace(**changes)

  def _load_teacher(self) -> Optional[SimCLRModel]:
    train = self.configs.train
    if train.train_mode != 'distill':
      return None
    with self.strategy.scope():
      teacher = checkpoints.load_model(train.teacher_checkpoint,
                                       train_mode='finetune')
    if teacher.supervised_head is None:
      raise RunError(f'--teacher_checkpoint={train.teacher_checkpoint}: has '
                     f'no supervised head (logits) to distill from')
    teacher.trainable = False
    if (train.distill_alpha < 1 and
        teacher.config.num_classes != self.num_classes):
      raise RunError(
          f'--distill_alpha={train.distill_alpha} mixes in labels, but the '
          f'teacher has {teacher.config.num_classes} classes and --dataset '
          f'{self.num_classes}')
    return teacher

  def build_state(self) -> TrainingState:
    configs, train = self.configs, self.configs.train
    teacher = self._load_teacher()
    model_config = self._model_config(teacher)
    num_examples = self.inputs.num_train_examples(DATA_MODE[train.train_mode])
    self.schedule = make_schedule(configs, num_examples)
    optimizer_config = dataclasses.replace(
        configs.optimizer, train_batch_size=configs.data.train_batch_size)
    self.optimizer_config = optimizer_config
    with self.strategy.scope():
      model = build_model(model_config)
      self.learning_rate = optimization.build_learning_rate(
          optimizer_config, num_examples)
      optimizer = optimization.build_optimizer(optimizer_config,
                                               self.learning_rate)
      if train.precision == 'float16':
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
      state = TrainingState(model=model, optimizer=optimizer, teacher=teacher)
      state.global_step  # pylint: disable=pointless-statement
    return state

  def _write_model_config(self, model: SimCLRModel):
    with tf.io.gfile.GFile(
        os.path.join(self.model_dir, checkpoints.MODEL_CONFIG_FILE), 'w') as f:
      f.write(model.config.to_json())

  def _checkpoint_manager(self, state: TrainingState, interval: int):
    manager = tf.train.CheckpointManager(
        state.checkpoint(), directory=self.model_dir,
        max_to_keep=self.configs.train.keep_checkpoint_max,
        step_counter=state.global_step, checkpoint_interval=interval)
    # Save at multiples of the interval, as published (the manager would
    # otherwise save at the first loop's end: it treats step 0 as "never").
    latest = manager.latest_checkpoint
    step = int(latest.rsplit('-', 1)[1]) if latest else 0
    manager._last_checkpoint_step = step - step % interval  # pylint: disable=protected-access
    return manager

  # -- modes --------------------------------------------------------------

  def run(self) -> Optional[Dict[str, float]]:
    train = self.configs.train
    if train.train_mode == 'linear_eval' and \
        train.linear_eval_protocol == 'cached' and train.mode != 'eval':
      return linear_eval.run_cached(self)
    if train.mode == 'eval':
      return self.evaluate_checkpoints()
    state = self.train()
    if train.mode == 'train_then_eval':
      return self.evaluate(state.model, int(state.global_step.numpy()))
    return None

  def train(self) -> TrainingState:
    configs, train = self.configs, self.configs.train
    state = self.build_state()
    schedule = self.schedule
    manager = self._checkpoint_manager(state, schedule.checkpoint_steps)
    if manager.latest_checkpoint is None and train.checkpoint:
      with self.strategy.scope():
        init_from_checkpoint(state.model, train.checkpoint)
      logging.info('Initialised from --checkpoint=%s', train.checkpoint)
    elif manager.latest_checkpoint is None and train.train_mode == 'finetune':
      logging.warning('No --checkpoint: fine-tuning from random weights '
                      '(supervised training from scratch).')
    if train.train_mode == 'pretrain' and train.memory_size:
      with self.strategy.scope():
        state.momentum_encoder = MomentumEncoder(state.model,
                                                 train.memory_momentum)
        state.memory_queue = MemoryQueue(
            train.memory_size, configs.data.train_batch_size,
            state.model.config.proj_out_dim)
      manager = self._checkpoint_manager(state, schedule.checkpoint_steps)
    self._write_model_config(state.model)
    dataset = self.inputs.distributed_dataset(self.strategy,
                                              DATA_MODE[train.train_mode])
    trainer = SimCLRTrainer(state, train, self.optimizer_config, dataset,
                            self.strategy, learning_rate=self.learning_rate)
    views = 2 if train.train_mode == 'pretrain' else 1
    progress = ProgressReporter(state.global_step, schedule.train_steps,
                                configs.data.train_batch_size, views)
    controller = orbit.Controller(
        strategy=self.strategy, trainer=trainer,
        global_step=state.global_step,
        steps_per_loop=schedule.steps_per_loop,
        checkpoint_manager=manager,
        summary_interval=schedule.steps_per_loop,
        summary_dir=self.model_dir,
        train_actions=[progress])
    start = int(state.global_step.numpy())
    if manager.latest_checkpoint:
      logging.info('Resumed from %s at step %d', manager.latest_checkpoint,
                   start)
    logging.info(
        'Training %s: %d examples, steps %d -> %d, checkpoint every %d, %d '
        'steps per loop, %d replica(s)', train.train_mode,
        schedule.num_examples, start, schedule.train_steps,
        schedule.checkpoint_steps, schedule.steps_per_loop,
        self.strategy.num_replicas_in_sync)
    if start < schedule.train_steps:
      watcher = PreemptionWatcher(manager, state.global_step)
      controller.train_actions = controller.train_actions + (watcher,)
      with watcher:
        try:
          controller.train(steps=schedule.train_steps)
        except tf.errors.InvalidArgumentError as e:
          if NON_FINITE_MARKER not in e.message:
            raise
          raise NonFiniteLossError(_non_finite_message(e.message)) from None
      # The last loop's training metrics, e.g. to compare workers or runs.
      write_json(os.path.join(self.model_dir, 'train_metrics.json'),
                 progress.last_output)
    step = int(state.global_step.numpy())
    export(state.model, self.model_dir, step, train.keep_hub_module_max)
    return state

  # -- evaluation ---------------------------------------------------------

  def evaluate(self, model: SimCLRModel, step: int) -> Optional[Dict]:
    """Evaluates `model`, writes result.json, result_<step>.json and
    flags.json into model_dir and returns the result."""
    train = self.configs.train
    if model.supervised_head is None:
      logging.info('Skipping eval: the model has no supervised head '
                   '(pretraining without lineareval_while_pretraining).')
      return None
    dataset = self.inputs.distributed_dataset(self.strategy, 'eval')
    evaluator = evaluator_lib.ClassificationEvaluator(
        model, dataset, self.strategy, self.optimizer_config_for_eval())
    steps = train.eval_steps or -1
    output = evaluator.evaluate(tf.constant(steps, tf.int32))
    result = {k: float(v) for k, v in output.items()}
    result['global_step'] = step
    logging.info('eval at step %d: %s', step, result)
    summary_dir = os.path.join(self.model_dir, train.eval_name or 'eval')
    writer = tf.summary.create_file_writer(summary_dir)
    with writer.as_default():
      for key, value in result.items():
        if key != 'global_step':
          tf.summary.scalar(key, value, step=step)
    writer.flush()
    write_json(os.path.join(self.model_dir, 'result.json'), result)
    write_json(os.path.join(self.model_dir, f'result_{step}.json'), result)
    write_json(os.path.join(self.model_dir, 'flags.json'),
               {k: v for k, v in self.flags_dict.items() if _jsonable(v)})
    return result

  def optimizer_config_for_eval(self) -> optimization.OptimizerConfig:
    return getattr(self, 'optimizer_config', self.configs.optimizer)

  def evaluate_checkpoints(self) -> Optional[Dict]:
    """Eval mode: --checkpoint if given, else every checkpoint of model_dir
    as it appears until the last training step (published behaviour)."""
    train = self.configs.train
    state = self.build_state()
    model = state.model
    global_step = tf.Variable(0, dtype=tf.int64)
    reader = tf.train.Checkpoint(model=model, global_step=global_step)
    if train.checkpoint and not tf.train.latest_checkpoint(self.model_dir):
      init_from_checkpoint(model, train.checkpoint)
      result = self.evaluate(model, 0)
      export(model, self.model_dir, 0, train.keep_hub_module_max)
      return result
    latest = tf.train.latest_checkpoint(self.model_dir)
    if not latest and not train.eval_wait_secs:
      raise RunError(
          f'--mode=eval: no checkpoint in --model_dir={self.model_dir} and no '
          f'--checkpoint; pass --eval_wait_secs=N to wait up to N seconds for '
          f'a training job to write one')
    if not train.eval_wait_secs:
      paths = [latest]
    else:
      paths = tf.train.checkpoints_iterator(
          self.model_dir, min_interval_secs=1, timeout=train.eval_wait_secs)
    result = None
    for path in paths:
      checkpoints.restore_strict(reader, path, path)
      step = int(global_step.numpy())
      result = self.evaluate(model, step)
      export(model, self.model_dir, step, train.keep_hub_module_max)
      if step >= self.schedule.train_steps:
        break
    if result is None:
      raise RunError(f'--mode=eval: no checkpoint appeared in --model_dir='
                     f'{self.model_dir} within --eval_wait_secs='
                     f'{train.eval_wait_secs}')
    return result


def _jsonable(value) -> bool:
  try:
    json.dumps(value)
    return True
  except TypeError:
    return False
