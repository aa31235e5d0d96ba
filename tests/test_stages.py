"""tools/experiment.run_stages: which job runs when, what a bad job list
says, and that an exception of a stage process reaches the tool whole;
the random encoder the baselines evaluate. The
demo end to end with two stage processes: tests/test_console.py."""

import logging
import os
import pathlib
import pickle
import signal
import time

import numpy as np
import pytest
import tf_keras

import simclr
from simclr.tasks import actions
from tools import console
from tools import experiment


class Recorder:
  """experiment.run_stage replaced: records the order and returns a result
  named after the stage."""

  def __init__(self):
    self.order = []

  def __call__(self, flag_values, on_progress=None):
    self.order.append(flag_values['model_dir'])
    if on_progress is not None:
      on_progress(actions.LoopProgress(2, 2, 100.0, 0.0))
    return {'top1': len(self.order) / 10}, 7, False


def slow_stage(flag_values, on_progress):
  """A stage that says it started and then runs for two minutes."""
  del on_progress
  pathlib.Path(flag_values['model_dir']).touch()
  time.sleep(120)
  return {}, 0, False


def quick_stage(flag_values, on_progress):
  """A stage that finishes once the slow stage has started."""
  del on_progress
  deadline = time.time() + 120
  while not os.path.exists(flag_values['slow_started']):
    assert time.time() < deadline
    time.sleep(0.1)
  time.sleep(1.0)  # The slow stage's process id has reached the tool.
  return {'top1': 0.5}, 0, False


def job(name, after=()):
  return experiment.Job(name, dict(model_dir=name), after=list(after))


def test_one_worker_runs_the_jobs_in_their_order_in_this_process(
    tmp_path, monkeypatch):
  recorder = Recorder()
  monkeypatch.setattr(experiment, 'run_stage', recorder)
  finished = []
  jobs = [job('pretrain'), job('finetune', ['pretrain']), job('supervised'),
          job('distill', ['finetune'])]
  with console.Console(tmp_path) as terminal:
    done = experiment.run_stages(
        jobs, 1, terminal, lambda j, d: finished.append((j.name, d.result)))
  assert recorder.order == ['pretrain', 'finetune', 'supervised', 'distill']
  assert finished == [('pretrain', {'top1': 0.1}), ('finetune', {'top1': 0.2}),
                      ('supervised', {'top1': 0.3}),
                      ('distill', {'top1': 0.4})]
  assert {name: (d.params, d.reused) for name, d in done.items()} == {
      name: (7, False) for name in recorder.order}
  assert all(d.seconds >= 0 for d in done.values())


@pytest.mark.parametrize('jobs, workers, message', [
    ([job('a'), job('a')], 2, 'jobs with the same name'),
    ([job('a', ['b'])], 2, "runs after unknown jobs ['b']"),
    ([job('a', ['b']), job('b')], 1, 'listed before what it runs after'),
    ([job('a', ['b']), job('b', ['a'])], 2, 'jobs wait on each other'),
])
def test_a_bad_job_list_is_refused_before_any_stage(tmp_path, monkeypatch,
                                                    jobs, workers, message):
  recorder = Recorder()
  monkeypatch.setattr(experiment, 'run_stage', recorder)
  with console.Console(tmp_path) as terminal:
    with pytest.raises(ValueError, match=message.replace('[', r'\[')):
      experiment.run_stages(jobs, workers, terminal, lambda j, d: None)
  assert not recorder.order


def test_preempted_survives_the_trip_from_a_stage_process():
  # A stage process returns its exception pickled; Preempted's message and
  # fields must come back as they left.
  error = pickle.loads(pickle.dumps(actions.Preempted(40, 'SIGTERM')))
  assert isinstance(error, actions.Preempted)
  assert (error.step, error.signal_name) == (40, 'SIGTERM')
  assert str(error) == str(actions.Preempted(40, 'SIGTERM'))


def test_progress_text_names_each_running_stage():
  assert console.progress_text('seed 0 pretrain', None) == 'seed 0 pretrain'
  assert console.progress_text(
      'seed 0 pretrain', actions.LoopProgress(50, 600, 507.7, 130.0)) == (
          'seed 0 pretrain: step 50/600, 508 images/s, about 2m10s left')


def test_sigterm_with_an_idle_stage_process_stops_the_running_stage(
    tmp_path, caplog):
  # Two stage processes; one finishes its stage and waits for work, the other
  # runs. SIGTERM to the tool reaches both: the idle one must not die of it
  # (a dead process breaks the pool, which then kills the running stage
  # before it can save) and the running one stops with its own exception.
  slow = str(tmp_path / 'slow_started')
  jobs = [experiment.Job('slow', dict(model_dir=slow)),
          experiment.Job('quick', dict(slow_started=slow))]
  finished = []

  def on_done(job, done):
    finished.append((job.name, done.result))
    os.kill(os.getpid(), signal.SIGTERM)

  caplog.set_level(logging.WARNING)
  started = time.time()
  with console.Console(tmp_path) as terminal:
    with pytest.raises(experiment.StagesStopped, match='SIGTERM received'):
      experiment.run_stages(jobs, 2, terminal, on_done,
                            runner=_by_name)
  assert finished == [('quick', {'top1': 0.5})]
  assert time.time() - started < 100  # Not the slow stage's two minutes.
  assert ('slow stopped: StageStopped: SIGTERM received outside a training '
          'loop') in caplog.text


def _by_name(flag_values, on_progress):
  if 'slow_started' in flag_values:
    return quick_stage(flag_values, on_progress)
  return slow_stage(flag_values, on_progress)


def test_the_random_encoder_loads_as_the_seeded_network_it_was(tmp_path):
  architecture = dict(resnet_depth=18, width_multiplier=0.25)
  path = str(tmp_path / 'random_encoder')
  assert experiment.random_encoder(path, 3, architecture, 16) == path
  tf_keras.utils.set_random_seed(3)
  expected = simclr.build_model(simclr.ModelConfig(
      **architecture, image_size=16, num_classes=None, global_bn=False))
  loaded = simclr.load_model(path)
  assert loaded.config == expected.config
  assert len(loaded.variables) == len(expected.variables) > 100
  for got, want in zip(loaded.variables, expected.variables):
    np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.name)
  # Another seed is another network: the comparison above can fail.
  other = str(tmp_path / 'other')
  experiment.random_encoder(other, 4, architecture, 16)
  assert not np.array_equal(
      simclr.load_model(other).resnet.variables[0].numpy(),
      expected.resnet.variables[0].numpy())
  # Written once: a second call leaves the files alone.
  before = {p.name: p.stat().st_mtime_ns
            for p in tmp_path.glob('random_encoder/*')}
  experiment.random_encoder(path, 5, architecture, 16)
  assert {p.name: p.stat().st_mtime_ns
          for p in tmp_path.glob('random_encoder/*')} == before
  assert not list(tmp_path.glob('.incomplete-*'))
