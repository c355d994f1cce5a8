"""Object detection (--task=detection): the readers, box-moving augmentation, anchors and the
loss, COCO's metrics against pycocotools, training, export, evaluate and predict."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import call_main, needs_imagenet_mobilenet

import kerasft
from kerasft.data.source import Source
from kerasft.tasks.detection import data as boxed, report

COLOURS = [(220, 40, 40), (40, 60, 220), (40, 200, 60)]
NAMES = ["red", "blue", "green"]


def draw_boxes(n=24, size=(64, 72), seed=0, classes=2, empty_every=6):
  """[(file name, uint8 image [H, W, 3], [(xmin, ymin, xmax, ymax, class)])]: 0-2 coloured
  squares (class = colour) on grey noise; every `empty_every`-th image has none."""
  rng = np.random.default_rng(seed)
  h, w = size
  out = []
  for i in range(n):
    image = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
    boxes = []
    for _ in range(0 if i % empty_every == empty_every - 1 else 1 + i % 2):
      side = int(rng.integers(14, 24))
      x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
      c = int(rng.integers(0, classes))
      image[y:y + side, x:x + side] = COLOURS[c]
      boxes.append((x, y, x + side, y + side, c))
    out.append((f"{i:03d}.jpg", image, boxes))
  return out


def write_coco(root, drawn, classes=2, name="instances.json", ids=None):
  """root/images/*.jpg and root/<name> (COCO instances; category ids `ids` [1..]);
  returns the JSON's path."""
  ids = ids or list(range(1, classes + 1))
  os.makedirs(root / "images", exist_ok=True)
  images, annotations = [], []
  for i, (file_name, image, boxes) in enumerate(drawn, start=1):
    Image.fromarray(image).save(root / "images" / file_name, quality=95)
    images.append({"id": i, "file_name": file_name, "width": image.shape[1],
                   "height": image.shape[0]})
    for x0, y0, x1, y1, c in boxes:
      annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": ids[c],
                          "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                          "iscrowd": 0})
  path = root / name
  path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
      {"id": ids[c], "name": NAMES[c]} for c in range(classes)]}))
  return path


def _config(tmp_path, coco, **fields):
  training = {"epochs": 2, "head_solver": "epochs", **fields.pop("training", {})}
  model = {"task": "detection", "weights": "none", "image_size": 64, **fields.pop("model", {})}
  own = fields.pop("tasks", {})
  return kerasft.RunConfig(
      name="det", model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"),
      model=kerasft.ModelConfig(**model), training=kerasft.TrainingConfig(**training),
      data=kerasft.DataConfig.of(coco=str(coco), image_dir=str(coco.parent / "images"),
                                 batch_size=8, **fields),
      tasks=kerasft.TaskSettings.of(**own))


def _as_voc(root, drawn, classes=2):
  os.makedirs(root / "Annotations", exist_ok=True)
  os.makedirs(root / "JPEGImages", exist_ok=True)
  for file_name, image, boxes in drawn:
    Image.fromarray(image).save(root / "JPEGImages" / file_name, quality=95)
    objects = "".join(
        f"<object><name>{NAMES[c]}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1, c in boxes)
    (root / "Annotations" / (file_name[:-4] + ".xml")).write_text(
        f"<annotation><filename>{file_name}</filename>{objects}</annotation>")
  return root


def _as_yolo(root, drawn, classes=2):
  os.makedirs(root / "images", exist_ok=True)
  os.makedirs(root / "labels", exist_ok=True)
  (root / "data.yaml").write_text("names:\n" + "".join(f"  {c}: {NAMES[c]}\n"
                                                      for c in range(classes)))
  for file_name, image, boxes in drawn:
    Image.fromarray(image).save(root / "images" / file_name, quality=95)
    h, w = image.shape[:2]
    if boxes:  # an image without boxes has no label file
      (root / "labels" / (file_name[:-4] + ".txt")).write_text("".join(
          f"{c} {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}\n"
          for x0, y0, x1, y1, c in boxes))
  return root


def _as_csv(root, drawn):
  os.makedirs(root / "images", exist_ok=True)
  lines = ["path,xmin,ymin,xmax,ymax,label"]
  for file_name, image, boxes in drawn:
    Image.fromarray(image).save(root / "images" / file_name, quality=95)
    lines += [f"images/{file_name},{x0},{y0},{x1},{y1},{NAMES[c]}" for x0, y0, x1, y1, c in boxes]
    lines += [] if boxes else [f"images/{file_name},,,,,"]
  (root / "boxes.csv").write_text("\n".join(lines) + "\n")
  return root / "boxes.csv"


def _example(image, boxes, with_text=True):
  import tensorflow as tf
  encoded = tf.io.encode_jpeg(image, quality=95).numpy()
  h, w = image.shape[:2]
  floats = lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v))  # noqa: E731
  feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
             "image/object/bbox/xmin": floats([b[0] / w for b in boxes]),
             "image/object/bbox/ymin": floats([b[1] / h for b in boxes]),
             "image/object/bbox/xmax": floats([b[2] / w for b in boxes]),
             "image/object/bbox/ymax": floats([b[3] / h for b in boxes]),
             "image/object/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                 value=[b[4] + 1 for b in boxes]))}
  if with_text:
    feature["image/object/class/text"] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[NAMES[b[4]].encode() for b in boxes]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _tfds_builder(drawn, data_dir):
  import tensorflow_datasets as tfds

  class KerasftBoxes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "objects": tfds.features.Sequence({
              "bbox": tfds.features.BBoxFeature(),
              "label": tfds.features.ClassLabel(names=NAMES[:2])})}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for file_name, image, boxes in drawn:
        h, w = image.shape[:2]
        yield file_name, {"image": image, "objects": {
            "bbox": [tfds.features.BBox(y0 / h, x0 / w, y1 / h, x1 / w)
                     for x0, y0, x1, y1, _ in boxes],
            "label": [c for *_, c in boxes]}}
  KerasftBoxes(data_dir=str(data_dir)).download_and_prepare()
  return "kerasft_boxes"


def _summary(boxes_per_image):
  """Each image's (boxes rounded to whole pixels, class names, size), sorted (TFDS shuffles
  its records)."""
  return sorted(boxes_per_image, key=lambda e: (np.round(np.reshape(e[0], (-1, 4))).tolist(),
                                                e[1]))


def test_every_reader_gives_the_same_examples(tmp_path):
  import tensorflow as tf
  from kerasft.tasks.detection.output import Detection
  from kerasft.tasks.detection.task import DetectionTask
  drawn = draw_boxes(8)
  coco = write_coco(tmp_path / "coco", drawn)
  task = DetectionTask(None, Detection())
  sources = {"coco": kerasft.DataConfig.of(coco=str(coco), image_dir=str(tmp_path / "coco" / "images")),
             "voc": kerasft.DataConfig.of(voc=str(_as_voc(tmp_path / "voc", drawn))),
             "yolo": kerasft.DataConfig.of(yolo=str(_as_yolo(tmp_path / "yolo", drawn))),
             "csv": kerasft.DataConfig.of(csv=str(_as_csv(tmp_path / "csv", drawn)))}
  with tf.io.TFRecordWriter(str(tmp_path / "boxes.tfrecord")) as writer:
    for _, image, boxes in drawn:
      writer.write(_example(image, boxes))
  sources["tfrecord"] = kerasft.DataConfig.of(tfrecord=str(tmp_path / "boxes.tfrecord"))
  name = _tfds_builder(drawn, tmp_path / "tfds")
  sources["tfds"] = kerasft.DataConfig.of(tfds=name, tfds_data_dir=str(tmp_path / "tfds"))
  expected = [([list(map(float, b[:4])) for b in boxes], [NAMES[b[4]] for b in boxes],
               (72, 64)) for _, _, boxes in drawn]
  for flag, config in sources.items():
    files = task.read(config)
    # COCO, YOLO and TFDS name the classes in their id order; VOC, CSV and TFRecord texts
    # have no order: sorted
    assert files.class_names == (NAMES[:2] if flag in ("coco", "yolo", "tfds") else
                                 sorted(NAMES[:2])), flag
    got = _summary([(b.boxes.tolist(), [files.class_names[c] for c in b.classes],
                     (b.width, b.height)) for b in files.labels])
    assert len(got) == len(expected), flag
    for (boxes, classes, size), (want_boxes, want_classes, want_size) in zip(
        got, _summary(expected)):
      assert classes == want_classes and size == want_size, flag
      # TFDS stores boxes as float32 fractions; the others give whole pixels
      np.testing.assert_allclose(np.reshape(boxes, (-1, 4)), np.reshape(want_boxes, (-1, 4)),
                                 atol=0.01 if flag == "tfds" else 1e-4, err_msg=flag)
  assert sum(1 for b in task.read(sources["coco"]).labels if not len(b.classes)) == 1
  assert task.read(sources["coco"]).labels[0].image_id == 1


def test_boxes_are_clipped_empty_ones_skipped_with_a_warning_or_refused(tmp_path, caplog):
  drawn = draw_boxes(2)
  drawn[0][2][:] = [(-5, 10, 30, 80, 0), (20, 20, 20, 40, 1), (40, 30, 30, 50, 0)]
  coco = write_coco(tmp_path, drawn)
  read = boxed.read_coco(Source("coco", str(coco)), str(tmp_path / "images"))
  files = boxed.checked(read, Source("coco", str(coco)))
  np.testing.assert_array_equal(files.labels[0].boxes, [[0, 10, 30, 64]])  # clipped to 72x64
  assert "skipping 2 empty or inverted boxes in 1 images: 000.jpg" in caplog.text
  with pytest.raises(kerasft.UsageError, match=r"--strict_data: 000.jpg has 2 empty or "
                     r"inverted box\(es\) \(from --coco\)"):
    boxed.checked(read, Source("coco", str(coco)), strict=True)


def test_validation_split_takes_a_share_of_each_class_and_of_the_empty_images():
  from kerasft.data import examples
  labels = [boxed.Boxed(np.zeros((len(c), 4), np.float32), np.asarray(c, np.int32),
                        np.zeros(len(c), bool), 10, 10) for c in
            [[0], [0, 1], [1], [1, 1], [], [], [2], [0], [1], []]]
  files = examples.Examples([f"{i}.jpg" for i in range(10)], labels, ["a", "b", "c"],
                            boxed.Boxes())
  train, val = examples.stratified_split(files, 0.3, 0)
  assert len(train.inputs) + len(val.inputs) == 10
  assert {0, 1} <= {int(np.bincount(b.classes).argmax()) for b in val.labels if len(b.classes)}
  # the images without boxes and the one whose class no other image shares: one stratum,
  # split like the others (a class in one image alone cannot be split)
  assert sum(1 for b in val.labels if not len(b.classes) or 2 in b.classes) == 1
