"""--train_mode=pretrain: contrastive pretraining (SimCLR's NT-Xent over the
global batch, two augmented views per image), optionally with SimCLRv2's
memory of momentum keys, and a linear head trained on stopped features while
pretraining (--lineareval_while_pretraining, as published).

Loss on one replica (divided by the number of replicas before the gradient,
see simclr/losses.py): NT-Xent on the published scale (both views' losses
added, `reduction='sum_views'`) + the linear head's cross-entropy + weight
decay. With --memory_size > 0, a momentum encoder (EMA of the encoder and
projection head, decay --memory_momentum) produces keys that a FIFO queue
keeps; --memory_mode says how they enter the loss:
- 'negatives' (default; SimCLRv2's text: the memory network's outputs "will be
  buffered as negative examples"): SimCLR's loss on the online network, the
  queued keys added as extra negatives;
- 'moco': positives and in-batch candidates are the momentum keys too.
"""

from typing import Dict, List, Optional

import tensorflow as tf

from simclr import losses
from simclr.configs import ModelConfig
from simclr.head_labels import HeadLabels
from simclr.models.momentum import MemoryQueue
from simclr.models.momentum import MomentumEncoder
from simclr.models.momentum import check_memory_size
from simclr.tasks.base import RunError
from simclr.tasks.base import StepTerms
from simclr.tasks.base import Task
from simclr.tasks.base import TrainingState
from simclr.tasks.base import supervised_terms


class PretrainTask(Task):
  name = 'pretrain'
  input_kind = 'views'
  views = 2

  @property
  def linear_head(self) -> bool:
    return bool(self.configs.train.lineareval_while_pretraining and
                self.num_classes)

  @property
  def memory(self) -> bool:
    return self.configs.train.memory_size > 0

  def check(self):
    train = self.configs.train
    if self.configs.model.fine_tune_after_block != -1:
      raise RunError(
          f'--fine_tune_after_block={self.configs.model.fine_tune_after_block}'
          f': expected -1 during pretraining (freezing is for fine-tuning '
          f'only)')
    if self.memory:
      try:
        check_memory_size(train.memory_size,
                          self.configs.data.train_batch_size)
      except ValueError as e:
        raise RunError(f'--memory_size: {e}') from None

  def model_config(self) -> ModelConfig:
    return self.configs.model.replace(
        num_classes=self.num_classes if self.linear_head else None,
        linear_probe=True)

  def head_labels(self) -> Optional[HeadLabels]:
    # The linear probe reads every label of the split.
    if not self.linear_head:
      return None
    data = self.configs.data
    return HeadLabels.every_label(data.dataset, data.train_split)

  def initialize(self, state, path):
    super().initialize(state, path)
    if self.memory:
      # Built from the initial weights before this; the first keys must come
      # from the network the run starts from.
      state.extras['momentum_encoder'].copy_from(state.model)

  def extra_state(self, state: TrainingState) -> Dict[str, tf.Module]:
    if not self.memory:
      return {}
    train = self.configs.train
    return {
        'momentum_encoder': MomentumEncoder(state.model,
                                            train.memory_momentum),
        'memory_queue': MemoryQueue(train.memory_size,
                                    self.configs.data.train_batch_size,
                                    state.model.config.proj_out_dim),
    }

  def trained_variables(self, state):
    # The contrastive loss reaches every layer of the projection head.
    return list(state.model.trainable_variables)

  def metric_names(self) -> List[str]:
    names = ['contrast_loss', 'contrast_acc', 'contrast_entropy']
    if self.linear_head:
      names += ['supervised_loss', 'supervised_acc']
    return names

  def loss_terms(self, state, images, labels, outputs) -> StepTerms:
    train = self.configs.train
    queries = outputs['proj_head_output']
    keys = None
    if not self.memory:
      result = losses.contrastive_loss(
          queries, temperature=train.temperature,
          hidden_norm=train.hidden_norm, reduction='sum_views')
    else:
      keys = state.extras['momentum_encoder'].keys(images)
      queue = state.extras['memory_queue']
      if train.memory_mode == 'moco':
        result = losses.nt_xent_with_memory(
            queries, keys, queue.queue, temperature=train.temperature,
            hidden_norm=train.hidden_norm, queue_length=queue.length,
            reduction='sum_views')
      else:
        result = losses.nt_xent_with_negatives(
            queries, queue.queue, temperature=train.temperature,
            hidden_norm=train.hidden_norm, queue_length=queue.length,
            reduction='sum_views')
    metrics = losses.contrastive_metrics(result.logits, result.labels)
    terms = StepTerms(losses={'contrast_loss': result.loss},
                      metrics=dict(metrics), after_update=keys)
    if self.linear_head:
      supervised = supervised_terms(labels, outputs)
      terms.losses.update(supervised.losses)
      terms.metrics.update(supervised.metrics)
    return terms

  def after_update(self, state, terms):
    if self.memory:
      state.extras['momentum_encoder'].update(state.model)
      state.extras['memory_queue'].enqueue(terms.after_update)
