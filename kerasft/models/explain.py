"""Why a model predicted what it did: Grad-CAM for image models, word occlusion for text
models.

`gradcam` (Selvaraju et al., ICCV 2017) weights the backbone's last convolutional feature
map by the mean gradient of the class's logit over it, keeps the positive part and scales
each map to 0..1; `overlay` draws it over the image. `word_occlusion` removes one word at a
time and measures how much the class's probability drops. (Gradient x input on the token
embeddings was tried first: a fine-tuned text classifier is saturated, its gradients are
tiny, and on a test set where one planted word decides the class it ranked that word
first on only 6-75% of the texts, where occlusion ranks it first on all.)
"""

from __future__ import annotations

import numpy as np

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
  """(preprocess layer, backbone, the layers after it) of a `kerasft.models.heads` classifier, or
  None when its backbone has no reachable feature map."""
  from kerasft.models import heads
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


GRADCAM_BATCH = 2  # images per gradient pass (MobileNet at 224 px: +770 MiB peak for 12 at once)


def gradcam(model, images: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
  """Grad-CAM maps [N, h, w] (0..1, the feature map's size) of `class_ids` [N] for float32
  pixels `images` [N, S, S, 3] through a `kerasft.models.heads` classifier."""
  return gradcam_function(model)(images, class_ids)


def gradcam_function(model):
  """`gradcam` for one model, its graph built once: f(images, class_ids) -> maps."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  parts = _parts(model)
  if parts is None:
    raise ValueError(f"{model.name} has no reachable convolutional feature map")
  preprocess, backbone, after = parts
  inner = keras.Model(backbone.inputs, [feature_map_layer(backbone).output, backbone.output])

  def maps(images, class_ids):
    """Grad-CAM of a batch, eager: a traced gradient graph costs more than it saves here."""
    with tf.GradientTape() as tape:
      fmap, pooled = inner(preprocess(images), training=False)
      score = tf.gather(_logits(after, pooled), class_ids, axis=1, batch_dims=1)
    weights = tf.reduce_mean(tape.gradient(score, fmap), axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))

  def run(images, class_ids):
    """A few images at a time: the tape holds every activation of its batch."""
    cam = np.concatenate([maps(tf.constant(images[i:i + GRADCAM_BATCH], tf.float32),
                               tf.constant(class_ids[i:i + GRADCAM_BATCH], tf.int32)).numpy()
                          for i in range(0, len(images), GRADCAM_BATCH)])
    top = cam.reshape(len(cam), -1).max(-1).reshape(-1, 1, 1)
    return np.where(top > 0, cam / np.maximum(top, 1e-12), 0.0).astype(np.float32)
  return run


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


def word_occlusion(predict, texts: list[str], class_ids, max_spans: int = 6,
                   batch_size: int = 128) -> list[list[tuple[str, float]]]:
  """Per text, (word, how much the class's log-probability drops when the word is removed:
  a log keeps a confident model's differences apart) for each whitespace-separated word;
  predict(texts) -> probabilities [N, C]. A text of more than `max_spans` words is cut
  into that many spans of neighbouring words, removed together (each word of a span gets
  its drop), so the cost is bounded: all variants of all texts go through `predict` in
  batches of `batch_size`."""
  variants, spans = [], []
  for text in texts:
    words = text.split()
    width = max(1, -(-len(words) // max_spans))
    cuts = [(k, min(k + width, len(words))) for k in range(0, len(words), width)]
    spans.append((words, cuts, len(variants)))
    variants += [text] + [" ".join(words[:a] + words[b:]) for a, b in cuts]
  p = np.concatenate([np.asarray(predict(variants[i:i + batch_size]), np.float64)
                      for i in range(0, len(variants), batch_size)] or [np.zeros((0, 1))])
  out = []
  for (words, cuts, first), class_id in zip(spans, class_ids):
    logp = np.log(np.clip(p[first:first + len(cuts) + 1, class_id], 1e-30, 1))
    out.append([(words[w], float(logp[0] - logp[k + 1]))
                for k, (a, b) in enumerate(cuts) for w in range(a, b)])
  return out
