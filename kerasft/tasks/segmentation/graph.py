"""The TensorFlow side of semantic segmentation: the encoder's taps, the decoders, the
segmenter, its metrics, the tf.data pipeline of (image, mask) pairs with joint
augmentation, and the export's signatures.

The segmenter takes float32 RGB pixels [N, S, S, 3] (0..255) and gives per-pixel class
probabilities [N, S, S, C]. Its encoder is the backbone cut at the last layer of each
stride (1/4, 1/8, 1/16, 1/32 of the input side), one nested model whose outputs pass
through identity layers named `features_<stride>`: a frozen encoder's outputs are what the
feature cache stores (`kerasft.models.features`). The decoder is DeepLabV3+ (atrous spatial
pyramid pooling on the 1/16 features, joined with the 1/4 ones) or a semantic FPN (a
top-down pyramid summed at 1/4), both with separable convolutions (CPU-friendly).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerasft.core import _compat
from kerasft.core.errors import UsageError
from kerasft.data import pipeline
from kerasft.data.pipeline import decode_and_resize
from kerasft.models.backbones import strided_layers
from kerasft.models.features import TAPS
from kerasft.models.heads import Preprocess
from kerasft.tasks.segmentation.data import IGNORE

STRIDES = (4, 8, 16, 32)
WIDTH = 128  # the decoder's channels
DECODERS = ("deeplabv3plus", "fpn")


def encoder(backbone, decoder: str) -> tuple[keras.Model, dict[int, str]]:
  """(the backbone's multi-scale encoder, {stride: the layer tapped}) for `decoder`:
  DeepLabV3+ taps 1/4 and 1/16 (or the deepest), FPN every stride. A UsageError when the backbone's feature
  maps cannot be reached (a hub or SavedModel module) or its input is under 32 px."""
  size, model = backbone.image_size, backbone.model
  if size % 32:
    raise UsageError(f"--image_size: --task=segmentation needs a side divisible by 32, got "
                     f"{size}")
  found = strided_layers(model, size, STRIDES)
  if 4 not in found or len(found) < 2:
    raise UsageError(f"--model: {backbone.name} gives no 1/4 and deeper feature maps (found "
                     f"1/{', 1/'.join(map(str, sorted(found))) or 'none'}); "
                     "--task=segmentation needs a Keras Applications or keras:PATH backbone "
                     "whose layers reach 1/4 and 1/8..1/32 of the input side (hub: and "
                     "savedmodel: modules give only their outputs)")
  deep = 16 if 16 in found else max(found)
  strides = [4, deep] if decoder == "deeplabv3plus" else sorted(found)
  return keras.Model(model.input, [found[s].output for s in strides],
                     name=f"{model.name}_encoder"), {s: found[s].name for s in strides}


def _conv(x, filters: int, name: str, kernel: int = 1, rate: int = 1):
  """Conv (separable when kernel > 1) -> BatchNorm -> ReLU."""
  if kernel == 1:
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=name)(x)
  else:
    x = keras.layers.SeparableConv2D(filters, kernel, padding="same", dilation_rate=rate,
                                     use_bias=False, name=name)(x)
  x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # settles in an epoch
  return keras.layers.ReLU(name=f"{name}_relu")(x)


def _resize(x, side: int, name: str):
  return keras.layers.Resizing(side, side, interpolation="bilinear", name=name)(x)


def deeplabv3plus(features: dict, side: int):
  """DeepLabV3+'s decoder on {stride: tensor}: ASPP (1x1, three atrous 3x3 at rates 6, 12,
  18 scaled to the map's side, image pooling) on the deep map, upsampled to 1/4, joined
  with the 1/4 map reduced to 48 channels, two 3x3 convolutions. Returns [N, S/4, S/4, W]."""
  deep_stride = max(features)
  deep, deep_side = features[deep_stride], side // deep_stride
  branches = [_conv(deep, WIDTH, "aspp_1x1")]
  for rate in (6, 12, 18):
    scaled = max(1, round(rate * deep_side / 32))
    branches.append(_conv(deep, WIDTH, f"aspp_rate{rate}", 3, scaled))
  pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(deep)
  pooled = _conv(pooled, WIDTH, "aspp_pool_conv")
  branches.append(keras.layers.UpSampling2D(deep_side, name="aspp_pool_up")(pooled))
  x = keras.layers.Concatenate(name="aspp_concat")(branches)
  x = _conv(x, WIDTH, "aspp_project")
  x = _resize(x, side // 4, "decoder_up")
  low = _conv(features[4], 48, "decoder_low")
  x = keras.layers.Concatenate(name="decoder_concat")([x, low])
  x = _conv(x, WIDTH, "decoder_conv1", 3)
  return _conv(x, WIDTH, "decoder_conv2", 3)


def fpn(features: dict, side: int):
  """A semantic FPN on {stride: tensor}: 1x1 laterals to W channels, a top-down pathway
  (upsample and add), a 3x3 convolution per level, every level upsampled to 1/4 and summed.
  Returns [N, S/4, S/4, W]."""
  strides = sorted(features, reverse=True)
  top, levels = None, []
  for stride in strides:
    x = keras.layers.Conv2D(WIDTH, 1, name=f"fpn_lateral_{stride}")(features[stride])
    if top is not None:
      x = keras.layers.Add(name=f"fpn_add_{stride}")([x, keras.layers.UpSampling2D(
          top[1] // stride, interpolation="bilinear", name=f"fpn_up_{stride}")(top[0])])
    top = (x, stride)
    level = _conv(x, WIDTH, f"fpn_smooth_{stride}", 3)
    if stride > 4:
      level = keras.layers.UpSampling2D(stride // 4, interpolation="bilinear",
                                        name=f"fpn_to4_{stride}")(level)
    levels.append(level)
  return keras.layers.Add(name="fpn_sum")(levels) if len(levels) > 1 else levels[0]


def build_segmenter(backbone, n_classes: int, output, decoder: str = "deeplabv3plus",
                    dropout: float = 0.1) -> tuple[keras.Model, dict[int, str]]:
  """(the segmenter: raw pixels [N, S, S, 3] -> `output`'s probabilities [N, S, S, n_classes],
  {stride: the encoder's layer tapped}). The encoder runs in inference mode (BatchNorm
  statistics fixed)."""
  if decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
  enc, taps = encoder(backbone, decoder)
  size = backbone.image_size
  inputs = keras.Input((size, size, 3), dtype="float32", name="images")
  x = Preprocess(backbone.preprocess, name="preprocess")(inputs)
  _compat.pin_inference_mode(enc)
  maps = enc(x, training=False)
  maps = maps if isinstance(maps, (list, tuple)) else [maps]
  features = {s: keras.layers.Identity(name=f"{TAPS}{s}")(m) for s, m in zip(taps, maps)}
  x = (deeplabv3plus if decoder == "deeplabv3plus" else fpn)(features, size)
  if dropout:
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
  return keras.Model(inputs, output.last_layer(x, n_classes, size),
                     name=f"{backbone.name}_{decoder}"), taps


@keras.saving.register_keras_serializable(package="kerasft")
class PixelConfusion(keras.metrics.Metric):
  """Mean IoU ("iou", over the classes present in the truth or the prediction, as Keras'
  MeanIoU) or pixel accuracy ("accuracy") of sparse masks against per-pixel probabilities,
  pixels labelled 255 left out; the class count is read from the predictions (at most 255)."""

  def __init__(self, kind: str = "iou", name: str | None = None, **kwargs):
    super().__init__(name=name or ("mean_iou" if kind == "iou" else "pixel_accuracy"), **kwargs)
    self.kind = kind
    self.matrix = self.add_variable((IGNORE, IGNORE), "zeros", dtype="float32", name="matrix")

  def update_state(self, y_true, y_pred, sample_weight=None):
    true = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    predicted = tf.reshape(tf.argmax(y_pred, axis=-1, output_type=tf.int32), [-1])
    keep = tf.not_equal(true, IGNORE)
    cells = tf.boolean_mask(true, keep) * IGNORE + tf.boolean_mask(predicted, keep)
    counts = tf.math.bincount(cells, minlength=IGNORE * IGNORE, maxlength=IGNORE * IGNORE,
                              dtype=tf.float32)
    self.matrix.assign_add(tf.reshape(counts, (IGNORE, IGNORE)))

  def result(self):
    hits = tf.linalg.diag_part(self.matrix)
    if self.kind == "accuracy":
      return tf.math.divide_no_nan(tf.reduce_sum(hits), tf.reduce_sum(self.matrix))
    union = tf.reduce_sum(self.matrix, 0) + tf.reduce_sum(self.matrix, 1) - hits
    present = tf.cast(union > 0, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.math.divide_no_nan(hits, union)),
                                 tf.reduce_sum(present))

  def reset_state(self):
    self.matrix.assign(tf.zeros_like(self.matrix))

  def get_config(self):
    return {**super().get_config(), "kind": self.kind}


def decode_pair(image, mask, size: int):
  """(float32 pixels [S, S, 3] 0..255, bilinear; uint8 mask [S, S], nearest) of one encoded
  image (or its path) and its grayscale PNG mask."""

  return decode_and_resize(image, size), resize_mask(tf.io.decode_png(mask, channels=1), size)


def resize_mask(mask, size: int):
  """uint8 [S, S] of a mask [H, W, 1] resized by nearest neighbour."""
  out = tf.image.resize(mask, (size, size), method="nearest")
  return tf.reshape(tf.cast(out, tf.uint8), (size, size))


def augment_pair(image, mask, seed, names: tuple, strength: float):
  """One pair transformed together (`kerasft.data.pipeline.random_warp` from `seed` [2]):
  flip, zoom, translate move both (padding is ignored in the mask), contrast changes the
  image only."""
  size = image.shape[0]
  w = pipeline.random_warp(seed, size, names, strength)
  marked = pipeline.warp(tf.cast(mask[..., None], tf.int32) + 1, w, "nearest")  # 0: padding
  mask = tf.cast(tf.where(marked[..., 0] == 0, IGNORE, marked[..., 0] - 1), tf.uint8)
  image = pipeline.warp(image, w)
  if "contrast" in names:
    image = pipeline.contrast(image, w)
  image.set_shape((size, size, 3))
  mask.set_shape((size, size))
  return image, mask


def pairs(files, size: int, batch_size: int, shuffle: bool = False, seed: int = 0,
          augment: tuple = (), strength: float = 0.1, cache: bool = True):
  """Batched (float32 pixels [B, S, S, 3], uint8 masks [B, S, S]) of segmentation
  `files` (inputs: image paths or bytes; labels: grayscale PNG masks), decoded in parallel,
  cached in memory when `cache`, reshuffled every epoch with `shuffle`, each pair
  augmented with `augment` (`augment_pair`, seeded per epoch and example)."""
  n = len(files.inputs)
  encoded = n and isinstance(files.inputs[0], bytes)
  ds = tf.data.Dataset.from_tensor_slices((
      tf.constant(files.inputs, tf.string) if n else tf.zeros([0], tf.string),
      tf.constant(files.labels, tf.string) if n else tf.zeros([0], tf.string)))
  ds = ds.map(lambda image, mask: decode_pair(image if encoded else tf.io.read_file(image),
                                              mask, size),
              num_parallel_calls=tf.data.AUTOTUNE)
  if cache:
    ds = ds.cache()
  if shuffle:
    ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
  if augment:
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        lambda pair, s: augment_pair(pair[0], pair[1], s, augment, strength),
        num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def masks(files, size: int) -> np.ndarray:
  """uint8 [N, S, S] of `files`' masks at the model's side (nearest neighbour)."""
  if not files.labels:
    return np.zeros((0, size, size), np.uint8)
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(files.labels, tf.string)).map(
      lambda m: resize_mask(tf.io.decode_png(m, channels=1), size),
      num_parallel_calls=tf.data.AUTOTUNE).batch(256)
  return np.concatenate(list(ds.as_numpy_iterator()))


def at_size(probabilities, height, width):
  """Per-pixel outputs of one image's probabilities [S, S, C] at its own size [H, W]:
  (class ids [H, W] int32, probabilities [H, W, C]), bilinear."""
  scaled = tf.image.resize(probabilities, tf.stack([height, width]), method="bilinear")
  return tf.argmax(scaled, axis=-1, output_type=tf.int32), scaled
