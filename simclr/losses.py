"""Training objectives, the only place each is written: NT-Xent (SimCLR
Eq. 1, optionally with SimCLRv2's memory of momentum keys, in either of its two
readings), supervised cross-entropy (with unlabeled rows) and distillation
(SimCLRv2 Eq. 2 and 3).

Every loss is an average over the examples of the calling replica (the
supervised loss over its labeled examples). Inside a replica context of a
tf.distribute strategy the contrastive losses take their candidates
(negatives and positives) from the whole global batch, gathered across
replicas with the replica context's `all_gather`, whose gradient sums the
replicas' contributions back to the embeddings that produced them. A train
step therefore divides its per-replica loss by `num_replicas_in_sync` before
taking gradients (as the published code does): the mean over replicas of the
per-replica losses is the global loss, and the gradients summed over replicas
are those of the global loss, equal to a single-device run on the whole batch.

Row convention (the published one): the contrastive inputs are [2n, d],
the first view of the replica's n images in rows 0..n-1, the second view of
the same images, in the same order, in rows n..2n-1.

Label convention: integer class indices [B] in [0, C), negative (-1) for an
unlabeled example, which then contributes nothing to a label term.
"""

from typing import Dict, NamedTuple, Optional, Tuple

import tensorflow as tf

# Added (negated) to the logits of excluded candidates (an anchor itself,
# unfilled memory slots). Finite, unlike -inf, so that 0 * logit stays 0 in the
# softmax cross-entropy and its gradient; exp(-1e9 + 20) is exactly 0 in
# float32, so excluded candidates contribute nothing.
LARGE_NUM = 1e9

REDUCTIONS = ('mean', 'sum_views')


class ContrastiveOutputs(NamedTuple):
  """What the contrastive losses return.

  loss: scalar float32, see `nt_xent` for its averaging.
  logits: [n, M] float32, similarities / temperature of the replica's
    first-view anchors with the second views of the global batch (M images),
    the logits the published code returns and logs metrics of.
  labels: [n, M] float32 one-hot, the positive of each row of `logits`.
  """
  loss: tf.Tensor
  logits: tf.Tensor
  labels: tf.Tensor


class SupervisedOutputs(NamedTuple):
  """What `supervised_with_labels` returns, all scalar float32.

  loss: mean softmax cross-entropy over the labeled examples (0 when none).
  accuracy: fraction of the labeled examples whose top logit is their label
    (0 when none).
  num_labeled: how many examples carry a label.
  """
  loss: tf.Tensor
  accuracy: tf.Tensor
  num_labeled: tf.Tensor


class DistillationOutputs(NamedTuple):
  """What `distillation_terms` returns, all scalar float32: the two terms of
  SimCLRv2 Eq. 3 (their sum is the loss) and two metrics.

  distill_loss: alpha * mean over the B examples of Eq. 2.
  supervised_loss: (1 - alpha) * (sum over the labeled examples of the
    student's cross-entropy) / B.
  supervised_accuracy: fraction of the labeled examples whose top student
    logit is their label (0 when none).
  agreement: fraction of the B examples where the teacher's and the
    student's top logits are the same class.
  """
  distill_loss: tf.Tensor
  supervised_loss: tf.Tensor
  supervised_accuracy: tf.Tensor
  agreement: tf.Tensor


def nt_xent(hidden, temperature: float = 0.1, hidden_norm: bool = True,
            reduction: str = 'mean') -> tf.Tensor:
  """NT-Xent loss of SimCLR (Eq. 1), a scalar float32.

  Args:
    hidden: [2n, d] projections of the replica's batch, first views then
      second views (any float dtype; computed in float32).
    temperature: tau; the cosine similarities are divided by it.
    hidden_norm: L2-normalise the rows first (cosine similarity); without it
      plain dot products are used.
    reduction: 'mean' averages l(i, j) over the 2n anchors (the paper's
      L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]); 'sum_views' is the value
      the published code reports and trains on, which adds the two views'
      losses of a pair and averages over the n pairs: exactly 2x 'mean'.
  """
  return contrastive_loss(hidden, temperature, hidden_norm, reduction).loss


def contrastive_loss(hidden, temperature: float = 0.1,
                     hidden_norm: bool = True,
                     reduction: str = 'mean') -> ContrastiveOutputs:
  """`nt_xent` that also returns the contrastive logits and labels (for the
  metrics of `contrastive_metrics`). Arguments as in `nt_xent`."""
  hidden = _normalize(hidden, hidden_norm)
  candidates, anchor_index, num_images = gather_views(hidden)
  return _contrastive_outputs(hidden, candidates, anchor_index, num_images,
                              temperature, reduction)


def nt_xent_with_memory(queries, keys, queue, temperature: float = 0.1,
                        hidden_norm: bool = True, queue_length=None,
                        reduction: str = 'mean') -> ContrastiveOutputs:
  """NT-Xent with SimCLRv2's MoCo-style memory.

  Each query (online network's projection) is an anchor. Its candidates are
  the keys (momentum network's projections) of both views of every image of
  the global batch, except the key of the anchor's own view of its own image,
  plus the valid rows of the memory queue; its positive is the key of the
  other view of its image. With keys equal to the queries and an empty queue
  this is exactly `contrastive_loss(queries)`. The other reading of the
  paper, the online network's NT-Xent with the queue as extra negatives
  only, is `nt_xent_with_negatives`.

  Args:
    queries: [2n, d] online projections, the `hidden` convention of `nt_xent`.
    keys: [2n, d] momentum projections of the same images, same row order.
      No gradient flows into them.
    queue: [Q, d] past keys (a variable or tensor). No gradient flows into it.
    temperature, hidden_norm, reduction: as in `nt_xent`; with hidden_norm
      the keys and the queue are normalised too.
    queue_length: scalar int, how many leading rows of `queue` hold keys (the
      rest are unfilled and excluded); None means all Q rows.

  Returns:
    ContrastiveOutputs; logits/labels compare the first-view queries with the
    second-view keys of the global batch (no queue), as the published metrics.
  """
  queries = _normalize(queries, hidden_norm)
  keys = _normalize(tf.stop_gradient(keys), hidden_norm)
  key_candidates, anchor_index, num_images = gather_views(keys)
  candidates, exclude = _append_queue(key_candidates, queue, queue_length,
                                      hidden_norm)
  return _contrastive_outputs(queries, candidates, anchor_index, num_images,
                              temperature, reduction, exclude)


def nt_xent_with_negatives(hidden, queue, temperature: float = 0.1,
                           hidden_norm: bool = True, queue_length=None,
                           reduction: str = 'mean') -> ContrastiveOutputs:
  """NT-Xent with SimCLRv2's memory read as extra negatives only.

  SimCLR's own loss on the online network, unchanged: anchors, positives and
  in-batch negatives are the online projections of the global batch
  (gathered across replicas as in `contrastive_loss`). The valid rows of the
  queue of past momentum keys are appended to every anchor's candidates as
  negatives ("buffered as negative examples", SimCLRv2 Sec. 2). With an empty
  queue (queue_length=0) this is exactly `contrastive_loss(hidden)`.

  Args:
    hidden: [2n, d] online projections, the `hidden` convention of `nt_xent`.
    queue: [Q, d] past momentum keys (a variable or tensor). No gradient
      flows into it.
    temperature, hidden_norm, reduction: as in `nt_xent`; with hidden_norm
      the queue is normalised too.
    queue_length: scalar int, how many leading rows of `queue` hold keys (the
      rest are unfilled and excluded); None means all Q rows.

  Returns:
    ContrastiveOutputs; logits/labels as in `contrastive_loss` (no queue).
  """
  hidden = _normalize(hidden, hidden_norm)
  batch_candidates, anchor_index, num_images = gather_views(hidden)
  candidates, exclude = _append_queue(batch_candidates, queue, queue_length,
                                      hidden_norm)
  return _contrastive_outputs(hidden, candidates, anchor_index, num_images,
                              temperature, reduction, exclude)


def gather_views(hidden) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Gathers the replicas' [2n_r, d] view-stacked rows into the global batch.

  Returns:
    candidates: [2M, d], the first views of all M images of the global batch
      (replica 0's, then replica 1's, ...) then their second views in the same
      order: the rows a single device would hold for the whole batch.
    anchor_index: [2n] int32, row of `candidates` holding each local row.
    num_images: scalar int32 M.
  Outside a replica context, or with one replica, nothing is gathered.
  Replicas may hold different numbers of images.
  """
  first, second = tf.split(hidden, 2, 0)
  local_images = tf.shape(first)[0]
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    all_first, all_second, offset = first, second, 0
  else:
    all_first, all_second = context.all_gather([first, second], axis=0)
    # Separately: the backward pass all-reduces the gradients of one call's
    # inputs together, which must not mix float and integer (host) tensors.
    counts = context.all_gather(tf.reshape(local_images, [1]), axis=0)
    # replica_id is uint32 on TPUs.
    replica_id = tf.cast(
        tf.cast(context.replica_id_in_sync_group, tf.uint32), tf.int32)
    offset = tf.reduce_sum(counts[:replica_id])
  num_images = tf.shape(all_first)[0]
  local = tf.range(local_images) + offset
  anchor_index = tf.concat([local, local + num_images], 0)
  return tf.concat([all_first, all_second], 0), anchor_index, num_images


def contrastive_metrics(logits, labels) -> Dict[str, tf.Tensor]:
  """The published code's training metrics of the contrastive task.

  Args:
    logits, labels: [n, M] from ContrastiveOutputs.
  Returns:
    {'contrast_acc': fraction of rows whose top logit is the positive,
     'contrast_entropy': mean entropy (nats) of softmax(logits) rows}, both
    scalar float32.
  """
  correct = tf.equal(tf.argmax(labels, 1), tf.argmax(logits, 1))
  probabilities = tf.nn.softmax(logits)
  # The 1e-8 keeps log finite for vanishing probabilities (published too).
  entropy = -tf.reduce_sum(probabilities * tf.math.log(probabilities + 1e-8),
                           -1)
  return {
      'contrast_acc': tf.reduce_mean(tf.cast(correct, tf.float32)),
      'contrast_entropy': tf.reduce_mean(entropy),
  }


def supervised(labels_onehot, logits) -> tf.Tensor:
  """Softmax cross-entropy, mean over the local batch (scalar float32).

  labels_onehot: [B, C] (or soft targets); logits: [B, C].
  """
  return tf.reduce_mean(_softmax_cross_entropy(labels_onehot, logits))


def supervised_with_labels(labels, logits) -> SupervisedOutputs:
  """Softmax cross-entropy of the labeled examples of the local batch.

  Args:
    labels: [B] integer class indices in [0, C); negative (-1) marks an
      unlabeled example, which adds nothing to the loss, its gradient or the
      accuracy.
    logits: [B, C] (any float dtype; computed in float32).

  Returns:
    SupervisedOutputs: the mean over the labeled examples and their accuracy,
    both 0 (with a zero, not NaN, gradient) when no example is labeled, and
    their count.
  """
  per_example, labeled, correct = _labeled_cross_entropy(labels, logits)
  num_labeled = tf.reduce_sum(labeled)
  # At least 1, so a batch without labels gives 0 instead of 0 / 0.
  denominator = tf.maximum(num_labeled, 1.0)
  return SupervisedOutputs(loss=tf.reduce_sum(per_example) / denominator,
                           accuracy=tf.reduce_sum(correct) / denominator,
                           num_labeled=num_labeled)


def distillation(teacher_logits, student_logits,
                 temperature: float = 1.0) -> tf.Tensor:
  """SimCLRv2 Eq. 2, mean over the local batch (scalar float32):
  -sum_y P_T(y|x; tau) log P_S(y|x; tau), P = softmax(logits / tau).

  teacher_logits, student_logits: [B, C]. The teacher's probabilities are
  constants (no gradient reaches the teacher).
  """
  return tf.reduce_mean(
      _distillation_per_example(teacher_logits, student_logits, temperature))


def distillation_terms(teacher_logits, student_logits, labels, alpha: float,
                       temperature: float,
                       temperature_squared: bool = False
                       ) -> DistillationOutputs:
  """The two terms of SimCLRv2 Eq. 3, kept apart for the metrics:
  alpha * distillation (Eq. 2) of all examples
  + (1 - alpha) * cross-entropy of the labeled examples.

  Eq. 3 sums over the examples; both sums are divided here by the local batch
  size B (labeled or not), which keeps Eq. 3's ratio between the two terms
  (and makes alpha=1 the mean of `distillation`). The loss to train on is
  distill_loss + supervised_loss.

  Args:
    teacher_logits: [B, C]; no gradient reaches them.
    student_logits: [B, C].
    labels: [B] integer class indices, negative (-1) for unlabeled examples.
    alpha: weight of the distillation term, in [0, 1] (1: distillation
      only, the labels then only feed supervised_accuracy).
    temperature: tau of the distillation term; the label term uses the
      student's plain softmax (tau = 1), as it predicts the true class.
    temperature_squared: multiply the distillation term by tau**2 (Hinton
      et al.: keeps its gradients' scale independent of tau; the published
      distillation colab does it, SimCLRv2's Eq. 2 does not).

  Returns:
    DistillationOutputs, scalar float32 each.
  """
  teacher = tf.cast(teacher_logits, tf.float32)
  student = tf.cast(student_logits, tf.float32)
  batch_size = tf.cast(tf.shape(student)[0], tf.float32)
  distill = _distillation_per_example(teacher, student, temperature)
  if temperature_squared:
    distill = distill * (temperature ** 2)
  cross_entropy, labeled, correct = _labeled_cross_entropy(labels, student)
  agrees = tf.equal(tf.argmax(teacher, -1), tf.argmax(student, -1))
  return DistillationOutputs(
      distill_loss=alpha * tf.reduce_sum(distill) / batch_size,
      supervised_loss=(1.0 - alpha) * tf.reduce_sum(cross_entropy) / batch_size,
      supervised_accuracy=(tf.reduce_sum(correct) /
                           tf.maximum(tf.reduce_sum(labeled), 1.0)),
      agreement=tf.reduce_mean(tf.cast(agrees, tf.float32)))


def _softmax_cross_entropy(targets, logits):
  """[B] float32 -sum_c targets_c log softmax(logits)_c, of [B, C] inputs:
  the one cross-entropy formula behind every supervised and distillation
  loss."""
  return tf.nn.softmax_cross_entropy_with_logits(
      labels=tf.cast(targets, tf.float32), logits=tf.cast(logits, tf.float32))


def _labeled_cross_entropy(labels, logits):
  """Cross-entropy of integer labels, negative = unlabeled.

  labels: [B] int; logits: [B, C].
  Returns [B] float32 each: the cross-entropy (0 on unlabeled rows), 1.0 on
  labeled rows, 1.0 on labeled rows whose top logit is the label.
  """
  labels = tf.cast(labels, tf.int32)
  is_labeled = labels >= 0
  onehot = tf.one_hot(tf.where(is_labeled, labels, 0), tf.shape(logits)[-1])
  # tf.where rather than zero targets or a 0/1 weight: the softmax
  # cross-entropy's gradient ignores the targets' sum (all-zero targets would
  # still push the logits), and 0 * inf would be NaN.
  cross_entropy = tf.where(is_labeled, _softmax_cross_entropy(onehot, logits),
                           0.0)
  predicted = tf.argmax(logits, -1, output_type=tf.int32)
  correct = tf.logical_and(is_labeled, tf.equal(predicted, labels))
  return (cross_entropy, tf.cast(is_labeled, tf.float32),
          tf.cast(correct, tf.float32))


def _distillation_per_example(teacher_logits, student_logits, temperature):
  """[B] float32 Eq. 2 per example; the teacher is a constant."""
  teacher = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
  student = tf.cast(student_logits, tf.float32)
  return _softmax_cross_entropy(tf.nn.softmax(teacher / temperature),
                                student / temperature)


def _normalize(hidden, hidden_norm: bool):
  # Losses in float32 whatever the model's compute dtype.
  hidden = tf.cast(hidden, tf.float32)
  return tf.math.l2_normalize(hidden, -1) if hidden_norm else hidden


def _append_queue(candidates, queue, queue_length, hidden_norm: bool):
  """Appends the memory queue to the global batch's candidates.

  candidates: [2M, d] float32 (already normalised as hidden_norm says);
  queue: [Q, d], a constant here (stop-gradient), normalised like them;
  queue_length: scalar int or None (all Q rows filled).
  Returns the [2M + Q, d] candidates and the `exclude` of
  `_contrastive_outputs`: None, or [1, 2M + Q] bool marking the unfilled
  queue rows (index >= queue_length).
  """
  queue = _normalize(tf.stop_gradient(tf.convert_to_tensor(queue)),
                     hidden_norm)
  all_candidates = tf.concat([candidates, queue], 0)
  if queue_length is None:
    return all_candidates, None
  # A mask rather than a slice keeps the shapes static (XLA, TPUs).
  unfilled = tf.range(tf.shape(queue)[0]) >= tf.cast(queue_length, tf.int32)
  exclude = tf.concat([tf.zeros([tf.shape(candidates)[0]], tf.bool), unfilled],
                      0)
  return all_candidates, exclude[tf.newaxis, :]


def _contrastive_outputs(anchors, candidates, anchor_index, num_images,
                         temperature, reduction,
                         exclude: Optional[tf.Tensor] = None):
  """Cross-entropy of each anchor over all candidates but itself.

  anchors: [2n, d] local rows; candidates: [2M + extra, d] with the global
  batch in its first 2M rows (gather_views' order); anchor_index: [2n] row of
  each anchor in candidates; exclude: None or bool broadcastable to
  [2n, 2M + extra], further candidates to leave out.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f'reduction={reduction!r}: expected one of {REDUCTIONS}')
  logits = tf.matmul(anchors, candidates, transpose_b=True) / temperature
  num_candidates = tf.shape(candidates)[0]
  is_self = tf.cast(tf.one_hot(anchor_index, num_candidates), tf.bool)
  if exclude is not None:
    is_self = tf.logical_or(is_self, exclude)
  logits -= tf.cast(is_self, tf.float32) * LARGE_NUM
  # The other view of the same image: first views sit in rows [0, M).
  positive = tf.where(anchor_index < num_images, anchor_index + num_images,
                      anchor_index - num_images)
  per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=positive, logits=logits)
  loss = tf.reduce_mean(per_anchor)
  if reduction == 'sum_views':
    loss *= 2.0
  local_images = tf.shape(anchors)[0] // 2
  metric_logits = logits[:local_images, num_images:2 * num_images]
  metric_labels = tf.one_hot(anchor_index[:local_images], num_images)
  return ContrastiveOutputs(loss, metric_logits, metric_labels)
