"""The formats a model ships in beside its SavedModel: LiteRT (TFLite) and ONNX.

Each is converted from a SavedModel version's `serving_default` signature, restricted to
its numeric outputs (probabilities/class_ids, scores, predictions: neither LiteRT's
builtin ops nor ONNX carry the label strings, so `labels.txt` sits beside the file), and
written atomically to `<export_dir>/<format>/<version>/`:
  tflite/<N>/model.tflite   float32, or quantized: dynamic (int8 weights, float
                            activations), float16 (float16 weights) or int8 (weights and
                            activations, calibrated on the run's training images; input
                            and output float32 or, with io="uint8", uint8)
  onnx/<N>/model.onnx       float32, converted with tf2onnx (the `onnx` extra), opset 17
with `labels.txt` and a `model_card.json` (the SavedModel's card and this file's check).
`check` runs the file and the SavedModel on the same images (`runner`: the LiteRT
interpreter from `ai-edge-litert`, falling back to the deprecated `tf.lite.Interpreter`;
onnxruntime) and measures how they agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.core.files import LABELS, write_json
from kerasft.serving.versions import MODEL_CARD_FILE, swap_in

QUANTIZATIONS = ("none", "dynamic", "float16", "int8", "int16x8")
RANKED_ON = 50  # calibration images the quantization debugger compares layers on
FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}
ONNX_OPSET = 17


def _numeric_signature(saved_model_dir: str, floats_only: bool = False):
  """(the loaded SavedModel, a tf.function images -> the numeric outputs of its
  serving_default (`floats_only`: without the integer ones, such as class_ids: a client
  takes their argmax), the images' TensorSpec)."""
  loaded = tf.saved_model.load(saved_model_dir)
  signature = loaded.signatures["serving_default"]
  inputs = signature.structured_input_signature[1]
  if "images" not in inputs:
    raise UsageError(f"--format: {saved_model_dir} takes {sorted(inputs)}, not images; only "
                     "image models convert to LiteRT and ONNX")
  spec = tf.TensorSpec(inputs["images"].shape, tf.float32, name="images")
  numeric = sorted(k for k, out in signature.structured_outputs.items() if out.dtype != tf.string
                   and (out.dtype.is_floating or not floats_only))

  @tf.function(input_signature=[spec])
  def serving_default(images):
    result = signature(images=images)
    return {k: result[k] for k in numeric}
  return loaded, serving_default, spec


def _first_line(error: Exception) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  found = [l for l in lines if "op" in l.lower() and ("not" in l or "unsupported" in l.lower())]
  return ((found or lines or [type(error).__name__])[0])[:300]


def tflite_bytes(saved_model_dir: str, quantize: str = "none",
                 calibration: np.ndarray | None = None, io: str = "float") -> bytes:
  """The LiteRT flatbuffer of an image export's numeric outputs.

  quantize: one of QUANTIZATIONS; "int8" and "int16x8" (int16 activations, int8 weights;
  its file has no integer outputs) need `calibration`, float32 images [N, S, S, 3]
  (0..255) like the training inputs, and keeps every op in int8 (a model with an op that
  has no int8 kernel is a UsageError naming it). io: "float" or "uint8" (int8 only: the
  input takes uint8 pixels, the outputs are uint8 with their scale in the file).
  """
  if quantize not in QUANTIZATIONS:
    raise UsageError(f"--quantize: must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
  if quantize in ("int8", "int16x8") and (calibration is None or not len(calibration)):
    raise UsageError(f"--quantize={quantize}: needs calibration images (the run's training "
                     "data)")
  # 16x8 has no ARG_MAX kernel: its file gives the probabilities, the client the argmax
  loaded, function, _ = _numeric_signature(saved_model_dir, quantize == "int16x8")
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], loaded)
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  if quantize in ("int8", "int16x8"):
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantize == "int8" else
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if io == "uint8":
      converter.inference_input_type = converter.inference_output_type = tf.uint8
  try:
    return converter.convert()
  except Exception as e:  # pylint: disable=broad-except  the converter raises many types
    raise UsageError(f"--quantize={quantize}: the LiteRT converter (TensorFlow "
                     f"{tf.__version__}) failed: {_first_line(e)}") from None


def _debugger(saved_model_dir: str, calibration: np.ndarray, scratch: str, keep_float=()):
  """TensorFlow's quantization debugger on an int8 conversion (float fallback allowed) of an
  image export's numeric outputs, with the op outputs named in `keep_float` left in float.
  The debugger converts from a SavedModel: the numeric signature is saved into `scratch`."""
  loaded, function, _ = _numeric_signature(saved_model_dir)
  numeric = os.path.join(scratch, "numeric")
  if not os.path.isdir(numeric):
    tf.saved_model.save(loaded, numeric, signatures={
        "serving_default": function.get_concrete_function()})
  converter = tf.lite.TFLiteConverter.from_saved_model(numeric)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([image[None]] for image in calibration)
  options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(keep_float))
  return tf.lite.experimental.QuantizationDebugger(
      converter=converter, debug_options=options,
      debug_dataset=lambda: ([image[None]] for image in calibration[:RANKED_ON]))


def quantization_ranking(saved_model_dir: str, calibration: np.ndarray,
                         scratch: str) -> list[tuple[str, str, float]]:
  """[(op output tensor, op, RMSE / scale)] of every quantized op of an int8 conversion,
  worst first: the error each op's int8 output makes against its float output, in units of
  its quantization step (TensorFlow's quantization debugger on RANKED_ON calibration
  images; its tutorial calls above 0.7 suspect). [] when the debugger fails (logged)."""
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  dump = io.StringIO()
  try:
    debugger = _debugger(saved_model_dir, calibration, scratch)
    debugger.run()
    debugger.layer_statistics_dump(dump)
  except Exception as e:  # pylint: disable=broad-except  the converter raises many types
    logging.warning("the quantization debugger failed (%s): no op is left in float",
                    _first_line(e))
    return []
  rows = [(r["tensor_name"], r["op_name"],
           float(np.sqrt(float(r["mean_squared_error"])) / float(r["scale"])))
          for r in csv.DictReader(io.StringIO(dump.getvalue())) if float(r["scale"]) > 0]
  return sorted(rows, key=lambda row: -row[2])


def selective_int8_bytes(saved_model_dir: str, calibration: np.ndarray, keep_float: list[str],
                         scratch: str) -> bytes:
  """The int8 LiteRT file with the ops whose outputs are `keep_float` (from
  `quantization_ranking`) left in float: selective quantization, float32 input and output."""
  try:
    return _debugger(saved_model_dir, calibration, scratch, keep_float
                     ).get_nondebug_quantized_model()
  except Exception as e:  # pylint: disable=broad-except  the converter raises many types
    raise UsageError(f"--quantize=int8: selective quantization failed (TensorFlow "
                     f"{tf.__version__}): {_first_line(e)}") from None


def check_onnx_installed():
  """tf2onnx, imported; a UsageError saying how to install it when it (or onnxruntime) is
  missing."""
  try:
    import onnxruntime  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import tf2onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UsageError("--format=onnx: needs the onnx extra: pip install 'kerasft[onnx]' "
                     "(tf2onnx and onnxruntime)") from None
  return tf2onnx


def onnx_bytes(saved_model_dir: str) -> bytes:
  """The ONNX model (opset ONNX_OPSET) of an image export's numeric outputs, converted by
  tf2onnx; a failed conversion is a UsageError naming the converter version and the op."""
  tf2onnx = check_onnx_installed()
  _, function, spec = _numeric_signature(saved_model_dir)
  import onnx  # pylint: disable=g-import-not-at-top  (tf2onnx's own dependency)
  try:
    with _quiet_tf2onnx():
      proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec],
                                               opset=ONNX_OPSET)
    onnx.checker.check_model(proto, full_check=True)  # tf2onnx leaves ops it cannot map
  except Exception as e:  # pylint: disable=broad-except  tf2onnx raises many types
    raise UsageError(f"--format=onnx: tf2onnx {tf2onnx.__version__} cannot convert this model "
                     f"(TensorFlow {tf.__version__}): {_first_line(e)}") from None
  return proto.SerializeToString()


@contextlib.contextmanager
def _quiet_tf2onnx():
  """tf2onnx logs every optimizer pass at INFO and each op it cannot map at ERROR; the
  caller reports a failed conversion in one line."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  logger = std_logging.getLogger("tf2onnx")
  level = logger.level
  logger.setLevel(std_logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _interpreter(path: str):
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info("ai-edge-litert is not installed: running %s with the deprecated "
                 "tf.lite.Interpreter", path)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return tf.lite.Interpreter(model_path=path)
  return Interpreter(model_path=path)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
  scale, zero = detail["quantization"]
  if detail["dtype"] in (np.float32, np.float16) or not scale:
    return x.astype(detail["dtype"])
  info = np.iinfo(detail["dtype"])
  return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
  scale, zero = detail["quantization"]
  if not scale or np.issubdtype(x.dtype, np.floating):
    return x
  return ((x.astype(np.float32) - zero) * scale).astype(np.float32)


def run_tflite(path: str, images: np.ndarray) -> dict:
  """Runs a model.tflite on float32 images [N, S, S, 3] (0..255), one at a time; its
  outputs by name, quantized ones (uint8 io) turned back into floats."""
  runner = _interpreter(path).get_signature_runner("serving_default")
  inputs, outputs = runner.get_input_details()["images"], runner.get_output_details()
  rows = [runner(images=_quantize(images[i:i + 1], inputs)) for i in range(len(images))]
  return {k: np.concatenate([_dequantize(r[k], outputs[k]) for r in rows]) for k in outputs}


def run_onnx(path: str, images: np.ndarray) -> dict:
  """Runs a model.onnx on float32 images [N, S, S, 3] with onnxruntime; outputs by name."""
  check_onnx_installed()
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  return dict(zip(names, session.run(names, {session.get_inputs()[0].name: images})))


RUNNERS: dict[str, Callable[[str, np.ndarray], dict]] = {"tflite": run_tflite,
                                                         "onnx": run_onnx}


def folder(export_dir: str, fmt: str, version: int) -> str:
  """Where format `fmt` of version `version` goes: <export_dir>/<fmt>/<version>."""
  return os.path.join(export_dir, fmt, str(version))


def write(export_dir: str, fmt: str, version: int, content: bytes, labels_path: str,
          card: dict, overwrite: bool = False) -> str:
  """Writes `content` as <export_dir>/<fmt>/<version>/<FILES[fmt]> with labels.txt and
  model_card.json beside it, atomically (a staging folder renamed into place; an existing
  folder is replaced only with `overwrite`). Returns the model file's path."""
  final = folder(export_dir, fmt, version)
  if os.path.exists(final) and not overwrite:
    raise UsageError(f"--version: {final} already exists; pass --overwrite to replace it")
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-", dir=parent)
  try:
    with open(os.path.join(staging, FILES[fmt]), "wb") as f:
      f.write(content)
    shutil.copy(labels_path, os.path.join(staging, LABELS))
    write_json(card, os.path.join(staging, MODEL_CARD_FILE))
    swap_in(staging, final, parent, version)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return os.path.join(final, FILES[fmt])


def record(card_path: str, fmt: str, entry: dict) -> None:
  """Adds `entry` (a format's file and check) under "formats" in a model card, atomically;
  nothing when the card does not exist."""
  if not os.path.isfile(card_path):
    return
  with open(card_path) as f:
    card = json.load(f)
  card.setdefault("formats", {})[fmt] = entry
  write_json(card, card_path)
