"""Loading models: published-format SavedModels and checkpoints (those of
gs://simclr-checkpoints-tf2 and of the published `tf2/run.py`), and our own
checkpoints, with the architecture inferred and every variable accounted for.

Published files are read through their object graph (attribute names and list
positions of the published Keras layers, e.g.
`model/resnet_model/block_groups/0/layers/0/conv2d_bn_layers/0/conv2d/kernel`),
never through Keras' auto-generated variable names, which differ between
exports of the same architecture.

Our training model_dirs are written in the same layout (`training_checkpoint`
with layout='published'): the model's variables sit at the published paths
under the key `model`, so the published run.py restores them; model_dirs
written before that hold the tf_keras model itself under `model` ('legacy'
layout, see `checkpoint_layout`).
"""

import os
import re
from typing import Dict, Iterator, List, Optional, Tuple

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr import head_labels
from simclr.configs import ModelConfig
from simclr.models import resnet as resnet_lib
from simclr.models.simclr_model import SimCLRModel
from simclr.models.simclr_model import build_model

# Our own model_dirs and exports carry the ModelConfig in this file.
MODEL_CONFIG_FILE = 'model_config.json'
# Children of a checkpointed object that are aliases of other children (lists
# of all variables, Keras bookkeeping), not structure.
_ALIAS_CHILDREN = frozenset([
    'variables', 'trainable_variables', 'non_trainable_variables',
    'trainable_weights', 'non_trainable_weights', 'weights', 'keras_api',
    'trainable_variables_list', 'layer_metrics', 'signatures',
    '_self_unconditional_dependency_names'
])
_BN_VARIABLES = ('gamma', 'beta', 'moving_mean', 'moving_variance')
# How the model sits in a training checkpoint (see training_checkpoint).
CHECKPOINT_LAYOUTS = ('published', 'legacy')
# The index of a model_dir's checkpoints that tf.train.CheckpointManager
# keeps (tf.train.get_checkpoint_state reads it).
CHECKPOINT_STATE_FILE = 'checkpoint'


class CheckpointError(ValueError):
  """A path that is not a loadable model, or whose variables do not fit."""


# ---------------------------------------------------------------------------
# Locating and reading files.


def resolve_checkpoint(path: str) -> Tuple[str, str]:
  """Returns (kind, prefix) for a SavedModel dir, a model_dir, or a checkpoint
  prefix. kind is 'saved_model' or 'checkpoint'; prefix is what
  tf.train.load_checkpoint reads."""
  if not path:
    raise CheckpointError('no checkpoint path given')
  if tf.io.gfile.isdir(path):
    if tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
      prefix = os.path.join(path, 'variables', 'variables')
      if not tf.io.gfile.exists(prefix + '.index'):
        raise CheckpointError(
            f'{path}: SavedModel without variables/variables.index')
      return 'saved_model', prefix
    # The checkpoint a model_dir's index names, even when its files are gone
    # (tf.train.latest_checkpoint would then say None): checkpoint_damage
    # names what is missing.
    state = _checkpoint_state(path)
    if state is not None and state.model_checkpoint_path:
      return 'checkpoint', state.model_checkpoint_path
    indexes = sorted(tf.io.gfile.glob(os.path.join(path, '*.index')))
    if len(indexes) == 1:
      return 'checkpoint', indexes[0][:-len('.index')]
    raise CheckpointError(
        f'{path}: expected a SavedModel (saved_model.pb), a model_dir with a '
        f'"checkpoint" file, or a checkpoint prefix; found '
        f'{sorted(tf.io.gfile.listdir(path))[:10]}')
  if tf.io.gfile.exists(path + '.index'):
    return 'checkpoint', path
  if path.endswith('.index') and tf.io.gfile.exists(path):
    return 'checkpoint', path[:-len('.index')]
  data_file = re.match(r'^(.*)\.data-\d{5}-of-\d{5}$', path)
  if data_file and tf.io.gfile.exists(data_file.group(1) + '.index'):
    return 'checkpoint', data_file.group(1)
  if tf.io.gfile.exists(path):
    raise CheckpointError(f'{path}: {_wrong_kind_of_file(path)}')
  raise CheckpointError(
      f'{path}: does not exist (expected a SavedModel directory, a model_dir '
      f'or a checkpoint prefix such as model_dir/ckpt-1000)')


def _wrong_kind_of_file(path: str) -> str:
  """Why the existing non-directory `path` is not a model path, and what
  to pass instead."""
  name, parent = os.path.basename(path), os.path.dirname(path) or '.'
  size = tf.io.gfile.stat(path).length
  expected = ('not a SavedModel directory, a model_dir or a checkpoint prefix '
              '(such as model_dir/ckpt-1000)')
  if name == 'saved_model.pb':
    return (f'is the graph file of a SavedModel, {expected}; pass its '
            f'directory {parent}')
  if name == CHECKPOINT_STATE_FILE:
    return (f'is the checkpoint index of a model_dir, {expected}; pass the '
            f'directory {parent}')
  if name.endswith('.index') or re.search(r'\.data-\d{5}-of-\d{5}$', name):
    return (f'is a file ({size} bytes) of a checkpoint whose .index is '
            f'missing, {expected}')
  return f'is a file ({size} bytes), {expected}'


def object_graph_paths(prefix: str) -> Dict[str, str]:
  """Maps every structural path of a variable in the checkpoint at `prefix`
  (e.g. 'model/resnet_model/.../kernel') to its checkpoint key."""
  reader = tf.train.load_checkpoint(prefix)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  paths = {}

  def walk(node_id, path, on_path):
    node = graph.nodes[node_id]
    for attribute in node.attributes:
      if attribute.name == 'VARIABLE_VALUE':
        paths['/'.join(path)] = attribute.checkpoint_key
    for child in node.children:
      if child.local_name in _ALIAS_CHILDREN or child.node_id in on_path:
        continue
      walk(child.node_id, path + [child.local_name], on_path | {child.node_id})

  walk(0, [], frozenset([0]))
  return paths


# ---------------------------------------------------------------------------
# Damaged checkpoints (a partial copy, a full disk, a flipped bit).

# What reading a damaged checkpoint raises: OpError (an index that is not an
# sstable or fails its checksum, a tensor whose CRC32C does not match, a
# missing file), IndexError (a data file shorter than the index says).
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, RuntimeError,
                OSError)


def _first_line(error: Exception) -> str:
  text = getattr(error, 'message', None) or str(error) or type(error).__name__
  return text.strip().splitlines()[0][:300]


def _data_files(prefix: str) -> List[str]:
  return sorted(tf.io.gfile.glob(prefix + '.data-?????-of-?????'))


def checkpoint_damage(prefix: str) -> Optional[str]:
  """None when the checkpoint at `prefix` reads back whole, else what is
  wrong, naming the file, e.g. '/m/ckpt-6.index is unreadable (not an
  sstable (bad magic number))'.

  Reads the index and every tensor once: TensorFlow checks each tensor
  against the CRC32C and length the index records, so a truncated or
  corrupted data file is found here rather than by a restore that has
  already assigned some variables (or, for optimizer slots, restores them
  lazily in the middle of training)."""
  index = prefix + '.index'
  if not tf.io.gfile.exists(index):
    return f'{index} is missing'
  data = _data_files(prefix)
  if not data:
    return f'{prefix}.data-* is missing (no data file beside {index})'
  shards = int(data[0].rsplit('-of-', 1)[1])
  for shard in range(shards):
    name = f'{prefix}.data-{shard:05d}-of-{shards:05d}'
    if name not in data:
      return f'{name} is missing'
  try:
    reader = tf.train.load_checkpoint(prefix)
    keys = sorted(reader.get_variable_to_dtype_map())
  except _READ_ERRORS as e:
    return f'{index} is unreadable ({_first_line(e)})'
  for key in keys:
    try:
      reader.get_tensor(key)
    except _READ_ERRORS as e:
      where = (data[0] if len(data) == 1 else
               f'one of {", ".join(data)}')
      return (f'{where} is unreadable (tensor {key}: '
              f'{_first_line(e)})')
  return None


def checkpoint_step(prefix: str) -> Optional[int]:
  """The number a checkpoint prefix ends with ('/m/ckpt-40' -> 40)."""
  match = re.search(r'-(\d+)$', prefix)
  return int(match.group(1)) if match else None


def _prefixes_on_disk(model_dir: str) -> List[str]:
  """Numbered checkpoint prefixes with an .index in model_dir, oldest first."""
  prefixes = [p[:-len('.index')] for p in
              tf.io.gfile.glob(os.path.join(model_dir, '*-*.index'))]
  return sorted((p for p in prefixes if checkpoint_step(p) is not None),
                key=checkpoint_step)


def newest_intact_checkpoint(model_dir: str, below_step: Optional[int] = None
                             ) -> Tuple[Optional[str], List[str]]:
  """(the newest checkpoint of model_dir that reads back whole, every intact
  one up to it, oldest first), among those numbered below `below_step`;
  (None, []) when there is none. Checks newest first and stops at the
  first intact one."""
  # The index may list checkpoints whose files are gone, and miss some that
  # are there; by step, the first path seen wins.
  by_step = {}
  state = _checkpoint_state(model_dir)
  listed = list(state.all_model_checkpoint_paths) if state else []
  for prefix in _prefixes_on_disk(model_dir) + listed:
    step = checkpoint_step(prefix)
    if step is not None and (below_step is None or step < below_step):
      by_step.setdefault(step, prefix)
  candidates = [by_step[step] for step in sorted(by_step)]
  for i in range(len(candidates) - 1, -1, -1):
    if checkpoint_damage(candidates[i]) is None:
      older = [p for p in candidates[:i] if tf.io.gfile.exists(p + '.index')]
      return candidates[i], older + [candidates[i]]
  return None, []


def _checkpoint_state(model_dir: str):
  try:
    return tf.train.get_checkpoint_state(model_dir)
  except _READ_ERRORS:
    return None


def resume_command(model_dir: str, prefix: str, kept: List[str]) -> str:
  """The command that makes `prefix` the newest checkpoint of model_dir's
  index (keeping `kept` listed for rotation), so that the run resumes from
  it."""
  names = [os.path.basename(p) for p in kept]
  return (f'python -c "import tensorflow as tf; '
          f'tf.compat.v1.train.update_checkpoint_state('
          f'{_absolute(model_dir)!r}, {os.path.basename(prefix)!r}, '
          f'{names!r})"')


def _absolute(model_dir: str) -> str:
  # update_checkpoint_state keeps names relative to an absolute directory
  # as they are, but rewrites them against a relative one.
  return model_dir if '://' in model_dir else os.path.abspath(model_dir)


def resumable_checkpoint(model_dir: str) -> Optional[str]:
  """The checkpoint a run in model_dir resumes from: the newest one its
  `checkpoint` index names, or None for a model_dir without checkpoints.

  Raises CheckpointError, naming the file, when that checkpoint is damaged
  or missing, when the index is unreadable, or when checkpoint files lie in
  model_dir without an index naming an intact one: a run never trains over
  them from random weights. The message names the newest intact checkpoint
  and the command that resumes from it (resume_command). An index lost with
  the newest checkpoint intact (a kill during the first save, a copy that
  left it out) is rewritten, with a warning."""
  state_file = os.path.join(model_dir, CHECKPOINT_STATE_FILE)
  on_disk = _prefixes_on_disk(model_dir)
  if not tf.io.gfile.exists(state_file):
    if not on_disk:
      return None
    newest = on_disk[-1]
    problem = checkpoint_damage(newest)
    if problem is None:
      tf.compat.v1.train.update_checkpoint_state(
          _absolute(model_dir), os.path.basename(newest),
          [os.path.basename(p) for p in on_disk])
      logging.warning('%s was missing; rewrote it naming %s, the newest '
                      'checkpoint there, to resume from', state_file, newest)
      return newest
    raise CheckpointError(_damage_message(
        model_dir, f'holds checkpoint files but no {CHECKPOINT_STATE_FILE} '
        f'index, and the newest, {os.path.basename(newest)}, is damaged: '
        f'{problem}', checkpoint_step(newest)))
  state = _checkpoint_state(model_dir)
  if state is None or not state.model_checkpoint_path:
    raise CheckpointError(_damage_message(
        model_dir, f'its index {state_file} is unreadable or names no '
        f'checkpoint', None))
  latest = state.model_checkpoint_path
  problem = checkpoint_damage(latest)
  if problem is None:
    return latest
  raise CheckpointError(_damage_message(
      model_dir, f'its newest checkpoint {os.path.basename(latest)} is '
      f'damaged: {problem}', checkpoint_step(latest)))


def _damage_message(model_dir: str, problem: str,
                    step: Optional[int]) -> str:
  intact, kept = newest_intact_checkpoint(model_dir, below_step=step)
  message = (f'{model_dir}: {problem}; not resuming from it nor training '
             f'over it.')
  if intact is None:
    return (message + ' No older intact checkpoint is there: to start '
            'afresh, use a new --model_dir.')
  return (message + f' The newest intact checkpoint is '
          f'{os.path.basename(intact)}; to resume from it run '
          f'{resume_command(model_dir, intact, kept)} and then the same '
          f'command again.')


# ---------------------------------------------------------------------------
# Our model <-> published object-graph paths.


def _bn_paths(batch_norm_relu, path) -> Iterator[Tuple[tf.Variable, str]]:
  bn = batch_norm_relu.bn
  for name in _BN_VARIABLES:
    variable = getattr(bn, name, None)
    if variable is not None:
      yield variable, f'{path}/bn/{name}'


def _conv_paths(conv, path) -> Iterator[Tuple[tf.Variable, str]]:
  """conv: Conv2dFixedPadding (published path holds a `conv2d` child)."""
  yield conv.conv2d.kernel, f'{path}/conv2d/kernel'


def _shortcut_paths(shortcut, path):
  # Published list: [FixedPadding (strided), AvgPool, conv, BN] with ResNet-D,
  # [conv, BN] otherwise; only positions holding variables appear.
  first = 0
  if shortcut.resnet_d:
    first = 2 if shortcut.strides > 1 else 1
  yield from _conv_paths(shortcut.conv, f'{path}/{first}')
  yield from _bn_paths(shortcut.bn, f'{path}/{first + 1}')


def _se_paths(se, path):
  for name in ('se_reduce', 'se_expand'):
    layer = getattr(se, name)
    yield layer.kernel, f'{path}/{name}/kernel'
    yield layer.bias, f'{path}/{name}/bias'


def _block_paths(block, path):
  if isinstance(block, resnet_lib.ResidualBlock):
    if block.shortcut is not None:
      yield from _shortcut_paths(block.shortcut, f'{path}/shortcut_layers')
    layers = f'{path}/conv2d_bn_layers'
    yield from _conv_paths(block.conv1, f'{layers}/0')
    yield from _bn_paths(block.bn1, f'{layers}/1')
    yield from _conv_paths(block.conv2, f'{layers}/2')
    yield from _bn_paths(block.bn2, f'{layers}/3')
    if block.se is not None:
      yield from _se_paths(block.se, f'{path}/se_layer')
    return
  if block.shortcut is not None:
    yield from _shortcut_paths(block.shortcut, f'{path}/projection_layers')
  # Published list: conv, BN, DropBlock, (SK | conv, BN), DropBlock, conv, BN,
  # DropBlock, [SE].
  layers = f'{path}/conv_relu_dropblock_layers'
  yield from _conv_paths(block.conv1, f'{layers}/0')
  yield from _bn_paths(block.bn1, f'{layers}/1')
  if block.selective_kernel is not None:
    sk, sk_path = block.selective_kernel, f'{layers}/3'
    yield from _conv_paths(sk.conv_two_streams,
                           f'{sk_path}/conv2d_fixed_padding')
    yield from _bn_paths(sk.bn_two_streams, f'{sk_path}/batch_norm_relu')
    yield sk.conv_squeeze.kernel, f'{sk_path}/conv2d_0/kernel'
    yield from _bn_paths(sk.bn_squeeze, f'{sk_path}/batch_norm_relu_1')
    yield sk.conv_mixing.kernel, f'{sk_path}/conv2d_1/kernel'
    last = 5
  else:
    yield from _conv_paths(block.conv2, f'{layers}/3')
    yield from _bn_paths(block.bn2, f'{layers}/4')
    last = 6
  yield from _conv_paths(block.conv3, f'{layers}/{last}')
  yield from _bn_paths(block.bn3, f'{layers}/{last + 1}')
  if block.se is not None:
    yield from _se_paths(block.se, f'{layers}/{last + 3}')


def published_paths(model: SimCLRModel) -> List[Tuple[tf.Variable, str]]:
  """Every variable of `model` with its path in a published checkpoint
  (relative to the published Model object)."""
  pairs = []
  stem, prefix = model.resnet.stem, 'resnet_model/initial_conv_relu_max_pool'
  # Published stem list: ResNet-D [conv, BN, conv, BN, conv, Identity, BN,
  # MaxPool, Identity]; otherwise [conv, Identity, BN, ...].
  for i, (conv, bn) in enumerate(zip(stem.deep_convs, stem.deep_bns)):
    pairs += _conv_paths(conv, f'{prefix}/{2 * i}')
    pairs += _bn_paths(bn, f'{prefix}/{2 * i + 1}')
  last = 2 * len(stem.deep_convs)
  pairs += _conv_paths(stem.conv, f'{prefix}/{last}')
  pairs += _bn_paths(stem.bn, f'{prefix}/{last + 2}')
  for g, group in enumerate(model.resnet.block_groups):
    for b, block in enumerate(group.blocks):
      pairs += _block_paths(block,
                            f'resnet_model/block_groups/{g}/layers/{b}')
  if model.projection_head is not None:
    for j, layer in enumerate(model.projection_head.head_layers):
      path = f'_projection_head/linear_layers/{j}'
      pairs.append((layer.dense.kernel, f'{path}/dense/kernel'))
      pairs += _bn_paths(layer.bn, f'{path}/bn_relu')
  if model.supervised_head is not None:
    dense = model.supervised_head.dense
    pairs.append((dense.kernel, 'supervised_head/linear_layer/dense/kernel'))
    pairs.append((dense.bias, 'supervised_head/linear_layer/dense/bias'))
  return pairs


def published_model_tree(model: SimCLRModel) -> tf.Module:
  """A tree of tf.Modules and lists holding every variable of `model` (the
  same variable objects, not copies) at its published object-graph path
  (relative to the published Keras Model), e.g. `tree.resnet_model.
  block_groups[0].layers[0]...`. Checkpointed, the tree's object graph is
  that of the published model: a tf.Module's attributes become children by
  attribute name, list items children '0', '1', ... Raises CheckpointError if
  published_paths does not name every variable of `model` exactly once."""
  pairs = published_paths(model)
  variables = {id(v) for v in model.variables}
  mapped = [id(v) for v, _ in pairs]
  if len(set(mapped)) != len(mapped) or set(mapped) != variables:
    raise CheckpointError(
        f'the published paths cover {len(set(mapped))} of the model\'s '
        f'{len(variables)} variables ({len(mapped)} paths); '
        f'simclr.checkpoints.published_paths must name each exactly once')
  nested = {}
  for variable, path in pairs:
    *parents, leaf = path.split('/')
    node = nested
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = variable

  def build(node):
    if not isinstance(node, dict):
      return node  # a variable
    if all(name.isdigit() for name in node):
      # Published lists hold layers without variables (padding, pooling,
      # DropBlock) between those with; empty modules keep the positions.
      items = [tf.Module() for _ in range(max(int(name) for name in node) + 1)]
      for name, child in node.items():
        items[int(name)] = build(child)
      return items
    tree = tf.Module()
    for name, child in node.items():
      setattr(tree, name, build(child))
    return tree

  return build(nested)


def training_checkpoint(model: SimCLRModel, *, layout: str = 'published',
                        **others) -> tf.train.Checkpoint:
  """The checkpoint object of a training model_dir: `model` at the key
  `model`, and each of `others` (optimizer, global_step, momentum_encoder,
  memory_queue, ...; None values are left out) at its own key.

  layout 'published': the model's variables at the published object-graph
  paths (`model/resnet_model/block_groups/0/...`, see published_model_tree),
  where the published run.py restores them. The optimizer's slot variables
  are recorded against those same variables, hence at the same paths
  (`model/<path>/.OPTIMIZER_SLOT/optimizer/<slot>`), for optimizers that
  keep slots per variable (tf_keras' legacy optimizers, LARS).
  layout 'legacy': the tf_keras model itself (`model/resnet/...`), as our
  model_dirs were written before; keep it to resume such a model_dir (see
  checkpoint_layout).
  """
  if layout not in CHECKPOINT_LAYOUTS:
    raise ValueError(f'layout={layout!r}: expected one of '
                     f'{CHECKPOINT_LAYOUTS}')
  items = {key: value for key, value in others.items() if value is not None}
  items['model'] = (published_model_tree(model) if layout == 'published'
                    else model)
  return tf.train.Checkpoint(**items)


def _layout(paths: Dict[str, str]) -> Optional[str]:
  """'published' or 'legacy' for the structural paths of a checkpoint with a
  model at the key `model`, None without one."""
  if any(path.startswith('model/resnet_model/') for path in paths):
    return 'published'
  if any(path.startswith('model/') for path in paths):
    return 'legacy'
  return None


def _read_object_graph(path: str, prefix: str) -> Dict[str, str]:
  try:
    return object_graph_paths(prefix)
  except KeyError as e:
    raise CheckpointError(f'{path}: not a TF2 object-based checkpoint (no '
                          f'object graph: {e})') from None
  except _READ_ERRORS as e:
    raise _unreadable(path, prefix, e) from None


def _unreadable(path: str, prefix: str, error: Exception) -> CheckpointError:
  """The error for a checkpoint that failed to read, naming the damaged
  file when checkpoint_damage finds it."""
  problem = checkpoint_damage(prefix) or f'{prefix}: {_first_line(error)}'
  where = '' if path == prefix else f'{path}: '
  return CheckpointError(f'{where}damaged checkpoint: {problem}')


def checkpoint_layout(prefix: str) -> str:
  """How the model sits in the checkpoint at `prefix` (or in the latest
  checkpoint of the model_dir `prefix`): 'published' (variables at the
  published paths, model/resnet_model/...) or 'legacy' (our tf_keras model,
  model/resnet/...); pass it to training_checkpoint to resume a model_dir in
  the layout it was started with. Raises CheckpointError if the checkpoint
  holds nothing at the key `model`."""
  _, resolved = resolve_checkpoint(prefix)
  paths = _read_object_graph(prefix, resolved)
  layout = _layout(paths)
  if layout is None:
    raise CheckpointError(
        f'{prefix}: holds no model at the key "model"; variables seen: '
        f'{sorted(paths)[:5]}')
  return layout


def _published_model_root(paths: Dict[str, str]) -> Optional[str]:
  """The object-graph prefix of the published Model ('model/' for both the
  SavedModel module and run.py's checkpoint), or None if not published."""
  for path in paths:
    match = re.match(r'^(.*?)resnet_model/', path)
    if match:
      return match.group(1)
  return None


def infer_published_config(paths: Dict[str, str],
                           shapes: Dict[str, List[int]]) -> ModelConfig:
  """Architecture of a published model from its structural variable paths
  (relative to the Model) and their shapes."""
  def has(pattern):
    return any(re.search(pattern, p) for p in paths)

  def shape(path):
    return shapes[paths[path]]

  groups = {}
  for p in paths:
    match = re.match(r'resnet_model/block_groups/(\d+)/layers/(\d+)/', p)
    if match:
      groups.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
  if sorted(groups) != [0, 1, 2, 3]:
    raise CheckpointError(
        f'expected 4 block groups under resnet_model/block_groups, found '
        f'{sorted(groups)}')
  blocks = tuple(len(groups[g]) for g in range(4))
  basic = has(r'^resnet_model/block_groups/0/layers/0/conv2d_bn_layers/')
  kind = 'basic' if basic else 'bottleneck'
  depths = [d for d, spec in resnet_lib.BLOCKS_PER_GROUP.items()
            if spec == (kind, blocks)]
  if not depths:
    raise CheckpointError(
        f'{kind} blocks per group {blocks} match no ResNet depth '
        f'{sorted(resnet_lib.BLOCKS_PER_GROUP)}')

  stem = 'resnet_model/initial_conv_relu_max_pool'
  resnet_d_stem = f'{stem}/4/conv2d/kernel' in paths
  stem_kernel = shape(f'{stem}/{4 if resnet_d_stem else 0}/conv2d/kernel')
  width = stem_kernel[-1] / 64
  if width == int(width):
    width = int(width)
  cifar = not resnet_d_stem and stem_kernel[0] == 3
  if basic:
    sk = has(r'/shortcut_layers/2/conv2d/kernel')
  else:
    sk = has(r'/conv_relu_dropblock_layers/3/conv2d_0/kernel')
  sk = sk or resnet_d_stem
  sk_ratio = 0.0
  if sk:
    sk_ratio = 0.0625
    mixing = [(shape(p)[-1], shapes[paths[p.replace('conv2d_0', 'conv2d_1')]]
               [-1] // 2) for p in paths if p.endswith('/conv2d_0/kernel')]
    if any(max(int(f * sk_ratio), resnet_lib.SK_MIN_DIM) != m
           for m, f in mixing):
      mid, filters = max(mixing, key=lambda mf: mf[1])
      sk_ratio = mid / filters
  se_ratio = 0.0
  se_kernels = [p for p in paths if p.endswith('se_reduce/kernel')]
  if se_kernels:
    last_group = [p for p in se_kernels if '/block_groups/3/' in p][0]
    reduced = shape(last_group)[-1]
    se_ratio = reduced / (resnet_lib.stem_width(width) * 8)

  head_layers = sorted({int(m.group(1)) for m in (
      re.match(r'_projection_head/linear_layers/(\d+)/', p) for p in paths)
                        if m})
  if head_layers != list(range(len(head_layers))):
    raise CheckpointError(f'projection head layers {head_layers} are not '
                          f'numbered 0..n-1')
  num_layers = len(head_layers)
  proj_out_dim = 128
  if num_layers:
    proj_out_dim = shape(
        f'_projection_head/linear_layers/{num_layers - 1}/dense/kernel')[-1]
  sup_kernel = 'supervised_head/linear_layer/dense/kernel'
  num_classes = shape(sup_kernel)[-1] if sup_kernel in paths else None
  return ModelConfig(
      resnet_depth=depths[0],
      width_multiplier=width,
      sk_ratio=sk_ratio,
      se_ratio=se_ratio,
      image_size=32 if cifar else 224,
      num_classes=num_classes,
      proj_head_mode='nonlinear' if num_layers else 'none',
      num_proj_layers=max(num_layers, 1),
      proj_out_dim=proj_out_dim,
      global_bn=False)


def _assign_published(model: SimCLRModel, prefix: str, root: str,
                      paths: Dict[str, str], source: str):
  """Copies every variable of `model` from the published checkpoint; raises
  CheckpointError listing what is missing, left over, or of the wrong shape."""
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  missing, wrong_shape, used = [], [], set()
  pairs = published_paths(model)
  for variable, path in pairs:
    key = paths.get(root + path)
    if key is None:
      missing.append(path)
      continue
    used.add(root + path)
    if list(shapes[key]) != variable.shape.as_list():
      wrong_shape.append(
          f'{path}: file {shapes[key]}, model {variable.shape.as_list()}')
  unused = sorted(p for p in paths if p.startswith(root) and p not in used)
  if missing or wrong_shape or unused:
    lines = [f'{source}: the published-format variables do not fit the '
             f'inferred architecture {model.config}']
    for title, items in (('missing', missing), ('wrong shape', wrong_shape),
                         ('not used', unused)):
      if items:
        lines.append(f'  {title} ({len(items)}): ' + '; '.join(items[:8]) +
                     (' ...' if len(items) > 8 else ''))
    raise CheckpointError('\n'.join(lines))
  try:
    for variable, path in pairs:
      variable.assign(reader.get_tensor(paths[root + path]))
  except _READ_ERRORS as e:
    raise _unreadable(source, prefix, e) from None


def _our_files_dir(kind: str, prefix: str, path: str) -> Optional[str]:
  """The directory holding our model_config.json (and head-labels record)
  for the model at `path`: an export's assets, or the checkpoint's
  model_dir; None for published-format files."""
  candidates = []
  if kind == 'saved_model':
    candidates.append(os.path.join(path, 'assets'))
  candidates.append(os.path.dirname(prefix))
  for candidate in candidates:
    if tf.io.gfile.exists(os.path.join(candidate, MODEL_CONFIG_FILE)):
      return candidate
  return None


def _read_our_config(kind: str, prefix: str, path: str) -> Optional[str]:
  directory = _our_files_dir(kind, prefix, path)
  if directory is None:
    return None
  with tf.io.gfile.GFile(os.path.join(directory, MODEL_CONFIG_FILE)) as f:
    return f.read()


def head_labels_of(path: str) -> head_labels.HeadLabels:
  """Which labels the supervised head of the model at `path` (any form
  load_model reads) was fitted on: our record, or UNRECORDED (every label
  of an unknown split) for published-format files and model_dirs written
  before the record existed."""
  kind, prefix = resolve_checkpoint(path)
  directory = _our_files_dir(kind, prefix, path)
  record = None
  if directory is not None:
    try:
      record = head_labels.read(directory)
    except ValueError as e:
      raise CheckpointError(f'{path}: {e}') from None
  return record or head_labels.UNRECORDED


def restore_strict(checkpoint: tf.train.Checkpoint, prefix: str, source: str):
  """Restores `checkpoint` and fails, naming them, if any of its variables got
  no value (the published code's expect_partial() would train them from their
  random initialisation without a word)."""
  # read(), unlike restore(), leaves the save counter alone, which
  # checkpoints written with write() do not have.
  try:
    status = checkpoint.read(prefix)
  except _READ_ERRORS as e:
    raise _unreadable(source, prefix, e) from None
  try:
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise CheckpointError(
        f'{source}: does not provide every variable of the model: '
        f'{str(e)[:2000]}') from None
  return status


def load_model(path: str, **config_overrides) -> SimCLRModel:
  """Builds a SimCLRModel and loads its weights from `path`.

  `path` is a published-format SavedModel or checkpoint (architecture inferred
  from the variables), or one of ours (architecture read from its
  model_config.json; checkpoints in either layout of training_checkpoint).
  `config_overrides` set what the files cannot tell (e.g. ft_proj_selector,
  train_mode, fine_tune_after_block) or change the head only where the
  variables still fit. Raises CheckpointError when the path is
  none of these, a file is damaged, or the variables do not fit; nothing is
  left randomly initialised. The model's `head_labels` attribute says which
  labels its supervised head was fitted on (simclr.head_labels.HeadLabels;
  UNRECORDED for files that do not record it).

  Data only: this reads tensors (the variables' values and the checkpoint's
  object graph, a protocol buffer of names) and JSON, and builds the model
  from this package's own code. It never loads a SavedModel's graph
  (saved_model.pb, the program that tf.saved_model.load and hub.KerasLayer
  run), so a file from an untrusted source cannot run code through it. Keep
  it that way: do not add tf.saved_model.load here.
  """
  kind, prefix = resolve_checkpoint(path)
  paths = _read_object_graph(path, prefix)
  root = _published_model_root(paths)
  our_config = _read_our_config(kind, prefix, path)
  if our_config is not None:
    config = ModelConfig.from_json(our_config).replace(**config_overrides)
    model = build_model(config)
    # simclr.export_saved_model and training_checkpoint (layout 'published')
    # keep the variables at the published paths; older model_dirs hold the
    # tf_keras model (layout 'legacy').
    if kind == 'checkpoint':
      layout = _layout(paths)
      if layout == 'legacy':
        restore_strict(tf.train.Checkpoint(model=model), prefix, path)
        model.head_labels = head_labels_of(path)
        return model
      if layout == 'published':
        root = 'model/'
    if root is None:
      raise CheckpointError(
          f'{path}: has our {MODEL_CONFIG_FILE} but no variables under the '
          f'published model structure (model/resnet_model/...) nor our '
          f'tf_keras model (model/resnet/...); variables seen: '
          f'{sorted(paths)[:5]}')
    _assign_published(model, prefix, root, paths, path)
    model.head_labels = head_labels_of(path)
    return model
  if root is None:
    raise CheckpointError(
        f'{path}: found neither our {MODEL_CONFIG_FILE} nor the published '
        f'model structure (resnet_model/block_groups/...); variables seen: '
        f'{sorted(paths)[:5]}')
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  relative = {p[len(root):]: k for p, k in paths.items() if p.startswith(root)}
  config = infer_published_config(relative, shapes)
  config = config.replace(**config_overrides)
  model = build_model(config)
  _assign_published(model, prefix, root, paths, path)
  model.head_labels = head_labels.UNRECORDED
  return model


def copy_layer(source, target, source_name: str, what: str):
  """Copies the variables of Keras layer `source` into `target`, an equally
  structured layer, matching them by object structure (not by name or list
  order, which differ between models and between frozen and trainable
  layers). Raises CheckpointError if any variable of `target` got no value."""
  scratch = f'ram://simclr_copy_layer/{id(source)}_{id(target)}/ckpt'
  written = tf.train.Checkpoint(layer=source).write(scratch)
  try:
    status = tf.train.Checkpoint(layer=target).read(written)
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise CheckpointError(
        f'{source_name}: its {what} does not match the model\'s: '
        f'{str(e)[:1500]}') from None
  finally:
    tf.io.gfile.rmtree(os.path.dirname(scratch))


# ---------------------------------------------------------------------------
# Initialising a model from another run's weights (--checkpoint,
# --teacher_checkpoint).

# Architecture fields a checkpoint must agree on with the flags.
ENCODER_FIELDS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                  'cifar_stem')


def recorded_config(path: str) -> Optional[ModelConfig]:
  """The ModelConfig our model_dirs and exports record next to their
  weights, or None for published-format files (which do not record it)."""
  kind, prefix = resolve_checkpoint(path)
  text = _read_our_config(kind, prefix, path)
  return None if text is None else ModelConfig.from_json(text)


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
