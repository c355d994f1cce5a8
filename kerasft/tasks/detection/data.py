"""Boxed images from the formats detection teams have, read into the same examples: an
image, its boxes in pixels (xmin, ymin, xmax, ymax), a class per box, and COCO's crowd
regions (ignored in the loss and the metrics, as COCO does). Readers: COCO instances JSON
(`read_coco`), Pascal VOC (`read_voc`; `difficult` boxes are crowd-like), YOLO
(`read_yolo`), a CSV of `path,xmin,ymin,xmax,ymax,label` rows (`read_box_table`), TFRecords
with the TF Object Detection API's keys (`read_box_records`), TFDS sets with `objects/bbox`
and `objects/label` (`read_tfds_boxes`). Boxes outside the image are clipped to it; empty
or inverted ones are skipped with a warning naming the file (--strict_data: an error); an
unknown class, a missing image or an unreadable annotation file is one line naming the
file. TensorFlow only inside the TFRecord and TFDS readers.
"""

from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ElementTree
from typing import NamedTuple

import numpy as np
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.data import examples, records, tables
from kerasft.data.folders import is_image
from kerasft.data.labels import Classes
from kerasft.data.source import Source

MIN_SIDE = 1.0  # pixels: a box narrower or lower than this after clipping is empty


class Boxed(NamedTuple):
  """An image's labels: boxes float32 [n, 4] (xmin, ymin, xmax, ymax in pixels), classes
  int32 [n] (indices into the class names), crowd bool [n], the image's size, and its id
  in its COCO file (0: none; results then number the images 1.. in order)."""
  boxes: np.ndarray
  classes: np.ndarray
  crowd: np.ndarray
  width: int
  height: int
  image_id: int = 0


class Read(NamedTuple):
  """What a reader gives `checked`: items [(image path or bytes, name, boxes or None[,
  COCO image id])], the class names, and their COCO category ids (() when the data has
  none: results number the classes 1..K)."""
  items: list
  names: list
  category_ids: tuple = ()


class Boxes(Classes):
  """An image's label is its `Boxed` boxes; the class names are the boxes' classes, whose
  ids in the data are `category_ids` (COCO's; () for 1..K)."""
  task, noun, min_classes = "detection", "classes", 1

  def __init__(self, category_ids: tuple = ()):
    self.category_ids = tuple(category_ids)

  def strata(self, labels, class_names=None):
    """Each image's most frequent class, so that a validation split takes a share of each
    class as well as boxes allow; -1 for images without boxes and for classes that are the
    most frequent in fewer than 2 images."""
    strata = np.asarray([int(np.bincount(b.classes).argmax()) if len(b.classes) else -1
                         for b in labels], np.int64)
    values, counts = np.unique(strata, return_counts=True)
    return np.where(np.isin(strata, values[counts < 2]), -1, strata)

  def class_counts(self, labels, k):
    """Boxes per class (crowd regions left out)."""
    ids = np.concatenate([b.classes[~b.crowd] for b in labels] or [np.zeros(0, np.int32)])
    return np.bincount(ids, minlength=k).tolist()

  def evaluation_labels(self, files):
    return examples.objects(files.labels)


def image_size(item) -> tuple[int, int]:
  """(width, height) of an image file or encoded bytes, from its header."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
    return image.size


def checked(read: Read, source: Source, strict: bool = False) -> examples.Examples:
  """Examples of a reader's `Read`: each image's size read (a missing or unreadable image
  is a UsageError naming it), boxes clipped to it, empty or inverted boxes skipped with one
  warning naming the files (--strict_data: a UsageError)."""
  inputs, labels, names, skipped = [], [], [], []
  for item, name, raw, *image_id in read.items:
    try:
      width, height = image_size(item)
    except FileNotFoundError:
      raise source.error(f"{name}: the image does not exist") from None
    except (OSError, ValueError) as e:
      raise source.error(f"{name}: not a readable image ({e})") from None
    if hasattr(raw, "in_pixels"):  # YOLO's, records' and TFDS' normalized boxes
      raw = raw.in_pixels(width, height)
    boxed, dropped = _clipped(raw, width, height, *image_id)
    if dropped:
      skipped.append((name, dropped))
    inputs.append(item)
    labels.append(boxed)
    names.append(name)
  if skipped and strict:
    raise UsageError(f"--strict_data: {skipped[0][0]} has {skipped[0][1]} empty or inverted "
                     f"box(es) (from --{source.flag}); fix them or leave out --strict_data")
  if skipped:
    logging.warning("--%s: skipping %d empty or inverted boxes in %d images: %s%s",
                    source.flag, sum(n for _, n in skipped), len(skipped),
                    ", ".join(n for n, _ in skipped[:10]), " ..." if len(skipped) > 10 else "")
  if not inputs:
    raise source.error(f"{source.path} holds no images")
  return examples.Examples(inputs, labels, list(read.names), Boxes(read.category_ids), names)


def _clipped(raw, width: int, height: int, image_id: int = 0) -> tuple[Boxed, int]:
  """(the boxes clipped to the image, how many were empty or inverted and dropped)."""
  if raw is None or not len(raw[0]):
    return Boxed(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, bool),
                 width, height, image_id), 0
  boxes, classes, crowd = (np.asarray(raw[0], np.float32).reshape(-1, 4),
                           np.asarray(raw[1], np.int32), np.asarray(raw[2], bool))
  valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
  valid &= ((boxes[:, 2] - boxes[:, 0]) >= MIN_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_SIDE)
  return (Boxed(boxes[valid], classes[valid], crowd[valid], width, height, image_id),
          int(np.sum(~valid)))


def _json(source: Source) -> dict:
  if not os.path.isfile(source.path):
    raise source.error(f"{source.path} does not exist")
  try:
    with open(source.path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise source.error(f"{source.path} is not a readable JSON file ({e})") from None


def read_coco(source: Source, image_dir: str = "", class_names=None) -> "Read":
  """The `Read` of a COCO instances file (with image and category ids); the class names are the
  categories' names in category-id order (or `class_names`: another file's, which every
  category must be among). Images are in `image_dir` [the file's folder]."""
  coco = _json(source)
  if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not \
      isinstance(coco.get("annotations"), list) or not coco.get("categories"):
    raise source.error(f"{source.path} is not a COCO instances file (it needs 'images', "
                       "'annotations' and 'categories')")
  categories = sorted(coco["categories"], key=lambda c: c["id"])
  names = class_names or [str(c["name"]) for c in categories]
  unknown = [c["name"] for c in categories if c["name"] not in names]
  if unknown:
    raise source.error(f"{source.path} has categories the training data does not have: "
                       f"{', '.join(map(str, unknown[:5]))}")
  index = {c["id"]: names.index(c["name"]) for c in categories}
  folder = image_dir or os.path.dirname(os.path.abspath(source.path))
  per_image = {img["id"]: ([], [], []) for img in coco["images"]}
  for a in coco["annotations"]:
    if a.get("image_id") not in per_image:
      raise source.error(f"{source.path}: annotation {a.get('id')} names image "
                         f"{a.get('image_id')}, which the file does not list")
    if a.get("category_id") not in index:
      raise source.error(f"{source.path}: annotation {a.get('id')} has category_id "
                         f"{a.get('category_id')}, which no category has; fix the file")
    x, y, w, h = (float(v) for v in a["bbox"])
    boxes, classes, crowd = per_image[a["image_id"]]
    boxes.append((x, y, x + w, y + h))
    classes.append(index[a["category_id"]])
    crowd.append(bool(a.get("iscrowd", 0)))
  items = [(os.path.join(folder, img["file_name"]), img["file_name"], per_image[img["id"]],
            img["id"]) for img in coco["images"]]
  ids = {index[c["id"]]: c["id"] for c in categories}
  return Read(items, names, tuple(ids.get(i, 0) for i in range(len(names))))


def read_voc(source: Source, class_names=None) -> "Read":
  """The `Read` of a Pascal VOC folder: Annotations/*.xml (object/name,
  object/bndbox, object/difficult, which COCO-style metrics ignore) and JPEGImages/."""
  folder = source.path
  notes = os.path.join(folder, "Annotations")
  if not os.path.isdir(notes):
    raise source.error(f"{folder} has no Annotations/ folder (Pascal VOC: Annotations/*.xml "
                       "and JPEGImages/)")
  parsed = []
  for name in sorted(os.listdir(notes)):
    if not name.endswith(".xml"):
      continue
    path = os.path.join(notes, name)
    try:
      root = ElementTree.parse(path).getroot()
      objects_ = [(o.findtext("name", "").strip(), [float(o.find("bndbox").findtext(k))
                                                    for k in ("xmin", "ymin", "xmax", "ymax")],
                   o.findtext("difficult", "0").strip() == "1") for o in root.iter("object")]
      file_name = root.findtext("filename", os.path.splitext(name)[0] + ".jpg").strip()
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError) as e:
      raise source.error(f"{path} is not a readable VOC annotation ({e})") from None
    parsed.append((os.path.join(folder, "JPEGImages", file_name), file_name, objects_))
  if not parsed:
    raise source.error(f"{notes} holds no .xml annotations")
  names = class_names or sorted({o[0] for _, _, objs in parsed for o in objs})
  return Read([(path, file_name, _named(objs, names, source, path))
               for path, file_name, objs in parsed], names)


def _named(objs: list, names: list[str], source: Source, path: str) -> tuple:
  """(boxes, class indices, crowd) of [(class name, box, crowd)] read from `path`."""
  unknown = [o[0] for o in objs if o[0] not in names]
  if unknown:
    raise source.error(f"{path}: class {unknown[0]!r} is not among the classes "
                       f"({', '.join(names[:10])})")
  return ([o[1] for o in objs], [names.index(o[0]) for o in objs], [o[2] for o in objs])


def _yolo_names(folder: str, source: Source) -> list[str]:
  """The class names of a YOLO folder: classes.txt (one per line) or data.yaml's names."""
  text = os.path.join(folder, "classes.txt")
  if os.path.isfile(text):
    with open(text, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  yaml_path = os.path.join(folder, "data.yaml")
  if os.path.isfile(yaml_path):
    try:
      import yaml  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise source.error(f"{yaml_path}: reading it needs PyYAML (pip install pyyaml); or "
                         "list the class names in classes.txt, one per line") from None
    with open(yaml_path, encoding="utf-8") as f:
      names = (yaml.safe_load(f) or {}).get("names")
    if isinstance(names, dict):
      names = [names[k] for k in sorted(names)]
    if names:
      return [str(n) for n in names]
  raise source.error(f"{folder} names no classes: add classes.txt (one per line) or data.yaml "
                     "with 'names'")


def read_yolo(source: Source, class_names=None) -> "Read":
  """The `Read` of a YOLO folder: images/ and labels/<stem>.txt, a line `class cx
  cy w h` per box, normalized to the image; an image without a label file is a negative."""
  folder = source.path
  images_dir, labels_dir = os.path.join(folder, "images"), os.path.join(folder, "labels")
  if not os.path.isdir(images_dir):
    raise source.error(f"{folder} has no images/ folder (YOLO: images/ and labels/)")
  names = _yolo_names(folder, source)
  if class_names and names != list(class_names):
    raise source.error(f"{folder} names classes {names[:5]}..., the training data "
                       f"{list(class_names)[:5]}...")
  items = []
  for file_name in sorted(n for n in os.listdir(images_dir) if is_image(n)):
    path = os.path.join(images_dir, file_name)
    label = os.path.join(labels_dir, os.path.splitext(file_name)[0] + ".txt")
    items.append((path, file_name, _yolo_boxes(label, len(names), source)))
  return Read(items, names)


def _yolo_boxes(label_path: str, k: int, source: Source):
  """The `NormalizedBoxes` of one YOLO label file of `class cx cy w h` rows (None: no
  file: an image without boxes)."""
  if not os.path.isfile(label_path):
    return None
  rows = []
  with open(label_path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      try:
        cls, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
      except (ValueError, TypeError):
        raise source.error(f"{label_path} line {number}: expected 'class cx cy w h', got "
                           f"{line.strip()!r}") from None
      if not 0 <= cls < k:
        raise source.error(f"{label_path} line {number}: class {cls}, but {k} classes are "
                           f"named (0..{k - 1})")
      rows.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cls))
  return NormalizedBoxes(np.asarray([r[:4] for r in rows], np.float32).reshape(-1, 4),
                         [r[4] for r in rows])


def read_box_table(source: Source, path_column: str = "path", class_names=None
                   ) -> "Read":
  """The `Read` of a CSV of `path,xmin,ymin,xmax,ymax,label` rows, paths
  relative to the file's folder, a row per box; a row with an empty label is an image
  without boxes."""
  columns = [path_column, "xmin", "ymin", "xmax", "ymax", "label"]
  rows = tables.read_table(source, columns)
  names = class_names or sorted({str(r["label"]).strip() for r in rows
                                 if str(r["label"] or "").strip()})
  folder = os.path.dirname(os.path.abspath(source.path))
  per_image: dict = {}
  for number, r in enumerate(rows, 1):
    path = os.path.join(folder, str(r[path_column] or ""))
    boxes, classes, crowd = per_image.setdefault(path, ([], [], []))
    label = str(r["label"] or "").strip()
    if not label:
      continue
    if label not in names:
      raise source.error(f"{source.path} row {number}: class {label!r} is not among the "
                         f"classes ({', '.join(names[:10])})")
    try:
      boxes.append(tuple(float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
    except (TypeError, ValueError):
      raise source.error(f"{source.path} row {number}: xmin, ymin, xmax, ymax must be "
                         "numbers (pixels)") from None
    classes.append(names.index(label))
    crowd.append(False)
  return Read([(path, path, raw) for path, raw in per_image.items()], names)


def read_box_records(source: Source, label_names: str = "", class_names=None
                     ) -> "Read":
  """The `Read` of TFRecord files (`source.path`: a glob) with the TF Object
  Detection API's keys: image/encoded, image/object/bbox/{xmin,ymin,xmax,ymax}
  (normalized), image/object/class/label (1-based ids) and, when present,
  image/object/class/text (names; else --label_names' line i names id i, else the ids); an
  id or text not among `class_names` (the training data's) is a UsageError."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(tf.io.gfile.glob(source.path))
  if not files:
    raise source.error(f"no files match {source.path}")
  floats = {k: tf.io.VarLenFeature(tf.float32) for k in ("xmin", "ymin", "xmax", "ymax")}
  spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
          "image/object/class/label": tf.io.VarLenFeature(tf.int64),
          "image/object/class/text": tf.io.VarLenFeature(tf.string),
          **{f"image/object/bbox/{k}": v for k, v in floats.items()}}
  rows = []
  for path in files:
    try:
      for i, record in enumerate(tf.data.TFRecordDataset(path)):
        e = tf.io.parse_single_example(record, spec)
        rows.append((e["image/encoded"].numpy(), f"{path}#{i}",
                     np.stack([tf.sparse.to_dense(e[f"image/object/bbox/{k}"]).numpy()
                               for k in ("xmin", "ymin", "xmax", "ymax")], 1),
                     tf.sparse.to_dense(e["image/object/class/label"]).numpy(),
                     [t.decode() for t in tf.sparse.to_dense(e["image/object/class/text"],
                                                             b"").numpy()]))
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      raise source.error(f"{path} is not a TFRecord file of tf.train.Examples with the "
                         f"Object Detection API's keys: {e.message.splitlines()[0]}") from None
  if any(not r[0] for r in rows):
    raise source.error(f"{next(r[1] for r in rows if not r[0])} has no image/encoded")
  if label_names and not os.path.isfile(label_names):
    raise UsageError(f"--label_names: file {label_names} does not exist")
  with open(label_names or os.devnull, encoding="utf-8") as f:
    lines = [line.strip() for line in f if line.strip()]  # line i names label id i
  parsed = [(image, name, [(t or (lines[i - 1] if 0 < i <= len(lines) else str(i)), b, False)
                           for i, t, b in zip(ids.tolist(), texts, boxes.tolist())])
            for image, name, boxes, ids, texts in rows]
  names = class_names or lines or sorted({o[0] for _, _, objs in parsed for o in objs},
                                         key=lambda n: (len(n), n) if n.isdigit() else (0, n))
  return Read([(image, name, NormalizedBoxes(*_named(objs, names, source, name)))
               for image, name, objs in parsed], names)


class NormalizedBoxes(NamedTuple):
  """Boxes as fractions of the image (xmin, ymin, xmax, ymax), scaled once its size is
  known (YOLO's, records', TFDS'), with their classes and crowd flags."""
  boxes: np.ndarray
  classes: list
  crowd: list = ()

  def in_pixels(self, width: int, height: int) -> tuple:
    return (np.asarray(self.boxes, np.float32).reshape(-1, 4) * [width, height, width, height],
            self.classes,
            [bool(c) for c in self.crowd] or [False] * len(self.classes))


def read_tfds_boxes(name: str, data_dir: str, split: str, image_key: str = "",
                    class_names=None) -> "Read":
  """The `Read` of a prepared TFDS set with an image and `objects/bbox`
  (normalized ymin, xmin, ymax, xmax) and `objects/label` (a ClassLabel), as coco/2017 and
  voc hold them; `objects/is_crowd` is read where it exists."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = records.tfds_builder(name, data_dir)
  features = builder.info.features
  image_key = image_key or next((k for k, f in features.items()
                                 if isinstance(f, tfds.features.Image)), "")
  objects_ = features["objects"] if "objects" in features else None
  if not image_key or objects_ is None or "bbox" not in objects_ or "label" not in objects_:
    raise UsageError(f"--tfds: {name} has no image with objects/bbox and objects/label "
                     f"(its features: {', '.join(features)})")
  names = class_names or list(objects_["label"].names)
  ds = records.tfds_split(builder, name, data_dir, split,
                          {image_key: tfds.decode.SkipDecoding()})
  items = []
  for i, e in enumerate(tfds.as_numpy(ds)):
    o = e["objects"]
    boxes = np.asarray(o["bbox"], np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
    crowd = list(o.get("is_crowd", np.zeros(len(boxes), bool)))
    items.append((e[image_key], f"{name}[{split}]#{i}",
                  NormalizedBoxes(boxes, list(o["label"]), crowd)))
  if not items:
    raise UsageError(f"--tfds: split {split!r} of {name} is empty")
  return Read(items, names)
