"""Sources of images: TFDS datasets (including the embedded `digits` and
`fashion_mnist` prepared from local files) and folders of image files, behind
one small interface.

`load_source(dataset, data_dir)` returns a Source whose `read` gives a
tf.data.Dataset of examples {'image': uint8 [H, W, 3], 'label': int32
(-1 when unlabeled), 'id': string}. An example id names the example
stably across runs, for label-subset files (one id per line):
- TFDS: the dataset's own name feature when it has one ('id' for cifar10 and
  digits, 'file_name' for imagenet2012, as in the published 1percent.txt),
  else TFDS's 'tfds_id' ('<file>__<index>', stable for a prepared version;
  fashion_mnist has no name feature);
- folders: the file's path relative to the root, with '/' separators.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple
import types

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr import compat
from simclr.data import digits as digits_lib
from simclr.data import fashion_mnist as fashion_mnist_lib

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
FOLDER_PREFIX = 'folder:'
FOLDER_SPLIT = 'train'
_ID_FEATURES = ('id', 'file_name', 'filename', 'image/filename')
_NUM_PATHS_IN_WARNING = 5
# A label subset whose encoded records are estimated below this size is kept
# in memory after its first read: otherwise every epoch of the subset reads
# (and filters) every record of the split, which made fine-tuning on 1% of
# the digits 10x slower per image than pretraining.
SUBSET_CACHE_BYTES = 1 << 30


class Source:
  """A named set of splits of images. Subclasses: TfdsSource, FolderSource.

  name: the dataset string it was loaded from.
  num_classes: number of labels (0 when the source is unlabeled).
  splits: {split name: number of examples}.
  """
  name: str
  num_classes: int
  splits: Dict[str, int]

  def num_examples(self, split: str) -> int:
    """Examples in a split; TFDS slicing ('train[:10%]') is understood.
    Raises ValueError naming the splits there are, for a split the source
    does not have or a slice TFDS cannot read."""
    raise NotImplementedError

  def check_split(self, split: str) -> int:
    """num_examples(split), also refusing a split that selects nothing."""
    count = self.num_examples(split)
    if count <= 0:
      raise ValueError(f'selects no examples of {self.name!r} (its splits: '
                       f'{self.describe_splits()})')
    return count

  def describe_splits(self) -> str:
    """'test (359 examples), train (1438 examples)'."""
    return ', '.join(f'{name} ({count} examples)'
                     for name, count in sorted(self.splits.items()))

  def _split_error(self, split: str, error: Exception) -> ValueError:
    """The ValueError for a split TFDS refused: an unknown split name, or a
    slice it cannot read (its reason, on one line)."""
    # Split syntax: 'name', 'name[slice]', joined by '+'.
    names = [part.split('[', 1)[0].strip() for part in split.split('+')]
    unknown = [name for name in names if name not in self.splits]
    if unknown and all(name.isidentifier() for name in unknown):
      problem = f'{self.name!r} has no split {unknown[0]!r}'
    else:
      # TFDS's reason is its message's last line.
      lines = [line.strip() for line in str(error).splitlines()
               if line.strip()] or [type(error).__name__]
      problem = (f'not a split of {self.name!r} that TFDS can read '
                 f'({lines[-1][:200]})')
    if len(self.splits) == 1:
      have = f'it has one split, {self.describe_splits()} (slice it as in'
    else:
      have = f'its splits: {self.describe_splits()} (slice one as in'
    return ValueError(f"{problem}; {have} 'train[:90%]', 'train[90%:]')")

  def read(self, split: str, *, shard_index: int = 0, num_shards: int = 1,
           shuffle: bool = False, seed: Optional[int] = None,
           ids: Optional[Sequence[str]] = None) -> tf.data.Dataset:
    """Examples {'image', 'label', 'id'} of one shard of a split, once.

    Shards are example-level (TFDS: tfds.even_splits ranges; folders: every
    n-th file), so they work for any number of files and their sizes differ
    by at most one. shuffle: shuffle the file order (TFDS) or the files
    (folders), again in every epoch; examples are shuffled later by the
    pipeline. ids: keep only examples with these ids.
    """
    raise NotImplementedError

  def ids_and_labels(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(ids: str [N], labels: int [N]) of a split, reading no pixels."""
    raise NotImplementedError


def load_source(dataset: str, data_dir: Optional[str] = None) -> Source:
  """Opens `dataset` (see DataConfig.dataset). Nothing is downloaded; the
  embedded 'digits' is prepared into data_dir on first use, and so is
  'fashion_mnist', from the Debian package's files (simclr.data.fashion_mnist;
  ValueError saying what to install when they are not there)."""
  if dataset.startswith(FOLDER_PREFIX):
    return FolderSource(dataset[len(FOLDER_PREFIX):])
  return TfdsSource(dataset, data_dir)


def _to_rgb(image):
  """uint8 [H, W, 1|3|4] -> [H, W, 3] (greyscale repeated, alpha dropped)."""
  channels = image.shape[-1]
  if channels == 1:
    return tf.repeat(image, 3, axis=-1)
  if channels == 4:
    return image[..., :3]
  return image


def _keep_ids(dataset, ids):
  """Filters a dataset of examples with an 'id' to those listed in ids."""
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(list(ids), tf.string),
          tf.ones([len(ids)], tf.int32)), default_value=0)
  return dataset.filter(lambda example: table.lookup(example['id']) > 0)


class TfdsSource(Source):
  """A prepared TFDS image-classification dataset."""

  def __init__(self, name: str, data_dir: Optional[str] = None):
    self.name = name
    if name == 'digits':
      self.builder = digits_lib.prepare(data_dir)
    elif name == fashion_mnist_lib.NAME:
      self.builder = fashion_mnist_lib.prepare(data_dir)
    else:
      try:
        self.builder = tfds.builder(name, data_dir=data_dir)
      except tfds.core.DatasetNotFoundError as e:
        hint = compat.tfds_suggested_name(e)
        raise ValueError(
            f'dataset {name!r}: not a TFDS dataset, \'digits\' or '
            f'\'folder:/path\'' + (f' (did you mean {hint}?)' if hint else '')
        ) from None
    info = self.builder.info
    if not info.splits:
      raise ValueError(
          f'TFDS dataset {name!r} is not prepared in data_dir '
          f'{self.builder.data_dir!r} and nothing is downloaded at run time: '
          f'prepare it first (e.g. `tfds build {name} --data_dir=...`).')
    keys = info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(
        isinstance(k, str) for k in keys):
      self.image_key, self.label_key = keys
    else:
      self.image_key, self.label_key = 'image', 'label'
    features = dict(info.features.items())
    if not isinstance(features.get(self.image_key), tfds.features.Image):
      raise ValueError(f'TFDS dataset {name!r} has no image feature '
                       f'{self.image_key!r} (features: {list(features)})')
    label = features.get(self.label_key)
    self.num_classes = (label.num_classes if isinstance(
        label, tfds.features.ClassLabel) else 0)
    self.id_key = next(
        (k for k in _ID_FEATURES if isinstance(features.get(k),
                                               tfds.features.Text)),
        'tfds_id')
    self.splits = {s: info.splits[s].num_examples for s in info.splits}

  def num_examples(self, split: str) -> int:
    try:
      return self.builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as e:
      raise self._split_error(split, e) from None

  def _as_dataset(self, split, shard_index, num_shards, shuffle, seed,
                  decode_image):
    self.num_examples(split)  # Validates the split name.
    if num_shards > 1:
      split = tfds.even_splits(split, num_shards)[shard_index]
    decoders = None if decode_image else {
        self.image_key: tfds.decode.SkipDecoding()}
    read_config = tfds.ReadConfig(
        shuffle_seed=seed, add_tfds_id=self.id_key == 'tfds_id')
    dataset = self.builder.as_dataset(
        split=split, shuffle_files=shuffle, decoders=decoders,
        read_config=read_config)
    return dataset

  def read(self, split, *, shard_index=0, num_shards=1, shuffle=False,
           seed=None, ids=None):
    # Pixels are decoded after the id filter, so a 1% subset decodes 1%.
    dataset = self._as_dataset(split, shard_index, num_shards, shuffle, seed,
                               decode_image=False)
    image_feature = self.builder.info.features[self.image_key]
    has_label = self.num_classes > 0

    def select(example):
      return {
          'image': example[self.image_key],
          'label': (tf.cast(example[self.label_key], tf.int32)
                    if has_label else tf.constant(-1, tf.int32)),
          'id': example[self.id_key],
      }

    def decode(example):
      image = image_feature.decode_example(example['image'])
      return dict(example, image=_to_rgb(image))

    dataset = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    if ids is not None:
      dataset = _keep_ids(dataset, ids)
      if self._estimated_bytes(split, len(ids)) <= SUBSET_CACHE_BYTES:
        # Encoded records, in the first epoch's order (the pipeline shuffles
        # the examples afterwards).
        dataset = dataset.cache()
    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

  def _estimated_bytes(self, split, count):
    """Size of `count` encoded examples of `split` (inf when unknown)."""
    try:
      info = self.builder.info.splits[split]
      return info.num_bytes / max(1, info.num_examples) * count
    except (KeyError, ValueError, AssertionError, AttributeError,
            TypeError):
      return float('inf')

  def ids_and_labels(self, split):
    dataset = self._as_dataset(split, 0, 1, False, None, decode_image=False)
    has_label = self.num_classes > 0

    def select(example):
      label = (tf.cast(example[self.label_key], tf.int32) if has_label
               else tf.constant(-1, tf.int32))
      return example[self.id_key], label

    ids, labels = [], []
    for id_batch, label_batch in dataset.map(select).batch(4096):
      ids.extend(i.decode('utf-8') for i in id_batch.numpy())
      labels.append(label_batch.numpy())
    labels = np.concatenate(labels) if labels else np.zeros([0], np.int32)
    return np.array(ids, dtype=object), labels


def _decode_file(path):
  image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


def _is_image_file(name):
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(directory) -> List[str]:
  """Image files under directory (recursively), sorted."""
  found = []
  for parent, _, files in tf.io.gfile.walk(directory):
    found.extend(os.path.join(parent, f) for f in files if _is_image_file(f))
  return sorted(found)


def find_undecodable(paths: Sequence[str]) -> List[str]:
  """The paths tf.io.decode_image cannot decode (decodes all, in parallel)."""
  if not paths:
    return []
  dataset = tf.data.Dataset.from_tensor_slices(list(paths)).map(
      lambda path: (path, tf.shape(_decode_file(path))),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  dataset = dataset.ignore_errors()
  decodable = set()
  for path_batch, _ in dataset.batch(256):
    decodable.update(p.decode('utf-8') for p in path_batch.numpy())
  return [p for p in paths if p not in decodable]


class FolderSource(Source):
  """JPEG/PNG/BMP/GIF files under a root directory, one split 'train'.

  root/<class>/**/<image> gives labels (class names sorted, indices 0..C-1);
  images directly in root (with no class folders) are unlabeled (-1).
  Greyscale, RGBA and palette images become RGB; animated GIFs give their
  first frame. Every file is decoded once when the source is opened: files
  that fail are skipped, counted in `skipped`, and named (the first few) in
  one warning. TFDS slicing selects part of the split ('train[:90%]',
  'train[90%:]'), over a fixed pseudo-random order of the files so that
  slices mix the classes.
  """

  def __init__(self, root: str):
    self.name = FOLDER_PREFIX + root
    self.root = root
    if not tf.io.gfile.isdir(root):
      raise ValueError(f'image folder {root!r} does not exist')
    class_names = sorted(
        d.rstrip('/') for d in tf.io.gfile.listdir(root)
        if tf.io.gfile.isdir(os.path.join(root, d)))
    per_class = {c: _list_images(os.path.join(root, c)) for c in class_names}
    self.class_names = [c for c in class_names if per_class[c]]
    top_level = sorted(
        os.path.join(root, f) for f in tf.io.gfile.listdir(root)
        if _is_image_file(f) and not tf.io.gfile.isdir(os.path.join(root, f)))
    if self.class_names:
      if top_level:
        logging.warning(
            'Image folder %s has class subfolders; ignoring the %d images '
            'directly in it (e.g. %s).', root, len(top_level), top_level[0])
      paths, labels = [], []
      for index, name in enumerate(self.class_names):
        paths.extend(per_class[name])
        labels.extend([index] * len(per_class[name]))
    else:
      paths, labels = top_level, [-1] * len(top_level)
    if not paths:
      raise ValueError(
          f'image folder {root!r} contains no image files '
          f'({", ".join(IMAGE_EXTENSIONS)}), neither directly nor in class '
          f'subfolders')

    self.skipped = find_undecodable(paths)
    if self.skipped:
      logging.warning(
          'Image folder %s: skipped %d of %d files that could not be decoded,'
          ' e.g. %s', root, len(self.skipped), len(paths),
          ', '.join(self.skipped[:_NUM_PATHS_IN_WARNING]))
      bad = set(self.skipped)
      kept = [(p, l) for p, l in zip(paths, labels) if p not in bad]
      if not kept:
        raise ValueError(f'image folder {root!r}: none of its {len(paths)} '
                         f'image files could be decoded')
      paths, labels = (list(x) for x in zip(*kept))
    # A fixed order, mixing classes, so that slices of the split are fair.
    order = np.random.RandomState(0).permutation(len(paths))
    self.paths = np.array(paths, dtype=object)[order]
    self.labels = np.array(labels, np.int32)[order]
    self.ids = np.array(
        [os.path.relpath(p, root).replace(os.sep, '/') for p in self.paths],
        dtype=object)
    self.num_classes = len(self.class_names)
    self.splits = {FOLDER_SPLIT: len(self.paths)}

  def _rows(self, split) -> np.ndarray:
    """Indices into self.paths selected by a (possibly sliced) split."""
    infos = {FOLDER_SPLIT: types.SimpleNamespace(num_examples=len(self.paths))}
    try:
      instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
          infos)
    except (ValueError, AssertionError, KeyError) as e:
      raise self._split_error(split, e) from None
    rows = [np.arange(len(self.paths))[i.from_:i.to] for i in instructions]
    return np.concatenate(rows)

  def num_examples(self, split):
    return len(self._rows(split))

  def read(self, split, *, shard_index=0, num_shards=1, shuffle=False,
           seed=None, ids=None):
    rows = self._rows(split)[shard_index::num_shards]
    if ids is not None:
      rows = rows[np.isin(self.ids[rows], np.array(list(ids), dtype=object))]
    dataset = tf.data.Dataset.from_tensor_slices({
        'path': tf.constant(self.paths[rows].tolist(), tf.string),
        'label': tf.constant(self.labels[rows], tf.int32),
        'id': tf.constant(self.ids[rows].tolist(), tf.string),
    })
    if shuffle:
      dataset = dataset.shuffle(len(rows), seed=seed,
                                reshuffle_each_iteration=True)
    return dataset.map(
        lambda e: {'image': _decode_file(e['path']), 'label': e['label'],
                   'id': e['id']},
        num_parallel_calls=tf.data.AUTOTUNE)

  def ids_and_labels(self, split):
    rows = self._rows(split)
    return self.ids[rows], self.labels[rows]
