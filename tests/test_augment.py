"""SimCLR augmentations: parameter ranges and frequencies from SPEC section 2,
checked against binomial / uniform standard errors, and the arithmetic
checked against numpy or TensorFlow's own image ops."""

import numpy as np
import pytest
import tensorflow as tf

from simclr.data import augment

# A statistic is accepted within this many standard errors of its expected
# value (the seeds are fixed, so each test is deterministic).
NUM_SE = 4


def binomial_tolerance(p, n):
  return NUM_SE * np.sqrt(p * (1 - p) / n)


def seed(i, j=0):
  return tf.constant([i, j], tf.int64)


def colourful_images(n, size=8, rng_seed=0):
  """Random RGB noise: no image is grey and no two channels are equal."""
  rng = np.random.default_rng(rng_seed)
  return tf.constant(rng.uniform(0.05, 0.95, (n, size, size, 3)), tf.float32)


def is_grey(images):
  images = np.asarray(images)
  return np.all(images[..., 0] == images[..., 1], axis=(1, 2)) & np.all(
      images[..., 1] == images[..., 2], axis=(1, 2))


def horizontal_ramp(height, width):
  """float32 [H, W, 3] whose value at column x is x / (W - 1)."""
  ramp = np.linspace(0, 1, width, dtype=np.float32)
  return np.repeat(np.tile(ramp, (height, 1))[:, :, None], 3, axis=2)


# ------------------------------------------------------------------- crops --


@pytest.fixture(scope='module')
def crop_boxes():
  """2,000 boxes drawn on a 240x240 image: (offsets [N, 2], sizes [N, 2])."""
  sample = tf.function(lambda s: augment.sample_crop_box([240, 240, 3], s))
  boxes = [sample(seed(i, 1)) for i in range(2000)]
  return (np.array([b[0].numpy() for b in boxes]),
          np.array([b[1].numpy() for b in boxes]))


def test_crop_area_lies_in_published_range(crop_boxes):
  _, sizes = crop_boxes
  area = sizes[:, 0] * sizes[:, 1] / 240**2
  assert area.min() >= augment.PUBLISHED.area_range[0]
  assert area.max() <= augment.PUBLISHED.area_range[1]
  # The whole range is used: small and nearly whole-image crops both occur.
  assert area.min() < 0.15 and area.max() > 0.9


def test_crop_aspect_ratio_lies_in_published_range(crop_boxes):
  _, sizes = crop_boxes
  height, width = sizes[:, 0], sizes[:, 1]
  # Widths are whole pixels: w = round(h * aspect) is off by at most 1/2.
  aspect = width / height
  assert np.all(aspect >= 3 / 4 - 0.5 / height)
  assert np.all(aspect <= 4 / 3 + 0.5 / height)
  assert aspect.min() < 0.8 and aspect.max() > 1.25


def test_crop_area_respects_crop_min_area():
  params = augment.AugmentParams(crop_min_area=0.5)
  sample = tf.function(lambda s: augment.sample_crop_box([240, 240, 3], s,
                                                         params))
  sizes = np.array([sample(seed(i, 14))[1].numpy() for i in range(1000)])
  area = sizes[:, 0] * sizes[:, 1] / 240**2
  assert area.min() >= 0.5 and area.max() <= 1.0
  # The range is used down to its new lower end.
  assert area.min() < 0.55 and area.max() > 0.95


def test_crop_aspect_ratio_respects_crop_max_aspect_ratio():
  params = augment.AugmentParams(crop_max_aspect_ratio=2.0)
  sample = tf.function(lambda s: augment.sample_crop_box([240, 240, 3], s,
                                                         params))
  sizes = np.array([sample(seed(i, 15))[1].numpy() for i in range(1000)])
  height, width = sizes[:, 0], sizes[:, 1]
  aspect = width / height
  assert np.all(aspect >= 1 / 2 - 0.5 / height)
  assert np.all(aspect <= 2 + 0.5 / height)
  # Beyond the published [3/4, 4/3] on both sides.
  assert aspect.min() < 0.6 and aspect.max() > 1.7


def test_whole_area_square_crop_without_flip_is_the_whole_image():
  image = np.random.default_rng(16).integers(0, 256, (24, 24, 3), np.uint8)
  params = augment.AugmentParams(crop_min_area=1.0, crop_max_aspect_ratio=1.0,
                                 use_flip=False)
  view = tf.function(lambda s: augment.crop_and_flip(image, 24, s, params))
  for i in range(30):
    np.testing.assert_allclose(view(seed(i, 17)).numpy(), image / 255,
                               atol=1e-6)


def test_whole_area_crop_is_mirrored_half_the_time():
  image = np.random.default_rng(18).integers(0, 256, (24, 24, 3), np.uint8)
  params = augment.AugmentParams(crop_min_area=1.0, crop_max_aspect_ratio=1.0)
  view = tf.function(lambda s: augment.crop_and_flip(image, 24, s, params))
  views = np.stack([view(seed(i, 19)).numpy() for i in range(400)])
  mirrored = np.all(np.abs(views - image[:, ::-1] / 255) < 1e-6,
                    axis=(1, 2, 3))
  unchanged = np.all(np.abs(views - image / 255) < 1e-6, axis=(1, 2, 3))
  assert np.all(mirrored | unchanged)
  assert abs(mirrored.mean() - 0.5) < binomial_tolerance(0.5, 400)


def test_use_flip_false_never_flips():
  # The views equal their own crop unflipped: a crop of a left-to-right ramp
  # still increases (test_flipped_fraction_is_one_half shows the detector).
  image = horizontal_ramp(40, 40)
  params = augment.AugmentParams(use_flip=False)
  view = tf.function(lambda s: augment.crop_and_flip(image, 16, s, params))
  views = np.stack([view(seed(i, 2)).numpy() for i in range(300)])
  assert not np.any(views[:, 8, 0, 0] > views[:, 8, -1, 0])


def test_crop_boxes_lie_inside_the_image(crop_boxes):
  offsets, sizes = crop_boxes
  assert np.all(offsets >= 0)
  assert np.all(offsets + sizes <= 240)


def test_random_crop_resizes_the_sampled_box():
  image = horizontal_ramp(120, 160)
  for i in range(5):
    offset, size = augment.sample_crop_box(image.shape, seed(i))
    view = augment.random_crop_and_resize(image, 32, seed(i)).numpy()
    left, width = int(offset[1]), int(size[1])
    # Bicubic resizing of a linear ramp stays within the box's columns.
    assert view.shape == (32, 32, 3)
    assert view[:, 0].min() == pytest.approx(left / 159, abs=width / 159 / 16)
    assert view[:, -1].max() == pytest.approx(
        (left + width - 1) / 159, abs=width / 159 / 16)


def test_flipped_fraction_is_one_half():
  # A crop of a left-to-right ramp still increases unless flipped.
  image = horizontal_ramp(40, 40)
  view = tf.function(lambda s: augment.crop_and_flip(image, 16, s))
  views = np.stack([view(seed(i, 2)).numpy() for i in range(1000)])
  flipped = views[:, 8, 0, 0] > views[:, 8, -1, 0]
  assert abs(flipped.mean() - 0.5) < binomial_tolerance(0.5, 1000)


def test_center_crop_keeps_the_central_87_5_percent():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
  # Square of side rint(0.875 * 256) = 224, centred (offsets 16 and 48).
  expected = image[16:240, 48:272] / 255
  out = augment.center_crop_and_resize(tf.constant(image), 224).numpy()
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_resize_keeps_an_image_of_the_right_size():
  image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), np.uint8)
  np.testing.assert_allclose(augment.resize(image, 32).numpy(), image / 255,
                             atol=1e-6)


# ------------------------------------------------------------------ colour --


@pytest.fixture(scope='module')
def color_params():
  return {k: v.numpy() for k, v in augment.sample_color_params(
      4000, seed(3), strength=0.5).items()}


@pytest.mark.parametrize('name,low,high', [
    ('brightness', 0.6, 1.4), ('contrast', 0.6, 1.4),
    ('saturation', 0.6, 1.4), ('hue', -0.1, 0.1)])
def test_jitter_factors_are_uniform_on_published_range(color_params, name,
                                                       low, high):
  # Strength 0.5: 0.8 * 0.5 = 0.4 around 1, hue 0.2 * 0.5 = 0.1 around 0.
  values = color_params[name]
  assert values.min() >= low and values.max() <= high
  assert values.min() < low + 0.01 and values.max() > high - 0.01
  uniform_se = (high - low) / np.sqrt(12 * len(values))
  assert abs(values.mean() - (low + high) / 2) < NUM_SE * uniform_se


def test_brightness_factor_is_never_negative():
  params = augment.sample_color_params(2000, seed(4), strength=2.0)
  assert float(tf.reduce_min(params['brightness'])) >= 0.0


def test_jitter_order_is_a_uniform_random_permutation(color_params):
  order = color_params['order']
  assert np.all(np.sort(order, axis=1) == np.arange(4))
  counts = np.stack([np.bincount(order[:, pos], minlength=4)
                     for pos in range(4)]) / len(order)
  assert np.all(np.abs(counts - 0.25) < binomial_tolerance(0.25, len(order)))


@pytest.mark.parametrize('name,p', [('jitter', 0.8), ('grayscale', 0.2)])
def test_jitter_and_grayscale_probabilities(color_params, name, p):
  fraction = color_params[name].mean()
  assert abs(fraction - p) < binomial_tolerance(p, len(color_params[name]))


def reference_jitter(image, p):
  """The published operations in the sampled order, image by image: numpy
  for brightness and contrast, TensorFlow's fused saturation / hue kernels."""
  x = np.asarray(image)
  for op in p['order']:
    if op == augment.BRIGHTNESS:
      x = x * p['brightness']
    elif op == augment.CONTRAST:
      mean = x.mean(axis=(0, 1), keepdims=True)
      x = (x - mean) * p['contrast'] + mean
    elif op == augment.SATURATION:
      x = tf.image.adjust_saturation(x, p['saturation']).numpy()
    else:
      x = tf.image.adjust_hue(x, p['hue']).numpy()
    x = np.clip(x, 0, 1)
  return x if p['jitter'] else np.asarray(image)


@pytest.fixture(scope='module')
def jitter_case():
  images = colourful_images(24, size=6, rng_seed=5)
  params = augment.sample_color_params(24, seed(6), strength=1.0)
  expected = np.stack([
      reference_jitter(images[i], {k: v[i].numpy() for k, v in params.items()})
      for i in range(24)])
  return images, params, expected


def test_batched_jitter_matches_published_operations(jitter_case):
  images, params, expected = jitter_case
  np.testing.assert_allclose(
      augment.apply_color_jitter(images, params).numpy(), expected, atol=2e-5)


def test_per_image_jitter_matches_published_operations(jitter_case):
  images, params, expected = jitter_case
  out = np.stack([augment.apply_color_jitter_image(
      images[i], {k: v[i:i + 1] for k, v in params.items()}).numpy()
                  for i in range(24)])
  np.testing.assert_allclose(out, expected, atol=2e-5)


def test_grayscale_is_the_luma_in_three_channels():
  images = colourful_images(4)
  luma = np.asarray(images) @ np.array([0.2989, 0.5870, 0.1140])
  out = augment.to_grayscale(images).numpy()
  for channel in range(3):
    np.testing.assert_allclose(out[..., channel], luma, atol=1e-6)


def color_distorted(images, path, params=augment.PUBLISHED, strength=1.0):
  """color_distort of images [N, H, W, 3] by the batch or per-image path."""
  n = len(images)
  if path == 'batch':
    return augment.color_distort(images, seed(7), strength, params).numpy()
  seeds = tf.stack([seed(i, 8) for i in range(n)])
  return next(iter(tf.data.Dataset.from_tensor_slices((images, seeds)).map(
      lambda x, s: augment.color_distort_image(x, s, strength, params)).batch(
          n))).numpy()


@pytest.mark.parametrize('path', ['batch', 'per_image'])
@pytest.mark.parametrize('params,jitter_p,grey_p', [
    (augment.PUBLISHED, 0.8, 0.2),
    (augment.AugmentParams(color_jitter_probability=0.5,
                           grayscale_probability=0.4), 0.5, 0.4)],
                         ids=['published', 'configured'])
def test_color_distort_greys_and_keeps_the_expected_fractions(
    path, params, jitter_p, grey_p):
  n = 2000
  images = colourful_images(n, size=4)
  out = color_distorted(images, path, params)
  grey = is_grey(out)
  assert abs(grey.mean() - grey_p) < binomial_tolerance(grey_p, n)
  # Unchanged: neither jittered nor greyed (0.2 * 0.8 = 0.16 as published).
  keep = (1 - jitter_p) * (1 - grey_p)
  unchanged = np.all(out == np.asarray(images), axis=(1, 2, 3))
  assert abs(unchanged.mean() - keep) < binomial_tolerance(keep, n)


@pytest.mark.parametrize('path', ['batch', 'per_image'])
def test_zero_jitter_and_grayscale_probabilities_keep_colours(path):
  images = colourful_images(200, size=4)
  params = augment.AugmentParams(color_jitter_probability=0.0,
                                 grayscale_probability=0.0)
  np.testing.assert_array_equal(color_distorted(images, path, params),
                                np.asarray(images))


@pytest.mark.parametrize('path', ['batch', 'per_image'])
def test_grayscale_probability_one_greys_every_image(path):
  images = colourful_images(200, size=4)
  params = augment.AugmentParams(grayscale_probability=1.0)
  assert np.all(is_grey(color_distorted(images, path, params)))


# -------------------------------------------------------------------- blur --


def numpy_blur(image, sigma, taps):
  """Separable Gaussian, zero padding, kernel exp(-x^2 / 2 sigma^2) / sum."""
  radius = taps // 2
  x = np.arange(-radius, radius + 1)
  kernel = np.exp(-x**2 / (2 * sigma**2))
  kernel /= kernel.sum()
  height, width, _ = image.shape
  padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)))
  rows = sum(kernel[i] * padded[:, i:i + width] for i in range(taps))
  return sum(kernel[i] * rows[i:i + height] for i in range(taps))


def test_blur_matches_numpy_gaussian_per_image_sigma():
  images = colourful_images(3, size=20)
  sigma = np.array([0.3, 1.0, 2.0], np.float32)
  out = augment.gaussian_blur(images, sigma, 7).numpy()
  for i in range(3):
    np.testing.assert_allclose(out[i], numpy_blur(images[i].numpy(),
                                                  sigma[i], 7), atol=1e-5)


@pytest.mark.parametrize('image_size,taps', [(224, 23), (100, 11), (64, 7),
                                             (32, 3)])
def test_blur_kernel_size_is_image_size_over_ten_made_odd(image_size, taps):
  assert augment.blur_kernel_size(image_size) == taps


@pytest.mark.parametrize('image_size,use_blur,expected', [
    (224, True, True), (224, False, False), (32, True, True),
    (32, False, False), (20, True, True), (19, True, False)])
def test_blur_is_used_at_every_size_with_more_than_one_tap(image_size,
                                                           use_blur, expected):
  # As published, CIFAR-size images are blurred too (3 taps at 32); below
  # 20 pixels the kernel has one tap, the identity, and is skipped.
  assert augment.blur_enabled(image_size, use_blur) == expected


def fitted_blur_error(plain, blurred, taps):
  """Largest pixel error of the best numpy_blur(plain, sigma, taps) fit to
  blurred over sigma in [0.1, 2]."""
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  fit = optimize.minimize_scalar(
      lambda sigma: np.square(numpy_blur(plain, sigma, taps) - blurred).sum(),
      bounds=(0.1, 2.0), method='bounded', options={'xatol': 1e-7})
  return np.abs(numpy_blur(plain, fit.x, taps) - blurred).max()


def test_32_pixel_pretrain_views_are_blurred_with_three_taps():
  # Published: blur at every size when use_blur, image_size // 10 = 3 taps.
  image = tf.constant(np.random.default_rng(24).integers(
      0, 256, (40, 48, 3), np.uint8))
  blur = augment.blur_enabled(32, use_blur=True)
  taps = augment.blur_kernel_size(32)
  view = tf.function(lambda s, blur_on: augment.pretrain_view(
      image, s, 32, 1.0, blur_on, taps))
  n = 200
  blurred = 0
  for i in range(n):
    plain = view(seed(i, 25), False).numpy()
    out = view(seed(i, 25), blur).numpy()
    if np.array_equal(out, plain):
      continue
    blurred += 1
    assert fitted_blur_error(plain, out, 3) < 1e-5
  assert taps == 3
  assert abs(blurred / n - 0.5) < binomial_tolerance(0.5, n)


def test_blur_changes_exactly_the_selected_images():
  images = colourful_images(200, size=12)
  params = {k: v.numpy() for k, v in augment.sample_blur_params(
      200, seed(9)).items()}
  out = augment.apply_blur(images, params, 5).numpy()
  selected = params['blur']
  np.testing.assert_array_equal(out[~selected], np.asarray(images)[~selected])
  for i in np.flatnonzero(selected):
    np.testing.assert_allclose(
        out[i], numpy_blur(images[i].numpy(), params['sigma'][i], 5),
        atol=1e-5)


def test_random_blur_changes_a_blur_probability_fraction():
  images = colourful_images(2000, size=6)
  params = augment.AugmentParams(blur_probability=0.25)
  out = augment.random_blur(images, seed(20), 3, params).numpy()
  changed = np.any(out != np.asarray(images), axis=(1, 2, 3))
  assert abs(changed.mean() - 0.25) < binomial_tolerance(0.25, 2000)


def test_blur_probability_zero_never_blurs():
  images = colourful_images(300, size=6)
  params = augment.AugmentParams(blur_probability=0.0)
  np.testing.assert_array_equal(
      augment.random_blur(images, seed(21), 3, params).numpy(),
      np.asarray(images))
  # A whole view with blur on but probability 0 is the view without blur.
  image = tf.constant(np.random.default_rng(22).integers(
      0, 256, (50, 70, 3), np.uint8))
  view = tf.function(lambda s, blur_on: augment.pretrain_view(
      image, s, 32, 1.0, blur_on, 3, params))
  for i in range(20):
    np.testing.assert_array_equal(view(seed(i, 23), True).numpy(),
                                  view(seed(i, 23), False).numpy())


def test_blur_probability_and_sigma_range():
  params = {k: v.numpy() for k, v in augment.sample_blur_params(
      4000, seed(10)).items()}
  assert abs(params['blur'].mean() - 0.5) < binomial_tolerance(0.5, 4000)
  sigma = params['sigma']
  assert sigma.min() >= 0.1 and sigma.max() <= 2.0
  assert abs(sigma.mean() - 1.05) < NUM_SE * 1.9 / np.sqrt(12 * 4000)


# ------------------------------------------------------------ whole views --


def test_pretrain_views_are_float_in_unit_interval():
  image = tf.constant(np.random.default_rng(11).integers(
      0, 256, (50, 70, 3), np.uint8))
  view = tf.function(lambda s: augment.pretrain_view(
      image, s, 40, strength=1.0, blur=True, kernel_size=5))
  views = np.stack([view(seed(i, 12)).numpy() for i in range(200)])
  assert views.shape == (200, 40, 40, 3) and views.dtype == np.float32
  assert views.min() >= 0.0 and views.max() <= 1.0
  assert views.min() < 0.05 and views.max() > 0.95


def test_same_seed_gives_the_same_view_and_another_seed_another():
  image = tf.constant(np.random.default_rng(13).integers(
      0, 256, (50, 70, 3), np.uint8))
  view = lambda s: augment.pretrain_view(image, s, 32, 1.0, True, 3).numpy()
  np.testing.assert_array_equal(view(seed(1, 2)), view(seed(1, 2)))
  assert np.abs(view(seed(1, 2)) - view(seed(1, 3))).mean() > 0.01


def test_finetune_view_does_not_change_colours():
  flat = np.zeros((30, 40, 3), np.uint8) + np.array([200, 30, 90], np.uint8)
  views = [augment.crop_and_flip(flat, 16, seed(i)).numpy() for i in range(20)]
  np.testing.assert_allclose(np.stack(views), np.broadcast_to(
      np.array([200, 30, 90]) / 255, (20, 16, 16, 3)), atol=1e-6)


def test_pairs_to_rows_puts_first_views_then_second_views():
  # pairs[i, v] holds the number 10 * i + v.
  pairs = tf.reshape(tf.constant([10 * i + v for i in range(3)
                                  for v in range(2)]), [3, 2, 1, 1, 1])
  rows = augment.pairs_to_rows(pairs).numpy().ravel()
  np.testing.assert_array_equal(rows, [0, 10, 20, 1, 11, 21])
