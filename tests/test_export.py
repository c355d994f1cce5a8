"""`python -m kerasft.export`, the three signatures under TF Serving's tools, warm-up
requests, models.config and TFLite."""

import base64
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

import pytest

from conftest import call_main, export_image
import kerasft
from kerasft.models import signatures
import kerasft.tasks.registry
import kerasft.data.examples
from kerasft.tasks.classify.output import Multiclass
from kerasft.serving import client, formats, versions as serving
from kerasft.data import examples as data, pipeline, folders


def _saved_model_cli(*args):
  return subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                         *args], capture_output=True, text=True, timeout=300)


def _test_images(trained_run, n):
  result, data_dir = trained_run
  files = folders.evaluation_files(data_dir, result.class_names)
  step = max(1, len(files.inputs) // n)
  return files.inputs[::step][:n]


@pytest.mark.slow
def test_three_signatures_through_saved_model_cli_reproduce_the_model(trained_run, tmp_path):
  result, _ = trained_run
  paths = _test_images(trained_run, 3)
  encoded = [open(p, "rb").read() for p in paths]
  size = result.config.model.image_size
  pixels = np.stack([np.asarray(pipeline.decode_and_resize(b, size)) for b in encoded])
  expected = np.asarray(result.model(pixels, training=False))
  np.save(tmp_path / "images.npy", pixels)
  np.save(tmp_path / "bytes.npy", np.array(encoded, dtype=object).astype("S"))
  np.save(tmp_path / "examples.npy",
          np.array([signatures.image_example(b) for b in encoded], dtype=object).astype("S"))
  assert sorted(tf.saved_model.load(result.export_path).signatures) == sorted(
      serving.SIGNATURES)
  for signature, key, npy in (("serving_default", "images", "images.npy"),
                              ("serving_bytes", "image_bytes", "bytes.npy"),
                              ("serving_example", "examples", "examples.npy")):
    out = tmp_path / signature
    run = _saved_model_cli("run", "--dir", result.export_path, "--tag_set", "serve",
                           "--signature_def", signature, "--inputs", f"{key}={tmp_path / npy}",
                           "--outdir", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), expected, atol=1e-5)
    np.testing.assert_array_equal(np.load(out / "class_ids.npy"), expected.argmax(1))


def test_rest_b64_body_gives_the_same_classes_as_pixels(trained_run):
  result, _ = trained_run
  paths = _test_images(trained_run, 4)
  body = json.dumps({"signature_name": "serving_bytes", "instances": [
      {"b64": base64.b64encode(open(p, "rb").read()).decode()} for p in paths]})
  # TF Serving's REST API decodes {"b64": ...} into the bytes of a DT_STRING input.
  instances = [base64.b64decode(i["b64"]) for i in json.loads(body)["instances"]]
  loaded = tf.saved_model.load(result.export_path)
  by_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant(instances))
  pixels = tf.stack([pipeline.decode_and_resize(b, result.config.model.image_size)
                     for b in instances])
  by_pixels = loaded.signatures["serving_default"](images=pixels)
  assert by_bytes["classes"].numpy().tolist() == by_pixels["classes"].numpy().tolist()


def test_warmup_requests_parse_and_are_answered(trained_run):
  from tensorflow_serving.apis import prediction_log_pb2
  result, _ = trained_run
  path = os.path.join(result.export_path, serving.WARMUP_FILE)
  loaded = tf.saved_model.load(result.export_path)
  signatures = []
  for record in tf.data.TFRecordDataset(path):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    signature = request.model_spec.signature_name
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    out = loaded.signatures[signature](**inputs)
    assert out["probabilities"].shape == (1, len(result.class_names))
    signatures.append(signature)
  assert sorted(signatures) == sorted(serving.SIGNATURES)


def test_model_card_and_models_config(trained_run, tmp_path):
  result, _ = trained_run
  card = json.load(open(os.path.join(result.export_path, serving.MODEL_CARD_FILE)))
  assert card["backbone"] == "mobilenet" and card["classes"] == result.class_names
  assert card["input"]["shape"] == [None, 64, 64, 3] and card["input"]["dtype"] == "float32"
  assert card["validation_metrics"]["accuracy"] == result.metrics["accuracy"]
  assert {"kerasft", "tensorflow", "keras"} <= set(card["versions"])
  root = tmp_path / "saved_models"
  (root).mkdir()
  (root / "models.config").write_text(
      'model_config_list {\n  config {\n    name: "kept"\n    base_path: "/elsewhere/kept"\n'
      '    model_platform: "tensorflow"\n  }\n}\n')
  export_image(result.model, result.class_names, 64, str(root / "alpha"))
  export_image(result.model, result.class_names, 64, str(root / "beta"))
  text = (root / "models.config").read_text()
  assert text.count("config {") == 3 and '"/elsewhere/kept"' in text
  assert 'base_path: "/models/alpha"' in text and 'base_path: "/models/beta"' in text
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2
  parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
  assert [c.name for c in parsed.model_config_list.config] == ["kept", "alpha", "beta"]


@pytest.mark.slow
def test_export_cli_versions_and_tflite(trained_run, tmp_path):
  result, _ = trained_run
  run_dir = result.config.model_dir
  export_dir = tmp_path / "fashion"
  first = call_main("export", f"--run_dir={run_dir}", f"--export_dir={export_dir}",
                    "--format=both")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "tflite vs SavedModel: largest difference" in first.stdout
  assert sorted(os.listdir(export_dir)) == ["1", "tflite"]
  tflite = export_dir / "tflite" / "1" / "model.tflite"
  assert (export_dir / "tflite" / "1" / "labels.txt").read_text().splitlines() == \
      result.class_names

  collision = call_main("export", f"--run_dir={run_dir}", f"--export_dir={export_dir}",
                      "--version=1")
  assert collision.returncode == 2 and "Traceback" not in collision.stderr
  assert collision.stderr.strip().splitlines()[-1].startswith("error: --version:")
  replaced = call_main("export", f"--checkpoint={os.path.join(run_dir, 'best.keras')}",
                     f"--export_dir={export_dir}", "--version=1", "--overwrite",
                     "--format=tflite", "--quantize=dynamic")
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  assert sorted(os.listdir(export_dir)) == ["1", "tflite"]

  paths = _test_images(trained_run, 200)
  size = result.config.model.image_size
  images = np.stack([np.asarray(pipeline.decode_and_resize(open(p, "rb").read(), size))
                     for p in paths])
  expected = client.saved_model_probabilities(str(export_dir / "1"), images, Multiclass())
  agreement = {}
  calibration = kerasft.tasks.registry.for_config(result.config).sample_inputs(100, "train")[0]
  for quantize in ("none", "dynamic", "float16", "int8"):
    path = tflite if quantize == "dynamic" else tmp_path / f"{quantize}.tflite"
    if quantize != "dynamic":  # converted from the export written above
      path.write_bytes(formats.tflite_bytes(str(export_dir / "1"), quantize, calibration))
    got = Multiclass().main_output(formats.run_tflite(str(path), images))
    agreement[quantize] = np.mean(got.argmax(1) == expected.argmax(1))
    if quantize == "none":
      np.testing.assert_allclose(got, expected, atol=1e-4)
      float_size = os.path.getsize(path)
    else:
      assert os.path.getsize(path) < 0.6 * float_size, quantize
  # Same top-1 class as the SavedModel on 200 fashion test images (this 64 px MobileNet v1,
  # a 2-epoch head, many near ties); measured: dynamic 0.885-0.935, float16 1.0, int8 0.805
  # (the 96 px recipe: benchmarks/export_formats.py).
  assert agreement["float16"] >= 0.99 and agreement["dynamic"] >= 0.85, agreement
  assert agreement["int8"] >= 0.75, agreement


def test_export_cli_mistakes(tmp_path):
  for args, prefix in ((["--run_dir=" + str(tmp_path)], "--run_dir:"),
                       ([], "--run_dir, --checkpoint or --adapter"),
                       (["--run_dir=x", "--version=0"], "--version:")):
    run = call_main("export", *args)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {prefix}")
