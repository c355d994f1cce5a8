"""Indexed examples (`Examples`), checking images, splits and class balance.

`Examples` is an indexed split from any source (`kerasft.data.folders` reads image
folders, `kerasft.data.tables` tables and text folders, `kerasft.data.records` TFRecord
and TFDS). Every image is decoded once up front (`readable`), so a bad one is found (and
skipped, or with --strict_data refused) before training starts, never in the middle of an
epoch. `kerasft.data.pipeline` turns examples into tf.data pipelines.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import sys
from typing import Optional

import numpy as np
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.data.labels import Classes
from kerasft.data.source import Source

VALIDATION_FOLDERS = ("validation", "val")
MAX_PIXELS = 100_000_000  # larger images are skipped: decoding would exhaust memory
PROGRESS_FROM = 20_000  # checking this many images or records shows a progress bar


@dataclasses.dataclass
class Examples:
  """An indexed split: its examples (images or texts) and their labels.

  inputs: image file paths, encoded images (bytes) for records from TFRecord files and
  TFDS, or (text models) the texts.
  labels: per example, its class id (multiclass), a list of class ids (multilabel) or a list
  of float targets (regression), or a task's own (entity spans, masks). class_names: the
  classes, or the regression targets' names. kind: the kind of labels
  (`kerasft.data.labels`; an `Output.labels`). names: how messages name each example
  (default: its input).
  """
  inputs: list
  labels: list
  class_names: list[str]
  kind: Classes = dataclasses.field(default_factory=Classes)
  names: Optional[list[str]] = None
  streams: tuple = ()  # RecordStreams the records are read from (then inputs are their keys)
  problems: Optional[list] = None  # per example, why it is unusable (None: fine), if known
  soft: Optional[np.ndarray] = None  # float32 [N, C] training targets that replace the
  # labels' own (distillation: `kerasft.workflows.distill`); labels stay for counts and splits

  def name(self, i: int) -> str:
    return self.names[i] if self.names else str(self.inputs[i])

  def subset(self, idx) -> "Examples":
    """The examples at positions `idx`, in that order (for streamed records, positions
    must ascend: records are read in their stream's order)."""
    idx = list(idx)
    if self.streams and any(b < a for a, b in zip(idx, idx[1:])):
      raise ValueError("streamed records can only be taken in their order")
    return dataclasses.replace(
        self, inputs=[self.inputs[i] for i in idx], labels=[self.labels[i] for i in idx],
        names=[self.names[i] for i in idx] if self.names else None,
        problems=[self.problems[i] for i in idx] if self.problems is not None else None,
        soft=self.soft[idx] if self.soft is not None else None)

  def __add__(self, other: "Examples") -> "Examples":
    if self.streams or other.streams:
      raise ValueError("streamed records cannot be concatenated; use each part on its own")
    names = None
    if self.names or other.names:
      names = [self.name(i) for i in range(len(self.inputs))] + [
          other.name(i) for i in range(len(other.inputs))]
    soft = None
    if self.soft is not None or other.soft is not None:
      soft = np.concatenate([self.targets(), other.targets()])
    return dataclasses.replace(self, inputs=self.inputs + other.inputs,
                               labels=self.labels + other.labels, names=names, soft=soft)

  def targets(self) -> np.ndarray:
    """float32 [N, C]: one-hot (multiclass), multi-hot (multilabel) or the targets; the
    `soft` targets where set."""
    if self.soft is not None:
      return self.soft
    return self.kind.targets(self.labels, len(self.class_names))


@dataclasses.dataclass(frozen=True)
class RecordStream:
  """Where records are read from, always in the same order, as (key, encoded image):
  TFRecord `files` (key "FILE#i") or a TFDS split (key "NAME[SPLIT]#i"). Training and
  evaluation stream them instead of holding every encoded image in memory."""
  image_key: str
  files: tuple = ()
  tfds: str = ""  # TFDS' name (NAME/CONFIG[:VERSION])
  data_dir: str = ""
  split: str = ""
  key_prefix: str = ""  # for TFDS: "NAME[SPLIT]#"

  def dataset(self):
    """A tf.data pipeline of (key string, encoded image bytes)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self.files:
      spec = {self.image_key: tf.io.FixedLenFeature([], tf.string, default_value="")}

      def records(path):
        return tf.data.TFRecordDataset(path).enumerate().map(lambda i, record: (
            tf.strings.join([path, "#", tf.strings.as_string(i)]),
            tf.io.parse_single_example(record, spec)[self.image_key]))
      return tf.data.Dataset.from_tensor_slices(list(self.files)).flat_map(records)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(self.tfds, data_dir=self.data_dir or None)
    ds = builder.as_dataset(split=self.split, shuffle_files=False,
                            decoders={self.image_key: tfds.decode.SkipDecoding()})
    return ds.enumerate().map(lambda i, example: (
        tf.strings.join([self.key_prefix, tf.strings.as_string(i)]), example[self.image_key]))


def encoded_bytes(item) -> bytes:
  """An encoded image: held (bytes) or read from its file (a path)."""
  if isinstance(item, bytes):
    return item
  with open(item, "rb") as f:
    return f.read()


def unreadable_reasons(paths: list) -> list[Optional[str]]:
  """Decodes every file (or encoded image, bytes) once, in threads; per item None, or why
  it is not a readable image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def reason(path):
    if isinstance(path, bytes):
      path = io.BytesIO(path)
    try:
      with Image.open(path) as image:
        if image.width * image.height > MAX_PIXELS:  # from the header: nothing decoded
          return (f"{image.width}x{image.height} pixels, more than the "
                  f"{MAX_PIXELS // 10**6}-megapixel limit")
        image.draft("RGB", (32, 32))  # JPEGs decode at a reduced scale: fast, still complete.
        image.load()
      return None
    except Exception as e:  # pylint: disable=broad-except
      return f"{type(e).__name__}: {e}"

  progress = None
  if len(paths) >= PROGRESS_FROM:  # a bar for data sets that take a while to check
    import keras  # pylint: disable=g-import-not-at-top
    logging.info("checking %d images", len(paths))
    progress = keras.utils.Progbar(len(paths), unit_name="image",
                                   verbose=1 if sys.stdout.isatty() else 2)
  reasons = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as ex:
    for r in ex.map(reason, paths):
      reasons.append(r)
      if progress and len(reasons) % 1000 == 0:
        progress.update(len(reasons))
  if progress:
    progress.update(len(reasons), finalize=True)
  return reasons


def readable(files: Examples, source: Source, strict: bool = False) -> Examples:
  """`files` without the missing, corrupt, truncated or non-image ones, which are found by
  decoding every image once (see `without`)."""
  reasons = files.problems if files.problems is not None else unreadable_reasons(files.inputs)
  return without(files, reasons, source, strict, "unreadable image(s)")


def without(files: Examples, reasons: list[Optional[str]], source: Source, strict: bool,
            what: str, with_reasons: bool = False) -> Examples:
  """`files` without the examples whose reason (why they cannot be used) is not None:
  skipped with one warning that counts them and names the first ten (`with_reasons`: and
  why), or with `strict` a UsageError naming the first. what: e.g. "unreadable image(s)"."""
  bad = [(files.name(i), r) for i, r in enumerate(reasons) if r]
  if not bad:
    return files
  if strict:
    raise UsageError(f"--strict_data: {len(bad)} {what} from --{source.flag}, first: "
                     f"{bad[0][0]} ({bad[0][1]}); remove or fix them")
  logging.warning("skipping %d %s from --%s: %s%s", len(bad), what, source.flag,
                  ", ".join(f"{n} ({r})" if with_reasons else n for n, r in bad[:10]),
                  " ..." if len(bad) > 10 else "")
  return files.subset([i for i, r in enumerate(reasons) if r is None])


def oversampled(files: Examples, seed: int) -> Examples:
  """Every class drawn up to the largest class's count (its own images first, then random
  repeats, seeded); for multiclass training data (`--oversample`)."""
  rng = np.random.default_rng(seed)
  labels = np.asarray(files.labels)
  counts = np.bincount(labels, minlength=len(files.class_names))
  idx = []
  for label, count in enumerate(counts):
    members = np.flatnonzero(labels == label)
    if count:
      idx.extend(members)
      idx.extend(rng.choice(members, counts.max() - count, replace=True))
  logging.info("oversampling: %d training images become %d (%d per class)", len(labels),
               len(idx), counts.max())
  return files.subset(sorted(int(i) for i in idx))


def check_class_names(names: list[str], source: Source) -> None:
  """Class names go into labels.txt one per line: a name with a line break cannot."""
  bad = [n for n in names if "\n" in n or "\r" in n or not n.strip()]
  if bad:
    raise source.error(f"class name {bad[0]!r} cannot be written to labels.txt (a line "
                       "break or an empty name); rename it")


def balanced_class_weights(files: Examples) -> dict[int, float]:
  """{class id: n / (classes * count)} from the labels (scikit-learn's "balanced")."""
  counts = np.bincount(files.labels, minlength=len(files.class_names))
  n, k = len(files.labels), len(files.class_names)
  return {i: float(n / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def stratified_split(files: Examples, fraction: float, seed: int
                     ) -> tuple[Examples, Examples]:
  """Splits off `fraction` of each class (at least one image) as validation, seeded.

  Data whose output has no strata (multilabel, regression) are split at random; several
  heads by their first multiclass head's class.
  """
  rng = np.random.default_rng(seed)
  labels = files.kind.strata(files.labels, files.class_names)
  if labels is None:
    idx = rng.permutation(len(files.inputs))
    n_val = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
    return files.subset(sorted(idx[n_val:])), files.subset(sorted(idx[:n_val]))
  train_idx, val_idx = [], []
  for label in np.unique(labels):  # -1: rows without the label (several heads)
    idx = np.flatnonzero(labels == label)
    if len(idx) < 2 and label < 0:
      train_idx.extend(idx)
      continue
    if len(idx) < 2:
      raise UsageError(f"--validation_split: class {files.class_names[label]!r} has only "
                       f"{len(idx)} image; give each class at least 2 images or pass --val_dir")
    idx = rng.permutation(idx)
    n_val = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
    val_idx.extend(idx[:n_val])
    train_idx.extend(idx[n_val:])
  return files.subset(sorted(train_idx)), files.subset(sorted(val_idx))


def objects(items) -> np.ndarray:
  """A 1-D object array of per-example items (masks of different sizes, entity lists,
  boxes), which numpy neither broadcasts nor stacks."""
  out = np.empty(len(items), object)
  for i, item in enumerate(items):
    out[i] = item
  return out
