"""Label fractions: class-balanced subsets of a split, saved as id lists.

A subset file holds one example id per line (see simclr.data.datasets for
what an id is), like the published imagenet_subsets/1percent.txt.
"""

import os
from typing import Iterable, List, Sequence

import numpy as np
import tensorflow as tf


def subset_file_name(fraction: float, seed: int) -> str:
  """'label_subset_0.01_seed0.txt' for fraction 0.01, seed 0."""
  return f'label_subset_{fraction:g}_seed{seed}.txt'


def class_quotas(class_sizes: Sequence[int], total: int,
                 rng: np.random.RandomState) -> np.ndarray:
  """Spreads `total` picks over classes as evenly as their sizes allow.

  Every class gets total // C or one more (the extra ones go to randomly
  chosen classes); a class smaller than its share gives all it has and the
  rest is spread over the others.
  """
  sizes = np.asarray(class_sizes, np.int64)
  quotas = np.zeros_like(sizes)
  remaining = min(int(total), int(sizes.sum()))
  while remaining > 0:
    open_classes = np.flatnonzero(quotas < sizes)
    share = remaining // len(open_classes)
    if share == 0:
      chosen = rng.permutation(open_classes)[:remaining]
      quotas[chosen] += 1
      break
    added = np.minimum(share, sizes[open_classes] - quotas[open_classes])
    quotas[open_classes] += added
    remaining -= int(added.sum())
  return quotas


def draw_subset(ids: Sequence[str], labels: Sequence[int], fraction: float,
                seed: int) -> np.ndarray:
  """Class-balanced random subset of the examples, as sorted ids.

  Takes round(fraction * N) examples, but at least one per class, spread
  over the classes by class_quotas and drawn uniformly within each class.
  Deterministic in (ids, labels, fraction, seed), independent of the order
  in which the examples are given.
  """
  ids = np.asarray(ids, dtype=object)
  labels = np.asarray(labels)
  if not 0 < fraction <= 1:
    raise ValueError(f'label fraction {fraction} is not in (0, 1]')
  if labels.size == 0:
    raise ValueError('cannot draw a label subset from an empty split')
  if (labels < 0).any():
    raise ValueError('cannot draw a label subset: the data is unlabeled '
                     '(use a class-per-subfolder tree or a labeled dataset)')
  if len(set(ids.tolist())) != len(ids):
    raise ValueError('example ids are not unique; cannot make a subset file')
  order = np.argsort(ids.astype(str), kind='stable')
  ids, labels = ids[order], labels[order]
  classes = np.unique(labels)
  total = max(int(round(fraction * len(ids))), len(classes))
  rng = np.random.RandomState(seed)
  quotas = class_quotas([np.sum(labels == c) for c in classes], total, rng)
  chosen = []
  for c, quota in zip(classes, quotas):
    members = ids[labels == c]
    chosen.extend(members[rng.permutation(len(members))[:quota]].tolist())
  return np.array(sorted(chosen), dtype=object)


def write_ids(path: str, ids: Iterable[str]):
  """One id per line; creates the directory."""
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(''.join(f'{i}\n' for i in ids))


def read_ids(path: str) -> List[str]:
  """Ids from a subset file (blank lines and surrounding spaces ignored)."""
  with tf.io.gfile.GFile(path, 'r') as f:
    ids = [line.strip() for line in f.read().splitlines()]
  ids = [i for i in ids if i]
  if not ids:
    raise ValueError(f'label subset file {path!r} lists no ids')
  return ids


def check_ids(requested: Sequence[str], available: Sequence[str], path: str):
  """Raises ValueError if requested ids are missing from the split."""
  missing = sorted(set(requested) - set(available))
  if missing:
    raise ValueError(
        f'label subset {path!r}: {len(missing)} of {len(set(requested))}'
        f' ids are not in the split (e.g. {missing[:3]}); is it the right '
        f'dataset and split?')
