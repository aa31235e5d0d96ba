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
# matmuls; without either, bfloat16 is emulated through float32.
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


# TensorFlow (2.9 and later, Linux x86) uses its oneDNN kernels by default only
# on CPUs with one of these; TF_ENABLE_ONEDNN_OPTS decides otherwise.
ONEDNN_DEFAULT_FLAGS = ('avx512_vnni', 'avx512_bf16', 'amx_tile')


def onednn(path: str = '/proc/cpuinfo') -> bool:
  """Whether TensorFlow in this process runs its oneDNN kernels: as
  TF_ENABLE_ONEDNN_OPTS says when it is set (this package sets it to 1 unless
  the user did, simclr/__init__.py), else TensorFlow's default for this CPU.
  TensorFlow reads the variable once, at its import."""
  value = os.environ.get('TF_ENABLE_ONEDNN_OPTS')
  if value is not None:
    return value.strip().lower() not in ('0', 'false', 'off', 'no', '')
  _, flags = _cpuinfo(path)
  return any(f in (flags or []) for f in ONEDNN_DEFAULT_FLAGS)


def bfloat16_speedup(repeats: int = 3) -> float:
  """float32 time / bfloat16 time of a ResNet-like 3x3 convolution (batch 8,
  28x28, 128 -> 128 channels), forward and backward, best of `repeats`:
  above 1, bfloat16 is faster on this machine. About two seconds."""
  import time  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seconds = {}
  for dtype in (tf.float32, tf.bfloat16):
    images = tf.cast(tf.random.stateless_uniform([8, 28, 28, 128], [0, 1]),
                     dtype)
    kernel = tf.cast(tf.random.stateless_uniform([3, 3, 128, 128], [0, 2]),
                     dtype)

    @tf.function
    def step(x, k):
      with tf.GradientTape() as tape:
        tape.watch(k)
        y = tf.reduce_sum(tf.nn.conv2d(x, k, 1, 'SAME'))
      return tape.gradient(y, k)

    step(images, kernel).numpy()  # Traces and warms up.
    best = float('inf')
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(5):
        step(images, kernel).numpy()
      best = min(best, time.perf_counter() - start)
    seconds[dtype.name] = best
  return seconds['float32'] / seconds['bfloat16']


def bfloat16_warning(path: str = '/proc/cpuinfo',
                     speedup: Optional[float] = None) -> Optional[str]:
  """One line for a bfloat16 run on this CPU when bfloat16 is slower than
  float32 here, else None. `speedup` (bfloat16_speedup(), measured when
  None) decides; the flags say why. Having AVX512_BF16 is not enough: on
  some such CPUs (no AMX) oneDNN's bfloat16 kernels were measured slower
  than its float32 ones (ResNet-18 0.69x, ResNet-50 0.72x, tools/bench.py)."""
  if speedup is None:
    speedup = bfloat16_speedup()
  if speedup >= 1:
    return None
  _, flags = _cpuinfo(path)
  if flags is None:
    why = 'its instruction sets could not be read'
  elif not any(f in flags for f in NATIVE_BF16_FLAGS):
    why = ('it has neither AVX512_BF16 nor AMX-BF16, so bfloat16 is '
           f'emulated (measured {EMULATED_BF16_SLOWDOWN} on such a CPU)')
  elif 'amx_bf16' not in flags:
    why = 'it has AVX512_BF16 but no AMX-BF16'
  else:
    why = 'although it has AMX-BF16'
  return (f'--precision=bfloat16: on this CPU a bfloat16 convolution ran at '
          f'{speedup:.2f}x the float32 speed just now ({why}); '
          f'--precision=float32 is faster here')
