"""SimCLRv2's memory: momentum encoder (EMA), FIFO queue of keys and the
contrastive loss with memory, against numpy formulas, on one device and on two
replicas of a MirroredStrategy."""


import numpy as np
import pytest
import tensorflow as tf

import simclr
from simclr import losses
from simclr.models import momentum
from conftest import layers_in
from conftest import numpy_gradient

CONFIG = simclr.ModelConfig(resnet_depth=18, width_multiplier=0.25,
                            image_size=16, num_classes=10, proj_out_dim=8,
                            linear_probe=True, global_bn=True)
NUM_IMAGES = 4  # global batch: 8 views, 8 keys per step
KEYS_PER_STEP = 2 * NUM_IMAGES
DIM = 5


def numpy_memory_loss(queries, keys, queue, temperature, queue_length=None):
  """Mean over the 2N anchors (row i + N is the other view of row i) of
  -log(exp(q_i.k_pos/tau) / sum_{c in candidates} exp(q_i.c/tau)), where the
  candidates are all keys but k_i, plus the first queue_length queue rows;
  everything L2-normalised."""
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  q, k = unit(queries), unit(keys)
  memory = unit(queue)[:queue_length] if len(queue) else np.zeros([0, q.shape[1]])
  two_n = len(q)
  per_anchor = []
  for i in range(two_n):
    positive = (i + two_n // 2) % two_n
    candidates = np.concatenate([np.delete(k, i, axis=0), memory])
    logits = candidates @ q[i] / temperature
    log_denominator = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    per_anchor.append(log_denominator - q[i] @ k[positive] / temperature)
  return np.mean(per_anchor)


def numpy_negatives_loss(hidden, queue, temperature, queue_length=None,
                         hidden_norm=True):
  """SimCLR Eq. 1 on the online projections, with the first queue_length
  queue rows as extra negatives: mean over the 2N anchors (row i + N is the
  other view of row i) of -log(exp(h_i.h_pos/tau) / sum_c exp(h_i.c/tau)),
  c over all rows of hidden but h_i, then the memory rows; with hidden_norm
  everything L2-normalised."""
  def unit(x):
    x = np.asarray(x, np.float64)
    if hidden_norm:
      x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x

  h = unit(hidden)
  memory = unit(queue)[:queue_length]
  two_n = len(h)
  per_anchor = []
  for i in range(two_n):
    positive = (i + two_n // 2) % two_n
    candidates = np.concatenate([np.delete(h, i, axis=0), memory])
    logits = candidates @ h[i] / temperature
    log_denominator = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    per_anchor.append(log_denominator - h[i] @ h[positive] / temperature)
  return np.mean(per_anchor)


def replica_rows(num_images, num_replicas, replica):
  n = num_images // num_replicas
  first = np.arange(replica * n, (replica + 1) * n)
  return np.concatenate([first, first + num_images])


def distribute_rows(strategy, array):
  """Per-replica shares of a view-stacked global array [2N, ...]."""
  num_images = len(array) // 2
  return strategy.experimental_distribute_values_from_function(
      lambda context: tf.constant(array[replica_rows(
          num_images, strategy.num_replicas_in_sync,
          context.replica_id_in_sync_group)]))


def local_results(strategy, values):
  return [t.numpy() for t in strategy.experimental_local_results(values)]


@pytest.fixture(scope='module')
def online_model():
  tf.random.set_seed(0)
  return simclr.build_model(CONFIG)


def perturbed_weights(model, seed):
  rng = np.random.RandomState(seed)
  return [w + 0.1 * rng.randn(*w.shape).astype(np.float32)
          for w in model.get_weights()]


# The memory-size rule.


@pytest.mark.parametrize('memory_size', [0, 4, 12, 20])
def test_memory_size_not_a_multiple_of_keys_per_step_is_refused(memory_size):
  # global batch 4 images: 8 keys per step.
  with pytest.raises(ValueError, match='memory_size'):
    momentum.MemoryQueue(memory_size, global_batch_size=4, proj_out_dim=DIM)


def test_memory_size_of_whole_steps_is_accepted():
  queue = momentum.MemoryQueue(24, global_batch_size=4, proj_out_dim=DIM)
  assert queue.queue.shape == (24, DIM)
  assert queue.length.numpy() == 0


# The queue.


def test_queue_after_k_steps_holds_the_last_keys_newest_first():
  queue = momentum.MemoryQueue(3 * KEYS_PER_STEP, NUM_IMAGES, DIM)
  rng = np.random.RandomState(0)
  steps = [rng.randn(KEYS_PER_STEP, DIM).astype(np.float32) for _ in range(5)]
  for keys in steps:
    queue.enqueue(tf.constant(keys))
  np.testing.assert_array_equal(queue.queue.numpy(),
                                np.concatenate(steps[::-1][:3]))
  assert queue.length.numpy() == 3 * KEYS_PER_STEP


def test_queue_length_counts_filled_rows_until_full():
  queue = momentum.MemoryQueue(3 * KEYS_PER_STEP, NUM_IMAGES, DIM)
  keys = np.ones([KEYS_PER_STEP, DIM], np.float32)
  lengths = []
  for _ in range(4):
    queue.enqueue(tf.constant(keys))
    lengths.append(int(queue.length.numpy()))
  assert lengths == [8, 16, 24, 24]
  np.testing.assert_array_equal(queue.queue.numpy()[:8], keys)


def test_queue_on_two_replicas_holds_the_global_batch_in_order(
    two_replica_strategy):
  strategy = two_replica_strategy
  with strategy.scope():
    queue = momentum.MemoryQueue(2 * KEYS_PER_STEP, NUM_IMAGES, DIM)
  rng = np.random.RandomState(1)
  steps = [rng.randn(KEYS_PER_STEP, DIM).astype(np.float32) for _ in range(3)]
  enqueue = tf.function(queue.enqueue)
  for keys in steps:
    strategy.run(enqueue, args=(distribute_rows(strategy, keys),))
  expected = np.concatenate([steps[2], steps[1]])
  for replica_queue in local_results(strategy, queue.queue):
    np.testing.assert_array_equal(replica_queue, expected)
  assert local_results(strategy, queue.length) == [16, 16]


# The loss with memory.


def test_loss_with_memory_equals_formula():
  rng = np.random.RandomState(2)
  queries = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  keys = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  out = losses.nt_xent_with_memory(queries, keys, queue, temperature=0.2,
                                   queue_length=tf.constant(12))
  np.testing.assert_allclose(
      out.loss.numpy(),
      numpy_memory_loss(queries, keys, queue, 0.2, queue_length=12),
      rtol=1e-5)


def test_loss_with_empty_queue_and_keys_equal_to_queries_is_nt_xent():
  rng = np.random.RandomState(3)
  hidden = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  out = losses.nt_xent_with_memory(hidden, hidden, queue, temperature=0.1,
                                   queue_length=tf.constant(0))
  # numpy_memory_loss with no memory rows is SimCLR's Eq. 1.
  np.testing.assert_allclose(out.loss.numpy(),
                             numpy_memory_loss(hidden, hidden, queue[:0], 0.1),
                             rtol=1e-6)


def test_loss_with_memory_sends_no_gradient_to_keys_or_queue():
  rng = np.random.RandomState(4)
  queries, keys = (tf.constant(rng.randn(KEYS_PER_STEP, DIM), tf.float32)
                   for _ in range(2))
  queue = tf.Variable(rng.randn(16, DIM), dtype=tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([queries, keys])
    loss = losses.nt_xent_with_memory(queries, keys, queue).loss
  assert tape.gradient(loss, keys) is None
  assert tape.gradient(loss, queue) is None
  assert tape.gradient(loss, queries) is not None


def test_loss_with_memory_on_two_replicas_equals_formula(two_replica_strategy):
  strategy = two_replica_strategy
  rng = np.random.RandomState(5)
  queries = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  keys = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)

  @tf.function
  def loss_and_gradient(q, k):
    with tf.GradientTape() as tape:
      tape.watch(q)
      loss = losses.nt_xent_with_memory(q, k, queue, temperature=0.2).loss
      scaled = loss / strategy.num_replicas_in_sync
    return loss, tape.gradient(scaled, q)

  loss, gradient = strategy.run(
      loss_and_gradient, args=(distribute_rows(strategy, queries),
                               distribute_rows(strategy, keys)))
  np.testing.assert_allclose(np.mean(local_results(strategy, loss)),
                             numpy_memory_loss(queries, keys, queue, 0.2),
                             atol=1e-5)

  expected = numpy_gradient(
      lambda q: numpy_memory_loss(q, keys, queue, 0.2), queries)
  combined = np.zeros_like(queries)
  for r, local in enumerate(local_results(strategy, gradient)):
    combined[replica_rows(NUM_IMAGES, 2, r)] = local
  np.testing.assert_allclose(combined, expected, atol=1e-5)


# The loss with the memory as extra negatives only.


def test_loss_with_buffered_negatives_equals_formula():
  rng = np.random.RandomState(11)
  hidden = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  out = losses.nt_xent_with_negatives(hidden, queue, temperature=0.2,
                                      queue_length=tf.constant(12))
  np.testing.assert_allclose(
      out.loss.numpy(),
      numpy_negatives_loss(hidden, queue, 0.2, queue_length=12), rtol=1e-6)


def test_loss_with_buffered_negatives_without_hidden_norm_uses_dot_products():
  rng = np.random.RandomState(12)
  hidden = 0.3 * rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = 0.3 * rng.randn(16, DIM).astype(np.float32)
  out = losses.nt_xent_with_negatives(hidden, queue, temperature=0.5,
                                      hidden_norm=False)
  np.testing.assert_allclose(
      out.loss.numpy(),
      numpy_negatives_loss(hidden, queue, 0.5, hidden_norm=False), rtol=1e-6)


def test_loss_with_buffered_negatives_gradient_equals_finite_differences():
  rng = np.random.RandomState(13)
  hidden = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  x = tf.constant(hidden)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.nt_xent_with_negatives(x, queue, temperature=0.2,
                                         queue_length=12).loss
  expected = numpy_gradient(
      lambda h: numpy_negatives_loss(h, queue, 0.2, queue_length=12), hidden)
  np.testing.assert_allclose(tape.gradient(loss, x).numpy(), expected,
                             atol=1e-6)


def test_loss_with_buffered_negatives_sends_no_gradient_to_queue():
  rng = np.random.RandomState(14)
  hidden = tf.constant(rng.randn(KEYS_PER_STEP, DIM), tf.float32)
  queue = tf.Variable(rng.randn(16, DIM), dtype=tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(hidden)
    loss = losses.nt_xent_with_negatives(hidden, queue).loss
  assert tape.gradient(loss, queue) is None


def test_loss_with_buffered_negatives_and_empty_queue_is_plain_nt_xent():
  rng = np.random.RandomState(15)
  hidden = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  out = losses.nt_xent_with_negatives(hidden, queue, temperature=0.1,
                                      queue_length=tf.constant(0))
  plain = losses.contrastive_loss(hidden, temperature=0.1)
  # Exactly: the excluded rows add exp(-1e9) = 0 to every denominator.
  np.testing.assert_array_equal(out.loss.numpy(), plain.loss.numpy())
  np.testing.assert_allclose(out.loss.numpy(),
                             numpy_negatives_loss(hidden, queue[:0], 0.1),
                             rtol=1e-6)


def test_loss_with_buffered_negatives_leaves_out_unfilled_queue_rows():
  rng = np.random.RandomState(16)
  hidden = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  # Unfilled rows equal to the anchors would be the hardest negatives there
  # are, if they were counted.
  queue[8:] = hidden
  out = losses.nt_xent_with_negatives(hidden, queue, temperature=0.2,
                                      queue_length=tf.constant(8))
  filled_only = numpy_negatives_loss(hidden, queue[:8], 0.2)
  assert abs(numpy_negatives_loss(hidden, queue, 0.2) - filled_only) > 0.5
  np.testing.assert_allclose(out.loss.numpy(), filled_only, rtol=1e-6)


def test_loss_with_buffered_negatives_logits_compare_first_and_second_views():
  rng = np.random.RandomState(17)
  hidden = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  out = losses.nt_xent_with_negatives(hidden, queue, temperature=0.5)
  unit = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
  expected = unit[:NUM_IMAGES] @ unit[NUM_IMAGES:].T / 0.5
  np.testing.assert_allclose(out.logits.numpy(), expected, atol=1e-6)
  np.testing.assert_array_equal(out.labels.numpy(), np.eye(NUM_IMAGES))


def buffered_negatives_on_replicas(strategy, hidden, queue, queue_length):
  """Per-replica (loss, gradient of loss / num_replicas w.r.t. the local
  rows), each a list over replicas; the queue is the same on every replica,
  as MemoryQueue's is."""

  @tf.function
  def loss_and_gradient(h):
    with tf.GradientTape() as tape:
      tape.watch(h)
      loss = losses.nt_xent_with_negatives(
          h, queue, temperature=0.2, queue_length=queue_length).loss
      scaled = loss / strategy.num_replicas_in_sync
    return loss, tape.gradient(scaled, h)

  loss, gradient = strategy.run(loss_and_gradient,
                                args=(distribute_rows(strategy, hidden),))
  return local_results(strategy, loss), local_results(strategy, gradient)


def test_buffered_negatives_loss_on_two_replicas_equals_formula(
    two_replica_strategy):
  rng = np.random.RandomState(18)
  hidden = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  per_replica, _ = buffered_negatives_on_replicas(two_replica_strategy,
                                                  hidden, queue, 12)
  # Each replica's loss is the mean over its anchors (candidates from the
  # whole batch), so their mean is the single-device loss.
  np.testing.assert_allclose(
      np.mean(per_replica),
      numpy_negatives_loss(hidden, queue, 0.2, queue_length=12), atol=1e-6)
  assert not np.isclose(per_replica[0], per_replica[1])


def test_buffered_negatives_gradients_on_two_replicas_equal_one_device(
    two_replica_strategy):
  rng = np.random.RandomState(19)
  hidden = rng.randn(KEYS_PER_STEP, DIM).astype(np.float32)
  queue = rng.randn(16, DIM).astype(np.float32)
  _, per_replica = buffered_negatives_on_replicas(two_replica_strategy,
                                                  hidden, queue, 12)
  combined = np.zeros_like(hidden)
  for r, local in enumerate(per_replica):
    combined[replica_rows(NUM_IMAGES, 2, r)] = local
  expected = numpy_gradient(
      lambda h: numpy_negatives_loss(h, queue, 0.2, queue_length=12), hidden)
  np.testing.assert_allclose(combined, expected, atol=1e-6)


# The momentum encoder.


def encoder_and_head_weights(model):
  """Variables of the ResNet and projection head, in Keras' structural order
  (auto-generated variable names differ between two models of a session)."""
  return model.resnet.weights + model.projection_head.weights


def test_momentum_encoder_starts_as_a_copy_without_supervised_head(
    online_model):
  encoder = momentum.MomentumEncoder(online_model, momentum=0.999)
  momentum_model = encoder.momentum_model
  assert momentum_model.supervised_head is None
  assert len(momentum_model.weights) == len(
      encoder_and_head_weights(momentum_model))
  for copied, online in zip(encoder_and_head_weights(momentum_model),
                            encoder_and_head_weights(online_model)):
    np.testing.assert_array_equal(copied.numpy(), online.numpy(),
                                  err_msg=online.name)


def test_momentum_update_equals_ema_formula(online_model):
  decay = 0.9
  encoder = momentum.MomentumEncoder(online_model, momentum=decay)
  momentum_model = encoder.momentum_model
  momentum_model.set_weights(perturbed_weights(momentum_model, seed=6))
  pairs = list(zip(encoder_and_head_weights(momentum_model),
                   encoder_and_head_weights(online_model)))
  before = [(m.numpy(), o.numpy()) for m, o in pairs]
  encoder.update(online_model)
  for (m, o), (m_value, o_value) in zip(pairs, before):
    # Batch-norm moving statistics are the momentum model's own.
    expected = (decay * m_value + (1 - decay) * o_value if o.trainable
                else m_value)
    np.testing.assert_allclose(m.numpy(), expected, rtol=1e-6, atol=1e-7,
                               err_msg=o.name)


def test_keys_with_momentum_weights_equal_to_online_give_plain_nt_xent(
    online_model):
  encoder = momentum.MomentumEncoder(online_model)
  queue = momentum.MemoryQueue(2 * KEYS_PER_STEP, NUM_IMAGES,
                               CONFIG.proj_out_dim)
  images = tf.random.stateless_uniform([KEYS_PER_STEP, 16, 16, 3], [0, 7])
  queries = online_model(images, training=True)['proj_head_output']
  keys = encoder.keys(images)
  out = losses.nt_xent_with_memory(queries, keys, queue.queue,
                                   queue_length=queue.length,
                                   temperature=0.1)
  np.testing.assert_allclose(
      out.loss.numpy(),
      numpy_memory_loss(queries.numpy(), queries.numpy(),
                        np.zeros([0, CONFIG.proj_out_dim]), 0.1),
      rtol=1e-5)


def test_checkpoint_restores_queue_and_momentum_weights(online_model,
                                                        tmp_path):
  encoder = momentum.MomentumEncoder(online_model, momentum=0.5)
  queue = momentum.MemoryQueue(2 * KEYS_PER_STEP, NUM_IMAGES,
                               CONFIG.proj_out_dim)
  queue.enqueue(tf.random.stateless_normal(
      [KEYS_PER_STEP, CONFIG.proj_out_dim], [0, 8]))
  encoder.momentum_model.set_weights(
      perturbed_weights(encoder.momentum_model, seed=9))
  path = tf.train.Checkpoint(momentum_encoder=encoder,
                             memory_queue=queue).save(str(tmp_path / 'ckpt'))
  saved_weights = encoder.momentum_model.get_weights()
  saved_queue = queue.queue.numpy()

  fresh_encoder = momentum.MomentumEncoder(online_model, momentum=0.5)
  fresh_queue = momentum.MemoryQueue(2 * KEYS_PER_STEP, NUM_IMAGES,
                                     CONFIG.proj_out_dim)
  tf.train.Checkpoint(momentum_encoder=fresh_encoder,
                      memory_queue=fresh_queue).restore(
                          path).assert_consumed()
  np.testing.assert_array_equal(fresh_queue.queue.numpy(), saved_queue)
  assert fresh_queue.length.numpy() == KEYS_PER_STEP
  for restored, saved in zip(fresh_encoder.momentum_model.get_weights(),
                             saved_weights):
    np.testing.assert_array_equal(restored, saved)


# One whole memory step, distributed.


def memory_step(model, encoder, queue, images):
  """Loss with memory, then the EMA and the enqueue, as a train step does."""
  queries = model(images, training=True)['proj_head_output']
  keys = encoder.keys(images)
  loss = losses.nt_xent_with_memory(queries, keys, queue.queue,
                                    queue_length=queue.length,
                                    temperature=0.1).loss
  encoder.update(model)
  queue.enqueue(keys)
  return loss


def test_memory_steps_on_two_replicas_equal_one_device(online_model,
                                                       two_replica_strategy):
  strategy = two_replica_strategy
  images = [tf.random.stateless_uniform([KEYS_PER_STEP, 16, 16, 3], [1, s])
            for s in range(2)]
  start = online_model.get_weights()
  changed = perturbed_weights(online_model, seed=10)

  def run(model, encoder, queue, distribute):
    # The online weights move away from the momentum copy (as training
    # would) so that the EMA has something to average.
    model.set_weights(changed)

    def step(x):
      return memory_step(model, encoder, queue, x)

    step_losses = []
    for batch in images:
      if distribute:
        # Eagerly: tracing a 2-replica step with synchronized batch norm takes
        # ~20 s on 2 CPU cores, running it eagerly ~4 s.
        loss = strategy.run(step,
                            args=(distribute_rows(strategy, batch.numpy()),))
        step_losses.append(np.mean(local_results(strategy, loss)))
      else:
        step_losses.append(step(batch).numpy())
    # The averaged variables; the moving statistics are the momentum model's
    # own (and fused batch norm adds Bessel's correction to them, synchronized
    # batch norm does not).
    return (step_losses, queue.queue.numpy(),
            [w.numpy() for w in encoder.momentum_model.trainable_weights])

  # float64 layers: float32 round-off of synchronized vs fused batch norm
  # (~1e-5 of the activations, see test_global_bn.py) would blur the
  # comparison; the losses and the queue stay float32.
  with layers_in('float64'):
    single_model = simclr.build_model(CONFIG)
    single_model.set_weights(start)
    single = run(single_model, momentum.MomentumEncoder(single_model, 0.9),
                 momentum.MemoryQueue(2 * KEYS_PER_STEP, NUM_IMAGES,
                                      CONFIG.proj_out_dim), distribute=False)
    with strategy.scope():
      mirrored_model = simclr.build_model(CONFIG)
      mirrored_model.set_weights(start)
      encoder = momentum.MomentumEncoder(mirrored_model, 0.9)
      queue = momentum.MemoryQueue(2 * KEYS_PER_STEP, NUM_IMAGES,
                                   CONFIG.proj_out_dim)
    mirrored = run(mirrored_model, encoder, queue, distribute=True)

  np.testing.assert_allclose(mirrored[0], single[0], rtol=0, atol=1e-5)
  np.testing.assert_allclose(mirrored[1], single[1], rtol=0, atol=1e-5)
  for a, b in zip(mirrored[2], single[2]):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
