"""Helpers shared by the benchmark scripts (no flags here, so that both
scripts can import them)."""

import os
import time

import numpy as np


def photo_folder(root, count=64):
  """`count` 500x375 JPEG crops of the scikit-learn sample photos."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  photos = datasets.load_sample_images().images  # 427x640 each.
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  for i in range(count):
    photo = photos[i % len(photos)]
    top = rng.integers(0, photo.shape[0] - 375 + 1)
    left = rng.integers(0, photo.shape[1] - 500 + 1)
    Image.fromarray(photo[top:top + 375, left:left + 500]).save(
        os.path.join(root, f'{i:03d}.jpg'), quality=90)
  return 'folder:' + root


def rate(dataset, pairs_per_element, seconds):
  """Elements/s of a dataset after two warm-up elements, times pairs."""
  iterator = iter(dataset)
  next(iterator)
  next(iterator)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(iterator)
    count += 1
  return count * pairs_per_element / (time.perf_counter() - start)

