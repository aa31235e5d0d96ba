"""tools/study.py end to end at a toy size (two steps per stage, two widths,
one label fraction, a one-layer head): every section's table rows are
produced, results.json and study.md agree, a second run reuses every stage,
and bad flags stop it with one line."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

STUDY = os.path.join(os.path.dirname(__file__), '..', 'tools', 'study.py')
TOY = ['--scale=0.001', '--widths=0.0625,0.125', '--label_fractions=0.1',
       '--subsets=1', '--head_layers=1', '--head_width=0.0625']


def run_study(out, data_dir, *extra):
  return subprocess.run(
      [sys.executable, STUDY, f'--out={out}', f'--data_dir={data_dir}'] +
      TOY + list(extra), capture_output=True, text=True, timeout=1500,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


@pytest.fixture(scope='module')
def study(tmp_path_factory, digits_dir):
  out = tmp_path_factory.mktemp('study') / 'out'
  proc = run_study(out, digits_dir)
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = json.loads((out / 'results.json').read_text())
  return out, proc.stdout, results


def rows_of(results, **match):
  return [r for r in results['rows']
          if all(r.get(k) == v for k, v in match.items())]


def test_every_section_has_its_rows(study):
  _, _, results = study
  for width in (0.0625, 0.125):
    assert rows_of(results, method='simclr_finetune', width=width,
                   label_fraction=0.1, head_layers=3, selector=1)
    assert rows_of(results, method='supervised', width=width,
                   label_fraction=0.1)
    assert rows_of(results, method='simclr_linear_eval', width=width)
  for method in ('raw_pixels_logistic_regression', 'raw_pixels_knn'):
    assert rows_of(results, method=method, label_fraction=0.1)
  # A random encoder of the largest width, under the same linear evaluation.
  assert [r['width'] for r in rows_of(
      results, method='random_encoder_linear_eval')] == [0.125]
  for selector in (0, 1):   # Section 2: a one-layer head, both layers.
    assert rows_of(results, method='simclr_finetune', width=0.0625,
                   head_layers=1, selector=selector)
  for method in ('label + distillation (labeled images)',
                 'label + distillation (labeled + unlabeled images)',
                 'distillation only (labeled + unlabeled images)'):
    assert len(rows_of(results, section='3', method=method)) == 1
  assert {r['width'] for r in rows_of(results, section='4',
                                      method='simclr_distill')} == {
                                          0.0625, 0.125}
  for row in results['rows']:
    assert 0 <= row['top1'] <= row['top5'] <= 1
  assert results['machine']['tensorflow']


def test_markdown_cells_are_the_json_means(study):
  out, _, results = study
  text = (out / 'study.md').read_text()
  for title in ('## 1.', '## 2.', '## 3.', '## 4.'):
    assert title in text

  def cell(rows):
    top1 = np.array([r['top1'] for r in rows])
    return f'{100 * top1.mean():.1f} ({len(rows)})'
  # Section 1: each width's fine-tuning and supervised cells.
  for width in (0.0625, 0.125):
    simclr = rows_of(results, method='simclr_finetune', width=width,
                     head_layers=3, selector=1, label_fraction=0.1)
    supervised = rows_of(results, method='supervised', width=width,
                         label_fraction=0.1)
    line = next(l for l in text.splitlines()
                if l.startswith(f'| 10% | {width:g}x |'))
    assert cell(simclr) in line and cell(supervised) in line
  line = next(l for l in text.splitlines() if 'random encoder 0.125x' in l)
  assert cell(rows_of(results, method='random_encoder_linear_eval')) in line
  # Section 2: one line per layer fine-tuned from.
  for selector, where in ((0, 'head input'), (1, 'layer 1 (output)')):
    rows = rows_of(results, method='simclr_finetune', width=0.0625,
                   head_layers=1, selector=selector)
    assert f'| 1 | {where} | {cell(rows)} |' in text
  # Section 3: the targets' rows.
  for method in ('label + distillation (labeled images)',
                 'distillation only (labeled + unlabeled images)'):
    assert (f'| {method} | {cell(rows_of(results, section="3", method=method))} |'
            in text)
  # Section 4: the self-distilled teacher width.
  rows = rows_of(results, section='4', method='simclr_distill', width=0.125)
  line = next(l for l in text.splitlines() if '0.125x (self)' in l)
  assert cell(rows) in line


def test_plots_are_written(study):
  out, _, _ = study
  for name in ('size.png', 'head.png', 'targets.png', 'distillation.png'):
    assert (out / name).stat().st_size > 1000


def test_progress_lines_count_the_stages(study):
  _, stdout, results = study
  lines = [l for l in stdout.splitlines() if l.startswith('stage ')]
  total = int(re.search(r'study: (\d+) stages', stdout).group(1))
  assert len(lines) == total
  assert lines[-1].startswith(f'stage {total}/{total} ')
  assert all('elapsed, about' in l for l in lines)


def test_a_second_run_reuses_every_stage(study, digits_dir):
  out, _, results = study
  proc = run_study(out, digits_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('stage ')]
  assert lines and all('done before' in l for l in lines)
  again = json.loads((out / 'results.json').read_text())
  assert [r['top1'] for r in again['rows']] == [r['top1'] for r in
                                                results['rows']]


@pytest.mark.parametrize('flag, named', [
    ('--widths=a', '--widths'), ('--sections=5', '--sections'),
    ('--head_layers=1.5', '--head_layers'), ('--subsets=0', '--subsets'),
    ('--dataset=mnist', '--dataset')])
def test_bad_flags_stop_with_one_line(tmp_path, flag, named):
  proc = subprocess.run([sys.executable, STUDY, f'--out={tmp_path}/o', flag],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ')
  assert named in lines[0]


def test_a_stage_whose_settings_changed_starts_afresh(tmp_path, monkeypatch):
  # experiment.run_stage with training replaced by a recorder: what it finds
  # in model_dir when it trains, and whether it trains at all.
  import simclr  # pylint: disable=g-import-not-at-top
  from tools import experiment  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / 'stage'
  seen = []

  def train(on_progress=None, **values):
    del on_progress
    # Stages share one process: tf.data's autotuner is off (its thread
    # delays the release of each finished pipeline), without being recorded
    # as a setting of the stage (it changes speed, not results).
    assert values['input_autotune'] is False
    seen.append(sorted(os.listdir(values['model_dir'])))
    (model_dir / 'result.json').write_text(json.dumps({'top1': 0.5}))
    return {'top1': 0.5}

  monkeypatch.setattr(simclr, 'train', train)
  monkeypatch.setattr(simclr, 'load_model', lambda path: None)
  monkeypatch.setattr(experiment, 'encoder_params', lambda model: 7)
  old = dict(model_dir=str(model_dir), train_steps=600, learning_rate=0.4)
  new = dict(old, learning_rate=0.1)

  # Killed midway: stage.json names its settings, a checkpoint is there.
  model_dir.mkdir()
  (model_dir / 'stage.json').write_text(json.dumps(
      {'flags': experiment._jsonable(old)}))  # pylint: disable=protected-access
  (model_dir / 'ckpt-300.index').write_text('')
  # The same settings again resume from that checkpoint ...
  assert experiment.run_stage(old) == ({'top1': 0.5}, 7, False)
  assert 'ckpt-300.index' in seen[-1]
  # ... and, finished, are not run a second time.
  assert experiment.run_stage(old) == ({'top1': 0.5}, 7, True)
  assert len(seen) == 1
  # Changed settings never resume from the other configuration's files.
  (model_dir / 'ckpt-600.index').write_text('')
  assert experiment.run_stage(new) == ({'top1': 0.5}, 7, False)
  assert seen[-1] == ['stage.json']
  recorded = json.loads((model_dir / 'stage.json').read_text())
  assert recorded == {'flags': experiment._jsonable(new), 'params': 7}  # pylint: disable=protected-access
