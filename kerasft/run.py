"""One training run from a `RunConfig`: data -> backbone -> head -> fit -> reports -> export.

`train_classifier(config)` is what `python -m kerasft.train` calls and what Python users
call directly. Everything that can be wrong with the user's input (flags, data, weights,
an existing run) is checked before the run's folder is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
from absl import logging

from kerasft import backbones, data, distribute, fit, heads, reports, serving, sources, text
from kerasft.config import RunConfig
from kerasft.errors import UsageError

STATE_FILE = "state.json"
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class TrainResult:
  """What a run produced: the trained model (raw pixels in), its history and export."""
  model: keras.Model
  history: dict
  metrics: dict
  export_path: str
  class_names: list[str]
  config: RunConfig
  seconds: dict  # wall time of each phase: data, model, train, report, export


def is_finished(model_dir: str) -> bool:
  """Whether `model_dir` holds a run that went through to its export."""
  try:
    with open(os.path.join(model_dir, STATE_FILE)) as f:
      return json.load(f).get("status") == "finished"
  except (OSError, ValueError):
    return False


def model_card(config: RunConfig, metrics: dict | None) -> dict:
  """What a version's `model_card.json` says about the model and how it was made."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import kerasft  # pylint: disable=g-import-not-at-top

  size = config.model.image_size
  d = config.data
  source = next((f"{k} {getattr(d, k)}" for k in ("csv", "tfrecord", "tfds", "text_dir",
                                                    "data_dir") if getattr(d, k)), "")
  card = {"name": config.name, "task": config.model.task, "backbone": config.model.model,
          "weights": config.model.weights, "head": list(config.model.head), "data": source,
          "versions": {"kerasft": kerasft.__version__, "tensorflow": tf.__version__,
                       "keras": keras.__version__}}
  if config.is_text:
    card.update(input={"shape": [None], "dtype": "string", "range": "raw text"},
                preprocessing=f"the preset's tokenizer inside the export (tensorflow-text "
                f"ops), packed to {config.model.max_length} tokens",
                pooling=config.model.pooling)
    card.pop("weights")
  else:
    card.update(input={"shape": [None, size, size, 3], "dtype": "float32",
                       "range": "RGB pixels 0..255"},
                preprocessing=f"{_preprocess_mode(config)} (inside the model)",
                resize=f"{config.data.resize}, bilinear")
  if config.model.task == "multilabel":
    card["threshold"] = config.model.threshold
  if metrics:
    card["validation_metrics"] = {k: v for k, v in metrics.items() if k not in
                                  ("per_class", "per_label", "per_target", "confusion_matrix")}
  return card


def _preprocess_mode(config: RunConfig) -> str:
  prefix, _ = backbones.source(config.model.model)
  if prefix == "keras:":
    return "none"
  if prefix:
    return backbones.INPUT_RANGES[config.model.hub_input_range]
  return backbones.spec(config.model.model).preprocess


def load_run(run_dir: str, checkpoint: str = "") -> tuple[keras.Model, RunConfig, list[str]]:
  """Loads a training run's checkpoint (default: its best), resolved config and class names."""
  flag = "checkpoint" if checkpoint else "run_dir"
  paths = [checkpoint or os.path.join(run_dir, fit.BEST_CHECKPOINT),
           os.path.join(run_dir, CONFIG_FILE), os.path.join(run_dir, serving.LABELS_FILE)]
  for path in paths:
    if not os.path.isfile(path):
      raise UsageError(f"--{flag}: {path} does not exist; pass the --model_dir of a training "
                       "run (runs/NAME) or a .keras checkpoint inside one")
  config = RunConfig.from_json(paths[1])
  class_names = serving.read_labels(paths[2])
  if config.is_text:
    text.import_keras_hub()  # registers the encoder classes the checkpoint names
  return keras.saving.load_model(paths[0], compile=False), config, class_names


def text_encoder(config: RunConfig) -> text.TextBackbone:
  """A text run's encoder and preprocessor, packing to the run's max_length."""
  encoder = text.load(backbones.source(config.model.model)[1])
  text.set_length(encoder, config.model.max_length)
  return encoder


def input_pipeline(config: RunConfig, files: data.Examples, batch_size: int):
  """An unshuffled pipeline of `files` as the run's model takes them (pixels or tokens)."""
  if config.is_text:
    return text.make_pipeline(files, text_encoder(config), batch_size)
  return data.make_pipeline(files, config.model.image_size, batch_size,
                            resize=config.data.resize)


def export_run(run_or_checkpoint: str, export_dir: str = "", version: int | None = None,
               overwrite: bool = False, fmt: str = "saved_model", quantize: str = "none"
               ) -> dict:
  """Exports a run's best checkpoint (or a .keras checkpoint inside a run folder).

  fmt: "saved_model", "tflite" or "both". export_dir defaults to the run's. Returns the
  written paths ("saved_model", "tflite") and, for TFLite, "tflite_max_difference" (the
  largest probability difference from the SavedModel on sample images) and
  "tflite_top1_agreement" (the share of those images whose top-1 class is the same).
  """

  is_checkpoint = os.path.isfile(run_or_checkpoint)
  run_dir = os.path.dirname(run_or_checkpoint) if is_checkpoint else run_or_checkpoint
  model, config, class_names = load_run(run_dir, run_or_checkpoint if is_checkpoint else "")
  export_dir = export_dir or config.export_dir
  size = config.model.image_size
  metrics = None
  if os.path.isfile(os.path.join(run_dir, "metrics.json")):
    with open(os.path.join(run_dir, "metrics.json")) as f:
      metrics = json.load(f)
  card = model_card(config, metrics)
  result = {}
  preprocessor = None
  if config.is_text:
    if fmt != "saved_model":
      raise UsageError(f"--format={fmt}: text models export as saved_model only (TFLite has "
                       "no tensorflow-text tokenizer ops)")
    preprocessor = text_encoder(config).preprocessor
  if fmt in ("saved_model", "both"):
    saved = serving.export(model, class_names, size, export_dir, version, overwrite, card,
                           config.data.resize, config.model.task, config.model.threshold,
                           preprocessor)
    result["saved_model"] = saved
    version = int(os.path.basename(saved))
  if fmt in ("tflite", "both"):
    if version is None:
      version = (serving.versions(export_dir) or [0])[-1] + 1
    out_dir = os.path.join(export_dir, serving.TFLITE_FOLDER, str(version))
    if os.path.exists(out_dir) and not overwrite:
      raise UsageError(f"--version: {out_dir} already exists; pass --overwrite to replace it")
    with tempfile.TemporaryDirectory() as scratch:
      saved = result.get("saved_model") or serving.export(
          model, class_names, size, os.path.join(scratch, "m"), 1, model_card=card,
          resize=config.data.resize, task=config.model.task, threshold=config.model.threshold)
      result["tflite"] = serving.export_tflite(saved, out_dir, quantize)
      images = sample_images(config, 16)
      expected = serving.saved_model_probabilities(saved, images)
      got = serving.tflite_probabilities(result["tflite"], images)
      result["tflite_max_difference"] = float(np.max(np.abs(got - expected)))
      if config.model.task == "multiclass":
        result["tflite_top1_agreement"] = float(np.mean(got.argmax(1) == expected.argmax(1)))
  return result


def sample_images(config: RunConfig, n: int):
  """Up to `n` validation images of the run as float32 [n, S, S, 3], else random pixels."""

  size = config.model.image_size
  try:
    files = sources.index_source(config.data, config.model.task, config.training.seed)[1]
    files = files.subset(range(min(n, len(files.inputs))))
    return np.concatenate([x for x, _ in data.make_pipeline(files, size, n,
                                                            resize=config.data.resize)])
  except UsageError:  # The run's data is gone: random pixels still exercise the model.
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def builtin_data_dir() -> str:
  """The built-in recipe's data: scikit-learn's digits as PNGs in Keras' datasets cache."""
  return data.builtin_digits(os.path.join(backbones.keras_home(), "datasets"))


def train_classifier(config: RunConfig, verbose: int | str = "auto") -> TrainResult:
  """Trains and exports a classifier as `config` says; returns a `TrainResult`.

  Writes `config.json`, `history.json`, `metrics.json`, PNG plots, TensorBoard logs and
  `best.keras` into `config.model_dir` and the next SavedModel version into
  `config.export_dir`. Running it again on a `model_dir` whose run was interrupted resumes
  that run. Under multi-worker training only the chief writes these; other workers work in
  a temporary folder that is removed, and get `export_path=""`. Raises `UsageError` for
  mistakes in the config or the data.
  """
  config = config.resolved()
  if is_finished(config.model_dir) and not config.overwrite:
    raise UsageError(f"--model_dir: {config.model_dir} already holds a finished run; pass "
                     "--overwrite to replace it or --name/--model_dir for a new run")
  runtime = distribute.setup(config.training, config.data.batch_size)
  policy = keras.mixed_precision.global_policy().name
  try:
    with tempfile.TemporaryDirectory(prefix="kerasft-worker-") as scratch:
      return _train(config, runtime, verbose, scratch)
  finally:
    keras.mixed_precision.set_global_policy(policy)


def _train(config: RunConfig, runtime, verbose, scratch: str) -> TrainResult:
  d = config.data
  data_dir = d.data_dir
  if not (data_dir or d.csv or d.tfrecord or d.tfds or d.text_dir or config.is_text):
    data_dir = builtin_data_dir()
    logging.info("no --data_dir: the built-in recipe trains on scikit-learn's digits (%s)",
                 data_dir)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                  data_dir=data_dir))
    d = config.data
  keras.utils.set_random_seed(config.training.seed)
  seconds = {}
  m = config.model
  with _phase(seconds, "data"):
    logging.info("phase data: indexing %s",
                 data_dir or d.csv or d.tfrecord or d.tfds or d.text_dir)
    train_files, val_files = sources.index_source(config.data, m.task, config.training.seed,
                                               text=config.is_text)
    if config.data.oversample:
      train_files = data.oversampled(train_files, config.training.seed)
  with _phase(seconds, "model"), runtime.strategy.scope():
    logging.info("phase model: %s%s", m.model, "" if config.is_text else
                 f" (weights {m.weights})")
    config, model, encoder = _build_model(config, train_files)
    if m.unfreezes:  # Fails now, not after the head phase, when the choice is out of range.
      encoder_model = heads.backbone_of(model)
      backbones.unfreeze(encoder_model, top=m.unfreeze_top, n_blocks=m.unfreeze_blocks,
                         from_layer=m.unfreeze_from)
      backbones.freeze(encoder_model)
  size = config.model.image_size
  if encoder:
    dataset = text.pipelines(train_files, val_files, encoder, d.batch_size,
                             config.training.seed)
  else:
    dataset = data.pipelines(train_files, val_files, size, d.batch_size, config.training.seed,
                             d.resize, d.cache_dir, d.mixup, d.cutmix)

  out_dir = config.model_dir if runtime.is_chief else scratch
  config_path = os.path.join(config.model_dir, CONFIG_FILE)
  if os.path.isdir(config.model_dir) and config.overwrite and runtime.is_chief:
    shutil.rmtree(config.model_dir)
  elif os.path.exists(config_path) and not config.overwrite:
    previous = RunConfig.from_json(config_path)
    if dataclasses.replace(previous, overwrite=False) != dataclasses.replace(config,
                                                                             overwrite=False):
      raise UsageError(f"--model_dir: {config.model_dir} holds an unfinished run with other "
                       "settings; run the same command to resume it, or pass --overwrite")
    logging.info("resuming the unfinished run in %s", config.model_dir)
  if runtime.is_chief:
    os.makedirs(config.model_dir, exist_ok=True)
    config.to_json(config_path)
    serving.write_labels(os.path.join(config.model_dir, serving.LABELS_FILE),
                         dataset.class_names)
  with _phase(seconds, "train"):
    history = fit.run(config, model, dataset, runtime, verbose=verbose, work_dir=scratch)
  logging.info("final weights fingerprint %s", weights_fingerprint(model))
  if not runtime.is_chief:
    return TrainResult(model=model, history=history, metrics={}, export_path="",
                       class_names=dataset.class_names, config=config, seconds=seconds)
  with _phase(seconds, "report"):
    logging.info("phase report: evaluating on %d validation examples",
                 len(dataset.val_files.inputs))
    targets, outputs = reports.predict(*(dataset.validation_view or (model, dataset.val)))
    metrics = reports.write(targets, outputs, dataset.class_names, out_dir, history, m.task,
                            m.threshold)
    logging.info("validation %s", reports.headline(metrics))
  with _phase(seconds, "export"):
    logging.info("phase export: %s", config.export_dir)
    export_path = serving.export(model, dataset.class_names, size, config.export_dir,
                                 model_card=model_card(config, metrics),
                                 resize=config.data.resize, task=m.task,
                                 threshold=m.threshold,
                                 text_preprocessor=encoder.preprocessor if encoder else None)
  reports.write_json({"status": "finished", "export_path": export_path, "seconds": seconds},
                     os.path.join(config.model_dir, STATE_FILE))
  return TrainResult(model=model, history=history, metrics=metrics, export_path=export_path,
                     class_names=dataset.class_names, config=config, seconds=seconds)


def _build_model(config: RunConfig, train_files: data.Examples):
  """The classifier `config` asks for, with its output sized for `train_files`; returns
  (config with the image size or text length filled in, model, text encoder or None)."""
  m = config.model
  mean = std = None
  if m.task == "regression":  # the head learns standardized targets
    targets = train_files.targets()
    mean, std = targets.mean(axis=0).tolist(), np.maximum(targets.std(axis=0), 1e-6).tolist()
  n_out = len(train_files.class_names)
  if config.is_text:
    encoder = text.load(backbones.source(m.model)[1])
    length = m.max_length or text.choose_max_length(
        text.token_lengths(encoder, train_files.inputs), encoder.max_length)
    text.set_length(encoder, length)
    logging.info("texts are packed to %d tokens%s", length,
                 "" if m.max_length else " (the 99th percentile of the training texts)")
    model = text.build_classifier(encoder, n_out, length, m.pooling, m.head, m.dropout,
                                  m.task, mean, std)
    return dataclasses.replace(config, model=dataclasses.replace(m, max_length=length)), \
        model, encoder
  backbone = backbones.build(m.model, m.weights, m.image_size, m.signature, m.output_key,
                             m.hub_input_range, m.backbone_layer)
  size = backbone.image_size  # a module or .keras file may decide its own size
  model = heads.build_classifier(backbone, n_out, m.head, m.dropout, m.bn_mode, m.task, mean,
                                 std)
  return dataclasses.replace(config, model=dataclasses.replace(m, image_size=size)), model, None


def weights_fingerprint(model: keras.Model) -> str:
  """A SHA-256 of all of `model`'s weights, to compare workers or runs bit for bit."""
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for w in model.weights:
    digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
  return digest.hexdigest()[:16]


@contextlib.contextmanager
def _phase(seconds: dict, name: str):
  start = time.perf_counter()
  yield
  seconds[name] = time.perf_counter() - start
  logging.info("phase %s took %.1f s", name, seconds[name])
