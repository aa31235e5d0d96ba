"""tools/demo.py's console (tools/console.py) at a toy size (two steps per
stage, one label fraction): stdout holds the demo's own lines only, the
first naming the log file; stderr stays empty; the log file holds the rest
(absl's INFO lines, TFDS's output); --verbose puts the log on the terminal;
an error is one line on stderr naming the log, which holds the traceback.
And the live progress line: what a run's progress callback receives, and
what a terminal is shown."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from simclr.tasks import actions
from tools import console

DEMO = os.path.join(os.path.dirname(__file__), '..', 'tools', 'demo.py')
TOY = ['--scale=0.001', '--seeds=0', '--label_fractions=0.1']

# Every line the demo itself prints after the first: its seed line, one line
# per stage, the table (header, rule, rows) and the closing line.
OWN_LINES = (
    r'\[\s*\d+s\] seed 0',
    r'  seed 0 \w+: \d+s(, top-1 \d+\.\d%)?',
    r'\| method \| architecture \| labels \| top-1 \| top-5 \| params \|',
    r'\|---\|---\|---\|---\|---\|---\|',
    r'\| \w+ \| [^|]+ \| \d+% \| \d+\.\d \| \d+\.\d \| (\d+\.\d\dM|-) \|',
    r'demo finished in \d+s; outputs in .+',
)
STAGES = ('pretrain', 'linear_eval', 'random_linear_eval', 'finetune_10pct',
          'supervised_10pct', 'self_distill_10pct', 'distill_small_10pct')


def run_demo(out, *extra):
  # The demo quiets TensorFlow's C++ log by itself: the variable is removed
  # so that the test sees what a user's shell gives it. One BLAS thread: the
  # linear evaluations' scikit-learn fits are many times slower with
  # OpenBLAS's threads on two busy cores (the results do not depend on it).
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  env['OPENBLAS_NUM_THREADS'] = '1'
  return subprocess.run([sys.executable, DEMO, f'--out={out}'] + TOY +
                        list(extra), capture_output=True, text=True,
                        timeout=900, env=env)


@pytest.fixture(scope='module')
def quiet_run(tmp_path_factory):
  """(out, the finished process) of the demo without --verbose; it prepares
  its own digits under out, so that TFDS has something to say."""
  out = tmp_path_factory.mktemp('console') / 'demo_out'
  proc = run_demo(out)
  assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:],
                                (out / 'log.txt').read_text()[-4000:])
  return out, proc


def test_the_first_line_names_the_log_file(quiet_run):
  out, proc = quiet_run
  assert proc.stdout.splitlines()[0] == f'log: {out / "log.txt"}'


def test_stdout_holds_only_the_demos_own_lines(quiet_run):
  _, proc = quiet_run
  lines = proc.stdout.splitlines()[1:]
  strays = [l for l in lines
            if not any(re.fullmatch(p, l) for p in OWN_LINES)]
  assert not strays
  # A pipe gets no updating progress line.
  assert '\r' not in proc.stdout
  stage_lines = [l for l in lines if l.startswith('  seed 0 ')]
  # Each stage's line comes when it finishes (in two stage processes, the
  # default, the order follows the stages' dependencies, not the list).
  names = [l.split()[2].rstrip(':') for l in stage_lines]
  assert sorted(names) == sorted(STAGES)
  for first, then in (('pretrain', 'linear_eval'),
                      ('pretrain', 'finetune_10pct'),
                      ('finetune_10pct', 'self_distill_10pct'),
                      ('finetune_10pct', 'distill_small_10pct')):
    assert names.index(first) < names.index(then)
  assert lines[-1].startswith('demo finished in ')


def test_stderr_is_empty(quiet_run):
  _, proc = quiet_run
  assert proc.stderr == ''


def test_the_log_holds_the_rest(quiet_run):
  out, proc = quiet_run
  log = (out / 'log.txt').read_text()
  # absl INFO lines of the runner and of the progress reporter.
  assert re.search(r'^I\d{4} .*runner\.py:\d+\] Training pretrain: ', log,
                   re.M)
  assert re.search(r'^I\d{4} .*actions\.py:\d+\] step 2/2 \(100%\)', log,
                   re.M)
  # TFDS: its INFO lines, and what it prints on stdout when preparing.
  assert 'Constructing tf.data.Dataset digits' in log
  assert 'Downloading and preparing dataset' in log
  assert 'Downloading and preparing dataset' not in proc.stdout
  # The fine-tuning from scratch says so, in the log only.
  assert 'No --checkpoint: fine-tuning from random weights' in log
  assert 'fine-tuning from random weights' not in proc.stdout
  # The supervised baseline trains from the projection head's input: no
  # warning about the head layers it never uses.
  assert 'Gradients do not exist' not in log


def test_verbose_shows_the_log_on_the_terminal(quiet_run):
  out, _ = quiet_run
  trained = r'^I\d{4} .*runner\.py:\d+\] Training distill: '
  before = len(re.findall(trained, (out / 'log.txt').read_text(), re.M))
  rows = json.loads((out / 'results.json').read_text())['rows']
  # The other stages are reused; this one trains again.
  shutil.rmtree(out / 'seed0' / 'distill_small_10pct')
  proc = run_demo(out, '--verbose', '--stage_workers=1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  # Alone in the demo's own process, the stage gives what it gave after
  # other stages in one of the first run's two stage processes (the default,
  # each on every core): every row is the same.
  assert json.loads((out / 'results.json').read_text())['rows'] == rows
  assert proc.stdout.splitlines()[0] == f'log: {out / "log.txt"}'
  assert len(re.findall(trained, proc.stderr, re.M)) == 1
  # The log file gets this run's Python log too, after the first run's.
  after = len(re.findall(trained, (out / 'log.txt').read_text(), re.M))
  assert after == before + 1


def test_an_error_is_one_line_naming_the_log(tmp_path):
  out = tmp_path / 'demo_out'
  # A file where the first stage's model_dir should be: simclr.train stops
  # with a RunError before training.
  (out / 'seed0').mkdir(parents=True)
  (out / 'seed0' / 'pretrain').write_text('not a directory')
  proc = run_demo(out)
  assert proc.returncode == 1
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith('error: RunError: ')
  assert lines[0].endswith(f'(details in {out / "log.txt"})')
  assert 'Traceback (most recent call last)' in (out / 'log.txt').read_text()


def test_the_progress_callback_gets_the_logged_numbers():
  seen = []
  step = tf.Variable(0, dtype=tf.int64)
  reporter = actions.ProgressReporter(step, total_steps=100,
                                      images_per_step=64,
                                      listener=seen.append)
  reporter.start_time = time.time() - 10.0  # 10 s for the first 50 steps.
  step.assign(50)
  reporter({'train/total_loss': tf.constant(1.0)})
  [progress] = seen
  assert (progress.step, progress.total_steps) == (50, 100)
  # 5 steps/s of 64 images; the other 50 steps at that rate.
  assert progress.images_per_second == pytest.approx(5 * 64, rel=0.05)
  assert progress.seconds_left == pytest.approx(10.0, rel=0.05)


class FakeTerminal(io.StringIO):

  def isatty(self):
    return True


def test_a_terminal_sees_one_line_rewritten_then_erased(tmp_path,
                                                        monkeypatch):
  terminal = FakeTerminal()
  monkeypatch.setattr(sys, 'stdout', terminal)
  monkeypatch.setenv('COLUMNS', '200')
  shown = console.Console(tmp_path, verbose=False)
  with shown.live('stage 1/2 pretrain') as update:
    update(actions.LoopProgress(50, 600, 507.7, 130.0))
    update(actions.LoopProgress(600, 600, 510.0, 0.0))
  shown.say('stage 1/2 pretrain: 2m21s')
  first = 'stage 1/2 pretrain: step 50/600, 508 images/s, about 2m10s left'
  last = 'stage 1/2 pretrain: 600 steps done (510 images/s), finishing'
  assert terminal.getvalue() == (
      '\rstage 1/2 pretrain' + '\r' + first + '\r' + last.ljust(len(first))
      + '\r' + ' ' * len(last) + '\r' + 'stage 1/2 pretrain: 2m21s\n')


def test_a_pipe_sees_only_the_stage_lines(tmp_path, monkeypatch):
  pipe = io.StringIO()
  monkeypatch.setattr(sys, 'stdout', pipe)
  shown = console.Console(tmp_path, verbose=False)
  with shown.live('stage 1/2 pretrain') as update:
    update(actions.LoopProgress(50, 600, 507.7, 130.0))
  shown.say('stage 1/2 pretrain: 2m21s')
  assert pipe.getvalue() == 'stage 1/2 pretrain: 2m21s\n'


def test_two_stage_processes_log_quietly_and_stop_on_sigterm(tmp_path):
  # --stage_workers=2: the stages run in two processes of their own, which
  # log into the demo's log file; SIGTERM to the demo reaches them, the
  # running pretraining saves its current step, and the demo says so in one
  # line.
  out = tmp_path / 'demo_out'
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  proc = subprocess.Popen(
      [sys.executable, DEMO, f'--out={out}', '--scale=0.1', '--seeds=0',
       '--label_fractions=0.1', '--stage_workers=2'], stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env=env)
  log = out / 'log.txt'
  deadline = time.time() + 300
  # Pretraining: 60 steps, 10 per loop (the loop divides the 60-step
  # checkpoint interval); the first loop's line says it runs.
  while not (log.exists() and 'step 10/60 ' in log.read_text()):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.2)
  proc.terminate()
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 1, (stdout, stderr)
  assert stderr.startswith('error: StagesStopped: SIGTERM received: '), stderr
  assert len(stderr.splitlines()) == 1
  steps = [int(p.name[len('ckpt-'):-len('.index')])
           for p in (out / 'seed0' / 'pretrain').glob('ckpt-*.index')]
  assert steps and 10 <= max(steps) < 60
  text = log.read_text()
  assert ('seed 0 pretrain stopped: Preempted: SIGTERM received: saved a '
          'checkpoint at step') in text
  assert re.search(r'^I\d{4} .*runner\.py:\d+\] Training pretrain: ', text,
                   re.M)
  lines = stdout.splitlines()
  assert lines[0] == f'log: {log}'
  assert all(any(re.fullmatch(p, l) for p in OWN_LINES) for l in lines[1:])


def test_the_pictures_are_written(quiet_run):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out, _ = quiet_run
  for name in ('embedding.png', 'augmentations.png', 'label_efficiency.png'):
    with Image.open(out / name) as image:
      assert image.format == 'PNG' and min(image.size) >= 100, name


class SaidLines:
  """A console.Console stand-in that keeps what it is told to say."""

  def __init__(self):
    self.lines = []

  def say(self, line):
    self.lines.append(line)


def process_running(code):
  """What demo_pictures.start_augmentations returns, for a Python
  one-liner."""
  import tempfile  # pylint: disable=g-import-not-at-top
  output = tempfile.TemporaryFile()
  process = subprocess.Popen([sys.executable, '-c', code], stdout=output,
                             stderr=subprocess.STDOUT)
  process.output = output
  return process


def test_the_pictures_are_drawn_while_stages_run_and_failures_said(
    monkeypatch):
  import threading  # pylint: disable=g-import-not-at-top
  from tools import demo_pictures  # pylint: disable=g-import-not-at-top
  started, release, threads = threading.Event(), threading.Event(), []

  def draw_embedding(seed_dir, out, data_dir):
    threads.append(threading.current_thread())
    started.set()
    assert release.wait(60)
    raise OSError(f'{out}/embedding.png: no space left on device')

  monkeypatch.setattr(demo_pictures, 'draw_embedding', draw_embedding)
  monkeypatch.setattr(
      demo_pictures, 'start_augmentations', lambda out, data_dir: (
          process_running('import sys; print("starting"); '
                          'sys.exit("error: --image_size=0: expected > 0")')))
  said = SaidLines()
  pictures = demo_pictures.Pictures('demo_out', 'data', 'demo_out/seed0',
                                    said)
  pictures.dataset_ready()
  augmentations = pictures.augmentations
  assert augmentations is not None
  pictures.stage_done('pretrain')
  pictures.stage_done('supervised_1pct')
  assert pictures.embedding is None and not started.is_set()
  pictures.stage_done('random_linear_eval')
  # Drawn in a thread of its own while the caller goes on.
  assert started.wait(60)
  assert threads[0] is not threading.main_thread()
  release.set()
  pictures.finish()
  assert augmentations.returncode == 1
  assert said.lines == [
      'embedding picture not drawn: demo_out/embedding.png: no space left '
      'on device',
      'augmentation picture not drawn: tf2/show_augmentations.py exited '
      'with 1: error: --image_size=0: expected > 0']


def test_pictures_not_started_are_drawn_at_the_end_and_cancel_stops_them(
    monkeypatch):
  import threading  # pylint: disable=g-import-not-at-top
  from tools import demo_pictures  # pylint: disable=g-import-not-at-top
  threads = []
  monkeypatch.setattr(demo_pictures, 'draw_embedding',
                      lambda *args: threads.append(threading.current_thread()))
  monkeypatch.setattr(demo_pictures, 'start_augmentations',
                      lambda out, data_dir: process_running('pass'))
  said = SaidLines()
  pictures = demo_pictures.Pictures('demo_out', 'data', 'demo_out/seed0',
                                    said)
  pictures.finish()
  assert threads == [threading.main_thread()] and said.lines == []
  # Stopped early (Ctrl-C, SIGTERM): the picture's process does not outlive
  # the demo.
  monkeypatch.setattr(
      demo_pictures, 'start_augmentations',
      lambda out, data_dir: process_running('import time; time.sleep(120)'))
  pictures = demo_pictures.Pictures('demo_out', 'data', 'demo_out/seed0',
                                    said)
  pictures.dataset_ready()
  process = pictures.augmentations
  pictures.cancel()
  assert process.poll() is not None and process.returncode < 0
