"""Image folders: one sub-folder per class (`cats/`, `dogs/`, ...), or split folders
`train/` and `validation/` (or `val/`) that each hold class sub-folders; a `test/` folder
is never trained on. Also: files, folders and globs named on predict's command line, and
the built-in recipe's images (scikit-learn's digits)."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.data.examples import (VALIDATION_FOLDERS, Examples, readable, stratified_split,
                                   unreadable_reasons)
from kerasft.data.source import Source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_class_folder(source: Source, class_names: Optional[list[str]] = None) -> Examples:
  """Indexes `source.path`/<class>/**/<image>; class names are the sorted sub-folder names.

  class_names: when given (a validation folder), the folder's classes must be among them
  and labels index into them.
  """
  folder = source.path
  if not os.path.isdir(folder):
    raise source.error(f"folder {folder} does not exist; pass a folder with one sub-folder "
                       "per class")
  found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
  if not found:
    raise source.error(f"{folder} has no class sub-folders; put each class's images in a "
                       "sub-folder named after the class")
  if class_names is None:
    class_names = found
  elif set(found) - set(class_names):
    raise source.error(f"{folder} has classes {sorted(set(found) - set(class_names))} that "
                       f"the training data does not have ({', '.join(class_names)})")
  paths, labels = [], []
  for name in found:
    label = class_names.index(name)
    for root, dirs, files in os.walk(os.path.join(folder, name)):
      dirs.sort()
      for f in sorted(files):
        if is_image(f) and not f.startswith("."):
          paths.append(os.path.join(root, f))
          labels.append(label)
  if not paths:
    raise source.error(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its "
                       "class sub-folders")
  return Examples(paths, labels, list(class_names))


def check_images(paths: list[str], source: Source) -> None:
  """Raises a UsageError naming the first unreadable file among `paths`, if any."""
  failures = [f"{p} ({r})" for p, r in zip(paths, unreadable_reasons(paths)) if r]
  if failures:
    raise source.error(f"{len(failures)} file(s) are not readable images, first: "
                       f"{failures[0]}; remove or fix them, or leave out --strict_data to "
                       "skip them")


def index(data_dir: str, val_dir: str = "", validation_split: float = 0.2, seed: int = 0,
          strict: bool = False) -> tuple[Examples, Examples]:
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
  source = Source("data_dir", train_dir)
  train = readable(scan_class_folder(source), source, strict)
  if not train.inputs:
    raise UsageError(f"--data_dir: {train_dir} holds no readable images")
  if len(train.class_names) < 2:
    raise UsageError(f"--data_dir: {train_dir} has a single class ({train.class_names[0]}); "
                     "a classifier needs at least 2 class sub-folders")
  if val_dir or split_val_dir:
    source = Source("val_dir" if val_dir else "data_dir", val_dir or split_val_dir)
    val = readable(scan_class_folder(source, train.class_names), source, strict)
  else:
    train, val = stratified_split(train, validation_split, seed)
  logging.info("data: %d training and %d validation images in %d classes (%s)",
               len(train.inputs), len(val.inputs), len(train.class_names),
               ", ".join(train.class_names))
  return train, val


def evaluation_files(data_dir: str, class_names: list[str]) -> Examples:
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
  source = Source("data_dir", folder)
  files = scan_class_folder(source, class_names)
  check_images(files.inputs, source)
  logging.info("evaluating %d images in %s", len(files.inputs), folder)
  return files


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
        paths += [os.path.join(root, f) for f in sorted(files) if is_image(f)]
    elif glob.has_magic(pattern):
      matches = sorted(glob.glob(pattern, recursive=True))
      paths += [m for m in matches if os.path.isfile(m) and is_image(m)]
    else:
      paths.append(pattern)
  if not paths:
    raise UsageError(f"inputs: no images match {' '.join(patterns)}; pass image files, "
                     "folders or globs such as 'photos/*.jpg'")
  return list(dict.fromkeys(paths))


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
