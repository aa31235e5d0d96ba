"""tf2/run.py's flags and the config dataclasses say the same thing: a flag
left out of simclr.train(...) or configs_from_values(...) takes the
dataclass default, so each default must equal its flag's, and an enum
flag offers exactly the values its config accepts."""

import dataclasses

from absl import flags
import pytest

from simclr import configs

# Flags of tf2/run.py that configure the command, not a run's configs.
COMMAND_ONLY = {'num_logical_cpus'}


@pytest.fixture(scope='module')
def run_flags():
  from tf2 import run  # pylint: disable=g-import-not-at-top
  return {flag.name: flag
          for flag in flags.FLAGS.get_key_flags_for_module(run)}


def dataclass_defaults():
  defaults = {}
  for cls in configs.config_classes():
    for field in dataclasses.fields(cls):
      if field.default is not dataclasses.MISSING:
        value = field.default
      elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
      else:
        continue
      defaults.setdefault(field.name, []).append((cls.__name__, value))
  return defaults


def test_every_flag_default_is_its_config_default(run_flags):
  defaults = dataclass_defaults()
  differ, missing = [], []
  for name, flag in sorted(run_flags.items()):
    if name in COMMAND_ONLY or name in configs.COMPATIBILITY_KEYS:
      continue
    if name not in defaults:
      missing.append(name)
      continue
    for owner, value in defaults[name]:
      if flag.default != value:
        differ.append(f'--{name}: flag {flag.default!r}, '
                      f'{owner}.{name} {value!r}')
  assert not missing, f'flags no config holds: {missing}'
  assert not differ, '\n'.join(differ)


# Config fields without a flag: set by the run itself (the dataset's classes,
# the task's probe) or library-only settings a caller may pass to the
# configs. A new field must be added here or get a flag.
NO_FLAG = {'num_classes', 'linear_probe', 'shuffle_buffer_size',
           'eval_center_crop', 'batch_augmentation', 'eeta'}


def test_every_config_field_has_a_flag_or_is_known_not_to(run_flags):
  fields = {field.name for cls in configs.config_classes()
            for field in dataclasses.fields(cls)}
  assert fields - set(run_flags) == NO_FLAG


def test_an_empty_flag_set_gives_the_dataclass_defaults(run_flags):
  """configs_from_values({}) is what a command line of defaults runs."""
  from_flags = configs.configs_from_values(
      {name: flag.default for name, flag in run_flags.items()
       if name not in COMMAND_ONLY})
  assert from_flags == configs.configs_from_values({})


@pytest.mark.parametrize('flag_name, accepted', [
    ('learning_rate_scaling', configs.LEARNING_RATE_SCALINGS),
    ('mode', configs.RUN_MODES),
    ('train_mode', configs.TRAIN_MODES),
    ('optimizer', configs.OPTIMIZERS),
    ('proj_head_mode', configs.PROJ_HEAD_MODES),
    ('memory_mode', configs.MEMORY_MODES),
    ('distill_on', configs.DISTILL_ON),
    ('linear_eval_protocol', configs.LINEAR_EVAL_PROTOCOLS),
    ('precision', configs.PRECISIONS),
    ('strategy', configs.STRATEGIES),
])
def test_an_enum_flag_offers_what_its_config_accepts(run_flags, flag_name,
                                                     accepted):
  """Each offered value passes the config's validation, and a value outside
  them fails it (so the two lists cannot drift apart unnoticed)."""
  flag = run_flags[flag_name]
  assert sorted(flag.parser.enum_values) == sorted(accepted)
  for value in flag.parser.enum_values:
    needs = {'distill': dict(teacher_checkpoint='/teacher'),
             'linear_eval': dict(checkpoint='/pretrained')}.get(value, {})
    configs.configs_from_values(dict(needs, **{flag_name: value}))
  with pytest.raises(ValueError, match=flag_name):
    configs.configs_from_values({flag_name: 'no_such_value'})
