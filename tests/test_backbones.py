import gc
import os

import numpy as np
import pytest

import keras

from conftest import call_main, needs_imagenet_mobilenet, run_cli
from kerasft.models import backbones, heads
from kerasft.config import backbones as backbone_names
from kerasft.core.errors import UsageError
from conftest import build_backbone, output


def test_every_table_entry_names_a_keras_application():
  for name, entry in backbone_names.MODELS.items():
    assert callable(getattr(keras.applications, entry.keras_name, None)), name
    assert entry.min_size <= entry.default_size, name


# One model per family: the others differ from it only in width and depth.
FAMILIES = ("convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_b0",
            "inception_resnet_v2", "inception_v3", "mobilenet", "mobilenet_v2",
            "mobilenet_v3_small", "nasnet_mobile", "resnet50", "resnet50_v2", "vgg16", "vgg19",
            "xception")


@pytest.mark.slow
def test_every_family_builds_small_and_freezing_leaves_only_the_head():
  for name in FAMILIES:
    entry = backbone_names.MODELS[name]
    size = max(32, entry.min_size)
    backbone = build_backbone(name, "none", size)
    model = heads.build_classifier(backbone, 3, output())
    assert model.output_shape == (None, 3), name
    trainable = [w.path for w in model.trainable_weights]
    assert trainable == ["probabilities/kernel", "probabilities/bias"], (name, trainable)
    assert len(backbones.blocks(backbone.model)) >= 5, name  # --unfreeze_blocks has blocks
    keras.backend.clear_session()
    gc.collect()
  module = lambda e: getattr(keras.applications, e.keras_name).__module__  # noqa: E731
  tested = {module(backbone_names.MODELS[n]) for n in FAMILIES}
  assert {module(e) for e in backbone_names.MODELS.values()} == tested  # every family is built


def test_list_models_prints_every_name_with_its_size():
  result = call_main("train", "--list_models")
  assert result.returncode == 0, result.stderr
  for name, entry in backbone_names.MODELS.items():
    assert f"{name} " in result.stdout
  assert "efficientnet_b3" in result.stdout and " 300" in result.stdout


@needs_imagenet_mobilenet
def test_imagenet_weights_come_from_keras_home():
  backbone = build_backbone("mobilenet", "imagenet", 64)
  reference = keras.applications.MobileNet(include_top=False, weights="imagenet",
                                           input_shape=(64, 64, 3), pooling="avg")
  for a, b in zip(backbone.model.weights, reference.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@needs_imagenet_mobilenet
def test_a_size_without_its_weights_file_offline_takes_the_224_weights(monkeypatch):
  """Keras has MobileNet files per size (192 here); offline, with only the 224 px file
  cached, the backbone gets the 224 px ImageNet weights (as Keras does at 96 px) and says so."""
  import urllib.error
  from keras.src.utils import file_utils

  def offline(url, *args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")
  monkeypatch.setattr(file_utils, "urlretrieve", offline)
  assert not os.path.exists(os.path.join(os.environ["KERAS_HOME"], "models",
                                         "mobilenet_1_0_192_tf_no_top.h5"))
  said = []
  monkeypatch.setattr(backbones.logging, "info", lambda message, *args: said.append(
      message % args))
  backbone = build_backbone("mobilenet", "imagenet", 192)
  reference = keras.applications.MobileNet(include_top=False, weights="imagenet",
                                           input_shape=(224, 224, 3), pooling="avg")
  assert backbone.model.input_shape == (None, 192, 192, 3)
  for a, b in zip(backbone.model.weights, reference.weights, strict=True):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert any("mobilenet_1_0_192_tf_no_top.h5 is not in Keras' cache" in m for m in said), said


@pytest.mark.slow
def test_missing_imagenet_weights_is_one_actionable_line(tmp_path):
  # A proxy that refuses connections makes the download fail the same way everywhere.
  env = {"KERAS_HOME": str(tmp_path / "keras_home"), "HTTPS_PROXY": "http://127.0.0.1:9",
         "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
         "http_proxy": "http://127.0.0.1:9"}
  (tmp_path / "keras_home").mkdir()
  data = tmp_path / "data"
  from conftest import write_color_images
  write_color_images(data, per_class=3)
  result = run_cli("train", "--model=resnet50", "--image_size=32", f"--data_dir={data}",
                   f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}",
                   env=env)
  assert result.returncode == 2, result.stderr
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("error: --weights=imagenet: resnet50")
  assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in error
  assert str(tmp_path / "keras_home" / "models") in error
  assert "--weights=none" in error and "--weights=/path/to/weights.h5" in error
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "export").exists() and not (tmp_path / "run").exists()


def test_weights_file_is_loaded(tmp_path):
  source = build_backbone("mobilenet_v3_small", "none", 32)
  path = str(tmp_path / "backbone.weights.h5")
  source.model.save_weights(path)
  loaded = build_backbone("mobilenet_v3_small", path, 32)
  for a, b in zip(source.model.weights, loaded.model.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bad_weights_paths_are_usage_errors(tmp_path):
  with pytest.raises(UsageError, match="^--weights: file .* does not exist"):
    build_backbone("mobilenet", str(tmp_path / "nope.h5"), 32)
  other = build_backbone("mobilenet_v3_small", "none", 32)
  path = str(tmp_path / "other.weights.h5")
  other.model.save_weights(path)
  with pytest.raises(UsageError, match="^--weights: cannot load"):
    build_backbone("mobilenet", path, 32)


def test_unfreeze_top_skips_batchnorm():
  backbone = build_backbone("mobilenet", "none", 32)
  names = backbones.unfreeze(backbone.model, top=3)
  assert names == ["conv_pw_12", "conv_dw_13", "conv_pw_13"]
  trainable_layers = {w.path.split("/")[0] for w in backbone.model.trainable_weights}
  assert trainable_layers == set(names)
  assert not any(isinstance(backbone.model.get_layer(n), keras.layers.BatchNormalization)
                 for n in names)
  with pytest.raises(UsageError, match="^--unfreeze_top"):
    backbones.unfreeze(backbone.model, top=10_000)
