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

from kerasft import backbones, data, features, heads
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


# What picks the best epoch (and early stopping) per task: (metric, "max" or "min").
MONITORS = {"multiclass": ("val_accuracy", "max"), "multilabel": ("val_auc", "max"),
            "regression": ("val_loss", "min")}


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                  label_smoothing: float = 0.0, steps_per_execution: int = 1,
                  jit_compile: bool = False, task: str = "multiclass",
                  threshold: float = 0.5) -> None:
  """Compiles for the task's targets: multiclass one-hot labels (categorical cross-entropy,
  accuracy), multilabel multi-hot labels (binary cross-entropy, AUC, micro F1 at
  `threshold`) or regression targets (mean squared error, mean absolute error)."""
  if task == "regression":
    loss, metrics = keras.losses.MeanSquaredError(), [keras.metrics.MeanAbsoluteError(
        name="mae")]
  elif task == "multilabel":
    loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    metrics = [keras.metrics.AUC(multi_label=True, name="auc"),
               keras.metrics.F1Score(average="micro", threshold=threshold, name="f1")]
  else:
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
  model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                steps_per_execution=steps_per_execution,
                jit_compile=jit_compile)  # XLA made MobileNet-style models 7-12x slower on CPU.


class _BestCheckpoint(keras.callbacks.Callback):
  """Keeps the best epoch of `model` by `monitor` ("max" or "min" is better by `mode`),
  whatever model is being fit (the head alone on cached features): its weights in memory
  at once, and `path` (a .keras file) at the end of every fit and at most every `interval`
  seconds in between. One instance serves both phases, so its best spans them. `best` is
  the monitored value, negated for "min"."""

  def __init__(self, model: keras.Model, path: str, interval: float = 60.0,
               monitor: str = "val_accuracy", mode: str = "max"):
    super().__init__()
    self._full, self._path, self._interval = model, path, interval
    self.monitor, self._sign = monitor, 1.0 if mode == "max" else -1.0
    self.best, self._weights, self._dirty = -np.inf, None, False
    self._written = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.monitor)
    if value is not None:
      value = self._sign * float(value)
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

  def resume(self, best: float) -> None:
    """Continues from a previous process's best epoch (its value and `path`)."""
    current = self._full.get_weights()
    self._full.load_weights(self._path)
    self.best, self._weights = best, self._full.get_weights()
    self._full.set_weights(current)

  def restore(self) -> bool:
    """Gives the model the best epoch's weights; False when there was no best epoch."""
    if self._weights is None:
      return False
    self._full.set_weights(self._weights)
    return True


class _EpochLog(keras.callbacks.Callback):
  """Adds wall time, learning rate and phase to each epoch's logs (and so to TensorBoard)
  and appends them to `path` (JSON Lines), which the history is rebuilt from on resume."""

  def __init__(self, path: str | None, phase: str):
    super().__init__()
    self._path, self._phase = path, phase

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    if logs is None:
      return
    logs["epoch_seconds"] = time.perf_counter() - self._start
    rate = self.model.optimizer.learning_rate
    logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))
    logs["phase"] = float(PHASES.index(self._phase))
    if self._path:
      with open(self._path, "a") as f:
        f.write(json.dumps({"epoch": epoch, **{k: float(v) for k, v in logs.items()}}) + "\n")


PHASES = ("head", "fine_tune")
STATE = "fit_state.json"  # which segments of training are done, for resuming
EPOCH_LOG = "epochs.jsonl"
RESUME_WEIGHTS = "resume.weights.h5"


def _segments(config: RunConfig, total_blocks: int) -> list[tuple[str, int, int, int]]:
  """(phase, first epoch, last epoch, blocks to unfreeze) of each fit call, in order."""
  t, m = config.training, config.model
  out = [("head", 0, t.epochs, 0)]
  if m.gradual_unfreeze:
    out += [("fine_tune", t.epochs + e, t.epochs + e + 1,
             min((e + 1) * m.gradual_unfreeze, total_blocks)) for e in range(t.fine_tune_epochs)]
  elif t.fine_tune_epochs:
    out.append(("fine_tune", t.epochs, t.epochs + t.fine_tune_epochs, m.unfreeze_blocks))
  return out


def _read_json(path: str, default):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def history_from_log(path: str) -> dict:
  """The per-epoch history (metrics and phase names) from an epoch log, last entry wins."""
  by_epoch = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        entry = json.loads(line)
        by_epoch[entry.pop("epoch")] = entry
  history: dict = {}
  for epoch in sorted(by_epoch):
    for k, v in by_epoch[epoch].items():
      history.setdefault(k, []).append(PHASES[int(v)] if k == "phase" else v)
  return history


def run(config: RunConfig, model: keras.Model, dataset: Dataset, runtime=None,
        restore_best: bool = True, verbose: int | str = "auto", work_dir: str = "") -> dict:
  """Trains `model` as `config` (resolved) says and returns the history of both phases.

  The history maps each metric to one value per epoch, plus "phase" ("head" or
  "fine_tune"). The chief writes TensorBoard logs to `model_dir/logs` and the best epoch
  (by validation accuracy) to `model_dir/best.keras`; the model ends with its weights when
  `restore_best`. With `--cache_features` the head phase trains the head on backbone
  features computed once (`kerasft.features`).

  Resuming: every epoch is backed up (`keras.callbacks.BackupAndRestore`) and every
  finished segment recorded in `model_dir/fit_state.json`, so calling `run` again after a
  kill skips finished phases and continues the unfinished one from its last epoch.
  runtime: a `kerasft.distribute.Runtime` (default: this process's default strategy).
  work_dir: where a non-chief worker writes (default: model_dir).
  """
  from kerasft import distribute  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if runtime is None:
    runtime = distribute.Runtime(tf.distribute.get_strategy(), True, 0, False, "float32")
  training, model_dir = config.training, config.model_dir
  out_dir = model_dir if runtime.is_chief else (work_dir or model_dir)
  best_path = os.path.join(out_dir, BEST_CHECKPOINT)
  state_path, log_path = os.path.join(model_dir, STATE), os.path.join(out_dir, EPOCH_LOG)
  state = _read_json(state_path, {"segments_done": 0})
  monitor, mode = MONITORS[config.model.task]
  checkpoint = _BestCheckpoint(model, best_path, monitor=monitor, mode=mode)
  if state.get("best") is not None and os.path.exists(best_path):
    checkpoint.resume(state["best"])
  backbone = backbone_of(model)
  steps = -(-len(dataset.train_files.inputs) // config.data.batch_size)
  total_blocks = len(backbones.blocks(backbone))
  segments = _segments(config, total_blocks)
  multipliers = layer_lr_multipliers(model, training.layer_lr_decay)
  class_weight = None
  if config.data.class_weight == "balanced":
    class_weight = data.balanced_class_weights(dataset.train_files)
    logging.info("class weights (balanced): %s", ", ".join(
        f"{dataset.class_names[i]} {w:.3f}" for i, w in class_weight.items()))
  done = state["segments_done"]
  if done:
    model.load_weights(os.path.join(model_dir, RESUME_WEIGHTS))
    logging.info("resuming %s: %d of %d training segments done", model_dir, done,
                 len(segments))
  m = config.model

  for index, (phase, first, last, n_blocks) in enumerate(segments):
    if index < done:
      continue
    trained, train_data, val_data, on_features = model, dataset.train, dataset.val, False
    peak, phase_epochs, offset, spe = (training.learning_rate, training.epochs, 0,
                                       training.steps_per_execution)
    with runtime.strategy.scope():
      if config.data.augment:  # a training model around the one that is exported
        inputs = keras.Input(model.input_shape[1:], name="images")
        trained = keras.Model(inputs, model(heads.augmentation(
            config.data.augment, config.data.augment_strength)(inputs)), name="training")
      if phase == "head":
        backbones.freeze(backbone)
        reason = (features.refusal(model, augment=config.data.augment,
                                   mixing=bool(config.data.mixup or config.data.cutmix))
                  if training.cache_features != "off" else None)
        if reason:
          logging.warning("feature cache off for the head phase: %s", reason)
        elif training.cache_features != "off":
          cached = features.build(
              model, dataset, config.data.batch_size, training.seed,
              training.feature_cache_memory * 2**20 or features.default_memory_budget(),
              training.feature_cache_dir or os.path.join(out_dir, "feature_cache"),
              training.feature_cache_dtype, verbose)
          trained, train_data, val_data = features.head_model(model), cached.train, cached.val
          on_features = True
          if not training.fine_tune_epochs:  # the features stay valid to the end
            dataset.validation_view = (trained, cached.val)
          if runtime.strategy.num_replicas_in_sync == 1:  # Keras fails on >1 replicas here
            spe = steps  # a step is one small matmul: run a whole epoch per execution
      else:
        names = backbones.unfreeze(backbone, top=m.unfreeze_top, n_blocks=n_blocks,
                                   from_layer=m.unfreeze_from, bn_mode=m.bn_mode)
        peak, phase_epochs = training.fine_tune_learning_rate, training.fine_tune_epochs
        offset = first - training.epochs
        logging.info("phase fine_tune: %d layers unfrozen (top: %s)%s%s", len(names),
                     ", ".join(names[-3:]),
                     f", layer decay {training.layer_lr_decay}" if multipliers else "",
                     "; feature cache off: the backbone trains"
                     if training.cache_features != "off" else "")
      rate = learning_rate(peak, training.lr_schedule, round(training.warmup_epochs * steps),
                           phase_epochs * steps, offset * steps)
      compile_model(trained, make_optimizer(training.optimizer, rate, training.weight_decay,
                                            multipliers if phase == "fine_tune" else None),
                    training.label_smoothing, spe, runtime.jit_compile, m.task, m.threshold)
    logging.info("phase %s: epochs %d-%d, %d trainable weights, learning rate %g%s", phase,
                 first + 1, last, len(trained.trainable_weights), peak,
                 ", on cached features" if on_features else "")
    backup = os.path.join(model_dir, "backup", f"segment_{index}",
                          "chief" if runtime.is_chief else f"worker_{runtime.worker_id}")
    callbacks = [_EpochLog(log_path, phase), checkpoint,
                 keras.callbacks.BackupAndRestore(backup)]
    if runtime.is_chief:
      callbacks.append(keras.callbacks.TensorBoard(os.path.join(model_dir, "logs")))
    if training.early_stopping_patience:
      callbacks.append(keras.callbacks.EarlyStopping(
          monitor, patience=training.early_stopping_patience, mode=mode))
    if training.reduce_lr_patience:
      callbacks.append(keras.callbacks.ReduceLROnPlateau(
          "val_loss", factor=0.5, patience=training.reduce_lr_patience))
    trained.fit(train_data, validation_data=val_data, initial_epoch=first, epochs=last,
                callbacks=callbacks, class_weight=class_weight, shuffle=False, verbose=verbose)
    trained._initial_epoch = None  # pylint: disable=protected-access  # set by BackupAndRestore
    if runtime.is_chief:
      model.save_weights(os.path.join(model_dir, RESUME_WEIGHTS))
      state = {"segments_done": index + 1, "best": float(checkpoint.best)}
      with open(state_path + ".tmp", "w") as f:
        json.dump(state, f)
      os.replace(state_path + ".tmp", state_path)

  if restore_best and checkpoint.restore():
    logging.info("restored the best epoch (%s %.4f), saved as %s", monitor,
                 checkpoint.best * (1 if mode == "max" else -1), best_path)
  history = history_from_log(log_path)
  with open(os.path.join(out_dir, "history.json"), "w") as f:
    json.dump(history, f, indent=2)
  return history
