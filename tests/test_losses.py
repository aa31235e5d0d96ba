"""simclr.losses against numpy re-implementations of the papers' formulas
(float64), on one device and on two replicas of a MirroredStrategy."""

import numpy as np
import pytest
import tensorflow as tf

from simclr import losses
from conftest import numpy_gradient

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


# Labels with unlabeled rows: class indices, -1 for unlabeled.
LABELS = np.array([1, -1, 4, 2, -1, 3, -1, 0])
LABELED = LABELS >= 0
NUM_CLASSES = 5


def numpy_log_softmax(logits):
  shifted = logits - logits.max(1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def numpy_labeled_cross_entropy(labels, logits):
  """[B] -log softmax(logits)[label], 0 where the label is -1."""
  log_p = numpy_log_softmax(np.asarray(logits, np.float64))
  picked = log_p[np.arange(len(labels)), np.maximum(labels, 0)]
  return np.where(labels >= 0, -picked, 0.0)


def random_logits(seed, rows=len(LABELS), classes=NUM_CLASSES):
  return np.random.RandomState(seed).randn(rows, classes).astype(np.float32)


def test_supervised_with_labels_is_mean_cross_entropy_of_labeled_rows():
  logits = random_logits(12)
  out = losses.supervised_with_labels(tf.constant(LABELS), tf.constant(logits))
  expected = numpy_labeled_cross_entropy(LABELS, logits).sum() / LABELED.sum()
  np.testing.assert_allclose(out.loss.numpy(), expected, rtol=1e-6)


def test_supervised_with_labels_gradient_skips_unlabeled_rows():
  logits = random_logits(13)
  x = tf.constant(logits)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.supervised_with_labels(tf.constant(LABELS), x).loss
  # d/dz of the mean over labeled rows: (softmax(z) - onehot) / num_labeled.
  onehot = np.eye(NUM_CLASSES)[np.maximum(LABELS, 0)]
  expected = ((numpy_softmax(logits.astype(np.float64)) - onehot) *
              LABELED[:, None] / LABELED.sum())
  np.testing.assert_allclose(tape.gradient(loss, x).numpy(), expected,
                             atol=1e-7)


def test_supervised_with_labels_accuracy_counts_labeled_rows_only():
  # Top logits per row: 1, 0, 4, 0, 2, 3, 1, 1; labeled rows 0, 2, 3, 5, 7
  # hit their label in rows 0, 2, 5: 3 of 5. Unlabeled row 1's top class is
  # 0, which must not count as a hit of a placeholder label 0.
  logits = np.full([len(LABELS), NUM_CLASSES], -1.0, np.float32)
  for row, top in enumerate([1, 0, 4, 0, 2, 3, 1, 1]):
    logits[row, top] = 1.0
  out = losses.supervised_with_labels(tf.constant(LABELS), tf.constant(logits))
  np.testing.assert_allclose(out.accuracy.numpy(), 3 / 5, rtol=1e-6)


def test_supervised_with_labels_counts_labeled_rows():
  out = losses.supervised_with_labels(tf.constant(LABELS),
                                      tf.constant(random_logits(14)))
  assert out.num_labeled.dtype == tf.float32
  assert out.num_labeled.numpy() == 5.0


def test_supervised_without_labeled_rows_is_zero_with_zero_gradient():
  x = tf.constant(random_logits(15, rows=3))
  with tf.GradientTape() as tape:
    tape.watch(x)
    out = losses.supervised_with_labels(tf.constant([-1, -1, -1]), x)
  assert out.loss.numpy() == 0.0
  assert out.accuracy.numpy() == 0.0
  assert out.num_labeled.numpy() == 0.0
  np.testing.assert_array_equal(tape.gradient(out.loss, x).numpy(), 0.0)


def numpy_equation_3_terms(teacher, student, labels, alpha, tau):
  """SimCLRv2 Eq. 3's two terms, each sum over examples divided by B."""
  teacher, student = (np.asarray(a, np.float64) for a in (teacher, student))
  batch = len(student)
  distill = -(numpy_softmax(teacher / tau) *
              numpy_log_softmax(student / tau)).sum()
  label = numpy_labeled_cross_entropy(labels, student).sum()
  return alpha * distill / batch, (1 - alpha) * label / batch


@pytest.mark.parametrize('alpha', [0.0, 0.3, 1.0])
def test_distillation_term_is_alpha_times_mean_equation_2(alpha):
  teacher, student = random_logits(16), random_logits(17)
  out = losses.distillation_terms(tf.constant(teacher), tf.constant(student),
                                  tf.constant(LABELS), alpha=alpha,
                                  temperature=0.5)
  expected, _ = numpy_equation_3_terms(teacher, student, LABELS, alpha, 0.5)
  np.testing.assert_allclose(out.distill_loss.numpy(), expected, rtol=1e-6,
                             atol=1e-7)


@pytest.mark.parametrize('alpha', [0.0, 0.3, 1.0])
def test_supervised_term_is_labeled_cross_entropy_summed_over_batch_size(
    alpha):
  teacher, student = random_logits(18), random_logits(19)
  out = losses.distillation_terms(tf.constant(teacher), tf.constant(student),
                                  tf.constant(LABELS), alpha=alpha,
                                  temperature=0.5)
  _, expected = numpy_equation_3_terms(teacher, student, LABELS, alpha, 0.5)
  np.testing.assert_allclose(out.supervised_loss.numpy(), expected,
                             rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('alpha', [0.0, 0.3, 1.0])
def test_distillation_terms_gradient_wrt_student_equals_analytic(alpha):
  teacher, student = random_logits(20), random_logits(21)
  tau = 0.5
  x = tf.constant(student)
  with tf.GradientTape() as tape:
    tape.watch(x)
    out = losses.distillation_terms(tf.constant(teacher), x,
                                    tf.constant(LABELS), alpha=alpha,
                                    temperature=tau)
    loss = out.distill_loss + out.supervised_loss
  # d/ds of alpha/B sum -P_T log softmax(s/tau) is
  # alpha/B (softmax(s/tau) - P_T)/tau; of (1-alpha)/B sum_labeled CE it is
  # (1-alpha)/B (softmax(s) - onehot) on labeled rows.
  s, t = student.astype(np.float64), teacher.astype(np.float64)
  batch = len(s)
  onehot = np.eye(NUM_CLASSES)[np.maximum(LABELS, 0)]
  expected = (alpha / batch * (numpy_softmax(s / tau) -
                               numpy_softmax(t / tau)) / tau +
              (1 - alpha) / batch * (numpy_softmax(s) - onehot) *
              LABELED[:, None])
  np.testing.assert_allclose(tape.gradient(loss, x).numpy(), expected,
                             atol=1e-7)


def test_distillation_terms_send_no_gradient_to_teacher():
  teacher = tf.constant(random_logits(22))
  student = tf.constant(random_logits(23))
  with tf.GradientTape() as tape:
    tape.watch(teacher)
    out = losses.distillation_terms(teacher, student, tf.constant(LABELS),
                                    alpha=0.3, temperature=2.0)
    loss = out.distill_loss + out.supervised_loss
  assert tape.gradient(loss, teacher) is None


def test_distillation_terms_supervised_accuracy_counts_labeled_rows_only():
  # Student's top classes: 1, 0, 4, 0, 2, 3, 1, 1: labeled rows 0, 2, 5 of
  # 0, 2, 3, 5, 7 are right.
  student = np.full([len(LABELS), NUM_CLASSES], -1.0, np.float32)
  for row, top in enumerate([1, 0, 4, 0, 2, 3, 1, 1]):
    student[row, top] = 1.0
  out = losses.distillation_terms(tf.constant(random_logits(24)),
                                  tf.constant(student), tf.constant(LABELS),
                                  alpha=0.5, temperature=1.0)
  np.testing.assert_allclose(out.supervised_accuracy.numpy(), 3 / 5,
                             rtol=1e-6)


def test_distillation_terms_agreement_is_fraction_of_equal_top_classes():
  teacher, student = random_logits(25), random_logits(26)
  out = losses.distillation_terms(tf.constant(teacher), tf.constant(student),
                                  tf.constant(LABELS), alpha=0.5,
                                  temperature=1.0)
  expected = np.mean(teacher.argmax(1) == student.argmax(1))
  assert 0 < expected < 1  # the seeds give a mix of agreeing rows
  np.testing.assert_allclose(out.agreement.numpy(), expected, rtol=1e-6)


def test_distillation_terms_without_labeled_rows_have_zero_label_term():
  out = losses.distillation_terms(tf.constant(random_logits(27, rows=3)),
                                  tf.constant(random_logits(28, rows=3)),
                                  tf.constant([-1, -1, -1]), alpha=0.3,
                                  temperature=1.0)
  assert out.supervised_loss.numpy() == 0.0
  assert out.supervised_accuracy.numpy() == 0.0


@pytest.mark.parametrize('alpha', [0.0, 0.3, 1.0])
def test_distillation_terms_sum_to_equation_3(alpha):
  rng = np.random.RandomState(10)
  teacher, student = rng.randn(6, 5), rng.randn(6, 5)
  labels = np.array([1, 0, -1, 2, -1, -1])
  labeled = labels >= 0
  onehot = np.eye(5)[np.where(labeled, labels, 0)]
  tau = 0.5
  terms = losses.distillation_terms(
      tf.constant(teacher, tf.float32), tf.constant(student, tf.float32),
      tf.constant(labels, tf.int32), alpha=alpha, temperature=tau)
  label_term = -(onehot * np.log(numpy_softmax(student))).sum(1)[labeled].sum()
  distill_term = -(numpy_softmax(teacher / tau) *
                   np.log(numpy_softmax(student / tau))).sum()
  expected = ((1 - alpha) * label_term + alpha * distill_term) / 6
  np.testing.assert_allclose(
      (terms.distill_loss + terms.supervised_loss).numpy(), expected,
      rtol=1e-5)


def test_distillation_terms_at_alpha_1_are_distillation():
  rng = np.random.RandomState(11)
  teacher = tf.constant(rng.randn(4, 3), tf.float32)
  student = tf.constant(rng.randn(4, 3), tf.float32)
  p_teacher = numpy_softmax(teacher.numpy())
  expected = -(p_teacher * np.log(numpy_softmax(student.numpy()))).sum(1).mean()
  terms = losses.distillation_terms(teacher, student,
                                    tf.constant([0, 1, 2, 0]), alpha=1.0,
                                    temperature=1.0)
  np.testing.assert_allclose(terms.distill_loss.numpy(), expected, rtol=1e-5)
  assert terms.supervised_loss.numpy() == 0.0


def test_unknown_reduction_is_refused():
  with pytest.raises(ValueError, match='reduction'):
    losses.nt_xent(tf.ones([4, 2]), reduction='sum')
