"""What a SavedModel of a Keras model holds: a `tf.Module` tracking only the model's
variables (`[v.value for v in model.variables]`) and `tf.function` signatures that call the
Keras model, with a warm-up input per signature.

No Keras object and no optimizer state enter the saved object graph, so TensorFlow's
session-based loader (TF Serving, `saved_model_cli run`) restores it, and the variables
take the parameters' bytes once (`model.export()` stores them twice). Image models get
three signatures: `serving_default` (float32 pixels 0..255), `serving_bytes` (encoded
images, decoded and resized exactly as in training: `kerasft.data.pipeline`) and
`serving_example` (tf.train.Examples with `image/encoded`); text models one taking raw
strings. A task with outputs of its own builds its signatures from these parts.
`kerasft.serving.versions` writes them as a TF Serving version.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from kerasft.core import _compat
from kerasft.core.files import LABELS
from kerasft.data import pipeline


@dataclasses.dataclass
class Signatures:
  """What one export serves: the tf.Module (its signature functions are attributes),
  each signature's inputs described for the model card, and a warm-up input per signature
  ({signature: (input key, value)})."""
  module: tf.Module
  descriptions: dict
  warmup: dict


def variables_module(model, labels_path: str) -> tf.Module:
  """A tf.Module that tracks only `model`'s variables and the labels assets (labels.txt
  and the other files beside it: several heads' labels_HEAD.txt)."""
  module = tf.Module()
  module.model_variables = [v.value for v in model.variables]
  module.labels_asset = tf.saved_model.Asset(labels_path)
  folder = os.path.dirname(labels_path)
  module.more_labels = [tf.saved_model.Asset(os.path.join(folder, name))
                        for name in sorted(os.listdir(folder)) if name != LABELS]
  return module


def image_signatures(model, class_names: list[str], image_size: int, labels_path: str,
                     outputs: Callable, resize: str = "squash") -> Signatures:
  """The three image signatures of `model` (raw pixels -> its output): pixels, encoded
  images (resized as `resize` says, as in training) and tf.train.Examples. outputs(result,
  class_names) gives the signature outputs (`Output.serving_outputs`)."""
  module = variables_module(model, labels_path)
  image_spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)

  @tf.function(input_signature=[
      tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
  def serving_default(images):
    return outputs(model(images, training=False), class_names)

  def classify_encoded(encoded):
    """Encoded images through serving_default's graph: the model is traced once."""
    return serving_default(tf.map_fn(
        lambda b: pipeline.decode_and_resize(b, image_size, resize), encoded,
        fn_output_signature=image_spec))

  return image_inputs(module, image_size, f"[N, {image_size}, {image_size}, 3]",
                      serving_default, classify_encoded)


def image_inputs(module: tf.Module, image_size: int, pixels: str, serving_default: Callable,
                 from_encoded: Callable) -> Signatures:
  """`Signatures` of an image `module` given its `serving_default` (float32 pixels,
  `pixels` describing their shape) and `from_encoded` (encoded images [N] -> the same
  outputs): serving_bytes and serving_example are made from it; a gray image warms each up."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  def serving_bytes(image_bytes):
    return from_encoded(image_bytes)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serving_example(examples):
    return from_encoded(tf.io.parse_example(
        examples, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})["image/encoded"])

  module.serving_default, module.serving_bytes = serving_default, serving_bytes
  module.serving_example = serving_example
  gray = np.full((image_size, image_size, 3), 128, np.uint8)
  return Signatures(module, {
      "serving_default": {"images": f"float32 {pixels}, RGB 0..255"},
      "serving_bytes": {"image_bytes": "string [N], encoded image"},
      "serving_example": {"examples": "string [N], tf.train.Example with image/encoded"}}, {
          "serving_default": ("images", gray[None].astype(np.float32)),
          "serving_bytes": ("image_bytes", [_png(gray)]),
          "serving_example": ("examples", [image_example(_png(gray))])})


def text_signatures(model, preprocessor, class_names: list[str], labels_path: str,
                    outputs: Callable) -> Signatures:
  """`serving_default` of a text model (packed token inputs -> its output) taking raw
  strings `text` [None]: the preset's `preprocessor` tokenizes and packs in the graph
  (tensorflow-text ops), and its resources (a SentencePiece model) are tracked."""
  module = variables_module(model, labels_path)
  module.tokenizer_resources = _compat.capturable_resources(preprocessor)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
  def serving_default(text):
    packed = preprocessor(text)
    inputs = {t.name: tf.cast(packed[t.name], t.dtype) for t in model.inputs}
    return outputs(model(inputs, training=False), class_names)

  module.serving_default = serving_default
  return Signatures(module, {"serving_default": {"text": "string [N], raw text"}},
                    {"serving_default": ("text", ["a warm-up sentence"])})


def _png(pixels: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def image_example(encoded: bytes) -> bytes:
  """A serialized tf.train.Example with `image/encoded`, as `serving_example` takes."""
  feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
