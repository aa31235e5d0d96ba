"""What the host CPU offers for speed: its model name and the instruction-set
flags that decide how fast float32 and bfloat16 run (Linux /proc/cpuinfo;
elsewhere the flags are unknown and nothing is claimed)."""

import os
import platform
from typing import List, Optional, Tuple

# The flags worth recording beside a speed figure.
SPEED_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile', 'fma',
               'avx512_vnni')
# Either gives native bfloat16 arithmetic to oneDNN's convolutions and
# matmuls; without both, bfloat16 is emulated through float32.
NATIVE_BF16_FLAGS = ('avx512_bf16', 'amx_bf16')
# Measured with ResNet-18 (CIFAR, 32x32) on an AVX2-only AMD EPYC: a
# 14-step bfloat16 run had not finished after 10 minutes against about 2
# minutes in float32.
EMULATED_BF16_SLOWDOWN = 'more than 5x slower than float32'


def _cpuinfo(path: str = '/proc/cpuinfo') -> Tuple[Optional[str],
                                                   Optional[List[str]]]:
  """(model name, flags) of the first CPU listed, None for what is unknown."""
  model, flags = None, None
  try:
    with open(path) as f:
      for line in f:
        if line.startswith('model name') and model is None:
          model = line.split(':', 1)[1].strip()
        elif line.startswith('flags'):
          flags = line.split(':', 1)[1].split()
          break
  except OSError:
    pass
  return model, flags


def description(path: str = '/proc/cpuinfo'
                ) -> Tuple[str, Optional[int], List[str]]:
  """(CPU model name, core count, the SPEED_FLAGS it has) of this machine."""
  model, flags = _cpuinfo(path)
  present = [f for f in SPEED_FLAGS if f in (flags or [])]
  return model or platform.processor() or 'unknown', os.cpu_count(), present


def bfloat16_warning(path: str = '/proc/cpuinfo') -> Optional[str]:
  """One line for a bfloat16 run on this CPU when it lacks native bfloat16
  instructions, else None (None too when the flags cannot be read)."""
  _, flags = _cpuinfo(path)
  if flags is None or any(f in flags for f in NATIVE_BF16_FLAGS):
    return None
  return ('--precision=bfloat16: this CPU has neither AVX512_BF16 nor '
          'AMX-BF16, so bfloat16 is emulated (measured '
          f'{EMULATED_BF16_SLOWDOWN} on such a CPU); --precision=float32 is '
          'faster here')
