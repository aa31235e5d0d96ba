"""simclr.cpu: the CPU flags recorded with speed figures, and the warning a
bfloat16 run gives on a CPU without native bfloat16."""

import functools
import logging

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
