"""Each behaviour of TensorFlow / orbit that simclr/compat.py relies on
without a public API; a test here fails by name on the version that changes
it."""

import os

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


def test_flag_values_become_configs_without_tensorflow():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys; from simclr.configs import configs_from_values; '
          'c = configs_from_values(dict(train_mode="distill", '
          'teacher_checkpoint="t", dataset="digits", train_batch_size=8)); '
          'assert c.data.train_batch_size == 8, c; '
          'assert "tensorflow" not in sys.modules, "tensorflow imported"')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.join(
      os.path.dirname(__file__), '..'))
