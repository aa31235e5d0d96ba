"""tf.data input pipelines for pretraining, fine-tuning, distillation and
evaluation, distributed over replicas.

    inputs = Inputs(DataConfig(dataset='digits', image_size=32, ...))
    dataset = inputs.distributed_dataset(strategy, 'views')
    # or strategy.distribute_datasets_from_function(inputs.input_fn('views'))

Each input pipeline (one per host, tf.distribute.InputContext) reads its own
shard of the split and yields per-replica batches of b = global batch /
num_replicas_in_sync examples. The kinds (simclr.configs.INPUT_KINDS; a
task names the one it trains on; the train-mode names of earlier versions,
INPUT_KIND_ALIASES, are accepted too):

- 'views' (endless): (images float32 [2b, S, S, 3], labels int32 [2b]).
  Rows 0..b-1 are the first views of b images, rows b..2b-1 their second
  views in the same order (row i and row b + i are a positive pair), the
  layout nt_xent expects; labels are repeated the same way (for linear
  evaluation while pretraining). The published code instead concatenates
  the views along channels, [b, S, S, 6].
- 'labeled' (endless, label subset if any), 'all_images' (endless, whole
  split): (images [b, S, S, 3], labels [b]); crop and flip. When a label
  subset is configured (DataConfig.train_label_fraction < 1 or
  label_subset_file), 'all_images' keeps the labels of the subset's examples
  only (the same ids 'labeled' reads) and gives every other example label
  -1, so that no label outside the subset reaches distillation.
- 'eval' (finite): (images [b, S, S, 3], labels [b], weights float32 [b]).
  The split is read exactly once; the last batches are padded with blank
  examples of weight 0 (label 0) so that every replica gets the same number
  of full batches (eval_steps). Weight-1 rows are exactly the split's
  examples, so sum(weights) = num_eval_examples.
Labels are class indices (-1 for unlabeled data). Pixels are in [0, 1].
"""

import math
from typing import Callable, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from simclr.configs import CIFAR_IMAGE_SIZE
from simclr.data import augment
from simclr.data import datasets
from simclr.data import subsets
from simclr.data.config import DataConfig
from simclr.data.config import INPUT_KIND_ALIASES
from simclr.data.config import INPUT_KINDS
from simclr.data.config import SUBSET_INPUT_KINDS


def input_kind(name: str) -> str:
  """The input kind `name` is (a kind, or a train-mode alias of earlier
  versions); ValueError naming the kinds otherwise."""
  kind = INPUT_KIND_ALIASES.get(name, name)
  if kind not in INPUT_KINDS:
    raise ValueError(f'input kind {name!r}: expected one of {INPUT_KINDS}')
  return kind


def _stream_seed(seed: Optional[int], pipeline_id: int, purpose: int):
  """A distinct int seed per (seed, input pipeline, purpose), or None."""
  if seed is None:
    return None
  return (seed * 1_000_003 + pipeline_id * 1009 + purpose) % (2**31 - 1)


def _seeds(seed):
  """Endless dataset of int64 [2] seeds for stateless random ops."""
  return tf.data.Dataset.random(seed=seed).batch(2)


def _unlabel_all_but(ids):
  """Example map: label -> -1 unless the example's id is one of ids."""
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant([str(i) for i in ids], tf.string),
          tf.ones([len(ids)], tf.int32)), default_value=0)

  def unlabel(example):
    labeled = table.lookup(example['id']) > 0
    return dict(example, label=tf.where(labeled, example['label'], -1))

  return unlabel


def on_one_cpu(strategy: tf.distribute.Strategy) -> bool:
  """Whether `strategy` runs one replica on a CPU (no copy to a device).
  False for the default strategy, which distributes nothing anyway."""
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # The default strategy has no devices to name.
    return False
  return (strategy.num_replicas_in_sync == 1 and len(devices) == 1 and
          tf.DeviceSpec.from_string(devices[0]).device_type == 'CPU')


def distribute(strategy: tf.distribute.Strategy,
               dataset: tf.data.Dataset):
  """`dataset` (global batches) for strategy.run's inputs: as it is on one
  CPU replica (see Inputs.distributed_dataset), else distributed."""
  if on_one_cpu(strategy):
    return dataset
  return strategy.experimental_distribute_dataset(dataset)


class Inputs:
  """The data of one DataConfig: metadata and tf.data pipelines.

  Opening it opens the source (for folders: decodes every file once), unless
  an open `source` of config.dataset is passed in.
  """

  def __init__(self, config: DataConfig,
               source: Optional[datasets.Source] = None):
    config.validate()
    self.config = config
    self.source = source or datasets.load_source(config.dataset,
                                                 config.data_dir)
    self._subset_ids = None

  # ------------------------------------------------------------ metadata --

  @property
  def num_classes(self) -> int:
    """Number of classes (0 for unlabeled data)."""
    return self.source.num_classes

  def num_examples(self, split: str) -> int:
    return self.source.num_examples(split)

  @property
  def num_eval_examples(self) -> int:
    return self.source.num_examples(self.config.eval_split)

  def num_train_examples(self, kind: str = 'views') -> int:
    """Examples of the train split an input kind reads per epoch (the label
    subset for 'labeled' when there is one; the whole split for
    'all_images', whose examples outside the subset come unlabeled)."""
    ids = self.label_subset() if input_kind(kind) == 'labeled' else None
    if ids is not None:
      return len(ids)
    return self.source.num_examples(self.config.train_split)

  def eval_steps(self, num_replicas: int = 1,
                 num_input_pipelines: int = 1) -> int:
    """Steps that cover the eval split once (the 'eval' dataset's length)."""
    per_pipeline_examples = math.ceil(self.num_eval_examples /
                                      num_input_pipelines)
    return math.ceil(per_pipeline_examples /
                     self._per_pipeline_batch(self.config.eval_batch_size,
                                              num_replicas,
                                              num_input_pipelines))

  @staticmethod
  def _per_pipeline_batch(global_batch, num_replicas, num_input_pipelines):
    if global_batch % num_replicas:
      raise ValueError(f'global batch size {global_batch} is not divisible '
                       f'by the {num_replicas} replicas')
    return global_batch // num_input_pipelines

  def label_subset(self) -> Optional[np.ndarray]:
    """Ids that fine-tuning reads (and whose labels distillation keeps), or
    None for the whole train split.

    From label_subset_file if set; else, when train_label_fraction < 1, a
    class-balanced draw with label_subset_seed, written to model_dir (if
    set) as label_subset_<fraction>_seed<seed>.txt.
    """
    config = self.config
    if self._subset_ids is not None:
      return self._subset_ids
    if config.label_subset_file is None and config.train_label_fraction >= 1:
      return None
    ids, labels = self.source.ids_and_labels(config.train_split)
    if config.label_subset_file is not None:
      chosen = subsets.read_ids(config.label_subset_file)
      subsets.check_ids(chosen, ids, config.label_subset_file)
      chosen = np.array(sorted(set(chosen)), dtype=object)
      logging.info('Label subset: %d ids from %s', len(chosen),
                   config.label_subset_file)
    else:
      chosen = subsets.draw_subset(ids, labels, config.train_label_fraction,
                                   config.label_subset_seed)
      logging.info('Label subset: %d of %d examples (fraction %g, seed %d)',
                   len(chosen), len(ids), config.train_label_fraction,
                   config.label_subset_seed)
      if config.model_dir:
        path = self.label_subset_path
        subsets.write_ids(path, chosen)
        logging.info('Label subset ids written to %s', path)
    self._subset_ids = chosen
    return chosen

  def use_label_subset(self, ids: Sequence[str], origin: str):
    """Makes `ids` the label subset from now on, instead of what the config
    says (e.g. the subset a distillation teacher was fine-tuned on, read
    from `origin`). Raises ValueError naming `origin` if an id is not in the
    train split."""
    available, _ = self.source.ids_and_labels(self.config.train_split)
    subsets.check_ids(ids, available, origin)
    self._subset_ids = np.array(sorted(set(ids)), dtype=object)
    logging.info('Label subset: %d ids from %s', len(self._subset_ids),
                 origin)

  @property
  def label_subset_path(self) -> Optional[str]:
    """Where a drawn subset is written (None without model_dir)."""
    if not self.config.model_dir:
      return None
    return tf.io.gfile.join(self.config.model_dir, subsets.subset_file_name(
        self.config.train_label_fraction, self.config.label_subset_seed))

  # ------------------------------------------------------------ pipelines --

  def input_fn(self, kind: str) -> Callable[[tf.distribute.InputContext],
                                             tf.data.Dataset]:
    """For strategy.distribute_datasets_from_function."""
    kind = input_kind(kind)
    if kind in SUBSET_INPUT_KINDS:
      self.label_subset()  # Drawn once, here, not in every pipeline.
    return lambda input_context: self.dataset(kind, input_context)

  def distributed_dataset(self, strategy: tf.distribute.Strategy, kind: str):
    """The pipeline of `kind` for strategy.run's inputs. On one CPU replica
    it is the plain pipeline: tf.distribute would wrap it in a multi-device
    iterator whose own per-device pipeline has tf.data's default options,
    autotuning included, whatever DataConfig.input_autotune says, and whose
    release then waits for the autotuner's sleep (bench/NOTES.md). The
    batches are the same, in the same order."""
    if on_one_cpu(strategy):
      return self.dataset(kind)
    return strategy.distribute_datasets_from_function(self.input_fn(kind))

  def dataset(self, kind: str,
              input_context: Optional[tf.distribute.InputContext] = None
              ) -> tf.data.Dataset:
    """One input pipeline's per-replica batches of an input kind (see the
    module doc)."""
    kind = input_kind(kind)
    context = input_context or tf.distribute.InputContext()
    if kind == 'eval':
      dataset = self._eval_dataset(context)
    else:
      dataset = self._train_dataset(kind, context)
    options = tf.data.Options()
    # Evaluation keeps the split's order (features line up with the split's
    # ids); training batches may come in any order unless seeded.
    options.deterministic = kind == 'eval' or self.config.seed is not None
    options.autotune.enabled = self.config.input_autotune
    return dataset.with_options(options)

  def _train_dataset(self, kind, context):
    config = self.config
    pipeline = context.input_pipeline_id
    batch_size = context.get_per_replica_batch_size(config.train_batch_size)
    ids = self.label_subset() if kind == 'labeled' else None
    dataset = self.source.read(
        config.train_split, shard_index=pipeline,
        num_shards=context.num_input_pipelines, shuffle=True,
        seed=_stream_seed(config.seed, pipeline, 0), ids=ids)
    if kind == 'all_images':
      labeled_ids = self.label_subset()
      if labeled_ids is not None:
        dataset = dataset.map(_unlabel_all_but(labeled_ids))
    dataset = dataset.map(lambda e: (e['image'], e['label']))
    if config.cache_dataset:
      dataset = dataset.cache()
    buffer_size = config.shuffle_buffer_size or batch_size * (
        50 if config.image_size <= CIFAR_IMAGE_SIZE else 10)
    dataset = dataset.shuffle(buffer_size,
                              seed=_stream_seed(config.seed, pipeline, 1))
    dataset = dataset.repeat()
    dataset = tf.data.Dataset.zip(
        dataset, _seeds(_stream_seed(config.seed, pipeline, 2)))
    size = config.image_size
    params = config.augment_params()
    if kind == 'views':
      dataset = self._pretrain_batches(dataset, batch_size, pipeline)
    else:
      dataset = dataset.map(
          lambda example, seed: (
              augment.crop_and_flip(example[0], size, seed, params),
              example[1]),
          num_parallel_calls=tf.data.AUTOTUNE)
      dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)

  def _pretrain_batches(self, dataset, batch_size, pipeline):
    config = self.config
    size = config.image_size
    strength = config.color_jitter_strength
    params = config.augment_params()
    blur = augment.blur_enabled(size, config.use_blur)
    kernel_size = augment.blur_kernel_size(size)

    # What runs per image (in Dataset.map) and what once per batch: see
    # DataConfig.batch_augmentation.
    batched_color = config.batch_augmentation == 'all' and strength > 0
    batched_blur = blur and config.batch_augmentation in ('all', 'blur')

    def view(image, seed):
      if config.batch_augmentation == 'all':
        return augment.crop_and_flip(image, size, seed, params)
      return augment.pretrain_view(image, seed, size, strength,
                                   blur and not batched_blur, kernel_size,
                                   params)

    view = tf.function(view)  # Traced once, used for both views.

    def two_views(example, seed):
      image, label = example
      first, second = tf.unstack(
          tf.random.experimental.stateless_split(seed, 2))
      return tf.stack([view(image, first), view(image, second)]), label

    dataset = dataset.map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)

    def to_rows(pairs, labels, seed):
      images = augment.pairs_to_rows(pairs)
      color_seed, blur_seed = tf.unstack(
          tf.random.experimental.stateless_split(seed, 2))
      if batched_color:
        images = augment.color_distort(images, color_seed, strength, params)
      if batched_blur:
        images = augment.random_blur(images, blur_seed, kernel_size, params)
      return images, tf.concat([labels, labels], 0)

    dataset = tf.data.Dataset.zip(
        dataset, _seeds(_stream_seed(config.seed, pipeline, 3)))
    return dataset.map(lambda batch, seed: to_rows(*batch, seed),
                       num_parallel_calls=tf.data.AUTOTUNE)

  def _eval_dataset(self, context):
    config = self.config
    size = config.image_size
    batch_size = context.get_per_replica_batch_size(config.eval_batch_size)
    steps = self.eval_steps(context.num_replicas_in_sync,
                            context.num_input_pipelines)
    replicas_here = (context.num_replicas_in_sync //
                     context.num_input_pipelines)
    dataset = self.source.read(
        config.eval_split, shard_index=context.input_pipeline_id,
        num_shards=context.num_input_pipelines)
    if config.cache_dataset:
      dataset = dataset.cache()
    if config.center_crop_for_eval:
      preprocess = lambda image: augment.center_crop_and_resize(image, size)
    else:
      preprocess = lambda image: augment.resize(image, size)
    dataset = dataset.map(
        lambda e: (preprocess(e['image']), e['label'], tf.constant(1.0)),
        num_parallel_calls=tf.data.AUTOTUNE)
    blank = tf.data.Dataset.from_tensors(
        (tf.zeros([size, size, 3]), tf.constant(0, tf.int32),
         tf.constant(0.0))).repeat()
    dataset = dataset.concatenate(blank).take(steps * replicas_here *
                                              batch_size)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(
        tf.data.AUTOTUNE)
