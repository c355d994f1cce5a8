"""report.html's sections of a segmenter: IoU per class, masks, the images with the most
errors; and its figures and metrics: IoU from a pixel confusion matrix, masks drawn. No
TensorFlow."""

from __future__ import annotations

import io
import os
from typing import Callable

import numpy as np

from kerasft.reporting.html import ReportData, array_png, esc, figure, png_uri, table
from kerasft.reporting.sections import GALLERY, common
from kerasft.tasks.segmentation.data import IGNORE, palette


def sections(data: ReportData, headline: str, cards: Callable) -> list:
  """The segmenter's sections, after the common ones."""
  return common(data, headline) + [
      ("Per class IoU", lambda: _per_class_iou(data)),
      ("Masks", lambda: figure(data.out_dir, "predictions.png")),
      ("Images with the most errors", lambda: _worst_masks(data, cards))]


def _per_class_iou(data: ReportData) -> str:
  rows = [(name, "-" if r["iou"] is None else f"{r['iou']:.3f}", r["pixels"])
          for name, r in data.metrics["per_class"].items()]
  return figure(data.out_dir, "iou.png") + table(["class", "IoU", "true pixels"], rows)


def _worst_masks(data: ReportData, cards: Callable) -> str:
  """The images whose predicted masks agree least with the true ones (pixel accuracy)."""
  scores = [float(np.mean((t == p)[t != IGNORE])) if np.any(t != IGNORE) else 1.0
            for t, p in zip(data.labels, data.outputs)]
  order = [int(i) for i in np.argsort(scores, kind="stable")[:GALLERY]]
  shown = cards(order, [(data.labels[i], data.outputs[i]) for i in order],
                [f"pixel accuracy {scores[i]:.3f} (left: true, right: predicted)"
                 for i in order])
  return "".join(shown) if order else "<p>none</p>"


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


def image_at(item, shape) -> np.ndarray:
  """uint8 RGB [H, W, 3] of an image file or bytes, resized to a mask's `shape`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
    return np.asarray(image.convert("RGB").resize((shape[1], shape[0]), Image.BILINEAR))


def cards(files) -> Callable:
  """A function (indices, (true, predicted) mask pairs, captions) -> HTML cards of
  `files`' images with the true and the predicted masks overlaid (at the masks' size)."""
  k = len(files.class_names)

  def draw(indices, masks, captions):
    out = []
    for i, (true, predicted), caption in zip(indices, masks, captions):
      image = image_at(files.inputs[i], true.shape)
      pictures = "".join(
          f'<img alt="{what}" title="{what}" src="{png_uri(array_png(overlay(image, m, k)))}">'
          for what, m in (("true", true), ("predicted", predicted)))
      out.append(f'<div class="card">{pictures}<br>{esc(os.path.basename(files.name(i)))}'
                 f"<br>{esc(caption)}</div>")
    return out
  return draw


def write_figures(files, labels, outputs, out_dir: str, n: int = 8) -> None:
  """predictions.png: `n` of `files`' images spread over them, with the true and the
  predicted masks overlaid."""
  picked = sorted(set(np.linspace(0, len(labels) - 1, min(n, len(labels))).round().astype(
      int).tolist())) if len(labels) else []
  if picked:
    plot_grid([image_at(files.inputs[i], labels[i].shape) for i in picked],
              [labels[i] for i in picked], [outputs[i] for i in picked],
              files.class_names, os.path.join(out_dir, "predictions.png"),
              [os.path.basename(files.name(i)) for i in picked])
