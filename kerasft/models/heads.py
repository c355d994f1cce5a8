"""The classifier model: raw pixels -> preprocessing -> backbone -> new head.

The model takes float32 RGB pixels 0..255 of shape [N, H, W, 3]; the backbone's own
preprocessing is its first layer, so checkpoints and exports take raw pixels too. The
backbone is always called in inference mode: BatchNorm statistics never move and, while
frozen, nothing in it changes.
"""

from __future__ import annotations

import keras
from keras import ops

from kerasft.config.backbones import default_name
from kerasft.core import _compat
from kerasft.models.backbones import Backbone

_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESS_MODES = ("tf", "torch", "caffe", "unit", "none")


@keras.saving.register_keras_serializable(package="kerasft")
class Preprocess(keras.layers.Layer):
  """`keras.applications.*.preprocess_input` as a layer, for pixels 0..255 in RGB order.

  mode: "tf" scales to [-1, 1]; "torch" to [0, 1] then ImageNet mean/std; "caffe" flips to
  BGR and subtracts the ImageNet mean; "unit" scales to [0, 1] (the TF Hub image module
  convention); "none" passes pixels through unchanged.
  """

  def __init__(self, mode: str, **kwargs):
    super().__init__(**kwargs)
    if mode not in PREPROCESS_MODES:
      raise ValueError(f"Preprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")
    self.mode = mode

  def call(self, images):
    images = ops.cast(images, "float32")
    if self.mode == "tf":
      return images / 127.5 - 1.0
    if self.mode == "torch":
      return (images / 255.0 - ops.array(_IMAGENET_MEAN_RGB)) / ops.array(_IMAGENET_STD_RGB)
    if self.mode == "caffe":
      return ops.flip(images, axis=-1) - ops.array(_CAFFE_MEAN_BGR)
    if self.mode == "unit":
      return images / 255.0
    return images

  def get_config(self):
    return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="kerasft")
class Rescale(keras.layers.Layer):
  """x * scale + offset with fixed per-output constants: a regression head learns
  standardized targets and outputs them in their own units."""

  def __init__(self, scale, offset, **kwargs):
    super().__init__(**kwargs)
    self.scale, self.offset = [float(v) for v in scale], [float(v) for v in offset]

  def call(self, x):
    return x * ops.array(self.scale, x.dtype) + ops.array(self.offset, x.dtype)

  def get_config(self):
    return {**super().get_config(), "scale": self.scale, "offset": self.offset}


def build_classifier(backbone: Backbone, num_classes: int, output,
                     head: tuple[int, ...] = (), dropout: float = 0.2, bn_mode: str = "frozen",
                     stats=None) -> keras.Model:
  """Returns a model from raw pixels [N, S, S, 3] (0..255) to `output`'s last layer [N, C].

  output: the kind of head (a `kerasft.tasks.base.Output`), built with `stats` (what
  `output.head_stats` gives). head: hidden Dense (ReLU) sizes between the pooled features
  and the last layer; dropout: the rate before each Dense layer of the head. The output
  computes in float32. The backbone runs in inference mode, except with bn_mode="train",
  where it follows the training flag (frozen BatchNorm layers stay in inference mode
  either way).
  """
  if num_classes < output.min_classes:
    raise ValueError(f"num_classes must be at least {output.min_classes} for {output.name}, "
                     f"got {num_classes}")
  size = backbone.image_size
  inputs = keras.Input((size, size, 3), dtype="float32", name="images")
  x = Preprocess(backbone.preprocess, name="preprocess")(inputs)
  if bn_mode == "train":
    x = backbone.model(x)
  else:
    _compat.pin_inference_mode(backbone.model)
    x = backbone.model(x, training=False)
  outputs = add_head(x, num_classes, output, head, dropout, stats)
  return keras.Model(inputs, outputs, name=f"{default_name(backbone.name)}_classifier")


def add_head(x, num_classes: int, output, head: tuple[int, ...] = (),
             dropout: float = 0.2, stats=None):
  """The new head on pooled features `x` [N, F]: hidden Dense (ReLU) layers of the `head`
  sizes, `dropout` before each Dense layer, and `output`'s last layer (float32). Returns
  its output tensor."""
  for i, units in enumerate(head):
    if dropout:
      x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
    x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
  if dropout:
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
  return output.last_layer(x, num_classes, stats)


def backbone_of(model: keras.Model) -> keras.Model:
  """Returns the backbone sub-model of a model made by `build_classifier`."""
  nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
  if len(nested) != 1:
    raise ValueError(f"expected one backbone sub-model in {model.name}, found {len(nested)}")
  return nested[0]


def head_layers(model: keras.Model) -> list:
  """The layers of the new head (everything after the backbone that has weights)."""
  after = model.layers[model.layers.index(backbone_of(model)) + 1:]
  return [layer for layer in after if layer.weights]
