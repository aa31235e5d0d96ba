"""SimCLR / SimCLRv2 in TensorFlow 2 with the Keras 2 API (tf_keras).

Public API: ModelConfig, build_model, load_model, export_saved_model, losses,
train. Names are resolved on first use, so that `import simclr.configs`
(flag values -> configs) does not import TensorFlow.
"""

import importlib
import os

# TensorFlow's oneDNN kernels on every x86 CPU, read once when TensorFlow is
# first imported. TensorFlow 2.20 turns them on by itself only on CPUs with
# AVX-512 VNNI, AVX-512 BF16 or AMX; elsewhere (an AVX2-only AMD EPYC, say) it
# uses its Eigen convolutions, whose gradients at the small maps of small
# images ran up to 17 times slower than the forward pass, and the small
# networks' training step 2.5 times slower than with oneDNN (bench/NOTES.md).
# A value the user set, 0 included, is kept. Importing this package before
# TensorFlow is what applies it; the project's scripts do.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

from simclr.configs import ModelConfig  # noqa: E402  pylint: disable=wrong-import-position

# Public name -> (module, attribute; None for the module itself).
_LAZY = {
    'OUTPUT_KEYS': ('simclr.models.simclr_model', 'OUTPUT_KEYS'),
    'SimCLRModel': ('simclr.models.simclr_model', 'SimCLRModel'),
    'build_model': ('simclr.models.simclr_model', 'build_model'),
    'load_model': ('simclr.checkpoints', 'load_model'),
    'export_saved_model': ('simclr.export', 'export_saved_model'),
    'export_onnx': ('simclr.onnx_export', 'export_onnx'),
    'train': ('simclr.tasks.runner', 'train'),
    'losses': ('simclr.losses', None),
    'checkpoints': ('simclr.checkpoints', None),
}

__all__ = ['ModelConfig'] + sorted(_LAZY)


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module_name, attribute = _LAZY[name]
  module = importlib.import_module(module_name)
  value = module if attribute is None else getattr(module, attribute)
  globals()[name] = value
  return value
