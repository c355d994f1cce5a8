import json
import os

import keras
import numpy as np
import pytest

from conftest import build_backbone, fit_run, load_dataset, output, write_color_images
from kerasft.models import backbones, heads
from kerasft import config
from kerasft.training import optimizers

# The tiny backbone (conftest.write_tiny_backbone): blocks block1..block3, each a conv and
# a BatchNorm layer, 32 px; its random weights tell the colour squares apart.


@pytest.fixture
def color_dir(tmp_path):
  return write_color_images(tmp_path / "colors", per_class=24, size=32)


def _setup(color_dir, tiny_backbone, seed=0, bn_mode="frozen"):
  keras.utils.set_random_seed(seed)
  dataset = load_dataset(color_dir, "", 0.25, 32, batch_size=8, seed=seed)
  backbone = build_backbone(tiny_backbone)
  model = heads.build_classifier(backbone, len(dataset.class_names), output(), dropout=0.0,
                                 bn_mode=bn_mode)
  return dataset, backbone, model


def _weights(model):
  return {w.path: w.numpy().copy() for w in model.weights}


def test_head_phase_learns_and_leaves_the_backbone_bit_identical(color_dir, tmp_path,
                                                                   tiny_backbone):
  dataset, backbone, model = _setup(color_dir, tiny_backbone)
  before = _weights(backbone.model)
  run_config = config.RunConfig(
      training=config.TrainingConfig(epochs=4, learning_rate=0.03, cache_features="off",
                                     head_solver="epochs"),
      model_dir=str(tmp_path)).resolved()
  history = fit_run(run_config, model, dataset, verbose=0)
  after = _weights(backbone.model)
  assert before.keys() == after.keys()
  for path in before:
    np.testing.assert_array_equal(before[path], after[path], err_msg=path)
  assert max(history["val_accuracy"]) >= 0.8  # chance is 1/3
  assert history["phase"] == ["head"] * 4
  assert json.load(open(tmp_path / "history.json")) == history
  assert os.path.isfile(tmp_path / "best.keras")
  assert os.listdir(tmp_path / "logs")


def test_fine_tune_changes_exactly_the_unfrozen_layers_and_no_batchnorm(color_dir, tmp_path,
                                                                         tiny_backbone):
  dataset, backbone, model = _setup(color_dir, tiny_backbone)
  before = _weights(backbone.model)
  run_config = config.RunConfig(
      model=config.ModelConfig(model=tiny_backbone, unfreeze_top=2),
      training=config.TrainingConfig(epochs=1, fine_tune_epochs=2, learning_rate=0.01,
                                     fine_tune_learning_rate=0.01),
      model_dir=str(tmp_path)).resolved()
  history = fit_run(run_config, model, dataset, restore_best=False, verbose=0)
  assert history["phase"] == ["head", "fine_tune", "fine_tune"]
  after = _weights(backbone.model)
  changed = {path.split("/")[0] for path in before
             if not np.array_equal(before[path], after[path])}
  assert changed == {"block2_conv", "block3_conv"}
  for layer in backbone.model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      for w in layer.weights:  # gamma, beta, moving mean and variance
        np.testing.assert_array_equal(before[w.path], after[w.path], err_msg=w.path)




def _bn_weights(backbone, block_names):
  found = dict(backbones.blocks(backbone.model))
  return {w.path: w.numpy().copy() for name in block_names for layer in found[name]
          if isinstance(layer, keras.layers.BatchNormalization) for w in layer.weights}


@pytest.mark.parametrize("bn_mode, changes", [
    ("frozen", set()), ("affine", {"gamma", "beta"}),
    ("train", {"gamma", "beta", "moving_mean", "moving_variance"})])
def test_bn_mode(color_dir, tmp_path, bn_mode, changes, tiny_backbone):
  dataset, backbone, model = _setup(color_dir, tiny_backbone, bn_mode=bn_mode)
  before = _bn_weights(backbone, ["block2", "block3"])
  run_config = config.RunConfig(
      model=config.ModelConfig(model=tiny_backbone, unfreeze_blocks=2, bn_mode=bn_mode),
      training=config.TrainingConfig(epochs=1, fine_tune_epochs=1, cache_features="off",
                                     fine_tune_learning_rate=0.01),
      model_dir=str(tmp_path)).resolved()
  fit_run(run_config, model, dataset, restore_best=False, verbose=0)
  after = _bn_weights(backbone, ["block2", "block3"])
  changed = {path.split("/")[-1] for path in before
             if not np.array_equal(before[path], after[path])}
  assert changed == changes


def test_layer_lr_decay_scales_each_blocks_update(color_dir, tiny_backbone):
  x, y = next(iter(load_dataset(color_dir, "", 0.25, 32, batch_size=16, seed=0).train))

  def one_step(decay):
    keras.utils.set_random_seed(0)
    backbone = build_backbone(tiny_backbone)
    model = heads.build_classifier(backbone, 3, output(), dropout=0.0)
    backbones.unfreeze(backbone.model, n_blocks=3)
    before = {w.path: w.numpy().copy() for w in model.trainable_weights}
    optimizers.compile_model(model, optimizers.make_optimizer(
        "sgd", 0.01, lr_multipliers=optimizers.layer_lr_multipliers(model, decay)), output())
    model.train_on_batch(x, y)
    return {p: np.abs(w.numpy() - before[p]).sum()
            for p, w in ((w.path, w) for w in model.trainable_weights)}

  flat, decayed = one_step(1.0), one_step(0.5)
  ratios = {p: decayed[p] / flat[p] for p in flat if flat[p] > 0}
  expected = {"probabilities": 1.0, "block3": 0.5, "block2": 0.25, "block1": 0.125}
  for path, ratio in ratios.items():
    key = path.split("/")[0].split("_")[0]
    assert ratio == pytest.approx(expected[key], rel=1e-3), (path, ratio)
  assert {p.split("/")[0].split("_")[0] for p in ratios} == set(expected)


def test_gradual_unfreeze_adds_blocks_each_epoch(color_dir, tmp_path, tiny_backbone):
  dataset, backbone, model = _setup(color_dir, tiny_backbone)
  before = _weights(backbone.model)
  run_config = config.RunConfig(
      model=config.ModelConfig(model=tiny_backbone, gradual_unfreeze=1),
      training=config.TrainingConfig(epochs=1, fine_tune_epochs=2, cache_features="off",
                                     fine_tune_learning_rate=0.01, lr_schedule="cosine",
                                     warmup_epochs=0.5),
      model_dir=str(tmp_path)).resolved()
  history = fit_run(run_config, model, dataset, restore_best=False, verbose=0)
  assert history["phase"] == ["head", "fine_tune", "fine_tune"]
  after = _weights(backbone.model)
  changed = {p.split("/")[0] for p in before if not np.array_equal(before[p], after[p])}
  assert changed == {"block3_conv", "block2_conv"}


def test_schedules_and_weight_decay():
  cosine = optimizers.learning_rate(0.1, "cosine", warmup_steps=10, total_steps=110)
  assert float(cosine(0)) == pytest.approx(0.01) and float(cosine(10)) == pytest.approx(0.1)
  assert float(cosine(60)) == pytest.approx(0.05, rel=1e-3) and float(cosine(110)) < 1e-6
  shifted = optimizers.learning_rate(0.1, "cosine", warmup_steps=10, total_steps=110, offset=50)
  assert float(shifted(10)) == pytest.approx(0.05, rel=1e-3)
  warm = optimizers.learning_rate(0.1, "constant", warmup_steps=4, total_steps=40)
  assert [round(float(warm(s)), 4) for s in (0, 1, 3, 20)] == [0.025, 0.05, 0.1, 0.1]
  assert optimizers.learning_rate(0.1, "constant", 0, 40) == 0.1
  # L2 for sgd: a zero loss gradient still moves kernels by lr * 2 * wd * w, not biases.
  kernel, bias = keras.Variable(np.ones((2, 2), "float32")), keras.Variable(np.ones(2, "float32"))
  optimizer = optimizers.make_optimizer("sgd", 0.1, weight_decay=0.5)
  optimizer.apply([np.zeros((2, 2), "float32"), np.zeros(2, "float32")], [kernel, bias])
  np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 2 * 0.5)
  np.testing.assert_array_equal(bias.numpy(), 1.0)
  assert optimizers.make_optimizer("adamw", 0.1, weight_decay=0.01).weight_decay == 0.01
  assert optimizers.make_optimizer("adamw", 0.1).weight_decay == 0.004


def test_best_checkpoint_does_not_write_the_model_at_every_fast_epoch(tmp_path):
  """Writes wait until about ten writes' time has passed (a guess from the model's size
  before the first): fast epochs keep their best in memory, the end of the fit writes it."""
  import keras
  from kerasft.training import callbacks
  model = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(2500)])  # 2.5M weights
  path = tmp_path / "best.keras"
  checkpoint = callbacks.BestCheckpoint(model, str(path), monitor="val_accuracy")
  for epoch, value in enumerate((0.5, 0.6, 0.7)):
    checkpoint.on_epoch_end(epoch, {"val_accuracy": value})
  assert not path.exists() and checkpoint.best == 0.7
  checkpoint.on_train_end()
  assert path.exists() and checkpoint.saved() == pytest.approx(0.7)
