"""Distillation (--teacher): soft targets, their exact convex fit, the teacher asked once per
example, the model card, and the one-line mistakes."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import call_main, tiny_model, write_color_images, write_unlabeled_colors

import kerasft
from kerasft.data import labels as label_kinds
from kerasft.serving import client
from kerasft.tasks.classify import solver as solvers


def test_softened_outputs_flatten_with_the_temperature_and_mix_with_the_labels():
  p = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]])
  kind = label_kinds.Classes()
  np.testing.assert_allclose(kind.soften(p, 1.0), p, atol=1e-6)
  flat = kind.soften(p, 2.0)
  np.testing.assert_allclose(flat.sum(1), 1.0, atol=1e-6)
  assert flat[0, 0] < p[0, 0] and flat[0, 2] > p[0, 2]  # T > 1 flattens
  hard = kind.targets([1, 2], 3)
  mixed = label_kinds.distilled(kind, hard, p, 1.0, 0.25)
  np.testing.assert_allclose(mixed, 0.25 * p + 0.75 * hard, atol=1e-6)
  # a teacher that outputs the labels one-hot, at T=1 and weight 1, gives the labels
  np.testing.assert_array_equal(label_kinds.distilled(kind, hard, hard, 1.0, 1.0), hard)
  scores = label_kinds.Labels().soften(np.array([[0.9, 0.5, 0.1]]), 3.0)
  assert 0.5 < scores[0, 0] < 0.9 and abs(scores[0, 1] - 0.5) < 1e-6 and 0.1 < scores[0, 2] < 0.5
  with pytest.raises(kerasft.UsageError, match="--teacher: distils classes or labels"):
    label_kinds.Targets().soften(p, 2.0)


def _blobs(n=90, k=3, seed=0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % k
  return rng.normal(0, 1, (n, 5)) + 1.5 * np.eye(k, 5)[y], y


@pytest.mark.parametrize("make", [solvers.Softmax, solvers.OneVsRest])
def test_soft_targets_that_are_the_labels_fit_exactly_as_the_labels(make):
  x, y = _blobs()
  onehot = np.eye(3, dtype=np.float32)[y]
  labels = y if make is solvers.Softmax else onehot
  hard = make().fit(x, labels, 3, 1.0)
  soft = make().fit(x, onehot + 0.0, 3, 1.0) if make is solvers.Softmax else None
  if soft is None:  # multi-hot rows are the labels themselves; any value in (0, 1) is soft
    soft = make().fit(x, np.clip(onehot, 1e-9, 1 - 1e-9), 3, 1.0)
  for a, b in zip(hard, soft):
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("make", [solvers.Softmax, solvers.OneVsRest])
def test_the_soft_fit_minimizes_the_cross_entropy_against_the_soft_targets(make):
  x, y = _blobs(seed=1)
  rng = np.random.default_rng(2)
  soft = rng.dirichlet(np.ones(3), len(y)).astype(np.float32)
  if make is solvers.OneVsRest:
    soft = rng.uniform(0, 1, (len(y), 3)).astype(np.float32)

  def loss(weights):
    out = np.clip(make().outputs(x, *weights), 1e-7, 1 - 1e-7)
    if make is solvers.Softmax:
      return -np.mean(np.sum(soft * np.log(out), 1))
    return -np.mean(soft * np.log(out) + (1 - soft) * np.log(1 - out))
  hard_labels = y if make is solvers.Softmax else np.eye(3)[y]
  fitted, on_hard = make().fit(x, soft, 3, 100.0), make().fit(x, hard_labels, 3, 100.0)
  assert loss(fitted) < loss(on_hard) - 0.05, (loss(fitted), loss(on_hard))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """(color image folder, an export of a tiny model trained on it)."""
  root = tmp_path_factory.mktemp("teacher")
  data_dir = write_color_images(root / "colors", per_class=8, size=32)
  result = call_main("train", f"--data_dir={data_dir}", f"--model={tiny_model()}",
                     f"--model_dir={root / 'run'}", f"--export_dir={root / 'export'}")
  assert result.returncode == 0, result.stderr[-3000:]
  return data_dir, str(root / "export" / "1")


def _config(data_dir, tmp_path, **methods):
  return kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model()), data=kerasft.DataConfig(data_dir=data_dir),
      methods=kerasft.MethodsConfig(**methods), model_dir=str(tmp_path / "run"),
      export_dir=str(tmp_path / "export"))


def _counting(monkeypatch, answer=None):
  """Wraps `client.load_predictor`: counts the inputs the teacher is asked about; with
  `answer(inputs)`, that replaces the teacher's outputs."""
  asked = []
  real = client.load_predictor

  def load(version_dir, flag="export"):
    predict, names = real(version_dir, flag)

    def counted(inputs):
      asked.extend(inputs)
      return answer(inputs) if answer else predict(inputs)
    return counted, names
  monkeypatch.setattr(client, "load_predictor", load)
  return asked


def test_a_teacher_that_outputs_the_labels_one_hot_at_t1_w1_equals_ordinary_training(
    teacher, tmp_path, monkeypatch):
  from kerasft.data import folders
  data_dir, export = teacher
  train, val = folders.index(data_dir, "", 0.2, 0)
  by_bytes = {open(p, "rb").read(): label for p, label in zip(train.inputs + val.inputs,
                                                                train.labels + val.labels)}
  asked = _counting(monkeypatch, lambda inputs: np.eye(len(train.class_names))[
      [by_bytes[x] for x in inputs]])
  plain = kerasft.run_training(_config(data_dir, tmp_path / "plain"), verbose=0, export=False)
  distilled = kerasft.run_training(_config(
      data_dir, tmp_path / "distilled", teacher=export, distill_temperature=1.0,
      distill_weight=1.0), verbose=0, export=False)
  assert len(asked) == len(train.inputs) + len(val.inputs)  # once per example
  for a, b in zip(plain.model.get_layer("probabilities").get_weights(),
                  distilled.model.get_layer("probabilities").get_weights()):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_distilling_asks_the_teacher_once_per_example_and_records_it(teacher, tmp_path,
                                                                     monkeypatch):
  data_dir, export = teacher
  unlabeled = write_unlabeled_colors(tmp_path / "unlabeled", per_class=4, seed=3)
  asked = _counting(monkeypatch)
  result = kerasft.run_training(kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model(), image_size=24),
      data=kerasft.DataConfig(data_dir=data_dir, unlabeled_dir=unlabeled),
      training=kerasft.TrainingConfig(head_solver="epochs", epochs=2),
      methods=kerasft.MethodsConfig(teacher=export), model_dir=str(tmp_path / "run"),
      export_dir=str(tmp_path / "export")), verbose=0)
  n_labelled = len(os.listdir(os.path.join(data_dir, "red"))) * len(os.listdir(data_dir))
  assert len(asked) == n_labelled + len(os.listdir(unlabeled))  # each once, over 2 epochs
  card = json.load(open(os.path.join(result.export_path, "model_card.json")))
  entry = card["distillation"]
  teacher_card = json.load(open(os.path.join(export, "model_card.json")))
  assert entry["teacher"]["weights"] == teacher_card["run"]["weights"]
  assert entry["teacher"]["version"] == "1" and entry["temperature"] == 2.0
  assert entry["unlabeled_examples"] == len(os.listdir(unlabeled))
  assert 0 <= entry["teacher"]["this_validation"]["accuracy"] <= 1
  assert card["methods"]["teacher"] == export


def _altered_export(export, tmp_path, card=None, labels=None):
  """A copy of `export` with its model card's entries or its labels replaced."""
  copy = str(tmp_path / "altered" / "1")
  shutil.copytree(export, copy)
  if card:
    path = os.path.join(copy, "model_card.json")
    json.dump({**json.load(open(path)), **card}, open(path, "w"))
  if labels:
    with open(os.path.join(copy, "assets", "labels.txt"), "w") as f:
      f.write("\n".join(labels) + "\n")
  return copy


@pytest.mark.parametrize("case, message", [
    ("missing", "--teacher: {tmp}/nowhere does not exist"),
    ("task", "--teacher: {tmp}/altered/1 is a --task=multilabel export and this run is "
             "--task=multiclass"),
    ("classes", "--teacher: its classes (blue, green, purple) are not the data's"),
    ("input", "--teacher: {tmp}/altered/1 takes texts and this run's model takes files"),
    ("weight", "--distill_weight: only goes with --teacher"),
    ("range", "--distill_weight: must be in [0, 1]"),
    ("regression", "--teacher: distils into classifiers (--task=multiclass or multilabel), "
                   "not --task=regression")])
def test_distillation_mistakes_are_one_line_and_write_nothing(teacher, tmp_path, case, message):
  data_dir, export = teacher
  args = {"missing": [f"--teacher={tmp_path}/nowhere"],
          "task": [f"--teacher={_altered_export(export, tmp_path, card={'task': 'multilabel'})}"
                   if case == "task" else ""],
          "classes": [f"--teacher={_altered_export(export, tmp_path, labels=['blue', 'green', 'purple'])}"
                      if case == "classes" else ""],
          "input": [f"--teacher={_altered_export(export, tmp_path, card={'input': {'dtype': 'string'}})}"
                    if case == "input" else ""],
          "weight": ["--distill_weight=0.3"],
          "range": [f"--teacher={export}", "--distill_weight=2"],
          "regression": [f"--teacher={export}", "--task=regression", "--csv=x.csv"]}[case]
  args = [a for a in [f"--data_dir={data_dir}" if case != "regression" else "", *args] if a]
  result = call_main("train", f"--model={tiny_model()}", *args,
                     f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 2, result.stderr[-2000:]
  assert message.format(tmp=tmp_path) in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "export")


def test_a_multilabel_teacher_distils_per_label(tmp_path):
  """Labels "warm"/"cool"/"bright" on colour squares: a multilabel teacher, then a student at
  another image size taught by it; the card records the teacher's micro F1."""
  import csv
  folder = write_color_images(tmp_path / "colors", per_class=8, size=32)
  tags = {"red": "warm|bright", "green": "bright", "blue": "cool"}
  with open(tmp_path / "tags.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label"])
    for color, labels in tags.items():
      for name in sorted(os.listdir(os.path.join(folder, color))):
        writer.writerow([os.path.join(folder, color, name), labels])
  common = [f"--csv={tmp_path / 'tags.csv'}", "--task=multilabel", f"--model={tiny_model()}"]
  first = call_main("train", *common, f"--model_dir={tmp_path / 'teacher'}",
                    f"--export_dir={tmp_path / 'teacher_export'}")
  assert first.returncode == 0, first.stderr[-3000:]
  second = call_main("train", *common, "--image_size=24",
                     f"--teacher={tmp_path / 'teacher_export'}", "--distill_temperature=3",
                     f"--model_dir={tmp_path / 'student'}", f"--export_dir={tmp_path / 'export'}")
  assert second.returncode == 0, second.stderr[-3000:]
  card = json.load(open(tmp_path / "export" / "1" / "model_card.json"))
  seen = card["distillation"]["teacher"]["this_validation"]
  assert card["task"] == "multilabel" and 0 <= seen["micro_f1"] <= 1
  assert card["distillation"]["temperature"] == 3.0
