"""simclr.losses against numpy re-implementations of the papers' formulas
(float64), on one device and on two replicas of a MirroredStrategy."""

import numpy as np
import pytest
import tensorflow as tf

from simclr import losses

NUM_IMAGES = 8  # global batch N: 16 views
DIM = 6


def numpy_nt_xent(hidden, temperature, hidden_norm=True):
  """SimCLR Eq. 1: mean over the 2N anchors of
  -log(exp(s_ij/tau) / sum_{k != i} exp(s_ik/tau)); rows 0..N-1 first views,
  row i + N the second view of image i."""
  h = np.asarray(hidden, np.float64)
  if hidden_norm:
    h = h / np.linalg.norm(h, axis=1, keepdims=True)
  two_n = len(h)
  similarity = h @ h.T / temperature
  per_anchor = []
  for i in range(two_n):
    positive = (i + two_n // 2) % two_n
    others = np.delete(similarity[i], i)
    log_denominator = others.max() + np.log(np.exp(others - others.max()).sum())
    per_anchor.append(log_denominator - similarity[i, positive])
  return np.mean(per_anchor)


def numpy_gradient(loss_fn, x, step=1e-6):
  """Central finite differences of a float64 numpy function."""
  x = np.asarray(x, np.float64)
  gradient = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[index] += step
    minus[index] -= step
    gradient[index] = (loss_fn(plus) - loss_fn(minus)) / (2 * step)
  return gradient


def random_hidden(seed=0, num_images=NUM_IMAGES, dim=DIM):
  return np.random.RandomState(seed).randn(2 * num_images,
                                           dim).astype(np.float32)


def replica_rows(num_images, num_replicas, replica):
  """Rows of the global [2N, d] views held by `replica` when the images are
  split evenly: its first views, then its second views."""
  n = num_images // num_replicas
  first = np.arange(replica * n, (replica + 1) * n)
  return np.concatenate([first, first + num_images])


def run_on_replicas(strategy, fn, hidden):
  """Runs fn(local_hidden) on every replica with its share of `hidden`
  [2N, d]; returns the per-replica results as a list."""
  num_images = len(hidden) // 2
  replicas = strategy.num_replicas_in_sync
  values = strategy.experimental_distribute_values_from_function(
      lambda context: tf.constant(hidden[replica_rows(
          num_images, replicas, context.replica_id_in_sync_group)]))
  results = strategy.run(tf.function(fn), args=(values,))
  return tf.nest.map_structure(
      lambda x: [t.numpy() for t in strategy.experimental_local_results(x)],
      results)


def test_nt_xent_equals_formula():
  hidden = random_hidden()
  loss = losses.nt_xent(tf.constant(hidden), temperature=0.1)
  np.testing.assert_allclose(loss.numpy(), numpy_nt_xent(hidden, 0.1),
                             rtol=1e-6)


def test_nt_xent_without_hidden_norm_uses_dot_products():
  hidden = random_hidden() * 0.3
  loss = losses.nt_xent(tf.constant(hidden), temperature=0.5,
                        hidden_norm=False)
  np.testing.assert_allclose(loss.numpy(),
                             numpy_nt_xent(hidden, 0.5, hidden_norm=False),
                             rtol=1e-6)


def test_nt_xent_sum_views_is_the_published_value_twice_the_mean():
  hidden = random_hidden()
  loss = losses.nt_xent(tf.constant(hidden), temperature=0.2,
                        reduction='sum_views')
  np.testing.assert_allclose(loss.numpy(), 2 * numpy_nt_xent(hidden, 0.2),
                             rtol=1e-6)


def test_nt_xent_gradient_equals_finite_differences():
  hidden = random_hidden(seed=1)
  x = tf.constant(hidden)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.nt_xent(x, temperature=0.1)
  expected = numpy_gradient(lambda h: numpy_nt_xent(h, 0.1), hidden)
  np.testing.assert_allclose(tape.gradient(loss, x).numpy(), expected,
                             atol=1e-6)


def test_nt_xent_is_stable_at_temperature_0_05():
  hidden = random_hidden(seed=2) * 100.0
  x = tf.constant(hidden)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.nt_xent(x, temperature=0.05)
  gradient = tape.gradient(loss, x).numpy()
  np.testing.assert_allclose(loss.numpy(), numpy_nt_xent(hidden, 0.05),
                             rtol=1e-5)
  assert np.all(np.isfinite(gradient))


def test_nt_xent_of_identical_embeddings_is_log_of_2n_minus_1():
  # All similarities equal: the softmax over the 2N - 1 candidates is uniform.
  x = tf.ones([2 * NUM_IMAGES, DIM])
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.nt_xent(x, temperature=0.05)
  gradient = tape.gradient(loss, x).numpy()
  np.testing.assert_allclose(loss.numpy(), np.log(2 * NUM_IMAGES - 1),
                             rtol=1e-6)
  np.testing.assert_allclose(gradient, 0.0, atol=1e-6)


def test_contrastive_logits_and_labels_compare_first_views_with_second_views():
  hidden = random_hidden(seed=3)
  out = losses.contrastive_loss(tf.constant(hidden), temperature=0.5)
  unit = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  expected = unit[:NUM_IMAGES] @ unit[NUM_IMAGES:].T / 0.5
  np.testing.assert_allclose(out.logits.numpy(), expected, atol=1e-5)
  np.testing.assert_array_equal(out.labels.numpy(), np.eye(NUM_IMAGES))


def test_contrastive_metrics_are_accuracy_and_mean_entropy():
  logits = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, 2.0], [0.0, 0.2, 1.0]])
  labels = np.eye(3)
  metrics = losses.contrastive_metrics(tf.constant(logits, tf.float32),
                                       tf.constant(labels, tf.float32))
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  entropy = -(p * np.log(p)).sum(1).mean()
  # Rows 0 and 2 rank their positive first, row 1 does not.
  np.testing.assert_allclose(metrics['contrast_acc'].numpy(), 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics['contrast_entropy'].numpy(), entropy,
                             rtol=1e-5)


def test_nt_xent_on_two_replicas_equals_full_batch_loss(two_replica_strategy):
  hidden = random_hidden(seed=4)
  per_replica = run_on_replicas(
      two_replica_strategy, lambda h: losses.nt_xent(h, temperature=0.1),
      hidden)
  expected = numpy_nt_xent(hidden, 0.1)
  # Each replica's loss is the mean over its anchors, so their mean is the
  # global loss.
  np.testing.assert_allclose(np.mean(per_replica), expected, atol=1e-5)
  assert not np.isclose(per_replica[0], per_replica[1])


def test_nt_xent_gradients_on_two_replicas_equal_full_batch_gradients(
    two_replica_strategy):
  hidden = random_hidden(seed=5)
  replicas = two_replica_strategy.num_replicas_in_sync

  def local_gradient(h):
    with tf.GradientTape() as tape:
      tape.watch(h)
      # As in a train step: the per-replica loss over num_replicas, whose
      # gradients all_gather's backward pass sums across replicas.
      loss = losses.nt_xent(h, temperature=0.1) / replicas
    return tape.gradient(loss, h)

  per_replica = run_on_replicas(two_replica_strategy, local_gradient, hidden)
  gradient = np.zeros_like(hidden)
  for r, local in enumerate(per_replica):
    gradient[replica_rows(NUM_IMAGES, replicas, r)] = local
  expected = numpy_gradient(lambda h: numpy_nt_xent(h, 0.1), hidden)
  np.testing.assert_allclose(gradient, expected, atol=1e-5)


def test_contrastive_logits_on_two_replicas_are_rows_of_global_logits(
    two_replica_strategy):
  hidden = random_hidden(seed=6)
  per_replica = run_on_replicas(
      two_replica_strategy,
      lambda h: losses.contrastive_loss(h, temperature=0.5)[1:], hidden)
  unit = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  expected = unit[:NUM_IMAGES] @ unit[NUM_IMAGES:].T / 0.5
  logits, labels = per_replica
  np.testing.assert_allclose(np.concatenate(logits), expected, atol=1e-5)
  np.testing.assert_array_equal(np.concatenate(labels), np.eye(NUM_IMAGES))


def test_supervised_is_mean_cross_entropy():
  logits = np.random.RandomState(7).randn(5, 4)
  labels = np.eye(4)[[0, 3, 1, 1, 2]]
  loss = losses.supervised(tf.constant(labels), tf.constant(logits,
                                                             tf.float32))
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(loss.numpy(), -(labels * log_p).sum(1).mean(),
                             rtol=1e-6)


def numpy_softmax(logits):
  e = np.exp(logits - logits.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def test_distillation_equals_equation_2():
  rng = np.random.RandomState(8)
  teacher, student = rng.randn(6, 5), rng.randn(6, 5)
  loss = losses.distillation(tf.constant(teacher, tf.float32),
                             tf.constant(student, tf.float32),
                             temperature=0.1)
  p_teacher = numpy_softmax(teacher / 0.1)
  log_p_student = np.log(numpy_softmax(student / 0.1))
  expected = -(p_teacher * log_p_student).sum(1).mean()
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_distillation_gradient_reaches_the_student_only():
  rng = np.random.RandomState(9)
  teacher = tf.constant(rng.randn(4, 3), tf.float32)
  student = tf.constant(rng.randn(4, 3), tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([teacher, student])
    loss = losses.distillation(teacher, student, temperature=2.0)
  assert tape.gradient(loss, teacher) is None
  # d/ds of -sum P_T log softmax(s/tau), averaged over B rows.
  expected = (numpy_softmax(student.numpy() / 2.0) -
              numpy_softmax(teacher.numpy() / 2.0)) / 2.0 / 4
  np.testing.assert_allclose(tape.gradient(loss, student).numpy(), expected,
                             atol=1e-6)


def test_distillation_with_labels_equals_equation_3():
  rng = np.random.RandomState(10)
  teacher, student = rng.randn(6, 5), rng.randn(6, 5)
  labels = np.eye(5)[[1, 0, 4, 2, 2, 3]]
  labeled = np.array([1, 1, 0, 1, 0, 0], bool)
  alpha, tau = 0.3, 0.5
  loss = losses.distillation_with_labels(
      tf.constant(teacher, tf.float32), tf.constant(student, tf.float32),
      tf.constant(labels, tf.float32), labeled=tf.constant(labeled),
      alpha=alpha, temperature=tau)
  label_term = -(labels * np.log(numpy_softmax(student))).sum(1)[labeled].sum()
  distill_term = -(numpy_softmax(teacher / tau) *
                   np.log(numpy_softmax(student / tau))).sum()
  expected = ((1 - alpha) * label_term + alpha * distill_term) / 6
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_distillation_with_labels_at_alpha_1_is_distillation():
  rng = np.random.RandomState(11)
  teacher = tf.constant(rng.randn(4, 3), tf.float32)
  student = tf.constant(rng.randn(4, 3), tf.float32)
  labels = tf.constant(np.eye(3)[[0, 1, 2, 0]], tf.float32)
  p_teacher = numpy_softmax(teacher.numpy())
  expected = -(p_teacher * np.log(numpy_softmax(student.numpy()))).sum(1).mean()
  loss = losses.distillation_with_labels(teacher, student, labels, alpha=1.0)
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_unknown_reduction_is_refused():
  with pytest.raises(ValueError, match='reduction'):
    losses.nt_xent(tf.ones([4, 2]), reduction='sum')
