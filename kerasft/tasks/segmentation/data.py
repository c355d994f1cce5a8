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

IGNORE = 255  # a mask value that no class has: the pixel counts nowhere
MASKS, IMAGES = "masks", "images"


def read_mask(item, where: str) -> np.ndarray:
  """uint8 [H, W] class indices of a mask file or encoded bytes `item` (`where` names it in
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
      raise UsageError(f"{where}: a colour ({mode}) mask; save the class index of each pixel "
                       "as a grayscale or palette PNG")
  if values.dtype == bool:
    values = values.astype(np.uint8)
  if values.size and (values.min() < 0 or values.max() > 255):
    raise UsageError(f"{where}: mask values {values.min()}..{values.max()}; class indices "
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


def folder_pairs(folder: str, flag: str) -> tuple[list[str], list[str]]:
  """(image paths, mask paths or "" when missing) of `folder`/images and `folder`/masks,
  matched by file stem, sorted."""
  from kerasft.data.examples import _is_image
  images_dir, masks_dir = os.path.join(folder, IMAGES), os.path.join(folder, MASKS)
  for path in (images_dir, masks_dir):
    if not os.path.isdir(path):
      raise UsageError(f"--{flag}: --task=segmentation reads {IMAGES}/ and {MASKS}/ folders "
                       f"with the same file names; {path} is not a folder")
  masks = {os.path.splitext(n)[0]: os.path.join(masks_dir, n)
           for n in sorted(os.listdir(masks_dir)) if _is_image(n)}
  images = [os.path.join(images_dir, n) for n in sorted(os.listdir(images_dir)) if _is_image(n)]
  if not images:
    raise UsageError(f"--{flag}: no images in {images_dir}")
  return images, [masks.get(os.path.splitext(os.path.basename(p))[0], "") for p in images]


def check_pairs(images: list, masks: list, names: list[str], flag: str,
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
    logging.warning("--%s: skipping %s: %s", flag, name, why)
  if problems and strict:
    raise UsageError(f"--{flag}: {problems[0][0]}: {problems[0][1]} (--strict_data)")
  if len(problems) > 10:
    logging.warning("--%s: %d more examples skipped", flag, len(problems) - 10)
  kept = [i for i, (_, why) in enumerate(checked) if not why]
  if not kept:
    raise UsageError(f"--{flag}: no usable image and mask pair ({problems[0][0]}: "
                     f"{problems[0][1]})" if problems else f"--{flag}: no examples")
  found = sorted(set().union(*(checked[i][0][1] for i in kept)) - {IGNORE})
  if class_names is None:
    class_names = [str(v) for v in range(max(found) + 1)]
  unknown = [v for v in found if v >= len(class_names)]
  if unknown:
    where = next(names[i] for i in kept if unknown[0] in checked[i][0][1])
    raise UsageError(f"--{flag}: {where} has mask value {unknown[0]}, which names no class "
                     f"(there are {len(class_names)}: {', '.join(class_names[:5])}...); "
                     "list the classes with --mask_classes or fix the mask (255: ignore)")
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


def confusion(true: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
  """int64 [k, k] pixel counts (true class, predicted class), 255 pixels left out."""
  true, predicted = np.ravel(true).astype(np.int64), np.ravel(predicted).astype(np.int64)
  keep = true != IGNORE
  return np.bincount(true[keep] * k + np.minimum(predicted[keep], k - 1),
                     minlength=k * k).reshape(k, k)


def iou_metrics(matrix: np.ndarray, class_names: list[str]) -> dict:
  """Mean IoU (over the classes present in the truth or the prediction, as Keras' MeanIoU),
  IoU per class (None when absent from both), pixel accuracy and pixel counts."""
  matrix = np.asarray(matrix, np.float64)
  hits, union = np.diag(matrix), matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
  iou = np.where(union > 0, hits / np.maximum(union, 1), np.nan)
  total = matrix.sum()
  return {"task": "segmentation",
          "mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
          "pixel_accuracy": float(hits.sum() / total) if total else 0.0,
          "pixels": int(total),
          "per_class": {name: {"iou": None if np.isnan(v) else float(v),
                               "pixels": int(matrix[i].sum())}
                        for i, (name, v) in enumerate(zip(class_names, iou))}}


def palette(k: int) -> np.ndarray:
  """uint8 [k, 3] distinct colours (class 0 black: usually the background)."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  colours = colormaps["tab20"](np.arange(max(k - 1, 1)) % 20)[:, :3] * 255
  return np.concatenate([[[0, 0, 0]], colours]).astype(np.uint8)[:k]


def overlay(image: np.ndarray, mask: np.ndarray, k: int, alpha: float = 0.5) -> np.ndarray:
  """uint8 [H, W, 3]: `image` (0..255) with `mask`'s class colours blended in (255 pixels
  and class 0 left as they are)."""
  colours = palette(k)
  mask = np.asarray(mask)
  shown = (mask != IGNORE) & (mask > 0)
  out = np.asarray(image, np.float32).copy()
  out[shown] = (1 - alpha) * out[shown] + alpha * colours[mask[shown]]
  return np.clip(out, 0, 255).astype(np.uint8)


def plot_grid(images, true, predicted, class_names: list[str], path: str,
              captions: list[str] = ()) -> None:
  """A PNG grid: per row an image, its true mask and the predicted one overlaid, and a
  legend of the class colours."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  k, n = len(class_names), len(images)
  fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.4 * n + 0.8), squeeze=False)
  for row, (image, t, p) in enumerate(zip(images, true, predicted)):
    for col, (shown, title) in enumerate(((np.asarray(image, np.uint8), "image"),
                                          (overlay(image, t, k), "true"),
                                          (overlay(image, p, k), "predicted"))):
      axes[row, col].imshow(shown)
      axes[row, col].set_axis_off()
      caption = captions[row] if col == 0 and row < len(captions) else ""
      axes[row, col].set_title(f"{title}{': ' + caption if caption else ''}", fontsize=8)
  colours = palette(k) / 255.0
  fig.legend(handles=[Patch(color=colours[i], label=name) for i, name in
                      enumerate(class_names)], loc="lower center", ncol=min(k, 6), fontsize=7)
  fig.tight_layout(rect=(0, 0.8 / (2.4 * n + 0.8), 1, 1))
  fig.savefig(path, dpi=80)
  plt.close(fig)


def plot_iou(metrics: dict, path: str) -> None:
  """A bar chart PNG of the IoU of each class, the mean IoU as a line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(metrics["per_class"])
  values = [metrics["per_class"][n]["iou"] or 0.0 for n in names]
  fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 1.5), 3.2))
  ax.bar(range(len(names)), values, color="tab:blue")
  ax.axhline(metrics["mean_iou"], color="tab:red", linestyle="--",
             label=f"mean IoU {metrics['mean_iou']:.3f}")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("IoU")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
