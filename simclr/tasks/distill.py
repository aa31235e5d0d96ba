"""--train_mode=distill: SimCLRv2's third step. A fixed teacher (the
fine-tuned model of --teacher_checkpoint, in inference mode) labels the
unlabeled training images; a student (the architecture of the flags: the
teacher's for self-distillation, a smaller one otherwise; initialised from
--checkpoint when given) learns its softened predictions.

Loss on one replica: SimCLRv2 Eq. 2 (--distill_alpha=1, the default) or
Eq. 3: alpha * distillation + (1 - alpha) * cross-entropy of the labeled rows,
both terms summed over the rows and divided by the batch size
(simclr.losses.distillation_terms), + weight decay. Only the examples of the
label subset carry a label in the 'all_images' input; every other row is
unlabeled (-1) and enters only the distillation term. --distill_on=labeled
reads only the labeled examples (the 'labeled' input, as fine-tuning).

The label subset is the teacher's: a teacher fine-tuned on a subset records
it (simclr.head_labels), and the student takes it unless
--train_label_fraction / --label_subset_file name one; a different one, or
any subset under a teacher fitted on every label (a pretraining probe, a
fine-tuning on all labels, a published-format model), is refused unless
--allow_other_label_subset.
"""

from typing import List, Optional

from absl import logging

from simclr import checkpoints
from simclr import losses
from simclr.configs import ModelConfig
from simclr.head_labels import HeadLabels
from simclr.tasks.base import RunError
from simclr.tasks.base import StepTerms
from simclr.tasks.base import Task


class DistillTask(Task):
  name = 'distill'
  teacher = None
  # What the student's head is fitted on (set by check()).
  _head_labels = None

  @property
  def input_kind(self) -> str:
    if self.configs.train.distill_on == 'labeled':
      return 'labeled'  # Only the label subset's examples.
    return 'all_images'

  @property
  def uses_labels(self) -> bool:
    return self.configs.train.distill_alpha < 1

  def check(self):
    train = self.configs.train
    if self.uses_labels and not self.num_classes:
      raise RunError(
          f'--distill_alpha={train.distill_alpha} mixes in '
          f'labels, but --dataset={self.configs.data.dataset} has none')
    if train.distill_on == 'labeled' and not self.num_classes:
      raise RunError(f'--distill_on=labeled: --dataset='
                     f'{self.configs.data.dataset} has no labels')
    if self.inputs is not None:
      self._head_labels = self._label_subset_of_teacher()

  def _label_subset_of_teacher(self) -> HeadLabels:
    """Makes the run's label subset the teacher's (or checks the one the
    flags name against it) and returns what the student's head is fitted
    on."""
    data, train = self.configs.data, self.configs.train
    try:
      teacher = checkpoints.head_labels_of(train.teacher_checkpoint)
    except checkpoints.CheckpointError as e:
      raise RunError(f'--teacher_checkpoint={e}') from None
    if data.label_subset_file is not None:
      named = f'--label_subset_file={data.label_subset_file}'
    elif data.train_label_fraction < 1:
      named = (f'--train_label_fraction={data.train_label_fraction:g} '
               f'--label_subset_seed={data.label_subset_seed}')
    else:
      named = None
    every = HeadLabels.every_label(data.dataset, data.train_split)
    if named is None:
      if not teacher.is_subset:
        return teacher if teacher.recorded else every
      if teacher.subset_ids is None:
        raise RunError(
            f'--teacher_checkpoint={train.teacher_checkpoint}: records a '
            f'label subset ({teacher.describe()}) but not its ids; pass '
            f'the subset with --label_subset_file')
      try:
        self.inputs.use_label_subset(
            teacher.subset_ids, f'the teacher {train.teacher_checkpoint}')
      except ValueError as e:
        raise RunError(f'--teacher_checkpoint: {e}') from None
      logging.info('Label subset: the teacher\'s (%s)', teacher.describe())
      return teacher
    try:
      ids = self.inputs.label_subset()
    except ValueError as e:
      raise RunError(f'{named}: {e}') from None
    own = HeadLabels.of_subset(data.dataset, data.train_split, ids)
    if teacher.is_subset and teacher.subset_sha256 == own.subset_sha256:
      return own
    if teacher.is_subset:
      problem = (f'{named} gives {own.describe()}, but the teacher '
                 f'{train.teacher_checkpoint} was fine-tuned on '
                 f'{teacher.describe()}; drop the flag to use the '
                 f'teacher\'s subset')
    else:
      problem = (f'{named} asks for a subset of {own.subset_size} labels, '
                 f'but the teacher {train.teacher_checkpoint} was fitted on '
                 f'{teacher.describe()}, so the student would learn from '
                 f'every label; drop the flag for an all-label run')
    if not train.allow_other_label_subset:
      raise RunError(f'{problem}, or pass --allow_other_label_subset')
    logging.warning('%s; going on (--allow_other_label_subset): the '
                    'student counts as trained on every label', problem)
    return every

  def head_labels(self) -> Optional[HeadLabels]:
    return self._head_labels

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
        alpha=train.distill_alpha, temperature=train.distill_temperature,
        temperature_squared=train.distill_temperature_squared)
    terms = StepTerms(
        losses={'distill_loss': result.distill_loss},
        metrics={'teacher_student_agreement': result.agreement})
    if self.uses_labels:
      terms.losses['supervised_loss'] = result.supervised_loss
      terms.metrics['supervised_acc'] = result.supervised_accuracy
    return terms
