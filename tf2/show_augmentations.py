r"""Draws what pretraining sees: each image beside several augmented views.

    python tf2/show_augmentations.py --out=augmentations.png
    python tf2/show_augmentations.py --dataset=folder:/my/photos --out=mine.png

Without --dataset the images are scikit-learn's two bundled photos. The
views are made by simclr.data.augment.pretrain_view with the given
--image_size, --color_jitter_strength and --use_blur (SPEC section 2: random
crop and resize, flip, colour jitter p=0.8, greyscale p=0.2, blur p=0.5 when
image_size > 32).
"""

from absl import app
from absl import flags
import tensorflow as tf

from simclr import data
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
flags.DEFINE_integer('seed', 0, 'Seed of the views.')


def load_images():
  """uint8 [H, W, 3] arrays."""
  if FLAGS.dataset is None:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    return datasets.load_sample_images().images[:FLAGS.num_images]
  source = data.load_source(FLAGS.dataset, FLAGS.data_dir)
  return [e['image'].numpy()
          for e in source.read(FLAGS.split).take(FLAGS.num_images)]


def main(argv):
  del argv
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  images = load_images()
  size = FLAGS.image_size
  blur = augment.blur_enabled(size, FLAGS.use_blur)
  view = tf.function(lambda image, seed: augment.pretrain_view(
      image, seed, size, FLAGS.color_jitter_strength, blur,
      augment.blur_kernel_size(size)))
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
  app.run(main)
