"""Training objectives: NT-Xent (SimCLR Eq. 1, optionally with the SimCLRv2
memory of momentum keys), supervised cross-entropy and distillation
(SimCLRv2 Eq. 2 and 3).

Every loss is the mean over the examples of the calling replica. Inside a
replica context of a tf.distribute strategy the contrastive losses take their
candidates (negatives and positives) from the whole global batch, gathered
across replicas with the replica context's `all_gather`, whose gradient sums
the replicas' contributions back to the embeddings that produced them. A
train step therefore divides its per-replica loss by `num_replicas_in_sync`
before taking gradients (as the published code does): the mean over replicas
of the per-replica losses is the global loss, and the gradients summed over
replicas are those of the global loss, equal to a single-device run on the
whole batch.

Row convention (the published one): the contrastive inputs are [2n, d],
the first view of the replica's n images in rows 0..n-1, the second view of
the same images, in the same order, in rows n..2n-1.
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
  this is exactly `contrastive_loss(queries)`.

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
  queue = _normalize(tf.stop_gradient(tf.convert_to_tensor(queue)),
                     hidden_norm)
  key_candidates, anchor_index, num_images = gather_views(keys)
  candidates = tf.concat([key_candidates, queue], 0)
  num_keys = tf.shape(key_candidates)[0]
  if queue_length is None:
    exclude = None
  else:
    slot = tf.range(tf.shape(queue)[0])
    unfilled = slot >= tf.cast(queue_length, tf.int32)
    exclude = tf.concat(
        [tf.zeros([num_keys], tf.bool), unfilled], 0)[tf.newaxis, :]
  return _contrastive_outputs(queries, candidates, anchor_index, num_images,
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
  logits = tf.cast(logits, tf.float32)
  labels = tf.cast(labels_onehot, tf.float32)
  return tf.reduce_mean(
      tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def distillation(teacher_logits, student_logits,
                 temperature: float = 1.0) -> tf.Tensor:
  """SimCLRv2 Eq. 2, mean over the local batch (scalar float32):
  -sum_y P_T(y|x; tau) log P_S(y|x; tau), P = softmax(logits / tau).

  teacher_logits, student_logits: [B, C]. The teacher's probabilities are
  constants (no gradient reaches the teacher).
  """
  return tf.reduce_mean(
      _distillation_per_example(teacher_logits, student_logits, temperature))


def distillation_with_labels(teacher_logits, student_logits, labels_onehot,
                             labeled=None, alpha: float = 1.0,
                             temperature: float = 1.0) -> tf.Tensor:
  """SimCLRv2 Eq. 3 (scalar float32):
  (1 - alpha) * supervised cross-entropy of the labeled examples
  + alpha * distillation loss (Eq. 2) of all examples,
  both sums divided by the local batch size B, so their ratio is Eq. 3's.

  Args:
    teacher_logits, student_logits: [B, C].
    labels_onehot: [B, C] ground truth (ignored where not `labeled`).
    labeled: [B] bool or 0/1, which examples carry a label; None = all.
    alpha: weight of the distillation term (1.0: distillation only).
    temperature: tau of the distillation term; the label term uses the
      student's plain softmax (tau = 1), as it predicts the true class.
  """
  distill = _distillation_per_example(teacher_logits, student_logits,
                                      temperature)
  cross_entropy = tf.nn.softmax_cross_entropy_with_logits(
      labels=tf.cast(labels_onehot, tf.float32),
      logits=tf.cast(student_logits, tf.float32))
  if labeled is not None:
    cross_entropy *= tf.cast(labeled, tf.float32)
  return tf.reduce_mean((1.0 - alpha) * cross_entropy + alpha * distill)


def _distillation_per_example(teacher_logits, student_logits, temperature):
  teacher = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
  student = tf.cast(student_logits, tf.float32)
  return tf.nn.softmax_cross_entropy_with_logits(
      labels=tf.nn.softmax(teacher / temperature),
      logits=student / temperature)


def _normalize(hidden, hidden_norm: bool):
  # Losses in float32 whatever the model's compute dtype.
  hidden = tf.cast(hidden, tf.float32)
  return tf.math.l2_normalize(hidden, -1) if hidden_norm else hidden


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
