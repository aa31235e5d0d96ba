r"""SimCLR / SimCLRv2 training, evaluation, fine-tuning and distillation.

Every flag of the published google-research/simclr tf2/run.py keeps its name,
default and meaning, so existing command lines run unchanged; the flags after
them are this project's additions. This file only parses flags and hands
their values to simclr.train (simclr/tasks/runner.py).

  python tf2/run.py --train_mode=pretrain --dataset=cifar10 --image_size=32 \
    --train_batch_size=512 --learning_rate=1.0 --temperature=0.5 \
    --resnet_depth=18 --use_blur=False --color_jitter_strength=0.5 \
    --model_dir=/tmp/simclr_test --use_tpu=False
"""

import os
import sys

from absl import app
from absl import flags

if __name__ == '__main__':  # python tf2/run.py in a checkout
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  '..'))

# The choices of every enum flag are the configs' own (simclr.configs does not
# import TensorFlow).
from simclr import configs  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

# --- published flags (name, default, meaning) --------------------------------
flags.DEFINE_float('learning_rate', 0.3,
                   'Initial learning rate per batch size of 256.')
flags.DEFINE_enum('learning_rate_scaling', 'linear',
                  configs.LEARNING_RATE_SCALINGS,
                  'How to scale the learning rate as a function of batch '
                  'size.')
flags.DEFINE_float('warmup_epochs', 10, 'Number of epochs of warmup.')
flags.DEFINE_float('weight_decay', 1e-6, 'Amount of weight decay to use.')
flags.DEFINE_float('batch_norm_decay', 0.9, 'Batch norm decay parameter.')
flags.DEFINE_integer('train_batch_size', 512, 'Batch size for training.')
flags.DEFINE_string('train_split', 'train', 'Split for training.')
flags.DEFINE_integer('train_epochs', 100, 'Number of epochs to train for.')
flags.DEFINE_integer('train_steps', 0,
                     'Number of steps to train for. If provided, overrides '
                     'train_epochs.')
flags.DEFINE_integer('eval_steps', 0,
                     'Number of steps to eval for. If not provided, evals '
                     'over entire dataset.')
flags.DEFINE_integer('eval_batch_size', 256, 'Batch size for eval.')
flags.DEFINE_integer('checkpoint_epochs', 1,
                     'Number of epochs between checkpoints/summaries.')
flags.DEFINE_integer('checkpoint_steps', 0,
                     'Number of steps between checkpoints/summaries. If '
                     'provided, overrides checkpoint_epochs.')
flags.DEFINE_string('eval_split', 'validation', 'Split for evaluation.')
flags.DEFINE_string('dataset', 'imagenet2012',
                    'Name of a dataset: a TFDS name, "digits" (embedded '
                    'real data) or "folder:/path/to/images".')
flags.DEFINE_bool('cache_dataset', False,
                  'Whether to cache the entire dataset in memory.')
flags.DEFINE_bool('input_autotune', True,
                  'Let tf.data autotune the input pipeline (as published). '
                  'Off: parallel maps use min(16, CPU cores) threads and a '
                  'finished pipeline is released at once instead of after '
                  'the autotuner\'s sleep (up to about a minute), which '
                  'matters when one process runs several stages.')
flags.DEFINE_enum('mode', 'train', configs.RUN_MODES,
                  'Whether to perform training or evaluation.')
flags.DEFINE_enum('train_mode', 'pretrain', configs.TRAIN_MODES,
                  'The train mode controls different objectives and '
                  'trainable components (distill and linear_eval are '
                  'additions).')
flags.DEFINE_bool('lineareval_while_pretraining', True,
                  'Whether to finetune supervised head while pretraining.')
flags.DEFINE_string('checkpoint', None,
                    'Loading from the given checkpoint for fine-tuning if a '
                    'finetuning checkpoint does not already exist in '
                    'model_dir. Ours (model_dir, checkpoint, SavedModel) or '
                    'published-format (SavedModel or run.py checkpoint).')
flags.DEFINE_bool('zero_init_logits_layer', False,
                  'If True, zero initialize layers after avg_pool for '
                  'supervised learning.')
flags.DEFINE_integer('fine_tune_after_block', -1,
                     'The layers after which block that we will fine-tune. '
                     '-1 means fine-tuning everything. 0 means fine-tuning '
                     'after stem block. 4 means fine-tuning just the linear '
                     'head.')
flags.DEFINE_string('master', None,
                    'Address/name of the TensorFlow master to use.')
flags.DEFINE_string('model_dir', None, 'Model directory for training.')
flags.DEFINE_string('data_dir', None, 'Directory where dataset is stored.')
flags.DEFINE_bool('use_tpu', True,
                  'Whether to run on TPU. When no TPU is named (--tpu_name, '
                  '--master) or present on this host, the run continues on '
                  'GPUs/CPU with a warning.')
flags.DEFINE_string('tpu_name', None, 'The Cloud TPU to use for training.')
flags.DEFINE_string('tpu_zone', None, 'GCE zone where the Cloud TPU is.')
flags.DEFINE_string('gcp_project', None, 'Project of the Cloud TPU.')
flags.DEFINE_enum('optimizer', 'lars', configs.OPTIMIZERS,
                  'Optimizer to use.')
flags.DEFINE_float('momentum', 0.9, 'Momentum parameter.')
flags.DEFINE_string('eval_name', None, 'Name for eval.')
flags.DEFINE_integer('keep_checkpoint_max', 5,
                     'Maximum number of checkpoints to keep.')
flags.DEFINE_integer('keep_hub_module_max', 1,
                     'Maximum number of Hub modules to keep.')
flags.DEFINE_float('temperature', 0.1,
                   'Temperature parameter for contrastive loss.')
flags.DEFINE_boolean('hidden_norm', True,
                     'L2-normalise the projections before the contrastive '
                     'loss.')
flags.DEFINE_enum('proj_head_mode', 'nonlinear', configs.PROJ_HEAD_MODES,
                  'How the head projection is done.')
flags.DEFINE_integer('proj_out_dim', 128,
                     'Number of head projection dimension.')
flags.DEFINE_integer('num_proj_layers', 3,
                     'Number of non-linear head layers.')
flags.DEFINE_integer('ft_proj_selector', 0,
                     'Which layer of the projection head to use during '
                     'fine-tuning. 0 means no projection head, and -1 means '
                     'the final layer.')
flags.DEFINE_boolean('global_bn', True,
                     'Whether to aggregate BN statistics across distributed '
                     'cores.')
flags.DEFINE_float('width_multiplier', 1,
                   'Multiplier to change width of network (fractional '
                   'widths such as 0.25 are an addition).')
flags.DEFINE_integer('resnet_depth', 50, 'Depth of ResNet.')
flags.DEFINE_float('sk_ratio', 0.,
                   'If it is bigger than 0, it will enable SK. '
                   'Recommendation: 0.0625.')
flags.DEFINE_float('se_ratio', 0., 'If it is bigger than 0, it will enable '
                   'SE.')
flags.DEFINE_integer('image_size', 224, 'Input image size.')
flags.DEFINE_float('color_jitter_strength', 1.0,
                   'The strength of color jittering.')
flags.DEFINE_boolean('use_blur', True,
                     'Whether or not to use Gaussian blur for augmentation '
                     'during pretraining.')

# --- additions ----------------------------------------------------------------
flags.DEFINE_bool('export_saved_model', True,
                  'Write model_dir/saved_model/<step>/ at the end of training '
                  'or evaluation; False keeps only the checkpoints (which '
                  'load_model, fine-tuning and distillation read).')
flags.DEFINE_integer('memory_size', 0,
                     'SimCLRv2 memory: number of past momentum keys used as '
                     'extra negatives (0: off; the paper uses 65536). Must '
                     'be a multiple of 2 x train_batch_size.')
flags.DEFINE_float('memory_momentum', 0.999,
                   'EMA decay of the momentum encoder that produces the '
                   'memory keys.')
flags.DEFINE_enum('memory_mode', 'negatives', configs.MEMORY_MODES,
                  'How the memory keys enter the loss: "negatives" adds '
                  'them as extra negatives to SimCLR\'s loss on the online '
                  'network (SimCLRv2\'s text); "moco" also takes the '
                  'positives and in-batch candidates from the momentum '
                  'encoder.')
flags.DEFINE_string('teacher_checkpoint', None,
                    'distill: the fine-tuned teacher (any form --checkpoint '
                    'takes); kept fixed, in inference mode.')
flags.DEFINE_integer('teacher_ft_proj_selector', None,
                     'distill: the --ft_proj_selector the teacher was '
                     'fine-tuned with. Read from our own model_dirs and '
                     'exports (a contradicting value is an error); '
                     'published-format teachers do not record it: default '
                     '0.')
flags.DEFINE_integer('checkpoint_ft_proj_selector', None,
                     'The --ft_proj_selector the model of --checkpoint was '
                     'fine-tuned with, so that its classifier is reused only '
                     'on the same features. Read from our own files; '
                     'published-format ones: default 0.')
flags.DEFINE_float('distill_temperature', 1.0,
                   'distill: temperature of teacher and student softmax '
                   '(the paper uses 0.1 for fine-tuned teachers).')
flags.DEFINE_float('distill_alpha', 1.0,
                   'distill: weight of the distillation loss; below 1 the '
                   'rest is labeled cross-entropy (SimCLRv2 Eq. 3).')
flags.DEFINE_enum('distill_on', 'all', configs.DISTILL_ON,
                  'distill: the images the student learns the teacher\'s '
                  'predictions on: "all" training images (SimCLRv2), or '
                  'only the "labeled" ones of the label subset (Table 2\'s '
                  '"label + distillation on labeled set").')
flags.DEFINE_bool('distill_temperature_squared', True,
                  'distill: multiply the distillation loss by '
                  'distill_temperature**2 (Hinton et al., the published '
                  'distillation colab; SimCLRv2\'s Eq. 2 does not), which '
                  'keeps its gradients\' scale across temperatures.')
flags.DEFINE_bool('allow_other_label_subset', False,
                  'distill: accept a label subset other than the one the '
                  'teacher was fine-tuned on, or a subset under a teacher '
                  'fitted on every label (the student then counts as '
                  'trained on every label).')
flags.DEFINE_float('train_label_fraction', 1.0,
                   'finetune: class-balanced fraction of the train split '
                   'with labels (e.g. 0.01, 0.1); the chosen ids are '
                   'written to model_dir.')
flags.DEFINE_integer('label_subset_seed', 0,
                     'Seed of the label subset draw.')
flags.DEFINE_string('label_subset_file', None,
                    'A file of example ids (one per line) to fine-tune on '
                    'instead of a drawn fraction.')
flags.DEFINE_enum('linear_eval_protocol', 'cached',
                  configs.LINEAR_EVAL_PROTOCOLS,
                  'linear_eval: "cached" fits a logistic regression '
                  '(scikit-learn, L2 by cross-validation) to features of '
                  'centre crops computed once; "augmented" '
                  'runs crops/flips through the frozen encoder every step '
                  'as published.')
flags.DEFINE_enum('precision', 'float32', configs.PRECISIONS,
                  'Compute precision (Keras mixed-precision policy; losses, '
                  'BN statistics and logits stay float32).')
flags.DEFINE_bool('jit_compile', False, 'XLA-compile the train step.')
flags.DEFINE_enum('strategy', 'auto', configs.STRATEGIES,
                  'tf.distribute strategy (auto: TPU, TF_CONFIG cluster, '
                  'GPUs, CPU, in that order).')
flags.DEFINE_integer('num_logical_cpus', 0,
                     'Testing: split the CPU into N logical devices and '
                     'train on them as N replicas.')
flags.DEFINE_integer('steps_per_loop', 0,
                     'Steps per tf.function call between progress lines and '
                     'summaries (0: the checkpoint interval, as published).')
flags.DEFINE_float('eval_wait_secs', 0,
                   'mode=eval: wait up to this long for new checkpoints in '
                   'model_dir (0: evaluate the latest one and stop).')
flags.DEFINE_integer('knn_eval_steps', 0,
                     'Every N training steps (and at the last), weighted '
                     'k-NN accuracy of the final_avg_pool features: the '
                     'train split is the bank, the eval split the queries '
                     '(knn/top_1_accuracy, knn/top_5_accuracy in TensorBoard '
                     'and train_metrics.json). 0: off.')
flags.DEFINE_integer('knn_k', 200, 'k-NN evaluation: neighbours per query.')
flags.DEFINE_float('knn_temperature', 0.1,
                   'k-NN evaluation: each neighbour votes '
                   'exp(cosine similarity / T).')
# Accepted so that command lines from the published READMEs (written for the
# TF1 code) run unchanged.
flags.DEFINE_integer('train_summary_steps', 0,
                     'Published-README compatibility: when > 0 and '
                     '--steps_per_loop is 0, used as --steps_per_loop.')
flags.DEFINE_string('variable_schema', None,
                    'Published-README compatibility (TF1 restore filter); '
                    'ignored: restoring here is strict, and the supervised '
                    'head follows --zero_init_logits_layer.')
flags.DEFINE_bool('deterministic', False,
                  'Reproducible runs: op determinism and every seed from '
                  '--seed (0 when unset); the same command gives the same '
                  'weights bit for bit, more slowly.')
flags.DEFINE_integer('seed', None,
                     'Seed for data order and augmentation (default: '
                     'nondeterministic).')
flags.DEFINE_float('crop_min_area', 0.08,
                   'Random crops (every mode that augments) keep a fraction '
                   'of the image area in [crop_min_area, 1]; in (0, 1]. '
                   '0.08 as published (tuned for ImageNet photos).')
flags.DEFINE_float('crop_max_aspect_ratio', 4 / 3,
                   'Random crops have width / height in [1/r, r] for this '
                   'r >= 1 (4/3 as published).')
flags.DEFINE_bool('use_flip', True,
                  'Random horizontal flips (p=0.5) in every mode that '
                  'augments; turn off for images whose mirror image means '
                  'something else (digits, text).')
flags.DEFINE_float('color_jitter_probability', 0.8,
                   'Pretraining: probability of the colour jitter per view, '
                   'in [0, 1] (0.8 as published; --color_jitter_strength=0 '
                   'turns colour distortion off altogether).')
flags.DEFINE_float('grayscale_probability', 0.2,
                   'Pretraining: probability of greyscale per view, in '
                   '[0, 1] (0.2 as published).')
flags.DEFINE_float('blur_probability', 0.5,
                   'Pretraining with --use_blur: probability of the Gaussian '
                   'blur per view, in [0, 1] (0.5 as published).')


def run_flag_values():
  """{flag name: value} of this file's flags (not absl's own)."""
  return {flag.name: flag.value
          for flag in FLAGS.get_key_flags_for_module(sys.modules[__name__])}


def _flag_error_name(message: str) -> str:
  """'ModelConfig.resnet_depth=42: ...' -> '--resnet_depth=42: ...'."""
  for prefix in ('ModelConfig.', 'DataConfig.', 'OptimizerConfig.',
                 'TrainConfig.', 'StrategyConfig.'):
    message = message.replace(prefix, '--')
  return message


def main(argv):
  if len(argv) > 1:
    _fail(ValueError(f'unexpected arguments {argv[1:]}: flags are written '
                     f'--name=value'))
  values = run_flag_values()
  # Flag values first, without TensorFlow (simclr.configs does not import
  # it), so that a bad value fails in a second.
  from simclr.configs import configs_from_values  # pylint: disable=g-import-not-at-top
  try:
    configs_from_values(values)
  except ValueError as e:
    _fail(e)
  if FLAGS.num_logical_cpus > 1:
    # Before anything initialises TensorFlow's devices.
    from simclr import distribute  # pylint: disable=g-import-not-at-top
    distribute.split_cpu(FLAGS.num_logical_cpus)
  import simclr  # pylint: disable=g-import-not-at-top
  from simclr.tasks import runner  # pylint: disable=g-import-not-at-top
  try:
    simclr.train(**values)
  except (runner.RunError, simclr.checkpoints.CheckpointError) as e:
    _fail(e)
  except runner.NonFiniteLossError as e:
    _fail(e, exit_code=3)
  except runner.Preempted as e:
    _fail(e, exit_code=143)


def _fail(error, exit_code=2):
  """One line naming the flag or file (exit code 2 for bad input, 3 for a
  non-finite loss, 143 after a preemption checkpoint); the traceback only
  with --verbosity >= 1."""
  if FLAGS.verbosity >= 1:
    raise error
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.fail(_flag_error_name(str(error)), exit_code)


def run_main():
  """Console-script entry point."""
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=cli_checks.parse_flags)


if __name__ == '__main__':
  run_main()
