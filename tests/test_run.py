"""tf2/run.py end to end on the embedded `digits` data, as a user runs it
(subprocesses): the suite's shared pretraining on 2 replicas (conftest) ->
finetune on 10% labels from the first head layer -> distill into a smaller
student -> eval; cached linear evaluation; strict restore; 2 workers on
localhost preempted and resumed (single-process resume:
tests/test_reliability.py); deterministic runs."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import simclr
from simclr.data import digits
from conftest import TINY_RUN_FLAGS

import script_runner  # tests/script_runner.py

ROOT = os.path.join(os.path.dirname(__file__), '..')
RUN = os.path.join(ROOT, 'tf2', 'run.py')
TIMEOUT = 600

# A tiny ResNet-18 on 32x32 digits, the architecture of the shared
# pretraining run the fine-tuning and distillation start from; a few steps
# per run.
COMMON = TINY_RUN_FLAGS


def run_cli(args, env=None, check=True):
  """Runs tf2/run.py; returns the completed process (stdout+stderr text)."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
  proc = script_runner.shared().run(RUN, args, timeout=TIMEOUT, env=full_env,
                                    cwd=ROOT)
  if check and proc.returncode != 0:
    raise AssertionError(f'run.py failed ({proc.returncode}):\n'
                         f'{proc.stderr[-6000:]}')
  return proc


def data_dir_flag(tmp_path_factory):
  """The session's digits (conftest.digits_dir prepares the same path)."""
  return '--data_dir=' + str(tmp_path_factory.getbasetemp() / 'tfds')


def read_json(path):
  with open(path) as f:
    return json.load(f)


def checkpoint_steps(model_dir):
  state = tf.train.get_checkpoint_state(model_dir)
  return sorted(int(p.rsplit('-', 1)[1]) for p in
                state.all_model_checkpoint_paths)


def recount_top1(model_dir, tmp_path_factory):
  """Top-1 of the newest SavedModel in model_dir on the test digits, from its
  logits and the labels, in numpy."""
  from simclr import data  # pylint: disable=g-import-not-at-top
  step = max(os.listdir(os.path.join(model_dir, 'saved_model')), key=int)
  model = tf.saved_model.load(os.path.join(model_dir, 'saved_model', step))
  inputs = data.Inputs(data.DataConfig(
      dataset='digits', data_dir=data_dir_flag(tmp_path_factory).split('=')[1],
      eval_split='test', image_size=32, eval_batch_size=128))
  correct = total = 0
  for images, labels, weights in inputs.dataset('eval'):
    logits = model(images, trainable=False)['logits_sup'].numpy()
    keep = weights.numpy() > 0
    correct += int((logits.argmax(-1) == labels.numpy())[keep].sum())
    total += int(keep.sum())
  assert total == 359
  return correct / total


@pytest.fixture(scope='module')
def pretrained(shared_pretrain):
  """The suite's shared pretraining run (conftest.SHARED_PRETRAIN_FLAGS: 6
  steps on two replicas, checkpoints at 3 and 6, train_then_eval)."""
  return shared_pretrain[0]


def test_pretrain_writes_checkpoints_summaries_export_and_results(
    pretrained, shared_pretrain, tmp_path_factory):
  assert '2 replica(s)' in shared_pretrain[1]  # --num_logical_cpus=2
  assert checkpoint_steps(pretrained) == [3, 6]
  assert os.listdir(os.path.join(pretrained, 'saved_model')) == ['6']
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(pretrained))
  result = read_json(os.path.join(pretrained, 'result.json'))
  assert result == read_json(os.path.join(pretrained, 'result_6.json'))
  assert result['global_step'] == 6
  # Every test digit counted once.
  assert result['eval/num_examples'] == 359
  # The reported accuracy is that of the exported model's own logits on the
  # 359 test digits, recounted here in numpy.
  assert result['eval/label_top_1_accuracy'] == pytest.approx(
      recount_top1(pretrained, tmp_path_factory), abs=1e-6)
  flags = read_json(os.path.join(pretrained, 'flags.json'))
  assert flags['resnet_depth'] == 18 and flags['memory_size'] == 128
  metrics = read_json(os.path.join(pretrained, 'train_metrics.json'))
  for key in ('train/contrast_loss', 'train/contrast_acc',
              'train/contrast_entropy', 'train/supervised_loss',
              'train/weight_decay', 'learning_rate'):
    assert np.isfinite(metrics[key]), key


def test_pretrain_checkpoint_holds_memory_queue_and_momentum_encoder(
    pretrained):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(pretrained))
  keys = reader.get_variable_to_shape_map()
  queue = [k for k in keys if k.startswith('memory_queue/')]
  momentum = [k for k in keys if k.startswith('momentum_encoder/')]
  assert queue and len(momentum) > 50
  shapes = [keys[k] for k in queue]
  assert [128, 128] in shapes  # memory_size x proj_out_dim


def test_pretrained_model_dir_loads_with_load_model(pretrained):
  model = simclr.load_model(pretrained)
  assert model.config.resnet_depth == 18
  assert model.config.width_multiplier == 0.25


@pytest.fixture(scope='module')
def finetuned(pretrained, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('finetune'))
  run_cli(COMMON + [
      data_dir_flag(tmp_path_factory), '--train_mode=finetune',
      '--mode=train_then_eval', f'--checkpoint={pretrained}',
      '--train_label_fraction=0.1', '--ft_proj_selector=1',
      '--train_steps=4', '--checkpoint_steps=4', '--learning_rate=0.1',
      '--warmup_epochs=0', '--weight_decay=0', f'--model_dir={model_dir}'])
  return model_dir


def test_finetune_from_the_pretrained_checkpoint_on_ten_percent(
    pretrained, finetuned):
  subset_files = [f for f in os.listdir(finetuned)
                  if f.startswith('label_subset')]
  assert len(subset_files) == 1
  with open(os.path.join(finetuned, subset_files[0])) as f:
    ids = [line for line in f.read().split('\n') if line]
  # 10% of the 1,438 training digits, class-balanced.
  assert 130 <= len(ids) <= 150
  result = read_json(os.path.join(finetuned, 'result.json'))
  assert result['global_step'] == 4
  config = json.loads(open(os.path.join(finetuned,
                                        'model_config.json')).read())
  assert config['ft_proj_selector'] == 1 and config['num_classes'] == 10
  # The encoder started from the pretrained weights: the first conv moved
  # only by 4 small steps away from them.
  before = simclr.load_model(pretrained).resnet.stem.conv.conv2d.kernel
  after = simclr.load_model(finetuned).resnet.stem.conv.conv2d.kernel
  random = simclr.build_model(simclr.load_model(finetuned).config)
  assert (np.abs(after - before).mean() <
          0.2 * np.abs(random.resnet.stem.conv.conv2d.kernel - before).mean())


@pytest.fixture(scope='module')
def distilled(finetuned, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('distill'))
  run_cli(COMMON + [
      data_dir_flag(tmp_path_factory), '--train_mode=distill',
      f'--teacher_checkpoint={finetuned}', '--width_multiplier=0.125',
      '--train_steps=4', '--checkpoint_steps=4', '--distill_temperature=0.1',
      f'--model_dir={model_dir}'])
  return model_dir


def test_distill_into_a_smaller_student_then_eval(distilled,
                                                  tmp_path_factory):
  student = simclr.load_model(distilled)
  assert student.config.width_multiplier == 0.125
  assert student.projection_head is None  # ft_proj_selector=0: no head
  metrics = read_json(os.path.join(distilled, 'train_metrics.json'))
  assert np.isfinite(metrics['train/distill_loss'])
  assert not os.path.exists(os.path.join(distilled, 'result.json'))
  run_cli(COMMON + [
      data_dir_flag(tmp_path_factory), '--mode=eval', '--train_mode=distill',
      '--teacher_checkpoint=' + distilled, '--width_multiplier=0.125',
      '--train_steps=4', f'--model_dir={distilled}'])
  result = read_json(os.path.join(distilled, 'result.json'))
  assert result['global_step'] == 4
  assert result['eval/num_examples'] == 359


def test_strict_restore_refuses_a_mismatched_checkpoint(pretrained,
                                                        tmp_path_factory):
  proc = run_cli(COMMON + [
      data_dir_flag(tmp_path_factory), '--train_mode=finetune',
      f'--checkpoint={pretrained}', '--resnet_depth=34', '--train_steps=1',
      '--model_dir=' + str(tmp_path_factory.mktemp('mismatch'))], check=False)
  assert proc.returncode == 2
  assert 'resnet_depth' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_missing_checkpoint_fails_before_any_computation(tmp_path):
  proc = run_cli(COMMON + ['--train_mode=finetune',
                           f'--checkpoint={tmp_path}/nothing',
                           f'--model_dir={tmp_path}/m'], check=False)
  assert proc.returncode == 2
  assert '--checkpoint' in proc.stderr and 'does not exist' in proc.stderr


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _read_tensors(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def _assert_same_tensors(first, second):
  """Two checkpoints' tensors ({key: array}) are equal, key for key, and
  the model's convolution kernels are among them."""
  assert first.keys() == second.keys()
  kernels = 0
  for key, value in first.items():
    np.testing.assert_array_equal(value, second[key], err_msg=key)
    kernels += key.endswith('conv2d/kernel/.ATTRIBUTES/VARIABLE_VALUE')
  assert kernels > 10  # The model's weights are among the compared tensors.


def _start_workers(args_of, ports, log_dir, attempt):
  """Starts the 2 workers of a localhost cluster; worker 1's output is piped
  (stdout and stderr together), worker 0's goes to a file."""
  cluster = {'worker': [f'localhost:{p}' for p in ports]}
  procs = []
  for index in range(2):
    tf_config = json.dumps({'cluster': cluster,
                            'task': {'type': 'worker', 'index': index}})
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_CONFIG=tf_config)
    out = (subprocess.PIPE if index == 1 else
           open(os.path.join(log_dir, f'worker0_{attempt}.log'), 'w'))
    procs.append(subprocess.Popen(
        [sys.executable, RUN] + args_of(index), env=env, cwd=ROOT,
        stdout=out, stderr=subprocess.STDOUT, text=True))
  return procs


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_resumes(
    tmp_path_factory):
  base = str(tmp_path_factory.mktemp('multi_worker_preemption'))
  data_dir = data_dir_flag(tmp_path_factory)
  digits.prepare(data_dir.split('=', 1)[1])
  total = 12
  model_dirs = [os.path.join(base, f'worker{i}') for i in range(2)]

  def args_of(index):  # The same command for both attempts.
    return [
        '--dataset=digits', '--eval_split=test', '--image_size=16',
        '--resnet_depth=18', '--width_multiplier=0.125',
        '--train_batch_size=16', '--use_tpu=False', '--seed=1', data_dir,
        '--train_mode=pretrain', f'--train_steps={total}',
        '--checkpoint_steps=1000', '--steps_per_loop=1',
        '--lineareval_while_pretraining=False',
        f'--model_dir={model_dirs[index]}']

  procs = _start_workers(args_of, _free_ports(2), base, 'first')
  seen = []
  for line in procs[1].stdout:
    seen.append(line)
    if f'step 2/{total}' in line:
      procs[1].send_signal(signal.SIGTERM)  # Worker 1 only.
      break
  output1 = ''.join(seen) + procs[1].stdout.read()
  for proc in procs:
    proc.wait(timeout=TIMEOUT)
  with open(os.path.join(base, 'worker0_first.log')) as f:
    output0 = f.read()
  assert procs[0].returncode == 143, output0[-4000:]
  assert procs[1].returncode == 143, output1[-4000:]
  # Both saved one checkpoint (no periodic one was due), of the same step.
  steps = [checkpoint_steps(d) for d in model_dirs]
  assert len(steps[0]) == 1 and steps[0] == steps[1], steps
  saved = steps[0][0]
  assert 2 <= saved < total
  assert (f'error: SIGTERM received: saved a checkpoint at step {saved}'
          in output1)
  assert (f'error: another worker received SIGTERM or SIGINT: saved a '
          f'checkpoint at step {saved}' in output0)
  first = [_read_tensors(os.path.join(d, f'ckpt-{saved}')) for d in model_dirs]
  assert first[0]['global_step/.ATTRIBUTES/VARIABLE_VALUE'] == saved

  # The same command on both workers (a new pair of ports: the old ones may
  # still be held by the system) resumes from that step to the last.
  procs = _start_workers(args_of, _free_ports(2), base, 'second')
  output1 = procs[1].communicate(timeout=TIMEOUT)[0]
  procs[0].wait(timeout=TIMEOUT)
  with open(os.path.join(base, 'worker0_second.log')) as f:
    output0 = f.read()
  for proc, output in zip(procs, (output0, output1)):
    assert proc.returncode == 0, output[-4000:]
    assert 'Resumed from' in output and f'steps {saved} -> {total}' in output
  final = [_read_tensors(os.path.join(d, f'ckpt-{total}')) for d in model_dirs]
  _assert_same_tensors(*final)
  # The workers' all-reduced steps agree on the loss too.
  losses = [read_json(os.path.join(d, 'train_metrics.json'))
            ['train/total_loss'] for d in model_dirs]
  assert np.isfinite(losses[0])
  assert losses[0] == pytest.approx(losses[1], rel=1e-6)
  assert final[0]['global_step/.ATTRIBUTES/VARIABLE_VALUE'] == total
  # Training went on from the saved weights: they moved since.
  kernel = next(k for k in final[0] if k.endswith(
      'conv2d/kernel/.ATTRIBUTES/VARIABLE_VALUE'))
  assert not np.array_equal(final[0][kernel], first[0][kernel])


def test_deterministic_runs_give_identical_weights(tmp_path_factory):
  args = [
      '--dataset=digits', '--eval_split=test', '--image_size=16',
      '--resnet_depth=18', '--width_multiplier=0.125',
      '--train_batch_size=16', '--use_tpu=False', '--deterministic',
      data_dir_flag(tmp_path_factory), '--train_mode=pretrain',
      '--train_steps=3', '--steps_per_loop=1', '--memory_size=64',
      '--use_flip=False', '--crop_min_area=0.3']
  tensors = []
  for name in ('first', 'second'):
    model_dir = str(tmp_path_factory.mktemp(f'deterministic_{name}'))
    run_cli(args + [f'--model_dir={model_dir}'])
    tensors.append(_read_tensors(tf.train.latest_checkpoint(model_dir)))
    assert read_json(os.path.join(model_dir, 'flags.json'))['seed'] == 0
  _assert_same_tensors(*tensors)


def test_cached_linear_eval_of_the_pretrained_encoder(pretrained,
                                                      tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('linear_eval'))
  run_cli(COMMON + [
      data_dir_flag(tmp_path_factory), '--train_mode=linear_eval',
      '--mode=train_then_eval', f'--checkpoint={pretrained}',
      f'--model_dir={model_dir}'])
  result = read_json(os.path.join(model_dir, 'result.json'))
  assert result['global_step'] == 1  # One fit.
  assert result['eval/label_top_1_accuracy'] == pytest.approx(
      recount_top1(model_dir, tmp_path_factory), abs=1e-6)
  # The encoder is the pretrained one, untouched (compared variable by
  # variable at their published paths: frozen layers list theirs in another
  # order).
  from simclr import checkpoints  # pylint: disable=g-import-not-at-top
  before, after = [{path: v.numpy() for v, path in checkpoints.published_paths(
      simclr.load_model(d)) if path.startswith('resnet_model/')}
                   for d in (pretrained, model_dir)]
  assert before.keys() == after.keys() and len(before) > 50
  for path, value in before.items():
    np.testing.assert_array_equal(value, after[path], err_msg=path)
