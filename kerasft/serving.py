"""SavedModel export in TF Serving's layout: `<export_dir>/<version>/`.

The SavedModel is saved from a `tf.Module` that tracks only the model's underlying
variables (`[v.value for v in model.variables]`), with `tf.function` signatures that call
the Keras model. No Keras object and no optimizer state enter the saved object graph, so
TensorFlow's session-based loader (TF Serving, `saved_model_cli run`) restores it, and the
variables take the parameters' bytes once (`model.export()` stores them twice).

Signatures:
  serving_default: images float32 [None, S, S, 3], pixels 0..255
  serving_bytes:   image_bytes string [None], encoded JPEG/PNG/BMP/GIF, decoded and
                   resized exactly as in training (`kerasft.data.decode_and_resize`)
both returning probabilities float32 [None, C], class_ids int64 [None] and classes
string [None] (the top-1 class name). `assets/labels.txt` lists the class names.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from kerasft import data
from kerasft.errors import UsageError

LABELS_FILE = "labels.txt"


def _outputs(probabilities, labels):
  class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
  return {"probabilities": tf.cast(probabilities, tf.float32), "class_ids": class_ids,
          "classes": tf.gather(labels, class_ids)}


def build_module(model, class_names: list[str], image_size: int, labels_path: str) -> tf.Module:
  """Wraps `model` (raw pixels -> probabilities) in a tf.Module with the two signatures."""
  module = tf.Module()
  module.model_variables = [v.value for v in model.variables]
  module.labels_asset = tf.saved_model.Asset(labels_path)
  labels = tf.constant(class_names)

  @tf.function(input_signature=[
      tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
  def serving_default(images):
    return _outputs(model(images, training=False), labels)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  def serving_bytes(image_bytes):
    images = tf.map_fn(lambda b: data.decode_and_resize(b, image_size), image_bytes,
                       fn_output_signature=tf.TensorSpec([image_size, image_size, 3],
                                                         tf.float32))
    return _outputs(model(images, training=False), labels)

  module.serving_default = serving_default
  module.serving_bytes = serving_bytes
  return module


def versions(export_dir: str) -> list[int]:
  """The finished version numbers under `export_dir`, ascending."""
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(n) for n in os.listdir(export_dir)
                if re.fullmatch(r"\d+", n) and os.path.isdir(os.path.join(export_dir, n)))


def export(model, class_names: list[str], image_size: int, export_dir: str,
           version: int | None = None) -> str:
  """Writes `model` as SavedModel version `version` (default: the next) of `export_dir`.

  The version is written into a temporary folder beside it and renamed into place only
  when complete, so a server polling `export_dir` never sees half a version. Returns the
  version folder.
  """
  os.makedirs(export_dir, exist_ok=True)
  if version is None:
    version = (versions(export_dir) or [0])[-1] + 1
  final = os.path.join(export_dir, str(version))
  if os.path.exists(final):
    raise UsageError(f"--export_dir: version {final} already exists")
  staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
  try:
    with tempfile.TemporaryDirectory() as assets:
      labels_path = os.path.join(assets, LABELS_FILE)
      with open(labels_path, "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))
      module = build_module(model, class_names, image_size, labels_path)
      tf.saved_model.save(module, staging, signatures={
          "serving_default": module.serving_default.get_concrete_function(),
          "serving_bytes": module.serving_bytes.get_concrete_function()})
    os.chmod(staging, 0o755)  # mkdtemp makes it private; a server may run as another user.
    os.rename(staging, final)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  logging.info("exported version %d to %s", version, final)
  return final
