"""--train_mode=distill: SimCLRv2's third step. A fixed teacher (the
fine-tuned model of --teacher_checkpoint, in inference mode) labels the
unlabeled training images; a student (the architecture of the flags: the
teacher's for self-distillation, a smaller one otherwise; initialised from
--checkpoint when given) learns its softened predictions.

Loss on one replica: SimCLRv2 Eq. 2 (--distill_alpha=1, the default) or
Eq. 3: alpha * distillation + (1 - alpha) * cross-entropy of the labeled rows,
both terms summed over the rows and divided by the batch size
(simclr.losses.distillation_terms), + weight decay. Only the examples of the
label subset (--train_label_fraction / --label_subset_file) carry a label in
the distill pipeline; every other row is unlabeled (-1) and enters only the
distillation term.
"""

from typing import List

from absl import logging

from simclr import checkpoints
from simclr import losses
from simclr.configs import ModelConfig
from simclr.tasks.base import RunError
from simclr.tasks.base import StepTerms
from simclr.tasks.base import Task


class DistillTask(Task):
  name = 'distill'
  pipeline = 'distill'
  teacher = None

  @property
  def uses_labels(self) -> bool:
    return self.configs.train.distill_alpha < 1

  def check(self):
    if self.uses_labels and not self.num_classes:
      raise RunError(
          f'--distill_alpha={self.configs.train.distill_alpha} mixes in '
          f'labels, but --dataset={self.configs.data.dataset} has none')

  def prepare(self, strategy):
    train = self.configs.train
    selector = checkpoints.ft_proj_selector_of(
        train.teacher_checkpoint, train.teacher_ft_proj_selector,
        '--teacher_ft_proj_selector')
    with strategy.scope():
      teacher = checkpoints.load_model(train.teacher_checkpoint,
                                       ft_proj_selector=selector,
                                       linear_probe=False)
    if teacher.supervised_head is None:
      raise RunError(f'--teacher_checkpoint={train.teacher_checkpoint}: has '
                     f'no supervised head (logits) to distill from')
    teacher.trainable = False
    if self.uses_labels and teacher.config.num_classes != self.num_classes:
      raise RunError(
          f'--distill_alpha={train.distill_alpha} mixes in labels, but the '
          f'teacher has {teacher.config.num_classes} classes and --dataset '
          f'{self.num_classes}')
    logging.info('Teacher from %s: ResNet-%d %gx, classifier on projection '
                 'head output %d', train.teacher_checkpoint,
                 teacher.config.resnet_depth, teacher.config.width_multiplier,
                 selector)
    self.teacher = teacher

  def model_config(self) -> ModelConfig:
    # The student: its own architecture flags, the teacher's classes, and a
    # projection head only if the classifier reads from one of its layers.
    config = self.configs.model.replace(
        num_classes=self.teacher.config.num_classes, linear_probe=False)
    if config.ft_proj_selector == 0:
      config = config.replace(proj_head_mode='none')
    return config

  def metric_names(self) -> List[str]:
    names = ['distill_loss', 'teacher_student_agreement']
    if self.uses_labels:
      names += ['supervised_loss', 'supervised_acc']
    return names

  def loss_terms(self, state, images, labels, outputs) -> StepTerms:
    train = self.configs.train
    teacher_logits = self.teacher(images, training=False)['logits_sup']
    result = losses.distillation_terms(
        teacher_logits, outputs['logits_sup'], labels,
        alpha=train.distill_alpha, temperature=train.distill_temperature)
    terms = StepTerms(
        losses={'distill_loss': result.distill_loss},
        metrics={'teacher_student_agreement': result.agreement})
    if self.uses_labels:
      terms.losses['supervised_loss'] = result.supervised_loss
      terms.metrics['supervised_acc'] = result.supervised_accuracy
    return terms
