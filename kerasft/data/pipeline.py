"""Examples into tf.data pipelines: decoding and resizing, caching, shuffling, MixUp and
CutMix, and the training-only augmentation layers.

`decode_and_resize` is the one function that turns encoded bytes into model input; the
export's `serving_bytes` signature uses it too, so serving sees exactly what training saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, NamedTuple


from kerasft.data.examples import Examples, encoded_bytes

# Decoded training images are cached in memory when they take at most this many bytes.
MEMORY_CACHE_BYTES = 2 << 30
STREAM_SHUFFLE_BUFFER = 10_000  # streamed records that do not fit in memory shuffle this many


def _streamed(files: Examples):
  """(encoded image, row) for each example of streamed `files`, in their order: the
  streams' records filtered to `files` (a record drawn twice by oversampling comes twice)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rows: dict = {}
  for row, key in enumerate(files.inputs):
    rows.setdefault(key, []).append(row)
  table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant(list(rows), tf.string), tf.range(len(rows), dtype=tf.int64)), -1)
  per_key = tf.ragged.constant(list(rows.values()), dtype=tf.int64)
  ds = files.streams[0].dataset()
  for stream in files.streams[1:]:
    ds = ds.concatenate(stream.dataset())
  ds = ds.map(lambda key, image: (table.lookup(key), image)).filter(lambda k, _: k >= 0)
  return ds.flat_map(lambda k, image: tf.data.Dataset.from_tensor_slices(per_key[k]).map(
      lambda row: (image, row)))


def encoded_inputs(files: Examples):
  """The encoded bytes of each example, in order: read from files, held, or streamed."""
  if files.streams:
    for image, _ in _streamed(files).as_numpy_iterator():
      yield image
    return
  for item in files.inputs:
    yield encoded_bytes(item)


@dataclasses.dataclass
class Dataset:
  """What training needs: batched (model inputs, targets) pipelines and class names.

  make_inputs(files, batch_size): an unshuffled, uncached pipeline of other examples in
  the same form (feature caching uses it); targets(files): the training targets of its
  rows, in order (default: `Examples.targets`; a tagger's are per token).
  """
  train: "tf.data.Dataset"  # noqa: F821
  val: "tf.data.Dataset"  # noqa: F821
  class_names: list[str]
  train_files: Examples
  val_files: Examples
  make_inputs: Callable
  targets: Callable = Examples.targets
  # bucketed(files, batch_size) -> (batches (inputs, _) of `files` in a cheaper order, that
  # order): feature extraction of texts sorted by length, each batch cut to its longest
  bucketed: Callable | None = None


RESIZE_MODES = ("squash", "crop", "pad")


def decode_and_resize(image_bytes, image_size: int, resize: str = "squash"):
  """Decodes one JPEG/PNG/BMP/GIF (first frame) to float32 RGB [S, S, 3], pixels 0..255.

  Grayscale and RGBA images become RGB. resize: "squash" scales to the square ignoring the
  aspect ratio; "crop" scales the shorter side to S and keeps the central square; "pad"
  scales the longer side to S and pads with black. Bilinear interpolation.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
  if resize in ("crop", "pad"):  # scale one side to S, then crop or pad around the centre
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    if resize == "crop":
      scaled = tf.math.ceil(shape * image_size / tf.reduce_min(shape))
    else:
      scaled = tf.minimum(tf.math.floor(shape * image_size / tf.reduce_max(shape)), image_size)
    image = tf.image.resize(image, tf.cast(scaled, tf.int32), method="bilinear")
    image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
  else:
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
  image.set_shape((image_size, image_size, 3))
  return image


def make_pipeline(files: Examples, image_size: int, batch_size: int, shuffle: bool = False,
                  seed: int = 0, cache: bool = True, resize: str = "squash",
                  cache_dir: str = ""):
  """A tf.data pipeline of (float32 pixels [B, S, S, 3], float32 targets [B, C]).

  Reads files, held encoded images or streamed records (`RecordStream`); decodes in
  parallel; caches decoded images in files under `cache_dir` when given, else in memory
  when `cache` and they fit (`MEMORY_CACHE_BYTES`); reshuffles every epoch when `shuffle`
  (all of them when cached in memory, else a bounded buffer of decoded images from the
  file cache, or before decoding: all paths, or `STREAM_SHUFFLE_BUFFER` records); batches
  and prefetches. Targets are `files.targets()`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  n = len(files.inputs)
  targets = tf.constant(files.targets())
  in_memory = cache and not cache_dir and n * image_size * image_size * 3 * 4 <= MEMORY_CACHE_BYTES
  if files.streams:
    ds = _streamed(files).map(lambda image, row: (image, tf.gather(targets, row)))
  else:
    sources = tf.constant(files.inputs, tf.string) if n else tf.zeros([0], tf.string)
    ds = tf.data.Dataset.from_tensor_slices((sources, targets))
  if shuffle and not (in_memory or cache_dir):  # shuffle before decoding: paths or records
    ds = ds.shuffle(min(n, STREAM_SHUFFLE_BUFFER) if files.streams else n, seed=seed,
                    reshuffle_each_iteration=True)
  encoded = files.streams or (n and isinstance(files.inputs[0], bytes))
  ds = ds.map(lambda image, target: (
      decode_and_resize(image if encoded else tf.io.read_file(image), image_size, resize),
      target), num_parallel_calls=tf.data.AUTOTUNE)
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
    ds = ds.cache(os.path.join(cache_dir, _cache_key(files, image_size, resize)))
  elif in_memory:
    ds = ds.cache()
  if shuffle and (in_memory or cache_dir):  # decoded images: all of them, or a bounded buffer
    ds = ds.shuffle(n if in_memory else min(n, STREAM_SHUFFLE_BUFFER), seed=seed,
                    reshuffle_each_iteration=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _cache_key(files: Examples, image_size: int, resize: str) -> str:
  """A file name that changes whenever the cached images would: sources, size, resize."""
  digest = hashlib.sha256(f"{image_size}:{resize}:{len(files.inputs)}".encode())
  for source in files.inputs:
    digest.update(source if isinstance(source, bytes) else source.encode())
    digest.update(b"\0")
  digest.update(files.targets().tobytes())
  return f"images-{image_size}-{resize}-{digest.hexdigest()[:16]}"


def mix(ds, mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0):
  """Mixes each batch of (pixels, targets) with a shuffled copy of itself: MixUp (blend
  images by a Beta(mixup, mixup) weight) or CutMix (paste a box whose area is a
  Beta(cutmix, cutmix) share); with both, each batch uses one of them at random. Targets
  mix in proportion. Seeded, stateless random numbers."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def beta(alpha, rng_seed):
    a = tf.random.stateless_gamma([], rng_seed, alpha=alpha)
    b = tf.random.stateless_gamma([], rng_seed + [0, 1], alpha=alpha)
    return a / (a + b)

  def apply(seeds, images, targets):
    seeds = tf.reshape(seeds, [4, 2])
    n, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    perm = tf.argsort(tf.random.stateless_uniform([n], seeds[0]))
    other_images, other_targets = tf.gather(images, perm), tf.gather(targets, perm)
    use_cutmix = tf.constant(cutmix > 0)
    if mixup > 0 and cutmix > 0:
      use_cutmix = tf.random.stateless_uniform([], seeds[1]) < 0.5

    def mixup_batch():
      lam = beta(mixup, seeds[2]) if mixup > 0 else tf.constant(1.0)
      return lam * images + (1 - lam) * other_images, lam

    def cutmix_batch():
      lam = beta(cutmix, seeds[2]) if cutmix > 0 else tf.constant(1.0)
      cut = tf.sqrt(1.0 - lam)
      ch = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32)
      cw = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32)
      centre = tf.random.stateless_uniform([2], seeds[3])
      cy, cx = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32), tf.cast(
          centre[1] * tf.cast(w, tf.float32), tf.int32)
      y0, y1 = tf.maximum(cy - ch // 2, 0), tf.minimum(cy + ch // 2, h)
      x0, x1 = tf.maximum(cx - cw // 2, 0), tf.minimum(cx + cw // 2, w)
      rows = tf.logical_and(tf.range(h) >= y0, tf.range(h) < y1)
      cols = tf.logical_and(tf.range(w) >= x0, tf.range(w) < x1)
      box = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), images.dtype)[None, :, :,
                                                                                  None]
      area = tf.reduce_mean(box)  # the pasted share, after clipping at the borders
      return images * (1 - box) + other_images * box, 1.0 - area

    mixed, lam = tf.cond(use_cutmix, cutmix_batch, mixup_batch)
    return mixed, lam * targets + (1 - lam) * other_targets

  seeds = tf.data.Dataset.random(seed=seed).batch(8)
  return tf.data.Dataset.zip(seeds, ds).map(
      lambda s, batch: apply(s, *batch), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
          tf.data.AUTOTUNE)


def pipelines(train: Examples, val: Examples, image_size: int, batch_size: int,
              seed: int = 0, resize: str = "squash", cache_dir: str = "",
              mixup: float = 0.0, cutmix: float = 0.0) -> Dataset:
  """Wraps indexed training and validation images in their tf.data pipelines; MixUp and
  CutMix (`mix`) apply to the training pipeline only."""
  train_ds = make_pipeline(train, image_size, batch_size, shuffle=True, seed=seed,
                           resize=resize, cache_dir=cache_dir)
  if mixup or cutmix:
    train_ds = mix(train_ds, mixup, cutmix, seed)
  return Dataset(train=train_ds,
                 val=make_pipeline(val, image_size, batch_size, resize=resize,
                                   cache_dir=cache_dir),
                 class_names=train.class_names, train_files=train, val_files=val,
                 make_inputs=lambda files, batch: make_pipeline(files, image_size, batch,
                                                                cache=False, resize=resize))


def augmentation(names: tuple[str, ...], strength: float):
  """Keras preprocessing layers (a `keras.Sequential`) that change images only in training, for the training model
  (never the export): flip (horizontal), rotate, zoom, contrast, translate, each at
  `strength` (a fraction of a full turn, of the size, of the contrast range)."""
  import keras  # pylint: disable=g-import-not-at-top
  make = {
      "flip": lambda: keras.layers.RandomFlip("horizontal", name="augment_flip"),
      "rotate": lambda: keras.layers.RandomRotation(strength, name="augment_rotate"),
      "zoom": lambda: keras.layers.RandomZoom(strength, name="augment_zoom"),
      "contrast": lambda: keras.layers.RandomContrast(strength, value_range=(0, 255),
                                                      name="augment_contrast"),
      "translate": lambda: keras.layers.RandomTranslation(strength, strength,
                                                          name="augment_translate"),
  }
  return keras.Sequential([make[n]() for n in names], name="augmentation")


class Warp(NamedTuple):
  """One random draw of a joint augmentation (`random_warp`): what `warp` does to an image
  and to what moves with it (a mask, boxes). Tensors; `moves`: whether it scales or
  shifts at all."""
  flip: object  # bool: mirror left-right (first)
  side: object  # int32: the side the image is scaled to
  at: object  # int32: where the scaled image sits on the canvas (both axes)
  offset: object  # int32 [2]: the (row, column) the crop of the canvas starts at
  canvas: object  # int32: the padded canvas' side
  factor: object  # float32: the contrast factor (1: none)
  moves: bool


def random_warp(seed, size: int, names: tuple, strength: float) -> Warp:
  """A `Warp` of an [S, S] image drawn with stateless randomness from `seed` [2]: flip
  (horizontal), zoom (scale by 1 +- strength, then crop or pad back to S), translate (shift
  by up to strength of the side), contrast (factor 1 +- strength), as `names` ask."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seeds = tf.random.experimental.stateless_split(seed, 5)
  flip = ("flip" in names) & (tf.random.stateless_uniform([], seeds[0]) < 0.5)
  scale = 1.0 + (tf.random.stateless_uniform([], seeds[1], -strength, strength)
                 if "zoom" in names else 0.0)
  side = tf.cast(tf.round(size * scale), tf.int32)
  shift = int(np.ceil(strength * size)) if "translate" in names else 0
  canvas = tf.maximum(side, size) + 2 * shift
  offset = tf.random.stateless_uniform([2], seeds[2], 0, canvas - size + 1, tf.int32)
  factor = (tf.random.stateless_uniform([], seeds[3], 1 - strength, 1 + strength)
            if "contrast" in names else tf.constant(1.0))
  return Warp(flip, side, (canvas - side) // 2, offset, canvas, factor,
              "zoom" in names or "translate" in names)


def warp(x, w: Warp, method: str = "bilinear"):
  """x [S, S, C] flipped, scaled, padded with zeros and cropped back to S as `w` says
  (`method`: the resize's interpolation; "nearest" for class ids). No contrast change."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  size, channels = x.shape[0], x.shape[-1]
  x = tf.cond(w.flip, lambda: tf.reverse(x, [1]), lambda: x)
  if w.moves:
    x = tf.image.resize(x, (w.side, w.side), method=method)
    x = tf.image.pad_to_bounding_box(x, w.at, w.at, w.canvas, w.canvas)
    x = tf.slice(x, [w.offset[0], w.offset[1], 0], [size, size, channels])
  return x


def contrast(image, w: Warp):
  """`image` (pixels 0..255) with its contrast scaled by `w.factor` around its mean."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
  return tf.clip_by_value((image - mean) * w.factor + mean, 0.0, 255.0)
