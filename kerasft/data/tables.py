"""Labelled sources besides image folders and records: tables and text folders; picking a
run's (or an evaluation's) data from a `DataConfig`.

- image folders (`kerasft.data.folders`);
- a CSV (or TSV, JSONL) file: a path column (relative to the file's folder) and label
  column(s): a class name, `a|b` for several labels (multilabel), numbers (regression);
- TFRecord files and prepared TFDS data sets (`kerasft.data.records`);
- for text models, texts from .csv/.tsv/.jsonl, a folder of .txt files per class, or TFDS.
`index_images` / `index_texts` give a run's training and validation examples;
`evaluation_images` / `evaluation_texts` the examples to evaluate on. How labels are read
comes from a label kind (`kerasft.data.labels`, a task's `Output.labels`).
"""

from __future__ import annotations

import csv
import os
from typing import Optional

from absl import logging

from kerasft.core.errors import UsageError
from kerasft.data.examples import Examples, readable, stratified_split, without
from kerasft.data.folders import evaluation_files, index
from kerasft.data.labels import Classes, class_ids
from kerasft.data.records import read_tfds, read_tfds_texts, read_tfrecords, tfds_validation_split
from kerasft.data.source import Source


def _image_reader(c, kind):
  """(training source, validation source or None, read(source, class names)) of a
  DataConfig's image source (--csv, --tfrecord, --tfds)."""
  if c.csv:
    return Source("csv", c.csv), Source("val_csv", c.val_csv) if c.val_csv else None, (
        lambda source, names: read_csv(source, c.path_column, c.label_column, kind, names))
  if c.tfrecord:
    return (Source("tfrecord", c.tfrecord),
            Source("val_tfrecord", c.val_tfrecord) if c.val_tfrecord else None,
            lambda source, names: read_tfrecords(source, c.image_key, c.label_key, kind,
                                                 c.label_names, names))
  val_split = c.val_split or tfds_validation_split(c.tfds, c.tfds_data_dir)
  return Source("tfds", c.train_split), Source("tfds", val_split) if val_split else None, (
      lambda source, names: read_tfds(c.tfds, c.tfds_data_dir, source.path, c.image_key,
                                      c.label_key, kind, names))


def index_images(c, kind=Classes(), seed: int = 0) -> tuple[Examples, Examples]:
  """The training and validation images of a `DataConfig`'s source (--data_dir, --csv,
  --tfrecord or --tfds), labels read as `kind` says. Validation comes from the source's
  validation part (--val_dir, --val_csv, --val_tfrecord, --val_split or a validation
  folder/split), else a stratified --validation_split. Unreadable images are skipped with a
  warning, or with --strict_data are a UsageError."""
  if not (c.csv or c.tfrecord or c.tfds):
    kind.check_folder_source(Source("data_dir", c.data_dir))
    return index(c.data_dir, c.val_dir, c.validation_split, seed, c.strict_data)
  source, val_source, read = _image_reader(c, kind)
  train = readable(read(source, None), source, c.strict_data)
  if not train.inputs:
    raise source.error(f"{source.path} holds no readable images")
  val = None
  if val_source:
    val = readable(read(val_source, train.class_names), val_source, c.strict_data)
  return _split(train, val, source, "images", c, seed)


def _split(train: Examples, val: Optional[Examples], source: Source, what: str, c, seed: int
           ) -> tuple[Examples, Examples]:
  """Checks the classes, splits off validation data when there is none, logs the sizes."""
  if len(train.class_names) < train.kind.min_classes:
    raise source.error(f"the training {what} have a single class "
                       f"({', '.join(train.class_names)}); a classifier needs at least 2")
  if val is None:
    train, val = stratified_split(train, c.validation_split, seed)
  logging.info("data: %d training and %d validation %s, %d %s (%s)", len(train.inputs),
               len(val.inputs), what, len(train.class_names), train.kind.noun,
               ", ".join(train.class_names))
  return train, val


def _text_reader(c, kind, split: str = ""):
  """(source, validation source or None, read(source, class names)) of a DataConfig's
  text source; split: a TFDS split to read instead of the training one."""
  if c.csv:
    return Source("csv", c.csv), Source("val_csv", c.val_csv) if c.val_csv else None, (
        lambda source, names: read_texts(source, c.text_column, c.label_column, kind, names))
  if c.text_dir:
    return Source("text_dir", c.text_dir), None, read_text_dir
  if c.tfds:
    val_split = c.val_split or tfds_validation_split(c.tfds, c.tfds_data_dir)
    return (Source("tfds", split or c.train_split), Source("tfds", val_split) if val_split
            else None, lambda source, names: read_tfds_texts(
                c.tfds, c.tfds_data_dir, source.path, c.text_key, c.label_key, kind, names))
  raise UsageError("--csv/--text_dir/--tfds: a text model needs labelled texts; pass "
                   "--csv=FILE (.csv, .tsv or .jsonl), --text_dir=DIR or --tfds=NAME")


def index_texts(c, kind=Classes(), seed: int = 0) -> tuple[Examples, Examples]:
  """The training and validation texts of a `DataConfig` (--csv/.tsv/.jsonl with
  --text_column, --text_dir or --tfds with --text_key), like `index_images`; empty or
  undecodable texts are skipped and counted the same way."""
  source, val_source, read = _text_reader(c, kind)
  train = readable_texts(read(source, None), source, c.strict_data)
  val = None
  if val_source:
    val = readable_texts(read(val_source, train.class_names), val_source, c.strict_data)
  return _split(train, val, source, "texts", c, seed)


def read_texts(source: Source, text_column: str = "text", label_column: str = "label",
               kind=Classes(), class_names: Optional[list[str]] = None) -> Examples:
  """Indexes a .csv/.tsv/.jsonl of texts (`text_column`) and labels; the texts are held
  in `inputs`, undecodable bytes as they are (see `readable_texts`)."""
  rows = read_table(source, [text_column] + label_column.split(","))
  labels, names = kind.parse_cells(rows, label_column, source, class_names)
  texts = ["" if row[text_column] is None else str(row[text_column]) for row in rows]
  return Examples(texts, labels, names, kind,
                  [f"{source.path} row {i + 1}" for i in range(len(rows))])


def read_text_dir(source: Source, class_names: Optional[list[str]] = None) -> Examples:
  """Indexes `source.path`/<class>/**/*.txt (the layout of
  `keras.utils.text_dataset_from_directory`); texts are held in `inputs`."""
  folder = source.path
  if not os.path.isdir(folder):
    raise source.error(f"folder {folder} does not exist; pass a folder with one sub-folder "
                       "of .txt files per class")
  found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
  if not found:
    raise source.error(f"{folder} has no class sub-folders of .txt files")
  texts, names, per_row = [], [], []
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
    raise source.error(f"{folder} holds no .txt files in its class sub-folders")
  ids, class_names = class_ids(per_row, class_names, source)
  return Examples(texts, [i[0] for i in ids], class_names, Classes(), names)


def _text_problem(text: str) -> Optional[str]:
  if not text.strip():
    return "empty"
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return "not UTF-8"
  return None


def readable_texts(files: Examples, source: Source, strict: bool = False) -> Examples:
  """`files` without empty or undecodable texts (see `kerasft.data.examples.without`); all
  of them bad is a UsageError either way."""
  problems = [_text_problem(t) for t in files.inputs]
  if all(problems):
    raise source.error(f"every text is empty or undecodable ({len(problems)} rows, first: "
                       f"{files.name(0)}); check --text_column")
  return without(files, problems, source, strict, "empty or undecodable text(s)",
                 with_reasons=True)


def read_table(source: Source, columns: list[str]) -> list[dict]:
  """Rows of a .csv, .tsv (tab-separated) or .jsonl file as dicts; the `columns` must be
  there (a UsageError lists the ones the file has)."""
  path = source.path
  if not os.path.isfile(path):
    raise source.error(f"file {path} does not exist")
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
    raise source.error(f"cannot read {path} ({type(e).__name__}: {e})") from None
  missing = [c for c in columns if c not in have]
  if missing:
    raise source.error(f"{path} has no column {missing[0]!r} (columns: {', '.join(have)}); "
                       "name it with --path_column/--label_column/--text_column")
  if not rows:
    raise source.error(f"{path} has no rows")
  return rows


def read_csv(source: Source, path_column: str = "path", label_column: str = "label",
             kind=Classes(), class_names: Optional[list[str]] = None) -> Examples:
  """Indexes a CSV/TSV/JSONL of image paths (relative to its folder) and labels."""
  rows = read_table(source, [path_column] + label_column.split(","))
  labels, names = kind.parse_cells(rows, label_column, source, class_names)
  folder = os.path.dirname(os.path.abspath(source.path))
  paths = [os.path.join(folder, str(row[path_column] or "")) for row in rows]
  return Examples(paths, labels, names, kind)


def evaluation_images(c, kind, class_names: list[str], split: str = "test") -> Examples:
  """The labelled images to evaluate from a `DataConfig`'s source: --data_dir (its test/,
  else validation/ folder, else itself), --csv, --tfrecord or --tfds (`split`). Labels
  must be among the model's `class_names` (for regression: its targets). An unreadable
  image is a UsageError: metrics over a silently smaller set would mislead."""
  if not (c.csv or c.tfrecord or c.tfds):
    kind.check_folder_source(Source("data_dir", c.data_dir))
    return evaluation_files(c.data_dir, class_names)
  source, _, read = _image_reader(c, kind)
  if c.tfds:
    source = source.at(split)
  files = read(source, kind.known_names(class_names))
  kind.check_names(files.class_names, class_names)
  return readable(files, source, strict=True)


def evaluation_texts(c, kind, class_names: list[str], split: str = "test") -> Examples:
  """The labelled texts to evaluate: --csv, --text_dir or --tfds (`split`); an empty or
  undecodable text is a UsageError."""
  source, _, read = _text_reader(c, kind, split)
  files = read(source, kind.known_names(class_names))
  kind.check_names(files.class_names, class_names)
  return readable_texts(files, source, strict=True)


def slice_values(c, files: Examples, key_column: str) -> dict:
  """{slice column: its value for each of `files`} from the --csv/--val_csv rows of a
  DataConfig `c`, matched by the input (`key_column`: the path column, paths resolved as
  in `read_csv`, or the text column); "" where a file has no row. A slice column missing
  from a file is a UsageError."""
  if not c.slice_column:
    return {}
  lookup = {column: {} for column in c.slice_column}
  for source in (Source("csv", c.csv), Source("val_csv", c.val_csv)):
    if not source.path:
      continue
    rows = read_table(source, [key_column])
    missing = [col for col in c.slice_column if col not in rows[0]]
    if missing:
      raise UsageError(f"--slice_column: {source.path} has no column {missing[0]!r} "
                       f"(columns: {', '.join(rows[0])})")
    folder = os.path.dirname(source.path) if key_column == c.path_column else None
    for row in rows:
      key = str(row[key_column] or "")
      key = os.path.join(folder, key) if folder is not None else key
      for column in c.slice_column:
        lookup[column][key] = "" if row[column] is None else str(row[column])
  return {column: [values.get(str(x), "") for x in files.inputs]
          for column, values in lookup.items()}
