"""orbit train actions of a run: called by the Controller with the loop's
outputs after every loop (--steps_per_loop steps inside one tf.function).

- ProgressReporter: one line per loop (step, images/s, ETA, metrics), and the
  same numbers as a LoopProgress to an optional listener (e.g. a tool's live
  progress line; simclr.train(on_progress=...)).
- CheckpointSaver: a checkpoint at every multiple of the checkpoint interval,
  as published (the CheckpointManager's own interval counts from the first
  save instead).
- PreemptionWatcher: on SIGTERM / SIGINT, a checkpoint of the current step at
  the end of the running loop, then Preempted. With several workers
  (MultiWorkerMirroredStrategy) the workers first agree, after every loop,
  whether any of them was signalled, so that all save the same step and stop
  together.
"""

import dataclasses
import math
import signal
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import tensorflow as tf


class Preempted(RuntimeError):
  """SIGTERM (or SIGINT) arrived, here or at another worker; a checkpoint of
  the current step was written. `step` is that step; `signal_name` the
  signal this process received (None when another worker received it)."""

  def __init__(self, step: int, signal_name: Optional[str]):
    cause = (f'{signal_name} received' if signal_name else
             'another worker received SIGTERM or SIGINT')
    super().__init__(f'{cause}: saved a checkpoint at step {step}; run the '
                     f'same command again to resume from it')
    self.step = step
    self.signal_name = signal_name

  def __reduce__(self):  # Pickled by its fields (e.g. from a stage process).
    return Preempted, (self.step, self.signal_name)


def save_checkpoint(manager: tf.train.CheckpointManager, step: int):
  """Saves ckpt-<step> unless the newest checkpoint already is that step."""
  latest = manager.latest_checkpoint
  if latest and latest.endswith(f'-{step}'):
    return latest
  path = manager.save(checkpoint_number=step)
  logging.info('Saved checkpoint %s', path)
  return path


class CheckpointSaver:
  """Saves at every multiple of `interval` steps."""

  def __init__(self, manager: tf.train.CheckpointManager, global_step,
               interval: int):
    self.manager = manager
    self.global_step = global_step
    self.interval = interval

  def __call__(self, output):
    del output
    step = int(self.global_step.numpy())
    if step % self.interval == 0:
      save_checkpoint(self.manager, step)


def num_workers(strategy: Optional[tf.distribute.Strategy]) -> int:
  """Processes that train in lockstep under a MultiWorkerMirroredStrategy
  (its cluster's chief and workers); 1 for every other strategy (a
  TPUStrategy is driven by one process)."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  resolver = strategy.cluster_resolver
  spec = resolver.cluster_spec() if resolver is not None else None
  if spec is None:
    return 1
  return max(1, sum(spec.num_tasks(job) for job in ('chief', 'worker')
                    if job in spec.jobs))


def any_worker(strategy: tf.distribute.Strategy, flag: bool) -> bool:
  """True on every worker if `flag` is true on any: an all-reduce of one
  integer. Every worker must call it at the same point of the run."""
  value = strategy.experimental_distribute_values_from_function(
      lambda _: tf.constant(int(flag), tf.int32))
  return int(strategy.reduce(tf.distribute.ReduceOp.SUM, value,
                             axis=None)) > 0


class PreemptionWatcher:
  """Catches SIGTERM (the preemption notice of TPU VMs and most clusters) and
  SIGINT while training (use it as a context manager around the loop).

  After each loop: in one process, a signal received during the loop saves
  the current step and raises Preempted. Under a MultiWorkerMirroredStrategy
  a worker cannot save alone (saving reads the batch-norm moving statistics,
  averaged across workers when read: a collective the others would not
  join), so every worker first learns through any_worker whether any was
  signalled; if so all save the same step, the one they have all just
  finished, and raise Preempted.

  tf.distribute.experimental.PreemptionCheckpointHandler does this agreement
  through the coordination service, but (TensorFlow 2.20) it does nothing on
  Google Cloud CPU VMs and Cloud TPU VMs, with no public way to tell, and
  saves one loop after the signal rather than at its end; hence this
  collective, which costs one scalar all-reduce per loop.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, manager: tf.train.CheckpointManager, global_step,
               strategy: Optional[tf.distribute.Strategy] = None):
    self.manager = manager
    self.global_step = global_step
    self.strategy = strategy
    self.workers = num_workers(strategy)
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: stop now.
    self.received = signal.Signals(signum).name
    logging.warning('%s received: will checkpoint and stop after the running '
                    'loop.', self.received)

  def __call__(self, output):
    del output
    signalled = self.received is not None
    if self.workers > 1:
      signalled = any_worker(self.strategy, signalled)
    if not signalled:
      return
    step = int(self.global_step.numpy())
    save_checkpoint(self.manager, step)
    raise Preempted(step, self.received)


@dataclasses.dataclass(frozen=True)
class LoopProgress:
  """Where training stands after a loop: what ProgressReporter logs."""
  step: int
  total_steps: int
  images_per_second: float
  seconds_left: float  # nan when no step has been timed yet


class ProgressReporter:
  """After each loop: step / total, images per second, ETA, main metrics, as
  an absl info line, and as a LoopProgress to `listener` when given.
  `last_output` keeps the last loop's metrics (train_metrics.json)."""

  def __init__(self, global_step, total_steps, images_per_step,
               listener: Optional[Callable[[LoopProgress], None]] = None):
    self.global_step = global_step
    self.total = total_steps
    self.images_per_step = images_per_step
    self.listener = listener
    self.start_step = int(global_step.numpy())
    self.start_time = time.time()
    self.last_output = {}

  def __call__(self, output: Dict[str, Any]):
    step = int(self.global_step.numpy())
    self.last_output = {k: float(v) for k, v in output.items()}
    self.last_output['global_step'] = step
    elapsed = max(time.time() - self.start_time, 1e-9)
    rate = (step - self.start_step) / elapsed
    eta = (self.total - step) / rate if rate > 0 else float('nan')
    metrics = ' '.join(
        f'{k.split("/")[-1]}={float(v):.4g}' for k, v in sorted(output.items())
        if not k.startswith('steps_per'))
    logging.info('step %d/%d (%.0f%%) | %.1f images/s | ETA %s | %s', step,
                 self.total, 100 * step / max(self.total, 1),
                 rate * self.images_per_step, format_seconds(eta), metrics)
    if self.listener is not None:
      self.listener(LoopProgress(step, self.total,
                                 rate * self.images_per_step, eta))


def format_seconds(seconds: float) -> str:
  """3725 -> '1:02:05'; '?' for inf / nan."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
