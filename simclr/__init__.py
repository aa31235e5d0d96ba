"""SimCLR / SimCLRv2 in TensorFlow 2 with the Keras 2 API (tf_keras).

Public API: ModelConfig, build_model, load_model, export_saved_model, losses,
train.
"""

from simclr.configs import ModelConfig
from simclr.models.simclr_model import OUTPUT_KEYS
from simclr.models.simclr_model import SimCLRModel
from simclr.models.simclr_model import build_model
from simclr.checkpoints import load_model
from simclr import losses
from simclr.export import export_saved_model


def train(**flag_values):
  """A whole run from tf2/run.py's flag names; see simclr.tasks.runner.train.
  Returns the eval result dict (None when --mode=train)."""
  from simclr.tasks import runner  # pylint: disable=g-import-not-at-top
  return runner.train(**flag_values)
