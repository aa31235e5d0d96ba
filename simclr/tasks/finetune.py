"""--train_mode=finetune: supervised fine-tuning of a pretrained model (from
--checkpoint) on the labels of --train_label_fraction / --label_subset_file,
with the classifier reading the projection-head layer --ft_proj_selector
(SimCLRv2 fine-tunes from the first layer on 1% and 10% of the labels).
Without --checkpoint it is supervised training from scratch.

Loss on one replica: cross-entropy of the labeled rows + weight decay (the
supervised head's kernel with LARS, as published). Blocks up to
--fine_tune_after_block are frozen (docs/training.md, Differences from the
published code).
"""

from typing import List

from absl import logging

from simclr.configs import ModelConfig
from simclr.tasks.base import RunError
from simclr.tasks.base import StepTerms
from simclr.tasks.base import Task
from simclr.tasks.base import supervised_terms


class FinetuneTask(Task):
  name = 'finetune'
  input_kind = 'labeled'

  def check(self):
    if not self.num_classes:
      raise RunError(f'--train_mode={self.name} needs labels, but --dataset='
                     f'{self.configs.data.dataset} has none')

  def model_config(self) -> ModelConfig:
    return self.configs.model.replace(num_classes=self.num_classes,
                                      linear_probe=False)

  def initialize_without_checkpoint(self, state):
    logging.warning('No --checkpoint: fine-tuning from random weights '
                    '(supervised training from scratch).')

  def metric_names(self) -> List[str]:
    return ['supervised_loss', 'supervised_acc']

  def loss_terms(self, state, images, labels, outputs) -> StepTerms:
    return supervised_terms(labels, outputs)
