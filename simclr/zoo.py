"""The SimCLRv2 model family: variants of Table 1 and their parameter counts."""

import re
from typing import Tuple

import numpy as np

from simclr.configs import ModelConfig
from simclr.models.simclr_model import build_model

SK_RATIO = 0.0625
# (depth, width, sk) -> parameters (millions) of Table 1 in SimCLRv2, ResNet up
# to the final average pool. These round from the count of all the ResNet's
# variables, BN moving statistics included: trainable variables alone give
# 232.3 and 353.4 for the two 152x2 variants.
TABLE1_PARAMS_M = {
    (50, 1, False): 24, (50, 1, True): 35, (50, 2, False): 94,
    (50, 2, True): 140, (101, 1, False): 43, (101, 1, True): 65,
    (101, 2, False): 170, (101, 2, True): 257, (152, 1, False): 58,
    (152, 1, True): 89, (152, 2, False): 233, (152, 2, True): 354,
    (152, 3, True): 795,
}


def parse_variant(text: str) -> Tuple[int, float, bool]:
  """'50x2sk' -> (50, 2, True); '18x0.25' -> (18, 0.25, False)."""
  match = re.fullmatch(r'(\d+)x([\d.]+)(sk)?', text.strip().lower())
  if not match:
    raise ValueError(f'variant {text!r}: expected <depth>x<width>[sk], '
                     f'e.g. 50x1, 50x2sk, 18x0.25')
  width = float(match.group(2))
  return (int(match.group(1)), int(width) if width.is_integer() else width,
          bool(match.group(3)))


def encoder_config(depth: int, width: float, sk: bool) -> ModelConfig:
  return ModelConfig(resnet_depth=depth, width_multiplier=width,
                     sk_ratio=SK_RATIO if sk else 0.0, image_size=224,
                     num_classes=None, proj_head_mode='none', global_bn=False)


def count_encoder_parameters(depth: int, width: float,
                             sk: bool) -> Tuple[int, int]:
  """(trainable, all) parameters of the built ResNet up to the final average
  pool; `all` adds the BN moving statistics."""
  model = build_model(encoder_config(depth, width, sk))
  count = lambda variables: int(sum(np.prod(v.shape) for v in variables))
  return count(model.resnet.trainable_variables), count(model.resnet.variables)
