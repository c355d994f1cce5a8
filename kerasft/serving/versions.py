"""SavedModel export in TF Serving's layout: `<export_dir>/<version>/`, written atomically.

The SavedModel is saved from the `kerasft.models.signatures.Signatures` a task makes for
its model: a `tf.Module` tracking only the model's variables, with its signatures.

Signatures, all returning the task's outputs: multiclass `probabilities` float32 [None, C],
`class_ids` int64 [None] and `classes` string [None] (the top-1 class name); multilabel
`scores` float32 [None, C] and `labels` string [None, C] (the label's name where its score
is at least the threshold, else ""); regression `predictions` float32 [None] (one target)
or [None, K]:
  serving_default: images float32 [None, S, S, 3], RGB pixels 0..255
  serving_bytes:   image_bytes string [None], encoded JPEG/PNG/BMP/GIF, decoded and
                   resized exactly as in training (`kerasft.data.pipeline.decode_and_resize`)
  serving_example: examples string [None], serialized tf.train.Examples whose
                   `image/encoded` feature holds the encoded image
A text model's `serving_default` takes `text` string [None] instead; other tasks' outputs
are their own (a tagger's per-word and per-entity outputs, a segmenter's class maps).
A version folder also holds `assets/labels.txt` (class names in class-id order),
`model_card.json`, and, when tensorflow-serving-api is installed, TF Serving warm-up
requests in `assets.extra/tf_serving_warmup_requests`. The export root (the parent of the
model folders) gets a `models.config` for `tensorflow_model_server --model_config_file`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Callable

import tensorflow as tf
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.core.files import LABELS, write_labels
from kerasft.methods import peft

MODEL_CARD_FILE = "model_card.json"
MODELS_CONFIG_FILE = "models.config"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SIGNATURES = ("serving_default", "serving_bytes", "serving_example")


def custom_ops(saved_model_dir: str) -> list[str]:
  """The ops a SavedModel needs that core TensorFlow lacks (for a text model, the
  tensorflow-text tokenizer ops a model server must have linked in)."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  ops = set()
  for graph in proto.meta_graphs:
    ops.update(node.op for node in graph.graph_def.node)
    for function in graph.graph_def.library.function:
      ops.update(node.op for node in function.node_def)
  return sorted(op for op in ops if not hasattr(tf.raw_ops, op))


def versions(export_dir: str) -> list[int]:
  """The finished version numbers under `export_dir`, ascending."""
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(n) for n in os.listdir(export_dir)
                if re.fullmatch(r"\d+", n) and os.path.isdir(os.path.join(export_dir, n)))


def find_version(export_dir: str, run: dict) -> str:
  """The version folder of `export_dir` whose model card's "run" is `run` ("" if none)."""
  for version in reversed(versions(export_dir)):
    path = os.path.join(export_dir, str(version))
    try:
      with open(os.path.join(path, MODEL_CARD_FILE)) as f:
        if json.load(f).get("run") == run:
          return path
    except (OSError, ValueError):
      continue
  return ""


def write_warmup(path: str, warmup: dict) -> bool:
  """Writes one PredictionLog per signature ({signature: (input key, value)}) for TF
  Serving's warm-up. Returns False, writing nothing, when tensorflow-serving-api is not
  installed."""
  try:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info("no TF Serving warm-up requests: pip install tensorflow-serving-api to add them")
    return False
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for signature, (key, value) in warmup.items():
      request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
          signature_name=signature))
      request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
  return True


def update_models_config(export_root: str) -> str:
  """Adds every model folder under `export_root` to its `models.config`, keeping the rest.

  The file is in TF Serving's `--model_config_file` format, with base paths under
  `/models/` (mount `export_root` there: `-v $PWD/saved_models:/models`).
  """
  path = os.path.join(export_root, MODELS_CONFIG_FILE)
  text = open(path).read() if os.path.exists(path) else ""
  known = re.findall(r'name:\s*"([^"]+)"', text)
  models = sorted(n for n in os.listdir(export_root)
                  if os.path.isdir(os.path.join(export_root, n)) and versions(
                      os.path.join(export_root, n)))
  entries = re.findall(r"config\s*\{[^{}]*\}", text)
  entries += [f'config {{\n    name: "{n}"\n    base_path: "/models/{n}"\n'
              f'    model_platform: "tensorflow"\n  }}' for n in models if n not in known]
  body = "".join(f"  {e}\n" for e in entries)
  staging = path + ".tmp"
  with open(staging, "w") as f:
    f.write(f"model_config_list {{\n{body}}}\n")
  os.replace(staging, path)
  return path


def _next_version(export_dir: str, version: int | None, overwrite: bool) -> tuple[int, str]:
  os.makedirs(export_dir, exist_ok=True)
  if version is None:
    version = (versions(export_dir) or [0])[-1] + 1
  final = os.path.join(export_dir, str(version))
  if os.path.exists(final) and not overwrite:
    raise UsageError(f"--version: {final} already exists; pass --overwrite to replace it or "
                     "leave out --version for the next free one")
  return version, final


def _write_version(staging: str, make_signatures: Callable, class_names: list[str] | dict,
                   card: dict) -> None:
  """Writes the SavedModel, warm-up requests and model card into `staging`; class_names:
  labels.txt's lines, or {file name: lines} of every labels file (`Output.label_files`)."""
  with tempfile.TemporaryDirectory() as assets:
    labels_path = os.path.join(assets, LABELS)
    files = class_names if isinstance(class_names, dict) else {LABELS: class_names}
    for name, lines in files.items():
      write_labels(os.path.join(assets, name), lines)
    sig = make_signatures(labels_path)
    tf.saved_model.save(sig.module, staging, signatures={
        name: getattr(sig.module, name).get_concrete_function() for name in sig.descriptions})
  write_warmup(os.path.join(staging, WARMUP_FILE), sig.warmup)
  card = {**card, "outputs": sorted(sig.module.serving_default.get_concrete_function()
                                    .structured_outputs),
          "signatures": sig.descriptions, "custom_ops": custom_ops(staging)}
  with open(os.path.join(staging, MODEL_CARD_FILE), "w") as f:
    json.dump(card, f, indent=2)


def swap_in(staging: str, final: str, export_dir: str, version: int) -> None:
  """Renames a complete `staging` folder to `final`, replacing what is there."""
  os.chmod(staging, 0o755)  # mkdtemp makes it private; a server may run as another user.
  if os.path.exists(final):
    retired = tempfile.mkdtemp(prefix=f".old-{version}-", dir=export_dir)
    os.rename(final, os.path.join(retired, "v"))
    os.rename(staging, final)
    shutil.rmtree(retired, ignore_errors=True)
  else:
    os.rename(staging, final)


def _remove_abandoned(export_dir: str) -> None:
  """Removes staging folders of exports whose process is gone (killed with SIGKILL on
  this machine); those of running exporters stay."""
  for name in os.listdir(export_dir):
    match = re.fullmatch(r"\.tmp-\d+-(\d+)-.*", name)
    if not match:
      continue
    try:
      os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
      shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
    except PermissionError:  # another user's live process
      continue


def _claim(staging: str, export_dir: str, version: int) -> tuple[int, str]:
  """Renames `staging` to the first free version from `version` on; another process
  exporting to the same folder at once gets the next one (a rename onto an existing,
  non-empty version fails instead of replacing it). Returns (version, its folder)."""
  os.chmod(staging, 0o755)  # mkdtemp makes it private; a server may run as another user.
  while True:
    final = os.path.join(export_dir, str(version))
    if not os.path.exists(final):
      try:
        os.rename(staging, final)
        return version, final
      except OSError:
        if not os.path.exists(final):
          raise
    version += 1
    card_path = os.path.join(staging, MODEL_CARD_FILE)
    with open(card_path) as f:
      card = json.load(f)
    with open(card_path, "w") as f:
      json.dump({**card, "version": version}, f, indent=2)


def export(make_signatures: Callable, class_names: list[str], export_dir: str,
           version: int | None = None, overwrite: bool = False, card: dict | None = None
           ) -> str:
  """Writes SavedModel version `version` (default: the next) of `export_dir`.

  make_signatures(labels_path) gives the `kerasft.models.signatures.Signatures` to save
  (a task's `export_signatures`); class_names: labels.txt's lines or {file name: lines}; `card` (JSON-able) is written as `model_card.json` with the version,
  outputs, signatures and custom ops added. The version is written into a temporary folder
  beside it and renamed into place only when complete, so a server polling `export_dir`
  never sees half a version; an existing version is replaced only with `overwrite`.
  Returns the version folder.
  """
  chosen = version
  version, final = _next_version(export_dir, version, overwrite)
  _remove_abandoned(export_dir)
  staging = tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-", dir=export_dir)
  try:
    _write_version(staging, make_signatures, class_names, {**(card or {}), "version": version})
    if chosen is None:  # the next free version, claimed by an atomic rename
      version, final = _claim(staging, export_dir, version)
    else:
      swap_in(staging, final, export_dir, version)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  update_models_config(os.path.dirname(os.path.abspath(export_dir)))
  logging.info("exported version %d to %s", version, final)
  return final


def export_model(task, model, class_names: list[str], export_dir: str, card: dict,
                 version: int | None = None, overwrite: bool = False) -> str:
  """Writes `task`'s `model` as a TF Serving version of `export_dir` (see `export`), with
  the task's signatures, label files and `card`. LoRA layers are merged into their kernels
  first (in place; the model computes the same), so the export has a full fine-tune's
  layers and latency. Returns the version folder."""
  peft.merge(model)
  return export(lambda labels_path: task.export_signatures(model, class_names, labels_path),
                task.output.label_files(class_names), export_dir, version, overwrite,
                {**card, task.output.names_key: list(class_names)})
