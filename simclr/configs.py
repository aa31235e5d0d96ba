"""Configuration dataclasses. Field names equal the command-line flag names of
the published `tf2/run.py`, so flags map onto them one to one."""

import dataclasses
import json
from typing import Optional

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
TRAIN_MODES = ('pretrain', 'finetune', 'distill', 'linear_eval')


@dataclasses.dataclass
class ModelConfig:
  """What `simclr.build_model` builds.

  num_classes: size of the supervised head; 0 or None builds no supervised
    head (an encoder, e.g. a distillation student without labels).
  proj_head_mode: 'none' builds no projection head (proj_head_output is then
    the encoder output, as in the published code).
  train_mode: 'pretrain' feeds the supervised head a stopped gradient (linear
    evaluation while pretraining must not shape the encoder); freezing with
    fine_tune_after_block is refused in that mode, as published.
  """
  resnet_depth: int = 50
  width_multiplier: float = 1
  sk_ratio: float = 0.0
  se_ratio: float = 0.0
  image_size: int = 224
  num_classes: Optional[int] = 1000
  proj_head_mode: str = 'nonlinear'
  num_proj_layers: int = 3
  proj_out_dim: int = 128
  ft_proj_selector: int = 0
  batch_norm_decay: float = 0.9
  global_bn: bool = True
  zero_init_logits_layer: bool = False
  fine_tune_after_block: int = -1
  train_mode: str = 'finetune'

  def __post_init__(self):
    self.validate()

  @property
  def cifar_stem(self) -> bool:
    return self.image_size <= 32

  @property
  def num_head_layers(self) -> int:
    """Number of dense layers in the projection head."""
    return {'none': 0, 'linear': 1, 'nonlinear': self.num_proj_layers}[
        self.proj_head_mode]

  def validate(self):
    """Raises ValueError naming the field and what was expected."""
    def fail(field, expected):
      raise ValueError(
          f'ModelConfig.{field}={getattr(self, field)!r}: expected {expected}')

    if self.resnet_depth not in RESNET_DEPTHS:
      fail('resnet_depth', f'one of {RESNET_DEPTHS}')
    if not self.width_multiplier > 0 or int(
        round(64 * self.width_multiplier)) < 2:
      fail('width_multiplier', 'a positive number with 64 * width >= 2')
    if self.sk_ratio < 0:
      fail('sk_ratio', '>= 0 (0 disables selective kernels)')
    if self.se_ratio < 0:
      fail('se_ratio', '>= 0 (0 disables squeeze-excitation)')
    # The CIFAR stem (image_size <= 32) keeps three stride-2 stages, so
    # smaller images would leave block_group4 without a full pixel.
    if self.image_size < 8:
      fail('image_size', '>= 8 (the network downsamples by 8 at least)')
    if self.proj_head_mode not in PROJ_HEAD_MODES:
      fail('proj_head_mode', f'one of {PROJ_HEAD_MODES}')
    if self.proj_head_mode == 'nonlinear' and self.num_proj_layers < 1:
      fail('num_proj_layers', '>= 1 for a nonlinear projection head')
    if self.proj_out_dim < 1:
      fail('proj_out_dim', '>= 1')
    n = self.num_head_layers
    if not -(n + 1) <= self.ft_proj_selector <= n:
      fail('ft_proj_selector',
           f'an index into the {n + 1} projection-head outputs '
           f'(0 = head input, 1..{n} = layer outputs, -1 = last), '
           f'i.e. in [{-(n + 1)}, {n}]')
    if self.num_classes is not None and self.num_classes < 0:
      fail('num_classes', '>= 0 (0 or None: no supervised head)')
    if not -1 <= self.fine_tune_after_block <= 4:
      fail('fine_tune_after_block',
           '-1 (train everything) .. 4 (train only the heads)')
    if self.train_mode not in TRAIN_MODES:
      fail('train_mode', f'one of {TRAIN_MODES}')
    if self.train_mode == 'pretrain' and self.fine_tune_after_block != -1:
      fail('fine_tune_after_block',
           '-1 during pretraining (freezing is for fine-tuning only)')
    if not 0 <= self.batch_norm_decay < 1:
      fail('batch_norm_decay', 'in [0, 1)')

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'ModelConfig':
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)


LINEAR_EVAL_PROTOCOLS = ('cached', 'augmented')
PRECISIONS = ('float32', 'bfloat16', 'float16')
MODES = ('train', 'eval', 'train_then_eval')


@dataclasses.dataclass
class TrainConfig:
  """The loop and objective of a run (what tf2/run.py's remaining flags say).

  mode: 'train', 'eval' (evaluate the checkpoints of model_dir as they
    appear, or `checkpoint`), 'train_then_eval'.
  train_mode: 'pretrain' (NT-Xent, + memory when memory_size > 0), 'finetune'
    (from `checkpoint`; without one, supervised training from scratch),
    'distill' (student from `teacher_checkpoint`),
    'linear_eval' (linear classifier on frozen final_avg_pool features of
    `checkpoint`).
  train_steps / train_epochs: train_steps > 0 overrides epochs; epochs give
    num_examples * train_epochs // batch + 1 steps, as published.
  checkpoint_steps / checkpoint_epochs: checkpoint interval (steps overrides).
  steps_per_loop: steps inside one tf.function call between progress lines
    and summaries (0: the checkpoint interval, as published).
  memory_size / memory_momentum: SimCLRv2's memory of momentum keys (0: off).
  distill_temperature / distill_alpha: Eq. 2 / Eq. 3 of SimCLRv2.
  linear_eval_protocol: 'cached' (features of centre crops computed once, a
    linear classifier trained on them) or 'augmented' (crop + flip each step,
    the published protocol).
  precision: Keras mixed-precision policy; losses, BN statistics, logits in
    float32.
  eval_wait_secs: in eval mode with no checkpoint yet, how long to wait for
    one (0: fail at once).
  """
  mode: str = 'train'
  train_mode: str = 'pretrain'
  model_dir: Optional[str] = None
  checkpoint: Optional[str] = None
  teacher_checkpoint: Optional[str] = None
  train_epochs: int = 100
  train_steps: int = 0
  eval_steps: int = 0
  checkpoint_epochs: int = 1
  checkpoint_steps: int = 0
  steps_per_loop: int = 0
  keep_checkpoint_max: int = 5
  keep_hub_module_max: int = 1
  temperature: float = 0.1
  hidden_norm: bool = True
  lineareval_while_pretraining: bool = True
  memory_size: int = 0
  memory_momentum: float = 0.999
  distill_temperature: float = 1.0
  distill_alpha: float = 1.0
  linear_eval_protocol: str = 'cached'
  linear_eval_epochs: int = 100
  precision: str = 'float32'
  jit_compile: bool = False
  eval_name: Optional[str] = None
  eval_wait_secs: float = 0

  def __post_init__(self):
    self.validate()

  def validate(self):
    def fail(field, expected):
      raise ValueError(
          f'TrainConfig.{field}={getattr(self, field)!r}: expected {expected}')

    if self.mode not in MODES:
      fail('mode', f'one of {MODES}')
    if self.train_mode not in TRAIN_MODES:
      fail('train_mode', f'one of {TRAIN_MODES}')
    if self.temperature <= 0:
      fail('temperature', '> 0')
    if self.distill_temperature <= 0:
      fail('distill_temperature', '> 0')
    if not 0 <= self.distill_alpha <= 1:
      fail('distill_alpha', 'in [0, 1]')
    if self.memory_size < 0:
      fail('memory_size', '>= 0 (0 disables the memory)')
    if not 0 <= self.memory_momentum <= 1:
      fail('memory_momentum', 'in [0, 1]')
    if self.linear_eval_protocol not in LINEAR_EVAL_PROTOCOLS:
      fail('linear_eval_protocol', f'one of {LINEAR_EVAL_PROTOCOLS}')
    if self.precision not in PRECISIONS:
      fail('precision', f'one of {PRECISIONS}')
    for field in ('train_steps', 'eval_steps', 'checkpoint_steps',
                  'steps_per_loop'):
      if getattr(self, field) < 0:
        fail(field, '>= 0')
    if self.train_steps == 0 and self.train_epochs < 1:
      fail('train_epochs', '>= 1 when train_steps is 0')
    if self.checkpoint_steps == 0 and self.checkpoint_epochs < 1:
      fail('checkpoint_epochs', '>= 1 when checkpoint_steps is 0')
    if self.keep_checkpoint_max < 1:
      fail('keep_checkpoint_max', '>= 1')
    if self.train_mode == 'linear_eval' and not self.checkpoint:
      fail('checkpoint', 'the checkpoint or SavedModel whose features '
                         'linear evaluation trains on')
    if self.train_mode == 'distill' and not self.teacher_checkpoint:
      fail('teacher_checkpoint', 'the fine-tuned teacher (a checkpoint or '
                                 'SavedModel) for distillation')
