"""Loading models and the checkpoints of training model_dirs (see
published.py)."""

from simclr.checkpoints.published import CHECKPOINT_LAYOUTS
from simclr.checkpoints.published import CHECKPOINT_STATE_FILE
from simclr.checkpoints.published import checkpoint_damage
from simclr.checkpoints.published import checkpoint_layout
from simclr.checkpoints.published import checkpoint_step
from simclr.checkpoints.published import CheckpointError
from simclr.checkpoints.published import copy_layer
from simclr.checkpoints.published import ENCODER_FIELDS
from simclr.checkpoints.published import ft_proj_selector_of
from simclr.checkpoints.published import head_labels_of
from simclr.checkpoints.published import infer_published_config
from simclr.checkpoints.published import init_from_checkpoint
from simclr.checkpoints.published import load_model
from simclr.checkpoints.published import MODEL_CONFIG_FILE
from simclr.checkpoints.published import newest_intact_checkpoint
from simclr.checkpoints.published import object_graph_paths
from simclr.checkpoints.published import published_model_tree
from simclr.checkpoints.published import published_paths
from simclr.checkpoints.published import recorded_config
from simclr.checkpoints.published import restore_strict
from simclr.checkpoints.published import resolve_checkpoint
from simclr.checkpoints.published import resumable_checkpoint
from simclr.checkpoints.published import resume_command
from simclr.checkpoints.published import training_checkpoint
