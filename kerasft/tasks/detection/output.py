"""The detection output: each anchor's box offsets and class logits, boxed images as labels,
COCO's AP of the validation images monitored (`val_map`), detections served in the TF Object
Detection API's shape."""

from __future__ import annotations

import os

import numpy as np

from kerasft.data import examples
from kerasft.config.checks import check_labels_on_pixels
from kerasft.tasks.base import Output
from kerasft.tasks.detection import data, report

class Detection(Output):
  """Raw anchor outputs ("detections" [N, A, 4 + C]); labels are `data.Boxed` per image,
  outputs per image (boxes xyxy in the image's pixels, scores, class indices)."""
  name = "detection"
  layer = "detections"
  labels = data.Boxes()
  monitor = ("val_map", "max")
  writes = ("draw_dir",)
  objective = ("map", "max")

  def refused_search_entries(self):
    return ("head", "label_smoothing", "mixup")

  def augments_in_model(self):
    """Boxes move with their images in the pipeline (`graph.augment`)."""
    return False

  def check(self, config):
    check_labels_on_pixels(config, self.name, "boxes", "scales the boxes with them")

  def last_layer(self, x, n, stats=None):
    """The pyramid levels' per-anchor outputs `x` [[N, A_l, 4 + n]] joined (float32)."""
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Concatenate(axis=1, dtype="float32", name=self.layer)(x)

  def loss(self, label_smoothing=0.0):
    from kerasft.tasks.detection import graph  # pylint: disable=g-import-not-at-top
    return graph.DetectionLoss()

  def metrics(self):
    """None compiled: `val_map` comes from `epoch_callbacks` (COCO's AP needs every image's
    detections)."""
    return []

  def epoch_callbacks(self, config, val, val_files) -> list:
    from kerasft.tasks.detection import graph  # pylint: disable=g-import-not-at-top
    return [graph.MeanAP(val, val_files, config.model.image_size, config.tasks.detection,
                         report.coco)]

  def card(self):
    return {"task": self.name, "boxes": "detection_boxes: ymin, xmin, ymax, xmax as "
            "fractions of the image; detection_classes: 1-based ids (line i of labels.txt "
            "names id i)"}

  def served(self, result):
    """Per image (boxes [k, 4] xyxy in its pixels, scores [k], 0-based classes [k])."""
    out = []
    for i, k in enumerate(np.asarray(result["num_detections"]).astype(int)):
      h, w = float(result["heights"][i]), float(result["widths"][i])
      yxyx = np.asarray(result["detection_boxes"][i, :k]) * [h, w, h, w]
      out.append((yxyx[:, [1, 0, 3, 2]].astype(np.float32), result["detection_scores"][i, :k],
                  np.asarray(result["detection_classes"][i, :k]).astype(int) - 1))
    return examples.objects(out)

  def main_output(self, result):
    return np.asarray(result["detection_boxes"])

  def predict_row(self, key, name, values, class_names, top_k, error):
    """The image's boxes: class, score, pixel box (xmin, ymin, xmax, ymax)."""
    if error:
      return {key: name, "classes": [], "probabilities": [], "boxes": [], "error": error}
    boxes, scores, classes = values
    return {key: name, "classes": [class_names[c] for c in classes],
            "probabilities": [float(s) for s in scores],
            "boxes": [{"class": class_names[c], "score": round(float(s), 5),
                       **{k: round(float(v), 1) for k, v in zip(
                           ("xmin", "ymin", "xmax", "ymax"), b)}}
                      for b, s, c in zip(boxes, scores, classes)], "error": None}

  def write_drawings(self, rows: list[dict], draw_dir: str) -> None:
    """predict --draw_dir: each readable image with its boxes drawn and labelled, as
    <draw_dir>/<name>.png."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    os.makedirs(draw_dir, exist_ok=True)
    for row in rows:
      if row["error"]:
        continue
      with Image.open(row["file"]) as image:
        pixels = np.asarray(image.convert("RGB"))
      boxes = [(b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in row["boxes"]]
      found = (boxes, [b["score"] for b in row["boxes"]], list(range(len(boxes))))
      drawn = report.draw(pixels, None, found, [b["class"] for b in row["boxes"]])
      stem = os.path.splitext(os.path.basename(row["file"]))[0]
      Image.fromarray(drawn).save(os.path.join(draw_dir, f"{stem}.png"))

  def agreement(self, got, expected):
    """The largest difference of the boxes [N, K, 4] (the main output)."""
    return {"max_difference": float(np.max(np.abs(got - expected)))}

  def report(self, labels, outputs, class_names, out_dir):
    result = report.coco(list(labels), list(outputs), class_names)
    report.plot(result, out_dir)
    return result

  def headline(self, metrics):
    return (f"AP {metrics['map']:.4f} (AP50 {metrics['ap50']:.4f}, AP75 "
            f"{metrics['ap75']:.4f}, AR@100 {metrics['ar100']:.4f})")

  def table(self, metrics):
    rows = [f"{'class':<16}{'AP':>8}{'AP50':>8}"]
    for name, r in metrics["per_class"].items():
      rows.append(f"{name:<16}{r['ap']:>8.4f}{r['ap50']:>8.4f}")
    rows.append(f"{'mean':<16}{metrics['map']:>8.4f}{metrics['ap50']:>8.4f}")
    rows.append("AP small/medium/large " + "/".join(
        f"{metrics[f'ap_{s}']:.4f}" for s in ("small", "medium", "large")))
    return "\n".join(rows)

  def report_sections(self, data_, headline, cards):
    return report.sections(data_, headline, cards)
