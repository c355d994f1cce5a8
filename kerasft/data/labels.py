"""Kinds of labels: how labels are read from a source's cells or records, turned into
training targets, counted and stratified. No TensorFlow.

A label kind is what the data layer knows of a task's output (`Output.labels`): one class
per example (`Classes`), any number of labels (`Labels`), numeric targets (`Targets`); a
task folder adds its own (entity spans, masks, several heads' labels).
"""

from __future__ import annotations

import numpy as np

from kerasft.core.errors import UsageError
from kerasft.data.source import Source


def class_ids(names_per_row: list[list[str]], class_names: list[str] | None,
              source: Source) -> tuple[list[list[int]], list[str]]:
  """Class names per row -> class ids per row, and the classes (sorted, unless given)."""
  found = sorted({n for row in names_per_row for n in row})
  if class_names is None:
    class_names = found
  elif set(found) - set(class_names):
    raise source.error(f"{source.path} has classes {sorted(set(found) - set(class_names))[:10]}"
                       f" that the training data does not have "
                       f"({', '.join(class_names[:20])})")
  position = {n: i for i, n in enumerate(class_names)}
  return [[position[n] for n in row] for row in names_per_row], list(class_names)


def distilled(kind, hard: np.ndarray, teacher: np.ndarray, temperature: float,
              weight: float) -> np.ndarray:
  """Training targets [N, C] of distillation: `weight` x the teacher's outputs softened at
  `temperature` (`kind.soften`) + (1 - weight) x the `hard` targets (one- or multi-hot)."""
  soft = kind.soften(teacher, temperature)
  return (weight * soft + (1.0 - weight) * np.asarray(hard, np.float32)).astype(np.float32)


class Classes:
  """One class per example: labels are class ids, targets one-hot rows."""
  task = "multiclass"  # what messages call the kind of labels
  noun = "classes"  # what the class names are called
  min_classes = 2
  classifies = True  # the names are classes found in the data (not targets' names)

  def targets(self, labels: list, k: int) -> np.ndarray:
    """float32 [N, k] training targets of per-example labels."""
    out = np.zeros((len(labels), k), np.float32)
    for i, label in enumerate(labels):
      out[i, label] = 1.0
    return out

  def class_counts(self, labels: list, k: int) -> list[int] | None:
    """Examples per class (per label, multilabel) among per-example `labels`; None where
    labels are not classes."""
    ids = np.concatenate([np.ravel(np.asarray(l, int)) for l in labels] or [[]])
    return np.bincount(ids.astype(int), minlength=k).tolist()

  def strata(self, labels: list, class_names=None):
    """The labels a validation split is stratified by, or None for a random split."""
    return np.asarray(labels)

  def check_folder_source(self, source: Source) -> None:
    """Raises a UsageError unless class folders can hold these labels (one per image)."""

  def from_names(self, per_row: list[list[str]], names: list[str], label_key: str,
                 source: Source) -> None:
    """Checks class names read per record (TFRecord, TFDS); raises a UsageError."""
    wrong = [i for i, row in enumerate(per_row) if len(row) != 1]
    if wrong:
      raise source.error(f"{names[wrong[0]]} has {len(per_row[wrong[0]])} {label_key!r} "
                         "values; a multiclass example has exactly one (pass "
                         "--task=multilabel for several)")

  def labels_of(self, ids: list[list[int]]) -> list:
    """Per-example labels from class ids per example."""
    return [row[0] for row in ids]

  def cell_names(self, cells: list[str], column: str, source: Source) -> list[list[str]]:
    """Class names per row of a table's label cells."""
    empty = [i for i, cell in enumerate(cells) if not cell]
    if empty:
      raise source.error(f"{source.path} row {empty[0] + 1} has an empty {column!r}; give "
                         "every row a label")
    return [[cell] for cell in cells]

  def parse_cells(self, rows: list[dict], label_column: str, source: Source,
                  class_names=None) -> tuple[list, list[str]]:
    """A table's label cells -> (labels, class names): one class name per cell (multilabel:
    names separated by "|", an empty cell is an example with no label)."""
    if "," in label_column:
      raise UsageError(f"--label_column: one column for --task={self.task}, got "
                       f"{label_column!r}")
    cells = [str(row[label_column] if row[label_column] is not None else "").strip()
             for row in rows]
    ids, class_names = class_ids(self.cell_names(cells, label_column, source), class_names,
                                 source)
    return self.labels_of(ids), class_names

  def known_names(self, class_names: list[str]):
    """The names evaluation labels must be among (None: read from the data)."""
    return class_names

  def check_names(self, found: list[str], model: list[str]) -> None:
    """Raises a UsageError when evaluation data names other targets than the model's."""

  def evaluation_labels(self, files) -> np.ndarray:
    """What a report compares a model's outputs with: class ids [N]."""
    return np.asarray(files.labels)

  def labels_from_targets(self, targets: np.ndarray):
    """Labels as `evaluation_labels` gives them, from training targets."""
    return np.asarray(targets).argmax(axis=1)

  def decided(self, outputs: np.ndarray, threshold: float = 0.5) -> list:
    """Per-example labels a model's outputs [N, C] decide (the top class)."""
    return [int(row.argmax()) for row in np.asarray(outputs)]

  def soften(self, outputs: np.ndarray, temperature: float) -> np.ndarray:
    """A teacher's probabilities [N, C] at `temperature`: softmax(log(p) / T) (T > 1
    flattens them, T = 1 leaves them)."""
    with np.errstate(divide="ignore"):  # a probability of 0 stays 0
      logits = np.log(np.clip(np.asarray(outputs, np.float64), 0.0, 1.0)) / temperature
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


class Labels(Classes):
  """Any number of labels per example: labels are lists of class ids, targets multi-hot."""
  task = "multilabel"

  def strata(self, labels, class_names=None):
    return None

  def check_folder_source(self, source):
    raise UsageError(f"--task={self.task}: an image folder gives each image one class; pass "
                     "the labels in a --csv, --tfrecord or --tfds source")

  def from_names(self, per_row, names, label_key, source):
    return None

  def labels_of(self, ids):
    return ids

  def cell_names(self, cells, column, source):
    return [[n.strip() for n in cell.split("|") if n.strip()] for cell in cells]

  def evaluation_labels(self, files):
    return self.targets(files.labels, len(files.class_names))

  def labels_from_targets(self, targets):
    return np.asarray(targets)

  def decided(self, outputs, threshold=0.5):
    """Per-example labels: those scored at least `threshold`."""
    return [np.flatnonzero(row >= threshold).tolist() for row in np.asarray(outputs)]

  def soften(self, outputs, temperature):
    """A teacher's scores [N, C] at `temperature`: sigmoid(logit(p) / T) per label."""
    p = np.clip(np.asarray(outputs, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", over="ignore"):  # 0 and 1 stay 0 and 1
      return (1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p)) / temperature))).astype(np.float32)


class Targets(Labels):
  """Numeric targets, one or several per example (their names are the "class names")."""
  task, noun, min_classes, classifies = "regression", "targets", 1, False

  def targets(self, labels, k):
    return np.asarray(labels, np.float32).reshape(len(labels), k)

  def class_counts(self, labels, k):
    return None

  def from_names(self, per_row, names, label_key, source):
    raise UsageError(f"--task=regression: --{source.flag} holds class labels; pass numeric "
                     "targets in a --csv")

  def parse_cells(self, rows, label_column, source, class_names=None):
    """Numbers in one or several (comma-separated) target columns."""
    columns, labels = label_column.split(","), []
    for i, row in enumerate(rows):
      try:
        labels.append([float(row[c]) for c in columns])
      except (TypeError, ValueError):
        raise source.error(f"{source.path} row {i + 1}: --label_column {label_column!r} "
                           "must hold numbers for --task=regression, got "
                           f"{[row[c] for c in columns]}") from None
    return labels, columns

  def known_names(self, class_names):
    return None

  def soften(self, outputs, temperature):
    raise UsageError("--teacher: distils classes or labels, not numeric targets")

  def check_names(self, found, model):
    if found != model:
      raise UsageError(f"--label_column: the model predicts {', '.join(model)}, got "
                       f"{', '.join(found)}")
