"""TF Hub / SavedModel / .keras backbones under Keras 3 (`kerasft/hub.py`)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import FASHION, call_main, needs_fashion, needs_imagenet_mobilenet, run_cli
from conftest import write_color_images
import kerasft
from kerasft.data.source import Source
from kerasft.config import backbones as backbone_names
from kerasft.models import backbones, heads
from kerasft.serving import client
from kerasft.data import examples as data, folders
from kerasft.training import optimizers
from conftest import build_backbone, output, export_image

SIZE = 16


def _save_tiny(path):
  """A reusable SavedModel (TF2 format, as TF Hub publishes): conv features, a moving
  statistic updated when `training`, `variables`, `trainable_variables` and
  `regularization_losses`."""
  obj = tf.train.Checkpoint()
  kernel = tf.Variable(tf.random.stateless_normal((3, 3, 3, 8), (1, 2)) * 0.3, name="kernel")
  bias = tf.Variable(tf.zeros(8), name="bias")
  moving_mean = tf.Variable(tf.zeros(8), trainable=False, name="moving_mean")

  @tf.function
  def call(images, training=False):
    x = tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME") + bias)
    features = tf.reduce_mean(x, axis=(1, 2))
    if training:
      moving_mean.assign(0.9 * moving_mean + 0.1 * tf.reduce_mean(features, 0))
    return features - moving_mean

  for training in (False, True):
    call.get_concrete_function(tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32), training)
  obj.__call__ = call
  obj.variables = [kernel, bias, moving_mean]
  obj.trainable_variables = [kernel, bias]
  obj.regularization_losses = [tf.function(lambda: 0.01 * tf.reduce_sum(kernel ** 2),
                                           input_signature=[])]
  tf.saved_model.save(obj, str(path))
  return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return _save_tiny(tmp_path_factory.mktemp("hub") / "tiny_module" / "3")


def _colors(tmp_path):
  return write_color_images(tmp_path / "colors", per_class=6, size=SIZE)


def _classifier(handle):
  backbone = build_backbone(f"hub:{handle}")
  return heads.build_classifier(backbone, 3, output(), dropout=0.0), backbone


def _xy():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 255, (12, SIZE, SIZE, 3)).astype("float32")
  return x, np.eye(3, dtype="float32")[rng.integers(0, 3, 12)]


def test_size_name_and_variables_are_the_modules_own(tiny):
  model, backbone = _classifier(tiny)
  assert backbone.image_size == SIZE and backbone.preprocess == "unit"
  assert backbone_names.default_name(f"hub:{tiny}") == "tiny_module"
  assert backbone_names.default_name("hub:https://tfhub.dev/google/imagenet/mobilenet_v2/5") == \
      "mobilenet_v2"
  layer = backbone.model.get_layer("hub_module")
  module = layer._module  # pylint: disable=protected-access
  assert {id(v.value) for v in layer.weights} == {id(v) for v in module.variables}
  assert len(layer.trainable_weights) == 0  # frozen as built
  layer.trainable = True
  assert len(layer.trainable_weights) == 2 and len(layer.non_trainable_weights) == 1
  assert all(":" not in w.name for w in layer.weights)


def test_frozen_module_is_bit_identical_after_fit(tiny):
  model, backbone = _classifier(tiny)
  before = [v.numpy().copy() for v in backbone.model.weights]
  optimizers.compile_model(model, optimizers.make_optimizer("adam", 0.01), output())
  model.fit(*_xy(), epochs=2, verbose=0)
  for a, b in zip(before, backbone.model.weights):
    np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("optimizer, bn_mode", [("sgd", "frozen"), ("adam", "affine"),
                                                ("adamw", "train")])
def test_trainable_module_trains_and_adds_its_regularization_loss(tiny, optimizer, bn_mode):
  backbone = build_backbone(f"hub:{tiny}")
  model = heads.build_classifier(backbone, 3, output(), dropout=0.0, bn_mode=bn_mode)
  backbone.model.trainable = True
  layer = backbone.model.get_layer("hub_module")
  before = {w.path: w.numpy().copy() for w in layer.weights}
  x, y = _xy()
  optimizers.compile_model(model, optimizers.make_optimizer(optimizer, 0.05), output())
  module = layer._module  # pylint: disable=protected-access
  reg = float(module.regularization_losses[0]())
  ce = float(keras.losses.categorical_crossentropy(y, model(x, training=False)).numpy().mean())
  assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(ce + reg, rel=1e-4)
  model.fit(x, y, epochs=2, verbose=0)
  changed = {w.path for w in layer.weights if not np.array_equal(before[w.path], w.numpy())}
  # kernel and bias train; the moving statistic moves only when `training` reaches the
  # module, which bn_mode="train" asks for.
  trained = {w.path for w in layer.trainable_weights}
  assert changed == (trained | {"hub_module/moving_mean"} if bn_mode == "train" else trained)


def test_export_and_keras_file_reproduce_outputs(tiny, tmp_path):
  model, backbone = _classifier(tiny)
  backbone.model.trainable = True
  optimizers.compile_model(model, optimizers.make_optimizer("adam", 0.05), output())
  x, y = _xy()
  model.fit(x, y, epochs=1, verbose=0)
  expected = np.asarray(model(x, training=False))
  path = export_image(model, ["a", "b", "c"], SIZE, str(tmp_path / "export"))
  out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(x))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
  model.save(tmp_path / "m.keras")
  reloaded = keras.saving.load_model(tmp_path / "m.keras")
  np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), expected, atol=1e-6)


@pytest.mark.slow
def test_cli_trains_a_hub_module_and_exports_for_saved_model_cli(tiny, tmp_path):
  colors = _colors(tmp_path)
  run = run_cli("train", f"--model=hub:{tiny}", f"--data_dir={colors}", "--epochs=1",
                f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert run.returncode == 0, run.stderr[-3000:]
  assert (tmp_path / "export" / "1" / "saved_model.pb").is_file()
  np.save(tmp_path / "x.npy", _xy()[0][:2])
  cli = os.path.join(os.path.dirname(__import__("sys").executable), "saved_model_cli")
  import subprocess
  done = subprocess.run([cli, "run", "--dir", str(tmp_path / "export" / "1"), "--tag_set",
                         "serve", "--signature_def", "serving_default", "--inputs",
                         f"images={tmp_path / 'x.npy'}"], capture_output=True, text=True)
  assert done.returncode == 0 and "probabilities" in done.stdout, done.stderr[-2000:]
  from kerasft.workflows import export as exporting  # a hub module converts to LiteRT (int8 too) and ONNX
  for formats, quantize in ((("tflite", "onnx"), "none"), (("tflite",), "int8")):
    result = exporting.export_run(str(tmp_path / "run"), str(tmp_path / quantize),
                                  formats=formats, quantize=quantize, calibration_examples=8)
    for fmt in formats:
      assert result[f"{fmt}_check"]["top1_agreement"] >= (0.9 if quantize == "int8" else 1.0)


def test_savedmodel_signature_and_keras_sources(tmp_path):
  inputs = keras.Input((SIZE, SIZE, 3))
  x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  source = keras.Model(inputs, keras.layers.Dense(5, name="old_head")(x))
  source.save(tmp_path / "src.keras")
  backbone = build_backbone(f"keras:{tmp_path / 'src.keras'}")
  assert backbone.model.output_shape == (None, 4) and backbone.image_size == SIZE
  assert build_backbone(f"keras:{tmp_path / 'src.keras'}",
                         backbone_layer="conv_a").model.output_shape == (None, 4)
  source.export(str(tmp_path / "exported"))  # a SavedModel with a serving_default signature
  sm = build_backbone(f"savedmodel:{tmp_path / 'exported'}", signature="serving_default",
                       image_size=SIZE, hub_input_range="0,255")
  probe = np.random.default_rng(0).uniform(0, 1, (2, SIZE, SIZE, 3)).astype("float32")
  np.testing.assert_allclose(np.asarray(sm.model(probe)), np.asarray(source(probe)), atol=1e-5)


@pytest.mark.parametrize("args, prefix", [
    (["--model=hub:/no/such/module"], "--model: cannot load"),
    (["--model=savedmodel:{tmp}"], "--model:"),
    (["--model=hub:{tiny}", "--signature=nope"], "--signature:"),
    (["--model=keras:{tmp}/missing.keras"], "--model:"),
    (["--model=mobilenet", "--unfreeze_from=nope", "--fine_tune_epochs=1"], "--unfreeze_from:"),
    (["--model=mobilenet", "--unfreeze_blocks=999", "--fine_tune_epochs=1"],
     "--unfreeze_blocks:"),
    (["--model=mobilenet", "--unfreeze_top=1", "--unfreeze_blocks=1"], "--unfreeze_blocks:"),
    (["--model=mobilenet", "--layer_lr_decay=1.5"], "--layer_lr_decay:"),
], ids=["hub-handle", "not-a-savedmodel", "signature", "keras-path", "layer-name", "blocks",
        "two-choices", "decay"])
def test_bad_sources_and_choices_are_one_line_errors(tiny, tmp_path, args, prefix):
  colors = _colors(tmp_path)
  args = [a.format(tmp=tmp_path, tiny=tiny) for a in args]
  weights = ["--weights=none"] if args[0] == "--model=mobilenet" else []
  run = call_main("train", *args, f"--data_dir={colors}", *weights, "--image_size=32",
                  f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert run.returncode == 2, run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith(f"error: {prefix}"), run.stderr[-500:]
  assert not (tmp_path / "export").exists()


def test_list_blocks():
  run = call_main("train", "--model=mobilenet_v2", "--list_blocks")
  assert run.returncode == 0, run.stderr[-2000:]
  names = [line.split()[0] for line in run.stdout.splitlines()]
  assert "block_13" in names and "block_16" in names and names.index("block_13") < \
      names.index("block_16")
  assert backbones._block_of("conv4_block2_1_conv") == "conv4_block2"  # pylint: disable=protected-access
  assert backbones._block_of("block6a_expand_conv") == "block6a"  # pylint: disable=protected-access
  assert backbones._block_of("conv_pw_5_bn") == "5"  # pylint: disable=protected-access


@pytest.mark.slow
@needs_fashion
@needs_imagenet_mobilenet
def test_mobilenet_as_a_hub_module_reaches_the_accuracy_bar(tmp_path):
  base = keras.applications.MobileNet(include_top=False, weights="imagenet",
                                      input_shape=(96, 96, 3), pooling="avg")
  module = tf.train.Checkpoint()
  module.variables = [v.value for v in base.variables]
  module.trainable_variables = [v.value for v in base.trainable_variables]

  @tf.function(input_signature=[tf.TensorSpec([None, 96, 96, 3], tf.float32)])
  def call(images):  # TF Hub image convention: [0, 1] in, features out
    return base(images * 2.0 - 1.0, training=False)
  module.__call__ = call
  tf.saved_model.save(module, str(tmp_path / "mobilenet_v1" / "1"))
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=f"hub:{tmp_path / 'mobilenet_v1' / '1'}"),
      data=kerasft.DataConfig(data_dir=FASHION),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  assert result.config.name == "mobilenet_v1" and result.config.model.image_size == 96
  test = folders.scan_class_folder(Source("data_dir", os.path.join(FASHION, "test")), result.class_names)
  predict, _ = client.load_predictor(result.export_path)
  accuracy = np.mean(client.predict_files(predict, test.inputs).argmax(1) == test.labels)
  assert accuracy >= 0.75, accuracy


def test_lora_on_a_hub_module_is_refused_in_one_line(tiny, tmp_path):
  done = call_main("train", f"--model=hub:{tiny}", f"--data_dir={_colors(tmp_path)}",
                   "--fine_tune_epochs=1", "--unfreeze_top=1", "--peft=lora",
                   f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert done.returncode == 2, done.stderr[-2000:]
  assert "error: --peft=lora: the unfrozen part of hub:" in done.stderr
  assert "has no Keras Dense" in done.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "run").exists()


def test_an_output_key_the_module_lacks_is_one_line(tmp_path):
  inputs = keras.Input((SIZE, SIZE, 3))
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
  keras.Model(inputs, x).export(str(tmp_path / "exported"))  # serving_default: {"output_0"}
  done = call_main("train", f"--model=savedmodel:{tmp_path / 'exported'}",
                   "--signature=serving_default", "--output_key=logits",
                   f"--image_size={SIZE}", f"--data_dir={_colors(tmp_path)}",
                   f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert done.returncode == 2 and "Traceback" not in done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: --output_key: the module has no output 'logits'; it has output_0"]
  assert not (tmp_path / "run").exists()
