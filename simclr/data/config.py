"""DataConfig (defined with the other configs in simclr/configs.py, so that
flag values become configs without importing TensorFlow) and the kinds of
input pipeline."""

from simclr.configs import BATCH_AUGMENTATION  # pylint: disable=unused-import
from simclr.configs import DataConfig  # pylint: disable=unused-import
from simclr.configs import INPUT_KIND_ALIASES  # pylint: disable=unused-import
from simclr.configs import INPUT_KINDS  # pylint: disable=unused-import
from simclr.configs import SUBSET_INPUT_KINDS  # pylint: disable=unused-import
