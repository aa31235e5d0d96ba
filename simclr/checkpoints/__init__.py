"""Checkpoints and loading models, one module per job:

  resolve.py     what a checkpoint path means (a SavedModel, a model_dir, a
                 prefix); CheckpointError, which the whole package raises
  damage.py      damaged checkpoints, the newest intact one, resuming a run
  published.py   the published object-graph layout: our model's variables at
                 the published paths, training checkpoints, inferring a
                 published file's architecture
  load.py        load_model (published files and ours), strict restores,
                 copying layers, what our files record beside the weights
  initialize.py  initialising from another run (--checkpoint,
                 --teacher_checkpoint), reusing its supervised head or not

The names below are the package's public API; import them from here.
"""

from simclr.checkpoints.damage import checkpoint_damage
from simclr.checkpoints.damage import checkpoint_step
from simclr.checkpoints.damage import newest_intact_checkpoint
from simclr.checkpoints.damage import resumable_checkpoint
from simclr.checkpoints.damage import resume_command
from simclr.checkpoints.initialize import ENCODER_FIELDS
from simclr.checkpoints.initialize import ft_proj_selector_of
from simclr.checkpoints.initialize import init_from_checkpoint
from simclr.checkpoints.load import copy_layer
from simclr.checkpoints.load import head_labels_of
from simclr.checkpoints.load import load_model
from simclr.checkpoints.load import recorded_config
from simclr.checkpoints.load import restore_strict
from simclr.checkpoints.published import CHECKPOINT_LAYOUTS
from simclr.checkpoints.published import checkpoint_layout
from simclr.checkpoints.published import infer_published_config
from simclr.checkpoints.published import object_graph_paths
from simclr.checkpoints.published import published_model_tree
from simclr.checkpoints.published import published_paths
from simclr.checkpoints.published import training_checkpoint
from simclr.checkpoints.resolve import CHECKPOINT_STATE_FILE
from simclr.checkpoints.resolve import CheckpointError
from simclr.checkpoints.resolve import MODEL_CONFIG_FILE
from simclr.checkpoints.resolve import resolve_checkpoint
