import json
import os

import keras
import numpy as np
import pytest

from conftest import needs_imagenet_mobilenet, write_color_images
from kerasft import backbones, config, data, fit, heads

# A randomly initialized MobileNet maps every image to ~0 features, so these tests train
# on the real ImageNet weights from ../shared/keras_home.
pytestmark = needs_imagenet_mobilenet


@pytest.fixture
def color_dir(tmp_path):
  return write_color_images(tmp_path / "colors", per_class=24, size=32)


def _setup(color_dir, seed=0):
  keras.utils.set_random_seed(seed)
  dataset = data.load(color_dir, "", 0.25, 64, batch_size=8, seed=seed)
  backbone = backbones.build("mobilenet", "imagenet", 64)
  model = heads.build_classifier(backbone, len(dataset.class_names), dropout=0.0)
  return dataset, backbone, model


def _weights(model):
  return {w.path: w.numpy().copy() for w in model.weights}


def test_head_phase_learns_and_leaves_the_backbone_bit_identical(color_dir, tmp_path):
  dataset, backbone, model = _setup(color_dir)
  before = _weights(backbone.model)
  run_config = config.RunConfig(
      training=config.TrainingConfig(epochs=4, learning_rate=0.01, cache_features="off"),
      model_dir=str(tmp_path)).resolved()
  history = fit.run(run_config, model, dataset, verbose=0)
  after = _weights(backbone.model)
  assert before.keys() == after.keys()
  for path in before:
    np.testing.assert_array_equal(before[path], after[path], err_msg=path)
  assert max(history["val_accuracy"]) >= 0.8  # chance is 1/3
  assert history["phase"] == ["head"] * 4
  assert json.load(open(tmp_path / "history.json")) == history
  assert os.path.isfile(tmp_path / "best.keras")
  assert os.listdir(tmp_path / "logs")


def test_fine_tune_changes_exactly_the_unfrozen_layers_and_no_batchnorm(color_dir, tmp_path):
  dataset, backbone, model = _setup(color_dir)
  before = _weights(backbone.model)
  run_config = config.RunConfig(
      model=config.ModelConfig(unfreeze_top=2, image_size=64),
      training=config.TrainingConfig(epochs=1, fine_tune_epochs=2, learning_rate=0.01,
                                     fine_tune_learning_rate=0.01),
      model_dir=str(tmp_path)).resolved()
  history = fit.run(run_config, model, dataset, restore_best=False, verbose=0)
  assert history["phase"] == ["head", "fine_tune", "fine_tune"]
  after = _weights(backbone.model)
  changed = {path.split("/")[0] for path in before
             if not np.array_equal(before[path], after[path])}
  assert changed == {"conv_dw_13", "conv_pw_13"}
  for layer in backbone.model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      for w in layer.weights:  # gamma, beta, moving mean and variance
        np.testing.assert_array_equal(before[w.path], after[w.path], err_msg=w.path)


