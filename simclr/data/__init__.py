"""Input pipelines: sources (TFDS, the embedded `digits`, `fashion_mnist`
prepared from Debian's files, image folders), label subsets, SimCLR
augmentations, and distributed tf.data pipelines.

    from simclr import data
    inputs = data.Inputs(data.DataConfig(dataset='digits', eval_split='test',
                                         image_size=32, train_batch_size=256))
    train = inputs.distributed_dataset(strategy, 'views')
    inputs.num_classes, inputs.num_train_examples('labeled'),
    inputs.eval_steps(strategy.num_replicas_in_sync)

Element layouts per input kind are described in simclr.data.pipeline.
"""

from simclr.data import augment
from simclr.data import digits  # Registers the 'digits' TFDS builder.
from simclr.data import subsets
from simclr.data.config import DataConfig
from simclr.data.config import INPUT_KINDS
from simclr.data.datasets import FolderSource
from simclr.data.datasets import Source
from simclr.data.datasets import TfdsSource
from simclr.data.datasets import load_source
from simclr.data.pipeline import Inputs
