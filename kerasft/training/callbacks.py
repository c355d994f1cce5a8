"""The callbacks of a training segment: the best epoch in memory and on disk, and the
epoch log a resumed run's history is rebuilt from."""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np

from kerasft.core import errors
from kerasft.core.files import atomic_path, read_json, write_json
from kerasft.methods import averaging

PHASES = ("head", "fine_tune")


class Interruptible(keras.callbacks.Callback):
  """Inside `fit`, a SIGTERM/SIGINT takes effect at the end of the current batch (never in
  the middle of a backup or checkpoint write): `kerasft.core.errors.Interrupted` is raised there,
  so the epoch in progress is redone on resume and every finished one is kept."""

  def on_train_begin(self, logs=None):
    errors.DEFERRED["depth"] += 1

  def on_train_end(self, logs=None):
    errors.DEFERRED["depth"] = max(0, errors.DEFERRED["depth"] - 1)
    errors.raise_pending()

  def on_train_batch_end(self, batch, logs=None):
    errors.raise_pending()

  on_test_batch_end = on_train_batch_end


class BestCheckpoint(keras.callbacks.Callback):
  """Keeps the best epoch of `model` by `monitor` ("max" or "min" is better by `mode`),
  whatever model is being fit (the head alone on cached features): its weights in memory
  at once, and on disk at an improvement when at least `interval` seconds and ten times
  the last write's duration have passed since it (checkpoints take at most about a tenth
  of the time: fast epochs on cached features do not each write the whole model), and at
  the end of every fit: `path` (a .keras file, replaced
  atomically) and `<path>.json` (the value and epoch), so a kill in the middle of a phase
  keeps the best epoch seen so far (`saved`). One instance serves both phases, so its best
  spans them. `best` is the monitored value, negated for "min". raw: also write the weights
  as they are in memory (`<path>.npz`; a .keras file holds LoRA factors merged into the
  kernels) and resume from them."""

  def __init__(self, model: keras.Model, path: str, interval: float = 0.0,
               monitor: str = "val_accuracy", mode: str = "max", raw: bool = False):
    super().__init__()
    self._full, self._path, self._interval, self._raw = model, path, interval, raw
    self.monitor, self._sign = monitor, 1.0 if mode == "max" else -1.0
    self.best, self._weights, self._dirty, self._epoch = -np.inf, None, False, None
    # the first write's cost, guessed from the model's size (about 100 MB/s with zipping)
    self._written, self._cost = time.monotonic(), 4 * model.count_params() / 1e8

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.monitor)
    if value is not None:
      value = self._sign * float(value)
    if value is not None and value > self.best:
      self.best, self._weights, self._dirty = value, self._full.get_weights(), True
      self._epoch = epoch
      if time.monotonic() - self._written >= max(self._interval, 10 * self._cost):
        self._write()

  def on_train_end(self, logs=None):
    if self._dirty:
      self._write()

  @property
  def full_model(self) -> keras.Model:
    """The model whose best epoch is kept (whatever model is being fit)."""
    return self._full

  def _write(self):
    start = time.monotonic()
    current = self._full.get_weights()
    self._full.set_weights(self._weights)
    with atomic_path(self._path) as staging:
      self._full.save(staging)
    self._full.set_weights(current)
    if self._raw:
      averaging.save_weights(self._weights, f"{self._path}.npz")
    write_json({"best": float(self.best), "epoch": self._epoch},
               f"{self._path}.json")
    self._dirty, self._written = False, time.monotonic()
    self._cost = self._written - start

  def saved(self) -> float | None:
    """The best value a previous process wrote with `path` (None when there is none)."""
    value = read_json(f"{self._path}.json", {}).get("best")
    return None if value is None or not os.path.exists(self._path) else float(value)

  def resume(self, best: float) -> None:
    """Continues from a previous process's best epoch (its value and `path`)."""
    if self._raw and os.path.exists(f"{self._path}.npz"):
      self.best, self._weights = best, averaging.load_weights(f"{self._path}.npz")
      return
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


class EpochLog(keras.callbacks.Callback):
  """Adds wall time, learning rate and phase to each epoch's logs (and so to TensorBoard)
  and appends them to `path` (JSON Lines), which the history is rebuilt from on resume."""

  def __init__(self, path: str | None, phase: str):
    super().__init__()
    self._path, self._phase = path, phase

  def on_train_begin(self, logs=None):
    errors.PROGRESS["epochs"] = self.params.get("epochs")

  def on_epoch_begin(self, epoch, logs=None):
    errors.PROGRESS["epoch"] = epoch
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    if logs is None:
      return
    logs["epoch_seconds"] = time.perf_counter() - self._start
    rate = self.model.optimizer.learning_rate
    logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))
    logs["phase"] = float(PHASES.index(self._phase))
    if self._path:
      append_epoch(self._path, epoch, logs)


def append_epoch(path: str, epoch: int, logs: dict) -> None:
  """Appends one epoch's logs (numbers) to the epoch log at `path` (JSON Lines)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps({"epoch": epoch, **{k: float(v) for k, v in logs.items()}}) + "\n")


def history_from_log(path: str) -> dict:
  """The per-epoch history (metrics and phase names) from an epoch log, last entry wins."""
  by_epoch = {}
  try:
    with open(path) as f:
      for line in f:
        try:
          entry = json.loads(line)
        except ValueError:  # a line cut short by a kill
          continue
        by_epoch[entry.pop("epoch")] = entry
  except FileNotFoundError:
    pass
  history: dict = {}
  for epoch in sorted(by_epoch):
    for k, v in by_epoch[epoch].items():
      history.setdefault(k, []).append(PHASES[int(v)] if k == "phase" else v)
  return history
