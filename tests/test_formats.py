"""Formats beside the SavedModel (`kerasft.formats`): LiteRT float/dynamic/float16/int8 and
ONNX, for every task, with their checks, model cards, atomic folders and refusals."""

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import COLORS, call_main, tiny_model, write_color_images
import kerasft
import kerasft.tasks.registry
import kerasft.data.examples
from kerasft.tasks.classify.output import Multiclass
from kerasft.workflows import export as exporting
from kerasft.serving import client, formats, versions as serving
from kerasft.core.errors import UsageError
from kerasft.core.files import read_labels

LABELS = {"blue": ("cool", 0.0), "green": ("cool|natural", 0.25), "red": ("warm", 1.0)}


def _train(root, task, label_column):
  colors = write_color_images(root / "colors", per_class=10, size=32)
  path = root / "labels.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label", "tags", "redness"])
    for color in COLORS:
      for name in sorted(os.listdir(os.path.join(colors, color))):
        writer.writerow([os.path.join(colors, color, name), color, *LABELS[color]])
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model(), task=task),
      data=kerasft.DataConfig(csv=str(path), label_column=label_column, batch_size=8),
      training=kerasft.TrainingConfig(epochs=3, learning_rate=0.03),
      name=task, model_dir=str(root / "run"), export_dir=str(root / "export"))
  return kerasft.run_training(config, verbose=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A finished tiny run per task: {task: TrainResult}."""
  return {task: _train(tmp_path_factory.mktemp(task), task, column) for task, column in (
      ("multiclass", "label"), ("multilabel", "tags"), ("regression", "redness"))}


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "regression"])
def test_every_format_for_every_task_agrees_with_the_saved_model(runs, task, tmp_path):
  run = runs[task]
  export_dir = str(tmp_path / "export")
  result = exporting.export_run(run.config.model_dir, export_dir,
                                formats=("saved_model", "tflite", "onnx"))
  assert result["saved_model"] == os.path.join(export_dir, "1")
  for fmt, name in formats.FILES.items():
    assert result[fmt] == os.path.join(export_dir, fmt, "1", name)
    assert read_labels(os.path.join(export_dir, fmt, "1", "labels.txt")) == run.class_names
    check = result[f"{fmt}_check"]
    assert check["max_difference"] < 1e-4, (fmt, check)  # float32 files: parity
    assert check["on"].endswith("validation images")
    own = json.load(open(os.path.join(export_dir, fmt, "1", "model_card.json")))
    assert own["task"] == task and own["format"]["check"] == check
    assert own["format"]["file"] == f"{fmt}/1/{name}"
    assert "classes" not in own["outputs"] and "labels" not in own["outputs"]
  card = client.read_model_card(result["saved_model"])
  assert set(card["formats"]) == {"tflite", "onnx"}
  assert card["formats"]["tflite"]["quantize"] == "none"
  assert card["formats"]["onnx"]["opset"] == formats.ONNX_OPSET
  if task == "multiclass":
    assert result["tflite_check"]["top1_agreement"] == 1.0
  if task == "multilabel":
    assert result["onnx_check"]["label_agreement"] == 1.0


def _images(run, n=12):
  task = kerasft.tasks.registry.for_config(run.config)
  return task.sample_inputs(n)[0]


@pytest.mark.parametrize("quantize", ["dynamic", "float16", "int8"])
def test_quantized_files_load_in_litert_and_agree(runs, quantize, tmp_path):
  run = runs["multiclass"]
  result = exporting.export_run(run.config.model_dir, str(tmp_path / "e"),
                                formats=("tflite",), quantize=quantize,
                                calibration_examples=16)
  from ai_edge_litert.interpreter import Interpreter
  runner = Interpreter(model_path=result["tflite"]).get_signature_runner("serving_default")
  assert runner.get_input_details()["images"]["dtype"] == np.float32
  images = _images(run)
  got = Multiclass().main_output(formats.run_tflite(result["tflite"], images))
  expected = np.asarray(run.model(images, training=False))
  # The colours are far apart: quantization keeps every class on this tiny model.
  assert np.mean(got.argmax(1) == expected.argmax(1)) == 1.0
  assert np.abs(got - expected).max() < (0.05 if quantize == "float16" else 0.15)
  entry = json.load(open(os.path.join(os.path.dirname(result["tflite"]),
                                      "model_card.json")))["format"]
  assert entry["quantize"] == quantize
  assert ("calibration" in entry) == (quantize == "int8")
  if quantize == "int8":  # full int8 keeps every answer here: the chooser stops there
    assert entry["calibration"] == "16 train images"
    assert entry["chosen"] == "int8" and entry["met"] and len(entry["tried"]) == 1
    assert os.path.getsize(result["tflite"]) < 0.5 * os.path.getsize(
        exporting.export_run(run.config.model_dir, str(tmp_path / "f"),
                             formats=("tflite",))["tflite"])


def test_int8_with_uint8_input_and_output(runs, tmp_path):
  run = runs["multiclass"]
  result = exporting.export_run(run.config.model_dir, str(tmp_path / "e"),
                                formats=("tflite",), quantize="int8", calibration_examples=16,
                                tflite_io="uint8")
  from ai_edge_litert.interpreter import Interpreter
  runner = Interpreter(model_path=result["tflite"]).get_signature_runner("serving_default")
  detail = runner.get_input_details()["images"]
  assert detail["dtype"] == np.uint8
  images = _images(run)
  raw = runner(images=images[:1].astype(np.uint8))  # pixels go in as they are
  assert raw["probabilities"].dtype == np.uint8
  got = Multiclass().main_output(formats.run_tflite(result["tflite"], images))
  assert got.dtype == np.float32 and np.allclose(got.sum(1), 1, atol=0.05)
  assert np.array_equal(got.argmax(1), np.asarray(run.model(images)).argmax(1))
  assert result["tflite_check"]["top1_agreement"] == 1.0


def test_converted_only_takes_the_next_free_version_and_keeps_existing_ones(runs, tmp_path):
  run = runs["multiclass"]
  export_dir = str(tmp_path / "e")
  exporting.export_run(run.config.model_dir, export_dir, formats=("saved_model",))
  first = exporting.export_run(run.config.model_dir, export_dir, formats=("onnx",))
  second = exporting.export_run(run.config.model_dir, export_dir, formats=("onnx",))
  assert first["onnx"].endswith("onnx/2/model.onnx")
  assert second["onnx"].endswith("onnx/3/model.onnx")
  with pytest.raises(UsageError, match="--version: .*onnx/2 already exists"):
    exporting.export_run(run.config.model_dir, export_dir, version=2, formats=("onnx",))
  replaced = exporting.export_run(run.config.model_dir, export_dir, version=2,
                                  overwrite=True, formats=("onnx",))
  assert replaced["onnx"] == first["onnx"]
  assert sorted(os.listdir(os.path.join(export_dir, "onnx"))) == ["2", "3"]  # no staging


def test_a_failed_conversion_leaves_nothing(runs, tmp_path, monkeypatch):
  run = runs["multiclass"]
  export_dir = tmp_path / "e"

  def broken(*_):
    raise UsageError("--format=onnx: tf2onnx cannot convert this model")
  monkeypatch.setattr(formats, "onnx_bytes", broken)
  with pytest.raises(UsageError, match="tf2onnx cannot convert"):
    exporting.export_run(run.config.model_dir, str(export_dir), formats=("onnx",))
  assert not os.path.exists(export_dir / "onnx")


def test_converter_failure_is_one_line_naming_the_op(tmp_path):
  import tensorflow as tf
  module = tf.Module()

  @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.float32, name="images")])
  def serving_default(images):  # an op tf2onnx and LiteRT's int8 kernels do not have
    return {"probabilities": tf.math.bessel_i0e(images)[:, 0, 0, :]}
  module.f = serving_default
  tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default":
                                                              serving_default})
  with pytest.raises(UsageError) as raised:
    formats.tflite_bytes(str(tmp_path / "m"), "int8",
                         np.zeros((2, 4, 4, 3), np.float32))
  assert raised.value.args[0].startswith("--quantize=int8: the LiteRT converter")
  assert "\n" not in raised.value.args[0]
  with pytest.raises(UsageError) as raised:
    formats.onnx_bytes(str(tmp_path / "m"))
  import tf2onnx
  assert raised.value.args[0].startswith(f"--format=onnx: tf2onnx {tf2onnx.__version__} "
                                         "cannot convert this model")
  assert "BesselI0e" in raised.value.args[0] and "\n" not in raised.value.args[0]


def test_missing_onnx_extra_is_one_line(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import raises ImportError
  with pytest.raises(UsageError, match=r"pip install 'kerasft\[onnx\]'"):
    formats.check_onnx_installed()


def test_int8_needs_the_runs_training_images(runs, tmp_path):
  run = runs["multiclass"]
  task = kerasft.tasks.registry.for_config(dataclasses.replace(
      run.config, data=dataclasses.replace(run.config.data, csv=str(tmp_path / "gone.csv"))))
  with pytest.raises(UsageError, match="--quantize=int8: calibration reads the run's "
                                       "training images"):
    task.sample_inputs(8, "train")
  images, what = task.sample_inputs(8)  # a check can fall back to random pixels
  assert images.shape[0] == 8 and "random" in what


@pytest.mark.parametrize("args, message", [
    (["--format=saved_model", "--quantize=int8"], "--quantize=int8: quantizes the TFLite"),
    (["--format=onnx", "--quantize=float16"], "--quantize=float16: quantizes the TFLite"),
    (["--format=tflite", "--tflite_io=uint8"], "--tflite_io=uint8: integer input"),
    (["--format=tflite", "--calibration_examples=50"], "--calibration_examples: calibrates"),
    (["--format=tflite", "--quantize=int8", "--calibration_examples=0"],
     "--calibration_examples:"),
    (["--format=jpeg"], "flag --format=jpeg: value should be one of"),
    (["--format=tflite", "--min_agreement=0.9"], "--min_agreement: chooses among int8 files"),
    (["--format=tflite", "--quantize=int8", "--min_agreement=2"],
     "--min_agreement: must be in [0, 1]"),
])
def test_export_flag_mistakes_are_one_line(args, message):
  run = call_main("export", "--run_dir=somewhere", *args)
  assert run.returncode == 2, run.stderr[-2000:]
  assert run.stderr.strip().splitlines()[-1].startswith(f"error: {message}")


def test_export_cli_prints_each_formats_check(runs, tmp_path):
  run = call_main("export", f"--run_dir={runs['multilabel'].config.model_dir}",
                  f"--export_dir={tmp_path / 'e'}", "--format=all")
  assert run.returncode == 0, run.stderr[-3000:]
  lines = run.stdout.splitlines()
  assert lines[0] == f"saved_model: {tmp_path / 'e' / '1'}"
  assert any(l.startswith("  tflite vs SavedModel: largest difference") and
             "same label decisions on 100.0%" in l for l in lines), lines
  assert any(l.startswith("  onnx vs SavedModel:") for l in lines), lines
  assert sorted(os.listdir(tmp_path / "e")) == ["1", "onnx", "tflite"]
  assert serving.versions(str(tmp_path / "e" / "onnx")) == [1]


def _saturating_export(tmp_path):
  """An export whose answers full int8 loses: one activation channel spans a range 3000
  times the others', so one per-tensor int8 scale rounds the channels that decide the class
  to zero. Returns (its version folder, calibration images, check images)."""
  import keras
  from conftest import export_image
  rng = np.random.default_rng(0)
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  wide = keras.layers.Dense(4, name="wide")(x)
  out = keras.layers.Dense(3, activation="softmax", name="probabilities")(wide)
  model = keras.Model(inputs, out)
  model.get_layer("wide").set_weights([np.array(
      [[30.0, 0.01, 0, 0], [30.0, 0, 0.01, 0], [30.0, 0, 0, 0.01]], np.float32),
      np.zeros(4, np.float32)])
  model.get_layer("probabilities").set_weights([np.array(
      [[0, 0, 0], [100.0, 0, 0], [0, 100.0, 0], [0, 0, 100.0]], np.float32),
      np.zeros(3, np.float32)])

  def images(n):
    colors = rng.uniform(0, 255, (n, 1, 1, 3))
    return np.clip(colors + rng.normal(0, 5, (n, 8, 8, 3)), 0, 255).astype(np.float32)
  saved = export_image(model, ["r", "g", "b"], 8, str(tmp_path / "export"))
  return saved, images(64), images(100)


def test_the_int8_chooser_keeps_the_floor_on_a_model_that_saturates(tmp_path):
  saved, calibration, images = _saturating_export(tmp_path)
  output = Multiclass()
  expected = client.saved_model_probabilities(saved, images, output)
  (tmp_path / "scratch").mkdir()
  content, record = exporting._int8_choice(  # pylint: disable=protected-access
      output, saved, calibration, "float", (images, expected, 0.98), str(tmp_path / "scratch"))
  first = record["tried"][0]
  assert first["variant"] == "int8" and first["agreement"] < 0.9, record  # chance: 1/3
  assert record["met"] and record["chosen"] != "int8", record
  path = tmp_path / "chosen.tflite"
  path.write_bytes(content)
  got = output.main_output(formats.run_tflite(str(path), images))
  assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.98
  if "float_ops" in record:  # the ops the debugger ranked worst stayed float
    assert 1 <= len(record["float_ops"]) <= 16
  # with a floor nothing reaches, the closest is kept and the record says it missed
  _, missed = exporting._int8_choice(  # pylint: disable=protected-access
      output, saved, calibration, "float", (images, expected, 1.01), str(tmp_path / "scratch"))
  assert not missed["met"] and [t["variant"] for t in missed["tried"]][-1] == "float16"


def test_export_prints_the_int8_choice(runs, tmp_path):
  run = runs["multiclass"]
  done = call_main("export", f"--run_dir={run.config.model_dir}", f"--export_dir={tmp_path}",
                   "--format=tflite", "--quantize=int8", "--calibration_examples=8",
                   "--min_agreement=0.9")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "int8 choice: int8 [tried int8: " in done.stdout and "keeps 100.0%" in done.stdout
  assert "ms per image on this CPU" in done.stdout
  entry = json.load(open(tmp_path / "tflite" / "1" / "model_card.json"))["format"]
  assert entry["min_agreement"] == 0.9 and entry["met"] and entry["check"]["ms_per_image"] > 0
