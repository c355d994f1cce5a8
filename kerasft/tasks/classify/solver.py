"""Convex heads fitted exactly on features with scikit-learn, one per output type.

A solver fits the last Dense layer of a head without hidden layers: multinomial logistic
regression for a softmax (multiclass), one binary logistic regression per label for
sigmoids (multilabel) — both on standardized features (folded back into the layer's
weights) unless `standardize` is off — and ridge regression on standardized targets
(regression). `C` is the
inverse L2 strength (scikit-learn's). The logistic fits also take soft targets (rows of
probabilities, distillation's): each example then counts once per class (per label value)
with that probability as its sample weight, which is exactly the cross-entropy against the
soft target. `fit` returns the Dense layer's (kernel [F, K],
bias [K]), `outputs` what that layer then outputs, `score` a number to maximize on
held-out data (the output's monitored metric, ties broken by the loss).
"""

from __future__ import annotations

import numpy as np

GRID = tuple(10.0 ** k for k in range(-3, 4))  # C from 1e-3 (strong L2) to 1e3 (weak)


def folds(labels, folds: int, seed: int, stratify: bool):
  """Index pairs of k-fold cross-validation, stratified by class where every class has
  at least two examples."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  if stratify:
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if smallest >= 2:
      k = min(folds, smallest)
      return list(model_selection.StratifiedKFold(k, shuffle=True, random_state=seed).split(
          np.zeros(len(labels)), labels))
  k = min(folds, len(labels))
  return list(model_selection.KFold(k, shuffle=True, random_state=seed).split(labels))


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _standardized(x, standardize: bool = True, floor: float = 0.0):
  """(x with zero-mean, unit-variance columns, mean, scale): logistic regression converges
  in a few times fewer iterations on it, and the L2 penalty weighs every feature alike.
  With `standardize` False: (x, 0, 1), the raw features. floor: no column's scale below
  this fraction of the median column's (the folded kernel divides by the scale, so a
  column of tiny spread would swing the logits once a fine-tuned backbone moves it)."""
  if not standardize:
    return x, np.zeros(x.shape[1]), np.ones(x.shape[1])
  mean, scale = x.mean(axis=0), x.std(axis=0)
  scale = np.where(scale > 0, scale, 1.0)
  if floor:
    scale = np.maximum(scale, floor * np.median(scale))
  return (x - mean) / scale, mean, scale


def _spread(x, soft, columns) -> tuple:
  """(rows of `x` repeated per target column, those columns as labels, soft probabilities
  as sample weights) of soft targets [N, C], leaving out zero weights; `columns` [C]: the
  label each target column stands for."""
  soft = np.asarray(soft, np.float64)
  rows, cols = np.nonzero(soft > 0)
  return x[rows], np.asarray(columns)[cols], soft[rows, cols]


def _unstandardized(coef, intercept, mean, scale):
  """The Dense (kernel [F, K], bias [K]) on raw features of a fit on standardized ones."""
  kernel = coef.T / scale[:, None]
  return kernel.astype(np.float32), (intercept - mean @ kernel).astype(np.float32)


class _WarmStarts:
  """Logistic regressions reused from fit to fit within one `group` of fits on the same
  examples: each starts from the group's previous solution of the same shape (the previous
  C on the grid), which is much cheaper than starting from zero. Cross-validation gives each
  fold its own group: a fold's fits never start from a solution fitted on its held-out
  examples (with raw features lbfgs stops before it forgets them: the leak that made 6
  images per class score 1.0 out of fold)."""

  def __init__(self, standardize: bool = True, floor: float = 0.0):
    self._fitted, self.standardize, self.floor = {}, standardize, floor

  def estimator(self, x, column, c: float, class_weight=None, classes=(), group=None):
    from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
    key = (group, x.shape[1], column, tuple(classes))
    if key not in self._fitted:
      self._fitted[key] = LogisticRegression(max_iter=1000, tol=1e-5, warm_start=True)
    return self._fitted[key].set_params(C=c, class_weight=class_weight)


class Softmax(_WarmStarts):
  """Multinomial logistic regression (lbfgs) for a softmax layer over `k` classes."""
  score_name = "accuracy"  # what the first number of `score` is

  def fit(self, x, labels, k: int, c: float, class_weight=None, group=None):
    """(kernel [F, k], bias [k]) of the fit at inverse L2 strength `c` to class ids [N] or
    soft targets [N, k]; `group`: which fits may warm-start each other (`_WarmStarts`)."""
    labels, weights = np.asarray(labels), None
    z, mean, scale = _standardized(x, self.standardize, self.floor)
    if labels.ndim == 2:
      z, labels, weights = _spread(z, labels, np.arange(k))
    present = np.unique(labels)
    kernel, bias = np.zeros((x.shape[1], k), np.float32), np.zeros(k, np.float32)
    if len(present) == 1:  # one class seen: it always wins
      bias[:] = -30.0
      bias[present[0]] = 0.0
      return kernel, bias
    model = self.estimator(x, None, c, class_weight, present, group).fit(
        z, labels, sample_weight=weights)
    coef, intercept = _unstandardized(model.coef_, model.intercept_, mean, scale)
    if len(present) == 2:  # scikit-learn keeps one logit, for the second class
      kernel[:, present[1]], bias[present[1]] = coef[:, 0], intercept[0]
    else:
      kernel[:, present], bias[present] = coef, intercept
    absent = np.setdiff1d(np.arange(k), present)
    bias[absent] = float(bias[present].min()) - 30.0  # never predicted, as in training
    return kernel, bias

  def outputs(self, x, kernel, bias):
    z = x @ kernel + bias
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)

  def score(self, labels, outputs) -> tuple:
    labels = np.asarray(labels)
    chosen = np.clip(outputs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(np.mean(outputs.argmax(1) == labels)), float(np.mean(np.log(chosen)))


class OneVsRest(_WarmStarts):
  """One binary logistic regression per label, for a sigmoid layer."""
  score_name = "macro_auc"

  def fit(self, x, targets, k: int, c: float, class_weight=None, group=None):
    """One binary fit per label of multi-hot or soft targets [N, k] (see `Softmax.fit`)."""
    kernel, bias = np.zeros((x.shape[1], k), np.float32), np.zeros(k, np.float32)
    z, mean, scale = _standardized(x, self.standardize, self.floor)
    for j in range(k):
      column = np.asarray(targets)[:, j]
      if column.min() == column.max() and column[0] in (0, 1):  # always (or never) on
        bias[j] = 30.0 if column[0] else -30.0
        continue
      rows, weights = z, None
      if np.any((column > 0) & (column < 1)):  # soft: each row once per value, weighted
        rows, column, weights = _spread(z, np.stack([1 - column, column], 1), [0, 1])
      model = self.estimator(x, j, c, group=group).fit(rows, column, sample_weight=weights)
      coef, intercept = _unstandardized(model.coef_, model.intercept_, mean, scale)
      kernel[:, j], bias[j] = coef[:, 0], intercept[0]
    return kernel, bias

  def outputs(self, x, kernel, bias):
    return _sigmoid(x @ kernel + bias)

  def score(self, targets, outputs) -> tuple:
    from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
    targets = np.asarray(targets)
    both = [j for j in range(targets.shape[1]) if 0 < targets[:, j].sum() < len(targets)]
    auc = float(np.mean([roc_auc_score(targets[:, j], outputs[:, j]) for j in both])) \
        if both else 0.0
    clipped = np.clip(outputs, 1e-7, 1 - 1e-7)
    return auc, float(np.mean(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped)))


class Ridge:
  """Ridge regression (alpha = 1 / C) on targets standardized by the head's (mean, std)."""
  score_name = "negative_standardized_mse"

  def __init__(self, mean, std):
    self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  def fit(self, x, targets, k: int, c: float, class_weight=None, group=None):
    """Closed form: nothing to warm-start."""
    from sklearn.linear_model import Ridge as SkRidge  # pylint: disable=g-import-not-at-top
    model = SkRidge(alpha=1.0 / c).fit(x, (np.asarray(targets) - self.mean) / self.std)
    return (np.asarray(model.coef_, np.float32).reshape(k, -1).T,
            np.asarray(model.intercept_, np.float32).reshape(k))

  def outputs(self, x, kernel, bias):
    return (x @ kernel + bias) * self.std + self.mean

  def score(self, targets, outputs) -> tuple:
    error = float(np.mean(((np.asarray(targets) - outputs) / self.std) ** 2))
    return -error, -error
