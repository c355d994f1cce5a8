"""The backbone name table: Keras Applications names, their input sizes and preprocessing,
and the prefixes of other backbone sources (`--model`). No TensorFlow: configs validate
`--model` with it; `kerasft.models.backbones` builds what it names."""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple

from kerasft.core.errors import UsageError


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


SOURCES = ("hub:", "savedmodel:", "keras:", "keras_hub:")
INPUT_RANGES = {"0,1": "unit", "-1,1": "tf", "0,255": "none"}  # --hub_input_range -> Preprocess


def source(name: str) -> tuple[str, str]:
  """Splits `--model` into (source, what): ("hub:", HANDLE), ("keras:", PATH), ... or
  ("", name) for a Keras Applications name (validated)."""
  for prefix in SOURCES:
    if name.startswith(prefix):
      if not name[len(prefix):]:
        raise UsageError(f"--model: {name!r} names no {prefix[:-1]} location")
      return prefix, name[len(prefix):]
  spec(name)
  return "", name


def default_name(name: str) -> str:
  """The run name a backbone gives: `.../mobilenet_v2/5` -> `mobilenet_v2`."""
  prefix, what = source(name)
  if not prefix:
    return name
  generic = {"feature_vector", "classification", "saved_model", "savedmodel", "tf2", "model"}
  parts = [p for p in re.split(r"[/\\]+", what.rstrip("/")) if p]
  for part in reversed(parts):
    stem = re.sub(r"\.(keras|h5)$", "", part)
    if stem and not stem.isdigit() and stem.lower() not in generic and ":" not in stem:
      return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
  return prefix[:-1]


def spec(name: str) -> BackboneSpec:
  """Returns the table entry for `name`, or raises a UsageError listing close matches."""
  if name in MODELS:
    return MODELS[name]
  close = difflib.get_close_matches(str(name).lower(), MODELS, n=4, cutoff=0.5)
  hint = (f"did you mean {', '.join(close)}?" if close else
          "see --list_models, or use hub:HANDLE, savedmodel:PATH or keras:PATH")
  raise UsageError(f"--model: unknown model {name!r}; {hint}")


def preprocess_name(m) -> str:
  """What the model does to pixels before the backbone (`kerasft.models.heads.Preprocess` mode)."""
  prefix, _ = source(m.model)
  if prefix == "keras:":
    return "none"
  if prefix:
    return INPUT_RANGES[m.hub_input_range]
  return spec(m.model).preprocess


def model_table() -> str:
  """--list_models: every Keras Applications name with its default input size."""
  return "\n".join([f"{'model':<22} default input size"] + [
      f"{name:<22} {entry.default_size}" for name, entry in MODELS.items()])
