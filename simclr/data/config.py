"""DataConfig (defined with the other configs in simclr/configs.py, so that
flag values become configs without importing TensorFlow) and the names of
the input pipelines."""

from simclr.configs import BATCH_AUGMENTATION  # pylint: disable=unused-import
from simclr.configs import DataConfig  # pylint: disable=unused-import
from simclr.configs import PIPELINES as MODES  # pylint: disable=unused-import
from simclr.configs import SUBSET_PIPELINES as SUBSET_MODES  # pylint: disable=unused-import
