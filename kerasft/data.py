"""Labelled images into one tf.data pipeline; image folders.

`Examples` is an indexed split from any source (`kerasft.sources` reads CSV, TFRecord,
TFDS and text sources into it). This module indexes image folders: one sub-folder per
class (`cats/`, `dogs/`, ...), or split folders `train/` and `validation/` (or `val/`) that
each hold class sub-folders; a `test/` folder is never trained on. Every image is decoded
once up front (`readable`), so a bad one is found (and skipped, or with --strict_data
refused) before training starts, never in the middle of an epoch. `decode_and_resize` is
the one function that turns encoded bytes into model input; the export's `serving_bytes`
signature uses it too, so serving sees exactly what training saw. `make_pipeline` and
`mix` (MixUp, CutMix) build the training pipeline.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
from typing import Callable, Optional

import numpy as np
from absl import logging

from kerasft.errors import UsageError
from kerasft.tasks.outputs import Output

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VALIDATION_FOLDERS = ("validation", "val")
# Decoded training images are cached in memory when they take at most this many bytes.
MEMORY_CACHE_BYTES = 2 << 30
PROGRESS_FROM = 20_000  # checking this many images or records shows a progress bar
STREAM_SHUFFLE_BUFFER = 10_000  # streamed records that do not fit in memory shuffle this many


@dataclasses.dataclass
class Examples:
  """An indexed split: its examples (images or texts) and their labels.

  inputs: image file paths, encoded images (bytes) for records from TFRecord files and
  TFDS, or (text models) the texts.
  labels: per example, its class id (multiclass), a list of class ids (multilabel) or a list
  of float targets (regression). class_names: the classes, or the regression targets'
  names. output: the kind of labels (`kerasft.tasks.outputs`). names: how messages name
  each example (default: its input).
  """
  inputs: list
  labels: list
  class_names: list[str]
  output: Output = dataclasses.field(default_factory=Output)
  names: Optional[list[str]] = None
  streams: tuple = ()  # RecordStreams the records are read from (then inputs are their keys)
  problems: Optional[list] = None  # per example, why it is unusable (None: fine), if known

  def name(self, i: int) -> str:
    return self.names[i] if self.names else str(self.inputs[i])

  def subset(self, idx) -> "Examples":
    """The examples at positions `idx`, in that order (for streamed records, positions
    must ascend: records are read in their stream's order)."""
    idx = list(idx)
    if self.streams and any(b < a for a, b in zip(idx, idx[1:])):
      raise ValueError("streamed records can only be taken in their order")
    return dataclasses.replace(
        self, inputs=[self.inputs[i] for i in idx], labels=[self.labels[i] for i in idx],
        names=[self.names[i] for i in idx] if self.names else None,
        problems=[self.problems[i] for i in idx] if self.problems is not None else None)

  def __add__(self, other: "Examples") -> "Examples":
    if self.streams or other.streams:
      raise ValueError("streamed records cannot be concatenated; use each part on its own")
    names = None
    if self.names or other.names:
      names = [self.name(i) for i in range(len(self.inputs))] + [
          other.name(i) for i in range(len(other.inputs))]
    return dataclasses.replace(self, inputs=self.inputs + other.inputs,
                               labels=self.labels + other.labels, names=names)

  def targets(self) -> np.ndarray:
    """float32 [N, C]: one-hot (multiclass), multi-hot (multilabel) or the targets."""
    return self.output.targets(self.labels, len(self.class_names))


@dataclasses.dataclass(frozen=True)
class RecordStream:
  """Where records are read from, always in the same order, as (key, encoded image):
  TFRecord `files` (key "FILE#i") or a TFDS split (key "NAME[SPLIT]#i"). Training and
  evaluation stream them instead of holding every encoded image in memory."""
  image_key: str
  files: tuple = ()
  tfds: str = ""  # TFDS' name (NAME/CONFIG[:VERSION])
  data_dir: str = ""
  split: str = ""
  key_prefix: str = ""  # for TFDS: "NAME[SPLIT]#"

  def dataset(self):
    """A tf.data pipeline of (key string, encoded image bytes)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self.files:
      spec = {self.image_key: tf.io.FixedLenFeature([], tf.string, default_value="")}

      def records(path):
        return tf.data.TFRecordDataset(path).enumerate().map(lambda i, record: (
            tf.strings.join([path, "#", tf.strings.as_string(i)]),
            tf.io.parse_single_example(record, spec)[self.image_key]))
      return tf.data.Dataset.from_tensor_slices(list(self.files)).flat_map(records)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(self.tfds, data_dir=self.data_dir or None)
    ds = builder.as_dataset(split=self.split, shuffle_files=False,
                            decoders={self.image_key: tfds.decode.SkipDecoding()})
    return ds.enumerate().map(lambda i, example: (
        tf.strings.join([self.key_prefix, tf.strings.as_string(i)]), example[self.image_key]))


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


def encoded_bytes(item) -> bytes:
  """An encoded image: held (bytes) or read from its file (a path)."""
  if isinstance(item, bytes):
    return item
  with open(item, "rb") as f:
    return f.read()


@dataclasses.dataclass
class Dataset:
  """What training needs: batched (model inputs, targets) pipelines and class names.

  make_inputs(files, batch_size): an unshuffled, uncached pipeline of other examples in
  the same form (feature caching uses it). validation_view: set by `kerasft.fit.run` when
  the backbone stayed frozen and the head trained on cached features: (head model, cached
  validation features), which give the model's validation outputs without another pass
  through the backbone.
  """
  train: "tf.data.Dataset"  # noqa: F821
  val: "tf.data.Dataset"  # noqa: F821
  class_names: list[str]
  train_files: Examples
  val_files: Examples
  make_inputs: Callable
  validation_view: Optional[tuple] = None


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


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_class_folder(folder: str, flag: str, class_names: Optional[list[str]] = None
                      ) -> Examples:
  """Indexes `folder`/<class>/**/<image>; class names are the sorted sub-folder names.

  class_names: when given (a validation folder), the folder's classes must be among them
  and labels index into them.
  """
  if not os.path.isdir(folder):
    raise UsageError(f"--{flag}: folder {folder} does not exist; pass a folder with one "
                     "sub-folder per class")
  found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
  if not found:
    raise UsageError(f"--{flag}: {folder} has no class sub-folders; put each class's images "
                     "in a sub-folder named after the class")
  if class_names is None:
    class_names = found
  elif set(found) - set(class_names):
    raise UsageError(f"--{flag}: {folder} has classes {sorted(set(found) - set(class_names))} "
                     f"that the training data does not have ({', '.join(class_names)})")
  paths, labels = [], []
  for name in found:
    label = class_names.index(name)
    for root, dirs, files in os.walk(os.path.join(folder, name)):
      dirs.sort()
      for f in sorted(files):
        if _is_image(f) and not f.startswith("."):
          paths.append(os.path.join(root, f))
          labels.append(label)
  if not paths:
    raise UsageError(f"--{flag}: {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                     "its class sub-folders")
  return Examples(paths, labels, list(class_names))


def unreadable_reasons(paths: list) -> list[Optional[str]]:
  """Decodes every file (or encoded image, bytes) once, in threads; per item None, or why
  it is not a readable image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def reason(path):
    if isinstance(path, bytes):
      path = io.BytesIO(path)
    try:
      with Image.open(path) as image:
        image.draft("RGB", (32, 32))  # JPEGs decode at a reduced scale: fast, still complete.
        image.load()
      return None
    except Exception as e:  # pylint: disable=broad-except
      return f"{type(e).__name__}: {e}"

  progress = None
  if len(paths) >= PROGRESS_FROM:  # a bar for data sets that take a while to check
    import keras  # pylint: disable=g-import-not-at-top
    logging.info("checking %d images", len(paths))
    progress = keras.utils.Progbar(len(paths), unit_name="image")
  reasons = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as ex:
    for r in ex.map(reason, paths):
      reasons.append(r)
      if progress and len(reasons) % 1000 == 0:
        progress.update(len(reasons))
  if progress:
    progress.update(len(reasons), finalize=True)
  return reasons


def check_images(paths: list[str], flag: str) -> None:
  """Raises a UsageError naming the first unreadable file among `paths`, if any."""
  failures = [f"{p} ({r})" for p, r in zip(paths, unreadable_reasons(paths)) if r]
  if failures:
    raise UsageError(f"--{flag}: {len(failures)} file(s) are not readable images, first: "
                     f"{failures[0]}; remove or fix them, or leave out --strict_data to skip "
                     "them")


def readable(files: Examples, flag: str, strict: bool = False) -> Examples:
  """`files` without the missing, corrupt, truncated or non-image ones, which are found by
  decoding every image once (see `without`)."""
  reasons = files.problems if files.problems is not None else unreadable_reasons(files.inputs)
  return without(files, reasons, flag, strict, "unreadable image(s)")


def without(files: Examples, reasons: list[Optional[str]], flag: str, strict: bool,
            what: str, with_reasons: bool = False) -> Examples:
  """`files` without the examples whose reason (why they cannot be used) is not None:
  skipped with one warning that counts them and names the first ten (`with_reasons`: and
  why), or with `strict` a UsageError naming the first. what: e.g. "unreadable image(s)"."""
  bad = [(files.name(i), r) for i, r in enumerate(reasons) if r]
  if not bad:
    return files
  if strict:
    raise UsageError(f"--strict_data: {len(bad)} {what} from --{flag}, first: {bad[0][0]} "
                     f"({bad[0][1]}); remove or fix them")
  logging.warning("skipping %d %s from --%s: %s%s", len(bad), what, flag,
                  ", ".join(f"{n} ({r})" if with_reasons else n for n, r in bad[:10]),
                  " ..." if len(bad) > 10 else "")
  return files.subset([i for i, r in enumerate(reasons) if r is None])


def oversampled(files: Examples, seed: int) -> Examples:
  """Every class drawn up to the largest class's count (its own images first, then random
  repeats, seeded); for multiclass training data (`--oversample`)."""
  rng = np.random.default_rng(seed)
  labels = np.asarray(files.labels)
  counts = np.bincount(labels, minlength=len(files.class_names))
  idx = []
  for label, count in enumerate(counts):
    members = np.flatnonzero(labels == label)
    if count:
      idx.extend(members)
      idx.extend(rng.choice(members, counts.max() - count, replace=True))
  logging.info("oversampling: %d training images become %d (%d per class)", len(labels),
               len(idx), counts.max())
  return files.subset(sorted(int(i) for i in idx))


def balanced_class_weights(files: Examples) -> dict[int, float]:
  """{class id: n / (classes * count)} from the labels (scikit-learn's "balanced")."""
  counts = np.bincount(files.labels, minlength=len(files.class_names))
  n, k = len(files.labels), len(files.class_names)
  return {i: float(n / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def stratified_split(files: Examples, fraction: float, seed: int
                     ) -> tuple[Examples, Examples]:
  """Splits off `fraction` of each class (at least one image) as validation, seeded.

  Data whose output has no strata (multilabel, regression) are split at random.
  """
  rng = np.random.default_rng(seed)
  labels = files.output.strata(files.labels)
  if labels is None:
    idx = rng.permutation(len(files.inputs))
    n_val = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
    return files.subset(sorted(idx[n_val:])), files.subset(sorted(idx[:n_val]))
  train_idx, val_idx = [], []
  for label in range(len(files.class_names)):
    idx = np.flatnonzero(labels == label)
    if len(idx) == 0:
      continue
    if len(idx) < 2:
      raise UsageError(f"--validation_split: class {files.class_names[label]!r} has only "
                       f"{len(idx)} image; give each class at least 2 images or pass --val_dir")
    idx = rng.permutation(idx)
    n_val = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
    val_idx.extend(idx[:n_val])
    train_idx.extend(idx[n_val:])
  return files.subset(sorted(train_idx)), files.subset(sorted(val_idx))


def index(data_dir: str, val_dir: str = "", validation_split: float = 0.2, seed: int = 0,
          strict: bool = False) -> tuple[Examples, Examples]:
  """Finds the training and validation images; see the module docstring for layouts.

  Unreadable files are skipped with a warning, or with `strict` are a UsageError.
  """
  if not os.path.isdir(data_dir):
    raise UsageError(f"--data_dir: folder {data_dir} does not exist; pass a folder with one "
                     "sub-folder per class")
  train_dir, split_val_dir = data_dir, ""
  if os.path.isdir(os.path.join(data_dir, "train")):
    train_dir = os.path.join(data_dir, "train")
    for name in VALIDATION_FOLDERS:
      if os.path.isdir(os.path.join(data_dir, name)):
        split_val_dir = os.path.join(data_dir, name)
        break
  elif os.path.isdir(os.path.join(data_dir, "test")):
    raise UsageError(f"--data_dir: {data_dir} has a test/ folder but no train/ folder; "
                     "put the training images in train/ (test/ is never trained on)")
  train = readable(scan_class_folder(train_dir, "data_dir"), "data_dir", strict)
  if not train.inputs:
    raise UsageError(f"--data_dir: {train_dir} holds no readable images")
  if len(train.class_names) < 2:
    raise UsageError(f"--data_dir: {train_dir} has a single class ({train.class_names[0]}); "
                     "a classifier needs at least 2 class sub-folders")
  if val_dir or split_val_dir:
    flag = "val_dir" if val_dir else "data_dir"
    val = readable(scan_class_folder(val_dir or split_val_dir, flag, train.class_names), flag,
                   strict)
  else:
    train, val = stratified_split(train, validation_split, seed)
  logging.info("data: %d training and %d validation images in %d classes (%s)",
               len(train.inputs), len(val.inputs), len(train.class_names),
               ", ".join(train.class_names))
  return train, val


def evaluation_files(data_dir: str, class_names: list[str]) -> Examples:
  """The images to evaluate in `data_dir`: its test/ folder, else validation/ (val/), else
  the folder itself; classes must be among the model's `class_names`."""
  if not os.path.isdir(data_dir):
    raise UsageError(f"--data_dir: folder {data_dir} does not exist; pass a folder with one "
                     "sub-folder per class")
  folder = data_dir
  for name in ("test",) + VALIDATION_FOLDERS:
    if os.path.isdir(os.path.join(data_dir, name)):
      folder = os.path.join(data_dir, name)
      break
  files = scan_class_folder(folder, "data_dir", class_names)
  check_images(files.inputs, "data_dir")
  logging.info("evaluating %d images in %s", len(files.inputs), folder)
  return files


def expand_inputs(patterns: list[str]) -> list[str]:
  """Files, folders (searched recursively for images) and globs -> a sorted list of paths.

  A named file is kept even when it is missing or not an image, so that the caller can
  report it; an empty result is a UsageError.
  """
  import glob  # pylint: disable=g-import-not-at-top

  paths = []
  for pattern in patterns:
    if os.path.isdir(pattern):
      for root, dirs, files in os.walk(pattern):
        dirs.sort()
        paths += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
    elif glob.has_magic(pattern):
      matches = sorted(glob.glob(pattern, recursive=True))
      paths += [m for m in matches if os.path.isfile(m) and _is_image(m)]
    else:
      paths.append(pattern)
  if not paths:
    raise UsageError(f"inputs: no images match {' '.join(patterns)}; pass image files, "
                     "folders or globs such as 'photos/*.jpg'")
  return list(dict.fromkeys(paths))


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


def load(data_dir: str, val_dir: str, validation_split: float, image_size: int,
         batch_size: int, seed: int = 0) -> Dataset:
  """Indexes, checks and wraps the images in training and validation pipelines."""
  train, val = index(data_dir, val_dir, validation_split, seed)
  return pipelines(train, val, image_size, batch_size, seed)


def builtin_digits(root: str) -> str:
  """Writes scikit-learn's 8x8 handwritten digits (1,797 images) as PNG class folders.

  The data set ships inside scikit-learn, so the built-in recipe needs no download.
  Returns the folder; an existing complete copy is reused.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  folder = os.path.join(root, "sklearn_digits")
  done = os.path.join(folder, ".complete")
  if os.path.exists(done):
    return folder
  digits = load_digits()
  for i, (image, label) in enumerate(zip(digits.images, digits.target)):
    class_dir = os.path.join(folder, str(label))
    os.makedirs(class_dir, exist_ok=True)
    pixels = (image * (255.0 / 16.0)).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(os.path.join(class_dir, f"{i:04d}.png"))
  open(done, "w").close()
  return folder
