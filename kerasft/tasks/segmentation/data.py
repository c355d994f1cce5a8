"""Semantic segmentation data and figures, without TensorFlow: masks read and checked,
folders of images/ and masks/ indexed, IoU from a pixel confusion matrix, masks drawn.

A mask is a PNG (or any image PIL reads) of class indices, one per pixel: a grayscale
image whose values are the classes, or a palette ("P" mode) image whose palette indices
are (Pascal VOC). 255 means "ignore this pixel" in training and in every figure. Masks are
checked when indexed (readable, the image's size, known values) and kept as grayscale PNG
bytes, which the tf.data pipeline decodes (TensorFlow's PNG decoder would turn a palette
into colours).
"""

from __future__ import annotations

import concurrent.futures
import io
import os

import numpy as np
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.data import examples, records, tables
from kerasft.data.folders import is_image
from kerasft.data.labels import Classes
from kerasft.data.source import Source

IGNORE = 255  # a mask value that no class has: the pixel counts nowhere
MASKS, IMAGES = "masks", "images"


def read_mask(item, name: str) -> np.ndarray:
  """uint8 [H, W] class indices of a mask file or encoded bytes `item` (`name` names it in
  errors): grayscale values, palette indices, or one channel of an RGB image whose channels
  are equal. A colour mask (channels differ) is a UsageError."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
    mode = image.mode
    values = np.asarray(image)
  if values.ndim == 3:
    if mode in ("RGB", "RGBA") and np.all(values[..., :3] == values[..., :1]):
      values = values[..., 0]
    else:
      raise UsageError(f"{name}: a colour ({mode}) mask; save the class index of each pixel "
                       "as a grayscale or palette PNG")
  if values.dtype == bool:
    values = values.astype(np.uint8)
  if values.size and (values.min() < 0 or values.max() > 255):
    raise UsageError(f"{name}: mask values {values.min()}..{values.max()}; class indices "
                     "must be 0..254 (255: ignore)")
  return values.astype(np.uint8)


def encode_mask(mask: np.ndarray) -> bytes:
  """A grayscale PNG of a uint8 [H, W] mask."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(np.asarray(mask, np.uint8), "L").save(out, "PNG")
  return out.getvalue()


def write_mask(path: str, mask: np.ndarray, k: int) -> None:
  """Writes a class map as a palette PNG: its indices are the classes (255: ignored, white),
  its colours `palette(k)`; written to a temporary name, then renamed."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(np.asarray(mask, np.uint8), "P")
  colours = np.zeros((256, 3), np.uint8)
  colours[:k], colours[IGNORE] = palette(k), 255
  image.putpalette(colours.ravel().tolist())
  image.save(path + ".tmp", "PNG")
  os.replace(path + ".tmp", path)


def palette(k: int) -> np.ndarray:
  """uint8 [k, 3] distinct colours (class 0 black: usually the background)."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  colours = colormaps["tab20"](np.arange(max(k - 1, 1)) % 20)[:, :3] * 255
  return np.concatenate([[[0, 0, 0]], colours]).astype(np.uint8)[:k]


def image_size(item) -> tuple[int, int]:
  """(width, height) of an image file or encoded bytes, from its header."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
    return image.size


def read_class_names(path: str) -> list[str]:
  """The class names of --mask_classes: one per line, line i naming mask value i."""
  try:
    with open(path, encoding="utf-8") as f:
      names = [line.strip() for line in f.read().splitlines()]
  except OSError as e:
    raise UsageError(f"--mask_classes: cannot read {path} ({e.strerror})") from None
  while names and not names[-1]:
    names.pop()
  if any(not n for n in names) or len(names) < 2:
    raise UsageError(f"--mask_classes: {path} must name at least 2 classes, one per line "
                     "(line i names mask value i), with no blank line between them")
  if len(names) > IGNORE:
    raise UsageError(f"--mask_classes: {path} names {len(names)} classes; at most 255 (255 "
                     "is the ignore value)")
  return names


def folder_pairs(source: Source) -> tuple[list[str], list[str]]:
  """(image paths, mask paths or "" when missing) of `source.path`/images and .../masks,
  matched by file stem, sorted."""
  images_dir = os.path.join(source.path, IMAGES)
  masks_dir = os.path.join(source.path, MASKS)
  for path in (images_dir, masks_dir):
    if not os.path.isdir(path):
      raise source.error(f"--task=segmentation reads {IMAGES}/ and {MASKS}/ folders with the "
                         f"same file names; {path} is not a folder")
  masks = {os.path.splitext(n)[0]: os.path.join(masks_dir, n)
           for n in sorted(os.listdir(masks_dir)) if is_image(n)}
  images = [os.path.join(images_dir, n) for n in sorted(os.listdir(images_dir)) if is_image(n)]
  if not images:
    raise source.error(f"no images in {images_dir}")
  return images, [masks.get(os.path.splitext(os.path.basename(p))[0], "") for p in images]


def check_pairs(images: list, masks: list, names: list[str], source: Source,
                class_names: list[str] | None, strict: bool = False
                ) -> tuple[list, list[bytes], list[str], list[str]]:
  """Reads and checks every mask against its image: (images kept, their masks as grayscale
  PNG bytes, their names, class names). A missing or unreadable mask, or one whose size
  differs from its image's, is skipped with a warning naming the file (a UsageError with
  `strict`); a value outside `class_names` (other than 255) is a UsageError. Without
  `class_names`, the classes are the values found, named "0".."K-1"."""
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    checked = list(pool.map(lambda args: _check_pair(*args), zip(images, masks, names)))
  problems = [(names[i], why) for i, (_, why) in enumerate(checked) if why]
  for name, why in problems[:10]:
    logging.warning("--%s: skipping %s: %s", source.flag, name, why)
  if problems and strict:
    raise source.error(f"{problems[0][0]}: {problems[0][1]} (--strict_data)")
  if len(problems) > 10:
    logging.warning("--%s: %d more examples skipped", source.flag, len(problems) - 10)
  kept = [i for i, (_, why) in enumerate(checked) if not why]
  if not kept:
    raise source.error(f"no usable image and mask pair ({problems[0][0]}: {problems[0][1]})"
                       if problems else "no examples")
  found = sorted(set().union(*(checked[i][0][1] for i in kept)) - {IGNORE})
  if class_names is None:
    class_names = [str(v) for v in range(max(found) + 1)]
  unknown = [v for v in found if v >= len(class_names)]
  if unknown:
    where = next(names[i] for i in kept if unknown[0] in checked[i][0][1])
    raise source.error(f"{where} has mask value {unknown[0]}, which names no class (there "
                       f"are {len(class_names)}: {', '.join(class_names[:5])}...); list the "
                       "classes with --mask_classes or fix the mask (255: ignore)")
  return ([images[i] for i in kept], [checked[i][0][0] for i in kept],
          [names[i] for i in kept], class_names)


def _check_pair(image, mask, name: str):
  """((grayscale PNG of the mask, its values), None), or (None, why it is unusable)."""
  if isinstance(mask, str) and not mask:
    return None, f"no mask with the image's name in {MASKS}/"
  try:
    values = read_mask(mask, name)
    size = image_size(image)
  except (OSError, ValueError) as e:
    return None, f"unreadable ({e})"
  if (values.shape[1], values.shape[0]) != size:
    return None, (f"mask {values.shape[1]}x{values.shape[0]} differs from the image's "
                  f"{size[0]}x{size[1]}")
  return (encode_mask(values), set(np.unique(values).tolist())), None


def folder_source(d, flag_prefix: str, split: str) -> Source:
  """The folder holding images/ and masks/ of --data_dir or --val_dir: the folder itself,
  or its train/ (validation/, val/, or `split`) sub-folder; its path "" when absent."""
  if flag_prefix and d.val_dir:
    return Source("val_dir", d.val_dir)
  root = d.data_dir
  if os.path.isdir(os.path.join(root, IMAGES)):
    return Source("data_dir", "" if flag_prefix else root)
  wanted = [split] if split else (["validation", "val"] if flag_prefix else ["train"])
  if split:
    wanted.append("")
  found = next((os.path.join(root, w) for w in wanted
                if os.path.isdir(os.path.join(root, w, IMAGES))), "")
  if not found and not flag_prefix:
    raise UsageError(f"--data_dir: {root} holds neither {IMAGES}/ and {MASKS}/ nor "
                     f"train/{IMAGES}/ and train/{MASKS}/")
  return Source("data_dir", found)


def csv_pairs(source: Source, path_column: str, mask_column: str):
  """(image paths, mask paths) of a table's rows, relative to its folder."""
  rows = tables.read_table(source, [path_column, mask_column])
  root = os.path.dirname(os.path.abspath(source.path))
  images = [os.path.join(root, str(r[path_column])) for r in rows]
  masks = [os.path.join(root, str(r[mask_column])) if r[mask_column] else "" for r in rows]
  for image in images:
    if not os.path.isfile(image):
      raise source.error(f"{source.path}: image {image} does not exist")
  return images, [m if m and os.path.isfile(m) else "" for m in masks]


def tfds_pairs(name: str, data_dir: str, split: str, image_key: str, mask_key: str):
  """(encoded images, encoded masks) of a prepared TFDS split: --image_key [its first
  3-channel Image feature] and --label_key [its first 1-channel Image feature]."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = records.tfds_builder(name, data_dir)
  features = builder.info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  image_key = image_key or next((k for k in images if features[k].shape[-1] == 3), "")
  mask_key = mask_key or next((k for k in images if features[k].shape[-1] == 1), "")
  for flag, key in (("image_key", image_key), ("label_key", mask_key)):
    if key not in images:
      raise UsageError(f"--{flag}: {name} has no image feature {key!r} for "
                       f"--task=segmentation; its image features are {', '.join(images)}")
  ds = records.tfds_split(builder, name, data_dir, split, {
      image_key: tfds.decode.SkipDecoding(), mask_key: tfds.decode.SkipDecoding()})
  pairs = [(e[image_key], e[mask_key]) for e in ds.as_numpy_iterator()]
  if not pairs:
    raise UsageError(f"--tfds: split {split!r} of {name} is empty")
  return [p[0] for p in pairs], [p[1] for p in pairs]


class Masks(Classes):
  """An image's label is its mask of class indices (grayscale PNG bytes; 255: ignored)."""
  task, noun = "segmentation", "classes"

  def strata(self, labels, class_names=None):
    return None

  def class_counts(self, labels, k):
    return None

  def check_folder_source(self, source):
    """Folders of images/ and masks/ are read by the task itself."""

  def targets(self, labels, k):
    raise ValueError("segmentation targets are per pixel: graph.masks")

  def evaluation_labels(self, files):
    return examples.objects([read_mask(m, files.name(i)) for i, m in enumerate(files.labels)])
