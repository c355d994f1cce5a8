"""Domain adaptation of a text encoder: continued masked-language-model training on the
user's unlabelled texts, written as a KerasHub preset folder that `kerasft.train
--model=keras_hub:FOLDER` fine-tunes like any other.

KerasHub's own masked-LM task and preprocessor do the work (`keras_hub.models.MaskedLM`,
`MaskedLMPreprocessor`: 15% of the tokens chosen, 80% of those masked, 10% replaced, 10%
kept). Where the preset has no masked-LM head of its own (a sentence-embedding model such as
MiniLM: its masked tokens are then predicted at chance), a new head first trains alone with
the encoder frozen (`--mlm_head_epochs`), then both (`--mlm_epochs`). A tenth of the texts
(--validation_split) measures the masked-LM loss and accuracy before and after, with masks
drawn once. The folder is written atomically, with `adaptation.json` (figures, settings);
a killed run resumes from `<output_dir>.partial/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
import warnings

import numpy as np
from absl import logging

from kerasft.core import budget, cli
from kerasft.training import callbacks
from kerasft.models import text_encoders as text
from kerasft.core.errors import UsageError
from kerasft.core.files import read_json, write_json
from kerasft.config import backbones
from kerasft.data import tables
from kerasft.data.source import Source
from kerasft.data import records
from kerasft.training import distribute
from kerasft.tasks import registry as tasks

CHANCE = 0.01  # masked-token accuracy below this (or 10 / vocabulary): an untrained head
STATE, WEIGHTS, REPORT = "state.json", "resume.weights.h5", "adaptation.json"


@dataclasses.dataclass(frozen=True)
class AdaptResult:
  """Where the adapted preset is, its masked-LM figures before and after, the per-epoch
  history of each phase and the seconds it took."""
  output_dir: str
  before: dict
  after: dict
  history: dict
  seconds: float


def read_texts(data) -> list[str]:
  """The non-empty texts of a `DataConfig`'s --csv (--text_column), --text_dir (.txt files,
  searched recursively: any sub-folders, labels ignored) or --tfds (--text_key,
  --train_split)."""
  if data.csv:
    texts = [str(r[data.text_column] or "") for r in tables.read_table(
        Source("csv", data.csv), [data.text_column])]
  elif data.text_dir:
    if not os.path.isdir(data.text_dir):
      raise UsageError(f"--text_dir: {data.text_dir} is not a folder")
    texts = [open(os.path.join(root, f), encoding="utf-8", errors="replace").read()
             for root, _, files in sorted(os.walk(data.text_dir)) for f in sorted(files)
             if f.endswith(".txt")]
  elif data.tfds:
    texts = _tfds_texts(data)
  else:
    raise UsageError("--csv/--text_dir/--tfds: pass the unlabelled texts to adapt on")
  texts = [t.strip() for t in texts if t.strip()]
  if len(texts) < 2:
    raise UsageError(f"--{data.source}: {len(texts)} non-empty texts; adaptation needs more")
  return texts


def _tfds_texts(data) -> list[str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = records.tfds_builder(data.tfds, data.tfds_data_dir)
  features = builder.info.features
  key = data.text_key or next((k for k, f in features.items()
                               if isinstance(f, tfds.features.Text)), "")
  if key not in features:
    raise UsageError(f"--text_key: {data.tfds} has no text feature {key!r}; its features are "
                     f"{', '.join(features)}")
  ds = records.tfds_split(builder, data.tfds, data.tfds_data_dir,
                           data.train_split, None)
  return [t.decode("utf-8", errors="replace") for t in ds.map(lambda e: e[key]).as_numpy_iterator()]


def load_masked_lm(preset: str, max_length: int, mask_rate: float, texts: list[str]):
  """The preset's `keras_hub.models.MaskedLM`, its preprocessor packing to `max_length`
  [the 99th percentile of the texts' tokens, rounded up to 8, at most the encoder's limit]
  and masking `mask_rate` of the tokens; accents stripped as `kerasft.models.text_encoders.load` does."""
  keras_hub = text.import_keras_hub()
  encoder = text.load(preset)  # checks the folder, one-line errors
  try:
    model = keras_hub.models.MaskedLM.from_preset(preset)
  except (OSError, ValueError, KeyError, ImportError) as e:
    raise UsageError(f"--model: {preset} has no KerasHub masked-LM task "
                     f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
                     ) from None
  model.preprocessor.tokenizer.strip_accents = getattr(encoder.preprocessor.tokenizer,
                                                       "strip_accents", False)
  length = max_length or text.choose_max_length(text.token_lengths(encoder, texts),
                                                encoder.max_length)
  if length > encoder.max_length:
    raise UsageError(f"--max_length: {encoder.name} takes at most {encoder.max_length} tokens, "
                     f"got {length}")
  model.preprocessor.sequence_length = length
  model.preprocessor.mask_selection_rate = mask_rate
  return model, length


def _datasets(model, texts: list[str], fraction: float, batch_size: int, seed: int):
  """(training batches, masked anew every epoch; validation batches, masked once)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  order = np.random.default_rng(seed).permutation(len(texts))
  n_val = min(max(1, int(round(len(texts) * fraction))), len(texts) - 1)
  train = [texts[i] for i in order[n_val:]]
  val = [texts[i] for i in order[:n_val]]
  tf.random.set_seed(seed)
  pack = lambda ds: ds.batch(batch_size).map(model.preprocessor,  # noqa: E731
                                             num_parallel_calls=tf.data.AUTOTUNE)
  return (pack(tf.data.Dataset.from_tensor_slices(train).shuffle(
      len(train), seed=seed, reshuffle_each_iteration=True)).prefetch(tf.data.AUTOTUNE),
          pack(tf.data.Dataset.from_tensor_slices(val)).cache())


def _compile(model, learning_rate: float, backbone_trains: bool) -> None:
  import keras  # pylint: disable=g-import-not-at-top
  model.backbone.trainable = backbone_trains
  model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def adapt(model_flag: str, data, settings, training, max_length: int = 0,
          verbose: int | str = "auto") -> AdaptResult:
  """Continues masked-LM training of the encoder --model names (keras_hub:PRESET_OR_FOLDER)
  on `data`'s texts (a DataConfig: source, --batch_size, --validation_split) as `settings`
  (`kerasft.config.commands.AdaptConfig`) says, under `training`'s --strategy and --seed; writes
  the preset folder."""
  import keras  # pylint: disable=g-import-not-at-top
  start, verbose = time.monotonic(), cli.progress_verbosity(verbose)
  preset, output_dir = _check(model_flag, data, settings)
  texts = read_texts(data)
  runtime = distribute.setup(training, data.batch_size)
  keras.utils.set_random_seed(training.seed)
  with runtime.strategy.scope():
    model, length = load_masked_lm(preset, max_length, settings.mask_rate, texts)
    _compile(model, settings.mlm_learning_rate, True)
  train, val = _datasets(model, texts, data.validation_split, data.batch_size, training.seed)
  preprocessor, model.preprocessor = model.preprocessor, None  # the pipelines preprocess
  logging.info("adapt: %d texts (%d held out), %d tokens each, %.0f%% masked", len(texts),
               int(round(len(texts) * data.validation_split)) or 1, length,
               100 * settings.mask_rate)
  before = model.evaluate(val, verbose=0, return_dict=True)
  work = output_dir.rstrip("/") + ".partial"
  chance = max(CHANCE, 10 / preprocessor.tokenizer.vocabulary_size())
  history = _train(model, train, val, settings, runtime, work, before["accuracy"] < chance,
                   verbose)
  after = model.evaluate(val, verbose=0, return_dict=True)
  logging.info("adapt: held-out masked-LM loss %.4f -> %.4f, accuracy %.4f -> %.4f",
               before["loss"], after["loss"], before["accuracy"], after["accuracy"])
  model.preprocessor = preprocessor
  _write(model, output_dir, work, {"preset": preset, "texts": len(texts), "max_length": length,
                                   "before": before, "after": after, "history": history,
                                   "settings": dataclasses.asdict(settings)})
  return AdaptResult(output_dir, before, after, history, time.monotonic() - start)


def _check(model_flag: str, data, settings) -> tuple[str, str]:
  """(the preset, the output folder) of adapt's flags; a UsageError for a mistake."""
  if data.batch_size == "auto":
    raise UsageError("--batch_size=auto: kerasft.train chooses its batch by memory, adapt "
                     "does not; pass a number")
  if not tasks.reads_texts(model_flag):
    raise UsageError(f"--model: adapt continues a text encoder's masked-LM training; pass "
                     f"--model=keras_hub:PRESET_OR_FOLDER, not {model_flag}")
  preset = backbones.source(model_flag)[1]
  output_dir = settings.output_dir or os.path.join("adapted", os.path.basename(
      os.path.normpath(preset)))
  if os.path.exists(output_dir) and not settings.overwrite:
    raise UsageError(f"--output_dir: {output_dir} exists; pass --overwrite to replace it")
  return preset, output_dir


def _train(model, train, val, settings, runtime, work: str, new_head: bool, verbose) -> dict:
  """The phases (a new head alone, then everything), each resumable; returns the history
  by phase. A phase finished before a kill is not redone."""
  import keras  # pylint: disable=g-import-not-at-top
  os.makedirs(work, exist_ok=True)
  state = read_json(os.path.join(work, STATE), {"done": [], "history": {}})
  if state["done"]:
    model.load_weights(os.path.join(work, WEIGHTS))
    logging.info("adapt: resuming in %s (done: %s)", work, ", ".join(state["done"]))
  phases = [("encoder", settings.mlm_epochs, settings.mlm_learning_rate, True)]
  if new_head and settings.mlm_head_epochs:
    logging.info("adapt: the preset's masked-LM head predicts at chance: a new head trains "
                 "alone first (%d epochs)", settings.mlm_head_epochs)
    phases.insert(0, ("head", settings.mlm_head_epochs, 1e-3, False))
  seconds = settings.budget
  with budget.deadline(seconds) if seconds else contextlib.nullcontext():
    for name, epochs, rate, everything in phases:
      if name in state["done"]:
        continue
      with runtime.strategy.scope():
        _compile(model, rate, everything)
      chosen = [callbacks.Interruptible(), keras.callbacks.BackupAndRestore(
          os.path.join(work, f"backup_{name}"))] + ([budget.Deadline()] if seconds else [])
      with warnings.catch_warnings():  # BERT's [CLS] pooler feeds no masked-LM output
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        fitted = model.fit(train, validation_data=val, epochs=epochs, verbose=verbose,
                           callbacks=chosen)
      state["history"][name] = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
      state["done"].append(name)
      model.save_weights(os.path.join(work, WEIGHTS))
      write_json(state, os.path.join(work, STATE))
  return state["history"]


def _write(model, output_dir: str, work: str, report: dict) -> None:
  """Saves the adapted masked-LM task as a KerasHub preset folder (backbone, tokenizer,
  preprocessor and head) with `adaptation.json`, atomically; removes the work folder."""
  staging = output_dir.rstrip("/") + ".tmp"
  shutil.rmtree(staging, ignore_errors=True)
  model.save_to_preset(staging)
  write_json(report, os.path.join(staging, REPORT))
  if os.path.exists(output_dir):
    shutil.rmtree(output_dir)
  os.replace(staging, output_dir)
  shutil.rmtree(work, ignore_errors=True)
  logging.info("adapt: wrote %s", output_dir)
