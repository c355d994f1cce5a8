"""Labelled sources besides image folders and records: tables and text folders; picking a
run's (or an evaluation's) data from a `DataConfig`.

- image folders (`kerasft.data.index`);
- a CSV (or TSV, JSONL) file: a path column (relative to the file's folder) and label
  column(s): a class name, `a|b` for several labels (multilabel), numbers (regression);
- TFRecord files and prepared TFDS data sets (`kerasft.records`);
- for text models, texts from .csv/.tsv/.jsonl, a folder of .txt files per class, or TFDS.
`index_images` / `index_texts` give a run's training and validation examples;
`evaluation_images` / `evaluation_texts` the examples to evaluate on. The kind of labels
comes from an `Output` (`kerasft.tasks.outputs`).
"""

from __future__ import annotations

import csv
import os
from typing import Optional

from absl import logging

from kerasft.data.examples import Examples, evaluation_files, index, readable, stratified_split, without
from kerasft.core.errors import UsageError
from kerasft.data.records import class_ids, read_tfds, read_tfds_texts, read_tfrecords, tfds_validation_split
from kerasft.tasks.classify.outputs import Output


def _image_reader(c, output: Output):
  """(flags, sources, read(source, flag, class names)) of a DataConfig's image source."""
  if c.csv:
    return ("csv", "val_csv"), (c.csv, c.val_csv), lambda path, flag, names: read_csv(
        path, flag, c.path_column, c.label_column, output, names)
  if c.tfrecord:
    return ("tfrecord", "val_tfrecord"), (c.tfrecord, c.val_tfrecord), (
        lambda pattern, flag, names: read_tfrecords(pattern, flag, c.image_key, c.label_key,
                                                    output, c.label_names, names))
  val_split = c.val_split or tfds_validation_split(c.tfds, c.tfds_data_dir)
  return ("tfds", "tfds"), (c.train_split, val_split), lambda split, flag, names: read_tfds(
      c.tfds, c.tfds_data_dir, split, c.image_key, c.label_key, output, names)


def index_images(c, output: Output = Output(), seed: int = 0) -> tuple[Examples, Examples]:
  """The training and validation images of a `DataConfig`'s source (--data_dir, --csv,
  --tfrecord or --tfds). Validation comes from the source's validation part (--val_dir,
  --val_csv, --val_tfrecord, --val_split or a validation folder/split), else a stratified
  --validation_split. Unreadable images are skipped with a warning, or with --strict_data
  are a UsageError."""
  if not (c.csv or c.tfrecord or c.tfds):
    if not output.one_label:
      raise UsageError(f"--task={output.name}: an image folder gives each image one class; "
                       "pass the labels in a --csv, --tfrecord or --tfds source")
    return index(c.data_dir, c.val_dir, c.validation_split, seed, c.strict_data)
  flags, sources, read = _image_reader(c, output)
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
  if len(train.class_names) < train.output.min_classes:
    raise UsageError(f"--{flag}: the training {what} have a single class "
                     f"({', '.join(train.class_names)}); a classifier needs at least 2")
  if val is None:
    train, val = stratified_split(train, c.validation_split, seed)
  logging.info("data: %d training and %d validation %s, %d %s (%s)", len(train.inputs),
               len(val.inputs), what, len(train.class_names), train.output.noun,
               ", ".join(train.class_names))
  return train, val


def _text_reader(c, output: Output):
  """(flag, read(flag, class names, split)) of a DataConfig's text source."""
  if c.csv:
    return "csv", lambda path, flag, names: read_texts(path, flag, c.text_column,
                                                       c.label_column, output, names)
  if c.text_dir:
    return "text_dir", lambda path, flag, names: read_text_dir(path, flag, names)
  if c.tfds:
    return "tfds", lambda split, flag, names: read_tfds_texts(
        c.tfds, c.tfds_data_dir, split, c.text_key, c.label_key, output, names)
  raise UsageError("--csv/--text_dir/--tfds: a text model needs labelled texts; pass "
                   "--csv=FILE (.csv, .tsv or .jsonl), --text_dir=DIR or --tfds=NAME")


def index_texts(c, output: Output = Output(), seed: int = 0) -> tuple[Examples, Examples]:
  """The training and validation texts of a `DataConfig` (--csv/.tsv/.jsonl with
  --text_column, --text_dir or --tfds with --text_key), like `index_images`; empty or
  undecodable texts are skipped and counted the same way."""
  flag, read = _text_reader(c, output)
  train_source = {"csv": c.csv, "text_dir": c.text_dir, "tfds": c.train_split}[flag]
  train = readable_texts(read(train_source, flag, None), flag, c.strict_data)
  val_source, val_flag = (c.val_csv, "val_csv") if flag == "csv" else ("", flag)
  if flag == "tfds":
    val_source = c.val_split or tfds_validation_split(c.tfds, c.tfds_data_dir)
  val = None
  if val_source:
    val = readable_texts(read(val_source, val_flag, train.class_names), val_flag,
                         c.strict_data)
  return _split(train, val, flag, "texts", c, seed)


def read_texts(path: str, flag: str, text_column: str = "text", label_column: str = "label",
               output: Output = Output(), class_names: Optional[list[str]] = None
               ) -> Examples:
  """Indexes a .csv/.tsv/.jsonl of texts (`text_column`) and labels; the texts are held
  in `inputs`, undecodable bytes as they are (see `readable_texts`)."""
  rows = read_table(path, flag, [text_column] + label_column.split(","))
  labels, names = output.parse_cells(rows, label_column, flag, path, class_names)
  texts = ["" if row[text_column] is None else str(row[text_column]) for row in rows]
  return Examples(texts, labels, names, output,
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
  ids, class_names = class_ids(per_row, class_names, flag, folder)
  return Examples(texts, [i[0] for i in ids], class_names, Output(), names)


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


def read_csv(path: str, flag: str, path_column: str = "path", label_column: str = "label",
             output: Output = Output(), class_names: Optional[list[str]] = None
             ) -> Examples:
  """Indexes a CSV/TSV/JSONL of image paths (relative to its folder) and labels."""
  rows = read_table(path, flag, [path_column] + label_column.split(","))
  labels, names = output.parse_cells(rows, label_column, flag, path, class_names)
  folder = os.path.dirname(os.path.abspath(path))
  paths = [os.path.join(folder, str(row[path_column] or "")) for row in rows]
  return Examples(paths, labels, names, output)


def evaluation_images(c, output: Output, class_names: list[str], split: str = "test"
                      ) -> Examples:
  """The labelled images to evaluate from a `DataConfig`'s source: --data_dir (its test/,
  else validation/ folder, else itself), --csv, --tfrecord or --tfds (`split`). Labels
  must be among the model's `class_names` (for regression: its targets). An unreadable
  image is a UsageError: metrics over a silently smaller set would mislead."""
  if not (c.csv or c.tfrecord or c.tfds):
    if not output.one_label:
      raise UsageError(f"--data_dir: class folders cannot hold {output.name} labels; pass "
                       "--csv, --tfrecord or --tfds")
    return evaluation_files(c.data_dir, class_names)
  flags, _, read = _image_reader(c, output)
  files = read(c.csv or c.tfrecord or split, flags[0], output.known_names(class_names))
  output.check_names(files.class_names, class_names)
  return readable(files, flags[0], strict=True)


def evaluation_texts(c, output: Output, class_names: list[str], split: str = "test"
                     ) -> Examples:
  """The labelled texts to evaluate: --csv, --text_dir or --tfds (`split`); an empty or
  undecodable text is a UsageError."""
  flag, read = _text_reader(c, output)
  source = {"csv": c.csv, "text_dir": c.text_dir, "tfds": split}[flag]
  files = read(source, flag, output.known_names(class_names))
  output.check_names(files.class_names, class_names)
  return readable_texts(files, flag, strict=True)


def slice_values(c, files: Examples, key_column: str) -> dict:
  """{slice column: its value for each of `files`} from the --csv/--val_csv rows of a
  DataConfig `c`, matched by the input (`key_column`: the path column, paths resolved as
  in `read_csv`, or the text column); "" where a file has no row. A slice column missing
  from a file is a UsageError."""
  if not c.slice_column:
    return {}
  lookup = {column: {} for column in c.slice_column}
  for flag, path in (("csv", c.csv), ("val_csv", c.val_csv)):
    if not path:
      continue
    rows = read_table(path, flag, [key_column])
    missing = [col for col in c.slice_column if col not in rows[0]]
    if missing:
      raise UsageError(f"--slice_column: {path} has no column {missing[0]!r} (columns: "
                       f"{', '.join(rows[0])})")
    folder = os.path.dirname(path) if key_column == c.path_column else None
    for row in rows:
      key = str(row[key_column] or "")
      key = os.path.join(folder, key) if folder is not None else key
      for column in c.slice_column:
        lookup[column][key] = "" if row[column] is None else str(row[column])
  return {column: [values.get(str(x), "") for x in files.inputs]
          for column, values in lookup.items()}
