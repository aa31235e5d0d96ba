"""The terminal of the demo (tools/demo.py) and the study (tools/study.py):
the tool's own lines on stdout, everything else in <out>/log.txt.

    with console.Console(out, verbose=FLAGS.verbose) as terminal:
      terminal.say('stage 1/9 pretrain: 41s, top-1 83.0%')
      with terminal.live('stage 2/9 finetune') as on_progress:
        simclr.train(on_progress=on_progress, **flag_values)

Without --verbose:
- the first line names the log; the tool's own lines (say) follow;
- TensorFlow's C++ INFO and WARNING lines are not written at all
  (TF_CPP_MIN_LOG_LEVEL=2, read by TensorFlow when it is imported, hence
  `quiet_tensorflow` before the first import); its ERROR lines are kept;
- the process's stderr (file descriptor 2) is the log file, so that what
  still comes from C++ (e.g. 'failed call to cuInit' at ERROR level, on a
  machine without a CUDA driver: the `tensorflow` package starts its CUDA
  platform at import and has no public switch to skip it), absl logging
  (the runner's INFO lines, TFDS's), Python warnings and progress bars go to
  the log; anything printed on stdout by a library (TFDS prints "Downloading
  and preparing dataset" there) goes to the log as well;
- inside a training stage, a terminal shows one updating line (step k/n,
  images/s, time left) from the run's progress callback; a pipe or a file
  gets nothing until the stage's own line;
- an exception leaves its traceback in the log and one line, `error: ...
  (details in <log>)`, on the terminal, with exit code 1; a crash of the
  process itself (a C++ abort, a segfault) prints Python's fault report on
  the terminal.

With --verbose nothing is routed: every line reaches the terminal as it
would without the console, and the Python log (absl, TensorFlow's and
TFDS's Python loggers) is also appended to the log file.
"""

import contextlib
import faulthandler
import logging as python_logging
import math
import os
import shutil
import sys
import time
import traceback

from tf2.cli_checks import one_line

LOG_NAME = 'log.txt'


def quiet_tensorflow():
  """Stops TensorFlow's C++ INFO and WARNING lines at their source (its
  ERROR and FATAL lines stay). Has an effect only before TensorFlow is
  imported; a value the user set is kept."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def duration(seconds: float) -> str:
  """41 -> '41s', 312 -> '5m12s', 7300 -> '2h01m'; '?' for inf / nan."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


def progress_text(label: str, progress) -> str:
  """'label: step k/n, r images/s, about t left' from a
  simclr.tasks.actions.LoopProgress (just the label when None)."""
  if progress is None:
    return label
  rate = f'{progress.images_per_second:.0f} images/s'
  if progress.step >= progress.total_steps:
    # What follows (checkpoint, evaluation) reports no progress.
    return f'{label}: {progress.total_steps} steps done ({rate}), finishing'
  return (f'{label}: step {progress.step}/{progress.total_steps}, {rate}, '
          f'about {duration(progress.seconds_left)} left')


class Console:
  """The terminal of one run of a tool, as a context manager (see the module
  doc). `out` is the output folder (created); the log is <out>/log.txt,
  appended to."""

  def __init__(self, out: str, verbose: bool = False, name: str = 'tool'):
    self.log_path = os.path.join(os.path.abspath(out), LOG_NAME)
    self.verbose = verbose
    self.name = name
    self.terminal = sys.stdout
    self._saved_stderr_fd = None
    self._crash_report = None  # The terminal's stderr, for faulthandler.
    self._faulthandler_was_enabled = faulthandler.is_enabled()
    self._file_handler = None
    self._log_file = None
    self._live_width = 0
    # An updating line needs a terminal; --verbose has absl's lines instead.
    self._can_update = not verbose and self.terminal.isatty()

  # -- the session ----------------------------------------------------------

  def __enter__(self):
    os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
    self.say(f'log: {self.log_path}')
    self._log_file = open(self.log_path, 'a', buffering=1)
    self._log_file.write(f'\n==== {self.name} '
                         f'{time.strftime("%Y-%m-%d %H:%M:%S")} '
                         f'{" ".join(sys.argv[1:])}\n')
    if self.verbose:
      from absl import logging  # pylint: disable=g-import-not-at-top
      # The root logger's records: absl's, and those of the 'tensorflow' and
      # TFDS Python loggers, which propagate to it.
      self._file_handler = python_logging.StreamHandler(self._log_file)
      self._file_handler.setFormatter(logging.PythonFormatter())
      python_logging.getLogger().addHandler(self._file_handler)
      return self
    quiet_tensorflow()
    sys.stdout.flush()
    sys.stderr.flush()
    self._saved_stderr_fd = os.dup(2)
    self._crash_report = os.fdopen(os.dup(self._saved_stderr_fd), 'w')
    faulthandler.enable(self._crash_report)
    os.dup2(self._log_file.fileno(), 2)
    sys.stdout = sys.stderr  # A library's prints: into the log, in order.
    return self

  def __exit__(self, kind, error, trace):
    self._end_live()
    failed = error is not None and not (
        isinstance(error, SystemExit) and error.code in (None, 0))
    if failed:
      # Into the log (and the terminal with --verbose): the whole traceback.
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.error('%s stopped:\n%s', self.name,
                    ''.join(traceback.format_exception(kind, error, trace)))
    self._restore()
    if not failed:
      return False
    if isinstance(error, KeyboardInterrupt):
      message = 'interrupted'
    else:
      message = one_line(f'{type(error).__name__}: {error}')
    print(f'error: {message} (details in {self.log_path})',
          file=sys.stderr, flush=True)
    raise SystemExit(130 if isinstance(error, KeyboardInterrupt) else 1)

  def _restore(self):
    if self._file_handler is not None:
      python_logging.getLogger().removeHandler(self._file_handler)
      self._file_handler = None
    if self._saved_stderr_fd is not None:
      sys.stdout = self.terminal
      sys.stderr.flush()
      if self._faulthandler_was_enabled:
        faulthandler.enable(sys.stderr)
      else:
        faulthandler.disable()
      os.dup2(self._saved_stderr_fd, 2)
      os.close(self._saved_stderr_fd)
      self._saved_stderr_fd = None
      self._crash_report.close()
      self._crash_report = None
    if self._log_file is not None:
      self._log_file.close()
      self._log_file = None

  # -- what the tool says ---------------------------------------------------

  def say(self, line: str):
    """One line (or several) of the tool's own, on the terminal."""
    self._end_live()
    self.terminal.write(line + '\n')
    self.terminal.flush()

  @contextlib.contextmanager
  def live(self, label: str):
    """A context for one stage: shows `label` as an updating line on a
    terminal and yields the callback for simclr.train(on_progress=...),
    which adds the step, images/s and time left after every loop. The line
    is erased at the end (the tool then says the stage's result)."""

    self.update(label)
    try:
      yield lambda progress: self.update(progress_text(label, progress))
    finally:
      self._end_live()

  def update(self, text: str):
    """Shows `text` as the updating line (on a terminal only; nothing with
    --verbose or on a pipe); the next say() erases it."""
    if not self._can_update or not text:
      return
    # Cut to the terminal's width: a wrapped line cannot be rewritten.
    text = text[:max(shutil.get_terminal_size().columns - 1, 20)]
    self.terminal.write('\r' + text.ljust(self._live_width))
    self.terminal.flush()
    self._live_width = len(text)

  def _end_live(self):
    if self._live_width:
      self.terminal.write('\r' + ' ' * self._live_width + '\r')
      self.terminal.flush()
      self._live_width = 0
