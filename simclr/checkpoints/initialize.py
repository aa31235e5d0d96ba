"""Initialising a model from another run's weights (--checkpoint,
--teacher_checkpoint): the encoder and projection head strictly, the
supervised head only where it fits and was fitted on labels the new run may
see (simclr/head_labels.py).
"""

from typing import Optional

from absl import logging

from simclr import head_labels
from simclr.checkpoints.load import copy_layer
from simclr.checkpoints.load import load_model
from simclr.checkpoints.load import recorded_config
from simclr.checkpoints.resolve import CheckpointError
from simclr.checkpoints.resolve import MODEL_CONFIG_FILE
from simclr.models.simclr_model import SimCLRModel

# Architecture fields a checkpoint must agree on with the flags.
ENCODER_FIELDS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                  'cifar_stem')


def ft_proj_selector_of(path: str, flag_value: Optional[int],
                        flag_name: str) -> int:
  """The ft_proj_selector the model at `path` was fine-tuned with: the value
  recorded in our files (a `flag_value` that contradicts it is an error
  naming both), else `flag_value`, else 0 (published files do not record it;
  the published fine-tuned models' classifiers that read the first head
  layer need the flag)."""
  recorded = recorded_config(path)
  if recorded is not None:
    if flag_value is not None and flag_value != recorded.ft_proj_selector:
      raise CheckpointError(
          f'{flag_name}={flag_value} contradicts ft_proj_selector='
          f'{recorded.ft_proj_selector} recorded in {path} '
          f'({MODEL_CONFIG_FILE}); drop the flag or fix it')
    return recorded.ft_proj_selector
  return 0 if flag_value is None else flag_value


def init_from_checkpoint(model: SimCLRModel, path: str,
                         with_supervised_head: bool = True,
                         source_ft_proj_selector: Optional[int] = None,
                         require_supervised_head: bool = False,
                         labels: Optional[head_labels.HeadLabels] = None
                         ) -> bool:
  """Copies the encoder and projection head of the model at `path` (any form
  load_model reads) into `model`, strictly; and the supervised head when
  `with_supervised_head`, it exists there with the same shape and the same
  ft_proj_selector (see ft_proj_selector_of; source_ft_proj_selector is what
  --checkpoint_ft_proj_selector says), zero_init_logits_layer is off, and
  it was fitted on labels the new run may see: `labels` are the new run's
  (None: no restriction, e.g. evaluation), compared with the record at
  `path` by simclr.head_labels.why_not_reusable.
  Returns whether the supervised head was copied; with
  require_supervised_head, not copying it is an error (evaluating a head
  that was never trained would report chance as a result). Raises
  CheckpointError naming what does not fit."""
  selector = ft_proj_selector_of(path, source_ft_proj_selector,
                                 '--checkpoint_ft_proj_selector')
  source = load_model(path, ft_proj_selector=0)
  mismatch = [(f, getattr(model.config, f), getattr(source.config, f))
              for f in ENCODER_FIELDS
              if getattr(model.config, f) != getattr(source.config, f)]
  if mismatch:
    raise CheckpointError(
        f'{path}: architecture differs from the flags: ' + ', '.join(
            f'--{f}: checkpoint {s!r} vs flags {m!r}' for f, m, s in mismatch))
  copy_layer(source.resnet, model.resnet, path, 'encoder')
  if model.projection_head is not None:
    have = (0 if source.projection_head is None else
            len(source.projection_head.head_layers))
    if have != len(model.projection_head.head_layers):
      raise CheckpointError(
          f'{path}: has a projection head of {have} layers, the flags ask for '
          f'{len(model.projection_head.head_layers)} (--proj_head_mode, '
          f'--num_proj_layers)')
    copy_layer(source.projection_head, model.projection_head, path,
               'projection head')
  head, source_head = model.supervised_head, source.supervised_head
  reasons = []
  if not with_supervised_head:
    reasons.append('the task trains it afresh')
  if head is None or source_head is None:
    reasons.append('no supervised head in ' +
                   ('the model' if head is None else path))
  elif source_head.dense.kernel.shape != head.dense.kernel.shape:
    reasons.append(f'shape {source_head.dense.kernel.shape.as_list()} there, '
                   f'{head.dense.kernel.shape.as_list()} here')
  if model.config.zero_init_logits_layer:
    reasons.append('--zero_init_logits_layer')
  if selector != model.config.ft_proj_selector:
    reasons.append(f'it reads projection-head output {selector} there, '
                   f'{model.config.ft_proj_selector} here (--ft_proj_selector)')
  leak = None
  if labels is not None and head is not None and source_head is not None:
    leak = head_labels.why_not_reusable(source.head_labels, labels)
    if leak:
      reasons.append(leak)
  if not reasons:
    copy_layer(source_head, head, path, 'supervised head')
    logging.info('Supervised head restored from %s', path)
    return True
  if require_supervised_head:
    raise CheckpointError(f'{path}: its supervised head cannot be used: '
                          f'{"; ".join(reasons)}')
  if head is not None:
    # A head withheld because of its labels is worth a warning: the user
    # may have expected it to be reused.
    log = logging.warning if leak else logging.info
    log('Supervised head of %s not used, it starts from %s: %s', path,
        'zeros' if model.config.zero_init_logits_layer else
        'random normal, stddev 0.01', '; '.join(reasons))
  return False
