"""Small files written atomically (a temporary file renamed into place) and read back."""

from __future__ import annotations

import json
import os

LABELS = "labels.txt"  # class names, one per line: in a run folder and an export's assets/


def write_json(obj, path: str, sort_keys: bool = False) -> None:
  """Writes `obj` as JSON to `path` atomically (a temporary file renamed into place)."""
  staging = f"{path}.tmp"
  with open(staging, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=sort_keys)
    f.write("\n")
  os.replace(staging, path)


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
