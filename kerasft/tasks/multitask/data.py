"""Several heads' labels: one float32 row per example, each head's targets side by side
(one-hot, multi-hot or the number), NaN where the example has no label for that head. Class
names are flat, in column order: "HEAD/CLASS" for a classifying head, "HEAD" for a
regression head (its one target). No TensorFlow.
"""

from __future__ import annotations

import re

import numpy as np

from kerasft.core.errors import UsageError
from kerasft.data.labels import Classes, Labels, Targets
from kerasft.data.source import Source

HEAD_KINDS = {k.task: k for k in (Classes, Labels, Targets)}  # a head's --task -> its labels
HEAD_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
SEPARATOR = "/"


def declared(tasks: str, columns: str, option: str = "label_column"
             ) -> list[tuple[str, str]] | None:
  """[(head name, task)] when --task and the label columns ask for several heads, else None.
  Several columns with one --task (except regression, whose several columns are one head's
  targets) or several --task values mean several heads; raises a UsageError when their
  counts differ or a head cannot be named after its column."""
  kinds, names = tasks.split(","), [c.strip() for c in columns.split(",")]
  if len(kinds) == 1 and (len(names) == 1 or kinds[0] == "regression"):
    return None
  if len(kinds) == 1:
    kinds = kinds * len(names)
  if len(kinds) != len(names):
    raise UsageError(f"--task: one per label column ({len(names)}: {columns}) or one for all, "
                     f"got {len(kinds)} ({tasks})")
  unknown = [k for k in kinds if k not in HEAD_KINDS]
  if unknown:
    raise UsageError(f"--task: a head of several is {', '.join(HEAD_KINDS)}, got "
                     f"{unknown[0]!r}")
  bad = [n for n in names if not HEAD_NAME.fullmatch(n)]
  if bad:
    raise UsageError(f"--{option}: {bad[0]!r} names a head and its export outputs: use "
                     "letters, digits, '_', '.', '-' (rename the column or feature)")
  if len(set(names)) != len(names):
    raise UsageError(f"--{option}: a column is named twice in {columns!r}")
  return list(zip(names, kinds))




def parts(heads: list[tuple[str, object]], class_names: list[str]) -> list[tuple]:
  """[(head name, head, (start, stop) columns, its class names)] of flat names; heads:
  [(name, an object whose `labels` is its label kind)]."""
  out, start = [], 0
  for name, head in heads:
    stop = start
    while stop < len(class_names) and (
        class_names[stop].startswith(name + SEPARATOR) if head.labels.classifies
        else class_names[stop] == name and stop == start):
      stop += 1
    own = [n[len(name) + 1:] if head.labels.classifies else n
           for n in class_names[start:stop]]
    out.append((name, head, (start, stop), own))
    start = stop
  return out


class HeadsLabels(Classes):
  """The labels of several heads: `heads` [(name, object with `labels`)] in column order."""
  task, noun, min_classes = "multitask", "classes", 1

  def __init__(self, heads=()):
    self.heads = list(heads)

  def targets(self, labels, k):
    return np.asarray(labels, np.float32).reshape(len(labels), k)

  def class_counts(self, labels, k):
    t = self.targets(labels, k)
    return np.sum(np.isfinite(t) & (np.nan_to_num(t) != 0), axis=0).astype(int).tolist()

  def check_folder_source(self, source):
    raise UsageError("--task/--label_column: several heads read their labels from --csv "
                     "columns (--label_column=a,b), or --tfrecord/--tfds features "
                     "(--label_key=a,b)")

  def strata(self, labels, class_names=None):
    """The first multiclass head's class (its flat column), -1 where it is missing; None
    without such a head."""
    first = next((p for p in parts(self.heads, class_names or [])
                  if isinstance(p[1].labels, Classes) and p[1].labels.task == "multiclass"),
                 None)
    if first is None or not labels:
      return None
    block = np.asarray(labels, np.float32)[:, first[2][0]:first[2][1]]
    return np.where(np.isfinite(block).all(axis=1), np.nan_to_num(block).argmax(axis=1)
                    + first[2][0], -1)

  def parse_cells(self, rows, label_column, source: Source, class_names=None):
    """Each head's column parsed by its own label kind; an empty cell is a missing label."""
    columns = [c.strip() for c in label_column.split(",")]
    if len(columns) != len(self.heads):
      raise UsageError(f"--label_column: the model has {len(self.heads)} heads "
                       f"({', '.join(n for n, _ in self.heads)}), got {label_column!r}")
    known = ([p[3] for p in parts(self.heads, class_names)] if class_names
             else [None] * len(columns))
    blocks, names = [], []
    for (name, head), column, own in zip(self.heads, columns, known):
      kind = head.labels
      present = [i for i, r in enumerate(rows)
                 if r[column] is not None and str(r[column]).strip()]
      if not present:
        raise source.error(f"{source.path} has no {column!r} labels; every head needs some")
      labels, found = kind.parse_cells([rows[i] for i in present], column, source,
                                       None if own is None or not kind.classifies else own)
      block = np.full((len(rows), len(found)), np.nan, np.float32)
      block[present] = kind.targets(labels, len(found))
      blocks.append(block)
      names += [f"{name}{SEPARATOR}{n}" if kind.classifies else name for n in found]
    return list(np.concatenate(blocks, axis=1)), names

  def evaluation_labels(self, files):
    return files.targets()

  def labels_from_targets(self, targets):
    return np.asarray(targets)
