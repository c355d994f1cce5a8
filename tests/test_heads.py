import numpy as np
import pytest

import keras

from kerasft.config import backbones as backbone_names
from kerasft.models import backbones, heads
from conftest import build_backbone, output


@pytest.mark.parametrize("mode, module", [
    ("tf", keras.applications.mobilenet), ("torch", keras.applications.densenet),
    ("caffe", keras.applications.resnet50), ("none", keras.applications.efficientnet)])
def test_preprocess_matches_keras_preprocess_input(mode, module):
  x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
  expected = module.preprocess_input(x.copy())
  np.testing.assert_allclose(heads.Preprocess(mode)(x), expected, rtol=1e-5, atol=1e-4)


def test_every_table_mode_is_a_preprocess_mode():
  assert {s.preprocess for s in backbone_names.MODELS.values()} <= set(heads.PREPROCESS_MODES)


def test_classifier_takes_raw_pixels_and_head_is_all_that_trains():
  backbone = build_backbone("mobilenet", "none", 32)
  model = heads.build_classifier(backbone, 4, output(), head=(16, 8), dropout=0.1)
  assert model.input_shape == (None, 32, 32, 3)
  assert model.output_shape == (None, 4)
  trainable = {w.path for w in model.trainable_weights}
  expected = {w.path for layer in heads.head_layers(model) for w in layer.weights}
  assert trainable == expected and len(expected) == 6
  probs = np.asarray(model(np.full((2, 32, 32, 3), 128.0, "float32")))
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_keras_file_round_trip(tmp_path):
  model = heads.build_classifier(build_backbone("mobilenet", "none", 32), 3, output())
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
  np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0),
                             atol=1e-6)
