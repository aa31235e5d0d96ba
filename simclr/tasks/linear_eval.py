"""--train_mode=linear_eval: a linear classifier on the frozen encoder's
final_avg_pool features of --checkpoint (fine_tune_after_block=4,
ft_proj_selector=0).

Two protocols (--linear_eval_protocol):
- 'cached' (default): the features of centre crops of the train split are
  computed once, in inference mode, standardised, and a multinomial logistic
  regression is fitted to them by scikit-learn (Newton-CG to convergence,
  its L2 strength chosen by 5-fold cross-validation on those training
  features, on a stratified sample of CV_MAX_EXAMPLES when there are more);
  the standardisation is folded into the model's supervised head, which then
  holds the classifier. Much faster; no label subsets.
- 'augmented' (published): crop + flip views through the frozen encoder at
  every step of the regular training loop, with the run's optimiser.
"""

from typing import List, Optional

from absl import logging
import numpy as np

from simclr import checkpoints
from simclr import features as features_lib
from simclr.configs import ModelConfig
from simclr.tasks.base import RunError
from simclr.tasks.base import StepTerms
from simclr.tasks.base import Task
from simclr.tasks.base import TrainingState
from simclr.tasks.base import supervised_terms

# Inverse L2 strengths the cached protocol's cross-validation chooses from.
CACHED_INVERSE_L2 = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
# The cross-validation that chooses among them runs on a stratified sample of
# at most this many labeled examples (the final fit uses every one): 30 fits
# on 60,000 Fashion-MNIST features took minutes, and 10,000 examples pin
# the choice of a strength on a 10x grid.
CV_MAX_EXAMPLES = 10000


class LinearEvalTask(Task):
  name = 'linear_eval'
  input_kind = 'labeled'

  @property
  def cached(self) -> bool:
    return self.configs.train.linear_eval_protocol == 'cached'

  def check(self):
    data = self.configs.data
    if not self.num_classes:
      raise RunError(f'--train_mode={self.name} needs labels, but --dataset='
                     f'{data.dataset} has none')
    if self.cached and self.configs.train.mode != 'eval' and (
        data.train_label_fraction < 1 or data.label_subset_file):
      raise RunError(
          '--linear_eval_protocol=cached reads the whole train split; use '
          '--linear_eval_protocol=augmented with --train_label_fraction / '
          '--label_subset_file')

  def model_config(self) -> ModelConfig:
    return self.configs.model.replace(
        num_classes=self.num_classes, fine_tune_after_block=4,
        ft_proj_selector=0, linear_probe=False)

  def initialize(self, state, path):
    # The classifier always starts afresh: it is what linear evaluation fits.
    checkpoints.init_from_checkpoint(state.model, path,
                                     with_supervised_head=False)

  def metric_names(self) -> List[str]:
    return ['supervised_loss', 'supervised_acc']

  def loss_terms(self, state, images, labels, outputs) -> StepTerms:
    return supervised_terms(labels, outputs)

  def fit(self, state: TrainingState) -> Optional[int]:
    if not self.cached:
      return None
    if int(state.global_step.numpy()) > 0:
      return int(state.global_step.numpy())  # Restored a finished fit.
    data = self.configs.data
    features, labels, _ = features_lib.extract_features(
        state.model, data, data.train_split, source=self.inputs.source)
    logging.info('linear eval: fitting %d cached training features of '
                 'width %d', len(features), features.shape[1])
    inverse_l2 = fit_linear_head(state.model.supervised_head, features,
                                 labels, seed=data.seed or 0)
    logging.info('linear eval: inverse L2 strength %g chosen by '
                 'cross-validation', inverse_l2)
    state.global_step.assign(1)  # One fit.
    return 1


def _logistic_regression(**kwargs):
  # Newton-CG: on encoder features (nearly separable at large C) it reaches
  # the optimum in ~10 iterations where L-BFGS needs hundreds; 26x faster on
  # the digits' 1,438 x 128 features over the whole grid (0.4 s vs 11 s).
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  return linear_model.LogisticRegression(solver='newton-cg', max_iter=2000,
                                         **kwargs)


def fit_linear_head(head, features, labels, seed: int = 0,
                    unlabeled_features=None) -> float:
  """Sets `head` (a SupervisedHead of C classes) to the multinomial logistic
  regression of labels int [N] in 0..C-1 on features float [N, D], fitted by
  scikit-learn on standardised features with the inverse L2 strength that
  up-to-5-fold stratified cross-validation on (features, labels) prefers
  among CACHED_INVERSE_L2 (scikit-learn's default, 1, when some class has
  fewer than 2 examples: no fold could then hold it out); over
  CV_MAX_EXAMPLES examples, the search sees a stratified sample of that
  many (drawn with `seed`) and the chosen strength is then fitted to every
  example. The mean and scale
  of the standardisation come from `unlabeled_features` when given (e.g. the
  whole split when only a few examples are labeled), else from `features`.
  head(x) then gives that classifier's logits on raw features x (the
  standardisation folded into kernel and bias); classes absent from `labels`
  get a zero kernel and a bias far below the others. Returns the inverse L2
  strength used."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top
  num_classes = head.dense.units
  scaler = preprocessing.StandardScaler().fit(
      features if unlabeled_features is None else unlabeled_features)
  smallest_class = int(np.bincount(labels)[np.unique(labels)].min())
  if smallest_class >= 2:
    folds = model_selection.StratifiedKFold(
        min(5, smallest_class), shuffle=True, random_state=seed)
    standardised = scaler.transform(features)
    sampled = len(labels) > CV_MAX_EXAMPLES
    search_x, search_y = standardised, labels
    if sampled:
      search_x, _, search_y, _ = model_selection.train_test_split(
          standardised, labels, train_size=CV_MAX_EXAMPLES, stratify=labels,
          random_state=seed)
    # Without a sample, the search's refit on every example is the classifier.
    search = model_selection.GridSearchCV(
        _logistic_regression(), {'C': list(CACHED_INVERSE_L2)}, cv=folds,
        refit=not sampled).fit(search_x, search_y)
    inverse_l2 = search.best_params_['C']
    classifier = (_logistic_regression(C=inverse_l2).fit(standardised, labels)
                  if sampled else search.best_estimator_)
  else:
    inverse_l2 = 1.0
    classifier = _logistic_regression().fit(
        scaler.transform(features), labels)
  coef, intercept = classifier.coef_, classifier.intercept_
  if len(classifier.classes_) == 2:  # sklearn keeps one row for 2 classes.
    coef = np.concatenate([np.zeros_like(coef), coef])
    intercept = np.concatenate([[0.0], intercept])
  kernel = np.zeros([features.shape[1], num_classes])
  bias = np.full([num_classes], intercept.min() - 1e4)
  # logits = ((x - mean) / scale) @ coef.T + intercept, in terms of raw x.
  kernel[:, classifier.classes_] = (coef / scaler.scale_).T
  bias[classifier.classes_] = intercept - (coef * scaler.mean_ /
                                           scaler.scale_).sum(1)
  head.dense.kernel.assign(kernel.astype(np.float32))
  head.dense.bias.assign(bias.astype(np.float32))
  return float(inverse_l2)
