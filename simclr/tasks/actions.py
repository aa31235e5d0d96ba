"""orbit train actions of a run: called by the Controller with the loop's
outputs after every loop (--steps_per_loop steps inside one tf.function).

- ProgressReporter: one line per loop (step, images/s, ETA, metrics).
- CheckpointSaver: a checkpoint at every multiple of the checkpoint interval,
  as published (the CheckpointManager's own interval counts from the first
  save instead).
- PreemptionWatcher: on SIGTERM / SIGINT, a checkpoint of the current step at
  the end of the running loop, then Preempted.
"""

import math
import signal
import time
from typing import Any, Dict

from absl import logging
import tensorflow as tf


class Preempted(RuntimeError):
  """SIGTERM (or SIGINT) arrived; a checkpoint of the current step was
  written. `step` is that step."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f'{signal_name} received: saved a checkpoint at step '
                     f'{step}; run the same command again to resume from it')
    self.step = step


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


class PreemptionWatcher:
  """Catches SIGTERM (the preemption notice of TPU VMs and most clusters) and
  SIGINT while training (use it as a context manager around the loop)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, manager: tf.train.CheckpointManager, global_step):
    self.manager = manager
    self.global_step = global_step
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
    if self.received is None:
      return
    step = int(self.global_step.numpy())
    save_checkpoint(self.manager, step)
    raise Preempted(step, self.received)


class ProgressReporter:
  """After each loop: step / total, images per second, ETA, main metrics.
  `last_output` keeps the last loop's metrics (train_metrics.json)."""

  def __init__(self, global_step, total_steps, images_per_step):
    self.global_step = global_step
    self.total = total_steps
    self.images_per_step = images_per_step
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


def format_seconds(seconds: float) -> str:
  """3725 -> '1:02:05'; '?' for inf / nan."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
