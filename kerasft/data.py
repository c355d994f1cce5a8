"""Labelled images into tf.data pipelines.

An image folder holds one sub-folder per class (`cats/`, `dogs/`, ...), or split folders
`train/` and `validation/` (or `val/`) that each hold class sub-folders; a `test/` folder
is never trained on. Files are indexed and decoded once up front, so a bad file is found
(and skipped, or with --strict_data refused) before training starts, never in the middle
of an epoch. `decode_and_resize` is the one
function that turns encoded bytes into model input; the export's `serving_bytes`
signature uses it too, so serving sees exactly what training saw.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Optional

import numpy as np
from absl import logging

from kerasft.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VALIDATION_FOLDERS = ("validation", "val")
# Decoded training images are cached in memory when they take at most this many bytes.
MEMORY_CACHE_BYTES = 2 << 30


@dataclasses.dataclass
class ImageFiles:
  """An indexed split: file paths, integer labels (indices into class_names)."""
  paths: list[str]
  labels: list[int]
  class_names: list[str]


@dataclasses.dataclass
class Dataset:
  """What training needs: batched (pixels 0..255, one-hot label) pipelines and class names."""
  train: "tf.data.Dataset"  # noqa: F821
  val: "tf.data.Dataset"  # noqa: F821
  class_names: list[str]
  train_files: ImageFiles
  val_files: ImageFiles
  resize: str = "squash"


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
                      ) -> ImageFiles:
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
  return ImageFiles(paths, labels, list(class_names))


def unreadable_reasons(paths: list[str]) -> list[Optional[str]]:
  """Decodes every file once (in threads); per path None, or why it is not a readable image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def reason(path):
    try:
      with Image.open(path) as image:
        image.draft("RGB", (32, 32))  # JPEGs decode at a reduced scale: fast, still complete.
        image.load()
      return None
    except Exception as e:  # pylint: disable=broad-except
      return f"{type(e).__name__}: {e}"

  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as ex:
    return list(ex.map(reason, paths))


def check_images(paths: list[str], flag: str) -> None:
  """Raises a UsageError naming the first unreadable file among `paths`, if any."""
  failures = [f"{p} ({r})" for p, r in zip(paths, unreadable_reasons(paths)) if r]
  if failures:
    raise UsageError(f"--{flag}: {len(failures)} file(s) are not readable images, first: "
                     f"{failures[0]}; remove or fix them, or leave out --strict_data to skip "
                     "them")


def readable(files: ImageFiles, flag: str, strict: bool = False) -> ImageFiles:
  """`files` without the corrupt, truncated or non-image ones, which are found by decoding
  every file once: skipped with one warning naming the first ten, or with `strict` a
  UsageError naming the first."""
  reasons = unreadable_reasons(files.paths)
  bad = [(p, r) for p, r in zip(files.paths, reasons) if r]
  if not bad:
    return files
  if strict:
    raise UsageError(f"--strict_data: {len(bad)} file(s) under --{flag} are not readable "
                     f"images, first: {bad[0][0]} ({bad[0][1]}); remove or fix them")
  logging.warning("skipping %d unreadable file(s) under --%s: %s%s", len(bad), flag,
                  ", ".join(p for p, _ in bad[:10]), " ..." if len(bad) > 10 else "")
  keep = [i for i, r in enumerate(reasons) if r is None]
  return ImageFiles([files.paths[i] for i in keep], [files.labels[i] for i in keep],
                    files.class_names)


def balanced_class_weights(files: ImageFiles) -> dict[int, float]:
  """{class id: n / (classes * count)} from the labels (scikit-learn's "balanced")."""
  counts = np.bincount(files.labels, minlength=len(files.class_names))
  n, k = len(files.labels), len(files.class_names)
  return {i: float(n / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def stratified_split(files: ImageFiles, fraction: float, seed: int
                     ) -> tuple[ImageFiles, ImageFiles]:
  """Splits off `fraction` of each class (at least one image) as validation, seeded."""
  rng = np.random.default_rng(seed)
  labels = np.asarray(files.labels)
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

  def pick(idx):
    idx = sorted(idx)
    return ImageFiles([files.paths[i] for i in idx], [files.labels[i] for i in idx],
                      files.class_names)
  return pick(train_idx), pick(val_idx)


def index(data_dir: str, val_dir: str = "", validation_split: float = 0.2, seed: int = 0,
          strict: bool = False) -> tuple[ImageFiles, ImageFiles]:
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
  if not train.paths:
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
               len(train.paths), len(val.paths), len(train.class_names),
               ", ".join(train.class_names))
  return train, val


def evaluation_files(data_dir: str, class_names: list[str]) -> ImageFiles:
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
  check_images(files.paths, "data_dir")
  logging.info("evaluating %d images in %s", len(files.paths), folder)
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


def make_pipeline(files: ImageFiles, image_size: int, batch_size: int, shuffle: bool = False,
                  seed: int = 0, cache: bool = True, resize: str = "squash"):
  """A tf.data pipeline of (float32 pixels [B, S, S, 3], one-hot float32 labels [B, C]).

  Decodes in parallel, caches decoded images in memory when `cache` and they fit
  (`MEMORY_CACHE_BYTES`), reshuffles every epoch when `shuffle`, batches and prefetches.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  num_classes = len(files.class_names)
  ds = tf.data.Dataset.from_tensor_slices(
      (np.asarray(files.paths), np.asarray(files.labels, np.int32)))
  ds = ds.map(lambda path, label: (decode_and_resize(tf.io.read_file(path), image_size, resize),
                                   tf.one_hot(label, num_classes)),
              num_parallel_calls=tf.data.AUTOTUNE)
  if cache and len(files.paths) * image_size * image_size * 3 * 4 <= MEMORY_CACHE_BYTES:
    ds = ds.cache()
  if shuffle:
    ds = ds.shuffle(len(files.paths), seed=seed, reshuffle_each_iteration=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def pipelines(train: ImageFiles, val: ImageFiles, image_size: int, batch_size: int,
              seed: int = 0, resize: str = "squash") -> Dataset:
  """Wraps indexed training and validation images in their tf.data pipelines."""
  return Dataset(train=make_pipeline(train, image_size, batch_size, shuffle=True, seed=seed,
                                     resize=resize),
                 val=make_pipeline(val, image_size, batch_size, resize=resize),
                 class_names=train.class_names, train_files=train, val_files=val,
                 resize=resize)


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
