"""TFRecord files and prepared TFDS data sets, indexed into `kerasft.data.examples.Examples`.

Records are decoded once when indexed (bad images found and named) but not kept: training
and evaluation stream them again (`kerasft.data.RecordStream`). Texts from TFDS are held.
TFDS data sets are read with `download=False`, so an unprepared one fails at once offline.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np
from absl import logging

from kerasft.core import _compat
from kerasft.core.errors import UsageError
from kerasft.data.examples import (PROGRESS_FROM, VALIDATION_FOLDERS, Examples, RecordStream,
                                   unreadable_reasons)
from kerasft.data.labels import Classes, class_ids
from kerasft.data.source import Source


class _ImageChecker:
  """Checks encoded images as they are read, in batches, keeping only why each is
  unusable (None: fine), so that indexing a large record set holds no image bytes."""

  def __init__(self, source: Source, batch: int = 2048):
    self._source, self._batch, self._pending, self._problems = source, batch, [], []

  def add(self, encoded: bytes) -> None:
    self._pending.append(encoded)
    if len(self._pending) >= self._batch:
      self._check()

  def _check(self):
    before = len(self._problems)
    self._problems += unreadable_reasons(self._pending)
    self._pending = []
    if before // PROGRESS_FROM != len(self._problems) // PROGRESS_FROM:  # a line per 20,000
      logging.info("--%s: %d records read and checked", self._source.flag,
                   len(self._problems))

  def problems(self) -> list:
    self._check()
    return self._problems


def _records(inputs, per_row, names, kind, class_names, source: Source, label_key,
             problems=None, stream=None) -> Examples:
  """Records with class names per record -> Examples labelled as `kind` says; images are
  streamed from `stream` (their keys are the names) and checked (`problems`)."""
  keys = label_key.split(",")
  if len(keys) > 1:  # several heads: one names list per key and record, read as table cells
    rows = [{k: "|".join(v) for k, v in zip(keys, row)} for row in per_row]
    labels, class_names = kind.parse_cells(rows, label_key, source, class_names)
  else:
    kind.from_names(per_row, names, label_key, source)
    ids, class_names = class_ids(per_row, class_names, source)
    labels = kind.labels_of(ids)
  return Examples(inputs, labels, class_names, kind, names, (stream,) if stream else (),
                  problems)


def _read_tfrecord_file(source: Source, image_key: str, label_key: str,
                        checker: _ImageChecker) -> tuple[list, list]:
  """(label ids per record, record names) of one TFRecord file (`source.path`); images go
  to `checker`."""
  path = source.path
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  keys = label_key.split(",")  # several: one head each
  spec = {image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
          **{k: tf.io.VarLenFeature(tf.int64) for k in keys}}

  def parse(record):
    example = tf.io.parse_single_example(record, spec)
    return example[image_key], tuple(example[k].values for k in keys)

  ids, names = [], []
  records = tf.data.TFRecordDataset(path).map(
      parse, num_parallel_calls=tf.data.AUTOTUNE).ragged_batch(512).prefetch(2)
  try:
    for images, label_ids in records:  # in batches: one Python step per 512 records
      per_key = [v.to_list() for v in label_ids]
      for image, *row in zip(images.numpy(), *per_key):
        row = row[0] if len(keys) == 1 else row
        name = f"{path}#{len(names)}"
        if not image:
          raise source.error(f"{name} has no {image_key!r} feature; name the image feature "
                             "with --image_key")
        checker.add(image)
        ids.append(row)
        names.append(name)
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    raise source.error(f"{path} is not a TFRecord file of tf.train.Examples with a string "
                       f"{image_key!r} and int64 {label_key!r} (name them with "
                       f"--image_key/--label_key): {e.message.splitlines()[0]}") from None
  return ids, names


def read_unlabeled_tfrecords(source: Source, image_key: str, class_names: list[str],
                             kind) -> Examples:
  """Streamed `Examples` of the images of TFRecord files of tf.train.Examples (--image_key
  [image/encoded]; labels, if any, ignored), labelled 0 (a placeholder), with why each
  image is unusable (`Examples.problems`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  image_key = image_key or "image/encoded"
  files = sorted(tf.io.gfile.glob(source.path))
  if not files:
    raise source.error(f"no files match {source.path}")
  spec = {image_key: tf.io.FixedLenFeature([], tf.string, default_value="")}
  checker, names = _ImageChecker(source), []
  for path in files:
    start = len(names)
    try:
      for images in tf.data.TFRecordDataset(path).map(
          lambda r: tf.io.parse_single_example(r, spec)[image_key]).batch(512):
        for image in images.numpy():
          names.append(f"{path}#{len(names) - start}")
          checker.add(image)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      raise source.error(f"{path} is not a TFRecord file of tf.train.Examples with a string "
                         f"{image_key!r} (name it with --image_key): "
                         f"{e.message.splitlines()[0]}") from None
  if not names:
    raise source.error(f"{source.path} holds no records")
  return Examples(names, [0] * len(names), list(class_names), kind, names,
                  (RecordStream(image_key=image_key, files=tuple(files)),), checker.problems())


def _named_ids(ids: list, names: list, source: Source, label_names: str,
               class_names: Optional[list[str]]) -> tuple[list[list[str]], list[str]]:
  """Class names per record from label ids: line i of the `label_names` file names id i,
  else the ids as strings. Returns (names per record, class names)."""
  if not label_names:
    if class_names is None:
      class_names = [str(i) for i in sorted({i for row in ids for i in row})]
    return [[str(i) for i in row] for row in ids], class_names
  if not os.path.isfile(label_names):
    raise UsageError(f"--label_names: file {label_names} does not exist")
  with open(label_names, encoding="utf-8") as f:
    all_names = [line.strip() for line in f if line.strip()]
  bad = [(n, i) for n, row in zip(names, ids) for i in row if not 0 <= i < len(all_names)]
  if bad:
    raise source.error(f"{bad[0][0]} has label id {bad[0][1]}, but --label_names "
                       f"{label_names} names {len(all_names)} classes (ids 0-"
                       f"{len(all_names) - 1})")
  return [[all_names[i] for i in row] for row in ids], class_names or all_names


def read_tfrecords(source: Source, image_key: str = "", label_key: str = "", kind=Classes(),
                   label_names: str = "", class_names: Optional[list[str]] = None
                   ) -> Examples:
  """Indexes TFRecord files of tf.train.Examples (`source.path`: a glob): encoded image
  bytes and int64 label ids, labels read as `kind` says.

  image_key/label_key default to `image/encoded` and `image/class/label`. Class names come
  from `label_names` (a file, one name per line, line i names id i), else the ids found in
  the training data as strings.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  image_key, label_key = image_key or "image/encoded", label_key or "image/class/label"
  files = sorted(tf.io.gfile.glob(source.path))
  if not files:
    raise source.error(f"no files match {source.path}")
  checker, ids, names = _ImageChecker(source), [], []
  for path in files:
    file_ids, file_names = _read_tfrecord_file(source.at(path), image_key, label_key, checker)
    ids += file_ids
    names += file_names
  if not names:
    raise source.error(f"{source.path} holds no records")
  if "," in label_key:  # several heads: the ids are the class names
    if label_names:
      raise UsageError("--label_names: names one label key's ids; with several --label_key "
                       "the ids themselves name the classes")
    per_row = [[[str(i) for i in ids_of_key] for ids_of_key in row] for row in ids]
  else:
    per_row, class_names = _named_ids(ids, names, source, label_names, class_names)
  stream = RecordStream(image_key=image_key, files=tuple(files))
  return _records(names, per_row, names, kind, class_names, source, label_key,
                  checker.problems(), stream)


def tfds_name(name: str) -> str:
  """--tfds NAME:CONFIG (also NAME/CONFIG, NAME:VERSION, NAME/CONFIG:VERSION) -> TFDS' own
  spelling, NAME/CONFIG[:VERSION]."""
  base, _, rest = name.partition(":")
  if rest and not re.fullmatch(r"[\d.*]+", rest) and "/" not in base:
    config, _, version = rest.partition(":")
    return f"{base}/{config}" + (f":{version}" if version else "")
  return name


def tfds_builder(name: str, data_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(tfds_name(name), data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise UsageError(f"--tfds: no data set {name!r} in TFDS' catalogue or in "
                     f"{data_dir or '~/tensorflow_datasets'}; see "
                     "https://www.tensorflow.org/datasets/catalog") from None
  except Exception as e:  # pylint: disable=broad-except  # bad config names and such
    raise UsageError(f"--tfds: {name}: {str(e).splitlines()[0]}") from None


def tfds_validation_split(name: str, data_dir: str) -> str:
  """The data set's validation split ("validation" or "val") when it has one, else ""."""
  splits = tfds_builder(name, data_dir).info.splits
  return next((s for s in VALIDATION_FOLDERS if s in splits), "")


def _tfds_features(builder, name: str, feature, input_key: str, input_option: str,
                   label_key: str) -> tuple[str, str, Optional[list[str]]]:
  """(input feature, label feature, class names or None) of a TFDS builder: the first
  feature of type `feature` and the first ClassLabel (or Sequence of them) unless named."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = builder.info.features
  input_key = input_key or next((k for k, f in features.items() if isinstance(f, feature)), "")
  label_key = label_key or next((
      k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)
      or isinstance(getattr(f, "feature", None), tfds.features.ClassLabel)), "")
  for option, key in ((input_option, input_key), ("label_key", label_key)):
    if key not in features:
      raise UsageError(f"--{option}: {name} has no feature {key!r}; its features are "
                       f"{', '.join(features)}")
  label = getattr(features[label_key], "feature", features[label_key])
  return input_key, label_key, (label.names if isinstance(label, tfds.features.ClassLabel)
                                else None)


def tfds_split(builder, name: str, data_dir: str, split: str, decoders):
  try:
    return builder.as_dataset(split=split, decoders=decoders)
  except AssertionError:
    root = data_dir or _compat.tfds_data_root(builder)
    raise UsageError(f"--tfds: {name} is not prepared in {builder.data_dir}; prepare it on a "
                     f"machine with internet (`tfds build {tfds_name(name)} "
                     f"--data_dir={root}`) and pass --tfds_data_dir={root}") from None
  except ValueError as e:
    raise UsageError(f"--train_split/--val_split: {name} has no split {split!r} "
                     f"({str(e).splitlines()[0]}); its splits are "
                     f"{', '.join(builder.info.splits) or 'unknown'}") from None


def _read_tfds(name, data_dir, split, input_key, label_key, kind, class_names, texts: bool):
  """Reads one split of a prepared TFDS data set: its images (checked, streamed later) or
  its texts (held)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds_builder(name, data_dir)
  feature = tfds.features.Text if texts else tfds.features.Image
  found = [_tfds_features(builder, name, feature, input_key,
                          "text_key" if texts else "image_key", key)
           for key in label_key.split(",")]  # several: one head each
  input_key, keys = found[0][0], [f[1] for f in found]
  ds = tfds_split(builder, name, data_dir, split,
                   None if texts else {input_key: tfds.decode.SkipDecoding()})
  source = Source("tfds", f"{name}[{split}]")
  held, per_row, names, checker = [], [], [], _ImageChecker(source)
  batches = ds.map(lambda example: (example[input_key], tuple(example[k] for k in keys))
                   ).ragged_batch(512)
  for inputs, labels in batches:  # in batches: one Python step per 512 records
    labels = [v.to_list() if hasattr(v, "to_list") else v.numpy().tolist() for v in labels]
    for item, *ids in zip(inputs.numpy(), *labels):
      if texts:
        held.append(item.decode("utf-8", errors="surrogateescape"))
      else:
        checker.add(item)
      row = [[f[2][j] if f[2] else str(j) for j in np.atleast_1d(i)] for f, i in zip(found, ids)]
      per_row.append(row[0] if len(keys) == 1 else row)
      names.append(f"{name}[{split}]#{len(names)}")
  label_key, all_names = ",".join(keys), found[0][2] if len(keys) == 1 else None
  if not names:
    raise UsageError(f"--tfds: split {split!r} of {name} is empty")
  class_names = class_names if class_names is not None or not all_names else list(all_names)
  if texts:
    return _records(held, per_row, names, kind, class_names, source, label_key)
  stream = RecordStream(image_key=input_key, tfds=tfds_name(name), data_dir=data_dir,
                        split=split, key_prefix=f"{source.path}#")
  return _records(names, per_row, names, kind, class_names, source, label_key,
                  checker.problems(), stream)


def read_tfds(name: str, data_dir: str, split: str, image_key: str = "", label_key: str = "",
              kind=Classes(), class_names: Optional[list[str]] = None) -> Examples:
  """The images of one split of a prepared TFDS data set (`download=False`: never waits
  offline); the image and label features are the builder's first `Image` and `ClassLabel`
  (or a `Sequence` of `ClassLabel`s, multilabel) unless named. Images are kept encoded."""
  return _read_tfds(name, data_dir, split, image_key, label_key, kind, class_names, False)


def read_tfds_texts(name: str, data_dir: str, split: str, text_key: str = "",
                    label_key: str = "", kind=Classes(),
                    class_names: Optional[list[str]] = None) -> Examples:
  """The texts of one split of a prepared TFDS data set (its first `Text` feature unless
  named), like `read_tfds`."""
  return _read_tfds(name, data_dir, split, text_key, label_key, kind, class_names, True)
