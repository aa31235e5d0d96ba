"""`digits`: an embedded real dataset, registered as a TFDS builder.

scikit-learn bundles the UCI handwritten digits (1,797 real 8x8 greyscale
images, 10 classes), so this dataset needs no download. The builder upsamples
them to 32x32 RGB uint8 and writes fixed `train` (1,438) and `test` (359)
splits, stratified by class with a fixed seed, into its data_dir like any
prepared TFDS dataset:

    import simclr.data  # registers the builder
    builder = tfds.builder('digits', data_dir=...)
    builder.download_and_prepare()   # offline, a few seconds
    builder.info.splits['train'].num_examples  # 1438

Features: 'image' uint8 [32, 32, 3] (white strokes on black), 'label' 0..9,
'id' the image's index in sklearn.datasets.load_digits() as 'digit_0042'.
"""

import functools

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=None)
def load_digits():
  """scikit-learn's digits (imported here: scikit-learn is slow to import)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  return datasets.load_digits()


def split_indices():
  """{'train': indices, 'test': indices} into load_digits(), stratified.

  Each class contributes round(TEST_FRACTION * class size) test images chosen
  with numpy's legacy RandomState (whose stream never changes across numpy
  versions), so the splits are the same on every machine.
  """
  labels = load_digits().target
  rng = np.random.RandomState(SPLIT_SEED)
  test = []
  for label in range(10):
    members = np.flatnonzero(labels == label)
    chosen = rng.permutation(members)[:int(round(TEST_FRACTION *
                                                 len(members)))]
    test.extend(chosen.tolist())
  test = np.sort(np.array(test))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return {'train': train, 'test': test}


def upsampled_images():
  """All 1,797 digits as uint8 [N, 32, 32, 3] (bicubic upsampling by PIL)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # Pixel values are 0..16 (ink counts on a 4x4 grid of the 32x32 scan).
  small = load_digits().images
  out = np.empty((len(small), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for i, image in enumerate(small):
    grey = Image.fromarray(np.round(image * (255 / 16)).astype(np.uint8))
    big = np.asarray(grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
    out[i] = big[:, :, None]
  return out


class Digits(tfds.core.GeneratorBasedBuilder):
  """UCI handwritten digits from scikit-learn, 32x32 RGB, train/test."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('UCI ML handwritten digits (1,797 8x8 images bundled '
                     'with scikit-learn) upsampled to 32x32 RGB.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            'label': tfds.features.ClassLabel(num_classes=10),
            'id': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {name: self._generate_examples(indices)
            for name, indices in split_indices().items()}

  def _generate_examples(self, indices):
    labels = load_digits().target
    images = upsampled_images()
    for index in indices:
      key = f'digit_{index:04d}'
      yield key, {'image': images[index], 'label': int(labels[index]),
                  'id': key}


def prepare(data_dir=None) -> tfds.core.DatasetBuilder:
  """The `digits` builder, prepared into data_dir on first use (offline)."""
  builder = tfds.builder('digits', data_dir=data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder
