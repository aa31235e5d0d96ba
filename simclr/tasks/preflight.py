"""The checks a run makes before any computation, each failing with a
RunError that names the flag: paths and checkpoints (before TensorFlow's
runtime starts, which a MultiWorkerMirroredStrategy must configure first),
batch sizes against the replicas, and the dataset's splits, label subset
and k-NN settings once its source is open."""

import tensorflow as tf

from simclr import checkpoints
from simclr import paths
from simclr.configs import RunConfigs
from simclr.configs import SUBSET_INPUT_KINDS
from simclr.data import Inputs
from simclr.tasks.base import RunError
from simclr.tasks.base import Task


def check_paths(configs: RunConfigs):
  """A --model_dir that cannot be created or written, a --data_dir or
  --label_subset_file of the wrong kind, and --checkpoint /
  --teacher_checkpoint paths that are not a model or are damaged
  (check_checkpoint_paths)."""
  train, data = configs.train, configs.data
  if not train.model_dir:
    raise RunError('--model_dir: required (checkpoints, summaries and '
                   'exports are written there)')
  try:
    paths.check_output_dir(train.model_dir)
  except paths.PathError as e:
    raise RunError(f'--model_dir: {e}') from None
  if data.data_dir:
    try:
      if data.dataset == 'digits':  # Prepared into data_dir on first use.
        paths.check_output_dir(data.data_dir)
      elif tf.io.gfile.exists(data.data_dir):
        # (A missing one is TFDS's "not prepared", with the command to run.)
        paths.check_input_dir(data.data_dir)
    except paths.PathError as e:
      raise RunError(f'--data_dir: {e}') from None
  if data.label_subset_file is not None:
    try:
      paths.check_input_file(data.label_subset_file)
    except paths.PathError as e:
      raise RunError(f'--label_subset_file: {e}') from None
  check_checkpoint_paths(configs)


def check_checkpoint_paths(configs: RunConfigs):
  """--checkpoint / --teacher_checkpoint paths that are not a model, or
  whose checkpoint is damaged (then naming the file, and the newest intact
  checkpoint of a model_dir)."""
  for flag in ('checkpoint', 'teacher_checkpoint'):
    path = getattr(configs.train, flag)
    if not path:
      continue
    try:
      _, prefix = checkpoints.resolve_checkpoint(path)
    except checkpoints.CheckpointError as e:
      raise RunError(f'--{flag}: {e}') from None
    problem = checkpoints.checkpoint_damage(prefix)
    if problem is None:
      continue
    message = f'--{flag}={path}: damaged checkpoint: {problem}'
    if tf.io.gfile.isdir(path) and prefix.startswith(path):
      intact, _ = checkpoints.newest_intact_checkpoint(
          path, below_step=checkpoints.checkpoint_step(prefix))
      if intact is not None:
        message += (f'; the newest intact checkpoint there is {intact}: pass '
                    f'--{flag}={intact} to start from it')
    raise RunError(message)


def check_batch_sizes(configs: RunConfigs, replicas: int):
  """Each batch must split evenly over the replicas."""
  for flag in ('train_batch_size', 'eval_batch_size'):
    value = getattr(configs.data, flag)
    if value % replicas:
      raise RunError(f'--{flag}={value} is not divisible by the {replicas} '
                     f'replicas')


def check_inputs(configs: RunConfigs, inputs: Inputs, task: Task):
  """The splits the run reads, the label subset its task trains on, and
  the k-NN settings."""
  check_splits(configs, inputs)
  if task.input_kind in SUBSET_INPUT_KINDS:
    check_label_subset(configs, inputs)
  if configs.train.knn_eval_steps:
    check_knn_settings(configs, inputs)


def check_splits(configs: RunConfigs, inputs: Inputs):
  """Refuses a split the dataset does not have, or one that selects no
  examples: --train_split always (it also sizes an eval run's schedule),
  --eval_split when evaluation or k-NN reads it."""
  data, train = configs.data, configs.train
  used = [('train_split', data.train_split)]
  if train.mode != 'train' or train.knn_eval_steps:
    used.append(('eval_split', data.eval_split))
  for flag, split in used:
    try:
      inputs.source.check_split(split)
    except ValueError as e:
      raise RunError(f'--{flag}={split}: {e}') from None


def check_label_subset(configs: RunConfigs, inputs: Inputs):
  """Reads --label_subset_file or draws the --train_label_fraction subset
  now (the pipelines reuse it), so that a bad one stops the run here."""
  data = configs.data
  flag = (f'--label_subset_file={data.label_subset_file}'
          if data.label_subset_file is not None else
          f'--train_label_fraction={data.train_label_fraction}')
  try:
    inputs.label_subset()
  except ValueError as e:
    raise RunError(f'{flag}: {e}') from None


def check_knn_settings(configs: RunConfigs, inputs: Inputs):
  """Refuses now what would stop the first k-NN evaluation mid-run."""
  data, train = configs.data, configs.train
  if not inputs.num_classes:
    raise RunError(f'--knn_eval_steps: --dataset={data.dataset} has no '
                   f'labels for the k-NN bank')
  bank = inputs.num_examples(data.train_split)
  if train.knn_k > bank:
    raise RunError(f'--knn_k={train.knn_k}: more than the {bank} examples '
                   f'of --train_split={data.train_split} (the k-NN bank)')
  if not inputs.num_eval_examples:
    raise RunError(f'--knn_eval_steps: --eval_split={data.eval_split} is '
                   f'empty (the k-NN queries)')
