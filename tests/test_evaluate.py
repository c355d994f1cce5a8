"""`python -m kerasft.evaluate` and `python -m kerasft.predict` on a trained run."""

import json
import os

from PIL import Image
from sklearn import metrics as skm

import pytest

from conftest import call_main, run_cli
from kerasft.serving import client
from kerasft.data import examples as data, folders


def _evaluation_files(trained_run):
  result, data_dir = trained_run
  return folders.evaluation_files(data_dir, result.class_names)


@pytest.mark.slow
def test_evaluate_export_matches_scikit_learn_and_writes_pngs(trained_run, tmp_path):
  result, data_dir = trained_run
  out = tmp_path / "eval"
  run = run_cli("evaluate", f"--export={os.path.dirname(result.export_path)}",
                f"--data_dir={data_dir}", f"--output_dir={out}")
  assert run.returncode == 0, run.stderr[-3000:]
  assert "weighted avg" in run.stdout and "accuracy" in run.stdout
  written = json.loads((out / "metrics.json").read_text())
  # The same predictions, computed here independently through the export.
  files = _evaluation_files(trained_run)
  predict, names = client.load_predictor(result.export_path)
  probabilities = client.predict_files(predict, files.inputs)
  predicted = probabilities.argmax(1)
  assert written["num_examples"] == len(files.inputs)
  assert written["accuracy"] == skm.accuracy_score(files.labels, predicted)
  assert written["confusion_matrix"] == skm.confusion_matrix(
      files.labels, predicted, labels=range(len(names))).tolist()
  report = skm.classification_report(files.labels, predicted, labels=range(len(names)),
                                     target_names=names, output_dict=True, zero_division=0)
  for name in names:
    for key in ("precision", "recall", "f1-score", "support"):
      assert written["per_class"][name][key] == report[name][key]
  assert written["macro_avg"] == report["macro avg"]
  if len(names) > 5:
    assert written["top_5_accuracy"] == skm.top_k_accuracy_score(
        files.labels, probabilities, k=5, labels=range(len(names)))
  assert written["accuracy"] > 1.5 / len(names)  # well above chance
  with Image.open(out / "confusion_matrix.png") as image:
    assert image.format == "PNG" and image.width >= 400 and image.height >= 300


def test_evaluate_run_writes_training_curves(trained_run, tmp_path):
  result, _ = trained_run
  out = tmp_path / "eval"
  run = call_main("evaluate", f"--run_dir={result.config.model_dir}", f"--output_dir={out}")
  assert run.returncode == 0, run.stderr[-3000:]
  written = json.loads((out / "metrics.json").read_text())
  assert abs(written["accuracy"] - result.metrics["accuracy"]) < 1e-9  # same validation data
  with Image.open(out / "training_curves.png") as image:
    assert image.format == "PNG" and image.width >= 600 and image.height >= 300


def test_predict_agrees_with_evaluate(trained_run, tmp_path):
  result, data_dir = trained_run
  files = _evaluation_files(trained_run)
  folder = os.path.commonpath(files.inputs)
  out = tmp_path / "preds.jsonl"
  run = call_main("predict", f"--export={os.path.dirname(result.export_path)}", "--top_k=3",
                f"--output={out}", folder)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["file"] for r in rows] == sorted(files.inputs) == files.inputs
  assert all(len(r["classes"]) == 3 and r["error"] is None for r in rows)
  predicted = [result.class_names.index(r["classes"][0]) for r in rows]
  evaluated = tmp_path / "eval"
  assert call_main("evaluate", f"--export={result.export_path}", f"--data_dir={data_dir}",
                 f"--output_dir={evaluated}").returncode == 0
  confusion = json.loads((evaluated / "metrics.json").read_text())["confusion_matrix"]
  assert skm.confusion_matrix(files.labels, predicted,
                              labels=range(len(result.class_names))).tolist() == confusion


def test_predict_reports_unreadable_files_and_writes_csv(trained_run, tmp_path):
  result, _ = trained_run
  image = _evaluation_files(trained_run).inputs[0]
  (tmp_path / "bad.jpg").write_text("not a jpeg")
  out = tmp_path / "preds.csv"
  run = call_main("predict", f"--export={result.export_path}", f"--output={out}", image,
                str(tmp_path / "bad.jpg"), str(tmp_path / "missing.png"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert "2 of 3 inputs could not be read" in run.stderr
  lines = out.read_text().splitlines()
  assert lines[0].startswith("file,class_1,probability_1,")
  assert len(lines) == 4 and lines[2].startswith(str(tmp_path / "bad.jpg"))
  assert "UnidentifiedImageError" in lines[2] and "FileNotFoundError" in lines[3]
  table = call_main("predict", f"--export={result.export_path}", "--top_k=2", image)
  assert table.returncode == 0 and table.stdout.startswith(image)
  assert len(table.stdout.split("\t")[1].split("  ")) == 2


def test_user_mistakes(trained_run, tmp_path):
  result, data_dir = trained_run
  cases = [
      ("predict", [f"--export={result.export_path}", str(tmp_path / "none/*.png")], "inputs:"),
      ("predict", [f"--export={tmp_path / 'nope'}", "x.png"], "--export:"),
      ("predict", [f"--export={result.export_path}", "--output=x.txt", "a.png"], "--output:"),
      ("evaluate", [f"--export={tmp_path / 'nope'}", f"--data_dir={data_dir}"], "--export:"),
      ("evaluate", [f"--run_dir={tmp_path}"], "--run_dir:"),
      ("evaluate", [], "--export or --run_dir"),
  ]
  for module, args, prefix in cases:
    run = call_main(module, *args)
    assert run.returncode == 2, (args, run.stderr[-2000:])
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {prefix}"), run.stderr
    assert "Traceback" not in run.stderr
