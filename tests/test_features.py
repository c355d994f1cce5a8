"""Cached backbone features give the same head, checkpoint and export as uncached training."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging

from conftest import write_color_images, write_tiny_backbone
import kerasft
from kerasft.models import backbones, features, heads, memory
from kerasft.data import examples as data, pipeline, folders
from conftest import build_backbone, output



@pytest.fixture(scope="session")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("features")
  colors = write_color_images(root / "colors", per_class=120, size=24)
  # 1,024 features: 360 images take 1.4 MiB, more than the disk run's 1 MiB budget
  tiny_backbone = "keras:" + write_tiny_backbone(root / "wide.keras", width=1024)

  def train(name, **training):
    config = kerasft.RunConfig(
        model=kerasft.ModelConfig(model=tiny_backbone, dropout=0.0),
        data=kerasft.DataConfig(data_dir=colors, batch_size=32),
        training=kerasft.TrainingConfig(epochs=3, learning_rate=0.03, head_solver="epochs",
                                        **training),
        name=name, model_dir=str(root / "runs" / name),
        export_dir=str(root / "saved_models" / name))
    return kerasft.run_training(config, verbose=0)

  return {"off": train("off", cache_features="off"),
          "memory": train("memory", cache_features="on"),
          "disk": train("disk", cache_features="on", feature_cache_memory=1,
                        feature_cache_dir=str(root / "cache"))}, root


def _val_images(result):
  files = folders.index(result.config.data.data_dir, "", 0.2, 0)[1]
  size = result.config.model.image_size
  return np.concatenate([x for x, _ in pipeline.make_pipeline(files, size, 64)])


@pytest.mark.parametrize("cached", ["memory", "disk"])
def test_cached_training_gives_the_uncached_model_and_export(runs, cached):
  results, root = runs
  reference, other = results["off"], results[cached]
  images = _val_images(reference)
  np.testing.assert_allclose(other.model.predict(images, verbose=0),
                             reference.model.predict(images, verbose=0), atol=1e-4)
  np.testing.assert_allclose(other.history["val_accuracy"], reference.history["val_accuracy"],
                             atol=1e-6)
  outputs = [tf.saved_model.load(r.export_path).signatures["serving_default"](
      images=tf.constant(images))["probabilities"].numpy() for r in (reference, other)]
  np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-4)
  # The checkpoint is the full model (raw pixels in), not the head alone.
  best = keras.saving.load_model(os.path.join(other.config.model_dir, "best.keras"))
  assert best.input_shape == (None, 32, 32, 3)
  assert max(other.history["val_accuracy"]) > 0.9


def test_disk_cache_is_used_when_memory_is_too_small(runs):
  results, root = runs
  assert os.listdir(root / "cache" / "train") and os.listdir(root / "cache" / "val")
  assert not os.path.exists(os.path.join(results["memory"].config.model_dir, "feature_cache"))


def test_caching_is_refused_with_the_reason_when_layers_are_unfrozen():
  model = heads.build_classifier(build_backbone("mobilenet", "none", 32), 3, output())
  assert features.refusal(model) is None
  backbones.unfreeze(heads.backbone_of(model), top=2)
  assert "backbone weights are trainable" in features.refusal(model)
  assert "augmentation" in features.refusal(model, augment=("flip",))
  assert "MixUp/CutMix" in features.refusal(model, mixing=True)


def test_fine_tune_phase_runs_uncached_and_says_why(tmp_path, caplog, tiny_backbone):
  colors = write_color_images(tmp_path / "colors", per_class=6, size=24)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_backbone, unfreeze_top=1),
      data=kerasft.DataConfig(data_dir=colors),
      training=kerasft.TrainingConfig(epochs=1, fine_tune_epochs=1),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  absl_logging.set_verbosity(absl_logging.INFO)
  with caplog.at_level(logging.INFO):
    result = kerasft.run_training(config, verbose=0)
  messages = "\n".join(r.getMessage() for r in caplog.records)
  assert "on cached features" in messages
  assert "feature cache off: the backbone trains" in messages
  assert result.history["phase"] == ["head", "fine_tune"]


def test_augmentation_refuses_caching_and_stays_out_of_the_export(tmp_path, caplog,
                                                                   tiny_backbone):
  colors = write_color_images(tmp_path / "colors", per_class=6, size=24)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_backbone),
      data=kerasft.DataConfig(data_dir=colors, augment=("flip", "rotate", "zoom", "contrast",
                                                        "translate")),
      training=kerasft.TrainingConfig(epochs=1),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  absl_logging.set_verbosity(absl_logging.INFO)
  with caplog.at_level(logging.INFO):
    result = kerasft.run_training(config, verbose=0)
  messages = "\n".join(r.getMessage() for r in caplog.records)
  assert "feature cache off for the head phase: augmentation" in messages
  assert "on cached features" not in messages
  assert not any(layer.name.startswith("augment") for layer in result.model.layers)
  loaded = tf.saved_model.load(result.export_path)
  assert len(loaded.model_variables) == len(result.model.variables)  # the classifier's alone
  images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)), tf.float32)
  first = loaded.signatures["serving_default"](images=images)["probabilities"].numpy()
  second = loaded.signatures["serving_default"](images=images)["probabilities"].numpy()
  np.testing.assert_array_equal(first, second)
  np.testing.assert_allclose(first, result.model.predict(images.numpy(), verbose=0), atol=1e-5)


def test_a_run_whose_activations_cannot_fit_is_refused_naming_what_fits():
  """Every layer output (1 MiB conv + 1 MiB relu + the 48 KiB input + 256 B pooled per
  example) times the batch when the backbone trains; 4x the largest output for one frozen
  forward pass; the message names the largest batch, else about the largest side."""
  from kerasft.core.errors import UsageError
  inputs = keras.Input((64, 64, 3))
  x = keras.layers.Conv2D(64, 3, padding="same")(inputs)
  x = keras.layers.ReLU()(x)
  model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
  per = memory._all_outputs(model)
  assert per == 2 * 64 * 64 * 64 * 4 + 64 * 64 * 3 * 4 + 64 * 4
  memory.check_fits(model, 32, True, available=32 * per)  # fits exactly: no error
  with pytest.raises(UsageError, match=r"^--image_size=64: fine-tuning with --batch_size=32 "
                     r"needs at least .* the largest --batch_size that fits is 10$"):
    memory.check_fits(model, 32, True, available=10 * per + 5)
  with pytest.raises(UsageError, match="the largest --image_size that fits one image is "
                     "about 32$"):  # 64 px x the square root of 1/2
    memory.check_fits(model, 32, True, available=per // 2)
  memory.check_fits(model, 32, False, available=4 * (1 << 20))  # one frozen pass fits
  with pytest.raises(UsageError, match="one forward pass of the frozen backbone"):
    memory.check_fits(model, 32, False, available=1 << 20)


def test_an_absurd_image_size_is_one_line_before_any_work(tmp_path):
  from conftest import call_main
  colors = write_color_images(tmp_path / "colors", per_class=3)
  for extra in ([], ["--unfreeze_blocks=1", "--fine_tune_epochs=1"]):
    result = call_main("train", "--weights=none", "--image_size=20000", f"--data_dir={colors}",
                       f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'x'}",
                       *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --image_size=20000: ") and "fits one image is about" in line, line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "x").exists()


def test_the_extraction_batch_follows_the_activations_and_the_budget(monkeypatch):
  """Largest power of two up to 128 whose ~4x-largest-activation bytes fit the budget."""
  def extractor(side, channels):
    inputs = keras.Input((side, side, 3))
    x = keras.layers.Conv2D(channels, 3, padding="same")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
  small, large = extractor(8, 4), extractor(64, 64)  # 1 KiB and 1 MiB per example
  assert memory._largest_output(large) == 64 * 64 * 64 * 4
  assert memory.extraction_batch(small, budget=64 << 20) == 128
  assert memory.extraction_batch(large, budget=64 << 20) == 16  # 16 x 4 MiB
  assert memory.extraction_batch(large, budget=1 << 20) == 1
  monkeypatch.setattr(memory, "CPU_ACTIVATION_BUDGET", 8 << 20)
  assert memory.activation_budget() <= 8 << 20
  assert memory.extraction_batch(large) == 2
  # a module whose inside is not visible: at least 5x its input per example
  inputs = keras.Input((32, 32, 3))
  opaque = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
  assert memory._largest_output(opaque) == 5 * 32 * 32 * 3 * 4
