"""Every place where the library (simclr/) depends on behaviour of
TensorFlow, orbit or TFDS that has no public API, gathered here so that an
upgrade that breaks one fails a test in tests/test_compat.py by name instead
of misbehaving. There are seven:

1. orbit's Controller prints a line of every metric after each loop (its
   module function `orbit.controller._log`, print + absl info); the runs print
   their own one-line progress instead (simclr/tasks/actions.py), so the
   Controller's lines go to the debug log (quiet_orbit_controller).
2. tf.debugging.Assert stops a step before its update when the loss is not
   finite; the step and the loss terms it was given come back only inside the
   text of the InvalidArgumentError, in the Assert's `[item] [item] ...`
   format (assert_finite, non_finite_message).
3. A TF2 checkpoint's object graph: the tensor `_CHECKPOINTABLE_OBJECT_GRAPH`,
   a TrackableObjectGraph protocol buffer of the non-public module
   tensorflow.core.protobuf.trackable_object_graph_pb2; published files are
   read by their structure through it (object_graph_variable_paths).
4. The names under which TensorFlow and Keras write aliases into an object
   graph (OBJECT_GRAPH_ALIASES), among them
   `_self_unconditional_dependency_names`, a private attribute of
   TensorFlow's Trackable, listed so that a file whose graph records it is
   still read by structure (TensorFlow 2.20 does not write it).
5. The "Did you mean" line in the text of TFDS's DatasetNotFoundError
   (tfds_suggested_name).
6. The example generator of TFDS's own FashionMNIST builder, its private
   method `_generate_examples(num_examples, data_path, label_path)`
   (fashion_mnist_examples).
7. orbit's StandardTrainer keeps its input iterator in the attribute
   `_train_iter`, which tf.Module's attribute tracking also records;
   setting the public `train_dataset` to None leaves the tracked reference
   (release_train_iterator).

Outside the library: tools/bench_profile.py (a developer's tool, not
installed) reads the profiler's trace with the non-public module
tensorflow.tsl.profiler.protobuf.xplane_pb2, and says that it has no per-op
summary when that module is gone; tests/conftest.py sets
MirroredStrategy._collective_key_base and says why.
"""

import re
from typing import Dict, Iterator, Optional, Tuple

from absl import logging
import tensorflow as tf

# Starts the data of the in-graph check, so that its error can be told from
# other InvalidArgumentErrors.
NON_FINITE_MARKER = 'SIMCLR_NON_FINITE_LOSS'

# Children of a checkpointed object that are aliases of other children (lists
# of all variables, Keras bookkeeping), not structure.
OBJECT_GRAPH_ALIASES = frozenset([
    'variables', 'trainable_variables', 'non_trainable_variables',
    'trainable_weights', 'non_trainable_weights', 'weights', 'keras_api',
    'trainable_variables_list', 'layer_metrics', 'signatures',
    '_self_unconditional_dependency_names'
])
# The checkpoint key of the object graph.
OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'


def quiet_orbit_controller():
  """Sends orbit's per-loop print to the debug log (see module doc)."""
  # Imported here: the rest of this module is used where orbit is not.
  import orbit  # pylint: disable=g-import-not-at-top
  orbit.controller._log = lambda message: logging.debug('%s', message)  # pylint: disable=protected-access


def release_train_iterator(trainer):
  """Lets go of an orbit StandardTrainer's input iterator now (see module
  doc), when the trainer will not train again. A trainer's step functions
  refer back to it, so Python's cycle collector frees it, and its iterator,
  at some later moment; freeing a tf.data iterator whose autotuner has been
  idle waits for the autotuner's sleep, which grows while it idles
  (collections of 5 to 60 s were measured in the demo and in the tests,
  bench/NOTES.md). Freed right after its last batch, it does not wait."""
  trainer.train_dataset = None  # orbit's public reset, not enough alone.
  if '_train_iter' in vars(trainer):
    del trainer._train_iter  # pylint: disable=protected-access
    trainer._train_iter = None  # pylint: disable=protected-access


def assert_finite(loss, step, terms: Dict[str, tf.Tensor]):
  """Returns `loss`, after an in-graph check that it is finite whose error
  carries the step and every term (read back by non_finite_message)."""
  data = [NON_FINITE_MARKER, 'step', step]
  for name in sorted(terms):
    data += [name, terms[name]]
  check = tf.debugging.Assert(tf.math.is_finite(loss), data)
  with tf.control_dependencies([check]):
    return tf.identity(loss)


def non_finite_message(error: tf.errors.InvalidArgumentError
                       ) -> Optional[str]:
  """'non-finite loss at step 3: contrast_loss=nan, ...' for the error of
  assert_finite, None for any other error."""
  message = error.message
  if NON_FINITE_MARKER not in message:
    return None
  tail = message.split(NON_FINITE_MARKER, 1)[1]
  items = re.findall(r'\[([^\[\]]*)\]', tail.split('\n', 1)[0])
  pairs = dict(zip(items[::2], items[1::2]))
  step = pairs.pop('step', '?')
  terms = ', '.join(f'{k}={v}' for k, v in pairs.items())
  return (f'non-finite loss at step {step}: {terms}. No checkpoint or export '
          f'was written for it; the latest checkpoint is the last good one.')


def object_graph_variable_paths(reader) -> Dict[str, str]:
  """Maps the structural path of every variable in a TF2 checkpoint
  (attribute names and list positions from the root, e.g.
  'model/resnet_model/block_groups/0/layers/0/conv2d_bn_layers/0/conv2d/kernel')
  to its checkpoint key. `reader`: what tf.train.load_checkpoint returns.

  No public API gives these paths: a checkpoint key names each variable by
  one path only, which in a SavedModel is often an alias
  ('trainable_variables_list/72/...'), and tf.train.CheckpointView lists a
  node's children but not the keys of its values. So this reads the object
  graph itself (see module doc), skipping children named in
  OBJECT_GRAPH_ALIASES and cycles. Raises what reader.get_tensor raises when
  the checkpoint has no object graph (a TF1 name-based checkpoint)."""
  # Imported here so that a TensorFlow without it fails only this function.
  from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
  paths = {}

  def walk(node_id, path, on_path):
    node = graph.nodes[node_id]
    for attribute in node.attributes:
      if attribute.name == 'VARIABLE_VALUE':
        paths['/'.join(path)] = attribute.checkpoint_key
    for child in node.children:
      if child.local_name in OBJECT_GRAPH_ALIASES or child.node_id in on_path:
        continue
      walk(child.node_id, path + [child.local_name], on_path | {child.node_id})

  walk(0, [], frozenset([0]))
  return paths


def tfds_suggested_name(error: Exception) -> Optional[str]:
  """The dataset name that TFDS's DatasetNotFoundError suggests, read from
  its text ('Did you mean: mnistt -> mnist ?' gives 'mnist'); None when it
  suggests none. TFDS has no attribute for it."""
  hint = re.search(r'Did you mean: \S+ -> (\S+)', str(error))
  return hint.group(1).rstrip('?') if hint else None


def fashion_mnist_examples(builder, num_examples: int, images_path: str,
                           labels_path: str) -> Iterator[Tuple[int, dict]]:
  """The examples of TFDS's FashionMNIST builder (`builder`, an instance of
  tfds.image_classification.FashionMNIST or a subclass) from a decompressed
  idx pair: (index, {'image': uint8 [28, 28, 1], 'label': int64}) for the
  first `num_examples`, by TFDS's own generator, so that the prepared
  dataset is the one TFDS would write from its download. TFDS's public route
  for local files (manual_dir) checks its registered checksums, which the
  files this project reads do not match (simclr/data/fashion_mnist.py says
  why)."""
  return builder._generate_examples(  # pylint: disable=protected-access
      num_examples=num_examples, data_path=images_path,
      label_path=labels_path)
