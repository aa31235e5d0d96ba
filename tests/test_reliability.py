"""Failure behaviour of tf2/run.py: SIGKILL and SIGTERM at any moment, a
non-finite loss, and bad input failing fast with one line."""

import os
import random
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
  assert f'steps {saved} -> {saved + 1}' in resumed.stderr + resumed.stdout


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


# --- bad input: one line naming the flag or file, before training -----------


def _fail_fast(args, tmp_path, data_dir=None):
  model_dir = str(tmp_path / 'bad')
  extra = [f'--model_dir={model_dir}']
  if data_dir:
    extra.append(f'--data_dir={data_dir}')
  start = time.time()
  proc = subprocess.run(command(extra + args), env=env(), cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines()
            if l.startswith(('error:', 'FATAL Flags parsing error'))]
  assert len(errors) == 1, proc.stderr[-3000:]
  # Nothing was trained (a missing model_dir has no checkpoint either).
  assert tf.train.latest_checkpoint(model_dir) is None
  del start
  return errors[0]


BAD_INPUT = [
    (['--dataset=no_such_dataset'], 'no_such_dataset'),
    (['--dataset=folder:/no/such/folder'], '/no/such/folder'),
    (['--train_mode=finetune', '--checkpoint=/no/such/ckpt'],
     '--checkpoint'),
    (['--train_mode=distill', '--teacher_checkpoint=/no/such/teacher'],
     '--teacher_checkpoint'),
    (['--num_logical_cpus=2', '--train_batch_size=15'], '--train_batch_size'),
    (['--memory_size=100'], '--memory_size'),
    (['--temperature=0'], '--temperature'),
    (['--image_size=4'], '--image_size'),
    (['--train_label_fraction=1.5'], '--train_label_fraction'),
    (['--train_label_fraction=0'], '--train_label_fraction'),
    (['--precision=float8'], '--precision'),
    (['--train_mode=finetune', '--fine_tune_after_block=5'],
     '--fine_tune_after_block'),
    (['--fine_tune_after_block=2'], '--fine_tune_after_block'),
    (['--num_proj_layers=2', '--ft_proj_selector=3'], '--ft_proj_selector'),
    (['--mode=eval', '--train_mode=finetune'], '--model_dir'),
]


@pytest.mark.parametrize('args,named', BAD_INPUT,
                         ids=[a[0][0].split('=')[0].lstrip('-') + str(i)
                              for i, a in enumerate(BAD_INPUT)])
def test_bad_input_fails_fast_with_one_line_naming_it(args, named, tmp_path,
                                                      data_dir):
  line = _fail_fast(args, tmp_path, data_dir)
  assert named in line


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  line = _fail_fast(['--dataset=mnist'], tmp_path,
                    data_dir=str(tmp_path / 'empty_tfds'))
  assert 'not prepared' in line and 'tfds build mnist' in line


def test_dataset_without_images_is_refused(tmp_path):
  line = _fail_fast(['--dataset=folder:' + str(tmp_path)], tmp_path)
  assert str(tmp_path) in line


def test_not_a_checkpoint_is_refused(tmp_path, data_dir):
  (tmp_path / 'notes').mkdir()
  (tmp_path / 'notes' / 'readme.txt').write_text('not a model')
  line = _fail_fast(['--train_mode=finetune',
                     f'--checkpoint={tmp_path / "notes"}'], tmp_path,
                    data_dir)
  assert '--checkpoint' in line and 'readme.txt' in line


def test_architecture_mismatch_on_restore_is_refused(tmp_path, data_dir):
  source = tmp_path / 'r18'
  import simclr  # pylint: disable=g-import-not-at-top
  model = simclr.build_model(simclr.ModelConfig(
      resnet_depth=18, width_multiplier=0.25, image_size=32, num_classes=10,
      global_bn=False))
  source.mkdir()
  tf.train.Checkpoint(model=model).write(str(source / 'ckpt'))
  (source / 'model_config.json').write_text(model.config.to_json())
  line = _fail_fast(['--train_mode=finetune', f'--checkpoint={source}',
                     '--width_multiplier=0.5'], tmp_path, data_dir)
  assert 'width_multiplier' in line
