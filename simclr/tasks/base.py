"""What every train mode has in common: the training state and the seams of a
task. One module per train mode (pretrain.py, finetune.py, linear_eval.py,
distill.py) subclasses `Task` and holds everything particular to it; the
trainer (trainer.py) and the run (runner.py) only call these seams.

A task's seams, in the order a run calls them:
  check()                  refuse settings that cannot work (RunError)
  prepare(strategy)        load what the task reads but does not train
                           (distill: the teacher)
  model_config()           the ModelConfig of the model that trains
  head_labels()            which labels the head it trains is fitted on
                           (recorded in model_dir; bounds what a supervised
                           head from --checkpoint may have seen)
  initialize(state, path)  weights from --checkpoint when model_dir has none
  extra_state(state)       trackables trained or updated beside the model and
                           checkpointed with it (pretrain: the memory)
  metric_names()           the train/<name> metrics of its steps
  loss_terms(...)          inside the step: named loss terms and metrics
  after_update(...)        inside the step, after the optimizer's update
  fit(state)               a task that trains without the step loop (cached
                           linear evaluation) does it here
"""

import dataclasses
from typing import Any, Dict, List, NamedTuple, Optional, Union

import tensorflow as tf
import tf_keras

from simclr import checkpoints
from simclr import losses
from simclr.configs import ModelConfig
from simclr.configs import RunConfigs
from simclr.data import Inputs
from simclr.head_labels import HeadLabels
from simclr.models.simclr_model import SimCLRModel


class RunError(ValueError):
  """A configuration that cannot work, found before any computation."""


@dataclasses.dataclass
class TrainingState:
  """Everything a step reads or changes; all of it is checkpointed.

  extras: the task's own trackables (e.g. momentum_encoder, memory_queue),
    checkpointed under their keys beside the model.
  optimizer: Model Garden's LARS (a legacy OptimizerV2) or tf_keras's SGD /
    Adam (the current Optimizer), wrapped in a LossScaleOptimizer under
    float16 (build.py).
  learning_rate: the optimizer's schedule (step -> rate), for the trainer's
    learning_rate metric; not checkpointed (rebuilt from the configs).
  trained_variables: what a step updates (Task.trained_variables), chosen
    once when the state is built: the optimizer's slots are made for these
    and the trainer takes gradients for these (build.py).
  """
  model: SimCLRModel
  optimizer: Union[tf_keras.optimizers.Optimizer,
                   tf_keras.optimizers.legacy.Optimizer]
  extras: Dict[str, tf.Module] = dataclasses.field(default_factory=dict)
  learning_rate: Any = None
  trained_variables: List[tf.Variable] = dataclasses.field(
      default_factory=list)

  @property
  def global_step(self) -> tf.Variable:
    return self.optimizer.iterations

  def checkpoint(self, layout: str = 'published') -> tf.train.Checkpoint:
    """The checkpoint of a model_dir: the model at the key `model` in the
    published object-graph layout (the published run.py restores it), the
    optimizer, global_step and the extras beside it. layout='legacy' is the
    layout of model_dirs written before (the tf_keras model at `model`)."""
    return checkpoints.training_checkpoint(
        self.model, layout=layout, optimizer=self.optimizer,
        global_step=self.global_step, **self.extras)


class StepTerms(NamedTuple):
  """What a task computes inside one step on one replica.

  losses: {name: scalar float32}; their sum (plus weight decay) is minimised.
    Names end in '_loss'.
  metrics: {name: scalar}; averaged over the loop and reported.
  after_update: whatever the task's after_update needs (e.g. memory keys).
  """
  losses: Dict[str, tf.Tensor]
  metrics: Dict[str, tf.Tensor]
  after_update: Any = None


class Task:
  """Base of the four train modes; see the module docstring for the seams.

  configs: the run's configs; num_classes: the dataset's classes (0:
  unlabeled); inputs: the run's data (what `fit` reads; may be None for a
  task driven by hand, e.g. in a benchmark).
  """
  name: str = ''
  # The input kind the task trains on (simclr.configs.INPUT_KINDS).
  input_kind: str = ''
  # Views per image in a training batch (images/s counts all of them).
  views: int = 1

  def __init__(self, configs: RunConfigs, num_classes: int,
               inputs: Optional[Inputs] = None):
    self.configs = configs
    self.num_classes = num_classes
    self.inputs = inputs

  # -- before anything is built ---------------------------------------------

  def check(self):
    """Raises RunError for settings this task cannot train with."""

  def prepare(self, strategy: tf.distribute.Strategy):
    """Loads what the task reads but does not train."""
    del strategy

  def model_config(self) -> ModelConfig:
    raise NotImplementedError

  def run_labels(self) -> Optional[HeadLabels]:
    """The labels the run reads: the label subset, or every label of the
    train split (None without inputs or labels)."""
    if self.inputs is None or not self.num_classes:
      return None
    data = self.configs.data
    ids = self.inputs.label_subset()
    if ids is None:
      return HeadLabels.every_label(data.dataset, data.train_split)
    return HeadLabels.of_subset(data.dataset, data.train_split, ids)

  def head_labels(self) -> Optional[HeadLabels]:
    """The labels the supervised head this run trains is fitted on (None:
    no supervised head). A head from --checkpoint is reused only when it was
    fitted on labels within these."""
    return self.run_labels()

  def initialize(self, state: TrainingState, path: str):
    """Initialises the model from --checkpoint (model_dir has no
    checkpoint)."""
    checkpoints.init_from_checkpoint(
        state.model, path, source_ft_proj_selector=(
            self.configs.train.checkpoint_ft_proj_selector),
        labels=self.head_labels())

  def initialize_without_checkpoint(self, state: TrainingState):
    """Called instead of `initialize` when there is no --checkpoint."""
    del state

  def extra_state(self, state: TrainingState) -> Dict[str, tf.Module]:
    """Built inside the strategy's scope, before any restore."""
    del state
    return {}

  def trained_variables(self, state: TrainingState) -> List[tf.Variable]:
    """The variables a step updates: the model's trainable ones that the
    task's losses reach. By default the supervised head's loss: not the
    projection-head layers after the one it reads. The optimizer's slots
    are made for exactly these before the first step (build.py)."""
    unused = {id(v) for v in state.model.head_variables_after_selector()}
    return [v for v in state.model.trainable_variables if id(v) not in unused]

  # -- inside the train step ------------------------------------------------

  def metric_names(self) -> List[str]:
    raise NotImplementedError

  def loss_terms(self, state: TrainingState, images, labels,
                 outputs: Dict[str, tf.Tensor]) -> StepTerms:
    raise NotImplementedError

  def after_update(self, state: TrainingState, terms: StepTerms):
    del state, terms

  # -- a task that trains without the step loop -----------------------------

  def fit(self, state: TrainingState) -> Optional[int]:
    """Trains `state` without the orbit loop and returns the step count it
    reached, or None to be trained by the loop (the default)."""
    del state
    return None


def supervised_terms(labels, outputs) -> StepTerms:
  """Cross-entropy of the supervised head on the labeled rows (label -1:
  unlabeled, not counted), with its accuracy."""
  result = losses.supervised_with_labels(labels, outputs['logits_sup'])
  return StepTerms(losses={'supervised_loss': result.loss},
                   metrics={'supervised_acc': result.accuracy})
