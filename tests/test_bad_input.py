"""Bad input to the command lines under tf2/ and tools/: one line on
stderr, `error: ...` naming the flag or file, exit code 2, no traceback,
before any training (docs/failure.md, Bad input). One parametrised sweep;
most cases fail before TensorFlow does real work (many before it is
imported)."""

import os
import re
import types

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.join(os.path.dirname(__file__), '..')
TINY = ['--dataset=digits', '--resnet_depth=18', '--width_multiplier=0.125',
        '--image_size=16', '--train_batch_size=16', '--use_tpu=False',
        '--train_steps=2', '--eval_split=test']


@pytest.fixture(scope='module')
def places(tmp_path_factory, digits_dir):
  """Paths the cases refer to by name ({file}, {junk}, ...)."""
  base = tmp_path_factory.mktemp('bad_input')
  (base / 'plain.txt').write_text('not a model')
  junk = base / 'junk'
  junk.mkdir()
  (junk / 'readme.txt').write_text('not a model')
  (base / 'empty').mkdir()
  images = base / 'images' / 'cat'
  images.mkdir(parents=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i in range(2):
    Image.fromarray(np.full([8, 8, 3], 40 * i, np.uint8)).save(
        images / f'{i}.png')
  # A checkpoint of another architecture than TINY's (width 0.25).
  import simclr  # pylint: disable=g-import-not-at-top
  model = simclr.build_model(simclr.ModelConfig(
      resnet_depth=18, width_multiplier=0.25, image_size=16, num_classes=10,
      global_bn=False))
  other = base / 'r18_w025'
  other.mkdir()
  tf.train.Checkpoint(model=model).write(str(other / 'ckpt'))
  (other / 'model_config.json').write_text(model.config.to_json())
  return dict(tmp=str(base), file=str(base / 'plain.txt'), junk=str(junk),
              empty=str(base / 'empty'), images=str(base / 'images'),
              other=str(other), digits=digits_dir)


def run(script, *args):
  """(script, extra args) with TINY flags, a data_dir and a model_dir."""
  return (script, TINY + ['--data_dir={digits}', '--model_dir={tmp}/model'] +
          list(args))


def script_path(script):
  """tf2/ holds the commands users run, tools/ the project's own."""
  for folder in ('tf2', 'tools'):
    path = os.path.join(ROOT, folder, script)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(script)


def plain(script, *args):
  return (script, list(args))


KNN = ['--dataset=digits', '--data_dir={digits}', '--checkpoint={other}']
EXTRACT = KNN + ['--out={tmp}/features.npz', '--split=test']

# id -> ((script, args), text the error line must contain). Arguments and
# texts are formatted with the places fixture.
CASES = {
    # A stray word on the command line (cli_checks.run, every script).
    **{f'stray_argument_{script[:-3]}': (plain(script, 'stray'),
                                         "unexpected arguments ['stray']")
       for script in ('run.py', 'knn_eval.py', 'extract_features.py',
                      'show_embedding.py', 'show_augmentations.py',
                      'model_zoo.py', 'export_onnx.py', 'demo.py',
                      'study.py', 'bench.py', 'bench_input.py',
                      'bench_memory.py', 'bench_profile.py')},
    # tf2/run.py
    'run_unknown_dataset': (run('run.py', '--dataset=no_such_dataset'),
                            '--dataset=no_such_dataset'),
    'run_missing_folder': (run('run.py', '--dataset=folder:/no/such/folder'),
                           '--dataset=folder:/no/such/folder'),
    'run_folder_without_images': (run('run.py', '--dataset=folder:{empty}'),
                                  '--dataset=folder:{empty}'),
    'run_unprepared_tfds': (
        ('run.py', TINY[1:] + ['--dataset=mnist', '--data_dir={tmp}/no_tfds',
                               '--model_dir={tmp}/model']),
        'tfds build mnist'),
    'run_published_eval_split': (
        ('run.py', [a for a in TINY if a != '--eval_split=test'] + [
            '--data_dir={digits}', '--model_dir={tmp}/model',
            '--mode=train_then_eval']),
        '--eval_split=validation'),
    'run_unknown_train_split': (run('run.py', '--train_split=training'),
                                '--train_split=training'),
    'run_malformed_slice': (run('run.py', '--train_split=train[:90%'),
                            '--train_split=train[:90%'),
    'run_empty_slice': (run('run.py', '--train_split=train[5:5]'),
                        '--train_split=train[5:5]'),
    'run_folder_split': (run('run.py', '--dataset=folder:{images}',
                             '--mode=train_then_eval'),
                         '--eval_split=test'),
    'run_model_dir_under_a_file': (run('run.py', '--model_dir={file}/model'),
                                   '--model_dir'),
    'run_model_dir_is_a_file': (run('run.py', '--model_dir={file}'),
                                'is a file'),
    'run_data_dir_is_a_file': (run('run.py', '--data_dir={file}'),
                               '--data_dir'),
    'run_checkpoint_is_a_file': (
        run('run.py', '--train_mode=finetune', '--checkpoint={file}'),
        '--checkpoint: {file}: is a file'),
    'run_missing_checkpoint': (
        run('run.py', '--train_mode=finetune', '--checkpoint=/no/such/ckpt'),
        '--checkpoint'),
    'run_checkpoint_dir_without_model': (
        run('run.py', '--train_mode=finetune', '--checkpoint={junk}'),
        'readme.txt'),
    'run_missing_teacher': (
        run('run.py', '--train_mode=distill',
            '--teacher_checkpoint=/no/such/teacher'),
        '--teacher_checkpoint'),
    'run_teacher_is_a_file': (
        run('run.py', '--train_mode=distill', '--teacher_checkpoint={file}'),
        '--teacher_checkpoint: {file}: is a file'),
    'run_architecture_mismatch': (
        run('run.py', '--train_mode=finetune', '--checkpoint={other}'),
        'width_multiplier'),
    'run_missing_label_subset_file': (
        run('run.py', '--train_mode=finetune',
            '--label_subset_file=/no/such/ids.txt'),
        '--label_subset_file'),
    'run_label_subset_file_of_other_ids': (
        run('run.py', '--train_mode=finetune', '--label_subset_file={file}'),
        '--label_subset_file'),
    'run_batch_not_divisible': (
        run('run.py', '--num_logical_cpus=2', '--train_batch_size=15'),
        '--train_batch_size'),
    'run_memory_size': (run('run.py', '--memory_size=100'), '--memory_size'),
    'run_temperature': (run('run.py', '--temperature=0'), '--temperature'),
    'run_image_size': (run('run.py', '--image_size=4'), '--image_size'),
    'run_label_fraction_above_one': (run('run.py',
                                         '--train_label_fraction=1.5'),
                                     '--train_label_fraction'),
    'run_label_fraction_zero': (run('run.py', '--train_label_fraction=0'),
                                '--train_label_fraction'),
    'run_precision': (run('run.py', '--precision=float8'), '--precision'),
    'run_not_an_integer': (run('run.py', '--train_steps=abc'),
                           '--train_steps'),
    'run_unknown_flag': (run('run.py', '--no_such_flag=1'), 'no_such_flag'),
    'run_positional_argument': (run('run.py', 'stray'), 'stray'),
    'run_block_beyond_four': (run('run.py', '--train_mode=finetune',
                                  '--fine_tune_after_block=5'),
                              '--fine_tune_after_block'),
    'run_frozen_block_in_pretraining': (run('run.py',
                                            '--fine_tune_after_block=2'),
                                        '--fine_tune_after_block'),
    'run_selector_beyond_head': (run('run.py', '--num_proj_layers=2',
                                     '--ft_proj_selector=3'),
                                 '--ft_proj_selector'),
    'run_eval_without_checkpoint': (run('run.py', '--mode=eval',
                                        '--train_mode=finetune'),
                                    '--model_dir'),
    'run_knn_k_beyond_bank': (run('run.py', '--knn_eval_steps=1',
                                  '--knn_k=5000'),
                              '--knn_k'),
    # tf2/knn_eval.py
    'knn_no_checkpoint': (plain('knn_eval.py', '--dataset=digits'),
                          '--checkpoint'),
    'knn_checkpoint_is_a_file': (
        plain('knn_eval.py', '--dataset=digits', '--checkpoint={file}'),
        '--checkpoint: {file}: is a file'),
    'knn_published_eval_split': (plain('knn_eval.py', *KNN),
                                 '--eval_split'),
    'knn_out_is_a_directory': (
        plain('knn_eval.py', *KNN, '--eval_split=test', '--out={tmp}'),
        '--out: {tmp}: is a directory'),
    'knn_k_zero': (plain('knn_eval.py', *KNN, '--eval_split=test', '--k=0'),
                   '--k'),
    # tf2/extract_features.py
    'extract_no_out': (plain('extract_features.py', *KNN), '--out'),
    'extract_unknown_split': (
        plain('extract_features.py', *EXTRACT, '--split=validation'),
        '--split'),
    'extract_out_under_a_file': (
        plain('extract_features.py', *EXTRACT, '--out={file}/f.npz'),
        '--out: {file}/f.npz'),
    'extract_missing_checkpoint': (
        plain('extract_features.py', *EXTRACT, '--checkpoint=/no/such'),
        '--checkpoint'),
    # tf2/show_embedding.py
    'embedding_missing_features': (
        plain('show_embedding.py', '--features=/no/such.npz',
              '--out={tmp}/e.png'),
        '--features: /no/such.npz'),
    'embedding_features_not_npz': (
        plain('show_embedding.py', '--features={file}', '--out={tmp}/e.png'),
        '--features: {file}'),
    'embedding_unknown_method': (
        plain('show_embedding.py', '--features={file}', '--method=umap'),
        '--method'),
    'embedding_out_is_a_directory': (
        plain('show_embedding.py', '--features={file}', '--out={tmp}'),
        '--out: {tmp}'),
    # tf2/show_augmentations.py
    'augmentations_out_is_a_directory': (
        plain('show_augmentations.py', '--out={tmp}'), '--out: {tmp}'),
    'augmentations_unknown_dataset': (
        plain('show_augmentations.py', '--out={tmp}/a.png',
              '--dataset=no_such_dataset'),
        '--dataset'),
    'augmentations_unknown_split': (
        plain('show_augmentations.py', '--out={tmp}/a.png',
              '--dataset=digits', '--data_dir={digits}',
              '--split=validation'),
        '--split=validation'),
    'augmentations_no_views': (
        plain('show_augmentations.py', '--out={tmp}/a.png', '--num_views=0'),
        '--num_views'),
    'augmentations_crop_area': (
        plain('show_augmentations.py', '--out={tmp}/a.png',
              '--crop_min_area=2'),
        '--crop_min_area'),
    # tools/bench.py
    'bench_unknown_config': (plain('bench.py', '--configs=r99_64'),
                             '--configs'),
    'bench_unknown_precision': (plain('bench.py', '--precisions=float8'),
                                '--precisions'),
    'bench_xla_value': (plain('bench.py', '--xla=maybe'), '--xla'),
    'bench_no_repeats': (plain('bench.py', '--repeats=0'), '--repeats=0'),
    # tools/bench_profile.py
    'profile_unknown_config': (plain('bench_profile.py', '--config=r99_64'),
                               '--config'),
    'profile_no_steps': (plain('bench_profile.py', '--profile_steps=0'),
                         '--profile_steps=0'),
    'profile_logdir_under_a_file': (
        plain('bench_profile.py', '--logdir={file}/trace'),
        '--logdir: {file}/trace'),
    'bench_out_under_a_file': (plain('bench.py', '--out={file}/results.md'),
                               '--out: {file}/results.md'),
    'bench_missing_published_dir': (
        plain('bench.py', '--out={tmp}/results.md',
              '--published_tf2_dir=/no/such'),
        '--published_tf2_dir'),
    # tf2/model_zoo.py
    'zoo_malformed_variant': (plain('model_zoo.py', '--variants=50x1q'),
                              '--variants'),
    'zoo_unknown_depth': (plain('model_zoo.py', '--variants=42x1'),
                          '--variants: 42x1: resnet_depth=42'),
    # tools/demo.py (through tf2/cli_checks.check_demo_flags)
    'demo_out_is_a_file': (plain('demo.py', '--out={file}'), '--out'),
    'demo_seed_not_an_integer': (
        plain('demo.py', '--out={tmp}/demo', '--seeds=a'), '--seeds'),
    'demo_unsupported_fraction': (
        plain('demo.py', '--out={tmp}/demo', '--label_fractions=0.5'),
        '--label_fractions'),
    'demo_scale_zero': (plain('demo.py', '--out={tmp}/demo', '--scale=0'),
                        '--scale'),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_bad_input_is_one_error_line_naming_it_with_exit_code_2(case,
                                                                places,
                                                                scripts):
  (script, args), named = CASES[case]
  args = [a.format(**places) for a in args]
  named = named.format(**places)
  proc = scripts.run(script_path(script), args, cwd=ROOT, timeout=300,
                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  print(f'{script} {" ".join(args)}\n{proc.stderr[-2000:]}')
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines()
            if line.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert named in errors[0]
  # Nothing was trained.
  assert tf.train.latest_checkpoint(places['tmp'] + '/model') is None


DEMO_DEFAULTS = dict(out=None, data_dir=None, seeds=['0'], scale=1.0,
                     label_fractions=['0.01', '0.1'], stage_workers=2,
                     stage_threads=0)


@pytest.mark.parametrize('values, named', [
    (dict(out='{file}'), '--out: {file}: is a file'),
    (dict(data_dir='{file}/tfds'), '--data_dir: {file}/tfds'),
    (dict(seeds=['1', 'x']), "--seeds: 'x'"),
    (dict(seeds=[]), '--seeds'),
    (dict(scale=-1.0), '--scale=-1.0'),
    (dict(label_fractions=['0.5']), '--label_fractions: 0.5'),
    (dict(label_fractions=['ten']), "--label_fractions: 'ten'"),
    (dict(stage_workers=0), '--stage_workers=0'),
    (dict(stage_threads=-1), '--stage_threads=-1'),
])
def test_demo_flag_checks_exit_2_with_one_line_naming_the_flag(
    values, named, places, capsys):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  values = {k: (v.format(**places) if isinstance(v, str) else v)
            for k, v in values.items()}
  flags = types.SimpleNamespace(**dict(DEMO_DEFAULTS, **values))
  with pytest.raises(SystemExit) as exit_:
    cli_checks.check_demo_flags(flags, supported_fractions=(0.01, 0.1))
  assert exit_.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ')
  assert named.format(**places) in lines[0]


def test_demo_flag_checks_accept_the_defaults(places):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  out = os.path.join(places['tmp'], 'demo_out')
  cli_checks.check_demo_flags(
      types.SimpleNamespace(**dict(DEMO_DEFAULTS, out=out)),
      supported_fractions=(0.01, 0.1))
  assert os.path.isdir(out)


FLAG_SCRIPT = ('from absl import app, flags\n'
               'flags.DEFINE_integer("n", 1, "n")\n'
               'app.run(lambda argv: print("ran", flags.FLAGS.n))\n')


@pytest.mark.parametrize('source, args', [
    # A flag, a flag error, a stray argument (absl's exit codes and lines).
    (FLAG_SCRIPT, ['--n=5']),
    (FLAG_SCRIPT, ['--n=x']),
    (FLAG_SCRIPT, ['stray']),
    # An uncaught exception: its traceback, exit 1.
    ('import sys\nprint("out")\nprint("err", file=sys.stderr)\n'
     'raise ValueError("boom")\n', []),
    # sys.exit with a message: the message on stderr, exit 1.
    ('import sys\nprint("before")\nsys.exit("stopped: a message")\n', []),
    # TensorFlow at work, then a clean exit.
    ('import tensorflow as tf\nprint(tf.constant(2) + 3)\n', []),
])
def test_script_runner_gives_what_a_fresh_process_gives(source, args,
                                                        scripts, tmp_path):
  """tests/script_runner.py against `python script`: the same exit code,
  stdout and stderr lines, ignoring TensorFlow's C++ log lines (a fresh
  process logs its start-up)."""
  script = tmp_path / 'script.py'
  script.write_text(source)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  forked = scripts.run(str(script), args, env=env, cwd=str(tmp_path))
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  fresh = subprocess.run([sys.executable, str(script)] + args,
                         capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), timeout=300)

  def python_lines(text):
    return [l for l in text.splitlines()
            if not re.match(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [EWI] ', l)
            and not l.startswith('To enable the following instructions')]
  assert forked.returncode == fresh.returncode
  assert forked.stdout == fresh.stdout
  assert python_lines(forked.stderr) == python_lines(fresh.stderr)
