"""Why a model predicted what it did: Grad-CAM for image models, gradient x input on the
token embeddings for text models.

`gradcam` (Selvaraju et al., ICCV 2017) weights the backbone's last convolutional feature
map by the mean gradient of the class's logit over it, keeps the positive part and scales
each map to 0..1; `overlay` draws it over the image. `token_attributions` multiplies the
gradient of the class's log-probability by the token embeddings it flows into (summed over
the embedding), and `words` adds sub-word scores up into words.
"""

from __future__ import annotations

import numpy as np

WORDPIECE_CONTINUATION, SENTENCEPIECE_START = "##", "\u2581"


def feature_map_layer(backbone):
  """The backbone's last layer with a 4-D output (its last convolutional feature map), or
  None when the backbone has no reachable layers (a TF Hub module)."""
  import keras  # pylint: disable=g-import-not-at-top
  if not isinstance(backbone, keras.Model):
    return None
  maps = []
  for layer in backbone.layers:
    try:
      if len(layer.output.shape) == 4:
        maps.append(layer)
    except (AttributeError, ValueError):  # a layer called more than once, or no output
      continue
  return maps[-1] if maps else None


def _parts(model):
  """(preprocess layer, backbone, the layers after it) of a `kerasft.heads` classifier, or
  None when its backbone has no reachable feature map."""
  from kerasft import heads  # pylint: disable=g-import-not-at-top
  try:
    backbone = heads.backbone_of(model)
  except ValueError:
    return None
  if feature_map_layer(backbone) is None:
    return None
  after = model.layers[model.layers.index(backbone) + 1:]
  return model.get_layer("preprocess"), backbone, after


def can_gradcam(model) -> bool:
  """Whether `gradcam` can reach a feature map of `model`."""
  return _parts(model) is not None


def _logits(layers, x):
  """Applies the head `layers` in inference mode, the last Dense layer without its
  activation (logits, not probabilities; a regression head's rescaling still applies)."""
  import keras  # pylint: disable=g-import-not-at-top
  last = max(i for i, l in enumerate(layers) if hasattr(l, "kernel"))
  for i, layer in enumerate(layers):
    x = (keras.ops.matmul(x, layer.kernel) + layer.bias if i == last
         else layer(x, training=False))
  return x


def gradcam(model, images: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
  """Grad-CAM maps [N, h, w] (0..1, the feature map's size) of `class_ids` [N] for float32
  pixels `images` [N, S, S, 3] through a `kerasft.heads` classifier."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  parts = _parts(model)
  if parts is None:
    raise ValueError(f"{model.name} has no reachable convolutional feature map")
  preprocess, backbone, after = parts
  inner = keras.Model(backbone.inputs, [feature_map_layer(backbone).output, backbone.output])
  with tf.GradientTape() as tape:
    fmap, pooled = inner(preprocess(tf.constant(images)), training=False)
    logits = _logits(after, pooled)
    score = tf.gather(logits, tf.constant(class_ids, tf.int32), axis=1, batch_dims=1)
  grads = tape.gradient(score, fmap)
  weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
  cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
  top = cam.reshape(len(cam), -1).max(-1).reshape(-1, 1, 1)
  return np.where(top > 0, cam / np.maximum(top, 1e-12), 0.0).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """`image` [S, S, 3] (0..255) with `heatmap` [h, w] (0..1) resized over it in the jet
  colormap; uint8 [S, S, 3]."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  size = image.shape[:2][::-1]
  heat = np.asarray(Image.fromarray((heatmap * 255).astype(np.uint8)).resize(
      size, Image.BILINEAR), np.float32) / 255
  colors = matplotlib.colormaps["jet"](heat)[..., :3] * 255
  return np.clip((1 - alpha) * image + alpha * colors, 0, 255).astype(np.uint8)


def token_attributions(model, inputs: dict, class_ids: np.ndarray,
                       embedding) -> np.ndarray:
  """Gradient x input [N, L] of the log-probability of `class_ids` with respect to the
  output of `embedding` (the encoder's token embedding layer) for packed `inputs`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  captured = []
  with tf.GradientTape() as tape:
    original = embedding.call

    def watched(*args, **kwargs):
      out = original(*args, **kwargs)
      tape.watch(out)
      captured.append(out)
      return out
    embedding.call = watched
    try:
      probabilities = model({k: tf.constant(v) for k, v in inputs.items()}, training=False)
    finally:
      del embedding.call  # the class's own call again
    score = tf.math.log(tf.gather(probabilities, tf.constant(class_ids, tf.int32), axis=1,
                                  batch_dims=1) + 1e-12)
  grads = tape.gradient(score, captured[0])
  return tf.reduce_sum(grads * captured[0], axis=-1).numpy()


def words(tokens: list[str], scores: np.ndarray, special: set) -> list[tuple[str, float]]:
  """Sub-word `tokens` and their `scores` grouped into (word, summed score), skipping the
  `special` tokens: "##x" (WordPiece) continues a word, "\u2581x" (SentencePiece) starts one."""
  out = []
  sentencepiece = any(t.startswith(SENTENCEPIECE_START) for t in tokens)
  for token, score in zip(tokens, scores):
    if token in special:
      continue
    if token.startswith(WORDPIECE_CONTINUATION) and out:
      out[-1] = (out[-1][0] + token[2:], out[-1][1] + float(score))
    elif sentencepiece and not token.startswith(SENTENCEPIECE_START) and out:
      out[-1] = (out[-1][0] + token, out[-1][1] + float(score))
    else:
      out.append((token.lstrip(SENTENCEPIECE_START), float(score)))
  return out
