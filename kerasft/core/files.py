"""Small files written atomically (a temporary file renamed into place) and read back."""

from __future__ import annotations

import contextlib
import json
import os

from kerasft.core.errors import UsageError

LABELS = "labels.txt"  # class names, one per line: in a run folder and an export's assets/


def write_json(obj, path: str, sort_keys: bool = False) -> None:
  """Writes `obj` as JSON to `path` atomically (a temporary file renamed into place)."""
  staging = f"{path}.tmp"
  with open(staging, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=sort_keys)
    f.write("\n")
  os.replace(staging, path)


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a staging path beside `path` with the same extensions (`best.keras` ->
  `best.tmp.keras`: Keras and matplotlib pick the format from them); what was written
  there replaces `path` in one rename when the block ends, and is removed if it fails."""
  folder, name = os.path.split(path)
  stem, dot, rest = name.partition(".")
  staging = os.path.join(folder, f"{stem}.tmp{dot}{rest}")
  try:
    yield staging
    os.replace(staging, path)
  except BaseException:
    if os.path.exists(staging):
      os.remove(staging)
    raise


def read_json(path: str, default=None):
  """The JSON in `path`, or `default` when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def write_labels(path: str, class_names: list[str]) -> None:
  """Writes class names one per line, in class-id order (TF Serving's labels convention)."""
  staging = f"{path}.tmp"
  with open(staging, "w") as f:
    f.write("".join(f"{name}\n" for name in class_names))
  os.replace(staging, path)


def read_labels(path: str) -> list[str]:
  """Reads a labels file; a SavedModel version folder means its `assets/labels.txt`."""
  if os.path.isdir(path):
    path = os.path.join(path, "assets", LABELS)
  with open(path) as f:
    return f.read().splitlines()


def check_writable(path: str, flag: str) -> None:
  """Raises a UsageError naming `flag` unless folder `path` exists and is writable or can
  be made (its nearest existing ancestor is a writable folder)."""
  if not path:
    return
  probe = os.path.abspath(path)
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise UsageError(f"--{flag}: {path} cannot be a folder: {probe} is a file; choose "
                     "another path")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise UsageError(f"--{flag}: {path} is not writable ({probe} is read-only for this "
                     "user); choose another path")
