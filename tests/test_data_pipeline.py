"""tf.data pipelines: element layouts per mode, augmentation statistics in
the assembled batches, seeds, distribution over replicas and input
pipelines, and evaluation reading every example exactly once."""

import os

import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets
import tensorflow as tf

from simclr import data
from simclr.data import digits as digits_lib

NUM_SE = 4
NUM_TEST_DIGITS = 359


def digits_config(digits_dir, **changes):
  config = data.DataConfig(dataset='digits', data_dir=digits_dir,
                           eval_split='test', image_size=32,
                           train_batch_size=16, eval_batch_size=64, seed=0,
                           shuffle_buffer_size=64)
  return config.replace(**changes)


@pytest.fixture(scope='module')
def colour_folder(tmp_path_factory):
  """24 solid-colour 20x20 PNGs, each its own colour, in 3 class folders."""
  root = tmp_path_factory.mktemp('colours')
  levels = [40, 120, 200]
  colours = [(r, g, b) for r in levels for g in levels for b in levels
             if len({r, g, b}) > 1][:24]
  for i, colour in enumerate(colours):
    folder = root / f'class{i % 3}'
    folder.mkdir(exist_ok=True)
    pixels = np.zeros((20, 20, 3), np.uint8) + np.array(colour, np.uint8)
    Image.fromarray(pixels).save(folder / f'{i:02d}.png')
  return str(root)


def test_pretrain_rows_i_and_b_plus_i_are_two_views_of_one_image(
    colour_folder):
  # Without colour distortion a view of a solid image keeps its colour.
  inputs = data.Inputs(data.DataConfig(
      dataset='folder:' + colour_folder, image_size=16, train_batch_size=8,
      color_jitter_strength=0.0, seed=1))
  images, labels = next(iter(inputs.dataset('views')))
  colours = images.numpy().mean(axis=(1, 2))
  assert images.shape == (16, 16, 16, 3)
  np.testing.assert_allclose(colours[:8], colours[8:], atol=1e-5)
  np.testing.assert_array_equal(labels[:8], labels[8:])
  # Eight different images: eight different colours.
  assert len({tuple(np.round(c, 3)) for c in colours[:8]}) == 8


def test_pretrain_pairs_are_differently_augmented(digits_dir):
  inputs = data.Inputs(digits_config(digits_dir))
  images, _ = next(iter(inputs.dataset('views')))
  first, second = images[:16].numpy(), images[16:].numpy()
  assert np.all(np.abs(first - second).mean(axis=(1, 2, 3)) > 0)


@pytest.mark.parametrize('batch_augmentation', ['none', 'blur', 'all'])
def test_pipeline_views_are_grey_one_time_in_five(colour_folder,
                                                  batch_augmentation):
  inputs = data.Inputs(data.DataConfig(
      dataset='folder:' + colour_folder, image_size=40, use_blur=True,
      train_batch_size=64, seed=2, batch_augmentation=batch_augmentation))
  batches = list(inputs.dataset('views').take(10))
  images = np.concatenate([b[0].numpy() for b in batches])
  assert images.dtype == np.float32
  assert images.min() >= 0.0 and images.max() <= 1.0
  grey = (np.abs(images[..., 0] - images[..., 1]).max(axis=(1, 2)) < 1e-6) & (
      np.abs(images[..., 1] - images[..., 2]).max(axis=(1, 2)) < 1e-6)
  n = len(images)
  assert n == 1280
  assert abs(grey.mean() - 0.2) < NUM_SE * np.sqrt(0.2 * 0.8 / n)


def test_same_seed_same_batches_other_seed_other_batches(digits_dir):
  first = lambda seed: next(iter(data.Inputs(digits_config(
      digits_dir, seed=seed)).dataset('views')))[0].numpy()
  np.testing.assert_array_equal(first(5), first(5))
  assert np.abs(first(5) - first(6)).mean() > 0.01


def test_labeled_and_all_images_give_single_crop_and_flip_views(digits_dir):
  inputs = data.Inputs(digits_config(digits_dir))
  for mode in ('labeled', 'all_images'):
    images, labels = next(iter(inputs.dataset(mode)))
    assert images.shape == (16, 32, 32, 3) and labels.shape == (16,)
    # Digits are grey and crop + flip keeps them grey (no colour jitter).
    np.testing.assert_allclose(images[..., 0], images[..., 1], atol=1e-6)


# Every random choice of the augmentations made the identity.
NO_RANDOM_AUGMENTATION = dict(
    crop_min_area=1.0, crop_max_aspect_ratio=1.0, use_flip=False,
    color_jitter_probability=0.0, grayscale_probability=0.0,
    blur_probability=0.0, use_blur=True, color_jitter_strength=1.0)


def train_digit_images():
  """Bytes of the digits train split's uint8 32x32x3 images, from
  scikit-learn directly."""
  train = digits_lib.split_indices()['train']
  return {i.tobytes() for i in digits_lib.upsampled_images()[train]}


@pytest.mark.parametrize('mode,batch_augmentation', [
    ('views', 'none'), ('views', 'blur'), ('views', 'all'),
    ('labeled', 'blur'), ('all_images', 'blur')])
def test_views_are_the_source_images_when_augmentation_knobs_are_off(
    digits_dir, mode, batch_augmentation):
  # Whole square crops of the square 32x32 digits, no flip, colour or blur:
  # every view is a train image as it is. With the published values nearly
  # every view differs (crops, flips, brightness and contrast of the digits).
  inputs = data.Inputs(digits_config(
      digits_dir, batch_augmentation=batch_augmentation,
      **NO_RANDOM_AUGMENTATION))
  images = next(iter(inputs.dataset(mode)))[0].numpy()
  as_bytes = np.round(images * 255).astype(np.uint8)
  np.testing.assert_allclose(images, as_bytes / 255, atol=1e-6)
  assert {i.tobytes() for i in as_bytes} <= train_digit_images()


@pytest.mark.parametrize('batch_augmentation', ['none', 'all'])
def test_grayscale_probability_one_greys_every_pretraining_view(
    colour_folder, batch_augmentation):
  inputs = data.Inputs(data.DataConfig(
      dataset='folder:' + colour_folder, image_size=16, train_batch_size=24,
      seed=3, grayscale_probability=1.0,
      batch_augmentation=batch_augmentation))
  images = next(iter(inputs.dataset('views')))[0].numpy()
  np.testing.assert_array_equal(images[..., 0], images[..., 1])
  np.testing.assert_array_equal(images[..., 1], images[..., 2])


@pytest.mark.parametrize('batch_augmentation', ['none', 'blur', 'all'])
def test_pretraining_blurs_32_pixel_views_when_use_blur(digits_dir,
                                                        batch_augmentation):
  # Same seed with and without blur: the blur draws its own randomness, so
  # the views differ exactly where one was blurred, about half of them.
  views = {}
  for use_blur in (False, True):
    inputs = data.Inputs(digits_config(
        digits_dir, use_blur=use_blur, batch_augmentation=batch_augmentation))
    views[use_blur] = np.concatenate(
        [b[0].numpy() for b in inputs.dataset('views').take(4)])
  blurred = np.any(views[True] != views[False], axis=(1, 2, 3))
  n = len(blurred)
  assert n == 128
  assert abs(blurred.mean() - 0.5) < NUM_SE * np.sqrt(0.25 / n)


def test_unknown_input_kind_is_rejected_naming_the_kinds(digits_dir):
  with pytest.raises(ValueError, match="'train'.*'views', 'labeled'"):
    data.Inputs(digits_config(digits_dir)).dataset('train')


def test_the_train_mode_names_of_earlier_versions_read_the_same_batches(
    digits_dir):
  """Inputs.dataset('pretrain') etc. (the names before input kinds) give
  the kind's own batches, bit for bit (seeded)."""
  for alias, kind in (('pretrain', 'views'), ('finetune', 'labeled'),
                      ('linear_eval', 'labeled'), ('distill', 'all_images')):
    config = digits_config(digits_dir, seed=3, train_label_fraction=0.1)
    by_alias = next(iter(data.Inputs(config).dataset(alias)))
    by_kind = next(iter(data.Inputs(config).dataset(kind)))
    for a, b in zip(by_alias, by_kind):
      np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_eval_centre_crops_only_images_larger_than_cifar():
  assert data.DataConfig(image_size=224).center_crop_for_eval
  assert data.DataConfig(image_size=33).center_crop_for_eval
  assert not data.DataConfig(image_size=32).center_crop_for_eval
  assert not data.DataConfig(image_size=224,
                             eval_center_crop=False).center_crop_for_eval


# -------------------------------------------------------- exactly once --


def expected_test_digits():
  """Sorted image bytes and label counts of the digits test split, from
  scikit-learn directly."""
  test = digits_lib.split_indices()['test']
  images = digits_lib.upsampled_images()[test]
  labels = sk_datasets.load_digits().target[test]
  return sorted(i.tobytes() for i in images), np.bincount(labels,
                                                          minlength=10)


def real_rows(batches):
  """(sorted image bytes, label counts) of the weight-1 rows."""
  images, labels = [], []
  for image_batch, label_batch, weights in batches:
    keep = np.asarray(weights) == 1.0
    assert set(np.unique(weights)) <= {0.0, 1.0}
    images.extend(np.round(np.asarray(image_batch)[keep] * 255).astype(
        np.uint8))
    labels.extend(np.asarray(label_batch)[keep])
  return sorted(i.tobytes() for i in images), np.bincount(labels,
                                                          minlength=10)


def test_eval_reads_every_example_exactly_once(digits_dir):
  inputs = data.Inputs(digits_config(digits_dir))
  batches = list(inputs.dataset('eval'))
  # 359 examples, batches of 64: 6 batches, 25 blank rows at the end.
  assert len(batches) == inputs.eval_steps() == 6
  images, counts = real_rows(batches)
  expected_images, expected_counts = expected_test_digits()
  assert len(images) == NUM_TEST_DIGITS
  assert images == expected_images
  np.testing.assert_array_equal(counts, expected_counts)


def test_eval_over_two_replicas_reads_every_example_once(
    digits_dir, two_replica_strategy):
  strategy = two_replica_strategy
  inputs = data.Inputs(digits_config(digits_dir))
  batches = []
  steps = 0
  for images, labels, weights in inputs.distributed_dataset(strategy, 'eval'):
    steps += 1
    for parts in zip(*(strategy.experimental_local_results(t)
                       for t in (images, labels, weights))):
      assert parts[0].shape == (32, 32, 32, 3)  # 64 / 2 replicas.
      batches.append(parts)
  assert steps == inputs.eval_steps(num_replicas=2)
  images, counts = real_rows(batches)
  assert images == expected_test_digits()[0]


def test_eval_input_pipelines_partition_the_split(digits_dir):
  # Two hosts with two replicas each: each host reads its own half.
  inputs = data.Inputs(digits_config(digits_dir, eval_batch_size=40))
  per_host = []
  for host in range(2):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=host, num_replicas_in_sync=4)
    per_host.append(list(inputs.dataset('eval', context)))
  steps = inputs.eval_steps(num_replicas=4, num_input_pipelines=2)
  # Every host yields the same number of per-replica batches (2 replicas).
  assert [len(b) for b in per_host] == [2 * steps, 2 * steps]
  images, counts = real_rows(per_host[0] + per_host[1])
  assert images == expected_test_digits()[0]


def test_train_global_batch_is_split_over_replicas(digits_dir,
                                                   two_replica_strategy):
  strategy = two_replica_strategy
  inputs = data.Inputs(digits_config(digits_dir))
  images, labels = next(iter(inputs.distributed_dataset(strategy,
                                                        'pretrain')))
  # Global batch 16 images: 8 per replica, as 16 views each.
  for part in strategy.experimental_local_results(images):
    assert part.shape == (16, 32, 32, 3)
  for part in strategy.experimental_local_results(labels):
    np.testing.assert_array_equal(part[:8], part[8:])


def test_cached_pipeline_gives_the_same_batches(digits_dir):
  first = lambda cache: next(iter(data.Inputs(digits_config(
      digits_dir, cache_dataset=cache)).dataset('labeled')))[0].numpy()
  np.testing.assert_array_equal(first(True), first(False))


@pytest.mark.parametrize('kind', ['views', 'labeled', 'eval'])
def test_input_autotune_switches_tf_data_autotuning_and_not_the_batches(
    digits_dir, kind):
  def pipeline(autotune):
    return data.Inputs(digits_config(
        digits_dir, input_autotune=autotune)).dataset(kind)
  assert data.DataConfig().input_autotune  # As published: tf.data's default.
  assert pipeline(True).options().autotune.enabled is True
  assert pipeline(False).options().autotune.enabled is False
  # Seeded, the order and the augmentation do not depend on it.
  first = lambda autotune: next(iter(pipeline(autotune)))[0].numpy()
  np.testing.assert_array_equal(first(True), first(False))


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match='train_label_fraction'):
    data.DataConfig(train_label_fraction=0.0)
  with pytest.raises(ValueError, match='batch_augmentation'):
    data.DataConfig(batch_augmentation='yes')


@pytest.mark.parametrize('field,value,expected', [
    ('crop_min_area', 0.0, 'in (0, 1]'), ('crop_min_area', 1.5, 'in (0, 1]'),
    ('crop_max_aspect_ratio', 0.75, '>= 1'),
    ('color_jitter_probability', -0.1, 'a probability in [0, 1]'),
    ('grayscale_probability', 1.2, 'a probability in [0, 1]'),
    ('blur_probability', 2.0, 'a probability in [0, 1]')])
def test_config_rejects_out_of_range_augmentation_values(field, value,
                                                         expected):
  with pytest.raises(ValueError) as error:
    data.DataConfig(**{field: value})
  assert str(error.value).startswith(
      f'DataConfig.{field}={value!r}: expected {expected}')


def test_augmentation_knobs_default_to_the_published_values():
  # SPEC section 2: crop area [0.08, 1], aspect ratio [3/4, 4/3], flips,
  # colour jitter p=0.8, greyscale p=0.2, blur p=0.5.
  params = data.DataConfig().augment_params()
  assert params.area_range == (0.08, 1.0)
  assert params.aspect_ratio_range == pytest.approx((3 / 4, 4 / 3))
  assert params.use_flip
  assert (params.color_jitter_probability, params.grayscale_probability,
          params.blur_probability) == (0.8, 0.2, 0.5)


def test_config_round_trips_through_json():
  config = data.DataConfig(dataset='folder:/x', train_label_fraction=0.1)
  assert data.DataConfig.from_json(config.to_json()) == config


def test_folder_without_images_fails_when_inputs_open(tmp_path):
  os.makedirs(tmp_path / 'nothing')
  with pytest.raises(ValueError, match='nothing'):
    data.Inputs(data.DataConfig(dataset=f'folder:{tmp_path / "nothing"}'))


@pytest.mark.parametrize('autotune', [False, True])
def test_one_cpu_replica_reads_the_pipeline_with_its_own_options(
    digits_dir, autotune):
  # tf.distribute would wrap the pipeline in a multi-device iterator whose
  # per-device pipeline has tf.data's default options (autotuning on): the
  # input_autotune=False of a run on one CPU would not reach what it reads.
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  inputs = data.Inputs(digits_config(digits_dir, input_autotune=autotune))
  for kind in ('views', 'labeled', 'eval'):
    dataset = inputs.distributed_dataset(strategy, kind)
    assert isinstance(dataset, tf.data.Dataset), kind
    assert dataset.options().autotune.enabled is autotune, kind
    # The same batches as the distribution gave, in the same order.
    distributed = iter(strategy.distribute_datasets_from_function(
        inputs.input_fn(kind)))
    theirs = [next(distributed) for _ in range(2)]
    for mine, their in zip(dataset.take(2), theirs):
      for a, b in zip(mine, their):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
