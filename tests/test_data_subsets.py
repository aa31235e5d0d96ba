"""Label fractions: class-balanced, deterministic subsets written as id
lists to model_dir and reusable through label_subset_file."""

import os

import numpy as np
import pytest
from sklearn import datasets as sk_datasets

from simclr import data
from simclr.data import digits as digits_lib
from simclr.data import subsets


def synthetic_split(class_sizes):
  """ids 'x00000'.. and labels with the given number per class."""
  labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
  ids = np.array([f'x{i:05d}' for i in range(len(labels))], dtype=object)
  return ids, labels


def counts_per_class(chosen, ids, labels):
  label_of = dict(zip(ids, labels))
  return np.bincount([label_of[i] for i in chosen], minlength=labels.max() + 1)


def test_subset_takes_the_same_number_from_every_class():
  ids, labels = synthetic_split([50, 80, 120, 300, 500])
  chosen = subsets.draw_subset(ids, labels, 0.1, seed=0)
  # round(0.1 * 1050) = 105 = 5 classes x 21.
  np.testing.assert_array_equal(counts_per_class(chosen, ids, labels),
                                [21] * 5)


def test_subset_remainder_goes_one_each_to_some_classes():
  ids, labels = synthetic_split([40, 40, 40, 40])
  chosen = subsets.draw_subset(ids, labels, 0.25, seed=3)  # 40 = 4 x 10.
  np.testing.assert_array_equal(counts_per_class(chosen, ids, labels),
                                [10] * 4)
  chosen = subsets.draw_subset(ids, labels, 0.21, seed=3)  # 34 = 8,8,9,9.
  assert sorted(counts_per_class(chosen, ids, labels)) == [8, 8, 9, 9]


def test_small_class_gives_all_it_has_and_the_rest_is_shared():
  ids, labels = synthetic_split([3, 100, 100])
  chosen = subsets.draw_subset(ids, labels, 0.2, seed=0)
  # round(0.2 * 203) = 41: the small class gives 3, the others 19 each.
  np.testing.assert_array_equal(counts_per_class(chosen, ids, labels),
                                [3, 19, 19])


def test_tiny_fraction_still_takes_one_example_per_class():
  ids, labels = synthetic_split([100, 100, 100])
  chosen = subsets.draw_subset(ids, labels, 0.001, seed=0)
  np.testing.assert_array_equal(counts_per_class(chosen, ids, labels),
                                [1, 1, 1])


def test_subset_depends_on_seed_not_on_example_order():
  ids, labels = synthetic_split([30, 30, 30])
  first = subsets.draw_subset(ids, labels, 0.2, seed=7)
  order = np.random.default_rng(0).permutation(len(ids))
  np.testing.assert_array_equal(
      subsets.draw_subset(ids[order], labels[order], 0.2, seed=7), first)
  assert set(subsets.draw_subset(ids, labels, 0.2, seed=8)) != set(first)


def test_subset_draws_every_example_equally_often():
  # Over many seeds each example of a class is chosen with probability
  # quota / class size = 2 / 10.
  ids, labels = synthetic_split([10, 10])
  hits = {i: 0 for i in ids}
  num_seeds = 500
  for seed in range(num_seeds):
    for i in subsets.draw_subset(ids, labels, 0.2, seed=seed):
      hits[i] += 1
  frequency = np.array(list(hits.values())) / num_seeds
  assert np.all(np.abs(frequency - 0.2) < 4 * np.sqrt(0.2 * 0.8 / num_seeds))


def test_unlabeled_examples_cannot_form_a_label_subset():
  with pytest.raises(ValueError, match='unlabeled'):
    subsets.draw_subset(['a', 'b'], [-1, -1], 0.5, seed=0)


def test_ids_file_has_one_id_per_line(tmp_path):
  path = str(tmp_path / 'deep' / 'ids.txt')
  subsets.write_ids(path, ['n01_1.JPEG', 'n02_7.JPEG'])
  assert open(path).read() == 'n01_1.JPEG\nn02_7.JPEG\n'
  assert subsets.read_ids(path) == ['n01_1.JPEG', 'n02_7.JPEG']


# ------------------------------------------------ through Inputs (digits) --


DIGIT_LABELS = sk_datasets.load_digits().target


def digit_label(example_id):
  return DIGIT_LABELS[int(example_id.split('_')[1])]


def test_label_fraction_writes_a_balanced_id_list_to_model_dir(
    digits_dir, tmp_path):
  inputs = data.Inputs(data.DataConfig(
      dataset='digits', data_dir=digits_dir, image_size=32,
      train_label_fraction=0.1, label_subset_seed=0,
      model_dir=str(tmp_path)))
  assert inputs.num_train_examples('labeled') == round(0.1 * 1438)
  path = tmp_path / 'label_subset_0.1_seed0.txt'
  assert inputs.label_subset_path == str(path)
  ids = path.read_text().split()
  assert len(ids) == 144 and len(set(ids)) == 144
  counts = np.bincount([digit_label(i) for i in ids], minlength=10)
  assert counts.sum() == 144 and set(counts) <= {14, 15}
  # Pretraining and distillation still read the whole split.
  assert inputs.num_train_examples('views') == 1438
  assert inputs.num_train_examples('all_images') == 1438


def test_label_subset_file_is_reused(digits_dir, tmp_path):
  config = data.DataConfig(
      dataset='digits', data_dir=digits_dir, image_size=32,
      train_label_fraction=0.05, label_subset_seed=4,
      model_dir=str(tmp_path / 'first'))
  first = data.Inputs(config)
  drawn = first.label_subset()
  reused = data.Inputs(config.replace(
      train_label_fraction=1.0, model_dir=str(tmp_path / 'second'),
      label_subset_file=first.label_subset_path))
  np.testing.assert_array_equal(reused.label_subset(), drawn)
  assert reused.num_train_examples('labeled') == len(drawn)
  assert not os.path.exists(tmp_path / 'second')


def test_finetuning_reads_only_the_subset(digits_dir, tmp_path):
  # A hand-written list holding only fives and sevens.
  train_ids, labels = data.load_source('digits', digits_dir).ids_and_labels(
      'train')
  chosen = [i for i, l in zip(train_ids, labels) if l in (5, 7)][:30]
  path = str(tmp_path / 'fives_and_sevens.txt')
  subsets.write_ids(path, chosen)
  inputs = data.Inputs(data.DataConfig(
      dataset='digits', data_dir=digits_dir, image_size=32,
      train_batch_size=16, label_subset_file=path, seed=0))
  seen = np.concatenate([labels.numpy() for _, labels in
                         inputs.dataset('labeled').take(6)])
  assert set(seen) == {5, 7}


def test_subset_file_with_unknown_ids_is_an_error(digits_dir, tmp_path):
  path = str(tmp_path / 'wrong.txt')
  subsets.write_ids(path, ['digit_0001', 'n01440764_10026.JPEG'])
  inputs = data.Inputs(data.DataConfig(
      dataset='digits', data_dir=digits_dir, label_subset_file=path))
  with pytest.raises(ValueError, match='1 of 2 ids'):
    inputs.label_subset()


def test_folder_subsets_use_relative_paths_as_ids(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for c in ('a', 'b'):
    os.makedirs(tmp_path / 'root' / c)
    for i in range(10):
      Image.new('RGB', (8, 8), (i * 20, 0, 0)).save(
          tmp_path / 'root' / c / f'{i}.png')
  inputs = data.Inputs(data.DataConfig(
      dataset=f'folder:{tmp_path / "root"}', train_label_fraction=0.2,
      model_dir=str(tmp_path / 'model')))
  ids = inputs.label_subset()
  assert len(ids) == 4
  assert sorted(i.split('/')[0] for i in ids) == ['a', 'a', 'b', 'b']


# ------------------------------------------ distillation keeps subset labels --

NUM_TRAIN_DIGITS = 1438
# Whole, unflipped crops of the square digits: every distillation image is
# its source image, so rows can be matched to examples.
IDENTITY_VIEWS = dict(crop_min_area=1.0, crop_max_aspect_ratio=1.0,
                      use_flip=False)


def distill_epoch(inputs):
  """(uint8 images [N, 32, 32, 3], labels [N]) of one epoch of 'distill'."""
  batch_size = inputs.config.train_batch_size
  steps = NUM_TRAIN_DIGITS // batch_size
  assert steps * batch_size == NUM_TRAIN_DIGITS
  images, labels = [], []
  for image_batch, label_batch in inputs.dataset('all_images').take(steps):
    images.append(np.round(image_batch.numpy() * 255).astype(np.uint8))
    labels.append(label_batch.numpy())
  return np.concatenate(images), np.concatenate(labels)


def examples_of(ids):
  """Sorted (image bytes, true label) of digit ids, from scikit-learn."""
  images = digits_lib.upsampled_images()
  return sorted((images[int(i.split('_')[1])].tobytes(), digit_label(i))
                for i in ids)


def rows(images, labels):
  return sorted((i.tobytes(), int(l)) for i, l in zip(images, labels))


def distill_config(digits_dir, **changes):
  # Two batches of 719 make one epoch of the 1,438 train digits.
  return data.DataConfig(
      dataset='digits', data_dir=digits_dir, image_size=32,
      train_batch_size=719, shuffle_buffer_size=256, seed=0,
      **IDENTITY_VIEWS, **changes)


def test_distillation_keeps_only_the_drawn_subset_labels(digits_dir,
                                                         tmp_path):
  inputs = data.Inputs(distill_config(
      digits_dir, train_label_fraction=0.1, label_subset_seed=0,
      model_dir=str(tmp_path)))
  images, labels = distill_epoch(inputs)
  # The ids fine-tuning reads, from the file written to model_dir.
  subset = (tmp_path / 'label_subset_0.1_seed0.txt').read_text().split()
  assert len(subset) == 144
  labeled = labels >= 0
  assert labeled.sum() == 144
  assert rows(images[labeled], labels[labeled]) == examples_of(subset)
  np.testing.assert_array_equal(labels[~labeled], -1)
  # The other rows are the rest of the split, once each.
  train_ids, _ = data.load_source('digits', digits_dir).ids_and_labels(
      'train')
  rest = sorted(set(train_ids) - set(subset))
  assert sorted(i.tobytes() for i in images[~labeled]) == [
      image for image, _ in examples_of(rest)]
  # The whole split is one distillation epoch.
  assert inputs.num_train_examples('all_images') == NUM_TRAIN_DIGITS


def test_distillation_keeps_only_the_labels_of_a_subset_file(digits_dir,
                                                             tmp_path):
  train_ids, labels = data.load_source('digits', digits_dir).ids_and_labels(
      'train')
  chosen = [i for i, l in zip(train_ids, labels) if l in (5, 7)][:30]
  path = str(tmp_path / 'fives_and_sevens.txt')
  subsets.write_ids(path, chosen)
  inputs = data.Inputs(distill_config(digits_dir, label_subset_file=path))
  images, labels = distill_epoch(inputs)
  labeled = labels >= 0
  assert labeled.sum() == 30
  assert rows(images[labeled], labels[labeled]) == examples_of(chosen)
  assert set(labels[~labeled]) == {-1}


def test_distillation_without_a_subset_keeps_every_label(digits_dir):
  inputs = data.Inputs(distill_config(digits_dir))
  images, labels = distill_epoch(inputs)
  train_ids, _ = data.load_source('digits', digits_dir).ids_and_labels(
      'train')
  assert rows(images, labels) == examples_of(train_ids)
