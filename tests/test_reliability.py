"""Failure behaviour of tf2/run.py: SIGKILL and SIGTERM at any moment, a
non-finite loss, and damaged checkpoints refused by name (bad input in
general: tests/test_bad_input.py)."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf


ROOT = os.path.join(os.path.dirname(__file__), '..')
RUN = os.path.join(ROOT, 'tf2', 'run.py')

BATCH = 16
MEMORY = 4 * 2 * BATCH  # four steps of keys
COMMON = ['--dataset=digits', '--eval_split=test', '--image_size=32',
          '--resnet_depth=18', '--width_multiplier=0.25',
          f'--train_batch_size={BATCH}', '--use_tpu=False', '--seed=3',
          '--lineareval_while_pretraining=False']


@pytest.fixture(scope='module')
def data_dir(digits_dir):
  return digits_dir


def command(args):
  return [sys.executable, RUN] + COMMON + args


def env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')


def checkpoint_steps(model_dir):
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None:
    return []
  return sorted(int(p.rsplit('-', 1)[1])
                for p in state.all_model_checkpoint_paths)


def read_checkpoint(model_dir, step):
  """All tensors of model_dir/ckpt-<step> (fails if it does not restore)."""
  reader = tf.train.load_checkpoint(os.path.join(model_dir, f'ckpt-{step}'))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k != '_CHECKPOINTABLE_OBJECT_GRAPH'}


QUEUE = 'memory_queue/queue/.ATTRIBUTES/VARIABLE_VALUE'
LENGTH = 'memory_queue/length/.ATTRIBUTES/VARIABLE_VALUE'
STEP = 'global_step/.ATTRIBUTES/VARIABLE_VALUE'


@pytest.mark.slow
def test_survives_three_sigkills_and_continues_queue_and_optimizer(
    data_dir, tmp_path):
  model_dir = str(tmp_path / 'model')
  total = 40
  args = command([f'--data_dir={data_dir}', f'--model_dir={model_dir}',
                  f'--train_steps={total}', '--checkpoint_steps=1',
                  '--steps_per_loop=1', f'--memory_size={MEMORY}',
                  '--memory_momentum=0.9', '--train_mode=pretrain'])
  rng = random.Random(0)
  kills = []
  for _ in range(3):
    before = checkpoint_steps(model_dir)
    proc = subprocess.Popen(args, env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Wait for this run to make progress, then kill it at a random moment
    # (mid-step, mid-checkpoint or mid-export alike).
    deadline = time.time() + 300
    while (checkpoint_steps(model_dir)[-1:] == before[-1:] and
           proc.poll() is None and time.time() < deadline):
      time.sleep(0.2)
    time.sleep(rng.uniform(0, 1.5))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      kills.append(checkpoint_steps(model_dir)[-1])
    proc.wait()
  print('SIGKILLed after checkpoint steps', kills)
  assert len(kills) == 3, 'the run finished before it could be killed 3 times'
  assert kills[-1] < total

  proc = subprocess.run(args, env=env(), cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  steps = checkpoint_steps(model_dir)
  assert steps[-1] == total
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == [str(total)]
  # Every checkpoint kept in model_dir restores, and is finite.
  tensors = {step: read_checkpoint(model_dir, step) for step in steps}
  for step, values in tensors.items():
    assert values[STEP] == step
    for key, value in values.items():
      if value.dtype.kind == 'f':
        assert np.isfinite(value).all(), (step, key)
  # The resumed runs continued the FIFO queue: consecutive checkpoints one
  # step apart hold the same keys shifted by one step's 2 x BATCH rows (a
  # queue reset at a restart would leave zeros instead).
  for step in steps[1:]:
    if step - 1 in tensors:
      new, old = tensors[step][QUEUE], tensors[step - 1][QUEUE]
      np.testing.assert_array_equal(new[2 * BATCH:], old[:-2 * BATCH])
      assert tensors[step][LENGTH] == min(step * 2 * BATCH, MEMORY)
  # The optimizer state continued: the LARS momentum slots are not those of a
  # fresh start (which would be one gradient's worth, not an accumulation).
  slots = [k for k in tensors[total] if '/.OPTIMIZER_SLOT/' in k]
  assert slots and any(np.abs(tensors[total][k]).sum() > 0 for k in slots)


def test_sigterm_saves_the_current_step_exits_nonzero_and_resumes(
    data_dir, tmp_path):
  model_dir = str(tmp_path / 'model')
  args = command([f'--data_dir={data_dir}', f'--model_dir={model_dir}',
                  '--train_steps=500', '--checkpoint_steps=1000',
                  '--steps_per_loop=1', '--train_mode=pretrain'])
  proc = subprocess.Popen(args, env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if 'step 2/500' in line:
      proc.send_signal(signal.SIGTERM)
      break
  output = ''.join(seen) + proc.stdout.read()
  proc.wait(timeout=300)
  assert proc.returncode == 143, output[-3000:]
  steps = checkpoint_steps(model_dir)
  assert len(steps) == 1 and steps[0] >= 2  # no periodic checkpoint was due
  saved = steps[0]
  assert f'saved a checkpoint at step {saved}' in output
  resumed = subprocess.run(
      command([f'--data_dir={data_dir}', f'--model_dir={model_dir}',
               f'--train_steps={saved + 1}', '--checkpoint_steps=1000',
               '--steps_per_loop=1', '--train_mode=pretrain']),
      env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from' in resumed.stderr + resumed.stdout
  assert f'steps {saved} -> {saved + 1}' in resumed.stderr + resumed.stdout
  # The step counter (optimizer state) continued from the saved one.
  assert checkpoint_steps(model_dir)[-2:] == [saved, saved + 1]
  assert read_checkpoint(model_dir, saved)[STEP] == saved
  assert read_checkpoint(model_dir, saved + 1)[STEP] == saved + 1


def test_non_finite_loss_stops_without_saving_it(data_dir, tmp_path):
  model_dir = str(tmp_path / 'model')
  proc = subprocess.run(
      command([f'--data_dir={data_dir}', f'--model_dir={model_dir}',
               '--optimizer=momentum', '--learning_rate=1e30',
               '--warmup_epochs=0', '--train_steps=6', '--checkpoint_steps=1',
               '--steps_per_loop=1', '--train_mode=pretrain']),
      env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 3, proc.stderr[-3000:]
  error = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1
  assert 'non-finite' in error[0] and 'contrast_loss=' in error[0]
  assert 'at step ' in error[0] or 'after step ' in error[0]
  assert 'Traceback' not in proc.stderr
  steps = checkpoint_steps(model_dir)
  assert steps and steps[-1] < 6
  for step in steps:
    for key, value in read_checkpoint(model_dir, step).items():
      if value.dtype.kind == 'f':
        assert np.isfinite(value).all(), (step, key)
  assert not os.path.exists(os.path.join(model_dir, 'saved_model'))


# --- damaged checkpoints: refused by name, never trained over ---------------

TINY = ['--dataset=digits', '--eval_split=test', '--image_size=16',
        '--resnet_depth=18', '--width_multiplier=0.125',
        f'--train_batch_size={BATCH}', '--use_tpu=False', '--seed=3',
        '--lineareval_while_pretraining=False', '--checkpoint_steps=2']
DATA = 'ckpt-4.data-00000-of-00001'


def tiny_command(data_dir, model_dir, *args):
  return ([sys.executable, RUN] + TINY +
          [f'--data_dir={data_dir}', f'--model_dir={model_dir}'] + list(args))


def run_tiny(data_dir, model_dir, *args):
  return subprocess.run(tiny_command(data_dir, model_dir, *args), env=env(),
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def tiny_run(data_dir, tmp_path_factory):
  """A model_dir with ckpt-2 and ckpt-4 of a tiny pretraining run."""
  model_dir = str(tmp_path_factory.mktemp('tiny') / 'model')
  proc = run_tiny(data_dir, model_dir, '--train_steps=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert checkpoint_steps(model_dir) == [2, 4]
  return model_dir


def damaged_copy(tiny_run, tmp_path, name, damage):
  """A copy of tiny_run whose file `name` was passed to damage(path)."""
  model_dir = str(tmp_path / 'model')
  shutil.copytree(tiny_run, model_dir)
  damage(os.path.join(model_dir, name))
  return model_dir


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def flip_a_byte(path):
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    f.seek(0)
    f.write(data)


def the_error(proc):
  """The one error line of a run that failed on bad input."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  errors = [line for line in proc.stderr.splitlines()
            if line.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


def reads_back_whole(prefix):
  reader = tf.train.load_checkpoint(prefix)
  for key in reader.get_variable_to_shape_map():
    reader.get_tensor(key)  # Checks the tensor's CRC32C.
  return True


def test_truncated_data_file_is_refused_and_the_suggested_command_resumes(
    tiny_run, data_dir, tmp_path):
  model_dir = damaged_copy(tiny_run, tmp_path, DATA, truncate)
  size = os.path.getsize(os.path.join(model_dir, DATA))
  line = the_error(run_tiny(data_dir, model_dir, '--train_steps=6'))
  assert f'--model_dir={model_dir}' in line
  assert f'{model_dir}/{DATA} is unreadable' in line
  assert 'newest intact checkpoint is ckpt-2' in line
  # Nothing was written over it.
  assert checkpoint_steps(model_dir) == [2, 4]
  assert os.path.getsize(os.path.join(model_dir, DATA)) == size
  # The command the message gives makes ckpt-2 the newest; then the same
  # command resumes from step 2 and rewrites steps 4 and 6.
  command = line.split(' run python -c "', 1)[1].split('"', 1)[0]
  subprocess.run([sys.executable, '-c', command], env=env(), check=True,
                 capture_output=True, timeout=300)
  resumed = run_tiny(data_dir, model_dir, '--train_steps=6')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  output = resumed.stderr + resumed.stdout
  assert f'Resumed from {model_dir}/ckpt-2 at step 2' in output
  assert 'steps 2 -> 6' in output
  assert checkpoint_steps(model_dir)[-2:] == [4, 6]
  assert reads_back_whole(os.path.join(model_dir, 'ckpt-4'))
  assert reads_back_whole(os.path.join(model_dir, 'ckpt-6'))


def test_corrupted_index_file_is_refused_by_name(tiny_run, data_dir,
                                                 tmp_path):
  model_dir = damaged_copy(tiny_run, tmp_path, 'ckpt-4.index', flip_a_byte)
  line = the_error(run_tiny(data_dir, model_dir, '--train_steps=6'))
  assert f'{model_dir}/ckpt-4.index is unreadable' in line
  assert 'newest intact checkpoint is ckpt-2' in line
  assert 'update_checkpoint_state' in line
  assert checkpoint_steps(model_dir) == [2, 4]


def test_index_naming_a_checkpoint_whose_files_are_gone_is_refused(
    tiny_run, data_dir, tmp_path):
  # tf.train.latest_checkpoint returns None here: the run used to start
  # again from random weights.
  model_dir = damaged_copy(tiny_run, tmp_path, 'ckpt-4.index', os.remove)
  line = the_error(run_tiny(data_dir, model_dir, '--train_steps=6'))
  assert f'{model_dir}/ckpt-4.index is missing' in line
  assert 'newest intact checkpoint is ckpt-2' in line
  assert not os.path.exists(os.path.join(model_dir, 'ckpt-6.index'))


def test_damaged_checkpoint_flag_is_refused_naming_the_file(
    tiny_run, data_dir, tmp_path):
  source = damaged_copy(tiny_run, tmp_path, DATA, flip_a_byte)
  line = the_error(run_tiny(data_dir, str(tmp_path / 'finetune'),
                            '--train_mode=finetune', f'--checkpoint={source}',
                            '--train_steps=2'))
  assert f'--checkpoint={source}: damaged checkpoint: {source}/{DATA}' in line
  assert f'pass --checkpoint={source}/ckpt-2' in line
  line = the_error(run_tiny(data_dir, str(tmp_path / 'distill'),
                            '--train_mode=distill',
                            f'--teacher_checkpoint={source}/ckpt-4',
                            '--train_steps=2'))
  assert f'--teacher_checkpoint={source}/ckpt-4: damaged checkpoint' in line
  assert f'{source}/{DATA} is unreadable' in line
  assert tf.train.latest_checkpoint(str(tmp_path / 'distill')) is None
