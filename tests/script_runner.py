"""Runs the project's scripts (tf2/, tools/) as `python <script> <args>`
does, for the tests that run many short ones (bad input: exit code 2, one
line on stderr). Starting Python and importing TensorFlow, TFDS and the
library takes 6 to 10 s per process on a 2-core machine, more than most of
those runs do after it; here one helper process imports them once, and each
run is a fork of it that executes the script as __main__ with its own
argv, environment, working directory, stdout and stderr (real file
descriptors: TensorFlow's C++ log lands there too) and exit code. The
script's own flags are defined afresh in each fork (absl's FLAGS of the
helper are never parsed).

A run whose environment changes what is read when TensorFlow is imported
(the variables in IMPORT_TIME) is a plain subprocess instead, as are the
runs that need a process of their own (signals, two workers): those tests
call subprocess directly.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence

# Read once, at import or first use, by TensorFlow, OpenBLAS or Python: a run
# that sets them differently from the helper's environment gets its own
# process.
IMPORT_TIME = ('TF_CPP_MIN_LOG_LEVEL', 'TF_USE_LEGACY_KERAS',
               'TF_ENABLE_ONEDNN_OPTS', 'OPENBLAS_NUM_THREADS',
               'OMP_NUM_THREADS', 'PYTHONPATH', 'PYTHONHASHSEED',
               'CUDA_VISIBLE_DEVICES', 'TF_NUM_INTEROP_THREADS',
               'TF_NUM_INTRAOP_THREADS')

# The helper: imports, then one fork per request line; replies with the
# fork's pid, then its exit code. The fork runs the script as the interpreter
# runs `python script`: sys.argv, sys.path[0] = the script's folder,
# __main__; SystemExit gives the exit code (None: 0, a message: printed, 1),
# an exception the script does not catch prints its traceback and exits 1.
# Then the streams and the logging handlers are flushed and the fork ends
# with os._exit: the interpreter's own exit (atexit handlers and module
# teardown) takes 2 to 3 s with TensorFlow loaded, and the project's scripts
# register no atexit work of their own.
_HELPER = r'''
import json, logging, os, runpy, sys, traceback
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # As tf2/cli_checks.py.
import numpy, PIL.Image
import tensorflow, tf_keras, tensorflow_datasets
import simclr.tasks.runner, simclr.checkpoints, simclr.features, simclr.knn
import simclr.export, simclr.zoo, simclr.data.digits
requests = os.fdopen(os.dup(0), 'r')
replies = os.fdopen(os.dup(1), 'w')
for line in requests:
  request = json.loads(line)
  pid = os.fork()
  if pid == 0:
    requests.close()
    replies.close()
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, request['stdout'], os.O_WRONLY | os.O_CREAT
                             | os.O_TRUNC),
                            (2, request['stderr'], os.O_WRONLY | os.O_CREAT
                             | os.O_TRUNC)):
      opened = os.open(path, flags)
      os.dup2(opened, fd)
      os.close(opened)
    script = request['script']
    sys.argv = [script] + request['args']
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
      runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
      if e.code is None or isinstance(e.code, int):
        code = e.code or 0
      else:
        print(e.code, file=sys.stderr)
        code = 1
    except BaseException as e:  # pylint: disable=broad-except
      # The traceback from the script's own frame on, as python prints it.
      tb = e.__traceback__
      while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
      traceback.print_exception(type(e), e, tb or e.__traceback__)
      code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  replies.write(json.dumps({'pid': pid}) + '\n')
  replies.flush()
  _, status = os.waitpid(pid, 0)
  replies.write(json.dumps({'returncode': os.waitstatus_to_exitcode(status)})
                + '\n')
  replies.flush()
'''


class ScriptRunner:
  """One helper process; run() is subprocess.run(capture_output=True,
  text=True) of `python script args` for the scripts of this repository."""

  def __init__(self):
    self._helper = None
    self._buffer = b''
    self._env = dict(os.environ)
    self._tmp = tempfile.TemporaryDirectory(prefix='script_runner')

  def _start(self):
    self._helper = subprocess.Popen(
        [sys.executable, '-c', _HELPER], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env=self._env,
        cwd=os.path.dirname(os.path.abspath(__file__)))

  def run(self, script: str, args: Sequence[str], *,
          env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(self._env if env is None else env)
    cwd = cwd or os.getcwd()
    command = [sys.executable, script] + list(args)
    if any(env.get(k) != self._env.get(k) for k in IMPORT_TIME):
      return subprocess.run(command, capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=cwd)
    if self._helper is None or self._helper.poll() is not None:
      self._start()
    out = os.path.join(self._tmp.name, 'stdout')
    err = os.path.join(self._tmp.name, 'stderr')
    self._helper.stdin.write((json.dumps(dict(
        script=os.path.abspath(script), args=list(args), env=env, cwd=cwd,
        stdout=out, stderr=err)) + '\n').encode())
    self._helper.stdin.flush()
    # The helper imports before its first reply.
    pid = json.loads(self._readline(timeout + 300))['pid']
    try:
      returncode = json.loads(self._readline(timeout))['returncode']
    except subprocess.TimeoutExpired:
      os.kill(pid, signal.SIGKILL)
      self._readline(60)  # The helper reports the killed fork.
      raise subprocess.TimeoutExpired(command, timeout) from None
    with open(out) as f_out, open(err) as f_err:
      return subprocess.CompletedProcess(command, returncode, f_out.read(),
                                         f_err.read())

  def _readline(self, timeout: float) -> bytes:
    """The helper's next reply line, read without Python's buffering (the
    pid and the exit code of a quick run can arrive together)."""
    deadline = time.monotonic() + timeout
    fd = self._helper.stdout.fileno()
    while b'\n' not in self._buffer:
      ready, _, _ = select.select([fd], [], [],
                                  max(0.0, deadline - time.monotonic()))
      if not ready:
        raise subprocess.TimeoutExpired('script runner', timeout)
      chunk = os.read(fd, 65536)
      if not chunk:
        raise RuntimeError('the script runner\'s helper process exited '
                           f'({self._helper.wait()})')
      self._buffer += chunk
    line, self._buffer = self._buffer.split(b'\n', 1)
    return line

  def close(self):
    if self._helper is not None and self._helper.poll() is None:
      self._helper.stdin.close()
      self._helper.wait(timeout=60)
    self._tmp.cleanup()


_SHARED = []


def shared() -> ScriptRunner:
  """This test process's runner (conftest's `scripts` fixture closes it at
  the end of the session)."""
  if not _SHARED:
    _SHARED.append(ScriptRunner())
  return _SHARED[0]


def close_shared():
  if _SHARED:
    _SHARED.pop().close()
