"""simclr.cpu: the CPU flags recorded with speed figures, the warning a
bfloat16 run gives on a CPU without native bfloat16, and whether TensorFlow
runs its oneDNN kernels (set before TensorFlow loads, by every script)."""

import functools
import json
import logging
import os
import subprocess
import sys

import pytest

from simclr import cpu

# Abridged /proc/cpuinfo of two machines of this kind.
AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 avx fma avx2 bmi2
"""
WITH_BF16 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse avx avx2 fma avx512f avx512_vnni avx512_bf16 avx512_fp16
"""
WITH_AMX = """model name\t: Intel(R) Xeon(R)
flags\t\t: avx2 avx512f amx_bf16 amx_tile
"""


def write(tmp_path, text):
  path = tmp_path / 'cpuinfo'
  path.write_text(text)
  return str(path)


def test_description_lists_the_speed_flags_present(tmp_path):
  model, _, flags = cpu.description(write(tmp_path, WITH_BF16))
  assert model == 'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz'
  assert flags == ['avx2', 'avx512f', 'avx512_bf16', 'fma', 'avx512_vnni']
  model, _, flags = cpu.description(write(tmp_path, AVX2_ONLY))
  assert (model, flags) == ('AMD EPYC 7B12', ['avx2', 'fma'])


@pytest.mark.parametrize('text,speedup,why', [
    (AVX2_ONLY, 0.2, 'neither AVX512_BF16 nor AMX-BF16'),
    (WITH_BF16, 0.69, 'has AVX512_BF16 but no AMX-BF16'),
    (WITH_AMX, 0.9, 'although it has AMX-BF16'),
    (WITH_BF16, 1.8, None),
    (WITH_AMX, 2.0, None),
])
def test_bfloat16_warning_when_measured_slower_with_the_reason(
    tmp_path, text, speedup, why):
  warning = cpu.bfloat16_warning(write(tmp_path, text), speedup=speedup)
  if why is None:
    assert warning is None
  else:
    assert why in warning and f'{speedup:.2f}x' in warning
    assert '--precision=float32' in warning and '\n' not in warning


def test_unreadable_cpuinfo_claims_no_flags(tmp_path):
  absent = str(tmp_path / 'absent')
  assert 'could not be read' in cpu.bfloat16_warning(absent, speedup=0.5)
  assert cpu.bfloat16_warning(absent, speedup=1.5) is None
  _, _, flags = cpu.description(absent)
  assert flags == []


def test_bfloat16_speedup_is_a_finite_positive_ratio():
  speedup = cpu.bfloat16_speedup(repeats=1)
  assert 0 < speedup < float('inf')


def test_a_bfloat16_run_on_an_avx2_cpu_logs_the_warning_once(
    tmp_path, monkeypatch, caplog):
  from simclr.tasks import runner  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  policy = tf_keras.mixed_precision.global_policy()
  path = write(tmp_path, AVX2_ONLY)
  monkeypatch.setattr(cpu, 'bfloat16_warning',
                      functools.partial(cpu.bfloat16_warning, path,
                                        speedup=0.3))
  try:
    with caplog.at_level(logging.WARNING):
      runner.set_precision('bfloat16')
      runner.set_precision('float32')
      runner.set_precision('bfloat16', on_cpu=False)
    assert tf_keras.mixed_precision.global_policy().name == 'mixed_bfloat16'
  finally:
    tf_keras.mixed_precision.set_global_policy(policy)
  warnings = [r for r in caplog.records if 'AVX512_BF16' in r.getMessage()]
  assert len(warnings) == 1


ONEDNN_PROBE = r'''
import importlib.abc, json, os, runpy, sys
os.environ.pop('TF_ENABLE_ONEDNN_OPTS', None)
seen = {}
class Watch(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' and 'at_tensorflow' not in seen:
      seen['at_tensorflow'] = os.environ.get('TF_ENABLE_ONEDNN_OPTS')
    return None
sys.meta_path.insert(0, Watch())
sys.argv = [sys.argv[1], '--helpshort']
try:
  runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit:
  pass
print(json.dumps([seen.get('at_tensorflow', 'not imported'),
                  os.environ.get('TF_ENABLE_ONEDNN_OPTS')]))
'''


def entry_scripts():
  root = os.path.join(os.path.dirname(__file__), '..')
  for folder in ('tf2', 'tools'):
    for name in sorted(os.listdir(os.path.join(root, folder))):
      if not name.endswith('.py'):
        continue
      path = os.path.join(root, folder, name)
      with open(path) as f:
        if "__name__ == '__main__'" in f.read():
          yield path


def test_onednn_follows_the_variable_and_else_the_cpus_default(
    tmp_path, monkeypatch):
  monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
  assert not cpu.onednn(write(tmp_path, AVX2_ONLY))
  assert cpu.onednn(write(tmp_path, WITH_BF16))
  assert cpu.onednn(write(tmp_path, WITH_AMX))
  monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '0')
  assert not cpu.onednn(write(tmp_path, WITH_BF16))
  monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '1')
  assert cpu.onednn(write(tmp_path, AVX2_ONLY))


def test_every_script_sets_onednn_before_tensorflow_loads():
  """TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at its import: each script
  of tf2/ and tools/ must import the package (which sets it) before
  TensorFlow, so that its runs use oneDNN on every CPU. Runs each script with
  --helpshort (absl prints the flags and exits before main) in a fresh
  interpreter with the variable unset."""
  late = []
  for script in entry_scripts():
    result = subprocess.run(
        [sys.executable, '-c', ONEDNN_PROBE, script], capture_output=True,
        text=True, timeout=300,
        env={k: v for k, v in os.environ.items()
             if k != 'TF_ENABLE_ONEDNN_OPTS'})
    assert result.returncode == 0, (script, result.stderr[-2000:])
    at_tensorflow, after = json.loads(result.stdout.splitlines()[-1])
    if at_tensorflow not in ('1', 'not imported') or after != '1':
      late.append((os.path.basename(script), at_tensorflow, after))
  assert not late, late
