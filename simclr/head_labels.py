"""Which labels a supervised head was fitted on, and whether a run may start
from it.

SimCLRv2's semi-supervised protocol: a run on a label subset may use only
that subset's labels. A classifier head fitted on other labels (the
pretraining probe sees every label of the split) must not be the starting
point of a 1% run, nor a teacher fitted on every label the teacher of a 1%
student. Every model_dir therefore records what its head was fitted on:

  head_labels.json      {"dataset", "split", "subset_size", "subset_sha256"}
                        (subset_* null: every label of the split)
  head_labels_ids.txt   the subset's example ids, one per line (subsets only)

Exports carry both files as assets. Files that record nothing (the published
code's checkpoints and SavedModels, model_dirs written before this record)
count as fitted on every label of an unknown split.
"""

import dataclasses
import hashlib
import json
import os
from typing import Iterable, Optional

import tensorflow as tf

from simclr import paths

HEAD_LABELS_FILE = 'head_labels.json'
HEAD_LABEL_IDS_FILE = 'head_labels_ids.txt'


def ids_sha256(ids: Iterable[str]) -> str:
  """Hex SHA-256 of the sorted, distinct ids joined by newlines: the same
  subset gives the same hash whatever order or file it comes in."""
  text = '\n'.join(sorted({str(i) for i in ids}))
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


@dataclasses.dataclass(frozen=True)
class HeadLabels:
  """The labels a head was fitted on.

  dataset, split: where they come from (None: not recorded).
  subset_sha256, subset_size: the label subset (ids_sha256 of its ids); None
    when the head saw every label of the split.
  subset_ids: the subset's ids when known (not part of the JSON; written to
    HEAD_LABEL_IDS_FILE).
  """
  dataset: Optional[str] = None
  split: Optional[str] = None
  subset_sha256: Optional[str] = None
  subset_size: Optional[int] = None
  subset_ids: Optional[tuple] = dataclasses.field(default=None, compare=False,
                                                  repr=False)

  @classmethod
  def every_label(cls, dataset: Optional[str], split: Optional[str]):
    return cls(dataset=dataset, split=split)

  @classmethod
  def of_subset(cls, dataset: str, split: str, ids: Iterable[str]):
    ids = tuple(sorted({str(i) for i in ids}))
    return cls(dataset=dataset, split=split, subset_sha256=ids_sha256(ids),
               subset_size=len(ids), subset_ids=ids)

  @property
  def is_subset(self) -> bool:
    return self.subset_sha256 is not None

  @property
  def recorded(self) -> bool:
    return self.dataset is not None

  def describe(self) -> str:
    where = (f'{self.dataset} {self.split}' if self.recorded
             else 'an unrecorded split')
    if not self.is_subset:
      return f'every label of {where}'
    return (f'a subset of {self.subset_size} labels of {where} '
            f'(ids sha256 {self.subset_sha256[:12]})')

  def to_json(self) -> str:
    fields = dict(dataset=self.dataset, split=self.split,
                  subset_size=self.subset_size,
                  subset_sha256=self.subset_sha256)
    return json.dumps(fields, indent=1, sort_keys=True)

  def write(self, directory: str):
    """Writes HEAD_LABELS_FILE (and the ids of a subset) into directory."""
    if self.is_subset:
      if self.subset_ids is None:
        raise ValueError('a subset record needs its ids to be written')
      paths.write_text(os.path.join(directory, HEAD_LABEL_IDS_FILE),
                  ''.join(f'{i}\n' for i in self.subset_ids))
    paths.write_text(os.path.join(directory, HEAD_LABELS_FILE), self.to_json())


# What files without a record count as: every label, split unknown.
UNRECORDED = HeadLabels()


def read(directory: str) -> Optional[HeadLabels]:
  """The record in `directory` (a model_dir or an export's assets), or None
  when there is none. Subset ids are read when their file is there."""
  path = os.path.join(directory, HEAD_LABELS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    try:
      fields = json.loads(f.read())
      record = HeadLabels(dataset=fields['dataset'], split=fields['split'],
                          subset_sha256=fields['subset_sha256'],
                          subset_size=fields['subset_size'])
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'{path}: not a head-labels record ({e})') from None
  ids_path = os.path.join(directory, HEAD_LABEL_IDS_FILE)
  if record.is_subset and tf.io.gfile.exists(ids_path):
    with tf.io.gfile.GFile(ids_path) as f:
      ids = tuple(sorted({line.strip() for line in f if line.strip()}))
    if ids_sha256(ids) != record.subset_sha256:
      raise ValueError(f'{ids_path}: its ids do not give the sha256 that '
                       f'{path} records (the files were changed)')
    record = dataclasses.replace(record, subset_ids=ids)
  return record


def ids_file(directory: str) -> Optional[str]:
  """Path of the subset ids written beside a record, if any."""
  path = os.path.join(directory, HEAD_LABEL_IDS_FILE)
  return path if tf.io.gfile.exists(path) else None


def why_not_reusable(fitted: HeadLabels, run: HeadLabels) -> Optional[str]:
  """None when a head fitted on `fitted` may start a run whose labels are
  `run`; else the reason, in words. Allowed: the same subset of the same
  dataset, or any labels of the split when the run reads every label of
  it (a head of unrecorded origin counts as fitted on every label, which
  only an all-label run may reuse)."""
  if not run.is_subset:
    if not fitted.recorded:
      return None
    if (fitted.dataset, fitted.split) == (run.dataset, run.split):
      return None
    return (f'it was fitted on {fitted.describe()}, this run reads '
            f'{run.describe()}')
  if fitted.is_subset and fitted.subset_sha256 == run.subset_sha256 and (
      fitted.dataset == run.dataset):
    return None
  return (f'it was fitted on {fitted.describe()}, this run may see only '
          f'{run.describe()}')

