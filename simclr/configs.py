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
