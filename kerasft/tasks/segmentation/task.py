"""Semantic segmentation (`--task=segmentation`): a class per pixel from an image backbone.

`SegmentationTask` (an image task) with the `output.Segmentation` output: examples are
images with masks of class indices (`data`: images/ + masks/ folders, a CSV of image and
mask paths, a TFDS set with an image and a mask feature), the model is the backbone's
multi-scale encoder with a DeepLabV3+ or FPN decoder (`graph`), the loss leaves 255 pixels
out, and the monitored metric is mean IoU. The export (`serving`) takes images of any size
and returns the class map (and the class probabilities) at each image's own size.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.data import examples, records
from kerasft.data.source import Source
from kerasft.models import backbones
from kerasft.tasks.image import ImageTask
from kerasft.tasks.segmentation import data as seg, graph, report, serving
from kerasft.tasks.text import TEXT_PREFIX

SOURCES = ("data_dir", "csv", "tfds")
NEEDS = ("--task=segmentation reads --data_dir (images/ and masks/), --csv (--path_column "
         "and --mask_column) or --tfds (an image and a mask feature)")


class SegmentationTask(ImageTask):
  """Images and masks in (--data_dir images/ + masks/, --csv, --tfds), an image backbone's
  encoder with a decoder (--decoder), class maps out."""

  @classmethod
  def check_inputs(cls, config) -> None:
    if config.model.model.startswith(TEXT_PREFIX):
      raise UsageError("--task=segmentation: labels the pixels of images; pass an image "
                       f"backbone, not --model={config.model.model}")
    d = config.data
    if d.source not in SOURCES + ("",):
      raise UsageError(f"--{d.source}: {NEEDS}")
    super().check_inputs(config)

  def resolve_data(self):
    """This task; with no data source, a UsageError (there is no built-in data set)."""
    if not self.config.data.source:
      raise UsageError(f"--data_dir: {NEEDS}")
    return self

  def read(self, data_config, flag_prefix: str = "", split: str = "", class_names=None):
    """`Examples` of a DataConfig's source (flag_prefix "val_": its validation part, None
    when there is none; `split`: a TFDS split or a folder's sub-folder)."""
    d, own = data_config, data_config.task_data.segmentation
    if d.tfds:
      split = split or (d.train_split if not flag_prefix else d.val_split or
                        records.tfds_validation_split(d.tfds, d.tfds_data_dir))
      if not split:
        return None
      source = Source("tfds", f"{d.tfds}[{split}]")
      images, masks = seg.tfds_pairs(d.tfds, d.tfds_data_dir, split, d.image_key, d.label_key)
      names = [f"{source.path}#{i}" for i in range(len(images))]
    elif d.csv:
      source = Source(f"{flag_prefix}csv", getattr(d, f"{flag_prefix}csv"))
      if not source.path:
        return None
      images, masks = seg.csv_pairs(source, d.path_column, own.mask_column)
      names = [str(p) for p in images]
    else:
      source = seg.folder_source(d, flag_prefix, split)
      if not source.path:
        return None
      images, masks = seg.folder_pairs(source)
      names = list(images)
    names_given = class_names or (seg.read_class_names(own.mask_classes) if own.mask_classes
                                  else None)
    images, masks, names, class_names = seg.check_pairs(images, masks, names, source,
                                                        names_given, d.strict_data)
    return examples.Examples(images, masks, class_names, self.output.labels, names=names)

  def index(self, seed: int = 0):
    c = self.config.data
    train = self.read(c)
    val = self.read(c, "val_", class_names=train.class_names)
    if val is not None and len(val.class_names) > len(train.class_names):
      train = self.read(c, class_names=val.class_names)  # values only validation masks have
    if val is None:
      train, val = examples.stratified_split(train, c.validation_split, seed)
    logging.info("data: %d training and %d validation images, %d classes (%s)",
                 len(train.inputs), len(val.inputs), len(train.class_names),
                 ", ".join(train.class_names[:12]))
    return train, val

  @staticmethod
  def evaluation_examples(data_config, output, class_names, split="test"):
    task = SegmentationTask(None, output)
    return task.read(data_config, split=split, class_names=class_names)

  def build_model(self, train_files, stats=None):
    """(this task with the backbone's image size, the segmenter for `train_files`)."""
    m, decoder = self.config.model, self.config.tasks.segmentation.decoder
    backbone = self.backbone or backbones.build(m)
    model, taps = graph.build_segmenter(backbone, len(train_files.class_names), self.output,
                                        decoder, m.dropout)
    logging.info("segmenter: %s decoder on the encoder's maps %s", decoder, ", ".join(
        f"1/{stride} ({name})" for stride, name in taps.items()))
    return self.replace(backbone=backbone, image_size=backbone.image_size), model

  def auto_settings(self, per_class, n, train):
    """--recipe=auto: the decoder on the frozen encoder's cached maps; with 200 images or
    more, then the whole encoder fine-tuned 4 epochs at 1e-4 (the default recipe's
    head phase alone otherwise)."""
    if n < 200:
      return {}, "decoder on the frozen encoder"
    blocks = len(backbones.blocks(self.block_model()))
    return ({"model.unfreeze_blocks": blocks, "training.fine_tune_epochs": 4,
             "training.fine_tune_learning_rate": 1e-4},
            f"decoder on the frozen encoder, then all {blocks} blocks fine-tuned 4 epochs")

  def pipelines(self, train, val):
    return self.joint_pipelines(train, val, graph.pairs, graph.masks)

  def pipeline(self, files, batch_size: int):
    return graph.pairs(files, self.config.model.image_size, batch_size, cache=False)

  def predict_examples(self, model, files, batch_size: int, view=None):
    """(true masks [N, S, S], predicted class maps [N, S, S]) of `model` on `files`."""
    size = self.config.model.image_size
    # the model called on each batch (predict_on_batch would run a whole batch on every
    # replica of a tf.distribute strategy and return it once per replica)
    net, batches = (view if view is not None else (model, self.pipeline(files, batch_size)))
    predicted = [np.argmax(net(x, training=False), -1).astype(np.uint8) for x, _ in batches]
    return (graph.masks(files, size),
            np.concatenate(predicted) if predicted else np.zeros((0, size, size), np.uint8))

  def held_out(self, model, dataset, view=None):
    return self.predict_examples(model, dataset.val_files, self.config.data.batch_size, view)

  def input_card(self) -> dict:
    card = super().input_card()
    card.update(resize="squash, bilinear; the class map back to each image's size, bilinear "
                       "on the probabilities",
                decoder=self.config.tasks.segmentation.decoder, ignore_value=seg.IGNORE)
    return card

  def export_signatures(self, model, class_names, labels_path):
    return serving.signatures(model, class_names, self.config.model.image_size, labels_path)

  def check_explain(self) -> None:
    raise UsageError("--explain: not for --task=segmentation; predict --mask_dir writes each "
                     "image's class map")

  @staticmethod
  def example_cards(files, model=None, image_size: int = 0, resize: str = ""):
    """`report.cards` of `files` (the image task's `cards`/`export_cards` pass a model, a
    size and a resize mode, unused: masks are drawn at their own size)."""
    return report.cards(files)

  @staticmethod
  def write_figures(files, labels, outputs, out_dir: str) -> None:
    """predictions.png (`report.write_figures`)."""
    report.write_figures(files, labels, outputs, out_dir)

  def register_layers(self) -> None:
    """`graph` registers PixelConfusion (imported here)."""
