"""The head phase as the convex problem it is: a head without hidden layers on a frozen
backbone is a linear model on fixed features, so it is solved exactly (scikit-learn, see
`kerasft.tasks.solvers`) instead of trained for a few epochs.

Its L2 strength is chosen from a log grid (`solvers.GRID`) on the validation examples, or,
when there are fewer than --kfold_below labelled examples per class, by --folds-fold
cross-validation of all labelled examples (training and validation together), after which
the head is refit on all of them and the reported validation figure comes from the
out-of-fold predictions. The solution is copied into the Keras head, so checkpoints and
exports are what they always were. Features never leave memory here; a run whose features
do not fit (or a head with hidden layers, augmentation, MixUp/CutMix) trains by epochs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from kerasft.models import features, memory
from kerasft.core.errors import UsageError
from kerasft.tasks.classify.solver import GRID, folds


@dataclasses.dataclass(frozen=True)
class Solution:
  """The chosen inverse L2 strength `c`, its held-out score (higher is better), which
  examples that score and the report's figures come from (`validated_on`), and the held-out
  targets and outputs (validation examples, or out-of-fold predictions of all of them)."""
  c: float
  score: tuple
  validated_on: str
  targets: np.ndarray
  outputs: np.ndarray
  held_out: tuple  # (kernel, bias) fitted without the examples it was scored on
  final: tuple  # (kernel, bias) the run keeps: refit on all labelled examples when asked
  out_of_fold: bool = False  # targets/outputs are k-fold predictions of every labelled one
  nested: dict | None = None  # k-fold on tiny data: the nested cross-validation estimate


HIDDEN_LAYERS = "the head has hidden layers (--head)"
NOT_CONVEX = "the output's head is not one convex problem (a tag per token, a decoder)"
CONVERGE = (HIDDEN_LAYERS, NOT_CONVEX)  # trained on cached features to convergence
CONVERGE_EPOCHS = 200  # a head with hidden layers on cached features: at most this many
CONVERGE_PATIENCE = 10  # ... stopping after this many epochs without a better one


def epochs_reason(config, model, n_examples: int, output=None) -> str | None:
  """Why the head phase trains by epochs instead of the convex solve (None: it solves).
  `HIDDEN_LAYERS` means the features are cached but the head is not convex: it then trains
  on them to convergence (early stopping), not for a fixed handful of epochs."""
  t, d = config.training, config.data
  if output is not None and not output.has_convex_head() and t.head_solver == "convex":
    return NOT_CONVEX
  if t.head_solver == "epochs":
    return "--head_solver=epochs"
  if t.cache_features == "off":
    return "--cache_features=off"
  reason = features.refusal(model, augment=d.augment, mixing=bool(d.mixup or d.cutmix))
  if reason:
    return reason
  budget = t.feature_cache_memory * 2**20 or memory.default_memory_budget()
  if features.cache_bytes(model, n_examples, t.feature_cache_dtype) > budget:
    return "the features do not fit in memory"
  return HIDDEN_LAYERS if config.model.head else None


FLOOR = 0.1  # of the median feature scale, when a fine-tune phase follows the solve


@dataclasses.dataclass(frozen=True)
class Labelled:
  """The labels that score and stratify (`ids`: class ids, or multi-hot rows) and the
  targets the head is fitted to (`fit`: the same, or distillation's soft rows), row by row."""
  ids: np.ndarray
  fit: np.ndarray

  def __getitem__(self, rows) -> "Labelled":
    return Labelled(self.ids[rows], self.fit[rows])

  def __len__(self) -> int:
    return len(self.ids)


def _labelled(output, files, rows: bool = False) -> Labelled:
  """`Labelled` of Examples: their soft targets (`Examples.soft`) are what is fitted, and
  with `rows` their targets as rows (one-hot) even without."""
  ids = np.asarray(output.labels.evaluation_labels(files))
  return Labelled(ids, files.targets() if files.soft is not None or rows else ids)


def _cross_validated(solver, x, y, k, class_weight, splits):
  """(best c, its score, out-of-fold outputs at it) over `GRID`. Every fit starts fresh:
  never from another fold's solution, which saw this fold's held-out examples (the data are
  small here, so warm starts would save little)."""
  parts = [(x[train], y[train], x[held], held) for train, held in splits]

  def held_out(c):
    oof = np.zeros((len(x), k), np.float32)
    for fold, (x_fit, y_fit, x_held, held) in enumerate(parts):
      oof[held] = solver.outputs(x_held, *solver.fit(x_fit, y_fit.fit, k, c, class_weight,
                                                     group=("fold", fold, c)))
    return solver.score(y.ids, oof), oof
  return _scan(held_out)


def _scan(held_out):
  """(best C, its score, its extra) over `GRID` in ascending order, where held_out(C) gives
  (score, extra). The held-out score of an L2 path rises and then falls: the scan stops
  after two Cs in a row without a better score, skipping the slowest, weakest-regularized
  fits when they cannot win."""
  best, worse = None, 0
  for c in GRID:
    score, extra = held_out(c)
    if best is None or score > best[1]:
      best, worse = (c, score, extra), 0
    else:
      worse += 1
      if worse == 2:
        break
  return best


@dataclasses.dataclass(frozen=True)
class Cached:
  """The cached features of the training and validation examples, and those examples."""
  x_train: np.ndarray
  x_val: np.ndarray
  train_files: object
  val_files: object


def solve(output, model, cached: Cached, training, class_weight=None,
          refit: bool = True) -> Solution:
  """`_solve` with the BLAS library on one thread: the solver's small matrix products were
  11x slower with OpenBLAS' two threads on this 2-core machine (5.05 s -> 0.44 s for five
  fits on 800 x 1024 features)."""
  from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  with threadpool_limits(limits=1, user_api="blas"):
    return _solve(output, model, cached, training, class_weight, refit)


def _solve(output, model, cached: Cached, training, class_weight, refit) -> Solution:
  """Solves `model`'s head (its `output`) on `cached` features and gives the head's Dense
  layer the held-out solution (fitted without the examples it was scored on);
  `install(model, output, solution.final)` then puts in the final one. training: the
  `TrainingConfig` (folds, seed, --kfold_below). refit: the final head is fitted on all
  labelled examples (else on the training split, as when a fine-tune phase follows and
  compares itself on the validation split); only then may small data use k-fold
  cross-validation."""
  train_files, val_files = cached.train_files, cached.val_files
  k = len(train_files.class_names)
  x_train, x_val = cached.x_train, cached.x_val
  y_train = _labelled(output, train_files)
  y_val = _labelled(output, val_files, rows=train_files.soft is not None)
  parts = output.solver_parts(model, train_files.class_names, floor=0.0 if refit else FLOOR)
  if parts:
    found = _solve_parts(parts, x_train, x_val, y_train.ids, y_val.ids, refit)
    install(model, output, found.held_out)
    return found
  x, n = np.concatenate([x_train, x_val]), len(y_train)
  y = Labelled(np.concatenate([y_train.ids, y_val.ids]),
               np.concatenate([y_train.fit, y_val.fit]))
  kfold = refit and training.uses_kfold(len(x), k)
  # With a few examples per class, per-feature standardization amplifies noisy features:
  # raw features under k-fold. Chosen by nested 5-fold cross-validation of training data only
  # (benchmarks/kfold_standardize.py --sizes=5 --subsets=3, 2026-12-03): mean accuracy raw
  # 0.668, standardized 0.644 (digits 0.713 / 0.607, fashion 0.673 / 0.660, fortunes
  # 0.617 / 0.667: not every data set agrees; the mean decides). Before
  # a fine-tune phase (not refit), no feature's scale is taken below a tenth of the median
  # one: the folded kernel divides by it, and a feature of tiny spread that moves while the
  # backbone trains swung the logits (measured on MiniLM: the fine-tune loss jumped from 0
  # to 12,592 and validation accuracy from 0.94 to 0.32 in one epoch).
  solver = output.solver(model, standardize=not kfold, floor=0.0 if refit else FLOOR)
  if kfold:
    stratify = output.labels.strata(train_files.labels, train_files.class_names) is not None
    found = _kfold(solver, x, y, k, class_weight, (training, stratify))
  else:
    def scored(c):
      weights = solver.fit(x_train, y_train.fit, k, c, class_weight)
      return solver.score(y_val.ids, solver.outputs(x_val, *weights)), weights
    c, score, held_out = _scan(scored)
    final = solver.fit(x, y.fit, k, c, class_weight) if refit else held_out
    found = Solution(c, score, f"the {len(x_val)} validation examples" + (
        f" (the head is then refit on all {len(x)} labelled examples)" if refit else ""),
                     y_val.ids, solver.outputs(x_val, *held_out), held_out, final)
  install(model, output, found.held_out)
  logging.info("head solved (convex) on cached features: C=%g (L2 %g) of %d training "
               "examples, held-out score "
               "%.4f, chosen on %s", found.c, 1 / found.c, n, found.score[0],
               found.validated_on)
  return found


def _solve_parts(parts, x_train, x_val, y_train, y_val, refit: bool) -> Solution:
  """Several heads (`Output.solver_parts`), each solved on its own columns with its own L2
  strength on the examples that have its label, chosen on the validation split (never
  k-fold); the score is the mean of the heads' scores."""
  kernel = np.zeros((x_train.shape[1], y_train.shape[1]), np.float32)
  held, final, outputs = kernel.copy(), kernel.copy(), np.zeros_like(y_val)
  biases = {"held": np.zeros(y_train.shape[1], np.float32)}
  biases["final"] = biases["held"].copy()
  scores, chosen = [], {}
  for name, (start, stop), labels_of, solver in parts:
    def rows(y):
      return np.all(np.isfinite(y[:, start:stop]), axis=1)
    t, v = rows(y_train), rows(y_val)
    if not v.any():
      raise UsageError(f"--label_column: no validation example has a {name!r} label; give "
                       "more examples that label or a larger --validation_split")
    yt, yv, k = labels_of(y_train[t, start:stop]), labels_of(y_val[v, start:stop]), stop - start

    def scored(c):
      weights = solver.fit(x_train[t], yt, k, c)
      return solver.score(yv, solver.outputs(x_val[v], *weights)), weights
    c, score, weights = _scan(scored)
    held[:, start:stop], biases["held"][start:stop] = weights
    final[:, start:stop], biases["final"][start:stop] = solver.fit(
        np.concatenate([x_train[t], x_val[v]]), np.concatenate([yt, yv]), k, c) \
        if refit else weights
    outputs[:, start:stop] = solver.outputs(x_val, *weights)
    scores.append(score)
    chosen[name] = c
  logging.info("heads solved (convex) on cached features: %s", ", ".join(
      f"{name} C={c:g}" for name, c in chosen.items()))
  return Solution(float(np.median(list(chosen.values()))),
                  tuple(float(np.mean(s)) for s in zip(*scores)),
                  f"the {len(x_val)} validation examples" + (
                      f" (the heads are then refit on all {len(x_train) + len(x_val)} "
                      "labelled examples)" if refit else ""),
                  y_val, outputs, (held, biases["held"]), (final, biases["final"]))


NESTED_UP_TO = 300  # labelled examples: k-fold of at most this many adds a nested estimate


def _kfold(solver, x, y, k: int, class_weight, folding: tuple) -> Solution:
  """The head chosen by k-fold cross-validation of all labelled examples (`folding`: the
  TrainingConfig's folds and seed, whether to stratify) and refit on all of them; on tiny
  data also the nested estimate of that whole procedure."""
  training, stratify = folding
  splits = folds(y.ids, training.folds, training.seed, stratify)
  c, score, oof = _cross_validated(solver, x, y, k, class_weight, splits)
  nested = None
  if len(x) <= NESTED_UP_TO:
    nested = {solver.score_name: _nested(solver, x, y, k, class_weight, folding)}
  final = solver.fit(x, y.fit, k, c, class_weight)  # the last fit: on every labelled one
  validated = (f"{len(splits)}-fold cross-validation of all {len(x)} labelled examples (the "
               f"best of {len(GRID)} L2 strengths chosen on the same folds, so slightly "
               "optimistic" + (f"; nested cross-validation: {solver.score_name} "
                               f"{next(iter(nested.values())):.4f}" if nested else "")
               + "; the head is then refit on all of them)")
  return Solution(c, score, validated, y.ids, oof, final, final, True, nested)


def _nested(solver, x, y, k: int, class_weight, folding: tuple) -> float:
  """The held-out score of choosing C by an inner k-fold of each outer fold's training
  rows (the outer folds: `folding`'s, as `_kfold` draws them), then fitting there: an
  estimate of the whole procedure the reported figure (the best C on the same folds)
  flatters."""
  training, stratify = folding
  oof = np.zeros((len(x), k), np.float32)
  for train, held in folds(y.ids, training.folds, training.seed, stratify):
    inner = folds(y.ids[train], training.folds, training.seed, stratify)
    c, _, _ = _cross_validated(solver, x[train], y[train], k, class_weight, inner)
    oof[held] = solver.outputs(x[held], *solver.fit(x[train], y.fit[train], k, c,
                                                    class_weight))
  return float(solver.score(y.ids, oof)[0])


def install(model, output, weights) -> None:
  """Sets the head's Dense layer to (kernel, bias)."""
  model.get_layer(output.head_layer_names()[0]).set_weights(list(weights))
