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

from kerasft import backbones
from kerasft.config import TrainingConfig
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


def run(training: TrainingConfig, model: keras.Model, dataset: Dataset, model_dir: str,
        unfreeze_top: int = 0, restore_best: bool = True, verbose: int | str = "auto") -> dict:
  """Trains `model` in place and returns the history of both phases.

  The history maps each metric to one value per epoch, plus "phase" ("head" or
  "fine_tune") per epoch. Writes TensorBoard logs to `model_dir/logs` and the best
  checkpoint to `model_dir/best.keras`, whose weights the model ends with when
  `restore_best` (else it keeps the last epoch's).
  """
  best_path = os.path.join(model_dir, BEST_CHECKPOINT)
  checkpoint = keras.callbacks.ModelCheckpoint(best_path, monitor="val_accuracy", mode="max",
                                               save_best_only=True)
  tensorboard = keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"))
  callbacks = [checkpoint, tensorboard]  # one checkpoint callback: its best spans both phases
  backbone = backbone_of(model)

  backbones.freeze(backbone)
  compile_model(model, training.optimizer, training.learning_rate, training.label_smoothing)
  logging.info("phase head: %d epochs, %d trainable weights, learning rate %g",
               training.epochs, len(model.trainable_weights), training.learning_rate)
  history = _merge({}, model.fit(dataset.train, validation_data=dataset.val,
                                 epochs=training.epochs, callbacks=callbacks,
                                 shuffle=False, verbose=verbose).history, "head")

  if training.fine_tune_epochs:
    names = backbones.unfreeze_top(backbone, unfreeze_top)
    compile_model(model, training.optimizer, training.fine_tune_learning_rate,
                  training.label_smoothing)
    logging.info("phase fine_tune: %d epochs, unfrozen %s, learning rate %g",
                 training.fine_tune_epochs, ", ".join(names), training.fine_tune_learning_rate)
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
