"""Semantic segmentation (`--task=segmentation`): a class per pixel from an image backbone.

The `Segmentation` output and the `SegmentationTask` (an image task) together: examples
are images with masks of class indices (`kerasft.segmentation`: images/ + masks/ folders,
a CSV of image and mask paths, a TFDS set with an image and a mask feature), the model is
the backbone's multi-scale encoder with a DeepLabV3+ or FPN decoder
(`kerasft.segmentation_graph`), the loss leaves 255 pixels out, and the monitored metric
is mean IoU. The export takes images of any size and returns the class map (and the
class probabilities) at each image's own size.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from kerasft.tasks.segmentation import data as seg
from kerasft.core.errors import UsageError, refuse
from kerasft.tasks.image import ImageTask
from kerasft.tasks.classify.outputs import Output

SOURCES = ("data_dir", "csv", "tfds")
AUGMENTATIONS = ("flip", "zoom", "translate", "contrast")  # what moves masks with images
NEEDS = ("--task=segmentation reads --data_dir (images/ and masks/), --csv (--path_column "
         "and --mask_column) or --tfds (an image and a mask feature)")


def objects(items: list) -> np.ndarray:
  """A 1-D object array of per-image arrays (of different sizes)."""
  out = np.empty(len(items), object)
  out[:] = list(items)
  return out


class Segmentation(Output):
  """Class probabilities per pixel ("probabilities" [N, S, S, C]); labels are masks of
  class indices (255: ignored), outputs class maps."""
  name = "segmentation"
  sliceable = False
  monitor = ("val_mean_iou", "max")
  objective = ("mean_iou", "max")
  one_label = False
  convex = False  # a decoder trains by epochs
  model_augmentation = False  # masks move with images in the pipeline
  per_pixel = True
  unsearched = ("head", "label_smoothing", "mixup")

  def strata(self, labels, class_names=None):
    return None

  def class_counts(self, labels, k):
    return None

  def check(self, config):
    d, t = config.data, config.training
    refuse(self.name, class_weight=d.class_weight != "none", oversample=d.oversample,
            slice_column=bool(d.slice_column), calibrate=t.calibrate != "none",
            mixup=bool(d.mixup), cutmix=bool(d.cutmix), label_smoothing=bool(t.label_smoothing),
            head=bool(config.model.head), recipe=config.methods.recipe == "few_shot",
            label_column=d.label_column != "label")
    if d.resize != "squash":
      raise UsageError("--resize: --task=segmentation squashes images to the square and maps "
                       "the class map back to each image's own size; leave --resize out")
    other = [a for a in d.augment if a not in AUGMENTATIONS]
    if other:
      raise UsageError(f"--augment={other[0]}: --task=segmentation moves masks with images "
                       f"for {', '.join(AUGMENTATIONS)}")

  def targets(self, labels, k):
    raise ValueError("segmentation targets are per pixel: SegmentationTask.masks")

  def evaluation_labels(self, files):
    return objects([seg.read_mask(m, files.name(i)) for i, m in enumerate(files.labels)])

  def last_layer(self, x, n, stats=None):
    """Per-pixel logits at 1/4, upsampled to the input's side `stats`, softmax (float32)."""
    import keras  # pylint: disable=g-import-not-at-top
    x = keras.layers.Conv2D(n, 1, name="logits")(x)
    x = keras.layers.Resizing(stats, stats, interpolation="bilinear", name="logits_up")(x)
    return keras.layers.Activation("softmax", dtype="float32", name=self.layer)(x)

  def solver(self, model, standardize=True, floor=0.0):
    return None

  def loss(self, label_smoothing=0.0):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.losses.SparseCategoricalCrossentropy(ignore_class=seg.IGNORE)

  def metrics(self):
    from kerasft.tasks.segmentation.graph import PixelConfusion
    return [PixelConfusion("accuracy"), PixelConfusion("iou")]

  def card(self):
    return {"task": self.name, "ignore_value": seg.IGNORE}

  def served(self, result):
    """Per-image class maps [H, W] at each image's size (the export pads to the largest)."""
    return objects([m[:h, :w] for m, h, w in zip(result["class_map"], result["heights"],
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

  def calibrate(self, labels, outputs, fit):
    return outputs, None, None

  def agreement(self, got, expected):  # per-pixel probabilities [N, H, W, C]
    return {"max_difference": float(np.max(np.abs(got - expected))),
            "pixel_agreement": float(np.mean(got.argmax(-1) == expected.argmax(-1)))}

  def report(self, labels, outputs, class_names, out_dir):
    k = len(class_names)
    matrix = sum((seg.confusion(t, p, k) for t, p in zip(labels, outputs)),
                 np.zeros((k, k), np.int64))
    result = seg.iou_metrics(matrix, class_names)
    result["confusion_matrix"] = matrix.tolist()
    seg.plot_iou(result, os.path.join(out_dir, "iou.png"))
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


class SegmentationTask(ImageTask):
  """Images and masks in (--data_dir images/ + masks/, --csv, --tfds), an image backbone's
  encoder with a decoder (--decoder), class maps out."""

  @classmethod
  def check_inputs(cls, config) -> None:
    from kerasft.tasks import registry as tasks
    if config.model.model.startswith(tasks.TEXT_PREFIX):
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
    """`kerasft.data.Examples` of a DataConfig's source (flag_prefix "val_": its validation
    part, None when there is none; `split`: a TFDS split or a folder's sub-folder)."""
    from kerasft.data import examples as data
    d = data_config
    if d.tfds:
      from kerasft.data import records
      split = split or (d.train_split if not flag_prefix else d.val_split or
                        records.tfds_validation_split(d.tfds, d.tfds_data_dir))
      if not split:
        return None
      flag, where = "tfds", f"{d.tfds}[{split}]"
      images, masks = _tfds_pairs(d.tfds, d.tfds_data_dir, split, d.image_key, d.label_key)
      names = [f"{where}#{i}" for i in range(len(images))]
    elif d.csv:
      flag = f"{flag_prefix}csv"
      if not getattr(d, flag):
        return None
      images, masks = _csv_pairs(getattr(d, flag), flag, d.path_column, d.mask_column)
      names = [str(p) for p in images]
    else:
      flag, folder = _folder(d, flag_prefix, split)
      if not folder:
        return None
      images, masks = seg.folder_pairs(folder, flag)
      names = list(images)
    names_given = class_names or (seg.read_class_names(d.mask_classes) if d.mask_classes
                                  else None)
    images, masks, names, class_names = seg.check_pairs(images, masks, names, flag,
                                                        names_given, d.strict_data)
    return data.Examples(images, masks, class_names, self.output, names=names)

  def index(self, seed: int = 0):
    from kerasft.data import examples as data
    c = self.config.data
    train = self.read(c)
    val = self.read(c, "val_", class_names=train.class_names)
    if val is not None and len(val.class_names) > len(train.class_names):
      train = self.read(c, class_names=val.class_names)  # values only validation masks have
    if val is None:
      train, val = data.stratified_split(train, c.validation_split, seed)
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
    from kerasft.models import backbones
    from kerasft.tasks.segmentation import graph
    m = self.config.model
    backbone = self.backbone or backbones.build(m)
    model, taps = graph.build_segmenter(backbone, len(train_files.class_names), self.output,
                                        m.decoder, m.dropout)
    logging.info("segmenter: %s decoder on the encoder's maps %s", m.decoder, ", ".join(
        f"1/{stride} ({name})" for stride, name in taps.items()))
    return self.replace(backbone=backbone, image_size=backbone.image_size), model

  def auto_settings(self, per_class, n, train):
    """--recipe=auto: the decoder on the frozen encoder's cached maps; with 200 images or
    more, then the whole encoder fine-tuned 4 epochs at 1e-4 (the default recipe's
    head phase alone otherwise)."""
    from kerasft.models import backbones
    if n < 200:
      return {}, "decoder on the frozen encoder"
    blocks = len(backbones.blocks(self.block_model()))
    return ({"model.unfreeze_blocks": blocks, "training.fine_tune_epochs": 4,
             "training.fine_tune_learning_rate": 1e-4},
            f"decoder on the frozen encoder, then all {blocks} blocks fine-tuned 4 epochs")

  def pipelines(self, train, val):
    """(image, mask) batches: training ones reshuffled and jointly augmented (--augment)."""
    from kerasft.data import pipeline
    from kerasft.tasks.segmentation import graph
    d, size = self.config.data, self.config.model.image_size
    return pipeline.Dataset(
        train=graph.pairs(train, size, d.batch_size, True, self.config.training.seed,
                          d.augment, d.augment_strength),
        val=graph.pairs(val, size, d.batch_size), class_names=train.class_names,
        train_files=train, val_files=val,
        make_inputs=lambda files, batch: graph.pairs(files, size, batch, cache=False),
        targets=lambda files: graph.masks(files, size))

  def pipeline(self, files, batch_size: int):
    from kerasft.tasks.segmentation import graph
    return graph.pairs(files, self.config.model.image_size, batch_size, cache=False)

  def predict_examples(self, model, files, batch_size: int, view=None):
    """(true masks [N, S, S], predicted class maps [N, S, S]) of `model` on `files`."""
    from kerasft.tasks.segmentation import graph
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
                decoder=self.config.model.decoder, ignore_value=seg.IGNORE)
    return card

  def export_signatures(self, model, class_names, labels_path):
    from kerasft.tasks.segmentation import graph
    return graph.signatures(model, class_names, self.config.model.image_size, labels_path)

  def check_explain(self) -> None:
    raise UsageError("--explain: not for --task=segmentation; predict --mask_dir writes each "
                     "image's class map")

  @staticmethod
  def example_cards(files, model=None, image_size: int = 0, resize: str = ""):
    """A function (indices, (true, predicted) mask pairs, captions) -> HTML cards of
    `files`' images with the true and the predicted masks overlaid (at the masks' size: the
    image task's `cards`/`export_cards` pass a model, a size and a resize mode, unused)."""
    from kerasft.reporting import sections as report
    k = len(files.class_names)

    def cards(indices, masks, captions):
      out = []
      for i, (true, predicted), caption in zip(indices, masks, captions):
        image = _image(files.inputs[i], true.shape)
        pictures = "".join(f'<img alt="{what}" title="{what}" src="{report.png_uri(report.array_png(seg.overlay(image, m, k)))}">'
                           for what, m in (("true", true), ("predicted", predicted)))
        out.append(f'<div class="card">{pictures}<br>{report.esc(os.path.basename(files.name(i)))}'
                   f"<br>{report.esc(caption)}</div>")
      return out
    return cards

  @staticmethod
  def write_figures(files, labels, outputs, out_dir: str, n: int = 8) -> None:
    """predictions.png: `n` of `files`' images spread over them, with the true and the
    predicted masks overlaid."""
    picked = sorted(set(np.linspace(0, len(labels) - 1, min(n, len(labels))).round().astype(
        int).tolist())) if len(labels) else []
    if picked:
      seg.plot_grid([_image(files.inputs[i], labels[i].shape) for i in picked],
                    [labels[i] for i in picked], [outputs[i] for i in picked],
                    files.class_names, os.path.join(out_dir, "predictions.png"),
                    [os.path.basename(files.name(i)) for i in picked])


def _image(item, shape) -> np.ndarray:
  """uint8 RGB [H, W, 3] of an image file or bytes, resized to a mask's `shape`."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
    return np.asarray(image.convert("RGB").resize((shape[1], shape[0]), Image.BILINEAR))


def _folder(d, flag_prefix: str, split: str) -> tuple[str, str]:
  """(flag, folder holding images/ and masks/) of --data_dir or --val_dir: the folder
  itself, or its train/ (validation/, val/, or `split`) sub-folder; "" when absent."""
  if flag_prefix and d.val_dir:
    return "val_dir", d.val_dir
  root = d.data_dir
  if os.path.isdir(os.path.join(root, seg.IMAGES)):
    return "data_dir", "" if flag_prefix else root
  wanted = [split] if split else (["validation", "val"] if flag_prefix else ["train"])
  if split:
    wanted.append("")
  found = next((os.path.join(root, w) for w in wanted
                if os.path.isdir(os.path.join(root, w, seg.IMAGES))), "")
  if not found and not flag_prefix:
    raise UsageError(f"--data_dir: {root} holds neither {seg.IMAGES}/ and {seg.MASKS}/ nor "
                     f"train/{seg.IMAGES}/ and train/{seg.MASKS}/")
  return "data_dir", found


def _csv_pairs(path: str, flag: str, path_column: str, mask_column: str):
  """(image paths, mask paths) of a table's rows, relative to its folder."""
  from kerasft.data.tables import read_table
  rows = read_table(path, flag, [path_column, mask_column])
  root = os.path.dirname(os.path.abspath(path))
  images = [os.path.join(root, str(r[path_column])) for r in rows]
  masks = [os.path.join(root, str(r[mask_column])) if r[mask_column] else "" for r in rows]
  for image in images:
    if not os.path.isfile(image):
      raise UsageError(f"--{flag}: {path}: image {image} does not exist")
  return images, [m if m and os.path.isfile(m) else "" for m in masks]


def _tfds_pairs(name: str, data_dir: str, split: str, image_key: str, mask_key: str):
  """(encoded images, encoded masks) of a prepared TFDS split: --image_key [its first
  3-channel Image feature] and --label_key [its first 1-channel Image feature]."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from kerasft.data import records
  builder = records.tfds_builder(name, data_dir)
  features = builder.info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  image_key = image_key or next((k for k in images if features[k].shape[-1] == 3), "")
  mask_key = mask_key or next((k for k in images if features[k].shape[-1] == 1), "")
  for flag, key in (("image_key", image_key), ("label_key", mask_key)):
    if key not in images:
      raise UsageError(f"--{flag}: {name} has no image feature {key!r} for "
                       f"--task=segmentation; its image features are {', '.join(images)}")
  ds = records.tfds_split(builder, name, data_dir, split, {
      image_key: tfds.decode.SkipDecoding(), mask_key: tfds.decode.SkipDecoding()})
  pairs = [(e[image_key], e[mask_key]) for e in ds.as_numpy_iterator()]
  if not pairs:
    raise UsageError(f"--tfds: split {split!r} of {name} is empty")
  return [p[0] for p in pairs], [p[1] for p in pairs]
