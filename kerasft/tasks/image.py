"""Image tasks: a Keras Applications, TF Hub, SavedModel or .keras backbone on pixels."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from kerasft.config import backbones as backbone_names
from kerasft.core import _compat
from kerasft.core.errors import UsageError
from kerasft.data import examples as data, folders, pipeline, records, tables
from kerasft.data.source import Source
from kerasft.models import backbones, explain, heads, signatures
from kerasft.reporting import html
from kerasft.tasks.base import FINE_TUNE_FROM, LARGE_FROM, Task


class ImageTask(Task):
  """Images in: folders, CSV, TFRecord or TFDS; float32 RGB pixels 0..255 to the model;
  an export with pixel, encoded-image and tf.train.Example signatures."""
  CLIENT_SIGNATURE, CLIENT_INPUT, ROW_KEY = "serving_bytes", "image_bytes", "file"

  @classmethod
  def check_inputs(cls, config) -> None:
    if config.model.max_length or config.model.pooling != "mean":
      raise UsageError("--max_length/--pooling: only for text models (--model=keras_hub:...)")
    if config.data.text_dir:
      raise UsageError("--text_dir: needs a text model, --model=keras_hub:PRESET_OR_FOLDER")
    if config.methods.recipe == "few_shot":
      raise UsageError("--recipe=few_shot: tunes a text encoder on pairs of texts; for "
                       "text models (--model=keras_hub:...)")
    if config.data.unlabeled_source and (config.data.tfrecord or config.data.tfds):
      raise UsageError(f"--{config.data.unlabeled_source}: self-training adds pseudo-labelled "
                       "images to the training images, which must be files: pass the "
                       "labelled images as --data_dir or --csv")
    if config.data.unlabeled_text_dir:
      raise UsageError("--unlabeled_text_dir: unlabelled texts are for text models; pass "
                       "--unlabeled_dir or --unlabeled_csv of images")

  def resolve_data(self) -> "ImageTask":
    """With no data source: the built-in recipe, scikit-learn's digits as PNG folders in
    Keras' datasets cache."""
    if self.config.data.source:
      return self
    data_dir = folders.builtin_digits(os.path.join(_compat.keras_home(), "datasets"))
    logging.info("no --data_dir: the built-in recipe trains on scikit-learn's digits (%s)",
                 data_dir)
    config = dataclasses.replace(self.config, data=dataclasses.replace(
        self.config.data, data_dir=data_dir))
    return type(self)(config, self.output, self.backbone)

  def index(self, seed: int = 0):
    """(training, validation) `Examples` of the config's data."""
    return tables.index_images(self.config.data, self.output.labels, seed)

  def unlabeled(self, class_names: list[str]):
    """`Examples` of the readable images of --unlabeled_dir (searched recursively),
    --unlabeled_csv (--path_column) or --unlabeled_tfrecord (streamed), labelled 0 (a
    placeholder); unreadable ones skipped."""
    d = self.config.data
    flag = d.unlabeled_source
    source = Source(flag, getattr(d, flag))
    if flag == "unlabeled_tfrecord":
      return data.readable(records.read_unlabeled_tfrecords(
          source, d.image_key, class_names, self.output.labels), source, d.strict_data)
    if flag == "unlabeled_dir":
      if not os.path.isdir(d.unlabeled_dir):
        raise UsageError(f"--unlabeled_dir: {d.unlabeled_dir} is not a folder")
      paths = [p for p in folders.expand_inputs([d.unlabeled_dir]) if os.path.isfile(p)]
    else:
      rows = tables.read_table(source, [d.path_column])
      root = os.path.dirname(os.path.abspath(d.unlabeled_csv))
      paths = [os.path.join(root, str(r[d.path_column])) for r in rows]
    files = data.readable(data.Examples(paths, [0] * len(paths), class_names,
                                        self.output.labels), source, d.strict_data)
    if not files.inputs:
      raise UsageError(f"--{flag}: no readable unlabelled images")
    return files

  @staticmethod
  def evaluation_examples(data_config, output, class_names: list[str], split: str = "test"):
    """The labelled images to evaluate on (`kerasft.data.tables.evaluation_images`)."""
    return tables.evaluation_images(data_config, output.labels, class_names, split)

  def build_model(self, train_files, stats=None):
    """(this task with the backbone's image size, the classifier sized for `train_files`).
    stats: the head's constants (`Output.head_stats`) [from `train_files`]."""
    m = self.config.model
    backbone = self.backbone or backbones.build(m)
    model = heads.build_classifier(backbone, len(train_files.class_names), self.output, m.head,
                                   m.dropout, m.bn_mode,
                                   stats or self.output.head_stats(train_files))
    return self.replace(backbone=backbone, image_size=backbone.image_size), model

  def auto_settings(self, per_class, n, train):
    changes, why = {}, ["frozen backbone, convex head"]
    side = _median_side(train)
    if side and side <= 64 and not backbone_names.source(self.config.model.model)[0]:
      size = max(128, backbone_names.spec(self.config.model.model).min_size)
      changes["model.image_size"] = size
      why.append(f"{size} px inputs (median image side {side} px)")
    if per_class >= FINE_TUNE_FROM:
      changes.update({"model.unfreeze_blocks": len(backbones.blocks(self.block_model())),
                      "training.fine_tune_epochs": 4, "training.fine_tune_learning_rate": 1e-4,
                      "methods.average": "greedy_soup"})
      why[0] = "fine-tune every block 4 epochs, greedy soup"
    if n >= LARGE_FROM:
      changes.update({"training.fine_tune_epochs": 8, "training.lr_schedule": "cosine",
                      "data.mixup": 0.1})
      why.append("8 epochs, cosine, MixUp 0.1")
    return changes, "; ".join(why)

  def pipelines(self, train, val) -> pipeline.Dataset:
    """Training (shuffled, MixUp/CutMix) and validation pipelines of pixels."""
    d = self.config.data
    return pipeline.pipelines(train, val, self.config.model.image_size, d.batch_size,
                          self.config.training.seed, d.resize, d.cache_dir, d.mixup, d.cutmix)

  def joint_pipelines(self, train, val, batches, targets) -> pipeline.Dataset:
    """The pipelines of a task whose labels lie on the pixels (masks, boxes): `batches(files,
    size, batch, shuffle, seed, augment, strength, cache=True)` makes (image, label)
    batches, training ones reshuffled and augmented with their labels (--augment);
    `targets(files, size)` are the labels as the model's outputs are compared with."""
    d, size = self.config.data, self.config.model.image_size
    return pipeline.Dataset(
        train=batches(train, size, d.batch_size, True, self.config.training.seed, d.augment,
                      d.augment_strength),
        val=batches(val, size, d.batch_size), class_names=train.class_names,
        train_files=train, val_files=val,
        make_inputs=lambda files, batch: batches(files, size, batch, cache=False),
        targets=lambda files: targets(files, size))

  def pipeline(self, files, batch_size: int):
    """An unshuffled pipeline of `files` as the model takes them (pixels)."""
    return pipeline.make_pipeline(files, self.config.model.image_size, batch_size,
                              resize=self.config.data.resize)

  @staticmethod
  def client_items(files):
    """What an export's client is given for `files`: their encoded images."""
    return pipeline.encoded_inputs(files)

  def input_card(self) -> dict:
    size = self.config.model.image_size
    return {"input": {"shape": [None, size, size, 3], "dtype": "float32",
                      "range": "RGB pixels 0..255"},
            "preprocessing": f"{backbone_names.preprocess_name(self.config.model)} (inside the "
                             "model)",
            "resize": f"{self.config.data.resize}, bilinear"}

  def export_signatures(self, model, class_names, labels_path):
    return signatures.image_signatures(model, class_names, self.config.model.image_size,
                                       labels_path, self.output.serving_outputs,
                                       self.config.data.resize)

  def sample_inputs(self, n: int, split: str = "validation") -> tuple[np.ndarray, str]:
    """Up to `n` images of the run's "train" or "validation" split, drawn evenly over it
    (seeded) and read as in training without augmentation: (float32 [n, S, S, 3], what they
    are). Random pixels when the run's data cannot be read, except for "train" (images
    that calibrate int8 quantization must be real): a UsageError."""
    size = self.config.model.image_size
    try:
      files = self.index(self.config.training.seed)[0 if split == "train" else 1]
    except UsageError as e:
      if split == "train":
        raise UsageError(f"--quantize=int8: calibration reads the run's training images, "
                         f"which cannot be read now ({e}); restore them where the run's "
                         "config.json says") from None
      logging.warning("the run's data cannot be read (%s): comparing on random pixels", e)
      pixels = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3))
      return pixels.astype(np.float32), f"{n} random images (the run's data cannot be read)"
    count = len(files.inputs)
    picked = np.sort(np.random.default_rng(0).choice(count, min(n, count), replace=False))
    images = np.concatenate([x for x, _ in self.pipeline(files.subset(picked.tolist()), 64)])
    return images, f"{len(images)} {split} images"

  def block_model(self):
    """The backbone (without downloading weights) whose blocks --list_blocks prints."""
    m = self.config.model
    if backbone_names.source(m.model)[0]:  # a module or file: its own weights
      return backbones.build(m).model
    return backbones.build(dataclasses.replace(
        m, weights="none" if m.weights == "imagenet" else m.weights)).model

  SLICE_KEY = "path_column"  # the CSV column slice values are matched by

  def cards(self, model, files):
    """`example_cards` of `files` as this run reads them, explained by `model`."""
    return self.example_cards(files, model, self.config.model.image_size,
                              self.config.data.resize)

  @classmethod
  def export_cards(cls, files, card: dict):
    """`example_cards` of `files` read as the export's model card says (no model)."""
    return cls.example_cards(files, None, card["input"]["shape"][1],
                             card.get("resize", "squash").split(",")[0])

  @staticmethod
  def example_cards(files, model=None, image_size: int = 224, resize: str = "squash"):
    """A function (indices, class ids or None, captions) -> HTML cards of `files`' images
    at `image_size`, with Grad-CAM of the class over each when `model` (a Keras model
    whose feature map is reachable) and a class are given."""
    explains = model is not None and explain.can_gradcam(model)
    heatmaps = explain.gradcam_function(model) if explains else None

    def cards(indices, class_ids, captions):
      if not indices:
        return []
      pixels = _pixels(files, indices, image_size, resize)
      if explains and class_ids[0] is not None:
        heat = heatmaps(pixels, np.asarray(class_ids))
        pixels = np.stack([explain.overlay(p, h) for p, h in zip(pixels, heat)])
      note = "" if explains else (" (no Grad-CAM: the backbone's feature maps are not "
                                  "reachable)" if model is not None else "")
      return [f'<div class="card"><img alt="" src="{html.png_uri(html.array_png(p))}">'
              f"<br>{html.esc(os.path.basename(files.name(i)))}<br>{html.esc(c)}"
              f"{html.esc(note)}</div>" for p, i, c in zip(pixels, indices, captions)]
    return cards

  def explanation_files(self, model, files, class_ids, out_dir: str) -> list[str]:
    """Writes the Grad-CAM overlay of each of `files` for its class as
    <out_dir>/<name>.gradcam.png; returns the paths ([] when Grad-CAM cannot reach the
    backbone's feature maps)."""
    if not explain.can_gradcam(model):
      return []
    indices = list(range(len(files.inputs)))
    pixels = _pixels(files, indices, self.config.model.image_size, self.config.data.resize)
    heat = explain.gradcam(model, pixels, np.asarray(class_ids))
    paths = []
    for i, (p, h) in enumerate(zip(pixels, heat)):
      stem = os.path.splitext(os.path.basename(files.name(i)))[0]
      paths.append(os.path.join(out_dir, f"{i:04d}-{stem}.gradcam.png"))
      with open(paths[-1], "wb") as f:
        f.write(html.array_png(explain.overlay(p, h)))
    return paths

  @staticmethod
  def import_serving_ops() -> None:
    """Imports what loading an export needs (nothing for images)."""

  @staticmethod
  def request_items(items: list) -> list:
    """Encoded images of image files or encoded bytes, for `serving_bytes`."""
    return [data.encoded_bytes(item) for item in items]

  @staticmethod
  def client_inputs(patterns: list[str]) -> tuple[list, list]:
    """(image files of files, folders and globs; why each is unreadable, or None)."""
    paths = folders.expand_inputs(patterns)
    return paths, data.unreadable_reasons(paths)


def _pixels(files, indices: list[int], image_size: int, resize: str) -> np.ndarray:
  """float32 pixels [len(indices), S, S, 3] of `files` at `indices`, read as in training."""
  order = np.argsort(indices, kind="stable")  # streamed records: ascending positions
  chosen = files.subset([indices[i] for i in order])
  pixels = np.concatenate([x for x, _ in pipeline.make_pipeline(
      chosen, image_size, 32, cache=False, resize=resize)])
  return pixels[np.argsort(order)]


def _median_side(files, sample: int = 32) -> int:
  """The median shorter side of up to `sample` of `files`' images (0 when unknown)."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if files.streams or not files.inputs:
    return 0
  step = max(1, len(files.inputs) // sample)
  sides = []
  for item in files.inputs[::step][:sample]:
    try:
      sides.append(min(Image.open(io.BytesIO(data.encoded_bytes(item))).size))
    except (OSError, ValueError):
      continue
  return int(np.median(sides)) if sides else 0
