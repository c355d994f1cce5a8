"""SavedModel and TFLite export in TF Serving's layout: `<export_dir>/<version>/`.

The SavedModel is saved from a `tf.Module` that tracks only the model's underlying
variables (`[v.value for v in model.variables]`), with `tf.function` signatures that call
the Keras model. No Keras object and no optimizer state enter the saved object graph, so
TensorFlow's session-based loader (TF Serving, `saved_model_cli run`) restores it, and the
variables take the parameters' bytes once (`model.export()` stores them twice).

Signatures, all returning the task's outputs: multiclass `probabilities` float32 [None, C],
`class_ids` int64 [None] and `classes` string [None] (the top-1 class name); multilabel
`scores` float32 [None, C] and `labels` string [None, C] (the label's name where its score
is at least the threshold, else ""); regression `predictions` float32 [None] (one target)
or [None, K]:
  serving_default: images float32 [None, S, S, 3], RGB pixels 0..255
  serving_bytes:   image_bytes string [None], encoded JPEG/PNG/BMP/GIF, decoded and
                   resized exactly as in training (`kerasft.data.decode_and_resize`)
  serving_example: examples string [None], serialized tf.train.Examples whose
                   `image/encoded` feature holds the encoded image
A version folder also holds `assets/labels.txt` (class names in class-id order),
`model_card.json`, and, when tensorflow-serving-api is installed, TF Serving warm-up
requests in `assets.extra/tf_serving_warmup_requests`. The export root (the parent of the
model folders) gets a `models.config` for `tensorflow_model_server --model_config_file`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import tensorflow as tf
from absl import logging

from kerasft import data, heads
from kerasft.errors import UsageError

LABELS_FILE = "labels.txt"
MODEL_CARD_FILE = "model_card.json"
MODELS_CONFIG_FILE = "models.config"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
TFLITE_FOLDER = "tflite"
SIGNATURES = ("serving_default", "serving_bytes", "serving_example")
QUANTIZATIONS = ("none", "dynamic", "float16")


MAIN_OUTPUTS = tuple(heads.OUTPUT_LAYERS.values())  # probabilities, scores, predictions


def outputs(result, class_names: list[str], task: str = "multiclass",
            threshold: float = 0.5) -> dict:
  """The signature outputs for a model's output `result` [N, C] (see the module docstring)."""
  result = tf.cast(result, tf.float32)
  labels = tf.constant(class_names)
  if task == "regression":
    return {"predictions": result[:, 0] if len(class_names) == 1 else result}
  if task == "multilabel":
    named = tf.broadcast_to(labels, tf.shape(result))
    return {"scores": result, "labels": tf.where(result >= threshold, named, "")}
  class_ids = tf.argmax(result, axis=-1, output_type=tf.int64)
  return {"probabilities": result, "class_ids": class_ids,
          "classes": tf.gather(labels, class_ids)}


def build_module(model, class_names: list[str], image_size: int, labels_path: str,
                 resize: str = "squash", task: str = "multiclass",
                 threshold: float = 0.5) -> tf.Module:
  """Wraps `model` (raw pixels -> the task's output) in a tf.Module with the three
  signatures; encoded images are resized as `resize` says, as in training."""
  module = tf.Module()
  module.model_variables = [v.value for v in model.variables]
  module.labels_asset = tf.saved_model.Asset(labels_path)
  image_spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)

  def run(images):
    return outputs(model(images, training=False), class_names, task, threshold)

  def classify_encoded(encoded):
    return run(tf.map_fn(lambda b: data.decode_and_resize(b, image_size, resize), encoded,
                         fn_output_signature=image_spec))

  @tf.function(input_signature=[
      tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
  def serving_default(images):
    return run(images)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  def serving_bytes(image_bytes):
    return classify_encoded(image_bytes)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serving_example(examples):
    features = tf.io.parse_example(
        examples, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
    return classify_encoded(features["image/encoded"])

  module.serving_default = serving_default
  module.serving_bytes = serving_bytes
  module.serving_example = serving_example
  return module


def build_text_module(model, preprocessor, class_names: list[str], labels_path: str,
                      task: str = "multiclass", threshold: float = 0.5) -> tf.Module:
  """Wraps a text model (packed token inputs -> the task's output) and its preset's
  preprocessor in a tf.Module whose `serving_default` takes raw strings `text` [None]:
  tokenization and packing run in the graph (tensorflow-text ops)."""
  module = tf.Module()
  module.model_variables = [v.value for v in model.variables]
  module.labels_asset = tf.saved_model.Asset(labels_path)
  module.tokenizer_resources = _resources(preprocessor)  # e.g. a SentencePiece model

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
  def serving_default(text):
    packed = preprocessor(text)
    inputs = {t.name: tf.cast(packed[t.name], t.dtype) for t in model.inputs}
    return outputs(model(inputs, training=False), class_names, task, threshold)

  module.serving_default = serving_default
  return module


def _resources(obj, depth: int = 0, seen: set | None = None) -> list:
  """The TF resources (tensorflow-text's SentencePiece model, lookup tables) held in `obj`'s
  attributes, a few levels deep: a SavedModel must track what its functions capture."""
  from tensorflow.python.trackable.resource import CapturableResource  # pylint: disable=g-import-not-at-top
  seen = set() if seen is None else seen
  if id(obj) in seen or depth > 4:
    return []
  seen.add(id(obj))
  if isinstance(obj, CapturableResource):
    return [obj]
  if isinstance(obj, (list, tuple)):
    children = obj
  elif isinstance(obj, dict):
    children = obj.values()
  elif hasattr(obj, "__dict__") and not isinstance(obj, (tf.Tensor, tf.Variable, type)):
    children = vars(obj).values()
  else:
    return []
  return [r for child in children for r in _resources(child, depth + 1, seen)]


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


def write_labels(path: str, class_names: list[str]) -> None:
  """Writes class names one per line, in class-id order (TF Serving's labels convention)."""
  with open(path, "w") as f:
    f.write("".join(f"{name}\n" for name in class_names))


def read_labels(path: str) -> list[str]:
  """Reads a labels file; a version folder means its `assets/labels.txt`."""
  if os.path.isdir(path):
    path = os.path.join(path, "assets", LABELS_FILE)
  with open(path) as f:
    return f.read().splitlines()


def _png(pixels: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def image_example(encoded: bytes) -> bytes:
  """A serialized tf.train.Example with `image/encoded`, as `serving_example` takes."""
  feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_warmup(path: str, image_size: int, text: bool = False) -> bool:
  """Writes one PredictionLog per signature (a mid-gray image; with `text`, one sentence
  for serving_default) for TF Serving's warm-up.

  Returns False, writing nothing, when tensorflow-serving-api is not installed.
  """
  try:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info("no TF Serving warm-up requests: pip install tensorflow-serving-api to add them")
    return False
  gray = np.full((image_size or 1, image_size or 1, 3), 128, np.uint8)
  inputs = {"serving_default": ("images", tf.make_tensor_proto(gray[None].astype(np.float32))),
            "serving_bytes": ("image_bytes", tf.make_tensor_proto([_png(gray)])),
            "serving_example": ("examples", tf.make_tensor_proto([image_example(_png(gray))]))}
  if text:
    inputs = {"serving_default": ("text", tf.make_tensor_proto(["a warm-up sentence"]))}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for signature, (key, tensor) in inputs.items():
      request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
          signature_name=signature))
      request.inputs[key].CopyFrom(tensor)
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


def export(model, class_names: list[str], image_size: int, export_dir: str,
           version: int | None = None, overwrite: bool = False,
           model_card: dict | None = None, resize: str = "squash", task: str = "multiclass",
           threshold: float = 0.5, text_preprocessor=None) -> str:
  """Writes `model` as SavedModel version `version` (default: the next) of `export_dir`.

  The version is written into a temporary folder beside it and renamed into place only
  when complete, so a server polling `export_dir` never sees half a version; an existing
  version is replaced only with `overwrite`. `model_card` (JSON-able) is written as
  `model_card.json` with the signatures added. task and threshold choose the outputs
  (see the module docstring). A text model comes with its `text_preprocessor` and gets
  one signature, serving_default (`build_text_module`). Returns the version folder.
  """
  os.makedirs(export_dir, exist_ok=True)
  if version is None:
    version = (versions(export_dir) or [0])[-1] + 1
  final = os.path.join(export_dir, str(version))
  if os.path.exists(final) and not overwrite:
    raise UsageError(f"--version: {final} already exists; pass --overwrite to replace it or "
                     "leave out --version for the next free one")
  staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
  try:
    with tempfile.TemporaryDirectory() as assets:
      labels_path = os.path.join(assets, LABELS_FILE)
      write_labels(labels_path, class_names)
      if text_preprocessor is not None:
        module = build_text_module(model, text_preprocessor, class_names, labels_path, task,
                                   threshold)
        signatures = {"serving_default": {"text": "string [N], raw text"}}
      else:
        module = build_module(model, class_names, image_size, labels_path, resize, task,
                              threshold)
        signatures = {"serving_default": {"images": f"float32 [N, {image_size}, "
                                          f"{image_size}, 3], RGB 0..255"},
                      "serving_bytes": {"image_bytes": "string [N], encoded image"},
                      "serving_example": {"examples": "string [N], tf.train.Example "
                                          "with image/encoded"}}
      tf.saved_model.save(module, staging, signatures={
          name: getattr(module, name).get_concrete_function() for name in signatures})
    write_warmup(os.path.join(staging, WARMUP_FILE), image_size, text_preprocessor is not None)
    names_key = "targets" if task == "regression" else "classes"
    card = {**(model_card or {}), "version": version, names_key: list(class_names),
            "outputs": sorted(module.serving_default.get_concrete_function()
                              .structured_outputs),
            "signatures": signatures, "custom_ops": custom_ops(staging)}
    with open(os.path.join(staging, MODEL_CARD_FILE), "w") as f:
      json.dump(card, f, indent=2)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; a server may run as another user.
    if os.path.exists(final):
      retired = tempfile.mkdtemp(prefix=f".old-{version}-", dir=export_dir)
      os.rename(final, os.path.join(retired, "v"))
      os.rename(staging, final)
      shutil.rmtree(retired, ignore_errors=True)
    else:
      os.rename(staging, final)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  update_models_config(os.path.dirname(os.path.abspath(export_dir)))
  logging.info("exported version %d to %s", version, final)
  return final


def export_tflite(saved_model_dir: str, out_dir: str, quantize: str = "none") -> str:
  """Converts the `serving_default` signature to `out_dir/model.tflite` (labels beside it).

  quantize: "none" (float32), "dynamic" (int8 weights) or "float16" (float16 weights).
  """
  if quantize not in QUANTIZATIONS:
    raise UsageError(f"--quantize: must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                       signature_keys=["serving_default"])
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  content = converter.convert()
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "model.tflite")
  with open(path, "wb") as f:
    f.write(content)
  shutil.copy(os.path.join(saved_model_dir, "assets", LABELS_FILE),
              os.path.join(out_dir, LABELS_FILE))
  return path


def main_output(result: dict) -> np.ndarray:
  """The task's main output among a signature's outputs: probabilities, scores or
  predictions."""
  return result[next(k for k in MAIN_OUTPUTS if k in result)].numpy()


def saved_model_probabilities(version_dir: str, images: np.ndarray) -> np.ndarray:
  """Runs an export's `serving_default` on float32 images [N, S, S, 3]; its main output."""
  signature = tf.saved_model.load(version_dir).signatures["serving_default"]
  return main_output(signature(images=tf.constant(images)))


def tflite_probabilities(tflite_path: str, images: np.ndarray) -> np.ndarray:
  """Runs a `model.tflite` from `export_tflite` on float32 images [N, S, S, 3]."""
  with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(model_path=tflite_path)
  runner = interpreter.get_signature_runner("serving_default")
  return np.concatenate([
      next(r[k] for k in MAIN_OUTPUTS if k in r)
      for r in (runner(images=images[i:i + 1]) for i in range(len(images)))])


def is_text_export(version_dir: str) -> bool:
  """Whether an export takes raw text (a KerasHub text model) rather than images."""
  return read_model_card(version_dir).get("input", {}).get("dtype") == "string"


def load_predictor(version_dir: str):
  """Loads an export; returns (predict, class_names) where `predict(list of encoded image
  bytes)` returns the main output [N, C] (probabilities, multilabel scores or regression
  predictions) through the `serving_bytes` signature. A text export's `predict` takes a
  list of strings (its `serving_default`; tensorflow-text is imported for its ops)."""
  if is_text_export(version_dir):
    import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]

    def predict_texts(texts: list[str]) -> np.ndarray:
      return main_output(signature(text=tf.constant(texts, tf.string)))
    return predict_texts, read_labels(version_dir)
  signature = tf.saved_model.load(version_dir).signatures["serving_bytes"]

  def predict(encoded: list[bytes]) -> np.ndarray:
    return main_output(signature(image_bytes=tf.constant(encoded)))
  return predict, read_labels(version_dir)


def predict_files(predict, inputs, batch_size: int = 32, read: bool = True) -> np.ndarray:
  """Runs `predict` from `load_predictor` in batches over image files or encoded images
  (bytes), any iterable, or with `read=False` over the inputs as they are (texts); [N, C]."""
  import itertools  # pylint: disable=g-import-not-at-top
  chunks, items = [], iter(inputs)
  while batch := list(itertools.islice(items, batch_size)):
    chunks.append(predict([data.encoded_bytes(b) for b in batch] if read else batch))
  return np.concatenate(chunks)


def read_model_card(version_dir: str) -> dict:
  """An export's model_card.json ({} when absent); "task" defaults to multiclass."""
  path = os.path.join(version_dir, MODEL_CARD_FILE)
  card = {}
  if os.path.isfile(path):
    with open(path) as f:
      card = json.load(f)
  card.setdefault("task", "multiclass")
  return card


def classify_files(export: str, inputs: list[str], top_k: int, batch_size: int) -> list[dict]:
  """Classifies files, folders and globs with an export's `serving_bytes` signature.

  Returns one row per input file: {"file", "classes" (top-k), "probabilities", "error"};
  for a multilabel export "probabilities" are the top-k labels' scores; for a regression
  export the row is {"file", "targets", "predictions", "error"}. A missing or unreadable
  file gets an empty prediction and its error. A text export takes the texts as `inputs`
  and its rows have "text" instead of "file".
  """
  version_dir = resolve(export)
  if is_text_export(version_dir):  # the inputs are the texts themselves
    predict, class_names = load_predictor(version_dir)
    scores = predict_files(predict, list(inputs), batch_size, read=False)
    return [{"text": t, "classes": [class_names[i] for i in np.argsort(-p)[:top_k]],
             "probabilities": [float(p[i]) for i in np.argsort(-p)[:top_k]], "error": None}
            for t, p in zip(inputs, scores)]
  paths = data.expand_inputs(inputs)
  reasons = data.unreadable_reasons(paths)
  readable = [p for p, r in zip(paths, reasons) if r is None]
  predict, class_names = load_predictor(version_dir)
  probabilities = (predict_files(predict, readable, batch_size) if readable
                   else np.zeros((0, len(class_names))))
  by_path = dict(zip(readable, probabilities))
  rows = []
  regression = read_model_card(version_dir)["task"] == "regression"
  for path, reason in zip(paths, reasons):
    if regression:
      values = [] if reason else [float(v) for v in np.atleast_1d(by_path[path])]
      rows.append({"file": path, "targets": class_names, "predictions": values,
                   "error": reason})
      continue
    if reason:
      rows.append({"file": path, "classes": [], "probabilities": [], "error": reason})
      continue
    top = np.argsort(-by_path[path])[:top_k]
    rows.append({"file": path, "classes": [class_names[i] for i in top],
                 "probabilities": [float(by_path[path][i]) for i in top], "error": None})
  return rows
