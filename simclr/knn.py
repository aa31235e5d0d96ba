"""Weighted k-nearest-neighbour classification of features, the evaluation
of InstDisc (Wu et al. 2018) as lightly and solo-learn run it.

Features are L2-normalised; the bank holds labeled rows (the train split),
each query (an eval-split row) takes its k most cosine-similar bank rows,
and each neighbour votes for its label with weight exp(similarity / T).
top-1: the class with the largest vote total is the query's label; top-5:
the label is among the 5 classes with the largest totals (all classes when
there are fewer than 5). Ties go to the lower class index, as
tf.math.top_k orders them (only classes without votes tie in practice).

    result = knn_evaluate(bank, bank_labels, queries, query_labels, k=200)
    result.top_1_accuracy, result.top_5_accuracy

It runs in TensorFlow one batch of queries at a time (similarities [b,
num_bank], then tf.math.top_k and a segment-sum vote), never the whole
queries x bank matrix; with a strategy, query batches are split over its
replicas, each holding its own copy of the bank. evaluate_model and
ModelKnnEvaluator compute a model's features first (simclr/features.py);
KnnMonitor runs that every N steps of a training run as an orbit train
action.
"""

import dataclasses
from typing import Dict, NamedTuple, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from simclr import features as features_lib
from simclr.configs import DataConfig
from simclr.data import datasets
from simclr.data import pipeline
from simclr.models.simclr_model import SimCLRModel

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.1
# Classes the top-5 accuracy looks at.
TOP_CLASSES = 5
# Per replica, a query batch's similarities [b, num_bank] hold at most this
# many float32 values (64 MB) when no batch size is given.
SIMILARITY_BUDGET = 2**24
MAX_QUERY_BATCH = 1024
# Names of the metrics while pretraining (TensorBoard, train_metrics.json,
# result.json).
TOP1_METRIC = 'knn/top_1_accuracy'
TOP5_METRIC = 'knn/top_5_accuracy'


@dataclasses.dataclass
class KnnResult:
  """Accuracies in [0, 1] over num_queries queries against a bank of
  num_bank labeled rows."""
  top_1_accuracy: float
  top_5_accuracy: float
  k: int
  temperature: float
  num_bank: int
  num_queries: int

  def as_dict(self) -> Dict[str, float]:
    return dataclasses.asdict(self)

  def metrics(self) -> Dict[str, float]:
    """{TOP1_METRIC: top-1, TOP5_METRIC: top-5}."""
    return {TOP1_METRIC: self.top_1_accuracy,
            TOP5_METRIC: self.top_5_accuracy}


class KnnPredictions(NamedTuple):
  """For Q queries: similarities float32 [Q, k] of their neighbours (most
  similar first), neighbours int32 [Q, k] (bank rows), classes int32
  [Q, min(5, num_classes)] (by vote total, largest first)."""
  similarities: np.ndarray
  neighbours: np.ndarray
  classes: np.ndarray


def check_settings(k: int, temperature: float, num_bank: int):
  """Raises ValueError unless 1 <= k <= num_bank and temperature > 0."""
  if not 1 <= k <= num_bank:
    raise ValueError(f'k={k}: expected 1 <= k <= {num_bank}, the number of '
                     f'bank rows')
  if not temperature > 0:
    raise ValueError(f'temperature={temperature}: expected > 0')


def unit_rows(features, chunk: int = 8192) -> tf.Tensor:
  """float32 tensor [N, d] of the rows of features scaled to unit L2 norm
  (zero rows stay zero), converted chunk by chunk: a large bank costs its
  own size once more, not a float64 or second full-size temporary."""
  return tf.concat([
      tf.math.l2_normalize(tf.cast(features[start:start + chunk], tf.float32),
                           axis=1)
      for start in range(0, len(features), chunk)], axis=0)


def _neighbour_votes(bank, bank_labels, queries, rows, *, k, temperature,
                     num_classes, leave_one_out):
  """One replica's query batch: (similarities [b, k], neighbours [b, k],
  classes [b, min(5, C)], rows [b]). bank [N, d] and queries [b, d] are
  unit rows; rows: each query's index (its own bank row when leave_one_out;
  -1 for padding)."""
  similarities = tf.matmul(queries, bank, transpose_b=True)
  if leave_one_out:
    own = tf.equal(tf.range(tf.shape(bank)[0])[None, :], rows[:, None])
    similarities = tf.where(own, -np.inf, similarities)
  top, neighbours = tf.math.top_k(similarities, k)
  # Scaled per query so that the nearest neighbour votes 1: exp stays finite
  # at any temperature, and no query's ranking of classes changes.
  weights = tf.exp((top - top[:, :1]) / temperature)
  batch = tf.shape(queries)[0]
  slots = (tf.range(batch)[:, None] * num_classes +
           tf.gather(bank_labels, neighbours))
  votes = tf.math.unsorted_segment_sum(weights, slots, batch * num_classes)
  votes = tf.reshape(votes, [batch, num_classes])
  classes = tf.math.top_k(votes, min(TOP_CLASSES, num_classes)).indices
  return top, neighbours, classes, rows


class KnnClassifier:
  """A bank of labeled features to classify queries against.

  bank_features: [N, d] (any float; normalised here); bank_labels: int [N]
  in [0, num_classes) (num_classes None: max label + 1). strategy: None for
  one device; else queries are split over its replicas. batch_size: queries
  per replica and step (None: as many as keep the similarities of a batch
  within SIMILARITY_BUDGET). Raises ValueError for bad settings.
  """

  def __init__(self, bank_features, bank_labels, *,
               num_classes: Optional[int] = None, k: int = DEFAULT_K,
               temperature: float = DEFAULT_TEMPERATURE,
               strategy: Optional[tf.distribute.Strategy] = None,
               batch_size: Optional[int] = None):
    bank_labels = np.asarray(bank_labels)
    if num_classes is None and len(bank_labels):
      num_classes = int(bank_labels.max()) + 1
    self.num_classes = num_classes
    self._check_bank(bank_features, bank_labels)
    self.num_bank = len(bank_labels)
    check_settings(k, temperature, self.num_bank)
    self.k = k
    self.temperature = temperature
    self.strategy = strategy or tf.distribute.get_strategy()
    self.batch_size = batch_size or int(np.clip(
        SIMILARITY_BUDGET // self.num_bank, 1, MAX_QUERY_BATCH))
    with self.strategy.scope():
      # Under a strategy, mirrored variables: a copy on every replica's
      # device, placed once rather than sent with every batch.
      self._bank = tf.Variable(unit_rows(bank_features), trainable=False)
      self._bank_labels = tf.Variable(bank_labels.astype(np.int32),
                                      trainable=False)
    self._steps = {}

  def _check_bank(self, bank_features, bank_labels: np.ndarray):
    if np.ndim(bank_features) != 2 or len(bank_labels) != len(bank_features):
      raise ValueError(f'bank: expected features [N, d] and labels [N]; got '
                       f'{np.shape(bank_features)} and {bank_labels.shape}')
    if len(bank_labels) and bank_labels.min() < 0:
      raise ValueError('bank labels: every bank row needs a label >= 0 '
                       '(unlabeled rows cannot vote)')
    if len(bank_labels) and bank_labels.max() >= self.num_classes:
      raise ValueError(f'bank labels: {int(bank_labels.max())} is not below '
                       f'num_classes={self.num_classes}')

  def set_bank(self, bank_features, bank_labels):
    """Replaces the bank by rows of the same shape (e.g. the same split's
    features of the model some steps later), reusing the traced step."""
    bank_labels = np.asarray(bank_labels)
    self._check_bank(bank_features, bank_labels)
    if tuple(np.shape(bank_features)) != tuple(self._bank.shape):
      raise ValueError(f'bank: expected shape {tuple(self._bank.shape)} (a '
                       f'new shape needs a new KnnClassifier); got '
                       f'{np.shape(bank_features)}')
    self._bank.assign(unit_rows(bank_features))
    self._bank_labels.assign(bank_labels.astype(np.int32))

  def _step(self, leave_one_out: bool):
    """The traced step of one global batch (queries [B, d], rows [B]) over
    the strategy's replicas, gathered; one per classifier and mode."""
    if leave_one_out not in self._steps:
      def replica_step(queries, rows):
        return _neighbour_votes(
            self._bank, self._bank_labels,
            tf.math.l2_normalize(queries, axis=1), rows, k=self.k,
            temperature=self.temperature, num_classes=self.num_classes,
            leave_one_out=leave_one_out)

      @tf.function
      def step(batch):
        outputs = self.strategy.run(replica_step, args=batch)
        return tuple(self.strategy.gather(x, axis=0) for x in outputs)

      self._steps[leave_one_out] = step
    return self._steps[leave_one_out]

  def predict(self, query_features,
              leave_one_out: bool = False) -> KnnPredictions:
    """KnnPredictions of query_features [Q, d]. leave_one_out: the queries
    are the bank itself (Q = N) and no query is its own neighbour."""
    queries = np.asarray(query_features, np.float32)
    if queries.ndim != 2:
      raise ValueError(f'queries: expected [Q, d]; got {queries.shape}')
    if leave_one_out:
      if len(queries) != self.num_bank:
        raise ValueError('leave_one_out: the queries must be the bank')
      check_settings(self.k, self.temperature, self.num_bank - 1)
    count = len(queries)
    if not count:
      raise ValueError('queries: none given')
    global_batch = self.batch_size * self.strategy.num_replicas_in_sync
    padded = -(-count // global_batch) * global_batch
    # Padding rows (index -1) keep every replica's batches full.
    queries = np.concatenate(
        [queries, np.zeros([padded - count, queries.shape[1]], np.float32)])
    rows = np.concatenate([np.arange(count), -np.ones(padded - count)])
    dataset = tf.data.Dataset.from_tensor_slices(
        (queries, rows.astype(np.int32))).batch(global_batch)
    similarities = np.zeros([count, self.k], np.float32)
    neighbours = np.zeros([count, self.k], np.int32)
    classes = np.zeros([count, min(TOP_CLASSES, self.num_classes)], np.int32)
    step = self._step(leave_one_out)
    for batch in pipeline.distribute(self.strategy, dataset):
      top, nearest, ranked, index = (
          x.numpy() for x in step(batch))
      # Rows come back by query index: any order of the replicas is fine.
      keep = index >= 0
      similarities[index[keep]] = top[keep]
      neighbours[index[keep]] = nearest[keep]
      classes[index[keep]] = ranked[keep]
    return KnnPredictions(similarities, neighbours, classes)

  def evaluate(self, query_features, query_labels,
               leave_one_out: bool = False) -> KnnResult:
    """Top-1 and top-5 accuracy of the queries' labels (int [Q])."""
    labels = np.asarray(query_labels)
    if labels.shape != (len(query_features),):
      raise ValueError(f'query labels: expected [{len(query_features)}]; '
                       f'got {labels.shape}')
    classes = self.predict(query_features, leave_one_out).classes
    return KnnResult(
        top_1_accuracy=float(np.mean(classes[:, 0] == labels)),
        top_5_accuracy=float(np.mean(np.any(classes == labels[:, None],
                                            axis=1))),
        k=self.k, temperature=self.temperature, num_bank=self.num_bank,
        num_queries=len(labels))


def knn_evaluate(bank_features, bank_labels, query_features, query_labels,
                 **settings) -> KnnResult:
  """KnnResult of queries against a bank; settings as for KnnClassifier
  (num_classes, k, temperature, strategy, batch_size)."""
  return KnnClassifier(bank_features, bank_labels, **settings).evaluate(
      query_features, query_labels)


def knn_leave_one_out(features, labels, **settings) -> KnnResult:
  """KnnResult of every row against all the other rows (no held-out
  split needed, e.g. for one file of features)."""
  return KnnClassifier(features, labels, **settings).evaluate(
      features, labels, leave_one_out=True)


class ModelKnnEvaluator:
  """k-NN accuracy of a model's features, repeatable (KnnMonitor calls it as
  the model trains): the bank is data_config's train_split, the queries its
  eval_split, both through the 'eval' pipeline (image_size, eval_batch_size
  from data_config). The feature step and the classifier are traced once.
  Raises ValueError for an unlabeled dataset, a bad split, output key or
  settings, before computing any feature."""

  def __init__(self, model: SimCLRModel, data_config: DataConfig, *,
               output_key: str = features_lib.DEFAULT_OUTPUT_KEY,
               k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
               strategy: Optional[tf.distribute.Strategy] = None,
               source: Optional[datasets.Source] = None):
    self.extractor = features_lib.FeatureExtractor(model, output_key,
                                                   strategy)
    self.strategy = self.extractor.strategy
    self.bank_inputs = features_lib.split_inputs(
        data_config, data_config.train_split, source)
    self.query_inputs = features_lib.split_inputs(
        data_config, data_config.eval_split, self.bank_inputs.source)
    if not self.bank_inputs.num_classes:
      raise ValueError(f'dataset {data_config.dataset!r} has no labels: k-NN '
                       f'evaluation needs a labeled bank')
    check_settings(k, temperature, self.bank_inputs.num_eval_examples)
    if not self.query_inputs.num_eval_examples:
      raise ValueError(f'split {data_config.eval_split!r} of '
                       f'{data_config.dataset!r} is empty: no queries')
    self.k = k
    self.temperature = temperature
    self._classifier = None

  def _features(self, name, inputs, log_progress):
    progress = None
    if log_progress:
      progress = features_lib.log_progress(
          f'k-NN {name} features ({inputs.config.eval_split})')
    return self.extractor(
        inputs.distributed_dataset(self.strategy, 'eval'),
        inputs.eval_steps(self.strategy.num_replicas_in_sync), progress)

  def __call__(self, log_progress: bool = False) -> KnnResult:
    """The KnnResult of the model as it is now."""
    bank, bank_labels = self._features('bank', self.bank_inputs, log_progress)
    queries, query_labels = self._features('queries', self.query_inputs,
                                           log_progress)
    if self._classifier is None:
      self._classifier = KnnClassifier(
          bank, bank_labels, num_classes=self.bank_inputs.num_classes,
          k=self.k, temperature=self.temperature, strategy=self.strategy)
    else:
      self._classifier.set_bank(bank, bank_labels)
    return self._classifier.evaluate(queries, query_labels)


def evaluate_model(model: SimCLRModel, data_config: DataConfig,
                   log_progress: bool = False, **settings) -> KnnResult:
  """The KnnResult of `model` once (ModelKnnEvaluator; settings:
  output_key, k, temperature, strategy, source)."""
  return ModelKnnEvaluator(model, data_config, **settings)(log_progress)


class KnnMonitor:
  """orbit train action: k-NN accuracy of the training model's
  `output_key` features (ModelKnnEvaluator) at the first loop end at or after
  every multiple of `every_steps`, and at `total_steps`. Writes
  TOP1_METRIC and TOP5_METRIC as TensorBoard scalars into summary_dir and
  keeps them in `last_metrics`."""

  def __init__(self, model: SimCLRModel, data_config: DataConfig,
               strategy: tf.distribute.Strategy, global_step: tf.Variable,
               every_steps: int, total_steps: int, summary_dir: str, *,
               k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
               output_key: str = features_lib.DEFAULT_OUTPUT_KEY,
               source: Optional[datasets.Source] = None):
    if every_steps < 1:
      raise ValueError(f'every_steps={every_steps}: expected >= 1')
    self.evaluator = ModelKnnEvaluator(
        model, data_config, output_key=output_key, k=k,
        temperature=temperature, strategy=strategy, source=source)
    self.global_step = global_step
    self.every_steps = every_steps
    self.total_steps = total_steps
    self.writer = tf.summary.create_file_writer(summary_dir)
    self.last_metrics = {}
    self._last_step = int(global_step.numpy())

  def __call__(self, output):
    del output
    step = int(self.global_step.numpy())
    due = (step // self.every_steps > self._last_step // self.every_steps or
           step >= self.total_steps)
    if not due or step == self._last_step:
      return
    self._last_step = step
    result = self.evaluator()
    self.last_metrics = result.metrics()
    with self.writer.as_default():
      for name, value in self.last_metrics.items():
        tf.summary.scalar(name, value, step=step)
    self.writer.flush()
    logging.info('k-NN at step %d: top-1 %.4f, top-5 %.4f (k=%d, T=%g, bank '
                 '%d, queries %d)', step, result.top_1_accuracy,
                 result.top_5_accuracy, result.k, result.temperature,
                 result.num_bank, result.num_queries)
