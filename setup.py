"""Installs the simclr package (library under simclr/, command lines under tf2/;
the project's own tools under tools/ run from a checkout)."""

import setuptools

setuptools.setup(
    name='simclr-tf2',
    version='0.1.0',
    description=('SimCLR and SimCLRv2 (contrastive pretraining, fine-tuning '
                 'on few labels, distillation) in TensorFlow 2 / tf_keras.'),
    packages=setuptools.find_packages(include=['simclr', 'simclr.*', 'tf2']),
    python_requires='>=3.10',
    install_requires=[
        # Pins TensorFlow 2.20 and brings tf-keras, tensorflow-datasets,
        # tensorflow-hub and orbit.
        'tf-models-official==2.20.*',
        'absl-py',
        # hub.KerasLayer on tf_keras under TF >= 2.16 (exports, colabs).
        'tensorflow-hub>=0.16',
        # tensorflow-datasets finds a builder's code through it (the embedded
        # digits builder) but does not always install it.
        'importlib_resources',
        # Bundles the UCI handwritten digits used as the embedded dataset.
        'scikit-learn',
        # Upsamples the embedded digits; draws tf2/show_augmentations.py.
        'Pillow',
        'matplotlib',
        # simclr.export_onnx / tf2/export_onnx.py: the converter (1.17 is the
        # first without protobuf~=3.20, which TensorFlow 2.20 cannot use), the
        # format, and the runtime its parity check runs.
        'tf2onnx>=1.17',
        'onnx',
        'onnxruntime',
    ],
    extras_require={
        'test': [
            'pytest',
            'pytest-xdist>=3.8',  # --no-loadscope-reorder (Makefile)
            'nbclient',
            'nbformat',
            'ipykernel',
        ],
    },
    entry_points={
        'console_scripts': [
            'simclr-run=tf2.run:run_main',
            'simclr-model-zoo=tf2.model_zoo:run',
            'simclr-knn=tf2.knn_eval:run_main',
            'simclr-extract=tf2.extract_features:run_main',
            'simclr-embedding=tf2.show_embedding:run_main',
            'simclr-export=tf2.export_onnx:run_main',
        ],
    },
)
