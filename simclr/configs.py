"""Configuration dataclasses. Field names equal the command-line flag names of
the published `tf2/run.py`, so flags map onto them one to one."""

import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
# Images up to this side are "CIFAR-size": the ResNet uses the CIFAR stem (3x3
# conv, stride 1, no max pool) and evaluation only resizes (no centre crop),
# as in the published code.
CIFAR_IMAGE_SIZE = 32
PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
# The train modes (--train_mode), each a task in simclr/tasks/.
TRAIN_MODES = ('pretrain', 'finetune', 'distill', 'linear_eval')
# What an input pipeline yields (simclr.data.Inputs), named for its content;
# each task names the kind it trains on (Task.input_kind):
#   'views'      two augmented views of every image of the split;
#   'labeled'    one cropped and flipped view of each labeled image (the
#                label subset when one is configured, else the split);
#   'all_images' one cropped and flipped view of every image, labels kept
#                only for the label subset's images (-1 elsewhere);
#   'eval'       every image of the eval split once, resized, with weights.
INPUT_KINDS = ('views', 'labeled', 'all_images', 'eval')
# Kinds that read the label subset (and draw it when none is on file).
SUBSET_INPUT_KINDS = ('labeled', 'all_images')
# The names earlier versions gave the kinds (the train mode that read each):
# Inputs still accepts them.
INPUT_KIND_ALIASES = {'pretrain': 'views', 'finetune': 'labeled',
                      'linear_eval': 'labeled', 'distill': 'all_images'}
BATCH_AUGMENTATION = ('none', 'blur', 'all')


def _failer(config, class_name):
  def fail(field, expected):
    raise ValueError(f'{class_name}.{field}={getattr(config, field)!r}: '
                     f'expected {expected}')
  return fail


@dataclasses.dataclass
class ModelConfig:
  """What `simclr.build_model` builds.

  num_classes: size of the supervised head; 0 or None builds no supervised
    head (an encoder, e.g. a distillation student without labels).
  proj_head_mode: 'none' builds no projection head (proj_head_output is then
    the encoder output, as in the published code).
  linear_probe: the supervised head reads a stopped gradient, so that it
    probes the features without shaping the encoder (linear evaluation while
    pretraining, as published).
  """
  resnet_depth: int = 50
  width_multiplier: float = 1
  sk_ratio: float = 0.0
  se_ratio: float = 0.0
  image_size: int = 224
  num_classes: Optional[int] = 1000
  proj_head_mode: str = 'nonlinear'
  num_proj_layers: int = 3
  proj_out_dim: int = 128
  ft_proj_selector: int = 0
  batch_norm_decay: float = 0.9
  global_bn: bool = True
  zero_init_logits_layer: bool = False
  fine_tune_after_block: int = -1
  linear_probe: bool = False

  def __post_init__(self):
    self.validate()

  @property
  def cifar_stem(self) -> bool:
    return self.image_size <= CIFAR_IMAGE_SIZE

  @property
  def num_head_layers(self) -> int:
    """Number of dense layers in the projection head."""
    return {'none': 0, 'linear': 1, 'nonlinear': self.num_proj_layers}[
        self.proj_head_mode]

  def validate(self):
    """Raises ValueError naming the field and what was expected."""
    def fail(field, expected):
      raise ValueError(
          f'ModelConfig.{field}={getattr(self, field)!r}: expected {expected}')

    if self.resnet_depth not in RESNET_DEPTHS:
      fail('resnet_depth', f'one of {RESNET_DEPTHS}')
    if not self.width_multiplier > 0 or int(
        round(64 * self.width_multiplier)) < 2:
      fail('width_multiplier', 'a positive number with 64 * width >= 2')
    if self.sk_ratio < 0:
      fail('sk_ratio', '>= 0 (0 disables selective kernels)')
    if self.se_ratio < 0:
      fail('se_ratio', '>= 0 (0 disables squeeze-excitation)')
    # The CIFAR stem (image_size <= 32) keeps three stride-2 stages, so
    # smaller images would leave block_group4 without a full pixel.
    if self.image_size < 8:
      fail('image_size', '>= 8 (the network downsamples by 8 at least)')
    if self.proj_head_mode not in PROJ_HEAD_MODES:
      fail('proj_head_mode', f'one of {PROJ_HEAD_MODES}')
    if self.proj_head_mode == 'nonlinear' and self.num_proj_layers < 1:
      fail('num_proj_layers', '>= 1 for a nonlinear projection head')
    if self.proj_out_dim < 1:
      fail('proj_out_dim', '>= 1')
    n = self.num_head_layers
    if not -(n + 1) <= self.ft_proj_selector <= n:
      fail('ft_proj_selector',
           f'an index into the {n + 1} projection-head outputs '
           f'(0 = head input, 1..{n} = layer outputs, -1 = last), '
           f'i.e. in [{-(n + 1)}, {n}]')
    if self.num_classes is not None and self.num_classes < 0:
      fail('num_classes', '>= 0 (0 or None: no supervised head)')
    if not -1 <= self.fine_tune_after_block <= 4:
      fail('fine_tune_after_block',
           '-1 (train everything) .. 4 (train only the heads)')
    if not 0 <= self.batch_norm_decay < 1:
      fail('batch_norm_decay', 'in [0, 1)')

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'ModelConfig':
    data = json.loads(text)
    # Files written before linear_probe existed said train_mode='pretrain'.
    if 'linear_probe' not in data:
      data['linear_probe'] = data.get('train_mode') == 'pretrain'
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)


# Published values, the defaults of AugmentParams.
AREA_RANGE = (0.08, 1.0)  # Fraction of the image area the random crop keeps.
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)  # Width / height of the random crop.
COLOR_JITTER_PROBABILITY = 0.8
GRAYSCALE_PROBABILITY = 0.2
BLUR_PROBABILITY = 0.5
@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Ranges and probabilities of the random augmentations.

  The defaults are the published values (SPEC section 2), tuned for ImageNet
  photos; small or orientation-sensitive images (e.g. digits) may want
  larger crops and no flips.

  crop_min_area: in (0, 1]; the random crop keeps a fraction of the image
    area in [crop_min_area, 1].
  crop_max_aspect_ratio: r >= 1; the crop's width / height lies in [1/r, r].
  use_flip: left-right flip with probability 0.5 (False: never flipped).
  color_jitter_probability: in [0, 1], chance that a pretraining view gets
    the colour jitter.
  grayscale_probability: in [0, 1], chance that a pretraining view is then
    turned grey.
  blur_probability: in [0, 1], chance that a pretraining view is blurred
    (when blur is on at all).
  """
  crop_min_area: float = AREA_RANGE[0]
  crop_max_aspect_ratio: float = ASPECT_RATIO_RANGE[1]
  use_flip: bool = True
  color_jitter_probability: float = COLOR_JITTER_PROBABILITY
  grayscale_probability: float = GRAYSCALE_PROBABILITY
  blur_probability: float = BLUR_PROBABILITY

  @property
  def area_range(self) -> Tuple[float, float]:
    return (self.crop_min_area, AREA_RANGE[1])

  @property
  def aspect_ratio_range(self) -> Tuple[float, float]:
    return (1 / self.crop_max_aspect_ratio, self.crop_max_aspect_ratio)


_PUBLISHED_AUGMENT = AugmentParams()


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
  input_autotune: let tf.data's autotuner size the pipeline's parallelism and
    buffers while it runs (as published). Off, each parallel map runs on
    min(16, CPU cores) threads, and a finished pipeline is released at once:
    with it on, releasing a pipeline waits for the autotuner's current sleep
    (measured up to about a minute), a stall wherever one process runs several
    trainings or evaluations (make demo, the study, a notebook).
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
  input_autotune: bool = True
  image_size: int = 224
  color_jitter_strength: float = 1.0
  use_blur: bool = True
  crop_min_area: float = _PUBLISHED_AUGMENT.crop_min_area
  crop_max_aspect_ratio: float = _PUBLISHED_AUGMENT.crop_max_aspect_ratio
  use_flip: bool = _PUBLISHED_AUGMENT.use_flip
  color_jitter_probability: float = _PUBLISHED_AUGMENT.color_jitter_probability
  grayscale_probability: float = _PUBLISHED_AUGMENT.grayscale_probability
  blur_probability: float = _PUBLISHED_AUGMENT.blur_probability
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

  def augment_params(self) -> 'AugmentParams':
    """The ranges and probabilities of the random augmentations."""
    return AugmentParams(
        crop_min_area=self.crop_min_area,
        crop_max_aspect_ratio=self.crop_max_aspect_ratio,
        use_flip=self.use_flip,
        color_jitter_probability=self.color_jitter_probability,
        grayscale_probability=self.grayscale_probability,
        blur_probability=self.blur_probability)

  def validate(self):
    """Raises ValueError naming the field and what was expected."""
    fail = _failer(self, 'DataConfig')

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


LINEAR_EVAL_PROTOCOLS = ('cached', 'augmented')
PRECISIONS = ('float32', 'bfloat16', 'float16')
# --mode: what a run does with its train_mode.
RUN_MODES = ('train', 'eval', 'train_then_eval')
# --memory_mode: the two readings of SimCLRv2's memory (docs/training.md).
MEMORY_MODES = ('negatives', 'moco')
# What distillation trains on: every training image ('all', SimCLRv2's
# default) or only the label subset's ('labeled', Table 2's second row).
DISTILL_ON = ('all', 'labeled')
OPTIMIZERS = ('lars', 'momentum', 'adam')
LEARNING_RATE_SCALINGS = ('linear', 'sqrt')
STRATEGIES = ('auto', 'tpu', 'mirrored', 'multi_worker', 'cpu')


@dataclasses.dataclass
class TrainConfig:
  """The loop and objective of a run (what tf2/run.py's remaining flags say).

  mode: 'train', 'eval' (evaluate the checkpoints of model_dir as they
    appear, or `checkpoint`), 'train_then_eval'.
  train_mode: 'pretrain' (NT-Xent, + memory when memory_size > 0), 'finetune'
    (from `checkpoint`; without one, supervised training from scratch),
    'distill' (student from `teacher_checkpoint`),
    'linear_eval' (linear classifier on frozen final_avg_pool features of
    `checkpoint`). Each is a task in simclr/tasks/<train_mode>.py.
  train_steps / train_epochs: train_steps > 0 overrides epochs; epochs give
    num_examples * train_epochs // batch + 1 steps, as published.
  checkpoint_steps / checkpoint_epochs: checkpoint interval (steps overrides).
  steps_per_loop: steps inside one tf.function call between progress lines
    and summaries (0: the checkpoint interval, as published).
  export_saved_model: write model_dir/saved_model/<step>/ at the end (False
    skips it: the checkpoint alone serves load_model, fine-tuning and
    distillation; exporting traces the model five times).
  memory_size / memory_momentum / memory_mode: SimCLRv2's memory of momentum
    keys (memory_size 0: off); 'negatives' adds the queued keys as negatives
    to SimCLR's loss, 'moco' also takes positives and in-batch candidates
    from the momentum encoder.
  teacher_ft_proj_selector / checkpoint_ft_proj_selector: the
    ft_proj_selector the teacher / --checkpoint was fine-tuned with (None:
    read from our files, 0 for published-format ones, which do not record it).
  distill_temperature / distill_alpha: Eq. 2 / Eq. 3 of SimCLRv2.
  distill_on: 'all' training images (unlabeled ones included) or only the
    'labeled' ones of the label subset.
  distill_temperature_squared: multiply the distillation term by
    distill_temperature**2 (Hinton et al.; the published distillation colab
    does, SimCLRv2's Eq. 2 does not), so that a learning rate chosen at one
    temperature keeps its meaning at another.
  allow_other_label_subset: distill with a label subset other than the one
    the teacher's head was fitted on (or with a subset under a teacher
    fitted on every label), on purpose; refused otherwise.
  linear_eval_protocol: 'cached' (features of centre crops computed once, a
    logistic regression fitted to them by scikit-learn) or 'augmented' (crop
    + flip each step, the published protocol).
  precision: Keras mixed-precision policy; losses, BN statistics, logits in
    float32.
  eval_wait_secs: in eval mode with no checkpoint yet, how long to wait for
    one (0: fail at once).
  deterministic: TensorFlow's op determinism and every seed set from
    DataConfig.seed (0 when unset), so that the same command gives the same
    weights bit for bit (slower; docs/training.md, Reproducibility).
  knn_eval_steps / knn_k / knn_temperature: every knn_eval_steps steps (0:
    never) and at the last step, weighted k-NN accuracy of the encoder's
    final_avg_pool features, the train split the bank and the eval split
    the queries (simclr/knn.py; docs/evaluation.md).
  """
  mode: str = 'train'
  train_mode: str = 'pretrain'
  model_dir: Optional[str] = None
  checkpoint: Optional[str] = None
  checkpoint_ft_proj_selector: Optional[int] = None
  teacher_checkpoint: Optional[str] = None
  teacher_ft_proj_selector: Optional[int] = None
  train_epochs: int = 100
  train_steps: int = 0
  eval_steps: int = 0
  checkpoint_epochs: int = 1
  checkpoint_steps: int = 0
  steps_per_loop: int = 0
  keep_checkpoint_max: int = 5
  keep_hub_module_max: int = 1
  export_saved_model: bool = True
  temperature: float = 0.1
  hidden_norm: bool = True
  lineareval_while_pretraining: bool = True
  memory_size: int = 0
  memory_momentum: float = 0.999
  memory_mode: str = 'negatives'
  distill_temperature: float = 1.0
  distill_alpha: float = 1.0
  distill_on: str = 'all'
  distill_temperature_squared: bool = True
  allow_other_label_subset: bool = False
  linear_eval_protocol: str = 'cached'
  precision: str = 'float32'
  jit_compile: bool = False
  eval_name: Optional[str] = None
  eval_wait_secs: float = 0
  deterministic: bool = False
  knn_eval_steps: int = 0
  knn_k: int = 200
  knn_temperature: float = 0.1

  def __post_init__(self):
    self.validate()

  def total_steps(self, num_examples: int, batch_size: int) -> int:
    """train_steps, or num_examples * train_epochs // batch + 1 (published)."""
    return self.train_steps or (
        num_examples * self.train_epochs // batch_size + 1)

  def validate(self):
    fail = _failer(self, 'TrainConfig')
    if self.mode not in RUN_MODES:
      fail('mode', f'one of {RUN_MODES}')
    if self.train_mode not in TRAIN_MODES:
      fail('train_mode', f'one of {TRAIN_MODES}')
    if self.temperature <= 0:
      fail('temperature', '> 0')
    if self.distill_temperature <= 0:
      fail('distill_temperature', '> 0')
    if not 0 <= self.distill_alpha <= 1:
      fail('distill_alpha', 'in [0, 1]')
    if self.distill_on not in DISTILL_ON:
      fail('distill_on', f'one of {DISTILL_ON}')
    if self.memory_size < 0:
      fail('memory_size', '>= 0 (0 disables the memory)')
    if not 0 <= self.memory_momentum < 1:
      fail('memory_momentum', 'in [0, 1)')
    if self.memory_mode not in MEMORY_MODES:
      fail('memory_mode', f'one of {MEMORY_MODES}')
    if self.linear_eval_protocol not in LINEAR_EVAL_PROTOCOLS:
      fail('linear_eval_protocol', f'one of {LINEAR_EVAL_PROTOCOLS}')
    if self.precision not in PRECISIONS:
      fail('precision', f'one of {PRECISIONS}')
    for field in ('train_steps', 'eval_steps', 'checkpoint_steps',
                  'steps_per_loop'):
      if getattr(self, field) < 0:
        fail(field, '>= 0')
    if self.train_steps == 0 and self.train_epochs < 1:
      fail('train_epochs', '>= 1 when train_steps is 0')
    if self.checkpoint_steps == 0 and self.checkpoint_epochs < 1:
      fail('checkpoint_epochs', '>= 1 when checkpoint_steps is 0')
    if self.keep_checkpoint_max < 1:
      fail('keep_checkpoint_max', '>= 1')
    if self.knn_eval_steps < 0:
      fail('knn_eval_steps', '>= 0 (0: no k-NN evaluation)')
    if self.knn_k < 1:
      fail('knn_k', '>= 1')
    if not self.knn_temperature > 0:
      fail('knn_temperature', '> 0')
    if self.train_mode == 'linear_eval' and not self.checkpoint:
      fail('checkpoint', 'the checkpoint or SavedModel whose features '
                         'linear evaluation trains on')
    if self.train_mode == 'distill' and not self.teacher_checkpoint:
      fail('teacher_checkpoint', 'the fine-tuned teacher (a checkpoint or '
                                 'SavedModel) for distillation')


@dataclasses.dataclass
class OptimizerConfig:
  """Field names and defaults are the published flags'.

  learning_rate: per 256 images with 'linear' scaling (lr * batch / 256), or
    the factor of sqrt(batch) with 'sqrt' scaling; the batch size is
    DataConfig.train_batch_size, the step count TrainConfig's.
  eeta: LARS trust coefficient (not a published flag; its fixed value).
  """
  optimizer: str = 'lars'
  learning_rate: float = 0.3
  learning_rate_scaling: str = 'linear'
  warmup_epochs: float = 10
  weight_decay: float = 1e-6
  momentum: float = 0.9
  eeta: float = 0.001

  def __post_init__(self):
    self.validate()

  def validate(self):
    """Raises ValueError naming the field and what was expected."""
    fail = _failer(self, 'OptimizerConfig')
    if self.optimizer not in OPTIMIZERS:
      fail('optimizer', f'one of {OPTIMIZERS}')
    if self.learning_rate_scaling not in LEARNING_RATE_SCALINGS:
      fail('learning_rate_scaling', f'one of {LEARNING_RATE_SCALINGS}')
    if self.learning_rate < 0:
      fail('learning_rate', '>= 0')
    if self.warmup_epochs < 0:
      fail('warmup_epochs', '>= 0')
    if self.weight_decay < 0:
      fail('weight_decay', '>= 0')
    if not 0 <= self.momentum < 1:
      fail('momentum', 'in [0, 1)')


@dataclasses.dataclass
class StrategyConfig:
  """Field names are the published flags, plus `num_logical_cpus` (testing:
  split the host CPU into N replicas) and `strategy` ('auto' or an explicit
  'tpu' | 'mirrored' | 'multi_worker' | 'cpu')."""
  use_tpu: bool = True
  tpu_name: Optional[str] = None
  tpu_zone: Optional[str] = None
  gcp_project: Optional[str] = None
  master: Optional[str] = None
  num_logical_cpus: int = 0
  strategy: str = 'auto'

  def __post_init__(self):
    fail = _failer(self, 'StrategyConfig')
    if self.strategy not in STRATEGIES:
      fail('strategy', f'one of {STRATEGIES}')
    if self.num_logical_cpus < 0:
      fail('num_logical_cpus', '>= 0')


@dataclasses.dataclass
class RunConfigs:
  """Everything a run needs, one setting in one place."""
  model: ModelConfig
  data: DataConfig
  optimizer: OptimizerConfig
  train: TrainConfig
  strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)

  @property
  def all(self):
    return (self.model, self.data, self.optimizer, self.train, self.strategy)


# tf2/run.py flags that only exist so that published command lines run.
COMPATIBILITY_KEYS = ('train_summary_steps', 'variable_schema')


def config_classes():
  return (ModelConfig, DataConfig, OptimizerConfig, TrainConfig,
          StrategyConfig)


# Settings that two configs read, both from the one flag: the model's stem
# and the pipeline's resize both follow image_size; the pipeline writes label
# subsets into the run's model_dir.
SHARED_FIELDS = ('image_size', 'model_dir')


def config_field_names() -> Dict[str, type]:
  """{field name: the config class holding it}; apart from SHARED_FIELDS,
  each name is defined in one class only (checked here)."""
  owners = {}
  for cls in config_classes():
    for field in dataclasses.fields(cls):
      if field.name in owners and field.name not in SHARED_FIELDS:
        raise AssertionError(f'{field.name} is defined in both '
                             f'{owners[field.name].__name__} and '
                             f'{cls.__name__}')
      owners.setdefault(field.name, cls)
  return owners


def configs_from_values(values: Dict[str, Any]) -> RunConfigs:
  """RunConfigs from {tf2/run.py flag name: value}; absent names take the
  flags' defaults. Pure (no TensorFlow). Raises ValueError naming an unknown
  name or a bad value.

      configs_from_values(dict(dataset='digits', image_size=32,
                               resnet_depth=18, model_dir='/tmp/m'))
  """
  values = dict(values)
  owners = config_field_names()
  unknown = sorted(set(values) - set(owners) - set(COMPATIBILITY_KEYS))
  if unknown:
    raise ValueError(f'unknown settings {unknown}: expected tf2/run.py flag '
                     f'names')
  if not values.get('steps_per_loop') and values.get('train_summary_steps'):
    values['steps_per_loop'] = values['train_summary_steps']

  def pick(cls):
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})

  model, data, optimizer, train, strategy = config_classes()
  return RunConfigs(model=pick(model), data=pick(data),
                    optimizer=pick(optimizer), train=pick(train),
                    strategy=pick(strategy))
