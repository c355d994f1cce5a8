import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import HAVE_IMAGENET_MOBILENET
from kerasft.models import heads
from kerasft.data import pipeline
from kerasft.serving import versions as serving
from conftest import build_backbone, output, export_image

CLASSES = ["cat", "dog", "fish"]
SIZE = 48


@pytest.fixture(scope="module")
def model():
  keras.utils.set_random_seed(0)
  weights = "imagenet" if HAVE_IMAGENET_MOBILENET else "none"  # random ones give ~0 features
  return heads.build_classifier(build_backbone("mobilenet", weights, SIZE), len(CLASSES), output(),
                                head=(8,))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
  root = tmp_path_factory.mktemp("saved_models") / "pets"
  return export_image(model, CLASSES, SIZE, str(root))


def _images(n=4, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _png_bytes(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def test_layout_labels_and_signatures(exported):
  assert os.path.basename(exported) == "1"
  with open(os.path.join(exported, "assets", "labels.txt")) as f:
    assert f.read().splitlines() == CLASSES
  loaded = tf.saved_model.load(exported)
  assert set(loaded.signatures) == set(serving.SIGNATURES)
  default = loaded.signatures["serving_default"]
  assert list(default.structured_input_signature[1]) == ["images"]
  assert default.structured_input_signature[1]["images"].shape.as_list() == [None, SIZE, SIZE, 3]
  assert set(default.structured_outputs) == {"probabilities", "class_ids", "classes"}
  assert list(loaded.signatures["serving_bytes"].structured_input_signature[1]) == ["image_bytes"]


def test_serving_default_reproduces_the_model(model, exported):
  x = _images()
  expected = np.asarray(model(x, training=False))
  out = tf.saved_model.load(exported).signatures["serving_default"](images=tf.constant(x))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
  assert out["probabilities"].dtype == tf.float32
  assert out["class_ids"].dtype == tf.int64
  np.testing.assert_array_equal(out["class_ids"].numpy(), expected.argmax(1))
  assert [c.decode() for c in out["classes"].numpy()] == [CLASSES[i] for i in expected.argmax(1)]


def test_serving_bytes_decodes_like_training(model, exported):
  pixels = np.random.default_rng(1).integers(0, 256, (3, 30, 20, 3))
  encoded = [_png_bytes(p) for p in pixels]
  expected = np.asarray(model(np.stack([pipeline.decode_and_resize(b, SIZE) for b in encoded]),
                              training=False))
  out = tf.saved_model.load(exported).signatures["serving_bytes"](
      image_bytes=tf.constant(encoded))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


def test_saved_model_cli_run_prints_the_same_probabilities(model, exported, tmp_path):
  x = _images(2, seed=3)
  np.save(tmp_path / "batch.npy", x)
  result = subprocess.run(
      [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "run", "--dir", exported,
       "--tag_set", "serve", "--signature_def", "serving_default",
       "--inputs", f"images={tmp_path / 'batch.npy'}", "--outdir", str(tmp_path / "out")],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "out" / "probabilities.npy"),
                             np.asarray(model(x, training=False)), atol=1e-5)


def test_variables_take_the_parameter_bytes_once(model, exported):
  variables = os.path.join(exported, "variables")
  stored = sum(os.path.getsize(os.path.join(variables, f)) for f in os.listdir(variables))
  parameter_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
  assert stored <= 1.1 * parameter_bytes, (stored, parameter_bytes)


def test_next_run_adds_version_2_and_failures_leave_nothing(model, exported, monkeypatch):
  root = os.path.dirname(exported)
  second = export_image(model, CLASSES, SIZE, root)
  assert os.path.basename(second) == "2"

  def boom(*args, **kwargs):
    raise RuntimeError("disk full")
  monkeypatch.setattr(tf.saved_model, "save", boom)
  with pytest.raises(RuntimeError):
    export_image(model, CLASSES, SIZE, root)
  assert sorted(os.listdir(root)) == ["1", "2"]
  assert serving.versions(root) == [1, 2]


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_serving_bytes_resizes_like_training_in_every_mode(model, tmp_path, resize):
  wide = np.zeros((20, 40, 3), np.uint8)
  wide[:, :20] = 255  # left half white
  encoded = [_png_bytes(wide), _png_bytes(np.random.default_rng(2).integers(0, 256, (50, 30, 3)))]
  pixels = np.stack([np.asarray(pipeline.decode_and_resize(b, SIZE, resize)) for b in encoded])
  if resize == "pad":  # aspect kept: black bands above and below
    assert pixels[0, 0].max() == 0 and pixels[0, SIZE // 2, 0].min() > 250
  elif resize == "crop":  # central square of the wide image: both halves present
    assert pixels[0, SIZE // 2, 0].min() > 250 and pixels[0, SIZE // 2, -1].max() < 5
  path = export_image(model, CLASSES, SIZE, str(tmp_path / resize), resize=resize)
  loaded = tf.saved_model.load(path)
  by_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant(encoded))
  by_pixels = loaded.signatures["serving_default"](images=tf.constant(pixels))
  np.testing.assert_allclose(by_bytes["probabilities"].numpy(),
                             by_pixels["probabilities"].numpy(), atol=1e-5)
