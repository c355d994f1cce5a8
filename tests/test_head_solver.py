"""The head phase solved as a convex problem (kerasft.head_solver): the same head as
scikit-learn, its L2 strength chosen on held-out data only, k-fold on small data with every
example used, and a fine-tune phase kept only when it beats the solved head."""

import json
import os

import numpy as np
import pytest

from conftest import checked, tiny_model, write_color_images
import kerasft
import kerasft.tasks.registry
import kerasft.data.examples
from kerasft.models import features
from kerasft.training import head_solver
from kerasft.tasks import registry as tasks
from kerasft.tasks.classify import output as outputs, solver as solvers


def _train(tmp_path, data_dir, model=None, **training):
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model(), dropout=0.0, **(model or {})),
      data=kerasft.DataConfig(data_dir=data_dir, batch_size=8),
      training=kerasft.TrainingConfig(**training),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  return kerasft.run_training(config, verbose=0)


def test_the_solved_head_is_scikit_learns_logistic_regression(tmp_path):
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  colors = write_color_images(tmp_path / "colors", per_class=40, size=24)  # validation split
  result = _train(tmp_path, colors)
  assert result.history["l2_c"] and len(result.history["loss"]) == 1
  c = result.history["l2_c"][0]
  task = tasks.for_config(result.config)
  train, val = task.index(result.config.training.seed)
  extract = features.feature_model(result.model)
  x_val = np.concatenate([x for x, _ in task.pipeline(val, 64)])
  x = np.concatenate([extract.predict(task.pipeline(train, 64), verbose=0),
                      extract.predict(x_val, verbose=0)])
  # C chosen on the validation split, then the head refit on all labelled examples, on
  # standardized features
  reference = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, tol=1e-8))
  reference.fit(x, train.labels + val.labels)
  np.testing.assert_allclose(result.model.predict(x_val, verbose=0),
                             reference.predict_proba(x[len(train.inputs):]), atol=1e-3)
  # the reported figures are of the head fitted on the training split alone, scored on the
  # validation split: scikit-learn's, fitted and scored the same way
  held = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, tol=1e-8))
  held.fit(x[:len(train.inputs)], train.labels)
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["accuracy"] == pytest.approx(held.score(x[len(train.inputs):], val.labels),
                                              abs=1e-6)
  assert result.history["val_accuracy"][0] == pytest.approx(metrics["accuracy"], abs=1e-6)
  assert metrics["validated_on"] == (f"the {len(val.inputs)} validation examples (the head is "
                                     f"then refit on all {len(x)} labelled examples)")
  assert metrics["accuracy"] > 0.9


class _Planted:
  """A solver whose held-out score peaks at C=10 only when scored on the validation
  labels (all 7s); every call records which labels it was scored on."""
  def __init__(self):
    self.scored = []

  def fit(self, x, labels, k, c, class_weight=None):
    return np.full((x.shape[1], k), c, np.float32), np.zeros(k, np.float32)

  def outputs(self, x, kernel, bias):
    return np.tile(kernel[0], (len(x), 1))

  def score(self, labels, outputs):
    self.scored.append(np.asarray(labels).tolist())
    return (-abs(np.log10(outputs[0, 0]) - 1) if set(np.ravel(labels)) == {7} else 0.0, 0.0)


def test_the_l2_strength_is_chosen_on_the_validation_split_only(monkeypatch):
  planted = _Planted()
  output = tasks.make_output()
  monkeypatch.setattr(output, "solver", lambda model, standardize, floor: planted)

  class Head:  # where the solution is copied
    def set_weights(self, weights):
      self.weights = weights
  head = Head()
  model = type("M", (), {"get_layer": lambda self, name: head})()
  train = kerasft.data.examples.Examples(["t"] * 60, [0, 1] * 30, [str(i) for i in range(8)])
  val = kerasft.data.examples.Examples(["v"] * 40, [7] * 40, train.class_names)
  solution = head_solver.solve(output, model, head_solver.Cached(
      np.zeros((60, 2)), np.zeros((40, 2)), train, val), kerasft.TrainingConfig(kfold_below=1))
  assert solution.c == 10.0 and head.weights[0][0, 0] == 10.0
  assert all(labels == [7] * 40 for labels in planted.scored)  # never the training labels
  assert len(planted.scored) == len(solvers.GRID)


def test_small_data_uses_k_fold_and_every_example_and_never_the_test_split(tmp_path,
                                                                           monkeypatch):
  root = tmp_path / "data"
  write_color_images(root / "train", per_class=6, size=24)
  (root / "test" / "red").mkdir(parents=True)
  (root / "test" / "red" / "x.png").write_text("not an image: reading it would fail")
  fitted_on = []
  original = solvers.Softmax.fit
  monkeypatch.setattr(solvers.Softmax, "fit", lambda self, x, *a, **k: (
      fitted_on.append(len(x)), original(self, x, *a, **k))[1])
  result = _train(tmp_path, str(root))
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["num_examples"] == 18  # out-of-fold predictions of all 18 labelled images
  assert metrics["validated_on"].startswith("5-fold cross-validation of all 18 labelled")
  assert fitted_on[-1] == 18  # the final head is refit on all of them
  assert max(fitted_on[:-1]) < 18
  assert result.metrics["accuracy"] > 0.8
  card = json.loads(open(os.path.join(result.export_path, "model_card.json")).read())
  assert card["validation_metrics"]["validated_on"] == metrics["validated_on"]


def test_a_fine_tune_phase_that_hurts_is_discarded(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=40, size=24)
  result = _train(tmp_path, colors, {"unfreeze_blocks": 3, "bn_mode": "train"},
                  fine_tune_epochs=2, fine_tune_learning_rate=5.0, optimizer="sgd")
  assert result.history["phase"] == ["head", "fine_tune", "fine_tune"]
  head_accuracy = result.history["val_accuracy"][0]
  assert head_accuracy > max(result.history["val_accuracy"][1:])
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["kept"] == "head" and metrics["accuracy"] == pytest.approx(head_accuracy)


def test_head_solver_epochs_trains_for_epochs_as_before(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=8, size=24)
  result = _train(tmp_path, colors, head_solver="epochs", epochs=3)
  assert len(result.history["loss"]) == 3 and "l2_c" not in result.history
  with pytest.raises(kerasft.UsageError, match="^--label_smoothing: the convex head solver"):
    checked(kerasft.RunConfig(training=kerasft.TrainingConfig(label_smoothing=0.1)))
  checked(kerasft.RunConfig(training=kerasft.TrainingConfig(label_smoothing=0.1,
                                                            head_solver="epochs")))


def test_a_head_with_hidden_layers_trains_on_features_until_it_converges(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=8, size=24)
  result = _train(tmp_path, colors, {"head": (16,)}, learning_rate=0.01)
  epochs = len(result.history["loss"])
  assert 5 < epochs < head_solver.CONVERGE_EPOCHS  # stopped by early stopping, not --epochs
  assert "l2_c" not in result.history


def test_a_run_killed_during_the_solve_resumes_and_finishes(tmp_path, monkeypatch):
  colors = write_color_images(tmp_path / "colors", per_class=8, size=24)
  original, calls = solvers.Softmax.fit, []

  def dies_midway(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 9:  # inside the grid search over the folds
      raise KeyboardInterrupt("killed")
    return original(self, *args, **kwargs)
  monkeypatch.setattr(solvers.Softmax, "fit", dies_midway)
  with pytest.raises(KeyboardInterrupt):
    _train(tmp_path, colors)
  assert not (tmp_path / "export").exists()
  monkeypatch.setattr(solvers.Softmax, "fit", original)
  result = _train(tmp_path, colors)  # the same command: resumes the unfinished run
  assert len(result.history["loss"]) == 1 and os.listdir(tmp_path / "export") == ["1"]
  assert result.metrics["validated_on"].startswith("5-fold cross-validation of all 24")


def test_the_head_before_a_fine_tune_phase_floors_the_feature_scales(tmp_path, monkeypatch):
  """Standardization folded into the kernel amplifies features of tiny spread, which move
  once the backbone trains: before a fine-tune phase no scale goes below a tenth of the
  median one."""
  colors = write_color_images(tmp_path / "colors", per_class=40, size=24)
  seen = []
  original = outputs.Multiclass.solver
  monkeypatch.setattr(outputs.Multiclass, "solver", lambda self, model, standardize, floor: (
      seen.append((standardize, floor)), original(self, model, standardize, floor))[1])
  _train(tmp_path, colors, model={"unfreeze_blocks": 1}, fine_tune_epochs=1,
         learning_rate=0.03)
  _train(tmp_path / "frozen", colors)
  assert seen == [(True, head_solver.FLOOR), (True, 0.0)]
  x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.001]])
  z, _, scale = solvers._standardized(x, True, 0.1)  # pylint: disable=protected-access
  np.testing.assert_allclose(scale, [0.5, 1.0, 0.05])  # the third: 0.1 x median 0.5


def _planted(signal=0.3, k=10, per_class=6, dim=1024, seed=0):
  """Raw, ReLU-like features of a tiny set (6 per class) with a weak class signal: the
  case where a warm start shared across folds leaked a fold's held-out labels."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(k), per_class)
  x = np.abs(rng.normal(0, 1, (k, dim))[y] * signal + rng.normal(0, 1, (len(y), dim))) * 3
  return x.astype(np.float32), y


def test_k_fold_figures_equal_fresh_scikit_learn_fits_per_fold():
  """Out-of-fold outputs at every C equal scikit-learn's LogisticRegression fitted afresh
  per fold (the same lbfgs settings) to 1e-3; a warm start shared across folds (the old
  behaviour, planted here) scores far above them, which is the leak this guards."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold
  x, y = _planted()
  splits = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x, y))
  c, score, oof = head_solver._cross_validated(solvers.Softmax(standardize=False), x,
                                               head_solver.Labelled(y, y), 10,
                                               None, splits)
  fresh = {}
  for value in solvers.GRID:
    out = np.zeros((len(y), 10))
    for train, held in splits:
      out[held] = LogisticRegression(max_iter=1000, tol=1e-5, C=value).fit(
          x[train], y[train]).predict_proba(x[held])
    fresh[value] = out
  np.testing.assert_allclose(oof, fresh[c], atol=1e-3)
  assert score[0] == pytest.approx(np.mean(fresh[c].argmax(1) == y), abs=1e-3)
  assert score[0] == pytest.approx(max(np.mean(o.argmax(1) == y) for o in fresh.values()),
                                   abs=1e-3)  # the best of the grid, as scikit-learn's
  shared = solvers.Softmax(standardize=False)  # every fold warm-starts from the last one
  leaked = np.zeros((len(y), 10))
  for value in solvers.GRID:
    for train, held in splits:
      leaked[held] = shared.outputs(x[held], *shared.fit(x[train], y[train], 10, value))
  assert np.mean(leaked.argmax(1) == y) > score[0] + 0.3  # chance is 0.1


def test_under_k_fold_every_reported_figure_is_out_of_fold(tmp_path):
  """Small data (k-fold): the epoch log's val_*, the best epoch's value, the slices, the
  confusion matrix, report.html's mistakes and the calibration are all of the out-of-fold
  predictions of every labelled example, recomputed here with scikit-learn on the same
  folds and C (some labels are wrong, so they differ from the refit head's own)."""
  from sklearn.linear_model import LogisticRegression
  from kerasft.reporting import calibration
  colors = write_color_images(tmp_path / "colors", per_class=10, size=24)
  rows = [(os.path.relpath(os.path.join(d, f), tmp_path), os.path.basename(d))
          for d, _, files in sorted(os.walk(colors)) for f in sorted(files)]
  rng = np.random.default_rng(0)
  names = sorted({label for _, label in rows})
  rows = [(p, names[rng.integers(3)] if i % 5 == 0 else label, "ab"[i % 2])
          for i, (p, label) in enumerate(rows)]  # every fifth label drawn at random
  (tmp_path / "t.csv").write_text("path,label,site\n" + "".join(f"{p},{l},{s}\n"
                                                                for p, l, s in rows))
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model(), dropout=0.0),
      data=kerasft.DataConfig(csv=str(tmp_path / "t.csv"), slice_column=("site",),
                              batch_size=8),
      training=kerasft.TrainingConfig(calibrate="temperature"),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["validated_on"].startswith("5-fold cross-validation of all 30")
  task = tasks.for_config(result.config)
  train, val = task.index(result.config.training.seed)
  files = train + val
  x = features.feature_model(result.model).predict(task.pipeline(files, 64), verbose=0)
  y = np.asarray(files.labels)
  oof = np.zeros((len(y), 3))
  for fit_rows, held in solvers.folds(y, 5, 0, True):
    oof[held] = LogisticRegression(C=result.history["l2_c"][0], max_iter=1000, tol=1e-5).fit(
        x[fit_rows], y[fit_rows]).predict_proba(x[held])
  accuracy = float(np.mean(oof.argmax(1) == y))
  refit = result.model.predict(np.concatenate([b for b, _ in task.pipeline(files, 64)]),
                               verbose=0)
  assert np.abs(refit - oof).max() > 0.05  # the refit head has seen every example
  assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
  assert result.history["val_accuracy"][0] == pytest.approx(accuracy, abs=1e-6)  # epoch log
  best = json.loads((tmp_path / "run" / "best.keras.json").read_text())["best"]
  assert best == pytest.approx(accuracy, abs=1e-6)  # the best epoch's value
  assert int(np.sum(metrics["confusion_matrix"])) == len(y)
  slices = metrics["slices"]["site"]
  assert sum(s["count"] for s in slices.values()) == len(y)
  assert sum(s["count"] * s["accuracy"] for s in slices.values()) / len(y) == pytest.approx(
      accuracy, abs=1e-6)
  wrong = int(np.sum(oof.argmax(1) != y))
  report = (tmp_path / "run" / "report.html").read_text()
  assert f"{wrong} of {len(y)} examples are misclassified" in report
  assert metrics["calibration"]["ece"] == pytest.approx(calibration.ece(oof, y), abs=1e-3)
