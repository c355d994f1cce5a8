"""The search space of `kerasft.tune`: what matters for fine-tuning, with sensible ranges.

Each entry of `SPACE` is one KerasTuner hyperparameter; `to_config` turns a trial's values
into a `RunConfig` that is valid by construction: a trial that keeps the backbone frozen
leaves the fine-tune settings (rates, augmentation, averaging, PEFT) at their defaults, so
it costs one convex solve on features shared with every other frozen trial of its backbone.

A space file (`--space=FILE`, JSON, or YAML when PyYAML is installed) narrows or fixes
entries: `{"optimizer": ["adam", "sgd"], "dropout": 0.2, "fine_tune_learning_rate":
{"min": 1e-5, "max": 1e-4, "log": true}}`: a list is a choice, a single value fixes the
entry, a mapping with min/max is a range. Unknown keys and values outside an entry's
allowed set are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os

from kerasft.core.errors import UsageError

AUGMENTS = ("zoom", "translate", "contrast")  # label-preserving for most image data


@dataclasses.dataclass(frozen=True)
class Param:
  """One hyperparameter: a choice among `values`, or a float/int range [low, high]."""
  kind: str  # "choice", "float" or "int"
  values: tuple = ()
  low: float = 0.0
  high: float = 0.0
  log: bool = False
  images_only: bool = False
  texts_only: bool = False
  allowed: tuple = ()  # for choices of names: what a space file may use
  help: str = ""


SPACE = {
    "image_size": Param("choice", (224, 160, 128, 96), images_only=True,
                        help="input side (those the backbone accepts)"),
    "head": Param("choice", ("none", "256"), help="hidden Dense sizes of the head"),
    "dropout": Param("choice", (0.0, 0.2, 0.5), help="dropout before head layers"),
    "learning_rate": Param("float", low=1e-4, high=1e-2, log=True,
                           help="a head with hidden layers: its rate"),
    "label_smoothing": Param("choice", (0.0, 0.1), help="a head with hidden layers"),
    "optimizer": Param("choice", ("adam", "adamw", "sgd"), allowed=("adam", "adamw", "sgd")),
    "unfreeze": Param("choice", ("none", "top", "all", "gradual"),
                      allowed=("none", "top", "all", "gradual"),
                      help="none (frozen backbone), the top blocks, all, or gradually"),
    "top_blocks": Param("int", low=1, high=4, help="unfreeze=top: how many blocks"),
    "bn_mode": Param("choice", ("frozen", "affine"), allowed=("frozen", "affine", "train")),
    "layer_lr_decay": Param("choice", (1.0, 0.8, 0.6)),
    "fine_tune_learning_rate": Param("float", low=1e-5, high=1e-3, log=True),
    "fine_tune_epochs": Param("choice", (2, 4, 8), help="the schedule (not with hyperband, "
                              "which sets it)"),
    "augment_strength": Param("choice", (0.0, 0.1, 0.2), images_only=True,
                              help="zoom, translate and contrast when fine-tuning; 0: none"),
    "mixup": Param("choice", (0.0, 0.2), images_only=True, help="MixUp alpha when fine-tuning"),
    "average": Param("choice", ("best", "greedy_soup", "ema"),
                     allowed=("best", "greedy_soup", "uniform_soup", "ema")),
    "wise_ft": Param("choice", ("off", "auto"), allowed=("off", "auto", "0.25", "0.5", "0.75")),
    "l2sp": Param("choice", (0.0, 0.01)),
    "peft": Param("choice", ("none", "lora", "bitfit"),
                  allowed=("none", "lora", "bitfit", "normfit")),
    "few_shot": Param("choice", ("off", "on"), texts_only=True, allowed=("off", "on"),
                      help="texts: contrastive tuning on pairs before the head"),
}
HYPERBAND_MAX_EPOCHS = 8


def load(path: str) -> dict:
  """The entries of a space file ({} for ""), checked; raises a UsageError naming --space."""
  if not path:
    return {}
  if not os.path.isfile(path):
    raise UsageError(f"--space: {path} does not exist")
  try:
    with open(path) as f:
      if path.endswith((".yaml", ".yml")):
        import yaml  # pylint: disable=g-import-not-at-top
        entries = yaml.safe_load(f)
      else:
        entries = json.load(f)
  except ImportError:
    raise UsageError(f"--space: {path} is YAML and PyYAML is not installed; pip install "
                     "pyyaml, or write the space as JSON") from None
  except ValueError as e:
    raise UsageError(f"--space: {path} is not valid JSON/YAML ({e})") from None
  if not isinstance(entries, dict):
    raise UsageError(f"--space: {path} must hold a mapping of entry names to values")
  for key, value in entries.items():
    _check_entry(path, key, value)
  return entries


def _check_entry(path: str, key: str, value) -> None:
  if key not in SPACE:
    raise UsageError(f"--space: {path} has an unknown entry {key!r}; known: "
                     f"{', '.join(SPACE)}")
  param = SPACE[key]
  if isinstance(value, dict):
    if set(value) - {"min", "max", "log"} or not {"min", "max"} <= set(value):
      raise UsageError(f"--space: {path}: {key} as a range needs min and max (and log)")
    return
  values = value if isinstance(value, list) else [value]
  if not values:
    raise UsageError(f"--space: {path}: {key} has an empty list")
  bad = [v for v in values if param.allowed and str(v) not in param.allowed]
  if bad:
    raise UsageError(f"--space: {path}: {key} cannot be {bad[0]!r}; one of "
                     f"{', '.join(param.allowed)}")


def declare(hp, overrides: dict, images: bool, hyperband: bool, sizes: tuple = (),
            skip: tuple = ()) -> None:
  """Declares every entry on KerasTuner's `hp` (a `keras_tuner.HyperParameters`), narrowed
  or fixed by `overrides` (`load`). images: the modality has image-only entries; sizes: the
  image sizes the backbones accept (none: image_size is not searched); skip: entries the
  task's output refuses (`Output.refused_search_entries`)."""
  for name, param in SPACE.items():
    if ((param.images_only and not images) or (param.texts_only and images)
        or (name == "fine_tune_epochs" and hyperband) or name in skip):
      continue
    if name == "image_size" and not sizes:
      continue
    value = overrides.get(name)
    if isinstance(value, dict):
      kind = int if param.kind == "int" else float
      (hp.Int if param.kind == "int" else hp.Float)(
          name, kind(value["min"]), kind(value["max"]),
          sampling="log" if value.get("log") else "linear")
    elif value is not None and not isinstance(value, list):
      hp.Fixed(name, value)
    elif value is not None or param.kind == "choice":
      choices = list(value or (sizes if name == "image_size" else param.values))
      hp.Choice(name, choices, ordered=False) if len(choices) > 1 else hp.Fixed(name, choices[0])
    elif param.kind == "int":
      hp.Int(name, int(param.low), int(param.high))
    else:
      hp.Float(name, param.low, param.high, sampling="log" if param.log else "linear")


def to_config(base, values: dict, n_blocks: int, images: bool):
  """The `RunConfig` of a trial: `base` (the user's flags) with `values` applied.
  n_blocks: the backbone's block count (for unfreeze=all and the top-blocks cap)."""
  v = dict(values)
  unfreeze = v.get("unfreeze", "none")
  tunes = unfreeze != "none"
  head = () if str(v.get("head", "none")) == "none" else tuple(
      int(s) for s in str(v["head"]).split(","))
  model = dataclasses.replace(
      base.model, head=head, dropout=float(v.get("dropout", base.model.dropout)),
      image_size=v.get("image_size", base.model.image_size),
      unfreeze_blocks={"top": min(int(v.get("top_blocks", 1)), n_blocks), "all": n_blocks}.get(
          unfreeze, 0), gradual_unfreeze=1 if unfreeze == "gradual" else 0,
      bn_mode=v.get("bn_mode", base.model.bn_mode) if tunes else base.model.bn_mode)
  training = dataclasses.replace(
      base.training, optimizer=v.get("optimizer", base.training.optimizer),
      learning_rate=float(v.get("learning_rate", base.training.learning_rate)),
      label_smoothing=float(v.get("label_smoothing", 0.0)) if head else 0.0)
  data, methods = base.data, base.methods
  if not images and v.get("few_shot") == "on":
    methods = dataclasses.replace(methods, recipe="few_shot")
  if tunes:
    peft = v.get("peft", "none") if unfreeze != "gradual" else "none"
    training = dataclasses.replace(
        training, fine_tune_epochs=int(v.get("tuner/epochs", v.get("fine_tune_epochs", 4))),
        fine_tune_learning_rate=float(v.get("fine_tune_learning_rate", 1e-4)),
        layer_lr_decay=float(v.get("layer_lr_decay", 1.0)))
    strength = float(v.get("augment_strength", 0.0)) if images else 0.0
    data = dataclasses.replace(data, augment=AUGMENTS if strength else (),
                               augment_strength=strength or data.augment_strength,
                               mixup=float(v.get("mixup", 0.0)) if images else 0.0)
    wise = v.get("wise_ft", "off")
    methods = dataclasses.replace(
        methods, average=v.get("average", "best"), wise_ft="" if wise == "off" else str(wise),
        l2sp=float(v.get("l2sp", 0.0)) if peft == "none" else 0.0, peft=peft)
  return dataclasses.replace(base, model=model, training=training, data=data, methods=methods)


def effective(config) -> dict:
  """The search entries a trial's `RunConfig` actually uses (what trials.csv and the
  leaderboard show): a frozen trial has no fine-tune entries, a convex head no rate."""
  m, t, d, k = config.model, config.training, config.data, config.methods
  values = {"model": m.model, "image_size": m.image_size,
            "head": ",".join(map(str, m.head)) or "none", "dropout": m.dropout}
  if m.head:
    values.update(learning_rate=t.learning_rate, label_smoothing=t.label_smoothing,
                  optimizer=t.optimizer)
  if k.recipe == "few_shot":
    values["few_shot"] = "on"
  if not t.fine_tune_epochs:
    return {**values, "unfreeze": "none"}
  values.update(
      unfreeze=f"gradual {m.gradual_unfreeze}" if m.gradual_unfreeze else
      f"top {m.unfreeze_blocks} blocks", bn_mode=m.bn_mode, optimizer=t.optimizer,
      layer_lr_decay=t.layer_lr_decay, fine_tune_learning_rate=t.fine_tune_learning_rate,
      fine_tune_epochs=t.fine_tune_epochs, augment_strength=d.augment_strength if d.augment
      else 0.0, mixup=d.mixup, average=k.average, wise_ft=k.wise_ft or "off", l2sp=k.l2sp,
      peft=k.peft)
  return values
