"""DataConfig: what the input pipelines read and how they augment it.

Field names equal the published `tf2/run.py` flag names where one exists
(dataset ... use_blur); the others are this project's additions.
"""

import dataclasses
import json
from typing import Optional

from simclr.configs import CIFAR_IMAGE_SIZE
from simclr.data import augment

# Modes a pipeline is built for. 'pretrain': two augmented views per image;
# 'finetune' / 'linear_eval': crop + flip on the label subset; 'distill':
# crop + flip on the whole split, labels kept only on the label subset (if
# one is configured); 'eval': centre crop, whole split once.
MODES = ('pretrain', 'finetune', 'linear_eval', 'distill', 'eval')
SUBSET_MODES = ('finetune', 'linear_eval')
BATCH_AUGMENTATION = ('none', 'blur', 'all')


@dataclasses.dataclass
class DataConfig:
  """Input configuration, passed explicitly to simclr.data.Inputs.

  dataset: a TFDS image-classification dataset name ('cifar10',
    'imagenet2012', 'imagenet2012_subset/1pct', ...), 'digits' (embedded,
    prepared offline into data_dir on first use), or 'folder:/path/to/root'
    (a class-per-subfolder tree gives labels; a flat folder is unlabeled).
  data_dir: TFDS data directory (None: TFDS's default, ~/tensorflow_datasets).
  train_split, eval_split: split names, TFDS slicing allowed ('train[:90%]').
    A folder has one split, 'train'.
  train_batch_size, eval_batch_size: global batch sizes (images; a
    pretraining batch of B images holds 2B views), split over replicas.
  cache_dataset: keep decoded images in memory after the first epoch.
  image_size: side of the square model input.
  color_jitter_strength: s in SPEC section 2 (pretraining only); 0 turns
    colour distortion off (jitter and greyscale), as published.
  use_blur: Gaussian blur in pretraining, at every image_size as published
    (kernel image_size // 10 taps made odd: 3 taps at 32x32; the published
    CIFAR command lines pass use_blur=False).
  crop_min_area: in (0, 1]; random crops keep a fraction of the image area
    in [crop_min_area, 1] (published 0.08). Used by every mode that
    augments, as are crop_max_aspect_ratio and use_flip.
  crop_max_aspect_ratio: r >= 1; crop width / height in [1/r, r] (published
    4/3).
  use_flip: random horizontal flips (p=0.5); False for images whose mirror
    image means something else (digits, text).
  color_jitter_probability: in [0, 1], chance of the colour jitter per
    pretraining view (published 0.8).
  grayscale_probability: in [0, 1], chance of greyscale per pretraining view
    (published 0.2).
  blur_probability: in [0, 1], chance of the Gaussian blur per pretraining
    view when use_blur (published 0.5).
  train_label_fraction: in (0, 1]; below 1, fine-tuning reads a class-balanced
    subset drawn with label_subset_seed, whose example ids are written to
    model_dir/label_subset_<fraction>_seed<seed>.txt; distillation reads the
    whole split but keeps only that subset's labels (-1 elsewhere).
  label_subset_file: a file of example ids (one per line) to fine-tune on
    instead (and the only labels distillation keeps); overrides
    train_label_fraction.
  model_dir: where the drawn label subset is written (None: not written).
  seed: seeds shuffling and augmentation, making the pipeline deterministic
    (None: nondeterministic order and fresh randomness, the fast setting).
  shuffle_buffer_size: examples in the shuffle buffer per input pipeline
    (None: as published, 50 per-replica batches for image_size <= 32, else 10).
  eval_center_crop: centre-crop 87.5% before resizing at evaluation (None: as
    published, only when image_size > 32; smaller images are only resized).
  batch_augmentation: which pretraining augmentations run once per batch,
    vectorised, rather than per image inside Dataset.map: 'blur' (the
    default: crop, flip and colour per image, blur per batch), 'all' (colour
    too; memory-bound on CPU, measured 10-20x slower there, meant for
    accelerators) or 'none'. The distribution of views is the same.
  """
  dataset: str = 'imagenet2012'
  data_dir: Optional[str] = None
  train_split: str = 'train'
  eval_split: str = 'validation'
  train_batch_size: int = 512
  eval_batch_size: int = 256
  cache_dataset: bool = False
  image_size: int = 224
  color_jitter_strength: float = 1.0
  use_blur: bool = True
  crop_min_area: float = augment.PUBLISHED.crop_min_area
  crop_max_aspect_ratio: float = augment.PUBLISHED.crop_max_aspect_ratio
  use_flip: bool = augment.PUBLISHED.use_flip
  color_jitter_probability: float = augment.PUBLISHED.color_jitter_probability
  grayscale_probability: float = augment.PUBLISHED.grayscale_probability
  blur_probability: float = augment.PUBLISHED.blur_probability
  train_label_fraction: float = 1.0
  label_subset_seed: int = 0
  label_subset_file: Optional[str] = None
  model_dir: Optional[str] = None
  seed: Optional[int] = None
  shuffle_buffer_size: Optional[int] = None
  eval_center_crop: Optional[bool] = None
  batch_augmentation: str = 'blur'

  def __post_init__(self):
    self.validate()

  @property
  def center_crop_for_eval(self) -> bool:
    if self.eval_center_crop is None:
      return self.image_size > CIFAR_IMAGE_SIZE
    return self.eval_center_crop

  def augment_params(self) -> augment.AugmentParams:
    """The ranges and probabilities of the random augmentations."""
    return augment.AugmentParams(
        crop_min_area=self.crop_min_area,
        crop_max_aspect_ratio=self.crop_max_aspect_ratio,
        use_flip=self.use_flip,
        color_jitter_probability=self.color_jitter_probability,
        grayscale_probability=self.grayscale_probability,
        blur_probability=self.blur_probability)

  def validate(self):
    """Raises ValueError naming the field and what was expected."""
    def fail(field, expected):
      raise ValueError(
          f'DataConfig.{field}={getattr(self, field)!r}: expected {expected}')

    if not self.dataset:
      fail('dataset', "a TFDS name, 'digits' or 'folder:/path'")
    if self.dataset.startswith('folder:') and not self.dataset[7:]:
      fail('dataset', "'folder:' followed by a directory")
    for field in ('train_batch_size', 'eval_batch_size', 'image_size'):
      if getattr(self, field) < 1:
        fail(field, '>= 1')
    if self.color_jitter_strength < 0:
      fail('color_jitter_strength', '>= 0 (0 turns colour distortion off)')
    if not 0 < self.crop_min_area <= 1:
      fail('crop_min_area', 'in (0, 1] (fraction of the image area a random '
                            'crop keeps at least)')
    if not self.crop_max_aspect_ratio >= 1:
      fail('crop_max_aspect_ratio', '>= 1 (crop width / height lies in '
                                    '[1/r, r])')
    for field in ('color_jitter_probability', 'grayscale_probability',
                  'blur_probability'):
      if not 0 <= getattr(self, field) <= 1:
        fail(field, 'a probability in [0, 1]')
    if not 0 < self.train_label_fraction <= 1:
      fail('train_label_fraction', 'in (0, 1]')
    if self.batch_augmentation not in BATCH_AUGMENTATION:
      fail('batch_augmentation', f'one of {BATCH_AUGMENTATION}')
    if self.shuffle_buffer_size is not None and self.shuffle_buffer_size < 1:
      fail('shuffle_buffer_size', '>= 1 or None')

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'DataConfig':
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})

  def replace(self, **changes) -> 'DataConfig':
    return dataclasses.replace(self, **changes)
