"""The training loop: compile, the head phase, the optional fine-tune phase, callbacks.

Phase 1 ("head") trains the new head on the frozen backbone. Phase 2 ("fine_tune"), when
asked for, unfreezes the top layers of the backbone and continues at a lower rate,
recompiling in between as Keras requires after a change of `trainable`. The best epoch by
validation accuracy over both phases is saved as `best.keras` and restored at the end.
"""

from __future__ import annotations

import json
import os

import keras
from absl import logging

from kerasft import backbones, features
from kerasft.config import RunConfig
from kerasft.data import Dataset
from kerasft.heads import backbone_of

BEST_CHECKPOINT = "best.keras"


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
  """"adam", "sgd" (momentum 0.9) or "adamw" at `learning_rate`."""
  if name == "adam":
    return keras.optimizers.Adam(learning_rate)
  if name == "sgd":
    return keras.optimizers.SGD(learning_rate, momentum=0.9)
  if name == "adamw":
    return keras.optimizers.AdamW(learning_rate)
  raise ValueError(f"unknown optimizer {name!r}")


def compile_model(model: keras.Model, optimizer: str, learning_rate: float,
                  label_smoothing: float = 0.0) -> None:
  """Compiles for one-hot labels with categorical cross-entropy and accuracy."""
  model.compile(
      optimizer=make_optimizer(optimizer, learning_rate),
      loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
      jit_compile=False)  # XLA made MobileNet-style models 7-12x slower on CPU here.


class _Checkpoint(keras.callbacks.ModelCheckpoint):
  """Saves `full_model` whatever model is being fit (the head alone on cached features)."""

  def __init__(self, full_model: keras.Model, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._full_model = full_model

  def set_model(self, model):
    super().set_model(self._full_model)


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
  checkpoint = _Checkpoint(model, best_path, monitor="val_accuracy", mode="max",
                           save_best_only=True)
  tensorboard = keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"))
  callbacks = [checkpoint, tensorboard]  # one checkpoint callback: its best spans both phases
  backbone = backbone_of(model)

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
  compile_model(trained, training.optimizer, training.learning_rate, training.label_smoothing)
  logging.info("phase head: %d epochs, %d trainable weights, learning rate %g%s",
               training.epochs, len(trained.trainable_weights), training.learning_rate,
               ", on cached features" if trained is not model else "")
  history = _merge({}, trained.fit(train_data, validation_data=val_data,
                                   epochs=training.epochs, callbacks=callbacks,
                                   shuffle=False, verbose=verbose).history, "head")

  if training.fine_tune_epochs:
    names = backbones.unfreeze_top(backbone, config.model.unfreeze_top)
    compile_model(model, training.optimizer, training.fine_tune_learning_rate,
                  training.label_smoothing)
    logging.info("phase fine_tune: %d epochs, unfrozen %s, learning rate %g%s",
                 training.fine_tune_epochs, ", ".join(names), training.fine_tune_learning_rate,
                 "; feature cache off: the backbone trains" if training.cache_features != "off"
                 else "")
    fine = model.fit(dataset.train, validation_data=dataset.val,
                     initial_epoch=training.epochs,
                     epochs=training.epochs + training.fine_tune_epochs,
                     callbacks=callbacks, shuffle=False, verbose=verbose)
    history = _merge(history, fine.history, "fine_tune")

  if restore_best and os.path.exists(best_path):
    model.load_weights(best_path)
    logging.info("restored the best epoch (val_accuracy %.4f) from %s", checkpoint.best,
                 best_path)
  with open(os.path.join(model_dir, "history.json"), "w") as f:
    json.dump(history, f, indent=2)
  return history


def _merge(history: dict, new: dict, phase: str) -> dict:
  n = len(next(iter(new.values()))) if new else 0
  merged = {k: list(history.get(k, [])) + [float(x) for x in v] for k, v in new.items()}
  merged["phase"] = list(history.get("phase", [])) + [phase] * n
  return merged
