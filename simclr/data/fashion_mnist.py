"""`fashion_mnist` prepared offline from local copies of its original files.

On a machine with internet TFDS prepares `fashion_mnist` by downloading the
four original idx files (60,000 `train` and 10,000 `test` grey 28x28 images,
10 classes). Nothing is downloaded here; Debian's `dataset-fashion-mnist`
package installs the same four files under /usr/share/datasets/fashion-mnist/
(rewritten: their gzip headers lack the original file names, and each is
smaller than TFDS's registered size by exactly that name's length, so TFDS's
registered checksums do not match them and its manual_dir route refuses them).

`prepare(data_dir)` writes the dataset into data_dir with FromFiles: TFDS's
own FashionMNIST builder (its name, version 3.0.1, features {'image': uint8
[28, 28, 1], 'label': ClassLabel with the 10 article names}, and its own
_generate_examples, which writes the same keys as TFDS's download would)
with only _split_generators replaced, to take the files from a directory
instead of the internet. The prepared directory is then read by TFDS's own
registered builder, `tfds.builder('fashion_mnist', data_dir=...)`, exactly as
one it had downloaded.

The builder has no id feature, so example ids are TFDS's `tfds_id`
('fashion_mnist-train.tfrecord-00000-of-00001__<position>'), which depends
only on the shard file names and each example's key: the same ids as a
download prepared by the same TFDS version.

    from simclr.data import fashion_mnist
    builder = fashion_mnist.prepare(data_dir)  # offline, about 30 s once
    builder.info.splits['train'].num_examples   # 60000
"""

import gzip
import os
import struct
import tempfile
from typing import Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from simclr import compat

NAME = 'fashion_mnist'
DEBIAN_PACKAGE = 'dataset-fashion-mnist'
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
# Another directory holding the four files (tests point it at small ones).
FILES_DIR_VARIABLE = 'SIMCLR_FASHION_MNIST_DIR'
# split -> (images file, labels file), the original names.
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
# The idx format: a big-endian int32 magic (0x08 = unsigned bytes, then the
# number of dimensions), one big-endian int32 per dimension, then the data.
IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions [N, rows, columns].
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension [N].
IMAGE_SIZE = 28
NUM_CLASSES = 10


def files_dir() -> str:
  """Where the four files are looked for: $SIMCLR_FASHION_MNIST_DIR, else
  the Debian package's directory."""
  return os.environ.get(FILES_DIR_VARIABLE) or DEBIAN_DIR


def read_idx_header(path: str) -> Tuple[int, Tuple[int, ...]]:
  """(magic, dimensions) of a gzipped idx file."""
  with gzip.open(path, 'rb') as f:
    head = f.read(4)
    if len(head) < 4:
      raise ValueError(f'{path}: not an idx file (shorter than its header)')
    magic, = struct.unpack('>i', head)
    num_dims = magic & 0xff
    dims = f.read(4 * num_dims)
    if len(dims) < 4 * num_dims:
      raise ValueError(f'{path}: not an idx file (shorter than its header)')
    return magic, struct.unpack(f'>{num_dims}i', dims)


def check_split_files(images_path: str, labels_path: str) -> int:
  """The number of examples of a split's idx files; ValueError (naming the
  file) unless they hold N uint8 28x28 images and N labels in 0..9.
  Reading gzip also checks the files' integrity (CRC) to the end."""
  try:
    magic, dims = read_idx_header(images_path)
    if magic != IMAGES_MAGIC or dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
      raise ValueError(
          f'{images_path}: not idx images of {IMAGE_SIZE}x{IMAGE_SIZE} uint8 '
          f'(magic {magic}, dimensions {list(dims)}; expected magic '
          f'{IMAGES_MAGIC}, [N, {IMAGE_SIZE}, {IMAGE_SIZE}])')
    with gzip.open(images_path, 'rb') as f:
      size = len(f.read())
    expected = 16 + dims[0] * IMAGE_SIZE * IMAGE_SIZE
    if size != expected:
      raise ValueError(f'{images_path}: {size} bytes once decompressed; its '
                       f'header says {expected}')
    magic, label_dims = read_idx_header(labels_path)
    if magic != LABELS_MAGIC or len(label_dims) != 1:
      raise ValueError(f'{labels_path}: not idx labels (magic {magic}; '
                       f'expected {LABELS_MAGIC})')
    with gzip.open(labels_path, 'rb') as f:
      labels = np.frombuffer(f.read()[8:], np.uint8)
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f'cannot read {images_path} / {labels_path}: '
                     f'{e}') from None
  if len(labels) != label_dims[0] or label_dims[0] != dims[0]:
    raise ValueError(f'{labels_path}: {len(labels)} labels (header: '
                     f'{label_dims[0]}) for {dims[0]} images')
  if labels.size and labels.max() >= NUM_CLASSES:
    raise ValueError(f'{labels_path}: label {labels.max()} is not in '
                     f'0..{NUM_CLASSES - 1}')
  return dims[0]


def missing_files(directory: str):
  """The names of FILES not in directory."""
  return [name for pair in FILES.values() for name in pair
          if not os.path.isfile(os.path.join(directory, name))]


class FromFiles(tfds.image_classification.FashionMNIST,
                skip_registration=True):
  """TFDS's FashionMNIST, reading its four files from `directory` instead
  of downloading them. Not registered: `fashion_mnist` stays TFDS's own
  builder, which reads what this one writes."""

  name = NAME

  def __init__(self, *, directory: str, **kwargs):
    self.directory = directory
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    splits = {}
    for split, names in FILES.items():
      images, labels = (os.path.join(self.directory, n) for n in names)
      count = check_split_files(images, labels)
      # TFDS's generator reads decompressed files; its extractor writes them
      # under the download directory.
      extracted = dl_manager.extract({'images': images, 'labels': labels})
      splits[split] = compat.fashion_mnist_examples(
          self, count, extracted['images'], extracted['labels'])
    return splits


def prepare(data_dir: Optional[str] = None,
            directory: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """TFDS's `fashion_mnist` builder for data_dir (None: TFDS's default),
  prepared there first from the files in `directory` (None: files_dir()) if
  it is not prepared yet. Nothing is downloaded.

  Raises ValueError, one line, when it is not prepared and the files are not
  there (saying what to install), or when a file is not what it should be.
  """
  builder = tfds.builder(NAME, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  directory = directory or files_dir()
  missing = missing_files(directory)
  if missing:
    if os.path.normpath(directory) == DEBIAN_DIR:
      where = f"the Debian package's files are not in {DEBIAN_DIR}/"
    else:
      where = f'its files are not in {directory}/'
    raise ValueError(
        f'not prepared in {builder.data_dir} and {where} (missing: '
        f'{", ".join(missing)}); install them with: apt-get install '
        f'{DEBIAN_PACKAGE}')
  with tempfile.TemporaryDirectory(prefix='fashion_mnist_') as scratch:
    # The decompressed files (55 MB) live only while preparing.
    FromFiles(directory=directory, data_dir=data_dir).download_and_prepare(
        download_dir=scratch,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return tfds.builder(NAME, data_dir=data_dir)

