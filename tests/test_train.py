"""The `python -m kerasft.train` entry point and `kerasft.train_classifier`, end to end."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import FASHION, HAVE_IMAGENET_MOBILENET, needs_fashion, needs_imagenet_mobilenet
from conftest import REPO, SHARED, call_main, run_cli, tiny_model, write_color_images
import kerasft
from kerasft.data.source import Source
from kerasft.data import examples as data, folders

WEIGHTS = "imagenet" if HAVE_IMAGENET_MOBILENET else "none"


def _args(tmp_path, data_dir, *extra):
  return [f"--data_dir={data_dir}", "--model=mobilenet", f"--weights={WEIGHTS}",
          "--image_size=64", "--epochs=2", f"--model_dir={tmp_path / 'run'}",
          f"--export_dir={tmp_path / 'export'}", *extra]


def _assert_usage_error(result, prefix, tmp_path):
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {prefix}"), last
  export = tmp_path / "export"
  assert not export.exists() or not [n for n in os.listdir(export) if n != "1"]


def _tiny_args(tmp_path, data_dir, tiny_backbone, *extra):
  return [f"--data_dir={data_dir}", f"--model={tiny_backbone}", "--epochs=2",
          f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}", *extra]


@pytest.mark.slow
def test_cli_trains_exports_and_refuses_to_overwrite_a_finished_run(tmp_path, tiny_backbone):
  colors = write_color_images(tmp_path / "colors", per_class=10, size=32)
  result = run_cli("train", *_tiny_args(tmp_path, colors, tiny_backbone))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "exported to" in result.stdout
  run = tmp_path / "run"
  for name in ("config.json", "history.json", "metrics.json", "best.keras",
               "confusion_matrix.png", "training_curves.png", "state.json", "report.html",
               "timings.json"):
    assert (run / name).is_file(), name
  assert os.listdir(run / "logs")
  timings = json.loads((run / "timings.json").read_text())  # the whole process, by phase
  assert {"import", "data", "model", "train", "report", "export", "report_html", "other"} == \
      set(timings["seconds"])
  assert timings["seconds"]["import"] > 0.5  # TensorFlow alone takes seconds
  assert abs(sum(timings["seconds"].values()) - timings["total"]) < 1e-6
  assert re.search(r"time: .*; total [\d.]+ s", result.stderr)
  saved = json.loads((run / "config.json").read_text())
  assert saved["model"]["image_size"] == 32 and saved["data"]["data_dir"] == colors
  assert len(json.loads((run / "history.json").read_text())["loss"]) == 1  # one convex solve
  assert os.listdir(tmp_path / "export") == ["1"]

  again = call_main("train", *_tiny_args(tmp_path, colors, tiny_backbone))
  _assert_usage_error(again, "--model_dir:", tmp_path)
  assert "--overwrite" in again.stderr

  replaced = call_main("train", *_tiny_args(tmp_path, colors, tiny_backbone, "--overwrite"))
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "export")) == ["1", "2"]


@pytest.mark.parametrize("make, extra, prefix", [
    (lambda p: str(p / "missing"), [], "--data_dir: folder"),
    (lambda p: (p / "empty").mkdir() or str(p / "empty"), [], "--data_dir:"),
    (lambda p: write_color_images(p / "one", 3, colors={"red": (255, 0, 0)}), [],
     "--data_dir:"),
    (lambda p: write_color_images(p / "c", 3), ["--model=resnet5"], "--model: unknown"),
    (lambda p: write_color_images(p / "c", 3), ["--epochs=0"], "--epochs:"),
    (lambda p: write_color_images(p / "c", 3), ["--learning_rate=-1"], "--learning_rate:"),
    (lambda p: write_color_images(p / "c", 3), ["--batch_size=abc"],
         "--batch_size: must be a positive integer or auto, got 'abc'"),
    (lambda p: write_color_images(p / "c", 3), ["--head=64,x"], "--head:"),
    (lambda p: write_color_images(p / "c", 3), ["--unfreeze_top=2"], "--unfreeze_top"),
    (lambda p: write_color_images(p / "c", 3), ["--unfreeze_top=900", "--fine_tune_epochs=1"],
     "--unfreeze_top:"),
    (lambda p: write_color_images(p / "c", 3), ["--weights=/no/such/file.h5"], "--weights:"),
    (lambda p: write_color_images(p / "c", 3), ["stray"], "unexpected arguments"),
], ids=["missing", "empty", "one-class", "unknown-model", "epochs", "learning-rate",
        "not-a-number", "head", "unfreeze-without-phase", "unfreeze-too-many", "weights-file",
        "positional"])
def test_user_mistakes_are_one_line_exit_2_and_write_nothing(tmp_path, make, extra, prefix):
  data_dir = make(tmp_path)
  result = call_main("train", *_args(tmp_path, data_dir), *extra)
  _assert_usage_error(result, prefix, tmp_path)
  assert not (tmp_path / "export").exists() and not (tmp_path / "run").exists()


def test_unreadable_image_is_skipped_or_with_strict_data_names_the_file(tmp_path,
                                                                       tiny_backbone):
  colors = write_color_images(tmp_path / "c", 3)
  (tmp_path / "c" / "red" / "notes.png").write_text("not an image")
  result = call_main("train", *_tiny_args(tmp_path, colors, tiny_backbone, "--strict_data"))
  _assert_usage_error(result, "--strict_data:", tmp_path)
  assert "notes.png" in result.stderr
  assert not (tmp_path / "export").exists() and not (tmp_path / "run").exists()
  skipped = call_main("train", *_tiny_args(tmp_path, colors, tiny_backbone,
                                           "--class_weight=balanced", "--epochs=1",
                                           "--resize=crop"))
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["resize"] == "crop"
  card = json.loads((tmp_path / "export" / "1" / "model_card.json").read_text())
  assert card["resize"] == "crop, bilinear"
  assert "skipping 1 unreadable image(s) from --data_dir" in skipped.stderr
  assert "notes.png" in skipped.stderr and "class weights (balanced)" in skipped.stderr


@pytest.mark.slow
@needs_fashion
@needs_imagenet_mobilenet
def test_default_recipe_transfers_to_fashion_mnist_test_split(tmp_path):
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="mobilenet", image_size=96),
      data=kerasft.DataConfig(data_dir=FASHION),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  assert result.export_path == str(tmp_path / "export" / "1")
  assert len(result.history["loss"]) == 1  # the head phase is one convex solve
  # Accuracy on the held-out test/ folder, through the exported serving_bytes signature.
  test = folders.scan_class_folder(Source("data_dir", os.path.join(FASHION, "test")), result.class_names)
  serve = tf.saved_model.load(result.export_path).signatures["serving_bytes"]
  predicted = []
  for start in range(0, len(test.inputs), 100):
    encoded = [open(p, "rb").read() for p in test.inputs[start:start + 100]]
    predicted.extend(serve(image_bytes=tf.constant(encoded))["class_ids"].numpy())
  accuracy = float(np.mean(np.asarray(predicted) == np.asarray(test.labels)))
  assert accuracy >= 0.75, accuracy


@pytest.mark.parametrize("recipe", sorted(os.listdir(os.path.join(REPO, "flags"))))
def test_every_recipe_file_parses_and_builds_its_backbone(recipe):
  """--list_blocks parses the whole flagfile into a config and builds the backbone."""
  needs = {"fashion": FASHION, "minilm": os.path.join(SHARED, "models", "all-minilm-l6-v2")}
  for key, path in needs.items():
    if key in recipe and not os.path.exists(path):
      pytest.skip(f"{path} is absent")
  result = call_main("train", f"--flagfile=flags/{recipe}", "--list_blocks", cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(result.stdout.strip().splitlines()) >= 6  # one line per block


@pytest.mark.slow
def test_a_log_written_to_a_file_has_no_escape_codes(tmp_path):
  """stdout to a file: one line per epoch (Keras' verbose=2), no progress bar redraws."""
  colors = write_color_images(tmp_path / "colors", per_class=8, size=24)
  with open(tmp_path / "run.log", "w") as log:
    done = subprocess.run(
        [sys.executable, "-m", "kerasft.train", f"--model={tiny_model()}",
         f"--data_dir={colors}", "--head_solver=epochs", "--epochs=2",
         f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}"],
        cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": REPO}, stdout=log,
        stderr=subprocess.STDOUT, timeout=300)
  text = (tmp_path / "run.log").read_text()
  assert done.returncode == 0, text[-3000:]
  assert "\x1b" not in text and "\r" not in text
  assert len([line for line in text.splitlines() if " - loss: " in line]) == 2  # an epoch each
