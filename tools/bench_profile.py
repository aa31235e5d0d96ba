r"""Where a pretraining step spends its time: a TensorFlow profiler trace of a
few steps (open it in TensorBoard's Profile tab) and a printed summary.

    python tools/bench_profile.py --config=r50_224
    python tools/bench_profile.py --config=r50_224 --published_tf2_dir=...

The step is the one tools/bench.py times (ours, or the published code's with
--published_tf2_dir). The summary gives, per op type, the time its kernels
ran per step, and how much of the step's wall time had zero, one or two
or more ops running at once: with two cores, two concurrent convolutions
share them, so an op's own time is not what it would take alone.

Reading the trace file uses the XSpace protobuf that TensorFlow ships
(tensorflow.tsl.profiler.protobuf); if a TensorFlow version moves it, the
trace is still written and only the summary is skipped, with a line saying
so.
"""

import collections
import glob
import os
import sys
import tempfile
import time

from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

from tools import bench  # noqa: E402  pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_string('config', 'r50_224',
                    f'One of {", ".join(bench.SETTINGS)} (as tools/bench.py).')
flags.DEFINE_enum('precision', 'float32', ['float32', 'bfloat16'],
                  'Precision of our step (the published one is float32).')
flags.DEFINE_integer('profile_steps', 2, 'Steps traced, after 2 untraced.')
flags.DEFINE_string('logdir', None, 'Where the trace goes (default: a new '
                    'folder in the temporary directory, named after the setting).')
flags.DEFINE_integer('top', 25, 'Op types printed.')


def op_summary(logdir, steps):
  """(per op type: seconds per step, count per step), (seconds of wall time
  with 0, 1, 2+ ops running), wall seconds; None if the trace cannot be
  read. Kernel events are those named 'op name:op type' with a '/' in the
  op name (ops inside the step function)."""
  try:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  paths = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'),
                           recursive=True))
  if not paths:
    return None
  space = xplane_pb2.XSpace()
  with open(paths[-1], 'rb') as f:
    space.ParseFromString(f.read())
  seconds, counts, intervals = (collections.Counter(), collections.Counter(),
                                [])
  for plane in space.planes:
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        op_name, _, op_type = name.rpartition(':')
        if '/' not in op_name or not op_type:
          continue
        seconds[op_type.strip()] += event.duration_ps / 1e12 / steps
        counts[op_type.strip()] += 1 / steps
        begin = line.timestamp_ns * 1000 + event.offset_ps
        intervals.append((begin, begin + event.duration_ps))
  if not intervals:
    return None
  edges = sorted([(b, 1) for b, _ in intervals] +
                 [(e, -1) for _, e in intervals])
  running, last, busy = 0, edges[0][0], [0.0, 0.0, 0.0]
  for when, change in edges:
    busy[min(running, 2)] += (when - last) / 1e12
    running, last = running + change, when
  return seconds, counts, busy, (edges[-1][0] - edges[0][0]) / 1e12


def main(argv):
  from simclr import paths  # pylint: disable=g-import-not-at-top
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  if FLAGS.config not in bench.SETTINGS:
    cli_checks.fail(f'--config: {FLAGS.config!r} is not one of '
                    f'{", ".join(bench.SETTINGS)}')
  if FLAGS.profile_steps < 1:
    cli_checks.fail(f'--profile_steps={FLAGS.profile_steps}: expected >= 1')
  published = bool(FLAGS.published_tf2_dir)
  if published and FLAGS.config not in bench.PUBLISHED:
    cli_checks.fail(f'--config={FLAGS.config} with --published_tf2_dir: the '
                    f'published code has no fractional widths; profile it '
                    f'with one of {", ".join(bench.PUBLISHED)}')
  if published:
    try:
      paths.check_input_dir(FLAGS.published_tf2_dir)
    except paths.PathError as e:
      cli_checks.fail(f'--published_tf2_dir: {e}')
    if os.environ.get('TF_USE_LEGACY_KERAS') != '1':
      cli_checks.fail('--published_tf2_dir: the published code needs the '
                      'Keras 2 API; run with TF_USE_LEGACY_KERAS=1')
  name = (f'published_{FLAGS.config}' if published else
          f'{FLAGS.config}_{FLAGS.precision}')
  logdir = FLAGS.logdir or os.path.join(tempfile.gettempdir(),
                                       f'simclr_profile_{name}')
  try:
    paths.check_output_dir(logdir)
  except paths.PathError as e:
    cli_checks.fail(f'--logdir: {e}')

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if published:
    train = bench.build_published_step(FLAGS.config, FLAGS.published_tf2_dir)
  else:
    train, _ = bench.build_step(FLAGS.config, FLAGS.precision, False)
  print(f'{name}: tracing and 2 warm-up steps ...', flush=True)
  train(1)
  train(1)
  tf.profiler.experimental.start(logdir)
  start = time.time()
  train(FLAGS.profile_steps)
  wall = (time.time() - start) / FLAGS.profile_steps
  tf.profiler.experimental.stop()
  print(f'{name}: {wall:.3f} s per step while traced; trace in {logdir} '
        f'(tensorboard --logdir={logdir}, Profile tab)')
  summary = op_summary(logdir, FLAGS.profile_steps)
  if summary is None:
    print('No per-op summary: this TensorFlow\'s trace could not be read '
          '(tensorflow.tsl.profiler.protobuf.xplane_pb2 missing or no '
          'kernel events); open the trace in TensorBoard instead.')
    return
  seconds, counts, busy, span = summary
  total = sum(seconds.values())
  per_step = span / FLAGS.profile_steps
  shares = ' / '.join(f'{100 * b / span:.0f}%' for b in busy)
  print(f'Kernel time {total:.3f} s per step over {per_step:.3f} s of wall '
        f'time; wall time with 0 / 1 / 2+ kernels running: {shares}')
  print(f'{"op type":36s} {"s/step":>8s} {"share":>6s} {"ops/step":>8s}')
  for op_type, value in seconds.most_common(FLAGS.top):
    print(f'{op_type:36s} {value:8.3f} {100 * value / total:5.1f}% '
          f'{counts[op_type]:8.0f}')


if __name__ == '__main__':
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)
