"""Keras Applications, TF Hub, SavedModel and .keras backbones built, frozen and unfrozen.

`build(...)` imports Keras and returns a `Backbone`: a Keras model from images (already
preprocessed) to pooled features, plus the name of the preprocessing its weights expect
(see `kerasft.models.heads.Preprocess`). The name table is `kerasft.config.backbones`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import warnings

from absl import logging

from kerasft.config.backbones import INPUT_RANGES, default_name, source, spec
from kerasft.core.errors import UsageError


@dataclasses.dataclass
class Backbone:
  """A feature extractor: `model` maps preprocessed images [N, H, W, 3] to [N, features]."""
  name: str
  model: "keras.Model"  # noqa: F821
  preprocess: str
  image_size: int


def build(m) -> Backbone:
  """Builds the backbone a `ModelConfig` names, with global average pooling, frozen.

  m.model: a Keras Applications name, `hub:HANDLE`, `savedmodel:PATH` or `keras:PATH`.
  m.weights (applications): "imagenet" (Keras' cache in `$KERAS_HOME/models`, downloaded
  when missing), "none" (random initialization) or the path of a weights file.
  m.image_size: the input side [the application's own / what the module declares].
  m.signature, m.output_key, m.hub_input_range: which function and output of a SavedModel
  or hub module to use and the pixel range it expects ("0,1", "-1,1" or "0,255").
  m.backbone_layer: for keras:PATH, the last layer kept [the one before the output layer].
  """
  prefix, what = source(m.model)
  if prefix in ("hub:", "savedmodel:"):
    return _build_module(m.model, what, m.image_size, m.signature, m.output_key,
                         m.hub_input_range)
  if prefix == "keras:":
    return _build_keras_file(m.model, what, m.backbone_layer)
  return _build_application(m.model, m.weights, m.image_size or spec(m.model).default_size)


def _build_module(name, handle, image_size, signature, output_key, input_range) -> Backbone:
  import keras  # pylint: disable=g-import-not-at-top
  from kerasft.models import hub

  if input_range not in INPUT_RANGES:
    raise UsageError(f"--hub_input_range: must be one of {', '.join(INPUT_RANGES)}, "
                     f"got {input_range!r}")
  layer = hub.HubLayer(handle, signature or None, output_key or None, name="hub_module")
  declared = hub.declared_image_size(layer._module, signature or None)  # pylint: disable=protected-access
  if declared and image_size and declared != image_size:
    raise UsageError(f"--image_size: the module takes {declared} px, got {image_size}")
  size = declared or image_size
  if not size:
    raise UsageError("--image_size: the module declares no input size; pass --image_size")
  layer.check(size)
  inputs = keras.Input((size, size, 3), name="pixels")
  model = keras.Model(inputs, layer(inputs), name=default_name(name))
  model.trainable = False
  return Backbone(name=name, model=model, preprocess=INPUT_RANGES[input_range],
                  image_size=size)


def _build_keras_file(name, path, backbone_layer) -> Backbone:
  import keras  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path) or not path.endswith(".keras"):
    raise UsageError(f"--model: {path} is not a .keras file")
  try:
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f"--model: cannot load {path}: {str(e).splitlines()[0]}") from None
  layers = [layer for layer in loaded.layers if not isinstance(layer, keras.layers.InputLayer)]
  if backbone_layer:
    names = [layer.name for layer in layers]
    if backbone_layer not in names:
      close = difflib.get_close_matches(backbone_layer, names, n=3)
      raise UsageError(f"--backbone_layer: {path} has no layer {backbone_layer!r}"
                       + (f"; did you mean {', '.join(close)}?" if close else ""))
    last = loaded.get_layer(backbone_layer)
  else:
    last = layers[-2] if len(layers) > 1 else layers[-1]
  outputs = last.output
  if len(outputs.shape) == 4:
    outputs = keras.layers.GlobalAveragePooling2D(name="backbone_pool")(outputs)
  shape = loaded.input_shape
  if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
    raise UsageError(f"--model: {path} takes inputs {shape}, not square RGB images")
  model = keras.Model(loaded.inputs, outputs, name=default_name(name))
  model.trainable = False
  return Backbone(name=name, model=model, preprocess="none", image_size=int(shape[1]))


def _build_application(name: str, weights: str, image_size: int) -> Backbone:
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
  model = _constructed(name, entry.keras_name, keras_weights, image_size)
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


def _constructed(name: str, keras_name: str, keras_weights, image_size: int):
  """`keras.applications.<keras_name>` without its top at `image_size`, pooled, with
  `keras_weights` ("imagenet" or None). Offline, where Keras has a weights file per size
  (MobileNets: 128, 160, 192) and only the 224 px one is cached, the 224 px ImageNet weights
  are loaded, as Keras itself does at the sizes it has no file for (a log line says so).
  A size the model cannot take or weights that are missing are one-line UsageErrors."""
  import keras  # pylint: disable=g-import-not-at-top
  constructor = getattr(keras.applications, keras_name)

  def build(weights, size):
    with warnings.catch_warnings():  # ImageNet weights work at any size for these models.
      warnings.filterwarnings("ignore", message=".*will be loaded as the default")
      return constructor(include_top=False, weights=weights, pooling="avg",
                         input_shape=(size, size, 3))
  try:
    return build(keras_weights, image_size)
  except ValueError as e:
    raise UsageError(f"--image_size: {name} cannot be built at {image_size} px: "
                     f"{str(e).splitlines()[0]}") from None
  except Exception as e:  # Keras raises a bare Exception when the download fails.
    match = re.search(r"URL fetch failure on (\S+?): ", str(e))
    if keras_weights != "imagenet" or not match:
      raise
    missing = os.path.basename(match.group(1))
    reason = str(e).split(": ")[-1]
  if image_size != 224:
    try:
      reference = build("imagenet", 224)
    except Exception:  # pylint: disable=broad-except
      reference = None
    if reference is not None:
      model = build(None, image_size)
      model.set_weights(reference.get_weights())
      logging.info("%s is not in Keras' cache: %s uses its 224 px ImageNet weights at %d px",
                   missing, name, image_size)
      return model
  from kerasft.core import _compat  # pylint: disable=g-import-not-at-top
  cache = os.path.join(_compat.keras_home(), "models")
  raise UsageError(
      f"--weights=imagenet: {name}'s ImageNet weights {missing} are not in Keras' cache "
      f"{cache} and cannot be downloaded ({reason}); put that file there (or set KERAS_HOME "
      "to a writable folder whose models/ holds it), or pass --weights=none or "
      "--weights=/path/to/weights.h5")


def strided_layers(model, image_size: int, strides: tuple) -> dict:
  """{stride: the last layer of `model` whose output is [N, S/stride, S/stride, C]} for
  the `strides` the model reaches, from a functional backbone built at `image_size`: the
  multi-scale maps decoders and feature pyramids tap."""
  found = {}
  for layer in model.layers:
    try:
      shape = layer.output.shape
    except (AttributeError, ValueError):
      continue
    if len(shape) == 4 and shape[1] and shape[1] == shape[2] and image_size % shape[1] == 0:
      stride = image_size // shape[1]
      if stride in strides:
        found[stride] = layer
  return found


def weighted_layers(model) -> list:
  """The layers of `model` that own weights, in order from input to output."""
  return [layer for layer in model.layers if layer.weights]


def freeze(model) -> None:
  """Makes every weight of `model` non-trainable."""
  model.trainable = False


# A block is the weight-carrying layers that share a name prefix in the model's own naming.
_BLOCK_PATTERNS = (
    r"^(conv\d+_block\d+)_",  # ResNet, DenseNet: conv4_block2_...
    r"^(block_?\d+[a-z]?)_",  # MobileNetV2 block_13_..., EfficientNet block6a_..., VGG, Xception
    r"^conv_(?:dw|pw)_(\d+)(?:_|$)",  # MobileNet v1: conv_dw_5, conv_pw_5_bn -> 5
    r"^(.*_stage_\d+_block_\d+)_",  # ConvNeXt
    r"^(expanded_conv(?:_\d+)?)_",  # MobileNetV3
    r"^(normal_\w+?_\d+|reduction_\w+?_\d+)",  # NASNet
    r"^(mixed\d+)",  # Inception (named mixes)
    r"^(transformer_layer_\d+)$",  # KerasHub encoders: one transformer layer per block
    r"^(disentangled_attention_encoder_layer_\d+)$",  # KerasHub DeBERTa-v3
    r"^(group_\d+_inner_layer_\d+)$",  # KerasHub ALBERT (a layer shared by several passes)
)


def _block_of(layer_name: str) -> str:
  for pattern in _BLOCK_PATTERNS:
    match = re.match(pattern, layer_name)
    if match:
      return match.group(1)
  return layer_name


def blocks(model) -> list[tuple[str, list]]:
  """`model`'s blocks from input to output: (name, weight-carrying layers).

  Layers without a block prefix are blocks of their own.
  """
  ordered: dict[str, list] = {}
  for layer in weighted_layers(model):
    ordered.setdefault(_block_of(layer.name), []).append(layer)
  return list(ordered.items())


def unfreeze(model, top: int = 0, n_blocks: int = 0, from_layer: str = "",
             bn_mode: str = "frozen") -> list[str]:
  """Unfreezes the top of `model` for fine-tuning; returns the names of trainable layers.

  Exactly one of: top (the top N weight-carrying layers, BatchNorm not counted), n_blocks
  (the top K blocks) or from_layer (every layer from that one to the output).
  bn_mode: what happens to BatchNorm layers in the unfrozen part: "frozen" keeps all their
  weights fixed; "affine" and "train" make gamma and beta trainable (the moving statistics
  then move only if the backbone runs in training mode, which `bn_mode="train"` asks of
  `kerasft.models.heads.build_classifier`).
  """
  import keras  # pylint: disable=g-import-not-at-top

  is_bn = lambda layer: isinstance(layer, keras.layers.BatchNormalization)  # noqa: E731
  weighted = weighted_layers(model)
  if n_blocks:
    found = blocks(model)
    if n_blocks > len(found):
      raise UsageError(f"--unfreeze_blocks: {model.name} has {len(found)} blocks, got "
                       f"{n_blocks}; see --list_blocks")
    chosen = [layer for _, layers in found[len(found) - n_blocks:] for layer in layers]
  elif from_layer:
    names = [layer.name for layer in model.layers]
    if from_layer not in names:
      close = difflib.get_close_matches(from_layer, names, n=3)
      raise UsageError(f"--unfreeze_from: {model.name} has no layer {from_layer!r}"
                       + (f"; did you mean {', '.join(close)}?" if close else ""))
    after = {id(layer) for layer in model.layers[names.index(from_layer):]}
    chosen = [layer for layer in weighted if id(layer) in after]
  else:
    candidates = [layer for layer in weighted if not is_bn(layer)]
    if top > len(candidates):
      raise UsageError(f"--unfreeze_top: {model.name} has {len(candidates)} layers with "
                       f"weights (BatchNorm excluded), got {top}")
    first = weighted.index(candidates[len(candidates) - top]) if top else len(weighted)
    chosen = weighted[first:]
  model.trainable = True
  for layer in model.layers:
    layer.trainable = False
  for layer in chosen:
    layer.trainable = not is_bn(layer) or bn_mode != "frozen"
  return [layer.name for layer in chosen if layer.trainable]
