"""Parameter-efficient fine-tuning of the unfrozen part of a backbone (--peft).

lora: Keras' own `enable_lora(rank, lora_alpha)` on the targeted layers (Dense, EinsumDense,
  Embedding, Conv) of the part the unfreeze flags choose; only the LoRA factors (and the
  head) train. `merge` folds the factors into the kernels before an export, so the export
  has the plain layers of a full fine-tune. An adapter (`save_adapter`) holds the factors
  and the head: a few hundred kB where the model is megabytes.
bitfit: only the biases (BatchNorm/LayerNorm betas included) of the unfrozen part train.
normfit: only the normalization layers' scales and offsets train.
The backbone runs in inference mode throughout (its batch-norm statistics stay put).
"""

from __future__ import annotations

import fnmatch
import json

import keras
import numpy as np
from absl import logging

from kerasft.core import _compat
from kerasft.models import backbones
from kerasft.core.errors import UsageError
from kerasft.core.files import atomic_path
from kerasft.models.heads import backbone_of

DEFAULT_TARGETS = ("query", "value")  # attention projections; plus pointwise convolutions
_NORMS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
          keras.layers.GroupNormalization)


def region(backbone, model_config) -> list:
  """The layers (nested ones included) the unfreeze flags of `model_config` choose."""
  m = model_config
  backbones.unfreeze(backbone, top=m.unfreeze_top, n_blocks=m.unfreeze_blocks,
                     from_layer=m.unfreeze_from, bn_mode="affine")
  chosen = [layer for layer in backbone.layers if layer.trainable and layer.weights]
  backbones.freeze(backbone)
  return [sub for layer in chosen for sub in _compat.sublayers(layer)]


def _is_target(layer, patterns: tuple) -> bool:
  if patterns:
    path = layer.weights[0].path.rsplit("/", 1)[0]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns for name in (layer.name, path))
  pointwise = isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)
  return pointwise or layer.name in DEFAULT_TARGETS


def enable(model: keras.Model, config) -> list[str]:
  """With --peft=lora, enables LoRA on the targeted layers of the fine-tune region (once, at
  build time, so every checkpoint of the run has the same weights); returns their names.
  Raises a UsageError when no layer matches --lora_targets."""
  k = config.methods
  if k.peft != "lora":
    return []
  candidates = [layer for layer in region(backbone_of(model), config.model)
                if hasattr(layer, "enable_lora") and layer.weights]
  if not candidates:
    raise UsageError(f"--peft=lora: the unfrozen part of {config.model.model} has no Keras "
                     "Dense, EinsumDense, Embedding or Conv layer for LoRA (a hub:/savedmodel: "
                     "module's variables are its own); use --peft=bitfit or a Keras backbone")
  layers = [layer for layer in candidates if _is_target(layer, k.lora_targets)]
  if not layers:
    raise UsageError(f"--lora_targets: no layer of the unfrozen part matches "
                     f"{','.join(k.lora_targets) or 'the defaults (query, value, 1x1 convs)'};"
                     " see --list_blocks for the layers")
  for layer in layers:
    layer.enable_lora(k.lora_rank, lora_alpha=k.lora_alpha)
  logging.info("LoRA rank %d on %d layers: %s", k.lora_rank, len(layers),
               ", ".join(layer.name for layer in layers[-4:]))
  return [layer.name for layer in layers]


def _keeps(method: str, variable) -> bool:
  """Whether `method` trains `variable` (by its name: LoRA factors, biases, norms)."""
  name = variable.path.rsplit("/", 1)[-1]
  if method == "lora":
    return name.startswith("lora_kernel")
  return name in (("bias", "beta") if method == "bitfit" else ("gamma", "beta"))


def restrict(backbone, method: str) -> int:
  """After unfreezing: of the variables that would train, only `method`'s stay trainable;
  returns how many. Raises a UsageError when none would."""
  trainable = [w for w in backbone.trainable_weights]
  for variable in trainable:
    variable.trainable = _keeps(method, variable)
  kept = sum(w.trainable for w in trainable)
  if not kept:
    raise UsageError(f"--peft={method}: the unfrozen part has nothing to train with it "
                     "(no LoRA targets, biases or normalization layers); unfreeze more "
                     "blocks")
  return kept


def parameter_counts(model: keras.Model) -> tuple[int, int]:
  """(trainable, total) parameter counts of `model` as it is compiled now."""
  count = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
  return count(model.trainable_weights), count(model.weights)


def lora_layers(model: keras.Model) -> list:
  """The layers of `model` (nested ones included) with LoRA enabled."""
  return [layer for layer in _compat.sublayers(model) if getattr(layer, "lora_enabled", False)]


def revive(model: keras.Model) -> None:
  """Loading a checkpoint into LoRA layers merges the factors into the kernel and zeroes
  both (Keras' `load_own_variables`), which would stop them learning: gives A a fresh
  initialization (B stays zero, so the model computes the same)."""
  for layer in lora_layers(model):
    if not np.any(keras.ops.convert_to_numpy(layer.lora_kernel_a)):
      layer.lora_kernel_a.assign(keras.initializers.HeUniform()(layer.lora_kernel_a.shape))


def merge(model: keras.Model) -> int:
  """Folds every LoRA layer's factors into its kernel and removes them, in place (the
  model computes the same); returns how many layers were merged."""
  layers = lora_layers(model)
  for layer in layers:
    store = {}
    layer.save_own_variables(store)  # Keras writes the merged kernel
    layer.lora_enabled, layer.lora_rank = False, None
    del layer.lora_kernel_a, layer.lora_kernel_b  # untracked by Layer.__delattr__
    layer.load_own_variables(store)
  return len(layers)


class Revive(keras.callbacks.Callback):
  """Runs `revive` after `keras.callbacks.BackupAndRestore` restored an epoch (put it
  after that callback)."""

  def on_train_begin(self, logs=None):
    revive(self.model)


def _adapter_weights(model: keras.Model) -> dict:
  """{index in model.weights: variable} of the LoRA factors and everything outside the
  backbone (the head)."""
  inside = {id(w) for w in backbone_of(model).weights}
  return {i: w for i, w in enumerate(model.weights)
          if id(w) not in inside or "lora_kernel" in w.path}


def save_adapter(model: keras.Model, path: str, config_dict: dict, labels: list[str],
                 stats=None) -> int:
  """Writes the LoRA factors and the head of `model` with the run's config, labels and head
  constants (`Output.head_stats`) to `path` (.npz, atomically); returns its size in bytes."""
  weights = _adapter_weights(model)
  arrays = {f"w{i}": keras.ops.convert_to_numpy(w) for i, w in weights.items()}
  meta = {"config": config_dict, "labels": labels, "stats": stats, "paths": {
      f"w{i}": w.path for i, w in weights.items()}, "count": len(model.weights)}
  with atomic_path(path) as staging, open(staging, "wb") as f:
    np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)
  return sum(a.nbytes for a in arrays.values())


def read_adapter(path: str) -> tuple[dict, dict]:
  """(metadata: config, labels, paths, count; {key: array}) of an adapter file."""
  try:
    with np.load(path) as f:
      meta = json.loads(str(f["__meta__"]))
      return meta, {k: f[k] for k in f.files if k != "__meta__"}
  except (OSError, ValueError, KeyError) as e:
    raise UsageError(f"--adapter: {path} is not a kerasft adapter ({e})") from None


def apply_adapter(model: keras.Model, meta: dict, arrays: dict) -> None:
  """Loads an adapter's factors and head into `model` (built with LoRA enabled as the
  adapter's config says)."""
  if len(model.weights) != meta["count"]:
    raise UsageError(f"--adapter: made for a model with {meta['count']} weights; this one "
                     f"has {len(model.weights)} (another backbone or head?)")
  for key, array in arrays.items():
    variable = model.weights[int(key[1:])]
    if tuple(variable.shape) != array.shape:
      raise UsageError(f"--adapter: {meta['paths'][key]} has shape {array.shape}; the model's "
                       f"{variable.path} has {tuple(variable.shape)}")
    variable.assign(array)
