"""Features of a model over a split: one named model output per example, in
inference mode, through the 'eval' pipeline (centre crop / resize, each
example exactly once, padded rows dropped by their weight 0).

    model = simclr.load_model('/tmp/pretrain')
    features = extract_features(model, DataConfig(dataset='digits',
                                                  image_size=32), 'test')
    features.features  # float32 [359, d]
    save_features('/tmp/test.npz', features)

FeatureExtractor does the work for any 'eval' dataset, on one device or over
a strategy's replicas (k-NN evaluation while pretraining uses it, see
simclr/knn.py); extract_features adds the example ids in the split's order.
"""

import os
import zipfile
from typing import Callable, NamedTuple, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from simclr import distribute
from simclr.configs import DataConfig
from simclr.data import Inputs
from simclr.data import datasets
from simclr.models.simclr_model import OUTPUT_KEYS
from simclr.models.simclr_model import SimCLRModel

DEFAULT_OUTPUT_KEY = 'final_avg_pool'
# The arrays of a features file (save_features / load_features).
NPZ_ARRAYS = ('features', 'labels', 'ids')


class FeatureSet(NamedTuple):
  """features: float32 [N, d]; labels: int32 [N] (-1 where the dataset has
  none); ids: str [N], the example ids that label-subset files use."""
  features: np.ndarray
  labels: np.ndarray
  ids: np.ndarray


def output_keys(model: SimCLRModel) -> Tuple[str, ...]:
  """The keys of `model`'s output dict (logits_sup only with a supervised
  head; supervised_head_input is the projection-head output the head reads)."""
  keys = [k for k in OUTPUT_KEYS
          if k != 'logits_sup' or model.supervised_head is not None]
  return tuple(keys) + ('supervised_head_input',)


def check_output_key(model: SimCLRModel, output_key: str):
  """Raises ValueError naming the key and the model's keys."""
  keys = output_keys(model)
  if output_key not in keys:
    raise ValueError(f'{output_key!r} is not an output of the model; '
                     f'expected one of {", ".join(keys)}')


class FeatureExtractor:
  """model(images, training=False)[output_key], flattened to [b, d] and cast
  to float32, over the batches (images, labels, weights) of an 'eval'
  dataset; rows of weight 0 (padding) are dropped.

  strategy: None for one device (a plain tf.data dataset); otherwise the
  dataset is distributed by it (Inputs.distributed_dataset) and each
  replica computes its own batches, gathered in the dataset's order. The
  step is traced once per extractor, so keep one to call repeatedly (k-NN
  evaluation while pretraining).
  """

  def __init__(self, model: SimCLRModel,
               output_key: str = DEFAULT_OUTPUT_KEY,
               strategy: Optional[tf.distribute.Strategy] = None):
    check_output_key(model, output_key)
    self.model = model
    self.output_key = output_key
    self.strategy = strategy or tf.distribute.get_strategy()

    def replica_step(images, labels, weights):
      output = model(images, training=False)[output_key]
      output = tf.cast(output, tf.float32)
      return tf.reshape(output, [tf.shape(output)[0], -1]), labels, weights

    @tf.function
    def step(batch):
      outputs = self.strategy.run(replica_step, args=batch)
      return tuple(self.strategy.gather(x, axis=0) for x in outputs)

    self._step = step

  def __call__(self, dataset, num_batches: Optional[int] = None,
               progress: Optional[Callable[[int, int], None]] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, d], labels int32 [N]) of the weight-1 rows.

    num_batches: the dataset's length, for `progress(batches done,
    num_batches)`, called after every batch."""
    # The statistics of the model a checkpoint would save, on every replica.
    distribute.agree_on_read_variables(self.model.variables, self.strategy)
    features, labels = [], []
    for done, batch in enumerate(dataset, 1):
      batch_features, batch_labels, weights = (
          x.numpy() for x in self._step(batch))
      keep = weights > 0
      features.append(batch_features[keep])
      labels.append(batch_labels[keep])
      if progress is not None and num_batches:
        progress(done, num_batches)
    if not features:
      raise ValueError('the dataset gave no batches')
    return (np.concatenate(features).astype(np.float32, copy=False),
            np.concatenate(labels).astype(np.int32))


def log_progress(description: str, every: float = 0.1):
  """A progress callback for FeatureExtractor: an absl info line each time
  another `every` of the batches is done."""
  state = {'reported': 0}

  def report(done, total):
    step = max(1, int(round(total * every)))
    if done == total or done // step > state['reported']:
      state['reported'] = done // step
      logging.info('%s: %d%% (%d/%d batches)', description,
                   100 * done // total, done, total)

  return report


def split_inputs(data_config: DataConfig, split: str,
                 source: Optional[datasets.Source] = None) -> Inputs:
  """Inputs whose 'eval' pipeline reads `split` (in the split's order;
  model_dir=None: nothing is written)."""
  return Inputs(data_config.replace(eval_split=split, model_dir=None),
                source=source)


def extract_features(model: SimCLRModel, data_config: DataConfig, split: str,
                     output_key: str = DEFAULT_OUTPUT_KEY,
                     source: Optional[datasets.Source] = None,
                     progress: Optional[Callable[[int, int], None]] = None
                     ) -> FeatureSet:
  """FeatureSet of every example of `split`, once, in the split's order, on
  one device. data_config gives the dataset, data_dir, image_size (of the
  evaluation preprocessing) and eval_batch_size; `source` an already opened
  source of that dataset. Raises ValueError for a split the dataset does not
  have or an output key the model does not have."""
  extractor = FeatureExtractor(model, output_key)
  inputs = split_inputs(data_config, split, source)
  ids, split_labels = inputs.source.ids_and_labels(split)
  features, labels = extractor(inputs.dataset('eval'), inputs.eval_steps(),
                               progress)
  # Both read the split unshuffled; a mismatch would mean ids on the wrong
  # rows, which must never be written.
  if len(features) != len(ids) or not np.array_equal(labels, split_labels):
    raise RuntimeError(
        f'{split!r}: the pipeline gave {len(features)} rows whose labels do '
        f'not follow the {len(ids)} ids of the split in order')
  return FeatureSet(features, labels, np.array(ids, dtype=str))


def write_atomically(path: str, write: Callable, mode: str = 'wb'):
  """Calls write(file) on a temporary file beside `path`, then renames it to
  `path`: a reader, or a killed run, never leaves a partial file there."""
  temporary = f'{path}.tmp{os.getpid()}'
  try:
    with open(temporary, mode) as f:
      write(f)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def save_features(path: str, feature_set: FeatureSet):
  """Writes one .npz with the arrays features, labels and ids (see
  FeatureSet), atomically."""
  arrays = dict(features=np.asarray(feature_set.features, np.float32),
                labels=np.asarray(feature_set.labels, np.int32),
                ids=np.asarray(feature_set.ids, dtype=str))
  write_atomically(path, lambda f: np.savez(f, **arrays))


def load_features(path: str) -> FeatureSet:
  """The FeatureSet of a file written by save_features. Raises ValueError
  naming the file when it is missing, unreadable, or lacks or misshapes an
  array."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file')
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'{path}: not a readable .npz file ({e})') from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(f'{path}: a single array, not an .npz file with the '
                     f'arrays {", ".join(NPZ_ARRAYS)}')
  with data:
    missing = [name for name in NPZ_ARRAYS if name not in data.files]
    if missing:
      raise ValueError(f'{path}: lacks the array(s) {", ".join(missing)} '
                       f'(has {", ".join(data.files) or "none"})')
    try:
      arrays = {name: data[name] for name in NPZ_ARRAYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f'{path}: an array cannot be read ({e})') from None
  features, labels, ids = (arrays[name] for name in NPZ_ARRAYS)
  if features.ndim != 2 or labels.shape != (len(features),) or (
      ids.shape != (len(features),)):
    raise ValueError(
        f'{path}: expected features [N, d], labels [N] and ids [N]; got '
        f'shapes {features.shape}, {labels.shape}, {ids.shape}')
  return FeatureSet(features.astype(np.float32, copy=False),
                    labels.astype(np.int32), ids)
