"""A whole run from config objects: the checks of preflight.py, strategy,
data, the task of the train mode, its training state (build.py), restoring
or initialising it, the orbit Controller (train loop, summaries; the actions
of actions.py for progress, checkpoints and preemption), evaluation
(evaluator.py), results and exports.

    result = simclr.train(dataset='digits', image_size=32, resnet_depth=18,
                          model_dir='/tmp/m', mode='train_then_eval')

takes tf2/run.py's flag names; tf2/run.py, tools/demo.py and the notebooks all
go through it.
"""

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, Optional

from absl import logging
import orbit
import tensorflow as tf
import tf_keras

from simclr import checkpoints
from simclr import compat
from simclr import data as data_lib
from simclr import distribute
from simclr import knn as knn_lib
from simclr import paths
from simclr.configs import RunConfigs
from simclr.configs import configs_from_values
from simclr.head_labels import HeadLabels
from simclr.models.simclr_model import SimCLRModel
from simclr.models.simclr_model import build_model
from simclr.tasks import TASKS
from simclr.tasks import actions
from simclr.tasks import evaluator as evaluator_lib
from simclr.tasks import preflight
from simclr.tasks.actions import Preempted  # pylint: disable=unused-import
from simclr.tasks.base import RunError
from simclr.tasks.base import TrainingState
from simclr.tasks.build import build_trainer
from simclr.tasks.build import build_training_state
from simclr.tasks.trainer import NonFiniteLossError

compat.quiet_orbit_controller()


@dataclasses.dataclass
class Schedule:
  """Step counts of a run."""
  num_examples: int
  train_steps: int
  checkpoint_steps: int
  steps_per_loop: int


def make_schedule(configs: RunConfigs, num_examples: int) -> Schedule:
  """Total steps, checkpoint interval (clipped to the total) and the steps of
  one loop, which divide the interval so that saves land on its multiples."""
  train, batch = configs.train, configs.data.train_batch_size
  total = train.total_steps(num_examples, batch)
  epoch_steps = max(1, int(round(num_examples / batch)))
  every = train.checkpoint_steps or train.checkpoint_epochs * epoch_steps
  every = max(1, min(every, total))
  loop = math.gcd(train.steps_per_loop, every) if train.steps_per_loop else every
  return Schedule(num_examples, total, every, loop)


def set_precision(precision: str, on_cpu: bool = True):
  """Sets the Keras mixed-precision policy; with bfloat16 on a CPU (no
  accelerator to run it), warns once when a short measurement finds
  bfloat16 slower than float32 here (simclr.cpu.bfloat16_warning)."""
  if precision == 'bfloat16' and on_cpu:
    from simclr import cpu  # pylint: disable=g-import-not-at-top
    warning = cpu.bfloat16_warning()
    if warning:
      logging.warning(warning)
  policy = {'float32': 'float32', 'bfloat16': 'mixed_bfloat16',
            'float16': 'mixed_float16'}[precision]
  tf_keras.mixed_precision.set_global_policy(policy)


def make_deterministic(configs: RunConfigs):
  """Op determinism for the process, and the Python, numpy and TensorFlow
  seeds (weight initialisation) reset from the data seed, which also seeds
  the input pipelines (set to 0 when unset)."""
  if configs.data.seed is None:
    configs.data = configs.data.replace(seed=0)
  tf.config.experimental.enable_op_determinism()
  tf_keras.utils.set_random_seed(configs.data.seed)


def export(model: SimCLRModel, model_dir: str, step: int, keep: int,
           head_labels: Optional[HeadLabels] = None, enabled: bool = True):
  """Writes model_dir/saved_model/<step>/, keeping the newest `keep`;
  head_labels: what the supervised head was fitted on (kept with it).
  enabled=False (--export_saved_model=False) writes nothing.

  The export is made from a copy of the model built outside the training
  strategy: a SavedModel signature cannot capture distributed variables
  (MultiWorkerMirroredStrategy, TPUStrategy)."""
  if not enabled:
    logging.info('No SavedModel export (--export_saved_model=False)')
    return
  from simclr import export as export_lib  # pylint: disable=g-import-not-at-top
  directory = os.path.join(model_dir, 'saved_model')
  if tf.distribute.has_strategy() or isinstance(
      model.variables[0], tf.distribute.DistributedValues):
    plain = build_model(model.config)
    checkpoints.copy_layer(model, plain, 'the trained model', 'weights')
    model = plain
  export_lib.export_saved_model(model, os.path.join(directory, str(step)),
                                head_labels=head_labels)
  export_lib.prune_exports(directory, keep)
  logging.info('Exported SavedModel to %s/%d', directory, step)


def _jsonable(value) -> bool:
  try:
    json.dumps(value)
    return True
  except TypeError:
    return False


class Run:
  """One run of tf2/run.py. Build with the configs, then call `run()`.

  flags_dict: extra values to record in flags.json beside the configs'
  fields (e.g. every absl flag of tf2/run.py); on_progress: called with an
  actions.LoopProgress after every training loop (besides the log line)."""

  def __init__(self, configs: RunConfigs,
               flags_dict: Optional[Dict[str, Any]] = None,
               on_progress: Optional[Callable[[actions.LoopProgress],
                                              None]] = None):
    self.configs = configs
    self.on_progress = on_progress
    train = configs.train
    # Files first: none of these checks starts TensorFlow's runtime, which a
    # MultiWorkerMirroredStrategy must configure before anything else.
    preflight.check_paths(configs)
    self.model_dir = train.model_dir
    # The checkpoint of model_dir to resume (or evaluate) from, read whole
    # once here so that a damaged one stops the run before it starts.
    try:
      self.resume_from = checkpoints.resumable_checkpoint(self.model_dir)
    except checkpoints.CheckpointError as e:
      raise RunError(f'--model_dir={e}') from None
    if train.deterministic:
      make_deterministic(configs)
    self.flags = {}
    for config in (configs.model, configs.data, configs.optimizer, train,
                   configs.strategy):
      self.flags.update(dataclasses.asdict(config))
    self.flags.update({k: v for k, v in (flags_dict or {}).items()
                       if _jsonable(v) and k not in self.flags})
    set_precision(train.precision, on_cpu=not (
        configs.strategy.use_tpu or tf.config.list_physical_devices('GPU')))
    self.strategy = distribute.build_strategy(configs.strategy)
    preflight.check_batch_sizes(configs,
                                self.strategy.num_replicas_in_sync)
    try:
      self.inputs = data_lib.Inputs(
          configs.data.replace(model_dir=self.model_dir))
    except ValueError as e:  # An unknown, unprepared or empty dataset.
      raise RunError(f'--dataset={configs.data.dataset}: {e}') from None
    self.task = TASKS[train.train_mode](configs, self.inputs.num_classes,
                                        self.inputs)
    self.task.check()
    preflight.check_inputs(configs, self.inputs, self.task)
    # Which labels the head this run trains is fitted on (model_dir's
    # head_labels.json); the task may have adopted a teacher's subset.
    self.head_labels = self.task.head_labels()
    # The last k-NN values of training (knn_lib.KnnMonitor), for the results.
    self.knn_metrics = {}
    tf.io.gfile.makedirs(self.model_dir)

  # -- state ----------------------------------------------------------------

  def build_state(self) -> TrainingState:
    """The task's model and extras, the optimiser and the schedule (not yet
    restored or initialised)."""
    num_examples = self.inputs.num_train_examples(self.task.input_kind)
    self.schedule = make_schedule(self.configs, num_examples)
    return build_training_state(self.configs, self.task, self.strategy,
                                num_examples, self.schedule.train_steps)

  def _write_model_config(self, model: SimCLRModel):
    with tf.io.gfile.GFile(
        os.path.join(self.model_dir, checkpoints.MODEL_CONFIG_FILE), 'w') as f:
      f.write(model.config.to_json())
    if model.supervised_head is not None and self.head_labels is not None:
      self.head_labels.write(self.model_dir)

  def _restore_or_initialize(self, state: TrainingState):
    """Resumes from model_dir's newest checkpoint (in the layout it was
    written with), or initialises from --checkpoint. Returns the
    CheckpointManager to save with."""
    train = self.configs.train
    latest = self.resume_from
    layout = checkpoints.checkpoint_layout(latest) if latest else 'published'
    checkpoint = state.checkpoint(layout)
    manager = tf.train.CheckpointManager(
        checkpoint, directory=self.model_dir,
        max_to_keep=train.keep_checkpoint_max, step_counter=state.global_step)
    if latest:
      checkpoints.restore_strict(checkpoint, latest, latest)
      logging.info('Resumed from %s at step %d', latest,
                   int(state.global_step.numpy()))
    elif train.checkpoint:
      with self.strategy.scope():
        self.task.initialize(state, train.checkpoint)
      logging.info('Initialised from --checkpoint=%s', train.checkpoint)
    else:
      self.task.initialize_without_checkpoint(state)
    return manager

  # -- modes ----------------------------------------------------------------

  def run(self) -> Optional[Dict[str, float]]:
    """Does what --mode says; returns the eval result (None for 'train')."""
    train = self.configs.train
    if train.mode == 'eval':
      return self.evaluate_checkpoints()
    state = self.train()
    if train.mode == 'train_then_eval':
      return self.evaluate(state.model, int(state.global_step.numpy()))
    return None

  def train(self) -> TrainingState:
    train = self.configs.train
    state = self.build_state()
    schedule = self.schedule
    manager = self._restore_or_initialize(state)
    self._write_model_config(state.model)
    paths.write_json(os.path.join(self.model_dir, 'flags.json'), self.flags)
    steps = self.task.fit(state)
    if steps is not None:
      actions.save_checkpoint(manager, steps)
    else:
      self._train_loop(state, manager, schedule)
    step = int(state.global_step.numpy())
    export(state.model, self.model_dir, step, train.keep_hub_module_max,
           self.head_labels, train.export_saved_model)
    return state

  def _train_loop(self, state, manager, schedule):
    configs, train = self.configs, self.configs.train
    dataset = self.inputs.distributed_dataset(self.strategy,
                                              self.task.input_kind)
    trainer = build_trainer(configs, self.task, state, dataset,
                            self.strategy)
    progress = actions.ProgressReporter(
        state.global_step, schedule.train_steps,
        configs.data.train_batch_size * self.task.views, self.on_progress)
    watcher = actions.PreemptionWatcher(manager, state.global_step,
                                        self.strategy)
    train_actions = [progress, actions.CheckpointSaver(
        manager, state.global_step, schedule.checkpoint_steps), watcher]
    knn_monitor = None
    if train.knn_eval_steps:
      knn_monitor = knn_lib.KnnMonitor(
          state.model, configs.data, self.strategy, state.global_step,
          train.knn_eval_steps, schedule.train_steps, self.model_dir,
          k=train.knn_k, temperature=train.knn_temperature,
          source=self.inputs.source)
      train_actions.insert(1, knn_monitor)
    controller = orbit.Controller(
        strategy=self.strategy, trainer=trainer,
        global_step=state.global_step,
        steps_per_loop=schedule.steps_per_loop,
        summary_interval=schedule.steps_per_loop,
        summary_dir=self.model_dir,
        train_actions=train_actions)
    start = int(state.global_step.numpy())
    logging.info(
        'Training %s: %d examples, steps %d -> %d, checkpoint every %d, %d '
        'steps per loop, %d replica(s)', self.task.name,
        schedule.num_examples, start, schedule.train_steps,
        schedule.checkpoint_steps, schedule.steps_per_loop,
        self.strategy.num_replicas_in_sync)
    if start >= schedule.train_steps:
      return
    with watcher:
      try:
        controller.train(steps=schedule.train_steps,
                         checkpoint_at_completion=False)
      except tf.errors.InvalidArgumentError as e:
        message = compat.non_finite_message(e)
        if message is None:
          raise
        raise NonFiniteLossError(message) from None
      finally:
        compat.release_train_iterator(trainer)
    actions.save_checkpoint(manager, int(state.global_step.numpy()))
    if knn_monitor is not None:
      self.knn_metrics = knn_monitor.last_metrics
    # The last loop's training metrics, e.g. to compare workers or runs.
    paths.write_json(os.path.join(self.model_dir, 'train_metrics.json'),
               dict(progress.last_output, **self.knn_metrics))

  # -- evaluation -----------------------------------------------------------

  def evaluate(self, model: SimCLRModel, step: int) -> Optional[Dict]:
    """Evaluates `model`, writes result.json, result_<step>.json and
    flags.json into model_dir and returns the result (a model without a
    supervised head: the last k-NN values of training, if any)."""
    train = self.configs.train
    if model.supervised_head is None:
      logging.info('Skipping eval: the model has no supervised head '
                   '(pretraining without lineareval_while_pretraining).')
      if not self.knn_metrics:
        return None
      result = dict(self.knn_metrics, global_step=step)
      evaluator_lib.write_result(self.model_dir, step, result)
      return result
    result = evaluator_lib.evaluate_and_record(
        model, self.inputs.distributed_dataset(self.strategy, 'eval'),
        self.strategy, self.configs.optimizer, self.model_dir, step,
        eval_steps=train.eval_steps, eval_name=train.eval_name,
        extra=self.knn_metrics)
    paths.write_json(os.path.join(self.model_dir, 'flags.json'), self.flags)
    return result

  def evaluate_checkpoints(self) -> Optional[Dict]:
    """Eval mode: --checkpoint if model_dir has none, else model_dir's newest
    checkpoint, or each as it appears within --eval_wait_secs until the last
    training step (the published code waits forever)."""
    train = self.configs.train
    state = self.build_state()
    model = state.model
    latest = self.resume_from
    if train.checkpoint and not latest:
      checkpoints.init_from_checkpoint(
          model, train.checkpoint,
          source_ft_proj_selector=train.checkpoint_ft_proj_selector,
          require_supervised_head=True)
      result = self.evaluate(model, 0)
      export(model, self.model_dir, 0, train.keep_hub_module_max,
             checkpoints.head_labels_of(train.checkpoint),
             train.export_saved_model)
      return result
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
    global_step = tf.Variable(0, dtype=tf.int64)
    for path in paths:
      reader = checkpoints.training_checkpoint(
          model, layout=checkpoints.checkpoint_layout(path),
          global_step=global_step)
      checkpoints.restore_strict(reader, path, path)
      step = int(global_step.numpy())
      result = self.evaluate(model, step)
      export(model, self.model_dir, step, train.keep_hub_module_max,
             checkpoints.head_labels_of(path), train.export_saved_model)
      if step >= self.schedule.train_steps:
        break
    if result is None:
      raise RunError(f'--mode=eval: no checkpoint appeared in --model_dir='
                     f'{self.model_dir} within --eval_wait_secs='
                     f'{train.eval_wait_secs}')
    return result


def train(*, on_progress: Optional[Callable[[actions.LoopProgress],
                                             None]] = None,
          **flag_values) -> Optional[Dict[str, float]]:
  """Runs what tf2/run.py runs, from its flag names (absent ones take the
  flags' defaults); returns the eval result dict (result.json) or None.

      simclr.train(train_mode='pretrain', dataset='digits', image_size=32,
                   resnet_depth=18, width_multiplier=0.25, use_tpu=False,
                   train_steps=100, model_dir='/tmp/pretrain')

  on_progress, if given, is called with an actions.LoopProgress (step,
  total steps, images/s, seconds left) after every training loop, e.g. to
  draw a progress line; the same numbers are logged either way.

  Raises RunError (a ValueError) for settings or files found unusable
  before any computation; CheckpointError for weights that do not fit;
  NonFiniteLossError; Preempted after a SIGTERM / SIGINT checkpoint.
  """
  try:
    configs = configs_from_values(flag_values)
    run = Run(configs, flag_values, on_progress)
  except RunError:
    raise
  except ValueError as e:  # Config validation, data sources, strategy.
    raise RunError(str(e)) from None
  return run.run()
