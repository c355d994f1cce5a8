"""Using an export: finding a version, loading it, predicting files or texts with it.

The export's model card says which task made it (`kerasft.tasks.for_card`): an image
export is asked through `serving_bytes` with encoded images, a text export through
`serving_default` with strings; rows are the output type's (`Output.predict_row`).
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import tensorflow as tf

from kerasft.tasks import registry as tasks
from kerasft.core.errors import UsageError
from kerasft.core.files import read_labels
from kerasft.serving.versions import MODEL_CARD_FILE, versions


def resolve(export: str, flag: str = "export") -> str:
  """`saved_models/NAME` (its newest version) or `saved_models/NAME/N` -> the version folder."""
  if os.path.isfile(os.path.join(export, "saved_model.pb")):
    return export
  found = versions(export)
  if not found:
    raise UsageError(f"--{flag}: {export} is neither a SavedModel version folder nor a model "
                     "folder with numbered versions; pass saved_models/NAME or "
                     "saved_models/NAME/N")
  return os.path.join(export, str(found[-1]))


def saved_model_probabilities(version_dir: str, images: np.ndarray, output) -> np.ndarray:
  """Runs an export's `serving_default` on float32 images [N, S, S, 3]; its main output
  as `output` takes it (`Output.main_output`: several heads' side by side)."""
  signature = load_saved_model(version_dir).signatures["serving_default"]
  return output.main_output(signature(images=tf.constant(images)))


def read_model_card(version_dir: str, flag: str = "export") -> dict:
  """An export's model_card.json ({} when absent); "task" defaults to multiclass."""
  path = os.path.join(version_dir, MODEL_CARD_FILE)
  card = {}
  if os.path.isfile(path):
    try:
      with open(path) as f:
        card = json.load(f)
    except (OSError, ValueError) as e:
      raise UsageError(f"--{flag}: {path} is damaged ({e}); export the model again") from None
  card.setdefault("task", "multiclass")
  return card


def load_predictor(version_dir: str, flag: str = "export"):
  """Loads an export (mistakes name --`flag`); returns (predict, class_names) where
  `predict(inputs)` returns the
  main output [N, C] (probabilities, multilabel scores or regression predictions; a
  tagger's: per-text entity lists) for a list of inputs as the export's task takes them
  (image files or encoded bytes; texts)."""
  task_class, output = tasks.for_card(read_model_card(version_dir))
  task_class.import_serving_ops()
  signature = load_saved_model(version_dir, flag).signatures.get(task_class.CLIENT_SIGNATURE)
  if signature is None:
    raise UsageError(f"--{flag}: {version_dir} has no {task_class.CLIENT_SIGNATURE} "
                     "signature; it was not written by kerasft")
  try:
    class_names = read_labels(version_dir)
  except OSError:
    raise UsageError(f"--{flag}: {version_dir} has no assets/labels.txt; export the model "
                     "again") from None

  def predict(inputs: list) -> np.ndarray:
    result = signature(**{task_class.CLIENT_INPUT: tf.constant(task_class.request_items(inputs))})
    return output.served({k: v.numpy() for k, v in result.items()})
  return predict, class_names


def load_saved_model(version_dir: str, flag: str = "export"):
  """`tf.saved_model.load`, with a damaged folder (junk saved_model.pb, missing
  variables/) as a one-line UsageError naming `flag`."""
  try:
    return tf.saved_model.load(version_dir)
  except (OSError, ValueError, tf.errors.OpError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UsageError(f"--{flag}: {version_dir} is not a loadable SavedModel ({first}); "
                     "export the model again") from None


def predict_files(predict, inputs, batch_size: int = 32) -> np.ndarray:
  """Runs `predict` from `load_predictor` in batches over any iterable of inputs; [N, C]."""
  chunks, items = [], iter(inputs)
  while batch := list(itertools.islice(items, batch_size)):
    chunks.append(predict(batch))
  return np.concatenate(chunks)


def classify_files(export: str, inputs: list[str], top_k: int, batch_size: int) -> list[dict]:
  """Predicts files, folders and globs (a text export: the texts) with an export.

  Returns one row per input: {"file" (or "text"), "classes" (top-k), "probabilities",
  "error"}; for a multilabel export "probabilities" are the top-k labels' scores; for a
  regression export the row is {"file", "targets", "predictions", "error"}. A missing or
  unreadable file gets an empty prediction and its error.
  """
  version_dir = resolve(export)
  task_class, output = tasks.for_card(read_model_card(version_dir))
  names, reasons = task_class.client_inputs(inputs)
  readable = [n for n, r in zip(names, reasons) if r is None]
  predict, class_names = load_predictor(version_dir)
  values = (predict_files(predict, readable, batch_size) if readable
            else np.zeros((0, len(class_names))))
  by_name = dict(zip(readable, values))
  return [output.predict_row(task_class.ROW_KEY, name, by_name.get(name), class_names, top_k,
                             reason) for name, reason in zip(names, reasons)]
