"""The few places where this project depends on behaviour of TensorFlow or
orbit that has no public API, gathered here so that an upgrade that breaks
one fails a test in tests/test_compat.py by name instead of misbehaving:

- orbit's Controller prints a line of every metric after each loop (its
  module function `orbit.controller._log`, print + absl info); the runs print
  their own one-line progress instead (simclr/tasks/actions.py), so the
  Controller's lines go to the debug log.
- tf.debugging.Assert stops a step before its update when the loss is not
  finite; the step and the loss terms it was given come back only inside the
  text of the InvalidArgumentError, in the Assert's `[item] [item] ...`
  format, which `non_finite_message` reads.
"""

import re
from typing import Dict, Optional

from absl import logging
import orbit
import tensorflow as tf

# Starts the data of the in-graph check, so that its error can be told from
# other InvalidArgumentErrors.
NON_FINITE_MARKER = 'SIMCLR_NON_FINITE_LOSS'


def quiet_orbit_controller():
  """Sends orbit's per-loop print to the debug log (see module doc)."""
  orbit.controller._log = lambda message: logging.debug('%s', message)  # pylint: disable=protected-access


def assert_finite(loss, step, terms: Dict[str, tf.Tensor]):
  """Returns `loss`, after an in-graph check that it is finite whose error
  carries the step and every term (read back by non_finite_message)."""
  data = [NON_FINITE_MARKER, 'step', step]
  for name in sorted(terms):
    data += [name, terms[name]]
  check = tf.debugging.Assert(tf.math.is_finite(loss), data)
  with tf.control_dependencies([check]):
    return tf.identity(loss)


def non_finite_message(error: tf.errors.InvalidArgumentError
                       ) -> Optional[str]:
  """'non-finite loss at step 3: contrast_loss=nan, ...' for the error of
  assert_finite, None for any other error."""
  message = error.message
  if NON_FINITE_MARKER not in message:
    return None
  tail = message.split(NON_FINITE_MARKER, 1)[1]
  items = re.findall(r'\[([^\[\]]*)\]', tail.split('\n', 1)[0])
  pairs = dict(zip(items[::2], items[1::2]))
  step = pairs.pop('step', '?')
  terms = ', '.join(f'{k}={v}' for k, v in pairs.items())
  return (f'non-finite loss at step {step}: {terms}. No checkpoint or export '
          f'was written for it; the latest checkpoint is the last good one.')
