"""Labelled images from every source into one tf.data pipeline.

Sources (one per run, `index_source`):
- an image folder: one sub-folder per class (`cats/`, `dogs/`, ...), or split folders
  `train/` and `validation/` (or `val/`) that each hold class sub-folders; a `test/` folder
  is never trained on;
- a CSV (or TSV) file: a path column (relative to the file's folder) and label column(s):
  a class name, `a|b` for several labels (multilabel), numbers (regression);
- TFRecord files of `tf.train.Example`s with `image/encoded` and `image/class/label`;
- a prepared TFDS data set, read with `download=False`.
Every example is indexed and decoded once up front, so a bad one is found (and skipped, or
with --strict_data refused) before training starts, never in the middle of an epoch.
Records from TFRecord and TFDS are held as their encoded bytes. `decode_and_resize` is the
one function that turns encoded bytes into model input; the export's `serving_bytes`
signature uses it too, so serving sees exactly what training saw.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import os
from typing import Callable, Optional

import numpy as np
from absl import logging

from kerasft.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VALIDATION_FOLDERS = ("validation", "val")
# Decoded training images are cached in memory when they take at most this many bytes.
MEMORY_CACHE_BYTES = 2 << 30


TASKS = ("multiclass", "multilabel", "regression")


@dataclasses.dataclass
class ImageFiles:
  """An indexed split: images and their labels.

  paths: file paths, or encoded images (bytes) for records from TFRecord files and TFDS.
  labels: per image, its class id (multiclass), a list of class ids (multilabel) or a list
  of float targets (regression). class_names: the classes, or the regression targets'
  names. names: how messages name each image (default: its path).
  """
  paths: list
  labels: list
  class_names: list[str]
  task: str = "multiclass"
  names: Optional[list[str]] = None

  def name(self, i: int) -> str:
    return self.names[i] if self.names else str(self.paths[i])

  def subset(self, idx) -> "ImageFiles":
    """The images at positions `idx`, in that order."""
    return dataclasses.replace(
        self, paths=[self.paths[i] for i in idx], labels=[self.labels[i] for i in idx],
        names=[self.names[i] for i in idx] if self.names else None)

  def __add__(self, other: "ImageFiles") -> "ImageFiles":
    names = None
    if self.names or other.names:
      names = [self.name(i) for i in range(len(self.paths))] + [
          other.name(i) for i in range(len(other.paths))]
    return dataclasses.replace(self, paths=self.paths + other.paths,
                               labels=self.labels + other.labels, names=names)

  def targets(self) -> np.ndarray:
    """float32 [N, C]: one-hot (multiclass), multi-hot (multilabel) or the targets."""
    n, k = len(self.labels), len(self.class_names)
    if self.task == "regression":
      return np.asarray(self.labels, np.float32).reshape(n, k)
    out = np.zeros((n, k), np.float32)
    for i, label in enumerate(self.labels):
      out[i, label] = 1.0
    return out


@dataclasses.dataclass
class Dataset:
  """What training needs: batched (model inputs, targets) pipelines and class names.

  make_inputs(files, batch_size): an unshuffled, uncached pipeline of other examples in
  the same form (feature caching uses it).
  """
  train: "tf.data.Dataset"  # noqa: F821
  val: "tf.data.Dataset"  # noqa: F821
  class_names: list[str]
  train_files: ImageFiles
  val_files: ImageFiles
  make_inputs: Callable


RESIZE_MODES = ("squash", "crop", "pad")


def decode_and_resize(image_bytes, image_size: int, resize: str = "squash"):
  """Decodes one JPEG/PNG/BMP/GIF (first frame) to float32 RGB [S, S, 3], pixels 0..255.

  Grayscale and RGBA images become RGB. resize: "squash" scales to the square ignoring the
  aspect ratio; "crop" scales the shorter side to S and keeps the central square; "pad"
  scales the longer side to S and pads with black. Bilinear interpolation.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
  if resize in ("crop", "pad"):  # scale one side to S, then crop or pad around the centre
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    if resize == "crop":
      scaled = tf.math.ceil(shape * image_size / tf.reduce_min(shape))
    else:
      scaled = tf.minimum(tf.math.floor(shape * image_size / tf.reduce_max(shape)), image_size)
    image = tf.image.resize(image, tf.cast(scaled, tf.int32), method="bilinear")
    image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
  else:
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
  image.set_shape((image_size, image_size, 3))
  return image


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_class_folder(folder: str, flag: str, class_names: Optional[list[str]] = None
                      ) -> ImageFiles:
  """Indexes `folder`/<class>/**/<image>; class names are the sorted sub-folder names.

  class_names: when given (a validation folder), the folder's classes must be among them
  and labels index into them.
  """
  if not os.path.isdir(folder):
    raise UsageError(f"--{flag}: folder {folder} does not exist; pass a folder with one "
                     "sub-folder per class")
  found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
  if not found:
    raise UsageError(f"--{flag}: {folder} has no class sub-folders; put each class's images "
                     "in a sub-folder named after the class")
  if class_names is None:
    class_names = found
  elif set(found) - set(class_names):
    raise UsageError(f"--{flag}: {folder} has classes {sorted(set(found) - set(class_names))} "
                     f"that the training data does not have ({', '.join(class_names)})")
  paths, labels = [], []
  for name in found:
    label = class_names.index(name)
    for root, dirs, files in os.walk(os.path.join(folder, name)):
      dirs.sort()
      for f in sorted(files):
        if _is_image(f) and not f.startswith("."):
          paths.append(os.path.join(root, f))
          labels.append(label)
  if not paths:
    raise UsageError(f"--{flag}: {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                     "its class sub-folders")
  return ImageFiles(paths, labels, list(class_names))


def unreadable_reasons(paths: list) -> list[Optional[str]]:
  """Decodes every file (or encoded image, bytes) once, in threads; per item None, or why
  it is not a readable image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def reason(path):
    if isinstance(path, bytes):
      path = io.BytesIO(path)
    try:
      with Image.open(path) as image:
        image.draft("RGB", (32, 32))  # JPEGs decode at a reduced scale: fast, still complete.
        image.load()
      return None
    except Exception as e:  # pylint: disable=broad-except
      return f"{type(e).__name__}: {e}"

  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as ex:
    return list(ex.map(reason, paths))


def check_images(paths: list[str], flag: str) -> None:
  """Raises a UsageError naming the first unreadable file among `paths`, if any."""
  failures = [f"{p} ({r})" for p, r in zip(paths, unreadable_reasons(paths)) if r]
  if failures:
    raise UsageError(f"--{flag}: {len(failures)} file(s) are not readable images, first: "
                     f"{failures[0]}; remove or fix them, or leave out --strict_data to skip "
                     "them")


def readable(files: ImageFiles, flag: str, strict: bool = False) -> ImageFiles:
  """`files` without the missing, corrupt, truncated or non-image ones, which are found by
  decoding every image once: skipped with one warning naming the first ten, or with
  `strict` a UsageError naming the first."""
  reasons = unreadable_reasons(files.paths)
  bad = [(files.name(i), r) for i, r in enumerate(reasons) if r]
  if not bad:
    return files
  if strict:
    raise UsageError(f"--strict_data: {len(bad)} image(s) from --{flag} are not readable, "
                     f"first: {bad[0][0]} ({bad[0][1]}); remove or fix them")
  logging.warning("skipping %d unreadable image(s) from --%s: %s%s", len(bad), flag,
                  ", ".join(p for p, _ in bad[:10]), " ..." if len(bad) > 10 else "")
  return files.subset([i for i, r in enumerate(reasons) if r is None])


def oversampled(files: ImageFiles, seed: int) -> ImageFiles:
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


def balanced_class_weights(files: ImageFiles) -> dict[int, float]:
  """{class id: n / (classes * count)} from the labels (scikit-learn's "balanced")."""
  counts = np.bincount(files.labels, minlength=len(files.class_names))
  n, k = len(files.labels), len(files.class_names)
  return {i: float(n / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def stratified_split(files: ImageFiles, fraction: float, seed: int
                     ) -> tuple[ImageFiles, ImageFiles]:
  """Splits off `fraction` of each class (at least one image) as validation, seeded.

  Multilabel and regression data are split at random (not stratified).
  """
  rng = np.random.default_rng(seed)
  if files.task != "multiclass":
    idx = rng.permutation(len(files.paths))
    n_val = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
    return files.subset(sorted(idx[n_val:])), files.subset(sorted(idx[:n_val]))
  labels = np.asarray(files.labels)
  train_idx, val_idx = [], []
  for label in range(len(files.class_names)):
    idx = np.flatnonzero(labels == label)
    if len(idx) == 0:
      continue
    if len(idx) < 2:
      raise UsageError(f"--validation_split: class {files.class_names[label]!r} has only "
                       f"{len(idx)} image; give each class at least 2 images or pass --val_dir")
    idx = rng.permutation(idx)
    n_val = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
    val_idx.extend(idx[:n_val])
    train_idx.extend(idx[n_val:])
  return files.subset(sorted(train_idx)), files.subset(sorted(val_idx))


def index(data_dir: str, val_dir: str = "", validation_split: float = 0.2, seed: int = 0,
          strict: bool = False) -> tuple[ImageFiles, ImageFiles]:
  """Finds the training and validation images; see the module docstring for layouts.

  Unreadable files are skipped with a warning, or with `strict` are a UsageError.
  """
  if not os.path.isdir(data_dir):
    raise UsageError(f"--data_dir: folder {data_dir} does not exist; pass a folder with one "
                     "sub-folder per class")
  train_dir, split_val_dir = data_dir, ""
  if os.path.isdir(os.path.join(data_dir, "train")):
    train_dir = os.path.join(data_dir, "train")
    for name in VALIDATION_FOLDERS:
      if os.path.isdir(os.path.join(data_dir, name)):
        split_val_dir = os.path.join(data_dir, name)
        break
  elif os.path.isdir(os.path.join(data_dir, "test")):
    raise UsageError(f"--data_dir: {data_dir} has a test/ folder but no train/ folder; "
                     "put the training images in train/ (test/ is never trained on)")
  train = readable(scan_class_folder(train_dir, "data_dir"), "data_dir", strict)
  if not train.paths:
    raise UsageError(f"--data_dir: {train_dir} holds no readable images")
  if len(train.class_names) < 2:
    raise UsageError(f"--data_dir: {train_dir} has a single class ({train.class_names[0]}); "
                     "a classifier needs at least 2 class sub-folders")
  if val_dir or split_val_dir:
    flag = "val_dir" if val_dir else "data_dir"
    val = readable(scan_class_folder(val_dir or split_val_dir, flag, train.class_names), flag,
                   strict)
  else:
    train, val = stratified_split(train, validation_split, seed)
  logging.info("data: %d training and %d validation images in %d classes (%s)",
               len(train.paths), len(val.paths), len(train.class_names),
               ", ".join(train.class_names))
  return train, val


def index_source(config, task: str = "multiclass", seed: int = 0, text: bool = False
                 ) -> tuple[ImageFiles, ImageFiles]:
  """The training and validation images of a `DataConfig`'s source (--data_dir, --csv,
  --tfrecord or --tfds) for `task`. Validation comes from the source's validation part
  (--val_dir, --val_csv, --val_tfrecord, --val_split or a validation folder/split), else a
  stratified --validation_split. Unreadable images are skipped with a warning, or with
  --strict_data are a UsageError. With `text`, the examples are texts (in `paths`) from
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
  if not train.paths:
    raise UsageError(f"--{flags[0]}: {sources[0]} holds no readable images")
  if task != "regression" and len(train.class_names) < 2:
    raise UsageError(f"--{flags[0]}: {sources[0]} has a single class "
                     f"({', '.join(train.class_names)}); a classifier needs at least 2")
  if sources[1]:
    val = readable(read(sources[1], flags[1], train.class_names), flags[1], c.strict_data)
  else:
    train, val = stratified_split(train, c.validation_split, seed)
  logging.info("data: %d training and %d validation images, %d %s (%s)", len(train.paths),
               len(val.paths), len(train.class_names),
               "targets" if task == "regression" else "classes", ", ".join(train.class_names))
  return train, val


def _index_texts(c, task: str, seed: int) -> tuple[ImageFiles, ImageFiles]:
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
  if task != "regression" and len(train.class_names) < 2:
    raise UsageError(f"--{flag}: the training texts have a single class "
                     f"({', '.join(train.class_names)}); a classifier needs at least 2")
  if val is not None:
    val = readable_texts(val, "val_csv" if c.csv else flag, c.strict_data)
  else:
    train, val = stratified_split(train, c.validation_split, seed)
  logging.info("data: %d training and %d validation texts, %d %s (%s)", len(train.paths),
               len(val.paths), len(train.class_names),
               "targets" if task == "regression" else "classes", ", ".join(train.class_names))
  return train, val


def read_texts(path: str, flag: str, text_column: str = "text", label_column: str = "label",
               task: str = "multiclass", class_names: Optional[list[str]] = None
               ) -> ImageFiles:
  """Indexes a .csv/.tsv/.jsonl of texts (`text_column`) and labels; the texts are held
  in `paths`, undecodable bytes as they are (see `readable_texts`)."""
  rows = read_table(path, flag, [text_column] + label_column.split(","))
  labels, names = parse_labels(rows, label_column, task, flag, path, class_names)
  texts = ["" if row[text_column] is None else str(row[text_column]) for row in rows]
  return ImageFiles(texts, labels, names, task,
                    [f"{path} row {i + 1}" for i in range(len(rows))])


def read_text_dir(folder: str, flag: str, class_names: Optional[list[str]] = None
                  ) -> ImageFiles:
  """Indexes `folder`/<class>/**/*.txt (the layout of
  `keras.utils.text_dataset_from_directory`); texts are held in `paths`."""
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
  return ImageFiles(texts, [i[0] for i in ids], class_names, "multiclass", names)


def _text_problem(text: str) -> Optional[str]:
  if not text.strip():
    return "empty"
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return "not UTF-8"
  return None


def readable_texts(files: ImageFiles, flag: str, strict: bool = False) -> ImageFiles:
  """`files` without empty or undecodable texts: skipped with one warning that counts them
  and names the first ten, or with `strict` a UsageError naming the first. All of them
  bad is a UsageError either way."""
  problems = [_text_problem(t) for t in files.paths]
  bad = [(files.name(i), p) for i, p in enumerate(problems) if p]
  if len(bad) == len(files.paths):
    raise UsageError(f"--{flag}: every text is empty or undecodable ({len(bad)} rows, first: "
                     f"{bad[0][0]}); check --text_column")
  if not bad:
    return files
  if strict:
    raise UsageError(f"--strict_data: {len(bad)} text(s) from --{flag} are empty or not "
                     f"UTF-8, first: {bad[0][0]} ({bad[0][1]}); remove or fix them")
  logging.warning("skipping %d empty or undecodable text(s) from --%s: %s%s", len(bad), flag,
                  ", ".join(f"{n} ({p})" for n, p in bad[:10]), " ..." if len(bad) > 10 else "")
  return files.subset([i for i, p in enumerate(problems) if p is None])


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
             ) -> ImageFiles:
  """Indexes a CSV/TSV/JSONL of image paths (relative to its folder) and labels."""
  rows = read_table(path, flag, [path_column] + label_column.split(","))
  labels, names = parse_labels(rows, label_column, task, flag, path, class_names)
  folder = os.path.dirname(os.path.abspath(path))
  paths = [os.path.join(folder, str(row[path_column] or "")) for row in rows]
  return ImageFiles(paths, labels, names, task)


def read_tfrecords(pattern: str, flag: str, image_key: str = "", label_key: str = "",
                   task: str = "multiclass", label_names: str = "",
                   class_names: Optional[list[str]] = None) -> ImageFiles:
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
  images, ids, names = [], [], []
  for path in files:
    try:
      for i, record in enumerate(tf.data.TFRecordDataset(path)):
        example = tf.io.parse_single_example(record, spec)
        images.append(example[image_key].numpy())
        ids.append([int(v) for v in example[label_key].values.numpy()])
        names.append(f"{path}#{i}")
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      raise UsageError(f"--{flag}: {path} is not a TFRecord file of tf.train.Examples with "
                       f"a string {image_key!r} and int64 {label_key!r} (name them with "
                       f"--image_key/--label_key): {e.message.splitlines()[0]}") from None
  if not images:
    raise UsageError(f"--{flag}: {pattern} holds no records")
  missing = [n for image, n in zip(images, names) if not image]
  if missing:
    raise UsageError(f"--{flag}: {missing[0]} has no {image_key!r} feature; name the image "
                     "feature with --image_key")
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
  return _records(images, per_row, names, task, class_names, flag, pattern, label_key)


def _records(images, per_row, names, task, class_names, flag, where, label_key) -> ImageFiles:
  """Encoded images with class names per record -> ImageFiles (one label for multiclass)."""
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
  return ImageFiles(images, labels, class_names, task, names)


def _tfds_builder(name: str, data_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(name, data_dir=data_dir or None)
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
              text: bool = False) -> ImageFiles:
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
    root = data_dir or os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir)))
    raise UsageError(f"--tfds: {name} is not prepared in {builder.data_dir}; prepare it on a "
                     f"machine with internet (`tfds build {name} --data_dir={root}`) and pass "
                     f"--tfds_data_dir={root}") from None
  except ValueError as e:
    raise UsageError(f"--train_split/--val_split: {name} has no split {split!r} "
                     f"({str(e).splitlines()[0]}); its splits are "
                     f"{', '.join(builder.info.splits) or 'unknown'}") from None
  images, per_row, names = [], [], []
  for i, example in enumerate(ds.as_numpy_iterator()):
    images.append(example[image_key].decode("utf-8", errors="surrogateescape") if text
                  else example[image_key])
    ids = np.atleast_1d(example[label_key]).tolist()
    per_row.append([all_names[j] if all_names else str(j) for j in ids])
    names.append(f"{name}[{split}]#{i}")
  if not images:
    raise UsageError(f"--tfds: split {split!r} of {name} is empty")
  if class_names is None and all_names:
    class_names = list(all_names)
  return _records(images, per_row, names, task, class_names, "tfds", f"{name}[{split}]",
                  label_key)


def evaluation_files(data_dir: str, class_names: list[str]) -> ImageFiles:
  """The images to evaluate in `data_dir`: its test/ folder, else validation/ (val/), else
  the folder itself; classes must be among the model's `class_names`."""
  if not os.path.isdir(data_dir):
    raise UsageError(f"--data_dir: folder {data_dir} does not exist; pass a folder with one "
                     "sub-folder per class")
  folder = data_dir
  for name in ("test",) + VALIDATION_FOLDERS:
    if os.path.isdir(os.path.join(data_dir, name)):
      folder = os.path.join(data_dir, name)
      break
  files = scan_class_folder(folder, "data_dir", class_names)
  check_images(files.paths, "data_dir")
  logging.info("evaluating %d images in %s", len(files.paths), folder)
  return files


def evaluation_source(config, task: str, class_names: list[str], split: str = "test",
                      text: bool = False) -> ImageFiles:
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


def expand_inputs(patterns: list[str]) -> list[str]:
  """Files, folders (searched recursively for images) and globs -> a sorted list of paths.

  A named file is kept even when it is missing or not an image, so that the caller can
  report it; an empty result is a UsageError.
  """
  import glob  # pylint: disable=g-import-not-at-top

  paths = []
  for pattern in patterns:
    if os.path.isdir(pattern):
      for root, dirs, files in os.walk(pattern):
        dirs.sort()
        paths += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
    elif glob.has_magic(pattern):
      matches = sorted(glob.glob(pattern, recursive=True))
      paths += [m for m in matches if os.path.isfile(m) and _is_image(m)]
    else:
      paths.append(pattern)
  if not paths:
    raise UsageError(f"inputs: no images match {' '.join(patterns)}; pass image files, "
                     "folders or globs such as 'photos/*.jpg'")
  return list(dict.fromkeys(paths))


def make_pipeline(files: ImageFiles, image_size: int, batch_size: int, shuffle: bool = False,
                  seed: int = 0, cache: bool = True, resize: str = "squash",
                  cache_dir: str = ""):
  """A tf.data pipeline of (float32 pixels [B, S, S, 3], float32 targets [B, C]).

  Decodes in parallel; caches decoded images in files under `cache_dir` when given, else in
  memory when `cache` and they fit (`MEMORY_CACHE_BYTES`); reshuffles every epoch when
  `shuffle`; batches and prefetches. Targets are `files.targets()`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  encoded = bool(files.paths) and isinstance(files.paths[0], bytes)
  sources = tf.constant(files.paths, tf.string) if files.paths else tf.zeros([0], tf.string)
  ds = tf.data.Dataset.from_tensor_slices((sources, files.targets()))
  ds = ds.map(lambda source, target: (
      decode_and_resize(source if encoded else tf.io.read_file(source), image_size, resize),
      target), num_parallel_calls=tf.data.AUTOTUNE)
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
    ds = ds.cache(os.path.join(cache_dir, _cache_key(files, image_size, resize)))
  elif cache and len(files.paths) * image_size * image_size * 3 * 4 <= MEMORY_CACHE_BYTES:
    ds = ds.cache()
  if shuffle:
    ds = ds.shuffle(len(files.paths), seed=seed, reshuffle_each_iteration=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _cache_key(files: ImageFiles, image_size: int, resize: str) -> str:
  """A file name that changes whenever the cached images would: sources, size, resize."""
  digest = hashlib.sha256(f"{image_size}:{resize}:{len(files.paths)}".encode())
  for source in files.paths:
    digest.update(source if isinstance(source, bytes) else source.encode())
    digest.update(b"\0")
  digest.update(files.targets().tobytes())
  return f"images-{image_size}-{resize}-{digest.hexdigest()[:16]}"


def mix(ds, mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0):
  """Mixes each batch of (pixels, targets) with a shuffled copy of itself: MixUp (blend
  images by a Beta(mixup, mixup) weight) or CutMix (paste a box whose area is a
  Beta(cutmix, cutmix) share); with both, each batch uses one of them at random. Targets
  mix in proportion. Seeded, stateless random numbers."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def beta(alpha, rng_seed):
    a = tf.random.stateless_gamma([], rng_seed, alpha=alpha)
    b = tf.random.stateless_gamma([], rng_seed + [0, 1], alpha=alpha)
    return a / (a + b)

  def apply(seeds, images, targets):
    seeds = tf.reshape(seeds, [4, 2])
    n, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    perm = tf.argsort(tf.random.stateless_uniform([n], seeds[0]))
    other_images, other_targets = tf.gather(images, perm), tf.gather(targets, perm)
    use_cutmix = tf.constant(cutmix > 0)
    if mixup > 0 and cutmix > 0:
      use_cutmix = tf.random.stateless_uniform([], seeds[1]) < 0.5

    def mixup_batch():
      lam = beta(mixup, seeds[2]) if mixup > 0 else tf.constant(1.0)
      return lam * images + (1 - lam) * other_images, lam

    def cutmix_batch():
      lam = beta(cutmix, seeds[2]) if cutmix > 0 else tf.constant(1.0)
      cut = tf.sqrt(1.0 - lam)
      ch = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32)
      cw = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32)
      centre = tf.random.stateless_uniform([2], seeds[3])
      cy, cx = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32), tf.cast(
          centre[1] * tf.cast(w, tf.float32), tf.int32)
      y0, y1 = tf.maximum(cy - ch // 2, 0), tf.minimum(cy + ch // 2, h)
      x0, x1 = tf.maximum(cx - cw // 2, 0), tf.minimum(cx + cw // 2, w)
      rows = tf.logical_and(tf.range(h) >= y0, tf.range(h) < y1)
      cols = tf.logical_and(tf.range(w) >= x0, tf.range(w) < x1)
      box = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), images.dtype)[None, :, :,
                                                                                  None]
      area = tf.reduce_mean(box)  # the pasted share, after clipping at the borders
      return images * (1 - box) + other_images * box, 1.0 - area

    mixed, lam = tf.cond(use_cutmix, cutmix_batch, mixup_batch)
    return mixed, lam * targets + (1 - lam) * other_targets

  seeds = tf.data.Dataset.random(seed=seed).batch(8)
  return tf.data.Dataset.zip(seeds, ds).map(
      lambda s, batch: apply(s, *batch), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
          tf.data.AUTOTUNE)


def pipelines(train: ImageFiles, val: ImageFiles, image_size: int, batch_size: int,
              seed: int = 0, resize: str = "squash", cache_dir: str = "",
              mixup: float = 0.0, cutmix: float = 0.0) -> Dataset:
  """Wraps indexed training and validation images in their tf.data pipelines; MixUp and
  CutMix (`mix`) apply to the training pipeline only."""
  train_ds = make_pipeline(train, image_size, batch_size, shuffle=True, seed=seed,
                           resize=resize, cache_dir=cache_dir)
  if mixup or cutmix:
    train_ds = mix(train_ds, mixup, cutmix, seed)
  return Dataset(train=train_ds,
                 val=make_pipeline(val, image_size, batch_size, resize=resize,
                                   cache_dir=cache_dir),
                 class_names=train.class_names, train_files=train, val_files=val,
                 make_inputs=lambda files, batch: make_pipeline(files, image_size, batch,
                                                                cache=False, resize=resize))


def load(data_dir: str, val_dir: str, validation_split: float, image_size: int,
         batch_size: int, seed: int = 0) -> Dataset:
  """Indexes, checks and wraps the images in training and validation pipelines."""
  train, val = index(data_dir, val_dir, validation_split, seed)
  return pipelines(train, val, image_size, batch_size, seed)


def builtin_digits(root: str) -> str:
  """Writes scikit-learn's 8x8 handwritten digits (1,797 images) as PNG class folders.

  The data set ships inside scikit-learn, so the built-in recipe needs no download.
  Returns the folder; an existing complete copy is reused.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  folder = os.path.join(root, "sklearn_digits")
  done = os.path.join(folder, ".complete")
  if os.path.exists(done):
    return folder
  digits = load_digits()
  for i, (image, label) in enumerate(zip(digits.images, digits.target)):
    class_dir = os.path.join(folder, str(label))
    os.makedirs(class_dir, exist_ok=True)
    pixels = (image * (255.0 / 16.0)).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(os.path.join(class_dir, f"{i:04d}.png"))
  open(done, "w").close()
  return folder
