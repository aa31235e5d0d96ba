r"""Draws what pretraining sees: each image beside several augmented views.

    python tf2/show_augmentations.py --out=augmentations.png
    python tf2/show_augmentations.py --dataset=folder:/my/photos --out=mine.png

Without --dataset the images are scikit-learn's two bundled photos. The
views are made by simclr.data.augment.pretrain_view with the given
--image_size, --color_jitter_strength, --use_blur and augmentation knobs
(defaults as published, SPEC section 2: random crop of 8-100% of the area
with aspect ratio in [3/4, 4/3], resize, flip, colour jitter p=0.8,
greyscale p=0.2, blur p=0.5 at every image size, 3 taps at 32x32).

    python tf2/show_augmentations.py --dataset=digits --image_size=32 \
      --crop_min_area=0.3 --use_flip=False --out=digits.png

Bad input: one line on stderr naming the flag, exit code 2.
"""

from absl import flags

import simclr  # noqa: F401  before TensorFlow: its CPU kernel choice (simclr/__init__.py)
import tensorflow as tf  # pylint: disable=g-bad-import-order,wrong-import-order

from simclr import data
from simclr import paths
from simclr.data import augment

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'augmentations.png', 'PNG file to write.')
flags.DEFINE_string('dataset', None, 'Optional: images from this dataset '
                    "(a TFDS name, 'digits' or 'folder:/path') instead of the "
                    'scikit-learn sample photos.')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir for --dataset.')
flags.DEFINE_string('split', 'train', 'Split of --dataset to draw from.')
flags.DEFINE_integer('num_images', 2, 'Rows (images) in the grid.')
flags.DEFINE_integer('num_views', 6, 'Augmented views per image.')
flags.DEFINE_integer('image_size', 224, 'Side of the views.')
flags.DEFINE_float('color_jitter_strength', 1.0, 'As for pretraining.')
flags.DEFINE_bool('use_blur', True, 'As for pretraining.')
flags.DEFINE_float('crop_min_area', 0.08, 'As in tf2/run.py.')
flags.DEFINE_float('crop_max_aspect_ratio', 4 / 3, 'As in tf2/run.py.')
flags.DEFINE_bool('use_flip', True, 'As in tf2/run.py.')
flags.DEFINE_float('color_jitter_probability', 0.8, 'As in tf2/run.py.')
flags.DEFINE_float('grayscale_probability', 0.2, 'As in tf2/run.py.')
flags.DEFINE_float('blur_probability', 0.5, 'As in tf2/run.py.')
flags.DEFINE_integer('seed', 0, 'Seed of the views.')


def load_images(source):
  """uint8 [H, W, 3] arrays: of --split of `source`, or the sample photos
  when source is None."""
  if source is None:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    return datasets.load_sample_images().images[:FLAGS.num_images]
  return [e['image'].numpy()
          for e in source.read(FLAGS.split).take(FLAGS.num_images)]


def check_flags():
  """(DataConfig, the source of --dataset or None); ValueError naming the
  flag for bad input, before any image is augmented."""
  for flag in ('num_images', 'num_views'):
    if getattr(FLAGS, flag) < 1:
      raise ValueError(f'--{flag}={getattr(FLAGS, flag)}: expected >= 1')
  try:
    paths.check_output_file(FLAGS.out)
  except paths.PathError as e:
    raise ValueError(f'--out: {e}') from None
  # Through DataConfig, which checks the values as tf2/run.py does.
  try:
    config = data.DataConfig(
        image_size=FLAGS.image_size,
        color_jitter_strength=FLAGS.color_jitter_strength,
        use_blur=FLAGS.use_blur, crop_min_area=FLAGS.crop_min_area,
        crop_max_aspect_ratio=FLAGS.crop_max_aspect_ratio,
        use_flip=FLAGS.use_flip,
        color_jitter_probability=FLAGS.color_jitter_probability,
        grayscale_probability=FLAGS.grayscale_probability,
        blur_probability=FLAGS.blur_probability)
  except ValueError as e:
    raise ValueError(str(e).replace('DataConfig.', '--')) from None
  if FLAGS.dataset is None:
    return config, None
  try:
    source = data.load_source(FLAGS.dataset, FLAGS.data_dir)
  except ValueError as e:
    raise ValueError(f'--dataset: {e}') from None
  try:
    source.check_split(FLAGS.split)
  except ValueError as e:
    raise ValueError(f'--split={FLAGS.split}: {e}') from None
  return config, source


def main(argv):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  try:
    config, source = check_flags()
  except ValueError as e:
    cli_checks.fail(e)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  images = load_images(source)
  size = config.image_size
  blur = augment.blur_enabled(size, config.use_blur)
  view = tf.function(lambda image, seed: augment.pretrain_view(
      image, seed, size, config.color_jitter_strength, blur,
      augment.blur_kernel_size(size), config.augment_params()))
  columns = FLAGS.num_views + 1
  figure, axes = plt.subplots(len(images), columns, squeeze=False,
                              figsize=(2 * columns, 2.3 * len(images) + 0.5))
  for row, image in enumerate(images):
    axes[row, 0].imshow(image)
    axes[row, 0].set_title(f'original {image.shape[1]}x{image.shape[0]}',
                           fontsize=8)
    for column in range(1, columns):
      seed = tf.constant([FLAGS.seed, row * columns + column], tf.int64)
      axes[row, column].imshow(view(tf.constant(image), seed).numpy())
      axes[row, column].set_title(f'view {column}', fontsize=8)
  for axis in axes.ravel():
    axis.axis('off')
  figure.suptitle(
      f'SimCLR pretraining views ({size}x{size}, colour strength '
      f'{FLAGS.color_jitter_strength:g}, blur {"on" if blur else "off"})',
      fontsize=10)
  figure.tight_layout()
  figure.savefig(FLAGS.out, dpi=100)
  print(f'Wrote {FLAGS.out} ({len(images)} images x {FLAGS.num_views} '
        f'views)')


if __name__ == '__main__':
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)
