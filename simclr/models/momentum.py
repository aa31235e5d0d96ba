"""SimCLRv2's memory (MoCo-style, left out of the published code): a momentum
encoder, an exponential moving average of the online encoder and projection
head that produces the keys, and a FIFO memory queue of past keys that serve
as extra negatives (see `simclr.losses.nt_xent_with_memory`).

Written by hand: neither Model Garden nor tf_keras has a distributed key queue.

Both classes are tf.Modules: put them in the tf.train.Checkpoint next to the
model, and a resumed run continues with the same queue and momentum weights.
Build them inside the strategy's scope, as the model. One pretraining step:

  queries = model(images, training=True)['proj_head_output']
  keys = momentum_encoder.keys(images)                 # no gradient
  out = nt_xent_with_memory(queries, keys, memory_queue.queue,
                            queue_length=memory_queue.length, ...)
  ... apply the gradients of out.loss / num_replicas to the model ...
  momentum_encoder.update(model)                       # EMA after the step
  memory_queue.enqueue(keys)

Keys per step: both views of every image of the global batch, i.e.
2 * global_batch_size keys (global_batch_size counts images). The queue holds
whole steps: memory_size must be a positive multiple of 2 * global_batch_size.
"""

import tensorflow as tf

from simclr.losses import gather_views
from simclr.models.simclr_model import SimCLRModel
from simclr.models.simclr_model import build_model


def check_memory_size(memory_size: int, global_batch_size: int):
  """Raises ValueError unless the queue holds a whole number (>= 1) of steps'
  keys, each step adding 2 * global_batch_size (images) keys."""
  keys_per_step = 2 * global_batch_size
  if global_batch_size < 1:
    raise ValueError(f'global_batch_size={global_batch_size}: expected >= 1')
  if memory_size < keys_per_step or memory_size % keys_per_step:
    nearest = keys_per_step * max(1, round(memory_size / keys_per_step))
    raise ValueError(
        f'memory_size={memory_size} must be a positive multiple of the keys '
        f'added per step, 2 views x global batch size {global_batch_size} = '
        f'{keys_per_step} (e.g. {nearest}); use memory_size=0 to train '
        f'without memory')


class MomentumEncoder(tf.Module):
  """A copy of the online model's encoder and projection head whose weights
  follow the online ones by EMA: w_m <- m * w_m + (1 - m) * w_online.

  `momentum_model` is a SimCLRModel of the same ModelConfig without the
  supervised head. It is updated only by `update` (its variables must not be
  given to an optimizer; `keys` stops gradients). Only the online model's
  trainable variables are averaged; the momentum model's batch-norm moving
  statistics are its own (keys use batch statistics, like the queries).
  """

  def __init__(self, online_model: SimCLRModel, momentum: float = 0.999,
               name: str = 'momentum_encoder'):
    """online_model: a built SimCLRModel; its weights are copied now, so
    restore a checkpoint after constructing this (the restore then wins)."""
    super().__init__(name=name)
    if not 0 <= momentum < 1:
      raise ValueError(f'memory_momentum={momentum}: expected in [0, 1)')
    if not online_model.built:
      raise ValueError('online_model must be built (simclr.build_model)')
    self.momentum = momentum
    config = online_model.config.replace(num_classes=0)
    self.momentum_model = build_model(config)
    self._check_pairs(online_model)
    self.copy_from(online_model)

  def copy_from(self, online_model: SimCLRModel):
    """Sets the momentum weights to the online model's (e.g. after the
    online model was initialised from another run's checkpoint)."""
    for target, source in zip(_encoder_and_head_weights(self.momentum_model),
                              _encoder_and_head_weights(online_model)):
      target.assign(source)

  def keys(self, images, training: bool = True) -> tf.Tensor:
    """images: [B, H, W, 3] float32 in [0, 1] (the batch given to the online
    model). Returns the momentum projections [B, proj_out_dim] float32,
    without gradient. training=True uses batch statistics (global BN when the
    model has it), as the online model does for the queries."""
    outputs = self.momentum_model(images, training=training)
    return tf.stop_gradient(outputs['proj_head_output'])

  def update(self, online_model: SimCLRModel):
    """One EMA step of every averaged variable. Callable in a replica context
    (one merge_call for all variables) or in a cross-replica context."""
    pairs = [(target, source) for target, source in zip(
        _encoder_and_head_weights(self.momentum_model),
        _encoder_and_head_weights(online_model)) if source.trainable]
    momentum = self.momentum

    def ema(strategy):
      for target, source in pairs:
        strategy.extended.update(
            target,
            lambda t, s: t.assign(momentum * t + (1.0 - momentum) * s),
            args=(source,))

    _in_cross_replica_context(ema)

  def _check_pairs(self, online_model):
    targets = _encoder_and_head_weights(self.momentum_model)
    sources = _encoder_and_head_weights(online_model)
    if len(targets) != len(sources) or any(
        t.shape != s.shape for t, s in zip(targets, sources)):
      raise ValueError('momentum model does not mirror the online model '
                       '(encoder + projection head)')


class MemoryQueue(tf.Module):
  """FIFO queue of past keys, identical on all replicas.

  queue: [memory_size, proj_out_dim] float32 variable, newest keys first;
    within a step the keys are in global batch order (first views of all
    images of replica 0, 1, ..., then their second views).
  length: int32 variable, how many leading rows hold keys (0 at the start,
    then +2 * global_batch_size per step up to memory_size).
  """

  def __init__(self, memory_size: int, global_batch_size: int,
               proj_out_dim: int, name: str = 'memory_queue'):
    super().__init__(name=name)
    check_memory_size(memory_size, global_batch_size)
    self.memory_size = memory_size
    with self.name_scope:
      self.queue = tf.Variable(
          tf.zeros([memory_size, proj_out_dim]), trainable=False,
          name='queue')
      self.length = tf.Variable(0, trainable=False, dtype=tf.int32,
                                name='length')

  def enqueue(self, keys):
    """keys: [2n, proj_out_dim] this replica's keys (view-stacked rows, as
    the losses take them). In a replica context all replicas' keys are
    gathered and pushed as one block; the oldest keys drop off the end."""
    keys = tf.stop_gradient(tf.cast(keys, tf.float32))
    keys, _, _ = gather_views(keys)
    size = self.memory_size

    def push(strategy, new_keys):
      strategy.extended.update(
          self.queue,
          lambda queue, new: queue.assign(tf.concat([new, queue], 0)[:size]),
          args=(new_keys,))
      strategy.extended.update(
          self.length,
          lambda length, new: length.assign(
              tf.minimum(length + tf.shape(new)[0], size)),
          args=(new_keys,))

    _in_cross_replica_context(push, keys)


def _encoder_and_head_weights(model: SimCLRModel):
  """The ResNet's and projection head's variables in Keras' structural order:
  two models of one ModelConfig list corresponding variables at equal
  positions (their auto-generated names differ)."""
  layers = [model.resnet]
  if model.projection_head is not None:
    layers.append(model.projection_head)
  return [w for layer in layers for w in layer.weights]


def _in_cross_replica_context(fn, *args):
  """Calls fn(strategy, *args) once for all replicas: via merge_call from a
  replica context (which turns each replica's args into per-replica values,
  unwrapped per device again by extended.update), or directly from a
  cross-replica context."""
  context = tf.distribute.get_replica_context()
  if context is None:
    fn(tf.distribute.get_strategy(), *args)
  else:
    context.merge_call(fn, args=args)
