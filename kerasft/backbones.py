"""Keras Applications backbones: the model-name table, weights resolution and freezing.

`spec(name)` and `MODELS` need no TensorFlow; `build(...)` imports Keras and returns a
`Backbone`: a Keras model from images (already preprocessed) to pooled features, plus the
name of the preprocessing its weights expect (see `kerasft.heads.Preprocess`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import warnings
from typing import NamedTuple

from kerasft.errors import UsageError


class BackboneSpec(NamedTuple):
  """One Keras Applications model.

  keras_name: the constructor in `keras.applications`.
  default_size: the input size its ImageNet weights were trained at.
  preprocess: what `preprocess_input` does for it: "tf" (to [-1, 1]), "torch"
    (ImageNet mean/std), "caffe" (BGR minus ImageNet mean) or "none" (the model has its
    own rescaling layers and takes 0..255 pixels).
  min_size: the smallest input side it accepts.
  """
  keras_name: str
  default_size: int
  preprocess: str
  min_size: int = 32


_EFFICIENTNET_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)

MODELS: dict[str, BackboneSpec] = {
    **{f"convnext_{s.lower()}": BackboneSpec(f"ConvNeXt{s}", 224, "none")
       for s in ("Tiny", "Small", "Base", "Large", "XLarge")},
    **{f"densenet{d}": BackboneSpec(f"DenseNet{d}", 224, "torch") for d in (121, 169, 201)},
    **{f"efficientnet_b{i}": BackboneSpec(f"EfficientNetB{i}", size, "none")
       for i, size in enumerate(_EFFICIENTNET_SIZES)},
    **{f"efficientnet_v2_b{i}": BackboneSpec(f"EfficientNetV2B{i}", size, "none")
       for i, size in enumerate(_EFFICIENTNET_SIZES[:4])},
    "efficientnet_v2_s": BackboneSpec("EfficientNetV2S", 384, "none"),
    "efficientnet_v2_m": BackboneSpec("EfficientNetV2M", 480, "none"),
    "efficientnet_v2_l": BackboneSpec("EfficientNetV2L", 480, "none"),
    "inception_resnet_v2": BackboneSpec("InceptionResNetV2", 299, "tf", 75),
    "inception_v3": BackboneSpec("InceptionV3", 299, "tf", 75),
    "mobilenet": BackboneSpec("MobileNet", 224, "tf"),
    "mobilenet_v2": BackboneSpec("MobileNetV2", 224, "tf"),
    "mobilenet_v3_large": BackboneSpec("MobileNetV3Large", 224, "none"),
    "mobilenet_v3_small": BackboneSpec("MobileNetV3Small", 224, "none"),
    "nasnet_large": BackboneSpec("NASNetLarge", 331, "tf"),
    "nasnet_mobile": BackboneSpec("NASNetMobile", 224, "tf"),
    **{f"resnet{d}": BackboneSpec(f"ResNet{d}", 224, "caffe") for d in (50, 101, 152)},
    **{f"resnet{d}_v2": BackboneSpec(f"ResNet{d}V2", 224, "tf") for d in (50, 101, 152)},
    "vgg16": BackboneSpec("VGG16", 224, "caffe"),
    "vgg19": BackboneSpec("VGG19", 224, "caffe"),
    "xception": BackboneSpec("Xception", 299, "tf", 71),
}


def spec(name: str) -> BackboneSpec:
  """Returns the table entry for `name`, or raises a UsageError listing close matches."""
  if name in MODELS:
    return MODELS[name]
  close = difflib.get_close_matches(str(name).lower(), MODELS, n=4, cutoff=0.5)
  hint = f"did you mean {', '.join(close)}?" if close else "see --list_models"
  raise UsageError(f"--model: unknown model {name!r}; {hint}")


@dataclasses.dataclass
class Backbone:
  """A feature extractor: `model` maps preprocessed images [N, H, W, 3] to [N, features]."""
  name: str
  model: "keras.Model"  # noqa: F821
  preprocess: str
  image_size: int


def build(name: str, weights: str, image_size: int) -> Backbone:
  """Builds backbone `name` at `image_size` pixels with global average pooling.

  weights: "imagenet" (Keras' cache in `$KERAS_HOME/models`, downloaded when missing),
  "none" (random initialization) or the path of a weights file for this backbone.
  The returned model is frozen (`trainable=False`).
  """
  import keras  # pylint: disable=g-import-not-at-top

  entry = spec(name)
  if weights == "imagenet":
    keras_weights = "imagenet"
  elif weights.lower() == "none":
    keras_weights = None
  else:
    if not os.path.isfile(weights):
      raise UsageError(f"--weights: file {weights!r} does not exist; pass 'imagenet', 'none' "
                       "or the path of a weights file saved for this backbone")
    keras_weights = None
  constructor = getattr(keras.applications, entry.keras_name)
  try:
    with warnings.catch_warnings():  # ImageNet weights work at any size for these models.
      warnings.filterwarnings("ignore", message=".*will be loaded as the default")
      model = constructor(include_top=False, weights=keras_weights, pooling="avg",
                          input_shape=(image_size, image_size, 3))
  except ValueError as e:
    raise UsageError(f"--image_size: {name} cannot be built at {image_size} px: "
                     f"{str(e).splitlines()[0]}") from None
  except Exception as e:  # Keras raises a bare Exception when the download fails.
    match = re.search(r"URL fetch failure on (\S+?): ", str(e))
    if keras_weights != "imagenet" or not match:
      raise
    cache = os.path.join(keras_home(), "models")
    raise UsageError(
        f"--weights=imagenet: {name}'s ImageNet weights {os.path.basename(match.group(1))} are "
        f"not in Keras' cache {cache} and cannot be downloaded ({str(e).split(': ')[-1]}); "
        "put that file there (or set KERAS_HOME to a writable folder whose models/ holds it), "
        "or pass --weights=none or --weights=/path/to/weights.h5") from None
  if keras_weights is None and weights.lower() != "none":
    try:
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(weights)
      skipped = [w for w in caught if "Skipping" in str(w.message)]
      if skipped:  # Keras loads what matches and only warns about the rest.
        raise ValueError(str(skipped[0].message))
    except Exception as e:  # pylint: disable=broad-except
      raise UsageError(f"--weights: cannot load {weights!r} into {name}: "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  model.trainable = False
  return Backbone(name=name, model=model, preprocess=entry.preprocess, image_size=image_size)


def keras_home() -> str:
  """The folder whose models/ Keras searches for ImageNet weights (as `keras.utils.get_file`)."""
  from keras.src.backend import config as keras_config  # pylint: disable=g-import-not-at-top

  home = keras_config.keras_home()  # Keras 3 has no public accessor for this folder.
  return home if os.access(home, os.W_OK) else os.path.join("/tmp", ".keras")


def weighted_layers(model) -> list:
  """The layers of `model` that own weights, in order from input to output."""
  return [layer for layer in model.layers if layer.weights]


def freeze(model) -> None:
  """Makes every weight of `model` non-trainable."""
  model.trainable = False


def unfreeze_top(model, n: int) -> list[str]:
  """Unfreezes the top `n` layers of `model` that have weights, not counting BatchNorm.

  BatchNorm layers keep all their weights frozen; the backbone is called in inference
  mode, so their statistics never move either. Returns the unfrozen layer names.
  """
  import keras  # pylint: disable=g-import-not-at-top

  candidates = [layer for layer in weighted_layers(model)
                if not isinstance(layer, keras.layers.BatchNormalization)]
  if n > len(candidates):
    raise UsageError(f"--unfreeze_top: {model.name} has {len(candidates)} layers with weights "
                     f"(BatchNorm excluded), got {n}")
  chosen = candidates[len(candidates) - n:]
  model.trainable = True
  for layer in model.layers:
    layer.trainable = False
  for layer in chosen:
    layer.trainable = True
  return [layer.name for layer in chosen]
