"""Shared fixtures. Keras reads KERAS_HOME when it is first imported, so this file points it
at a temporary, writable folder whose models/ links to ../shared/keras_home before any test
module imports Keras."""

import functools
import os
import shutil
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


def write_unlabeled_colors(folder, per_class=10, seed=1):
  """Colour squares with no class folders: one flat folder of `per_class` x 3 PNGs."""
  pool = write_color_images(os.path.join(str(folder), "_pool"), per_class=per_class, size=32,
                            seed=seed)
  os.makedirs(folder, exist_ok=True)
  for name in sorted(os.listdir(pool)):
    for file in sorted(os.listdir(os.path.join(pool, name))):
      shutil.move(os.path.join(pool, name, file), os.path.join(str(folder), f"{name}-{file}"))
  shutil.rmtree(pool)
  return str(folder)


@pytest.fixture
def color_dir(tmp_path):
  return write_color_images(tmp_path / "colors")


def run_cli(module, *args, env=None, cwd=None, timeout=600):
  """Runs `python -m kerasft.<module> args...` in `cwd` (default: a new temporary folder,
  so that default outputs such as runs/NAME never land in the checkout); returns the
  CompletedProcess."""
  full_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
  cwd = cwd or tempfile.mkdtemp(prefix="kerasft-cli-")
  return subprocess.run([sys.executable, "-m", f"kerasft.{module}", *args], cwd=cwd,
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
      # trained by epochs: its validation split stays held out (evaluate --run_dir uses it)
      training=kerasft.TrainingConfig(epochs=2, head_solver="epochs"),
      name="fashion", model_dir=str(root / "runs" / "fashion"),
      export_dir=str(root / "saved_models" / "fashion"))
  return kerasft.run_training(config, verbose=0), data_dir


def build_backbone(name, weights="imagenet", image_size=None, **fields):
  """backbones.build for a ModelConfig with these fields."""
  from kerasft.models import backbones
  from kerasft import config
  return backbones.build(config.ModelConfig(model=name, weights=weights, image_size=image_size,
                                            **fields))


def output(task="multiclass", threshold=0.5):
  from kerasft.tasks import registry as tasks
  return tasks.make_output(task, threshold)


def checked(config):
  """A RunConfig (or its dict) as a run starts it: every check across its groups run
  (`kerasft.tasks.registry.check`); returns the config."""
  import kerasft
  from kerasft.tasks import registry
  config = kerasft.RunConfig.from_dict(config) if isinstance(config, dict) else config
  registry.check(config)
  return config


def load_dataset(data_dir, val_dir, validation_split, image_size, batch_size, seed=0):
  """Indexed image folders in their training and validation pipelines."""
  from kerasft.data import folders, pipeline
  train, val = folders.index(data_dir, val_dir, validation_split, seed)
  return pipeline.pipelines(train, val, image_size, batch_size, seed)


def export_image(model, class_names, image_size, export_dir, version=None, overwrite=False,
                 resize="squash", task="multiclass", threshold=0.5, card=None):
  """A SavedModel version of an image model (raw pixels in), as training writes it."""
  from kerasft.models import signatures
  from kerasft.serving import versions as serving
  out = output(task, threshold)
  return serving.export(
      lambda labels: signatures.image_signatures(model, class_names, image_size, labels,
                                                 out.serving_outputs, resize),
      class_names, export_dir, version, overwrite, card)


def fit_run(run_config, model, dataset, task="multiclass", restore_best=True, **kwargs):
  """fit.execute into the config's model_dir; returns the history. kwargs: `fit.Run`'s."""
  from kerasft.training import fit, run_folder
  return fit.execute(fit.Run(run_config, model, dataset, output(task),
                             run_folder.RunFolder(run_config.model_dir), **kwargs),
                     restore_best).history


def text_saved_model_cli(export_path, texts, outdir):
  """`saved_model_cli run` of a text export's serving_default on `texts`, outputs as .npy
  files in `outdir`. saved_model_cli cannot load tensorflow-text's ops itself: its main()
  runs in a process that imported tensorflow_text first, as the README says."""
  script = ("import sys, tensorflow_text\n"
            "from tensorflow.python.tools import saved_model_cli\n"
            "sys.argv = ['saved_model_cli'] + sys.argv[1:]\n"
            "saved_model_cli.main()\n")
  run = subprocess.run([sys.executable, "-c", script, "run", "--dir", export_path,
                        "--tag_set", "serve", "--signature_def", "serving_default",
                        "--input_exprs", f"text={texts!r}", "--outdir", str(outdir)],
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]


def call_main(module, *args, cwd=None):
  """Runs `python -m kerasft.<module> args...` in this process, as the command line would
  (the same flag parsing, one-line errors and exit codes) but without starting TensorFlow
  again; in `cwd` when given. Returns a CompletedProcess (stderr holds the log lines)."""
  import contextlib
  import importlib
  import io
  import logging as pylogging
  from absl import logging as absl_logging
  from absl.testing import flagsaver
  from kerasft.core import cli
  entry = importlib.import_module(f"kerasft.{module}")
  out, err = io.StringIO(), io.StringIO()
  handler = pylogging.StreamHandler(err)
  handler.setFormatter(pylogging.Formatter("%(levelname)s %(message)s"))
  root, verbosity = pylogging.getLogger(), absl_logging.get_verbosity()
  root.addHandler(handler)
  absl_logging.set_verbosity(absl_logging.INFO)
  previous = os.getcwd()
  try:
    if cwd:
      os.chdir(cwd)
    with flagsaver.flagsaver(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli.run_in_process(entry.main, [f"kerasft.{module}", "--verbosity=0",
                                             *map(str, args)])
  finally:
    os.chdir(previous)
    root.removeHandler(handler)
    absl_logging.set_verbosity(verbosity)
  return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def write_tiny_backbone(path, size=32, width=16):
  """Saves a tiny convolutional backbone as a .keras file (for --model=keras:PATH): pixels
  0..255 -> rescaling to 0..10 -> three blocks (conv, BatchNorm, ReLU; the last `width`
  filters) -> average pooling -> a 10-way top layer that the keras: source drops. Its
  random weights tell colours apart well enough for a head to learn them."""
  import keras
  keras.utils.set_random_seed(0)
  inputs = keras.Input((size, size, 3))
  x = keras.layers.Rescaling(10 / 255.0, name="rescale")(inputs)
  for i, (filters, stride) in enumerate(((8, 2), (16, 2), (width, 1)), start=1):
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"block{i}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
    x = keras.layers.ReLU(name=f"block{i}_relu")(x)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
  keras.Model(inputs, outputs, name="tiny").save(str(path))
  return str(path)


@functools.lru_cache(maxsize=None)
def tiny_model() -> str:
  """--model=keras:PATH of a tiny 32 px convolutional backbone (`write_tiny_backbone`),
  written once per test process into a temporary folder."""
  folder = tempfile.mkdtemp(prefix="kerasft-tiny-")
  return "keras:" + write_tiny_backbone(os.path.join(folder, "tiny.keras"))


@pytest.fixture
def tiny_backbone():
  return tiny_model()


# The longest test files first: `make test` hands whole files to its workers
# (--dist=loadscope, so a file's shared fixtures are computed once), and starting the long
# ones first keeps both workers busy until the end.
LONGEST_FIRST = ("test_text.py", "test_reliability.py", "test_tune.py", "test_methods.py",
                 "test_export.py", "test_formats.py", "test_tagging.py", "test_segmentation.py",
                 "test_adapt.py", "test_self_training.py", "test_distill.py",
                 "test_distribute.py", "test_backbones.py",
                 "test_evaluate.py", "test_hub.py", "test_train.py", "test_sources.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
