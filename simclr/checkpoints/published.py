"""The published object-graph layout: where each variable of our model sits
in the published code's checkpoints and SavedModels (those of
gs://simclr-checkpoints-tf2 and of the published `tf2/run.py`), and the
architecture a published file holds, inferred from it.

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

import re
from typing import Dict, Iterator, List, Optional, Tuple

import tensorflow as tf

from simclr import compat
from simclr.checkpoints.damage import unreadable
from simclr.checkpoints.resolve import CheckpointError
from simclr.checkpoints.resolve import READ_ERRORS
from simclr.checkpoints.resolve import resolve_checkpoint
from simclr.configs import ModelConfig
from simclr.models import resnet as resnet_lib
from simclr.models.simclr_model import SimCLRModel

_BN_VARIABLES = ('gamma', 'beta', 'moving_mean', 'moving_variance')
# How the model sits in a training checkpoint (see training_checkpoint).
CHECKPOINT_LAYOUTS = ('published', 'legacy')


def object_graph_paths(prefix: str) -> Dict[str, str]:
  """Maps every structural path of a variable in the checkpoint at `prefix`
  (e.g. 'model/resnet_model/.../kernel') to its checkpoint key."""
  return compat.object_graph_variable_paths(tf.train.load_checkpoint(prefix))


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


def layout_of(paths: Dict[str, str]) -> Optional[str]:
  """'published' or 'legacy' for the structural paths of a checkpoint with a
  model at the key `model`, None without one."""
  if any(path.startswith('model/resnet_model/') for path in paths):
    return 'published'
  if any(path.startswith('model/') for path in paths):
    return 'legacy'
  return None


def read_object_graph(path: str, prefix: str) -> Dict[str, str]:
  """object_graph_paths of the checkpoint at `prefix` (read for `path`);
  raises CheckpointError when it has no object graph or is damaged."""
  try:
    return object_graph_paths(prefix)
  except KeyError as e:
    raise CheckpointError(f'{path}: not a TF2 object-based checkpoint (no '
                          f'object graph: {e})') from None
  except READ_ERRORS as e:
    raise unreadable(path, prefix, e) from None


def checkpoint_layout(prefix: str) -> str:
  """How the model sits in the checkpoint at `prefix` (or in the latest
  checkpoint of the model_dir `prefix`): 'published' (variables at the
  published paths, model/resnet_model/...) or 'legacy' (our tf_keras model,
  model/resnet/...); pass it to training_checkpoint to resume a model_dir in
  the layout it was started with. Raises CheckpointError if the checkpoint
  holds nothing at the key `model`."""
  _, resolved = resolve_checkpoint(prefix)
  paths = read_object_graph(prefix, resolved)
  layout = layout_of(paths)
  if layout is None:
    raise CheckpointError(
        f'{prefix}: holds no model at the key "model"; variables seen: '
        f'{sorted(paths)[:5]}')
  return layout


def published_model_root(paths: Dict[str, str]) -> Optional[str]:
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
