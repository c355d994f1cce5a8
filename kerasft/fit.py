"""The training loop: compile, the head phase, the optional fine-tune phase, callbacks.

Phase 1 ("head") trains the new head on the frozen backbone. Phase 2 ("fine_tune"), when
asked for, unfreezes the top layers of the backbone and continues at a lower rate,
recompiling in between as Keras requires after a change of `trainable`. The best epoch by
validation accuracy over both phases is saved as `best.keras` and restored at the end.
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
from absl import logging

from kerasft import backbones, features
from kerasft.config import RunConfig
from kerasft.data import Dataset
from kerasft.heads import backbone_of

BEST_CHECKPOINT = "best.keras"


def _with_variable_rates(base):
  """`base` optimizer class that can scale the rate per variable and add L2 to gradients."""

  class Tuned(base):  # pylint: disable=missing-class-docstring

    def __init__(self, *args, lr_multipliers: dict | None = None, l2: float = 0.0, **kwargs):
      super().__init__(*args, **kwargs)
      self._lr_multipliers = dict(lr_multipliers or {})
      self._l2 = l2

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
      if self._l2:  # coupled L2 on kernels: the gradient of l2 * sum(w ** 2)
        grads = [g + 2 * self._l2 * keras.ops.cast(v, g.dtype) if len(v.shape) >= 2 else g
                 for g, v in zip(grads, trainable_variables)]
      groups: dict[float, tuple[list, list]] = {}
      for g, v in zip(grads, trainable_variables):
        pair = groups.setdefault(self._lr_multipliers.get(v.path, 1.0), ([], []))
        pair[0].append(g)
        pair[1].append(v)
      for multiplier, (group_grads, group_vars) in groups.items():
        super()._backend_update_step(group_grads, group_vars, learning_rate * multiplier)

  Tuned.__name__ = Tuned.__qualname__ = f"Tuned{base.__name__}"
  return Tuned


_OPTIMIZERS = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
               "adamw": keras.optimizers.AdamW}
_TUNED = {name: _with_variable_rates(cls) for name, cls in _OPTIMIZERS.items()}


def make_optimizer(name: str, learning_rate, weight_decay: float | None = None,
                   lr_multipliers: dict | None = None) -> keras.optimizers.Optimizer:
  """"adam", "sgd" (momentum 0.9) or "adamw" at `learning_rate` (a number or schedule).

  weight_decay: decoupled for adamw (None: Keras' default 0.004), L2 on kernels for adam
  and sgd (None: 0). lr_multipliers: {variable path: factor of the rate}.
  """
  if name not in _OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}")
  kwargs = {"momentum": 0.9} if name == "sgd" else {}
  l2 = 0.0
  if name == "adamw":
    if weight_decay is not None:
      kwargs["weight_decay"] = weight_decay
  else:
    l2 = weight_decay or 0.0
  if not lr_multipliers and not l2:
    return _OPTIMIZERS[name](learning_rate, **kwargs)
  return _TUNED[name](learning_rate, lr_multipliers=lr_multipliers, l2=l2, **kwargs)


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


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                  label_smoothing: float = 0.0, steps_per_execution: int = 1) -> None:
  """Compiles for one-hot labels with categorical cross-entropy and accuracy."""
  model.compile(
      optimizer=optimizer,
      loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
      steps_per_execution=steps_per_execution,
      jit_compile=False)  # XLA made MobileNet-style models 7-12x slower on CPU here.


class _BestCheckpoint(keras.callbacks.Callback):
  """Keeps the best epoch of `model` by validation accuracy, whatever model is being fit
  (the head alone on cached features): its weights in memory at once, and `path` (a
  .keras file) at the end of every fit and at most every `interval` seconds in between.
  One instance serves both phases, so its best spans them."""

  def __init__(self, model: keras.Model, path: str, interval: float = 60.0):
    super().__init__()
    self._full, self._path, self._interval = model, path, interval
    self.best, self._weights, self._dirty = -np.inf, None, False
    self._written = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get("val_accuracy")
    if value is not None and value > self.best:
      self.best, self._weights, self._dirty = value, self._full.get_weights(), True
      if time.monotonic() - self._written > self._interval:
        self._write()

  def on_train_end(self, logs=None):
    if self._dirty:
      self._write()

  def _write(self):
    current = self._full.get_weights()
    self._full.set_weights(self._weights)
    self._full.save(self._path)
    self._full.set_weights(current)
    self._dirty, self._written = False, time.monotonic()

  def restore(self) -> bool:
    """Gives the model the best epoch's weights; False when there was no best epoch."""
    if self._weights is None:
      return False
    self._full.set_weights(self._weights)
    return True


class _EpochSeconds(keras.callbacks.Callback):
  """Adds each epoch's wall time to its logs (and so to the history and TensorBoard)."""

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs["epoch_seconds"] = time.perf_counter() - self._start


def run(config: RunConfig, model: keras.Model, dataset: Dataset, restore_best: bool = True,
        verbose: int | str = "auto") -> dict:
  """Trains `model` as `config` (resolved) says and returns the history of both phases.

  The history maps each metric to one value per epoch, plus "phase" ("head" or
  "fine_tune") per epoch. Writes TensorBoard logs to `model_dir/logs` and the best
  checkpoint to `model_dir/best.keras`, whose weights the model ends with when
  `restore_best` (else it keeps the last epoch's). With `--cache_features` the head phase
  trains the head on backbone features computed once (`kerasft.features`).
  """
  training, model_dir = config.training, config.model_dir
  best_path = os.path.join(model_dir, BEST_CHECKPOINT)
  checkpoint = _BestCheckpoint(model, best_path)
  callbacks = [_EpochSeconds(), checkpoint,
               keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"))]
  backbone = backbone_of(model)
  steps = -(-len(dataset.train_files.paths) // config.data.batch_size)

  def optimizer(peak, epochs, multipliers=None, done_epochs=0):
    rate = learning_rate(peak, training.lr_schedule, round(training.warmup_epochs * steps),
                         epochs * steps, done_epochs * steps)
    return make_optimizer(training.optimizer, rate, training.weight_decay, multipliers)

  def fit(trained, train_data, val_data, first, last):
    return trained.fit(train_data, validation_data=val_data, initial_epoch=first, epochs=last,
                       callbacks=callbacks, shuffle=False, verbose=verbose).history

  backbones.freeze(backbone)
  trained, train_data, val_data = model, dataset.train, dataset.val
  if training.cache_features != "off":
    reason = features.refusal(model)
    if reason:
      logging.warning("feature cache off for the head phase: %s", reason)
    else:
      cached = features.build(
          model, dataset, config.model.image_size, config.data.batch_size, training.seed,
          training.feature_cache_memory * 2**20 or features.default_memory_budget(),
          training.feature_cache_dir or os.path.join(model_dir, "feature_cache"),
          training.feature_cache_dtype, verbose)
      trained, train_data, val_data = features.head_model(model), cached.train, cached.val
  # On cached features a step is one small matmul: run a whole epoch per execution.
  compile_model(trained, optimizer(training.learning_rate, training.epochs),
                training.label_smoothing, steps if trained is not model else 1)
  logging.info("phase head: %d epochs, %d trainable weights, learning rate %g%s",
               training.epochs, len(trained.trainable_weights), training.learning_rate,
               ", on cached features" if trained is not model else "")
  history = _merge({}, fit(trained, train_data, val_data, 0, training.epochs), "head")

  if training.fine_tune_epochs:
    m = config.model
    if training.cache_features != "off":
      logging.info("phase fine_tune: feature cache off: the backbone trains")
    multipliers = layer_lr_multipliers(model, training.layer_lr_decay)
    # Gradual unfreezing adds blocks every epoch and so recompiles every epoch.
    stages = ([(e, e + 1, (e + 1) * m.gradual_unfreeze)
               for e in range(training.fine_tune_epochs)] if m.gradual_unfreeze
              else [(0, training.fine_tune_epochs, m.unfreeze_blocks)])
    total_blocks = len(backbones.blocks(backbone))
    for first, last, n_blocks in stages:
      names = backbones.unfreeze(backbone, top=m.unfreeze_top,
                                 n_blocks=min(n_blocks, total_blocks),
                                 from_layer=m.unfreeze_from, bn_mode=m.bn_mode)
      compile_model(model, optimizer(training.fine_tune_learning_rate,
                                     training.fine_tune_epochs, multipliers, first),
                    training.label_smoothing)
      logging.info("phase fine_tune: epochs %d-%d, %d layers unfrozen (top: %s), learning "
                   "rate %g%s", training.epochs + first + 1, training.epochs + last,
                   len(names), ", ".join(names[-3:]), training.fine_tune_learning_rate,
                   f", layer decay {training.layer_lr_decay}" if multipliers else "")
      history = _merge(history, fit(model, dataset.train, dataset.val, training.epochs + first,
                                    training.epochs + last), "fine_tune")

  if restore_best and checkpoint.restore():
    logging.info("restored the best epoch (val_accuracy %.4f), saved as %s", checkpoint.best,
                 best_path)
  with open(os.path.join(model_dir, "history.json"), "w") as f:
    json.dump(history, f, indent=2)
  return history


def _merge(history: dict, new: dict, phase: str) -> dict:
  n = len(next(iter(new.values()))) if new else 0
  merged = {k: list(history.get(k, [])) + [float(x) for x in v] for k, v in new.items()}
  merged["phase"] = list(history.get("phase", [])) + [phase] * n
  return merged
