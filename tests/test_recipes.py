"""The flag files of recipes/ read through tf2/run.py's own flags and
simclr.configs.configs_from_values, checked value by value against the
hyperparameters the papers state (written here from the papers, not from the
project's defaults): SimCLRv2's appendix for ImageNet, and the published
SimCLR README's CIFAR-10 command lines."""

import glob
import os

from absl import flags
import pytest

from simclr import optimization
from simclr.configs import configs_from_values

RECIPES = os.path.join(os.path.dirname(__file__), '..', 'recipes')
IMAGENET = os.path.join(RECIPES, 'imagenet')

# SimCLRv2 Table 1: (depth, width, selective kernels).
TABLE_1 = [(50, 1, False), (50, 1, True), (50, 2, False), (50, 2, True),
           (101, 1, False), (101, 1, True), (101, 2, False), (101, 2, True),
           (152, 1, False), (152, 1, True), (152, 2, False), (152, 2, True),
           (152, 3, True)]
SK_RATIO = 0.0625
IMAGENET_TRAIN_IMAGES = 1281167

# SimCLRv2 appendix (ImageNet). Pretraining: LARS (momentum 0.9), batch 4096,
# 800 epochs, learning rate 6.4 = 0.1 * sqrt(4096) warmed up over 5% of the
# epochs then cosine-decayed, weight decay 1e-4, temperature 0.1, 3-layer
# projection head, memory of 64K with EMA 0.999, global batch norm.
PRETRAIN = dict(batch=4096, epochs=800, peak_lr=6.4, warmup_fraction=0.05,
                weight_decay=1e-4, temperature=0.1, head_layers=3,
                memory=64 * 1024, memory_momentum=0.999)
# Fine-tuning: LARS, batch 1024, no weight decay, no warm-up; learning rate
# 0.16 = 0.005 * sqrt(1024) for standard ResNets, 0.064 = 0.002 * sqrt(1024)
# for width > 1 or SK; 60 epochs on 1%, 30 on 10% and 100%; from the first
# projection-head layer on 1% / 10%, from the head input on 100%.
FINETUNE = {
    '1pct': dict(dataset='imagenet2012_subset/1pct', epochs=60, layer=1),
    '10pct': dict(dataset='imagenet2012_subset/10pct', epochs=30, layer=1),
    '100pct': dict(dataset='imagenet2012', epochs=30, layer=0),
}
FINETUNE_BATCH = 1024
FINETUNE_PEAK_LR = dict(standard=0.16, wide_or_sk=0.064)
# Distillation: the pretraining schedule (batch, learning rate, warm-up
# fraction, weight decay) for 400 epochs; temperature 0.1 for a fine-tuned
# teacher; the distillation loss only (alpha = 1).
DISTILL = dict(epochs=400, temperature=0.1, alpha=1.0)


def parse(*flag_files, extra=()):
  """RunConfigs of `tf2/run.py --flagfile=... ...`, as that command parses
  them (absl's flagfile reader, then configs_from_values)."""
  from tf2 import run  # pylint: disable=g-import-not-at-top
  argv = ['run.py'] + [f'--flagfile={path}' for path in flag_files]
  try:
    flags.FLAGS(argv + list(extra))
    values = run.run_flag_values()
  finally:
    flags.FLAGS.unparse_flags()
  return configs_from_values(values)


def architecture_file(depth, width, sk):
  return os.path.join(IMAGENET, 'architectures',
                      f'r{depth}_{width}x{"_sk" if sk else ""}.flags')


def peak_learning_rate(configs):
  return optimization.scaled_learning_rate(configs.optimizer,
                                           configs.data.train_batch_size)


def warmup_fraction(configs):
  steps_per_epoch = IMAGENET_TRAIN_IMAGES / configs.data.train_batch_size
  warmup = optimization.warmup_steps(
      configs.optimizer, IMAGENET_TRAIN_IMAGES, configs.data.train_batch_size)
  total = configs.train.total_steps(IMAGENET_TRAIN_IMAGES,
                                    configs.data.train_batch_size)
  assert total == pytest.approx(configs.train.train_epochs * steps_per_epoch,
                                abs=1)
  return warmup / total


def check_architecture(model, depth, width, sk):
  assert (model.resnet_depth, model.width_multiplier) == (depth, width)
  assert model.sk_ratio == (SK_RATIO if sk else 0)
  assert model.se_ratio == 0
  assert model.image_size == 224


def check_lars(configs):
  assert configs.optimizer.optimizer == 'lars'
  assert configs.optimizer.momentum == 0.9


def test_there_is_one_architecture_file_per_table_1_variant():
  names = sorted(os.path.basename(p) for p in
                 glob.glob(os.path.join(IMAGENET, 'architectures', '*')))
  assert names == sorted(os.path.basename(architecture_file(*variant))
                         for variant in TABLE_1)


@pytest.mark.parametrize('depth, width, sk', TABLE_1)
def test_pretraining_matches_the_paper(depth, width, sk):
  configs = parse(os.path.join(IMAGENET, 'pretrain.flags'),
                  architecture_file(depth, width, sk))
  check_architecture(configs.model, depth, width, sk)
  check_lars(configs)
  assert configs.train.train_mode == 'pretrain'
  assert configs.data.dataset == 'imagenet2012'
  assert configs.data.train_batch_size == PRETRAIN['batch']
  assert configs.train.train_epochs == PRETRAIN['epochs']
  assert configs.train.train_steps == 0
  assert peak_learning_rate(configs) == pytest.approx(PRETRAIN['peak_lr'])
  assert warmup_fraction(configs) == pytest.approx(
      PRETRAIN['warmup_fraction'], abs=1e-4)
  assert configs.optimizer.weight_decay == PRETRAIN['weight_decay']
  assert configs.train.temperature == PRETRAIN['temperature']
  assert configs.model.proj_head_mode == 'nonlinear'
  assert configs.model.num_head_layers == PRETRAIN['head_layers']
  assert configs.train.memory_size == PRETRAIN['memory']
  assert configs.train.memory_momentum == PRETRAIN['memory_momentum']
  # Both views of every image enter the queue: whole batches of keys.
  assert configs.train.memory_size % (2 * PRETRAIN['batch']) == 0
  assert configs.model.global_bn
  assert configs.data.color_jitter_strength == 1.0 and configs.data.use_blur


@pytest.mark.parametrize('fraction', sorted(FINETUNE))
@pytest.mark.parametrize('depth, width, sk', TABLE_1)
def test_finetuning_matches_the_paper(fraction, depth, width, sk):
  kind = 'wide_or_sk' if width > 1 or sk else 'standard'
  suffix = '_wide_or_sk' if kind == 'wide_or_sk' else ''
  configs = parse(os.path.join(IMAGENET, f'finetune_{fraction}{suffix}.flags'),
                  architecture_file(depth, width, sk),
                  extra=['--checkpoint=pretrained'])
  expected = FINETUNE[fraction]
  check_architecture(configs.model, depth, width, sk)
  check_lars(configs)
  assert configs.train.train_mode == 'finetune'
  assert configs.data.dataset == expected['dataset']
  assert configs.data.train_label_fraction == 1.0  # the subset is the dataset
  assert configs.data.train_batch_size == FINETUNE_BATCH
  assert configs.train.train_epochs == expected['epochs']
  assert peak_learning_rate(configs) == pytest.approx(FINETUNE_PEAK_LR[kind])
  assert configs.optimizer.weight_decay == 0
  assert configs.optimizer.warmup_epochs == 0
  assert configs.model.ft_proj_selector == expected['layer']
  # The head must match the pretrained one to be restored.
  assert configs.model.num_head_layers == PRETRAIN['head_layers']
  assert configs.model.fine_tune_after_block == -1


@pytest.mark.parametrize('depth, width, sk', TABLE_1)
def test_self_distillation_matches_the_paper(depth, width, sk):
  configs = parse(os.path.join(IMAGENET, 'distill_self.flags'),
                  architecture_file(depth, width, sk),
                  extra=['--teacher_checkpoint=finetuned'])
  check_architecture(configs.model, depth, width, sk)
  check_distillation(configs)


def test_big_to_small_distillation_trains_a_resnet50_student():
  configs = parse(os.path.join(IMAGENET, 'distill_big_to_small.flags'),
                  extra=['--teacher_checkpoint=finetuned'])
  check_architecture(configs.model, 50, 1, False)
  check_distillation(configs)


def check_distillation(configs):
  check_lars(configs)
  assert configs.train.train_mode == 'distill'
  assert configs.data.dataset == 'imagenet2012'
  assert configs.train.train_epochs == DISTILL['epochs']
  assert configs.train.distill_temperature == DISTILL['temperature']
  assert configs.train.distill_alpha == DISTILL['alpha']
  # SimCLRv2's Eq. 2 has no tau^2 factor (the project's default adds it).
  assert configs.train.distill_temperature_squared is False
  assert configs.data.train_batch_size == PRETRAIN['batch']
  assert peak_learning_rate(configs) == pytest.approx(PRETRAIN['peak_lr'])
  assert warmup_fraction(configs) == pytest.approx(
      PRETRAIN['warmup_fraction'], abs=1e-4)
  assert configs.optimizer.weight_decay == PRETRAIN['weight_decay']
  # The student has no projection head: it classifies from its encoder.
  assert configs.model.ft_proj_selector == 0


# The published SimCLR README's CIFAR-10 command lines (one machine).
CIFAR_PRETRAIN = dict(
    train_mode='pretrain', train_batch_size=512, train_epochs=1000,
    learning_rate=1.0, weight_decay=1e-4, temperature=0.5, dataset='cifar10',
    image_size=32, eval_split='test', resnet_depth=18, use_blur=False,
    color_jitter_strength=0.5, use_tpu=False)
CIFAR_LINEAR_EVAL = dict(
    mode='train_then_eval', train_mode='finetune', fine_tune_after_block=4,
    zero_init_logits_layer=True, global_bn=False, optimizer='momentum',
    learning_rate=0.1, weight_decay=0.0, train_epochs=100,
    train_batch_size=512, warmup_epochs=0, dataset='cifar10', image_size=32,
    eval_split='test', resnet_depth=18, use_tpu=False)


@pytest.mark.parametrize('name, published', [
    ('pretrain', CIFAR_PRETRAIN), ('linear_eval', CIFAR_LINEAR_EVAL)])
def test_cifar10_recipes_are_the_published_command_lines(name, published):
  configs = parse(os.path.join(RECIPES, 'cifar10', f'{name}.flags'),
                  extra=['--checkpoint=pretrained'])
  for key, value in published.items():
    found = [getattr(config, key) for config in configs.all
             if hasattr(config, key)]
    assert found and all(v == value for v in found), (key, found, value)
  # The CIFAR stem, and the published linear learning-rate scaling.
  assert configs.model.cifar_stem
  assert configs.optimizer.learning_rate_scaling == 'linear'


def test_every_recipe_file_is_tested():
  tested = {'pretrain.flags', 'distill_self.flags',
            'distill_big_to_small.flags', 'linear_eval.flags'}
  tested |= {f'finetune_{fraction}{suffix}.flags' for fraction in FINETUNE
             for suffix in ('', '_wide_or_sk')}
  tested |= {os.path.basename(architecture_file(*v)) for v in TABLE_1}
  files = {os.path.basename(p)
           for p in glob.glob(os.path.join(RECIPES, '**', '*'), recursive=True)
           if os.path.isfile(p)}
  assert files == tested
