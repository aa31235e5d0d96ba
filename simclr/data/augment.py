"""SimCLR augmentations as the published code makes them (crop area
[0.08, 1], aspect [3/4, 4/3], flip, colour jitter p=0.8, greyscale p=0.2,
Gaussian blur p=0.5), seeded and stateless.

Per image (run inside `tf.data.Dataset.map`; source images differ in size):
  random_crop_and_resize, random_flip, crop_and_flip (fine-tuning view),
  center_crop_and_resize and resize (evaluation), color_distort_image and
  pretrain_view (a whole pretraining view).
Per batch of same-size images [B, S, S, 3] (vectorised, per-image random
parameters): color_distort, random_blur, pairs_to_rows.
On CPU the per-image colour path is the fast one (cache-sized tensors and
TensorFlow's fused colour kernels; tools/bench_input.py measures it), so the
pipeline runs colour per image and only the blur per batch by default
(DataConfig.batch_augmentation).

The ranges and probabilities of the random operations are an AugmentParams
argument (published values by default, DataConfig.augment_params() builds
one from a config); whether to blur, its kernel size and the colour jitter
strength are arguments of their own.

The photometric randomness is drawn by sample_color_params /
sample_blur_params and applied by apply_* functions, so tests can check
the distributions and the arithmetic separately; the per-image and batch
paths share the samplers, so their views have the same distribution.

Every random function takes `seed`, an int32/int64 tensor of shape [2] as for
tf.random.stateless_*: the same seed gives the same output.
Outputs are float32 in [0, 1].
"""

from typing import Dict, Tuple

import tensorflow as tf

from simclr.configs import BLUR_PROBABILITY
from simclr.configs import COLOR_JITTER_PROBABILITY
from simclr.configs import GRAYSCALE_PROBABILITY
from simclr.configs import AugmentParams

CROP_PROPORTION = 0.875  # Centre crop kept for evaluation (ImageNet standard).
BLUR_SIGMA_RANGE = (0.1, 2.0)

# Order codes of the four colour-jitter operations.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # As tf.image.rgb_to_grayscale.


PUBLISHED = AugmentParams()


def _split(seed, num):
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def to_float(image):
  """uint8 (or float in [0, 1]) image -> float32 in [0, 1]."""
  return tf.image.convert_image_dtype(image, tf.float32)


# ---------------------------------------------------------------- geometric --


def sample_crop_box(image_shape, seed, params: AugmentParams = PUBLISHED
                    ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Random crop box as in the published code; returns (offset, size).

  offset = [y, x], size = [height, width] (int32). The box covers a fraction
  params.area_range of the image with width/height in
  params.aspect_ratio_range, drawn by
  tf.image.stateless_sample_distorted_bounding_box (100 attempts, then the
  whole image).
  """
  whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, whole_image, seed=seed, min_object_covered=0.1,
      aspect_ratio_range=params.aspect_ratio_range,
      area_range=params.area_range, max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  return begin[:2], size[:2]


def resize(image, size: int):
  """[H, W, 3] uint8 or float RGB image -> [size, size, 3] float32 in [0, 1].

  Bicubic, as published (it may overshoot, hence the clip); an image that
  already has the size is returned as it is.
  """
  image = to_float(image)
  shape = tf.shape(image)
  out = tf.cond(
      (shape[0] == size) & (shape[1] == size), lambda: image,
      lambda: tf.clip_by_value(
          tf.image.resize(image[None], [size, size], method='bicubic')[0],
          0.0, 1.0))
  return tf.ensure_shape(out, [size, size, 3])


def random_crop_and_resize(image, size: int, seed,
                           params: AugmentParams = PUBLISHED):
  """Random crop (sample_crop_box) of a [H, W, 3] image, resized to size."""
  offset, crop_size = sample_crop_box(tf.shape(image), seed, params)
  crop = tf.slice(image, tf.concat([offset, [0]], 0),
                  tf.concat([crop_size, [-1]], 0))
  return resize(crop, size)


def random_flip(image, seed):
  """Left-right flip with probability 0.5."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def center_crop_and_resize(image, size: int,
                           crop_proportion: float = CROP_PROPORTION):
  """Central square of side crop_proportion * min(H, W), resized to size."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.cast(tf.math.rint(crop_proportion * tf.cast(
      tf.minimum(height, width), tf.float32)), tf.int32)
  top = (height - side + 1) // 2
  left = (width - side + 1) // 2
  crop = tf.image.crop_to_bounding_box(image, top, left, side, side)
  out = tf.clip_by_value(tf.image.resize(
      to_float(crop)[None], [size, size], method='bicubic')[0], 0.0, 1.0)
  return tf.ensure_shape(out, [size, size, 3])


def crop_and_flip(image, size: int, seed, params: AugmentParams = PUBLISHED):
  """Fine-tuning / distillation view: random crop, resize, flip (unless
  params.use_flip is False)."""
  crop_seed, flip_seed = _split(seed, 2)
  view = random_crop_and_resize(image, size, crop_seed, params)
  return random_flip(view, flip_seed) if params.use_flip else view


# -------------------------------------------------------------- photometric --


def color_jitter_ranges(strength: float) -> Dict[str, Tuple[float, float]]:
  """Ranges of the jitter factors for color_jitter_strength s (published).

  Brightness multiplies by U[max(0, 1 - 0.8s), 1 + 0.8s]; contrast and
  saturation scale by U[1 - 0.8s, 1 + 0.8s]; hue shifts by U[-0.2s, 0.2s]
  (in turns of the colour wheel).
  """
  return {
      'brightness': (max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength),
      'contrast': (1 - 0.8 * strength, 1 + 0.8 * strength),
      'saturation': (1 - 0.8 * strength, 1 + 0.8 * strength),
      'hue': (-0.2 * strength, 0.2 * strength),
  }


def sample_color_params(batch_size, seed, strength: float,
                        jitter_probability=COLOR_JITTER_PROBABILITY,
                        grayscale_probability=GRAYSCALE_PROBABILITY
                        ) -> Dict[str, tf.Tensor]:
  """Random colour-distortion parameters for a batch of images.

  Returns float32 [B] 'brightness', 'contrast', 'saturation', 'hue' (ranges of
  color_jitter_ranges), bool [B] 'jitter' (apply the jitter) and 'grayscale',
  and int32 [B, 4] 'order': a uniformly random permutation of (BRIGHTNESS,
  CONTRAST, SATURATION, HUE), the order in which the jitter is applied.
  """
  seeds = _split(seed, 7)
  shape = [batch_size]
  params = {}
  for i, (name, (low, high)) in enumerate(
      color_jitter_ranges(strength).items()):
    params[name] = tf.random.stateless_uniform(shape, seeds[i], low, high)
  params['order'] = tf.argsort(
      tf.random.stateless_uniform([batch_size, 4], seeds[4]), axis=1,
      stable=True)
  params['jitter'] = tf.random.stateless_uniform(
      shape, seeds[5]) < jitter_probability
  params['grayscale'] = tf.random.stateless_uniform(
      shape, seeds[6]) < grayscale_probability
  return params


def _per_image(values, images):
  """[B] -> [B, 1, 1, 1] for broadcasting against images."""
  return tf.reshape(values, [-1, 1, 1, 1])


def adjust_contrast(images, factor):
  """(x - channel mean) * factor + channel mean, per image; factor [B]."""
  mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
  return (images - mean) * _per_image(factor, images) + mean


def adjust_saturation_and_hue(images, saturation, hue):
  """In HSV: s <- clip(s * saturation, 0, 1), h <- (h + hue) mod 1; [B]."""
  hsv = tf.image.rgb_to_hsv(images)
  h, s, v = tf.unstack(hsv, axis=-1)
  h = tf.math.floormod(h + tf.reshape(hue, [-1, 1, 1]), 1.0)
  s = tf.clip_by_value(s * tf.reshape(saturation, [-1, 1, 1]), 0.0, 1.0)
  return tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1))


def apply_color_jitter(images, params):
  """Jitters images [B, H, W, 3] in each image's own random order.

  Vectorised: at each of the 4 positions every image gets the operation its
  'order' names there (the others keep their pixels, via tf.where); pixels
  are clipped to [0, 1] after every operation. Images whose 'jitter' is False
  are returned unchanged.
  """
  out = images
  for position in range(4):
    op = params['order'][:, position]
    brightened = out * _per_image(params['brightness'], out)
    contrasted = adjust_contrast(out, params['contrast'])
    is_hsv = (op == SATURATION) | (op == HUE)
    # Saturation and hue share one HSV round trip: each image needs at most
    # one of them at this position, the other is made the identity.
    in_hsv = adjust_saturation_and_hue(
        out, tf.where(op == SATURATION, params['saturation'], 1.0),
        tf.where(op == HUE, params['hue'], 0.0))
    out = tf.where(_per_image(op == BRIGHTNESS, out), brightened, out)
    out = tf.where(_per_image(op == CONTRAST, out), contrasted, out)
    out = tf.where(_per_image(is_hsv, out), in_hsv, out)
    out = tf.clip_by_value(out, 0.0, 1.0)
  return tf.where(_per_image(params['jitter'], images), out, images)


def to_grayscale(images):
  """Luma (ITU-R 601, as tf.image.rgb_to_grayscale) copied to 3 channels."""
  grey = tf.tensordot(images, tf.constant(_GRAY_WEIGHTS), axes=[[-1], [0]])
  return tf.repeat(grey[..., None], 3, axis=-1)


def apply_grayscale(images, mask):
  """Greyscale the images whose mask [B] is True."""
  return tf.where(_per_image(mask, images), to_grayscale(images), images)


def color_distort(images, seed, strength: float,
                  params: AugmentParams = PUBLISHED):
  """Colour jitter (p=0.8, random order) then greyscale (p=0.2); [B,H,W,3].

  The probabilities are params.color_jitter_probability and
  params.grayscale_probability (published values above)."""
  color = sample_color_params(tf.shape(images)[0], seed, strength,
                              params.color_jitter_probability,
                              params.grayscale_probability)
  return apply_grayscale(apply_color_jitter(images, color),
                         color['grayscale'])


def blur_kernel_size(image_size: int) -> int:
  """Taps of the blur kernel: image_size // 10, made odd upwards (published:
  radius = (image_size // 10) // 2, taps = 2 * radius + 1)."""
  return 2 * ((image_size // 10) // 2) + 1


def blur_enabled(image_size: int, use_blur: bool) -> bool:
  """Whether pretraining blurs: whenever use_blur, at every image size, as
  published (3 taps at 32x32). Below 20 pixels the kernel has one tap and
  the blur is the identity, so it is skipped there."""
  return bool(use_blur) and blur_kernel_size(image_size) > 1


def sample_blur_params(batch_size, seed, probability=BLUR_PROBABILITY
                       ) -> Dict[str, tf.Tensor]:
  """bool [B] 'blur' (p=probability), float32 [B] 'sigma' ~ U[0.1, 2.0]."""
  mask_seed, sigma_seed = _split(seed, 2)
  return {
      'blur': tf.random.stateless_uniform([batch_size], mask_seed) <
              probability,
      'sigma': tf.random.stateless_uniform(
          [batch_size], sigma_seed, *BLUR_SIGMA_RANGE),
  }


def gaussian_blur(images, sigma, kernel_size: int):
  """Separable Gaussian blur of [B, H, W, C] with one sigma [B] per image.

  The kernel has kernel_size taps (odd) and weights exp(-x^2 / (2 sigma^2))
  normalised to sum 1; borders are zero-padded ('SAME'), as published.
  Vectorised: the batch is folded into channels so that a single depthwise
  convolution applies every image's own kernel.
  """
  radius = kernel_size // 2
  if radius == 0:
    return images
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  channels = images.shape[-1] or shape[3]
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  weights = tf.exp(-tf.square(x)[None, :] /
                   (2.0 * tf.square(tf.reshape(sigma, [-1, 1]))))
  weights /= tf.reduce_sum(weights, axis=1, keepdims=True)  # [B, taps]
  # One kernel per (image, channel), in the order of the folded channels.
  weights = tf.repeat(weights, channels, axis=0)  # [B * C, taps]
  taps = 2 * radius + 1
  horizontal = tf.reshape(tf.transpose(weights), [1, taps, -1, 1])
  vertical = tf.reshape(tf.transpose(weights), [taps, 1, -1, 1])
  folded = tf.reshape(tf.transpose(images, [1, 2, 0, 3]),
                      [1, height, width, batch * channels])
  folded = tf.nn.depthwise_conv2d(folded, horizontal, [1, 1, 1, 1], 'SAME')
  folded = tf.nn.depthwise_conv2d(folded, vertical, [1, 1, 1, 1], 'SAME')
  return tf.transpose(tf.reshape(folded, [height, width, batch, channels]),
                      [2, 0, 1, 3])


def apply_blur(images, params, kernel_size: int):
  """Blurs only the images whose 'blur' is True (the others are untouched,
  and not computed: the selected images are gathered and scattered back)."""
  index = tf.where(params['blur'])

  def blur_selected():
    blurred = gaussian_blur(tf.gather_nd(images, index),
                            tf.gather_nd(params['sigma'], index), kernel_size)
    return tf.tensor_scatter_nd_update(images, index,
                                       tf.clip_by_value(blurred, 0.0, 1.0))

  # A convolution with no selected image would have an empty filter, which
  # the CPU kernel rejects.
  return tf.cond(tf.size(index) > 0, blur_selected, lambda: images)


def random_blur(images, seed, kernel_size: int,
                params: AugmentParams = PUBLISHED):
  """Gaussian blur with p=params.blur_probability (published 0.5), sigma ~
  U[0.1, 2], on a batch [B, H, W, 3]."""
  blur = sample_blur_params(tf.shape(images)[0], seed,
                            params.blur_probability)
  return apply_blur(images, blur, kernel_size)


# ------------------------------------------------ per-image photometric path --


def apply_color_jitter_image(image, params):
  """apply_color_jitter for one image [H, W, 3] and params of a batch of 1.

  Runs only the operation chosen at each position (tf.switch_case), with
  TensorFlow's fused kernels (tf.image.adjust_contrast / _saturation / _hue,
  as the published code): on CPU this per-image path is the fast one.
  """
  p = {k: v[0] for k, v in params.items()}

  def step(position, x):
    x = tf.switch_case(p['order'][position], [
        lambda: x * p['brightness'],
        lambda: tf.image.adjust_contrast(x, p['contrast']),
        lambda: tf.image.adjust_saturation(x, p['saturation']),
        lambda: tf.image.adjust_hue(x, p['hue']),
    ])
    return position + 1, tf.clip_by_value(x, 0.0, 1.0)

  def jitter():
    # A loop rather than 4 unrolled switches keeps the graph small.
    return tf.while_loop(lambda position, _: position < 4, step,
                         (tf.constant(0), image))[1]

  return tf.cond(p['jitter'], jitter, lambda: image)


def color_distort_image(image, seed, strength: float,
                        params: AugmentParams = PUBLISHED):
  """color_distort for one image [H, W, 3] (same distribution)."""
  color = sample_color_params(1, seed, strength,
                              params.color_jitter_probability,
                              params.grayscale_probability)
  out = apply_color_jitter_image(image, color)
  out = tf.cond(color['grayscale'][0], lambda: to_grayscale(out),
                lambda: out)
  return tf.ensure_shape(out, image.shape)


def pretrain_view(image, seed, size: int, strength: float, blur: bool,
                  kernel_size: int, params: AugmentParams = PUBLISHED):
  """One complete pretraining view of one image (per-image path).

  image: [H, W, 3] uint8 or float in [0, 1]. Returns [size, size, 3] float32.
  Equivalent in distribution to crop_and_flip followed by the batch
  functions color_distort and (if blur) random_blur, with the same params.
  """
  geometry_seed, color_seed, blur_seed = _split(seed, 3)
  view = crop_and_flip(image, size, geometry_seed, params)
  if strength > 0:  # As published, strength 0 disables greyscale too.
    view = color_distort_image(view, color_seed, strength, params)
  if blur:
    blur_params = sample_blur_params(1, blur_seed, params.blur_probability)
    view = tf.cond(
        blur_params['blur'][0],
        lambda: tf.clip_by_value(gaussian_blur(
            view[None], blur_params['sigma'], kernel_size)[0], 0.0, 1.0),
        lambda: view)
  return view


def pairs_to_rows(pairs):
  """[B, 2, S, S, 3] pairs -> [2B, S, S, 3]: all first views, then all second
  views (rows i and B + i are the two views of image i)."""
  shape = tf.shape(pairs)
  return tf.reshape(tf.transpose(pairs, [1, 0, 2, 3, 4]),
                    tf.concat([[-1], shape[2:]], 0))
