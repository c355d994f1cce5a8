"""COCO's detection metrics, computed as pycocotools' COCOeval computes them (`coco`: AP
over IoU 0.5:0.95, AP50, AP75, AP by object size, AR at 1, 10 and 100 detections, AP per
class; a test checks them against COCOeval to 1e-4), the detections in COCO's results
format, and report.html's sections and figures of a detector. No TensorFlow.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from kerasft.reporting import metrics as reports
from kerasft.reporting.html import ReportData, esc, figure, png_uri, array_png, table
from kerasft.reporting.sections import GALLERY, common

IOUS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)
AREAS = {"all": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
         "large": (96 ** 2, 1e10)}


def _iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
  """IoU [D, G] of xyxy boxes; against a crowd region, the share of the detection inside it."""
  lt = np.maximum(d[:, None, :2], g[None, :, :2])
  rb = np.minimum(d[:, None, 2:], g[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), -1)
  area_d = np.prod(d[:, 2:] - d[:, :2], -1)[:, None]
  area_g = np.prod(g[:, 2:] - g[:, :2], -1)[None, :]
  union = np.where(crowd[None, :], area_d, area_d + area_g - inter)
  return inter / np.maximum(union, 1e-12)


def _image(g, d, area, max_det: int) -> tuple | None:
  """COCOeval.evaluateImg for one image, class and area range: (matched [T, D] of the
  detections (by score), ignored detections [T, D], ignored ground truths [G], scores [D]);
  g: (boxes, crowd), d: (boxes, scores)."""
  boxes, crowd = g
  if not len(boxes) and not len(d[0]):
    return None
  g_area = np.prod(boxes[:, 2:] - boxes[:, :2], -1)
  ignore = crowd | (g_area < area[0]) | (g_area > area[1])
  order = np.argsort(ignore, kind="mergesort")
  boxes, crowd, ignore = boxes[order], crowd[order], ignore[order]
  by_score = np.argsort(-d[1], kind="mergesort")[:max_det]
  dt, scores = d[0][by_score], d[1][by_score]
  ious = _iou(dt, boxes, crowd) if len(dt) and len(boxes) else np.zeros((len(dt), len(boxes)))
  matched, dt_ignored = np.zeros((len(IOUS), len(dt)), bool), np.zeros((len(IOUS), len(dt)), bool)
  taken = np.zeros((len(IOUS), len(boxes)), bool)
  for t, threshold in enumerate(IOUS):
    for i in range(len(dt)):
      best, m = min(threshold, 1 - 1e-10), -1
      for j in range(len(boxes)):
        if taken[t, j] and not crowd[j]:
          continue
        if m > -1 and not ignore[m] and ignore[j]:
          break
        if ious[i, j] < best:
          continue
        best, m = ious[i, j], j
      if m > -1:
        dt_ignored[t, i], matched[t, i], taken[t, m] = ignore[m], True, True
  d_area = np.prod(dt[:, 2:] - dt[:, :2], -1) if len(dt) else np.zeros(0)
  outside = (d_area < area[0]) | (d_area > area[1])
  dt_ignored |= ~matched & outside[None, :]
  return matched, dt_ignored, ignore, scores


def _accumulate(results: list, max_det: int) -> tuple[np.ndarray, np.ndarray]:
  """(precision [T, R], recall [T]) of one class and area range over the images' results
  (COCOeval.accumulate; -1 where the class has no ground truth to find)."""
  results = [r for r in results if r is not None]
  precision, recall = -np.ones((len(IOUS), len(RECALLS))), -np.ones(len(IOUS))
  if not results:
    return precision, recall
  scores = np.concatenate([r[3][:max_det] for r in results])
  order = np.argsort(-scores, kind="mergesort")
  matched = np.concatenate([r[0][:, :max_det] for r in results], 1)[:, order]
  ignored = np.concatenate([r[1][:, :max_det] for r in results], 1)[:, order]
  found = int(np.count_nonzero(~np.concatenate([r[2] for r in results])))
  if not found:
    return precision, recall
  tp = np.cumsum(matched & ~ignored, 1).astype(float)
  fp = np.cumsum(~matched & ~ignored, 1).astype(float)
  for t in range(len(IOUS)):
    rc = tp[t] / found
    pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
    recall[t] = rc[-1] if len(rc) else 0
    pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
    idx = np.searchsorted(rc, RECALLS, side="left")
    q = np.zeros(len(RECALLS))
    valid = idx < len(pr)
    q[valid] = pr[idx[valid]]
    precision[t] = q
  return precision, recall


def _mean(values: np.ndarray) -> float:
  kept = values[values > -1]
  return float(np.mean(kept)) if kept.size else -1.0


def coco(truth: list, detections: list, class_names: list[str]) -> dict:
  """COCO's bbox metrics of per-image ground truth (`data.Boxed`) and detections ((boxes
  xyxy in pixels, scores, class indices)), every class of `class_names` evaluated."""
  k = len(class_names)
  precision = -np.ones((len(IOUS), len(RECALLS), k, len(AREAS), len(MAX_DETECTIONS)))
  recall = -np.ones((len(IOUS), k, len(AREAS), len(MAX_DETECTIONS)))
  for c in range(k):
    per_image = [((g.boxes[g.classes == c], g.crowd[g.classes == c]),
                  (np.asarray(d[0])[np.asarray(d[2]) == c], np.asarray(d[1])[np.asarray(d[2]) == c]))
                 for g, d in zip(truth, detections)]
    for a, area in enumerate(AREAS.values()):
      evaluated = [_image(g, d, area, MAX_DETECTIONS[-1]) for g, d in per_image]
      for m, max_det in enumerate(MAX_DETECTIONS):
        precision[:, :, c, a, m], recall[:, c, a, m] = _accumulate(evaluated, max_det)
  return _summary(precision, recall, class_names)


def _summary(precision: np.ndarray, recall: np.ndarray, class_names: list[str]) -> dict:
  """COCOeval.summarize's figures, AP per class, and the precision-recall curves at IoU
  0.5 (all areas, 100 detections) for the figures."""
  last = len(MAX_DETECTIONS) - 1
  out = {"task": "detection", "map": _mean(precision[:, :, :, 0, last]),
         "ap50": _mean(precision[0, :, :, 0, last]),
         "ap75": _mean(precision[5, :, :, 0, last])}
  for a, name in enumerate(list(AREAS)[1:], start=1):
    out[f"ap_{name}"] = _mean(precision[:, :, :, a, last])
  for m, n in enumerate(MAX_DETECTIONS):
    out[f"ar{n}"] = _mean(recall[:, :, 0, m])
  for a, name in enumerate(list(AREAS)[1:], start=1):
    out[f"ar_{name}"] = _mean(recall[:, :, a, last])
  out["per_class"] = {name: {"ap": _mean(precision[:, :, c, 0, last]),
                             "ap50": _mean(precision[0, :, c, 0, last])}
                      for c, name in enumerate(class_names)}
  out["pr_curves"] = {name: precision[0, :, c, 0, last].round(4).tolist()
                      for c, name in enumerate(class_names)}
  return out


def results_json(files, detections: list) -> list[dict]:
  """The detections of `files`' images in COCO's results format ([{image_id, category_id,
  bbox [x, y, width, height], score}]): the images' and classes' ids in their COCO file,
  else the images numbered 1.. in order and the classes 1..K."""
  ids = files.kind.category_ids or tuple(range(1, len(files.class_names) + 1))
  out = []
  for position, (truth, (boxes, scores, classes)) in enumerate(zip(files.labels, detections), 1):
    for b, s, c in zip(np.asarray(boxes), np.asarray(scores), np.asarray(classes)):
      out.append({"image_id": int(truth.image_id or position), "category_id": int(ids[int(c)]),
                  "bbox": [round(float(b[0]), 2), round(float(b[1]), 2),
                           round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)],
                  "score": round(float(s), 5)})
  return out


def plot(metrics: dict, out_dir: str) -> None:
  """ap_per_class.png (AP and AP50 per class) and pr_curves.png (precision against recall at
  IoU 0.5, per class)."""
  plt = reports.pyplot()
  names = list(metrics["per_class"])
  fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(names) + 1.5), 3.4))
  x = np.arange(len(names))
  ax.bar(x - 0.2, [max(metrics["per_class"][n]["ap"], 0) for n in names], 0.4, label="AP")
  ax.bar(x + 0.2, [max(metrics["per_class"][n]["ap50"], 0) for n in names], 0.4, label="AP50")
  ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  ax.set_title(f"AP per class (mean {metrics['map']:.3f})")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "ap_per_class.png"), dpi=100)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(5, 4))
  for name, curve in metrics["pr_curves"].items():
    if min(curve) > -1:
      ax.plot(RECALLS, curve, label=name, linewidth=1)
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_title("precision-recall at IoU 0.5")
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "pr_curves.png"), dpi=100)
  plt.close(fig)


def sections(data: ReportData, headline: str, cards: Callable) -> list:
  """The detector's sections, after the common ones."""
  m = data.metrics
  sizes = table(["objects", "AP", "AR@100"], [(n, f"{m[f'ap_{n}']:.3f}", f"{m[f'ar_{n}']:.3f}")
                                            for n in ("small", "medium", "large")])
  return common(data, headline) + [
      ("AP per class", lambda: figure(data.out_dir, "ap_per_class.png") + _per_class(m)),
      ("Images with their boxes", lambda: figure(data.out_dir, "predictions.png")),
      ("Precision and recall", lambda: figure(data.out_dir, "pr_curves.png")),
      ("AP by object size", lambda: sizes),
      ("Images", lambda: _gallery(data, cards, "most objects missed", _missed)),
      ("Most confident false positives",
       lambda: _gallery(data, cards, "most confident false positive", _false_positive))]


def _per_class(m: dict) -> str:
  return table(["class", "AP", "AP50"], [(n, f"{r['ap']:.3f}", f"{r['ap50']:.3f}")
                                        for n, r in m["per_class"].items()])


def _missed(g, d) -> float:
  """How many of the image's objects no detection (IoU >= 0.5, same class) found."""
  keep = ~g.crowd
  boxes, classes = g.boxes[keep], g.classes[keep]
  if not len(boxes):
    return 0.0
  found = _iou(np.asarray(d[0]).reshape(-1, 4), boxes, np.zeros(len(boxes), bool)) >= 0.5
  same = np.asarray(d[2])[:, None] == classes[None, :]
  return float(np.sum(~np.any(found & same, 0)))


def _false_positive(g, d) -> float:
  """The score of the image's most confident detection that matches no object."""
  boxes = np.asarray(d[0]).reshape(-1, 4)
  if not len(boxes):
    return 0.0
  hit = _iou(boxes, g.boxes, g.crowd) >= 0.5 if len(g.boxes) else np.zeros((len(boxes), 0), bool)
  same = np.asarray(d[2])[:, None] == g.classes[None, :]
  wrong = ~np.any(hit & same, 1)
  return float(np.max(np.asarray(d[1])[wrong])) if wrong.any() else 0.0


def _gallery(data: ReportData, cards: Callable, what: str, score: Callable) -> str:
  values = [score(g, d) for g, d in zip(data.labels, data.outputs)]
  order = [int(i) for i in np.argsort(values, kind="stable")[::-1][:GALLERY] if values[i] > 0]
  shown = cards(order, [data.outputs[i] for i in order],
                [f"{what}: {values[i]:.3g}" for i in order])
  return '<div class="gallery">' + "".join(shown) + "</div>" if shown else "<p>none</p>"


def draw(image: np.ndarray, truth, detections, class_names: list[str]) -> np.ndarray:
  """uint8 [H, W, 3]: `image` with the true boxes (green) and the detections (red, with
  their class and score) drawn."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  picture = Image.fromarray(np.asarray(image, np.uint8))
  pen = ImageDraw.Draw(picture)
  if truth is not None:
    for box in truth.boxes:
      pen.rectangle([float(v) for v in box], outline=(40, 200, 40), width=2)
  for box, score, c in zip(*detections):
    pen.rectangle([float(v) for v in box], outline=(230, 40, 40), width=2)
    pen.text((float(box[0]) + 2, float(box[1]) + 1), f"{class_names[int(c)]} {score:.2f}",
             fill=(230, 40, 40))
  return np.asarray(picture)


def _picture(item) -> np.ndarray:
  """uint8 RGB pixels [H, W, 3] of an image file or encoded bytes."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
    return np.asarray(image.convert("RGB"))


def cards(files) -> Callable:
  """A function (indices, detections, captions) -> HTML cards of `files`' images with the
  true boxes (green) and the detections given (red) drawn."""
  def draw_cards(indices, found, captions):
    return [f'<div class="card"><img alt="" src="{png_uri(array_png(draw(_picture(files.inputs[i]), files.labels[i], d, files.class_names)))}">'
            f"<br>{esc(os.path.basename(files.name(i)))}<br>{esc(c)}</div>"
            for i, d, c in zip(indices, found, captions)]
  return draw_cards


def write_figures(files, labels, outputs, out_dir: str, n: int = 8) -> None:
  """detections.json (`results_json`: anyone can rerun COCOeval on it) and predictions.png:
  `n` of `files`' images spread over them, true boxes green, detections scoring at least
  0.3 red."""
  with open(os.path.join(out_dir, "detections.json"), "w", encoding="utf-8") as f:
    json.dump(results_json(files, outputs), f)
  plt = reports.pyplot()
  picked = sorted(set(np.linspace(0, len(labels) - 1, min(n, len(labels))).round().astype(
      int).tolist())) if len(labels) else []
  if not picked:
    return
  cols = min(4, len(picked))
  rows = -(-len(picked) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, i in zip(axes.ravel(), picked):
    boxes, scores, classes = (np.asarray(v) for v in outputs[i])
    confident = scores >= 0.3
    ax.imshow(draw(_picture(files.inputs[i]), labels[i], (boxes[confident], scores[confident],
                                                        classes[confident]), files.class_names))
    ax.set_title(os.path.basename(files.name(i))[:28], fontsize=7)
  fig.suptitle("true boxes (green), detections with score >= 0.3 (red)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "predictions.png"), dpi=100)
  plt.close(fig)
