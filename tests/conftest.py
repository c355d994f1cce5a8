"""Shared fixtures. Keras reads KERAS_HOME when it is first imported, so this file points it
at a temporary, writable folder whose models/ links to ../shared/keras_home before any test
module imports Keras."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
SHARED_MODELS = os.path.join(SHARED, "keras_home", "models")
FASHION = os.path.join(SHARED, "data", "fashion_mnist_small")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
KERAS_HOME = tempfile.mkdtemp(prefix="kerasft-test-keras-home-")
os.makedirs(os.path.join(KERAS_HOME, "models"))
if os.path.isdir(SHARED_MODELS):
  for name in os.listdir(SHARED_MODELS):
    os.symlink(os.path.join(SHARED_MODELS, name), os.path.join(KERAS_HOME, "models", name))
os.environ["KERAS_HOME"] = KERAS_HOME

HAVE_IMAGENET_MOBILENET = os.path.isfile(
    os.path.join(SHARED_MODELS, "mobilenet_1_0_224_tf_no_top.h5"))
needs_imagenet_mobilenet = pytest.mark.skipif(
    not HAVE_IMAGENET_MOBILENET,
    reason="../shared/keras_home/models/mobilenet_1_0_224_tf_no_top.h5 is absent")
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION),
                                   reason="../shared/data/fashion_mnist_small is absent")

COLORS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def write_color_images(folder, per_class=12, size=40, seed=0, colors=COLORS, mode="RGB"):
  """Writes noisy solid-color PNGs, one class sub-folder per color; returns the folder."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  for name, rgb in colors.items():
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    for i in range(per_class):
      pixels = np.clip(np.asarray(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255)
      Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(
          os.path.join(folder, name, f"{i:03d}.png"))
  return str(folder)


@pytest.fixture
def color_dir(tmp_path):
  return write_color_images(tmp_path / "colors")


def run_cli(module, *args, env=None, cwd=None, timeout=600):
  """Runs `python -m kerasft.<module> args...`; returns the CompletedProcess."""
  full_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
  return subprocess.run([sys.executable, "-m", f"kerasft.{module}", *args], cwd=cwd or REPO,
                        env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """A short real run (fashion-MNIST sample when present, else color squares), 64 px.

  Returns (TrainResult, data_dir). Shared by the evaluate, predict and export tests.
  """
  import kerasft
  root = tmp_path_factory.mktemp("trained")
  data_dir = FASHION if os.path.isdir(FASHION) else write_color_images(root / "colors", 20)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="mobilenet", image_size=64,
                                weights="imagenet" if HAVE_IMAGENET_MOBILENET else "none"),
      data=kerasft.DataConfig(data_dir=data_dir),
      training=kerasft.TrainingConfig(epochs=2),
      name="fashion", model_dir=str(root / "runs" / "fashion"),
      export_dir=str(root / "saved_models" / "fashion"))
  return kerasft.train_classifier(config, verbose=0), data_dir
