r"""Prints the parameter count of each ResNet variant, built, beside Table 1 of
SimCLRv2 (ResNet up to the final average pool): trainable variables, and all
variables (with BN moving statistics), which is what Table 1 rounds.

  python tf2/model_zoo.py                      # the 13 variants of Table 1
  python tf2/model_zoo.py --variants=50x1,50x1sk,18x0.25
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from simclr import zoo  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    'variants', None,
    'Variants as <depth>x<width>[sk], e.g. 50x1sk, 152x3sk, 18x0.25. '
    'Default: the 13 variants of SimCLRv2 Table 1.')


def main(argv):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  variants = list(zoo.TABLE1_PARAMS_M)
  if FLAGS.variants:
    variants = []
    for text in FLAGS.variants:
      try:
        variants.append(zoo.parse_variant(text))
        zoo.encoder_config(*variants[-1])  # Validates depth and width.
      except ValueError as e:
        cli_checks.fail(f'--variants: {text}: '
                        f'{str(e).replace("ModelConfig.", "")}')
  print('| depth | width | SK | trainable (M) | all variables (M) | '
        'Table 1 (M) |')
  print('|---|---|---|---|---|---|')
  for variant in variants:
    trainable, total = zoo.count_encoder_parameters(*variant)
    paper = zoo.TABLE1_PARAMS_M.get(variant)
    depth, width, sk = variant
    print(f'| {depth} | {width:g}x | {"yes" if sk else "no"} | '
          f'{trainable / 1e6:.2f} | {total / 1e6:.2f} | '
          f'{paper if paper else "-"} |', flush=True)


def run():
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  cli_checks.run(main)


if __name__ == '__main__':
  run()
