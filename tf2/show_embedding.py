r"""A picture of an embedding: the features of a file written by
tf2/extract_features.py mapped to 2-D (scikit-learn t-SNE or PCA of the
L2-normalised features, the geometry k-NN uses), one dot per example
coloured by its label, with the leave-one-out k-NN top-1 of those features
in the title (each example classified by the k most similar *other*
examples of the same file; simclr/knn.py).

    python tf2/show_embedding.py --features=test_features.npz \
      --out=embedding.png --method=tsne

draw_embeddings draws several feature sets side by side into one PNG, e.g.
a pretrained encoder, the raw pixels and a randomly initialised encoder:

    from tf2.show_embedding import draw_embeddings
    draw_embeddings([('pretrained', f1, labels), ('pixels', f2, labels)],
                    'panels.png')

Bad input: one line on stderr naming the flag or file, exit code 2.
"""

import os
import sys
from typing import List, Optional, Sequence, Tuple

from absl import flags
import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags, defined only when run as a script: a program
  that imports draw_embeddings keeps its own (e.g. its own --out)."""
  flags.DEFINE_string('features', None, 'A .npz of tf2/extract_features.py '
                      '(arrays features, labels, ids).')
  flags.DEFINE_string('out', 'embedding.png', 'PNG file to write.')
  flags.DEFINE_enum('method', 'tsne', ['tsne', 'pca'], '2-D map: t-SNE '
                    '(neighbourhoods; after PCA to 50 dimensions) or PCA (the '
                    'two directions of largest variance).')
  flags.DEFINE_integer('k', 200, 'k-NN of the title: neighbours per example '
                       '(at most N - 1).')
  flags.DEFINE_float('temperature', 0.1, 'k-NN of the title: votes '
                     'exp(cosine similarity / temperature).')
  flags.DEFINE_integer('max_points', 10000, 'Draw a random subset of this '
                       'many examples when the file has more (the k-NN uses '
                       'all).')
  flags.DEFINE_integer('seed', 0, 'Seed of t-SNE and of the subset.')


METHODS = ('tsne', 'pca')
# t-SNE runs on the leading principal components, as its authors advise.
TSNE_PCA_DIMENSIONS = 50


def embed_2d(features: np.ndarray, method: str = 'tsne',
             seed: int = 0) -> np.ndarray:
  """float [N, 2] coordinates of the rows of features [N, d], L2-normalised
  first."""
  from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  if method not in METHODS:
    raise ValueError(f'method={method!r}: expected one of {METHODS}')
  x = np.asarray(features, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  if method == 'pca':
    return PCA(n_components=2, random_state=seed).fit_transform(x)
  if x.shape[1] > TSNE_PCA_DIMENSIONS and len(x) > TSNE_PCA_DIMENSIONS:
    x = PCA(n_components=TSNE_PCA_DIMENSIONS,
            random_state=seed).fit_transform(x)
  perplexity = min(30.0, (len(x) - 1) / 3)
  # scikit-learn's Barnes-Hut t-SNE in several OpenMP threads was measured
  # 30x slower than in one on a busy 2-core machine (41 s vs 1.5 s for 359
  # points).
  with threadpool_limits(limits=1, user_api='openmp'):
    return TSNE(n_components=2, init='pca', perplexity=perplexity,
                random_state=seed).fit_transform(x)


def leave_one_out_top1(features: np.ndarray, labels: np.ndarray, k: int,
                       temperature: float) -> Tuple[Optional[float], int]:
  """(top-1 of the weighted k-NN of each labeled row against the other
  labeled rows, the k used: at most their number - 1); (None, 0) with fewer
  than two labeled rows."""
  from simclr import knn  # pylint: disable=g-import-not-at-top
  labeled = labels >= 0
  count = int(labeled.sum())
  if count < 2:
    return None, 0
  k = min(k, count - 1)
  result = knn.knn_leave_one_out(features[labeled], labels[labeled], k=k,
                                 temperature=temperature)
  return result.top_1_accuracy, k


def draw_embeddings(panels: Sequence[Tuple[str, np.ndarray, np.ndarray]],
                    path: str, method: str = 'tsne', k: int = 200,
                    temperature: float = 0.1, max_points: Optional[int] = None,
                    seed: int = 0) -> List[Optional[float]]:
  """Draws each (title, features [N, d], labels int [N], -1 = unlabeled)
  as a 2-D map (embed_2d) side by side into the PNG `path` (written aside,
  then renamed), each titled with its leave-one-out k-NN top-1. Returns
  those top-1 values (None for a panel without labels)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from simclr import features as features_lib  # pylint: disable=g-import-not-at-top

  figure, axes = plt.subplots(1, len(panels), squeeze=False,
                              figsize=(5 * len(panels), 5.4))
  accuracies = []
  for axis, (title, features, labels) in zip(axes[0], panels):
    features = np.asarray(features).reshape(len(features), -1)
    labels = np.asarray(labels)
    top1, used_k = leave_one_out_top1(features, labels, k, temperature)
    accuracies.append(top1)
    rows = np.arange(len(features))
    if max_points and len(rows) > max_points:
      rows = np.sort(np.random.RandomState(seed).choice(
          rows, max_points, replace=False))
    points = embed_2d(features[rows], method, seed)
    _scatter(axis, points, labels[rows])
    if top1 is None:
      subtitle = 'no labels: no k-NN'
    else:
      subtitle = (f'k-NN top-1 {100 * top1:.1f}% (leave-one-out, k={used_k}, '
                  f'T={temperature:g})')
    axis.set_title(f'{title}\n{subtitle}', fontsize=10)
    axis.set_xticks([])
    axis.set_yticks([])
  figure.suptitle(f'{"t-SNE" if method == "tsne" else "PCA"} of L2-normalised '
                  f'features, coloured by label', fontsize=11)
  figure.tight_layout()
  features_lib.write_atomically(
      path, lambda f: figure.savefig(f, format='png', dpi=110))
  plt.close(figure)
  return accuracies


def _scatter(axis, points, labels):
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  classes = np.unique(labels[labels >= 0])
  colours = plt.get_cmap('tab10' if len(classes) <= 10 else 'turbo')
  unlabeled = labels < 0
  if unlabeled.any():
    axis.scatter(points[unlabeled, 0], points[unlabeled, 1], s=4,
                 c='lightgrey', label='unlabeled')
  for i, label in enumerate(classes):
    chosen = labels == label
    colour = colours(i if len(classes) <= 10 else i / max(len(classes) - 1, 1))
    axis.scatter(points[chosen, 0], points[chosen, 1], s=4, color=colour,
                 label=str(label))
  if 0 < len(classes) <= 20:
    axis.legend(markerscale=3, fontsize=7, loc='best', frameon=False)


def load_inputs():
  """The FeatureSet of --features; ValueError naming the flag and file for
  bad input, before anything is computed."""
  from simclr import paths  # pylint: disable=g-import-not-at-top
  if not FLAGS.features:
    raise ValueError('--features: required')
  if FLAGS.k < 1:
    raise ValueError(f'--k={FLAGS.k}: expected >= 1')
  if not FLAGS.temperature > 0:
    raise ValueError(f'--temperature={FLAGS.temperature}: expected > 0')
  if FLAGS.max_points < 2:
    raise ValueError(f'--max_points={FLAGS.max_points}: expected >= 2')
  try:
    paths.check_output_file(FLAGS.out)
  except ValueError as e:
    raise ValueError(f'--out: {e}') from None
  from simclr import features as features_lib  # pylint: disable=g-import-not-at-top
  try:
    return features_lib.load_features(FLAGS.features)
  except ValueError as e:
    raise ValueError(f'--features: {e}') from None


def main(argv):
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  try:
    feature_set = load_inputs()
  except ValueError as e:
    cli_checks.fail(e)
  title = os.path.basename(FLAGS.features)
  (top1,) = draw_embeddings(
      [(title, feature_set.features, feature_set.labels)], FLAGS.out,
      FLAGS.method, FLAGS.k, FLAGS.temperature, FLAGS.max_points, FLAGS.seed)
  summary = 'no labels' if top1 is None else f'k-NN top-1 {top1:.4f}'
  print(f'{FLAGS.out}: {len(feature_set.features)} examples, {summary} '
        f'(leave-one-out)')


def run_main():
  """Console-script entry point."""
  from tf2 import cli_checks  # pylint: disable=g-import-not-at-top
  define_flags()
  cli_checks.run(main)


if __name__ == '__main__':
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  '..'))
  run_main()
