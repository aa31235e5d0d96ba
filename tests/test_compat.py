"""Each behaviour of TensorFlow / orbit that simclr/compat.py relies on
without a public API; a test here fails by name on the version that changes
it."""

import numpy as np
import orbit
import pytest
import tensorflow as tf

from simclr import compat


def test_orbit_controller_still_logs_through_its_module_function():
  # compat.quiet_orbit_controller replaces it; if orbit renames it, the
  # Controller's per-loop lines come back on stdout.
  assert callable(orbit.controller._log)  # pylint: disable=protected-access
  compat.quiet_orbit_controller()
  assert orbit.controller._log.__module__ == compat.__name__  # pylint: disable=protected-access


def test_a_non_finite_loss_error_names_the_step_and_every_term():
  @tf.function
  def step(loss, other):
    return compat.assert_finite(loss, tf.constant(7, tf.int64),
                                {'contrast_loss': loss, 'weight_decay': other})

  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    step(tf.constant(np.nan, tf.float32), tf.constant(0.5, tf.float32))
  message = compat.non_finite_message(raised.value)
  assert message.startswith(
      'non-finite loss at step 7: contrast_loss=nan, weight_decay=0.5.')


def test_a_finite_loss_passes_and_other_errors_are_not_ours():
  loss = compat.assert_finite(tf.constant(1.5), 1, {'a_loss': 1.5})
  assert float(loss) == 1.5
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    tf.debugging.Assert(False, ['something else'])
  assert compat.non_finite_message(raised.value) is None
