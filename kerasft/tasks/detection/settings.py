"""--task=detection's settings: what the export keeps of its boxes, and its own sources of
boxed images (COCO, Pascal VOC, YOLO; --csv, --tfrecord and --tfds take boxes too)."""

from __future__ import annotations

import dataclasses

from kerasft.core.errors import UsageError
from kerasft.core.settings import check, positive_int, setting


@dataclasses.dataclass(frozen=True)
class DetectionSettings:
  """How many boxes a detector keeps, and from what score and overlap."""
  FOR = "only for --task=detection"  # what a message says the group is for

  max_detections: int = setting(100, "--task=detection: boxes kept per image (after non-max "
                                "suppression), in training's figures and the export.")
  score_threshold: float = setting(0.05, "--task=detection: the lowest score a kept box has "
                                   "(COCO's AP wants low-scoring boxes too).")
  iou_threshold: float = setting(0.5, "--task=detection: non-max suppression drops a box "
                                 "that overlaps a higher-scoring box of its class by more "
                                 "than this IoU.")

  def __post_init__(self):
    positive_int(self.max_detections, "max_detections")
    for name in ("score_threshold", "iou_threshold"):
      value = getattr(self, name)
      check(isinstance(value, (int, float)) and 0 <= value < 1, name, "must be in [0, 1)",
            value)


@dataclasses.dataclass(frozen=True)
class DetectionData:
  """Boxed images: a COCO instances file, a Pascal VOC folder or a YOLO folder."""
  FOR = "boxes are for --task=detection"

  coco: str = setting("", "--task=detection: a COCO instances JSON file (its images beside "
                      "it, or in --image_dir).")
  val_coco: str = setting("", "--task=detection: validation images, like --coco.")
  image_dir: str = setting("", "--task=detection with --coco: the folder of its images [the "
                           "JSON file's folder].")
  val_image_dir: str = setting("", "--task=detection with --val_coco: the folder of its "
                               "images [the JSON file's folder].")
  voc: str = setting("", "--task=detection: a Pascal VOC folder (Annotations/*.xml and "
                     "JPEGImages/).")
  val_voc: str = setting("", "--task=detection: validation images, like --voc.")
  yolo: str = setting("", "--task=detection: a YOLO folder (images/, labels/*.txt of class "
                      "and normalized centre boxes, names in classes.txt or data.yaml).")
  val_yolo: str = setting("", "--task=detection: validation images, like --yolo.")

  SOURCES = ("coco", "voc", "yolo")  # data sources (one per run); the others are their parts
  PATHS = ("coco", "val_coco", "image_dir", "val_image_dir", "voc", "val_voc", "yolo", "val_yolo")

  def __post_init__(self):
    for val, train in (("val_coco", "coco"), ("image_dir", "coco"),
                       ("val_image_dir", "val_coco"), ("val_voc", "voc"),
                       ("val_yolo", "yolo")):
      if getattr(self, val) and not getattr(self, train):
        raise UsageError(f"--{val}: only goes with --{train}")
