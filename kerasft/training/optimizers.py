"""Optimizers with per-block learning rates, the per-phase schedule, and compiling.

`make_optimizer` gives Adam, SGD (momentum 0.9) or AdamW; with `lr_multipliers`
(`layer_lr_multipliers`: each backbone block at a power of --layer_lr_decay) each group of
variables updates at its own rate, and AdamW's decoupled weight decay scales with it
(`kerasft.core._compat.with_variable_rates`).
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np

from kerasft.core import _compat
from kerasft.models import backbones
from kerasft.models.heads import backbone_of

_OPTIMIZERS = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
               "adamw": keras.optimizers.AdamW}


class L2SP(NamedTuple):
  """L2-SP: a penalty `strength` * (w - w0)^2 on the variables of `anchors` [(variable,
  w0)], which then get no weight decay toward zero."""
  strength: float
  anchors: list


def make_optimizer(name: str, learning_rate, weight_decay: float | None = None,
                   lr_multipliers: dict | None = None, l2sp: L2SP | None = None,
                   keras_options: dict | None = None) -> keras.optimizers.Optimizer:
  """"adam", "sgd" (momentum 0.9) or "adamw" at `learning_rate` (a number or schedule).

  weight_decay: decoupled for adamw (None: Keras' default 0.004), L2 on kernels for adam
  and sgd (None: 0). lr_multipliers: {variable path: factor of the rate}. l2sp: `L2SP`
  (None or strength 0: off). keras_options: Keras' own optimizer arguments, e.g. `use_ema`
  and `ema_momentum`, `gradient_accumulation_steps` (one update per that many batches; the
  rate schedule still counts batches, so a phase's schedule ends with the phase).
  """
  if name not in _OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}")
  kwargs = {"momentum": 0.9} if name == "sgd" else {}
  kwargs.update(keras_options or {})
  l2 = 0.0
  if name == "adamw":
    if weight_decay is not None:
      kwargs["weight_decay"] = weight_decay
  else:
    l2 = weight_decay or 0.0
  anchors = l2sp.anchors if l2sp and l2sp.strength else []
  if not lr_multipliers and not l2 and not anchors:
    return _OPTIMIZERS[name](learning_rate, **kwargs)
  optimizer = _compat.with_variable_rates(_OPTIMIZERS[name])(
      learning_rate, lr_multipliers=lr_multipliers, l2=l2,
      anchors={v.path: w0 for v, w0 in anchors}, l2sp=l2sp.strength if anchors else 0.0,
      **kwargs)
  if anchors and name == "adamw":
    optimizer.exclude_from_weight_decay(var_list=[v for v, _ in anchors])
  return optimizer


def learning_rate(peak: float, schedule: str, warmup_steps: int, total_steps: int,
                  offset: int = 0):
  """A constant rate or cosine decay to 0 over a phase, after a linear warmup from 0.

  offset: steps of the phase already done (gradual unfreezing recompiles every epoch).
  """
  if schedule == "constant" and not warmup_steps:
    return peak
  return _PhaseSchedule(peak, schedule, warmup_steps, total_steps, offset)


@keras.saving.register_keras_serializable(package="kerasft")
class _PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to `peak`, then constant or cosine decay to 0 at `total_steps`."""

  def __init__(self, peak: float, schedule: str, warmup_steps: int, total_steps: int,
               offset: int = 0):
    self.peak, self.schedule, self.offset = peak, schedule, offset
    self.warmup_steps, self.total_steps = warmup_steps, total_steps

  def __call__(self, step):
    ops = keras.ops
    step = ops.cast(step, "float32") + float(self.offset)
    warm = ops.minimum(1.0, (step + 1.0) / float(max(self.warmup_steps, 1)))
    if self.schedule == "constant":
      return self.peak * warm
    done = ops.clip((step - self.warmup_steps) / float(max(self.total_steps - self.warmup_steps,
                                                            1)), 0.0, 1.0)
    cosine = 0.5 * (1.0 + ops.cos(np.pi * done))
    return self.peak * ops.where(step < self.warmup_steps, warm, cosine)

  def get_config(self):
    return {"peak": self.peak, "schedule": self.schedule, "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps, "offset": self.offset}


def layer_lr_multipliers(model: keras.Model, decay: float) -> dict:
  """{variable path: decay ** k} for the backbone's k-th block from the top (k >= 1)."""
  if decay == 1.0:
    return {}
  found = backbones.blocks(backbone_of(model))
  return {w.path: decay ** (k + 1)
          for k, (_, layers) in enumerate(reversed(found)) for layer in layers
          for w in layer.weights}


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer, output,
                  label_smoothing: float = 0.0, steps_per_execution: int = 1,
                  jit_compile: bool = False) -> None:
  """Compiles `model` with `output`'s loss and metrics (`kerasft.tasks.classify.output.Output`, as
  `model`'s head is built: several heads' sizes)."""
  output = output.for_model(model)
  model.compile(optimizer=optimizer, loss=output.loss(label_smoothing), metrics=output.metrics(),
                steps_per_execution=steps_per_execution,
                jit_compile=jit_compile)  # XLA made MobileNet-style models 7-12x slower on CPU.
