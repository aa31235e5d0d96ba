"""What every command line under tf2/ does with bad input: one line on stderr,
`error: <the flag or file>: <what is wrong>`, exit code 2, no traceback (pass
--verbosity=1 to see one where a script supports it), before any real work.

- parse_flags: absl's flag parser for app.run(main, flags_parser=...), which
  reports a malformed or unknown flag in that form (absl's own parser prints
  two lines and exits with 1).
- fail: prints the line and exits.
- BadInput / checked: a script's own checks raise BadInput naming the flag;
  its main() turns it into that line.
- check_demo_flags: the checks of tools/demo.py's flags, kept here so that the
  demo's main() needs one call.

Importing this module (every script does, before it imports TensorFlow) sets
TF_USE_LEGACY_KERAS=1 unless it is set: the project uses the Keras 2 API
(tf_keras) only, and without it `import tensorflow` also loads Keras 3 and
what Keras 3 imports (2 s of each script's start on a 2-core AMD EPYC).
"""

import math
import os
import sys
from typing import Any, Callable, Iterable, List, NoReturn

from absl import app
from absl import flags

from simclr import paths

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')


class BadInput(ValueError):
  """Input a flag names; reported as one line, exit code 2."""

  def __init__(self, flag: str, problem):
    super().__init__(f'--{flag}: {problem}')


def checked(flag, function, *args, **kwargs):
  """function(*args, **kwargs), its ValueError reported against --flag."""
  try:
    return function(*args, **kwargs)
  except ValueError as e:
    raise BadInput(flag, e) from None

EXIT_BAD_INPUT = 2


def one_line(message) -> str:
  """The lines of `message` joined with '; ' (an error is one line)."""
  lines = [line.strip() for line in str(message).splitlines()]
  return '; '.join(line for line in lines if line)


def fail(message, exit_code: int = EXIT_BAD_INPUT) -> NoReturn:
  print(f'error: {one_line(message)}', file=sys.stderr)
  sys.exit(exit_code)


def run(main: Callable[[List[str]], Any]):
  """absl's app.run of `main` with the project's command-line conventions:
  a flag error is one line (parse_flags), and anything on the command line
  that is not a flag is refused with one line (exit 2) before main runs."""
  def checked_main(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments {argv[1:]}: flags are written '
           f'--name=value')
    return main(argv)
  app.run(checked_main, flags_parser=parse_flags)


def parse_flags(argv: List[str]) -> List[str]:
  """Parses argv into absl's FLAGS; a flag error is one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)


def check_demo_flags(values, supported_fractions: Iterable[float]):
  """Exits with one line naming the flag for a bad tools/demo.py flag value:
  --out (a directory it creates and writes), --data_dir (the same, digits
  are prepared there), --seeds (integers), --scale (> 0), --label_fractions
  (among `supported_fractions`, the fractions the demo has settings for),
  --stage_workers (1 or more), --stage_threads (0 or more; both absent
  from the study).
  `values` has the demo's flags as attributes (absl's FLAGS)."""
  for flag in ('out', 'data_dir'):
    path = getattr(values, flag)
    if path is not None:
      try:
        paths.check_output_dir(path)
      except paths.PathError as e:
        fail(f'--{flag}: {e}')
  for seed in values.seeds:
    try:
      int(seed)
    except ValueError:
      fail(f'--seeds: {seed!r} is not an integer (e.g. --seeds=0,1,2)')
  if not values.seeds:
    fail('--seeds: empty (e.g. --seeds=0)')
  if not (math.isfinite(values.scale) and values.scale > 0):
    fail(f'--scale={values.scale}: expected > 0')
  workers = getattr(values, 'stage_workers', 1)
  if workers < 1:
    fail(f'--stage_workers={workers}: expected 1 or more (1: one stage '
         f'after another)')
  threads = getattr(values, 'stage_threads', 0)
  if threads < 0:
    fail(f'--stage_threads={threads}: expected 0 (every core) or more')
  supported = sorted(float(f) for f in supported_fractions)
  for fraction in values.label_fractions:
    try:
      value = float(fraction)
    except ValueError:
      fail(f'--label_fractions: {fraction!r} is not a number')
    if value not in supported:
      fail(f'--label_fractions: {fraction} has no demo settings; expected '
           f'some of {",".join(f"{f:g}" for f in supported)}')
  known = ('pretrain', 'finetune', 'supervised', 'distill', 'raw')
  for group in getattr(values, 'tune_groups', None) or []:
    if group not in known:
      fail(f'--tune_groups: {group!r} is not a grid; expected some of '
           f'{",".join(known)}')
