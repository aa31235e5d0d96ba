"""SimCLR / SimCLRv2 in TensorFlow 2 with the Keras 2 API (tf_keras).

Public API: ModelConfig, build_model, load_model, export_saved_model, losses.
"""

from simclr.configs import ModelConfig
from simclr.models.simclr_model import OUTPUT_KEYS
from simclr.models.simclr_model import SimCLRModel
from simclr.models.simclr_model import build_model
from simclr.checkpoints import load_model
from simclr import losses
from simclr.export import export_saved_model
