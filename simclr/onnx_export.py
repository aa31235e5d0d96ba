"""Exporting a SimCLRModel to ONNX, and measuring how closely the ONNX file
reproduces the tf_keras model.

    simclr.export_onnx(model, 'r50_1x_sk1.onnx')   # or a path load_model reads
    errors = parity(model, 'r50_1x_sk1.onnx', images)   # {key: rel. max diff}

The ONNX graph takes `images`, float32 [batch, H, W, 3] in [0, 1] (NHWC as
the SavedModels; batch is dynamic, H = W = the model's image_size unless
given), and returns one output per published key the model has, named as the
SavedModel's dict keys (`final_avg_pool`, `proj_head_output`, `logits_sup`,
`block_group4`, ...). It computes the model in inference mode
(`model(images, training=False)`): batch norm with its moving statistics.

The conversion is tf2onnx's (`tf2onnx.convert.from_function` on the traced
inference function; it folds the frozen graph's constants and keeps batch
norm as ONNX BatchNormalization, which onnxruntime fuses into the preceding
convolution). Written here is only what tf2onnx leaves to its caller:
checking that every node is a standard ONNX op (tf2onnx keeps going past an
op it cannot convert), a named batch dimension, external tensor data for
models above protobuf's 2 GB limit, and the atomic write.
"""

import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
import tensorflow as tf

from simclr import paths
from simclr.models.simclr_model import OUTPUT_KEYS
from simclr.models.simclr_model import SimCLRModel

INPUT_NAME = 'images'
BATCH_DIMENSION = 'batch'
# ONNX opset 17: supported by onnxruntime >= 1.12 and by onnx2torch.
DEFAULT_OPSET = 17
# A protobuf message cannot exceed 2 GB; the weights go to a side file above
# this size (ResNet-152 3x SK alone holds 3.2 GB of float32 weights).
EXTERNAL_DATA_BYTES = 1_500_000_000
_STANDARD_DOMAINS = ('', 'ai.onnx')


class OnnxExportError(ValueError):
  """A model that cannot be exported to ONNX as asked."""


def _weight_bytes(model: SimCLRModel) -> int:
  return sum(int(np.prod(v.shape)) * v.dtype.size for v in model.variables)


def check_output_keys(model: SimCLRModel,
                       output_keys: Optional[Iterable[str]]) -> List[str]:
  available = [key for key in OUTPUT_KEYS
               if key != 'logits_sup' or model.supervised_head is not None]
  if output_keys is None:
    return available
  keys = list(output_keys)
  unknown = [key for key in keys if key not in available]
  if unknown or not keys:
    raise OnnxExportError(
        f'output keys {unknown or keys}: expected some of {available}')
  return keys


def export_onnx(model: Union[SimCLRModel, str], path: str, *,
                image_size: Optional[int] = None,
                output_keys: Optional[Iterable[str]] = None,
                opset: int = DEFAULT_OPSET,
                external_data: Optional[bool] = None) -> List[str]:
  """Writes `model` (a SimCLRModel, or any path simclr.load_model reads) as
  the ONNX file `path` and returns the output names it holds.

  image_size: H = W of the input (default: the model's config.image_size).
  output_keys: which outputs (default: every published key the model has).
  external_data: weights in `<path>.data` beside the file (default: only
    when they exceed 1.5 GB; ONNX's protobuf limit is 2 GB). Keep the two
    files together.

  The file is written under a temporary name and renamed into place, so a
  reader never sees half a file. Raises paths.PathError (a ValueError) when
  `path` cannot be written, OnnxExportError for an unknown output key or an
  op the converter left unconverted, and simclr.checkpoints.CheckpointError
  for a path that is not a model.
  """
  import tf2onnx  # pylint: disable=g-import-not-at-top

  paths.check_output_file(path)
  if isinstance(model, str):
    from simclr.checkpoints import load_model  # pylint: disable=g-import-not-at-top
    model = load_model(model)
  keys = check_output_keys(model, output_keys)
  size = image_size or model.config.image_size
  if size < 8:
    raise OnnxExportError(f'image_size={size}: expected >= 8')
  if external_data is None:
    external_data = _weight_bytes(model) > EXTERNAL_DATA_BYTES

  @tf.function
  def inference(images):
    outputs = model(images, training=False)
    return {key: tf.cast(outputs[key], tf.float32) for key in keys}

  signature = [tf.TensorSpec([None, size, size, 3], tf.float32,
                             name=INPUT_NAME)]
  with _numpy_product_alias():
    proto, external_storage = tf2onnx.convert.from_function(
        inference, input_signature=signature, opset=opset,
        large_model=external_data)
  if external_storage is not None:
    _load_external_tensors(proto, external_storage)
  _check_standard_ops(proto)
  _name_batch_dimension(proto)
  _write_atomically(proto, path, external_data)
  return [output.name for output in proto.graph.output]


@contextlib.contextmanager
def _numpy_product_alias():
  """tf2onnx 1.17's large-model mode calls np.product, which NumPy 2 removed
  (np.prod is the same function); the alias exists only during the call."""
  added = not hasattr(np, 'product')
  if added:
    np.product = np.prod
  try:
    yield
  finally:
    if added:
      del np.product


def _load_external_tensors(proto, external_storage):
  """tf2onnx's large-model mode leaves the weights in `external_storage`
  (tensor name -> raw bytes) for its own zip format; put them back into the
  tensors, to be saved by onnx.save_model's external-data writer."""
  from onnx import AttributeProto  # pylint: disable=g-import-not-at-top
  from onnx import TensorProto  # pylint: disable=g-import-not-at-top
  data = external_storage.name_to_tensor_data
  tensors = list(proto.graph.initializer) + [
      attribute.t for node in proto.graph.node for attribute in node.attribute
      if attribute.type == AttributeProto.TENSOR]
  for tensor in tensors:
    if tensor.data_location != TensorProto.EXTERNAL:
      continue
    location = {entry.key: entry.value for entry in tensor.external_data}
    tensor.raw_data = data[location['location']]
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def _check_standard_ops(proto):
  """tf2onnx converts with continue_on_error: an op it cannot convert stays
  as a TensorFlow op in another domain, which onnxruntime refuses later."""
  unconverted = sorted({f'{node.domain}:{node.op_type}'
                        for node in proto.graph.node
                        if node.domain not in _STANDARD_DOMAINS})
  if unconverted:
    raise OnnxExportError(f'ops without an ONNX equivalent: {unconverted}')


def _name_batch_dimension(proto):
  """The converter names the dynamic batch 'unk__N'; call it 'batch'."""
  for value in list(proto.graph.input) + list(proto.graph.output):
    dims = value.type.tensor_type.shape.dim
    if dims and not dims[0].HasField('dim_value'):
      dims[0].dim_param = BATCH_DIMENSION


def _write_atomically(proto, path: str, external_data: bool):
  import onnx  # pylint: disable=g-import-not-at-top
  directory = os.path.dirname(os.path.abspath(path))
  name = os.path.basename(path)
  staging = tempfile.mkdtemp(prefix=f'.incomplete-{uuid.uuid4().hex[:8]}-',
                             dir=directory)
  try:
    staged = os.path.join(staging, name)
    if external_data:
      onnx.save_model(proto, staged, save_as_external_data=True,
                      all_tensors_to_one_file=True, location=name + '.data',
                      size_threshold=1024)
      onnx.checker.check_model(staged)
      os.replace(staged + '.data', path + '.data')
    else:
      onnx.save_model(proto, staged)
      onnx.checker.check_model(staged)
    os.replace(staged, path)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def onnx_outputs(path: str, images: np.ndarray) -> Dict[str, np.ndarray]:
  """{output name: array} of onnxruntime (CPU) running the ONNX file `path`
  on `images`, float32 [B, H, W, 3] in [0, 1]."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(
      path, providers=['CPUExecutionProvider'])
  names = [output.name for output in session.get_outputs()]
  values = session.run(names, {INPUT_NAME: np.asarray(images, np.float32)})
  return dict(zip(names, values))


def relative_max_difference(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected| (the absolute difference when
  `expected` is all zeros)."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  if actual.shape != expected.shape:
    raise ValueError(f'shapes differ: {actual.shape} vs {expected.shape}')
  scale = np.abs(expected).max() if expected.size else 0.0
  difference = np.abs(actual - expected).max() if expected.size else 0.0
  return float(difference / scale if scale > 0 else difference)


def parity(model: SimCLRModel, path: str,
           images: np.ndarray) -> Dict[str, float]:
  """{output name: relative max difference} between onnxruntime on the ONNX
  file `path` and `model(images, training=False)`, over `images` float32
  [B, H, W, 3] in [0, 1]."""
  reference = model(tf.constant(images, tf.float32), training=False)
  return {key: relative_max_difference(value, reference[key].numpy())
          for key, value in onnx_outputs(path, images).items()}
