"""Object detection (`--task=detection`): boxes and their classes from an image backbone.

`DetectionTask` (an image task) with the `output.Detection` output: examples are images
with their boxes in pixels (`data`: COCO, Pascal VOC, YOLO, a CSV of boxes, Object
Detection API TFRecords, TFDS sets), the model is the backbone cut at strides 8/16/32 with
a feature pyramid and RetinaNet's subnets (`graph`), trained with the focal loss and
monitored by COCO's AP of the validation images (`val_map`). With the backbone frozen, the
pyramid's inputs are cached and only the neck and subnets train. The export (`serving`)
takes images of any size and returns the Object Detection API's outputs.
"""

from __future__ import annotations

from absl import logging

from kerasft.core.errors import UsageError
from kerasft.data import examples, records
from kerasft.data.source import Source
from kerasft.models import backbones
from kerasft.tasks.detection import data as boxed, graph, report, serving
from kerasft.tasks.image import ImageTask
from kerasft.tasks.text import TEXT_PREFIX

SOURCES = ("coco", "voc", "yolo", "csv", "tfrecord", "tfds")
NEEDS = ("--task=detection reads --coco (with --image_dir), --voc, --yolo, --csv "
         "(path,xmin,ymin,xmax,ymax,label rows), --tfrecord (the Object Detection API's keys) "
         "or --tfds (objects/bbox and objects/label)")


class DetectionTask(ImageTask):
  """Boxed images in, an image backbone's strided maps with a pyramid and subnets, boxes
  out."""

  @classmethod
  def check_inputs(cls, config) -> None:
    if config.model.model.startswith(TEXT_PREFIX):
      raise UsageError("--task=detection: finds objects in images; pass an image backbone, "
                       f"not --model={config.model.model}")
    if config.data.source not in SOURCES + ("",):
      raise UsageError(f"--{config.data.source}: {NEEDS}")
    super().check_inputs(config)

  def resolve_data(self):
    """This task; with no data source, a UsageError (there is no built-in data set)."""
    if not self.config.data.source:
      raise UsageError(f"--coco: {NEEDS}")
    return self

  def read(self, data_config, flag_prefix: str = "", split: str = "", class_names=None):
    """`Examples` of a DataConfig's source (flag_prefix "val_": its validation part, None
    when there is none; `split`: a TFDS split)."""
    d, own = data_config, data_config.task_data.detection
    flag = f"{flag_prefix}{d.source}"
    if d.tfds:
      split = split or (d.train_split if not flag_prefix else d.val_split or
                        records.tfds_validation_split(d.tfds, d.tfds_data_dir))
      if not split:
        return None
      source = Source("tfds", f"{d.tfds}[{split}]")
      read = boxed.read_tfds_boxes(d.tfds, d.tfds_data_dir, split, d.image_key, class_names)
    else:
      source = Source(flag, getattr(own if hasattr(own, flag) else d, flag))
      if not source.path:
        return None
      read = _read(source, d, own, flag_prefix, class_names)
    return boxed.checked(read, source, d.strict_data)

  def index(self, seed: int = 0):
    c = self.config.data
    train = self.read(c)
    val = self.read(c, "val_", class_names=train.class_names)
    if val is None:
      train, val = examples.stratified_split(train, c.validation_split, seed)
    counts = train.kind.class_counts(train.labels, len(train.class_names))
    logging.info("data: %d training images (%d boxes, %d without any) and %d validation "
                 "images, %d classes (%s)", len(train.inputs), sum(counts),
                 sum(1 for b in train.labels if not len(b.classes)), len(val.inputs),
                 len(train.class_names), ", ".join(train.class_names[:12]))
    return train, val

  @staticmethod
  def evaluation_examples(data_config, output, class_names, split="test"):
    return DetectionTask(None, output).read(data_config, split=split, class_names=class_names)

  def build_model(self, train_files, stats=None):
    """(this task with the backbone's image size, the detector for `train_files`)."""
    m = self.config.model
    backbone = self.backbone or backbones.build(m)
    model, taps = graph.build_detector(backbone, len(train_files.class_names), self.output,
                                       m.dropout)
    logging.info("detector: a feature pyramid on the backbone's maps %s, %d anchors", ", ".join(
        f"1/{stride} ({name})" for stride, name in taps.items()),
                 len(graph.anchors(backbone.image_size)))
    return self.replace(backbone=backbone, image_size=backbone.image_size), model

  def auto_settings(self, per_class, n, train):
    """--recipe=auto: the pyramid and subnets on the frozen backbone's cached maps; with
    200 images or more, then every block fine-tuned 4 epochs at 1e-4."""
    if n < 200:
      return {}, "pyramid and subnets on the frozen backbone"
    blocks = len(backbones.blocks(self.block_model()))
    return ({"model.unfreeze_blocks": blocks, "training.fine_tune_epochs": 4,
             "training.fine_tune_learning_rate": 1e-4},
            f"pyramid and subnets on the frozen backbone, then all {blocks} blocks "
            "fine-tuned 4 epochs")

  def pipelines(self, train, val):
    return self.joint_pipelines(train, val, graph.batches, graph.targets)

  def pipeline(self, files, batch_size: int):
    return graph.batches(files, self.config.model.image_size, batch_size, cache=False)

  def predict_examples(self, model, files, batch_size: int, view=None):
    """(each image's `Boxed` truth, its detections (boxes xyxy in its pixels, scores,
    classes)) of `model` on `files` (view: (head model, its cached inputs))."""
    net, batches = view if view is not None else (model, self.pipeline(files, batch_size))
    found = graph.detections(net, batches, [(b.width, b.height) for b in files.labels],
                             self.config.model.image_size, self.config.tasks.detection)
    return examples.objects(files.labels), examples.objects(found)

  def held_out(self, model, dataset, view=None):
    return self.predict_examples(model, dataset.val_files, self.config.data.batch_size, view)

  def input_card(self) -> dict:
    s = self.config.tasks.detection
    card = super().input_card()
    card.update(resize="squash, bilinear; boxes are fractions of the image as given",
                max_detections=s.max_detections, score_threshold=s.score_threshold,
                iou_threshold=s.iou_threshold)
    return card

  def export_signatures(self, model, class_names, labels_path):
    return serving.signatures(model, class_names, self.config.model.image_size, labels_path,
                              self.config.tasks.detection)

  def check_formats(self, formats):
    other = [f for f in formats if f != "saved_model"]
    if other:
      raise UsageError(f"--format={other[0]}: a detector exports as saved_model only: its "
                       "graph ends in CombinedNonMaxSuppression, which LiteRT has no builtin "
                       "for and tf2onnx does not convert")

  def check_explain(self) -> None:
    raise UsageError("--explain: not for --task=detection; predict --draw_dir draws each "
                     "image's boxes")

  @staticmethod
  def example_cards(files, model=None, image_size: int = 0, resize: str = ""):
    """`report.cards` of `files` (each image with its true boxes and the detections given
    to the cards; the model, size and resize mode are unused: images are drawn as they are)."""
    return report.cards(files)

  @staticmethod
  def write_figures(files, labels, outputs, out_dir: str) -> None:
    """predictions.png (`report.write_figures`)."""
    report.write_figures(files, labels, outputs, out_dir)

  def sample_inputs(self, n: int, split: str = "validation"):
    raise UsageError("--format: a detector exports as saved_model only")


def _read(source: Source, d, own, flag_prefix: str, class_names) -> boxed.Read:
  """What a file-based source holds (`data.Read`)."""
  kind = source.flag[len(flag_prefix):]
  if kind == "coco":
    image_dir = own.val_image_dir if flag_prefix else own.image_dir
    return boxed.read_coco(source, image_dir, class_names)
  if kind == "voc":
    return boxed.read_voc(source, class_names)
  if kind == "yolo":
    return boxed.read_yolo(source, class_names)
  if kind == "csv":
    return boxed.read_box_table(source, d.path_column, class_names)
  return boxed.read_box_records(source, d.label_names, class_names)

