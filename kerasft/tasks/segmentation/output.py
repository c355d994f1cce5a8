"""The segmentation output: class probabilities per pixel, masks as labels, mean IoU
monitored, class maps served at each image's own size."""

from __future__ import annotations

import os

import numpy as np

from kerasft.core.errors import UsageError
from kerasft.data import examples
from kerasft.config.checks import check_labels_on_pixels
from kerasft.tasks.base import Output
from kerasft.tasks.segmentation import data, report

class Segmentation(Output):
  """Class probabilities per pixel ("probabilities" [N, S, S, C]); labels are masks of
  class indices (255: ignored), outputs class maps."""
  name = "segmentation"
  labels = data.Masks()
  monitor = ("val_mean_iou", "max")
  writes = ("mask_dir",)
  objective = ("mean_iou", "max")

  def refused_search_entries(self):
    return ("head", "label_smoothing", "mixup")

  def augments_in_model(self):
    """Masks move with their images in the pipeline (`graph.augment_pair`)."""
    return False

  def check(self, config):
    check_labels_on_pixels(config, self.name, "masks", "maps the class map back to each "
                           "image's own size")
    d = config.data
    if d.task_data.segmentation.mask_column != "mask" and not d.csv:
      raise UsageError("--mask_column: only goes with --csv")

  def last_layer(self, x, n, stats=None):
    """Per-pixel logits at 1/4, upsampled to the input's side `stats`, softmax (float32)."""
    import keras  # pylint: disable=g-import-not-at-top
    x = keras.layers.Conv2D(n, 1, name="logits")(x)
    x = keras.layers.Resizing(stats, stats, interpolation="bilinear", name="logits_up")(x)
    return keras.layers.Activation("softmax", dtype="float32", name=self.layer)(x)

  def loss(self, label_smoothing=0.0):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.losses.SparseCategoricalCrossentropy(ignore_class=data.IGNORE)

  def metrics(self):
    from kerasft.tasks.segmentation import graph  # pylint: disable=g-import-not-at-top
    return [graph.PixelConfusion("accuracy"), graph.PixelConfusion("iou")]

  def card(self):
    return {"task": self.name, "ignore_value": data.IGNORE}

  def served(self, result):
    """Per-image class maps [H, W] at each image's size (the export pads to the largest)."""
    return examples.objects([m[:h, :w] for m, h, w in zip(result["class_map"], result["heights"],
                                                 result["widths"])])

  def predict_row(self, key, name, values, class_names, top_k, error):
    """The classes covering most of the image and their shares of its pixels; "mask": the
    class map itself (predict writes it as a PNG with --mask_dir)."""
    if error:
      return {key: name, "classes": [], "probabilities": [], "error": error}
    shares = np.bincount(np.ravel(values), minlength=len(class_names)) / max(values.size, 1)
    top = [int(i) for i in np.argsort(-shares, kind="stable")[:top_k] if shares[i] > 0]
    return {key: name, "classes": [class_names[i] for i in top],
            "probabilities": [float(shares[i]) for i in top], "error": None, "mask": values}

  def write_masks(self, masks, mask_dir, k):
    """Writes each (file, class map) as <mask_dir>/<file's name>.png (a palette PNG)."""
    os.makedirs(mask_dir, exist_ok=True)
    for name, mask in masks:
      stem = os.path.splitext(os.path.basename(name))[0]
      data.write_mask(os.path.join(mask_dir, f"{stem}.png"), mask, k)

  def agreement(self, got, expected):
    """The largest difference and the share of pixels of the same class (probabilities
    [N, H, W, C])."""
    return {"max_difference": float(np.max(np.abs(got - expected))),
            "pixel_agreement": float(np.mean(got.argmax(-1) == expected.argmax(-1)))}

  def report(self, labels, outputs, class_names, out_dir):
    k = len(class_names)
    matrix = sum((report.confusion(t, p, k) for t, p in zip(labels, outputs)),
                 np.zeros((k, k), np.int64))
    result = report.iou_metrics(matrix, class_names)
    result["confusion_matrix"] = matrix.tolist()
    report.plot_iou(result, os.path.join(out_dir, "iou.png"))
    return result

  def headline(self, metrics):
    return (f"mean IoU {metrics['mean_iou']:.4f}, pixel accuracy "
            f"{metrics['pixel_accuracy']:.4f}")

  def table(self, metrics):
    rows = [f"{'class':<16}{'IoU':>8}{'pixels':>12}"]
    for name, r in metrics["per_class"].items():
      rows.append(f"{name:<16}{'-' if r['iou'] is None else format(r['iou'], '.4f'):>8}"
                  f"{r['pixels']:>12d}")
    rows.append(f"{'mean IoU':<16}{metrics['mean_iou']:>8.4f}{metrics['pixels']:>12d}")
    return "\n".join(rows)

  def report_sections(self, data_, headline, cards):
    return report.sections(data_, headline, cards)
