"""Every labelled source besides image folders, indexed into `kerasft.data.Examples`.

`index_source(config)` picks a run's training and validation data from a `DataConfig`:
- image folders (`kerasft.data.index`);
- a CSV (or TSV) file: a path column (relative to the file's folder) and label column(s):
  a class name, `a|b` for several labels (multilabel), numbers (regression);
- TFRecord files of `tf.train.Example`s with `image/encoded` and `image/class/label`;
- a prepared TFDS data set, read with `download=False` (never waits offline);
- for text models, texts from .csv/.tsv/.jsonl, a folder of .txt files per class, or TFDS.
Records from TFRecord and TFDS are decoded once when indexed, like files, but not kept:
training and evaluation stream them again (`kerasft.data.RecordStream`); texts are held in
`Examples.inputs`. `evaluation_source` does the same for
evaluation.
"""

from __future__ import annotations

import csv
import os
from typing import Optional

import numpy as np
from absl import logging

from kerasft.data import (PROGRESS_FROM, VALIDATION_FOLDERS, Examples, RecordStream, evaluation_files, index,
                          readable, stratified_split, unreadable_reasons, without)
from kerasft.errors import UsageError


def index_source(config, task: str = "multiclass", seed: int = 0, text: bool = False
                 ) -> tuple[Examples, Examples]:
  """The training and validation images of a `DataConfig`'s source (--data_dir, --csv,
  --tfrecord or --tfds) for `task`. Validation comes from the source's validation part
  (--val_dir, --val_csv, --val_tfrecord, --val_split or a validation folder/split), else a
  stratified --validation_split. Unreadable images are skipped with a warning, or with
  --strict_data are a UsageError. With `text`, the examples are texts (in `inputs`) from
  --csv/.tsv/.jsonl (--text_column), --text_dir or --tfds (--text_key); empty or
  undecodable texts are skipped and counted the same way."""
  c = config
  if text:
    return _index_texts(c, task, seed)
  if c.csv:
    flags, read = ("csv", "val_csv"), lambda path, flag, names: read_csv(
        path, flag, c.path_column, c.label_column, task, names)
    sources = (c.csv, c.val_csv)
  elif c.tfrecord:
    flags, read = ("tfrecord", "val_tfrecord"), lambda pattern, flag, names: read_tfrecords(
        pattern, flag, c.image_key, c.label_key, task, c.label_names, names)
    sources = (c.tfrecord, c.val_tfrecord)
  elif c.tfds:
    flags = ("tfds", "tfds")
    val_split = c.val_split or tfds_validation_split(c.tfds, c.tfds_data_dir)
    read = lambda split, flag, names: read_tfds(c.tfds, c.tfds_data_dir, split, c.image_key,
                                                c.label_key, task, names)
    sources = (c.train_split, val_split)
  else:
    if task != "multiclass":
      raise UsageError(f"--task={task}: an image folder gives each image one class; pass "
                       "the labels in a --csv, --tfrecord or --tfds source")
    return index(c.data_dir, c.val_dir, c.validation_split, seed, c.strict_data)
  train = readable(read(sources[0], flags[0], None), flags[0], c.strict_data)
  if not train.inputs:
    raise UsageError(f"--{flags[0]}: {sources[0]} holds no readable images")
  val = None
  if sources[1]:
    val = readable(read(sources[1], flags[1], train.class_names), flags[1], c.strict_data)
  return _split(train, val, flags[0], "images", c, seed)


def _split(train: Examples, val: Optional[Examples], flag: str, what: str, c, seed: int
           ) -> tuple[Examples, Examples]:
  """Checks the classes, splits off validation data when there is none, logs the sizes."""
  if train.task != "regression" and len(train.class_names) < 2:
    raise UsageError(f"--{flag}: the training {what} have a single class "
                     f"({', '.join(train.class_names)}); a classifier needs at least 2")
  if val is None:
    train, val = stratified_split(train, c.validation_split, seed)
  logging.info("data: %d training and %d validation %s, %d %s (%s)", len(train.inputs),
               len(val.inputs), what, len(train.class_names),
               "targets" if train.task == "regression" else "classes",
               ", ".join(train.class_names))
  return train, val


def _index_texts(c, task: str, seed: int) -> tuple[Examples, Examples]:
  if c.csv:
    flag, train = "csv", read_texts(c.csv, "csv", c.text_column, c.label_column, task)
    val = (read_texts(c.val_csv, "val_csv", c.text_column, c.label_column, task,
                      train.class_names) if c.val_csv else None)
  elif c.text_dir:
    flag, train = "text_dir", read_text_dir(c.text_dir, "text_dir")
    val = None
  elif c.tfds:
    flag = "tfds"
    train = read_tfds(c.tfds, c.tfds_data_dir, c.train_split, c.text_key, c.label_key, task,
                      text=True)
    val_split = c.val_split or tfds_validation_split(c.tfds, c.tfds_data_dir)
    val = (read_tfds(c.tfds, c.tfds_data_dir, val_split, c.text_key, c.label_key, task,
                     train.class_names, text=True) if val_split else None)
  else:
    raise UsageError("--csv/--text_dir/--tfds: a text model needs labelled texts; pass "
                     "--csv=FILE (.csv, .tsv or .jsonl), --text_dir=DIR or --tfds=NAME")
  train = readable_texts(train, flag, c.strict_data)
  if val is not None:
    val = readable_texts(val, "val_csv" if c.csv else flag, c.strict_data)
  return _split(train, val, flag, "texts", c, seed)


def read_texts(path: str, flag: str, text_column: str = "text", label_column: str = "label",
               task: str = "multiclass", class_names: Optional[list[str]] = None
               ) -> Examples:
  """Indexes a .csv/.tsv/.jsonl of texts (`text_column`) and labels; the texts are held
  in `inputs`, undecodable bytes as they are (see `readable_texts`)."""
  rows = read_table(path, flag, [text_column] + label_column.split(","))
  labels, names = parse_labels(rows, label_column, task, flag, path, class_names)
  texts = ["" if row[text_column] is None else str(row[text_column]) for row in rows]
  return Examples(texts, labels, names, task,
                    [f"{path} row {i + 1}" for i in range(len(rows))])


def read_text_dir(folder: str, flag: str, class_names: Optional[list[str]] = None
                  ) -> Examples:
  """Indexes `folder`/<class>/**/*.txt (the layout of
  `keras.utils.text_dataset_from_directory`); texts are held in `inputs`."""
  if not os.path.isdir(folder):
    raise UsageError(f"--{flag}: folder {folder} does not exist; pass a folder with one "
                     "sub-folder of .txt files per class")
  found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
  if not found:
    raise UsageError(f"--{flag}: {folder} has no class sub-folders of .txt files")
  texts, names = [], []
  per_row = []
  for name in found:
    for root, dirs, files in os.walk(os.path.join(folder, name)):
      dirs.sort()
      for f in sorted(files):
        if f.lower().endswith(".txt") and not f.startswith("."):
          with open(os.path.join(root, f), "rb") as handle:
            texts.append(handle.read().decode("utf-8", errors="surrogateescape"))
          names.append(os.path.join(root, f))
          per_row.append([name])
  if not texts:
    raise UsageError(f"--{flag}: {folder} holds no .txt files in its class sub-folders")
  ids, class_names = _class_ids(per_row, class_names, flag, folder)
  return Examples(texts, [i[0] for i in ids], class_names, "multiclass", names)


def _text_problem(text: str) -> Optional[str]:
  if not text.strip():
    return "empty"
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return "not UTF-8"
  return None


def readable_texts(files: Examples, flag: str, strict: bool = False) -> Examples:
  """`files` without empty or undecodable texts (see `kerasft.data.without`); all of them
  bad is a UsageError either way."""
  problems = [_text_problem(t) for t in files.inputs]
  if all(problems):
    raise UsageError(f"--{flag}: every text is empty or undecodable ({len(problems)} rows, "
                     f"first: {files.name(0)}); check --text_column")
  return without(files, problems, flag, strict, "empty or undecodable text(s)",
                 with_reasons=True)


def _class_ids(names_per_row: list[list[str]], class_names: Optional[list[str]], flag: str,
               where: str) -> tuple[list[list[int]], list[str]]:
  """Class names per row -> class ids per row, and the classes (sorted, unless given)."""
  found = sorted({n for row in names_per_row for n in row})
  if class_names is None:
    class_names = found
  elif set(found) - set(class_names):
    raise UsageError(f"--{flag}: {where} has classes {sorted(set(found) - set(class_names))[:10]}"
                     f" that the training data does not have ({', '.join(class_names[:20])})")
  position = {n: i for i, n in enumerate(class_names)}
  return [[position[n] for n in row] for row in names_per_row], list(class_names)


def read_table(path: str, flag: str, columns: list[str]) -> list[dict]:
  """Rows of a .csv, .tsv (tab-separated) or .jsonl file as dicts; the `columns` must be
  there (a UsageError lists the ones the file has)."""
  if not os.path.isfile(path):
    raise UsageError(f"--{flag}: file {path} does not exist")
  try:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
      if path.endswith(".jsonl"):
        import json  # pylint: disable=g-import-not-at-top
        rows = [json.loads(line) for line in f if line.strip()]
        have = sorted({k for row in rows for k in row})
      else:
        reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
        rows, have = list(reader), reader.fieldnames or []
  except (UnicodeDecodeError, ValueError, csv.Error) as e:
    raise UsageError(f"--{flag}: cannot read {path} ({type(e).__name__}: {e})") from None
  missing = [c for c in columns if c not in have]
  if missing:
    raise UsageError(f"--{flag}: {path} has no column {missing[0]!r} (columns: "
                     f"{', '.join(have)}); name it with --path_column/--label_column/"
                     "--text_column")
  if not rows:
    raise UsageError(f"--{flag}: {path} has no rows")
  return rows


def parse_labels(rows: list[dict], label_column: str, task: str, flag: str, path: str,
                 class_names: Optional[list[str]] = None) -> tuple[list, list[str]]:
  """The label cells of table rows -> (labels, class names or target names).

  multiclass: one class name per cell; multilabel: names separated by "|" (an empty cell
  is an example with no label); regression: numbers, `label_column` may name several
  columns separated by commas.
  """
  columns = label_column.split(",")
  if task == "regression":
    labels = []
    for i, row in enumerate(rows):
      try:
        labels.append([float(row[c]) for c in columns])
      except (TypeError, ValueError):
        raise UsageError(f"--{flag}: {path} row {i + 1}: --label_column {label_column!r} "
                         f"must hold numbers for --task=regression, got "
                         f"{[row[c] for c in columns]}") from None
    return labels, columns
  if len(columns) > 1:
    raise UsageError(f"--label_column: one column for --task={task}, got {label_column!r}")
  cells = [str(row[label_column] if row[label_column] is not None else "").strip()
           for row in rows]
  if task == "multilabel":
    names = [[n.strip() for n in cell.split("|") if n.strip()] for cell in cells]
    ids, class_names = _class_ids(names, class_names, flag, path)
    return ids, class_names
  empty = [i for i, cell in enumerate(cells) if not cell]
  if empty:
    raise UsageError(f"--{flag}: {path} row {empty[0] + 1} has an empty {label_column!r}; "
                     "give every row a label")
  ids, class_names = _class_ids([[cell] for cell in cells], class_names, flag, path)
  return [i[0] for i in ids], class_names


def read_csv(path: str, flag: str, path_column: str = "path", label_column: str = "label",
             task: str = "multiclass", class_names: Optional[list[str]] = None
             ) -> Examples:
  """Indexes a CSV/TSV/JSONL of image paths (relative to its folder) and labels."""
  rows = read_table(path, flag, [path_column] + label_column.split(","))
  labels, names = parse_labels(rows, label_column, task, flag, path, class_names)
  folder = os.path.dirname(os.path.abspath(path))
  paths = [os.path.join(folder, str(row[path_column] or "")) for row in rows]
  return Examples(paths, labels, names, task)


def read_tfrecords(pattern: str, flag: str, image_key: str = "", label_key: str = "",
                   task: str = "multiclass", label_names: str = "",
                   class_names: Optional[list[str]] = None) -> Examples:
  """Indexes TFRecord files of tf.train.Examples: encoded image bytes and int64 label ids.

  image_key/label_key default to `image/encoded` and `image/class/label`. Class names come
  from `label_names` (a file, one name per line, line i names id i), else the ids found in
  the training data as strings.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  image_key, label_key = image_key or "image/encoded", label_key or "image/class/label"
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise UsageError(f"--{flag}: no files match {pattern}")
  spec = {image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
          label_key: tf.io.VarLenFeature(tf.int64)}
  checker, ids, names = _ImageChecker(flag), [], []
  for path in files:
    first = len(names)

    def parse(record):
      example = tf.io.parse_single_example(record, spec)
      return example[image_key], example[label_key].values

    records = tf.data.TFRecordDataset(path).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE).ragged_batch(512).prefetch(2)
    try:
      for images, label_ids in records:  # in batches: one Python step per 512 records
        for image, row in zip(images.numpy(), label_ids.to_list()):
          name = f"{path}#{len(names) - first}"
          if not image:
            raise UsageError(f"--{flag}: {name} has no {image_key!r} feature; name the image "
                             "feature with --image_key")
          checker.add(image)
          ids.append(row)
          names.append(name)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      raise UsageError(f"--{flag}: {path} is not a TFRecord file of tf.train.Examples with "
                       f"a string {image_key!r} and int64 {label_key!r} (name them with "
                       f"--image_key/--label_key): {e.message.splitlines()[0]}") from None
  if not names:
    raise UsageError(f"--{flag}: {pattern} holds no records")
  if label_names:
    if not os.path.isfile(label_names):
      raise UsageError(f"--label_names: file {label_names} does not exist")
    with open(label_names, encoding="utf-8") as f:
      all_names = [line.strip() for line in f if line.strip()]
    bad = [(n, i) for n, row in zip(names, ids) for i in row if not 0 <= i < len(all_names)]
    if bad:
      raise UsageError(f"--{flag}: {bad[0][0]} has label id {bad[0][1]}, but --label_names "
                       f"{label_names} names {len(all_names)} classes (ids 0-"
                       f"{len(all_names) - 1})")
    per_row = [[all_names[i] for i in row] for row in ids]
    class_names = class_names or all_names
  else:
    per_row = [[str(i) for i in row] for row in ids]
    if class_names is None:
      class_names = [str(i) for i in sorted({i for row in ids for i in row})]
  stream = RecordStream(image_key=image_key, files=tuple(files))
  return _records(names, per_row, names, task, class_names, flag, pattern, label_key,
                  checker.problems(), stream)


class _ImageChecker:
  """Checks encoded images as they are read, in batches, keeping only why each is
  unusable (None: fine), so that indexing a large record set holds no image bytes."""

  def __init__(self, flag: str, batch: int = 2048):
    self._flag, self._batch, self._pending, self._problems = flag, batch, [], []

  def add(self, encoded: bytes) -> None:
    self._pending.append(encoded)
    if len(self._pending) >= self._batch:
      self._check()

  def _check(self):
    before = len(self._problems)
    self._problems += unreadable_reasons(self._pending)
    self._pending = []
    if before // PROGRESS_FROM != len(self._problems) // PROGRESS_FROM:  # a line per 20,000
      logging.info("--%s: %d records read and checked", self._flag, len(self._problems))

  def problems(self) -> list:
    self._check()
    return self._problems


def _records(inputs, per_row, names, task, class_names, flag, where, label_key,
             problems=None, stream=None) -> Examples:
  """Records with class names per record -> Examples (one label for multiclass); images
  are streamed from `stream` (their keys are the names) and checked (`problems`)."""
  if task == "multiclass":
    wrong = [n for n, row in zip(names, per_row) if len(row) != 1]
    if wrong:
      raise UsageError(f"--{flag}: {wrong[0]} has {len(per_row[names.index(wrong[0])])} "
                       f"{label_key!r} values; a multiclass example has exactly one "
                       "(pass --task=multilabel for several)")
  elif task == "regression":
    raise UsageError(f"--task=regression: --{flag} holds class labels; pass numeric targets "
                     "in a --csv")
  ids, class_names = _class_ids(per_row, class_names, flag, where)
  labels = [row[0] for row in ids] if task == "multiclass" else ids
  return Examples(inputs, labels, class_names, task, names, (stream,) if stream else (),
                  problems)


def tfds_name(name: str) -> str:
  """--tfds NAME:CONFIG (also NAME/CONFIG, NAME:VERSION, NAME/CONFIG:VERSION) -> TFDS' own
  spelling, NAME/CONFIG[:VERSION]."""
  import re  # pylint: disable=g-import-not-at-top
  base, _, rest = name.partition(":")
  if rest and not re.fullmatch(r"[\d.*]+", rest) and "/" not in base:
    config, _, version = rest.partition(":")
    return f"{base}/{config}" + (f":{version}" if version else "")
  return name


def _tfds_builder(name: str, data_dir: str):
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
  splits = _tfds_builder(name, data_dir).info.splits
  return next((s for s in VALIDATION_FOLDERS if s in splits), "")


def read_tfds(name: str, data_dir: str, split: str, image_key: str = "", label_key: str = "",
              task: str = "multiclass", class_names: Optional[list[str]] = None,
              text: bool = False) -> Examples:
  """Reads one split of a prepared TFDS data set (`download=False`: never waits offline).

  The image (with `text`: text) and label features are the builder's first `Image`
  (`Text`) and `ClassLabel` (or a `Sequence` of `ClassLabel`s for multilabel) unless
  named; images are kept encoded, texts decoded.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = _tfds_builder(name, data_dir)
  features = builder.info.features
  kind = tfds.features.Text if text else tfds.features.Image
  if not image_key:
    image_key = next((k for k, f in features.items() if isinstance(f, kind)), "")
  if not label_key:
    label_key = next((k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)
                      or isinstance(getattr(f, "feature", None), tfds.features.ClassLabel)), "")
  for flag, key in (("text_key" if text else "image_key", image_key),
                    ("label_key", label_key)):
    if key not in features:
      raise UsageError(f"--{flag}: {name} has no feature {key!r}; its features are "
                       f"{', '.join(features)}")
  label = features[label_key]
  label = getattr(label, "feature", label)
  all_names = label.names if isinstance(label, tfds.features.ClassLabel) else None
  try:
    ds = builder.as_dataset(split=split, decoders=None if text else {
        image_key: tfds.decode.SkipDecoding()})
  except AssertionError:
    root = data_dir or str(getattr(builder, "_data_dir_root", "~/tensorflow_datasets"))
    raise UsageError(f"--tfds: {name} is not prepared in {builder.data_dir}; prepare it on a "
                     f"machine with internet (`tfds build {tfds_name(name)} "
                     f"--data_dir={root}`) and pass --tfds_data_dir={root}") from None
  except ValueError as e:
    raise UsageError(f"--train_split/--val_split: {name} has no split {split!r} "
                     f"({str(e).splitlines()[0]}); its splits are "
                     f"{', '.join(builder.info.splits) or 'unknown'}") from None
  texts, per_row, names, checker = [], [], [], _ImageChecker("tfds")
  batches = ds.map(lambda example: (example[image_key], example[label_key])).ragged_batch(512)
  for inputs, labels in batches:  # in batches: one Python step per 512 records
    labels = labels.to_list() if hasattr(labels, "to_list") else labels.numpy().tolist()
    for item, ids in zip(inputs.numpy(), labels):
      if text:
        texts.append(item.decode("utf-8", errors="surrogateescape"))
      else:
        checker.add(item)
      per_row.append([all_names[j] if all_names else str(j) for j in np.atleast_1d(ids)])
      names.append(f"{name}[{split}]#{len(names)}")
  if not names:
    raise UsageError(f"--tfds: split {split!r} of {name} is empty")
  if class_names is None and all_names:
    class_names = list(all_names)
  where = f"{name}[{split}]"
  if text:
    return _records(texts, per_row, names, task, class_names, "tfds", where, label_key)
  stream = RecordStream(image_key=image_key, tfds=tfds_name(name), data_dir=data_dir,
                        split=split, key_prefix=f"{where}#")
  return _records(names, per_row, names, task, class_names, "tfds", where, label_key,
                  checker.problems(), stream)


def evaluation_source(config, task: str, class_names: list[str], split: str = "test",
                      text: bool = False) -> Examples:
  """The labelled images to evaluate from a `DataConfig`'s source: --data_dir (its test/,
  else validation/ folder, else itself), --csv, --tfrecord or --tfds (`split`). Labels
  must be among the model's `class_names` (for regression: its targets). An unreadable
  image is a UsageError: metrics over a silently smaller set would mislead. With `text`:
  texts from --csv, --text_dir or --tfds; an empty or undecodable text is a UsageError."""
  c = config
  known = None if task == "regression" else class_names
  if text:
    if c.csv:
      flag, files = "csv", read_texts(c.csv, "csv", c.text_column, c.label_column, task, known)
    elif c.text_dir:
      flag, files = "text_dir", read_text_dir(c.text_dir, "text_dir", known)
    elif c.tfds:
      flag, files = "tfds", read_tfds(c.tfds, c.tfds_data_dir, split, c.text_key, c.label_key,
                                      task, known, text=True)
    else:
      raise UsageError("--csv/--text_dir/--tfds: pass the labelled texts to evaluate on")
    return readable_texts(files, flag, strict=True)
  if c.csv:
    flag, files = "csv", read_csv(c.csv, "csv", c.path_column, c.label_column, task, known)
  elif c.tfrecord:
    flag, files = "tfrecord", read_tfrecords(c.tfrecord, "tfrecord", c.image_key, c.label_key,
                                             task, c.label_names, known)
  elif c.tfds:
    flag, files = "tfds", read_tfds(c.tfds, c.tfds_data_dir, split, c.image_key, c.label_key,
                                    task, known)
  else:
    if task != "multiclass":
      raise UsageError(f"--data_dir: class folders cannot hold {task} labels; pass --csv, "
                       "--tfrecord or --tfds")
    return evaluation_files(c.data_dir, class_names)
  if task == "regression" and files.class_names != class_names:
    raise UsageError(f"--label_column: the model predicts {', '.join(class_names)}, got "
                     f"{', '.join(files.class_names)}")
  return readable(files, flag, strict=True)
