"""One training run from a `RunConfig`: data -> backbone -> head -> fit -> reports -> export.

`train_classifier(config)` is what `python -m kerasft.train` calls and what Python users
call directly. Everything that can be wrong with the user's input (flags, data, weights,
an existing run) is checked before the run's folder is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import keras
from absl import logging

from kerasft import backbones, data, fit, heads, reports, serving
from kerasft.config import RunConfig
from kerasft.errors import UsageError

STATE_FILE = "state.json"


@dataclasses.dataclass
class TrainResult:
  """What a run produced: the trained model (raw pixels in), its history and export."""
  model: keras.Model
  history: dict
  metrics: dict
  export_path: str
  class_names: list[str]
  config: RunConfig


def is_finished(model_dir: str) -> bool:
  """Whether `model_dir` holds a run that went through to its export."""
  try:
    with open(os.path.join(model_dir, STATE_FILE)) as f:
      return json.load(f).get("status") == "finished"
  except (OSError, ValueError):
    return False


def builtin_data_dir() -> str:
  """The built-in recipe's data: scikit-learn's digits as PNGs in Keras' datasets cache."""
  return data.builtin_digits(os.path.join(backbones.keras_home(), "datasets"))


def train_classifier(config: RunConfig, verbose: int | str = "auto") -> TrainResult:
  """Trains and exports a classifier as `config` says; returns a `TrainResult`.

  Writes `config.json`, `history.json`, `metrics.json`, PNG plots, TensorBoard logs and
  `best.keras` into `config.model_dir` and the next SavedModel version into
  `config.export_dir`. Raises `UsageError` for mistakes in the config or the data.
  """
  config = config.resolved()
  if is_finished(config.model_dir) and not config.overwrite:
    raise UsageError(f"--model_dir: {config.model_dir} already holds a finished run; pass "
                     "--overwrite to replace it or --name/--model_dir for a new run")
  data_dir = config.data.data_dir
  if not data_dir:
    data_dir = builtin_data_dir()
    logging.info("no --data_dir: the built-in recipe trains on scikit-learn's digits (%s)",
                 data_dir)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                  data_dir=data_dir))
  keras.utils.set_random_seed(config.training.seed)
  size = config.model.image_size
  logging.info("phase data: indexing %s", data_dir)
  dataset = data.load(data_dir, config.data.val_dir, config.data.validation_split, size,
                      config.data.batch_size, config.training.seed)
  logging.info("phase model: %s (weights %s) at %d px", config.model.model,
               config.model.weights, size)
  backbone = backbones.build(config.model.model, config.model.weights, size)
  model = heads.build_classifier(backbone, len(dataset.class_names), config.model.head,
                                 config.model.dropout)
  if config.model.unfreeze_top:  # Fails now, not after the head phase, when N is too big.
    backbones.unfreeze_top(backbone.model, config.model.unfreeze_top)
    backbones.freeze(backbone.model)

  if os.path.isdir(config.model_dir) and config.overwrite:
    shutil.rmtree(config.model_dir)
  os.makedirs(config.model_dir, exist_ok=True)
  config.to_json(os.path.join(config.model_dir, "config.json"))
  history = fit.run(config.training, model, dataset, config.model_dir,
                    unfreeze_top=config.model.unfreeze_top, verbose=verbose)
  logging.info("phase report: evaluating on %d validation images", len(dataset.val_files.paths))
  metrics = reports.write(model, dataset.val, dataset.class_names, history, config.model_dir)
  logging.info("validation accuracy %.4f", metrics["accuracy"])
  logging.info("phase export: %s", config.export_dir)
  export_path = serving.export(model, dataset.class_names, size, config.export_dir)
  reports.write_json({"status": "finished", "export_path": export_path},
                     os.path.join(config.model_dir, STATE_FILE))
  return TrainResult(model=model, history=history, metrics=metrics, export_path=export_path,
                     class_names=dataset.class_names, config=config)
