"""Several heads on one backbone: a label column per head (`--label_column=category,price`;
TFRecord and TFDS: a label feature per head, `--label_key=category,colour`),
each head a multiclass, multilabel or regression `Output` (`--task=multiclass,regression`).

An example's labels are one float32 row: each head's targets side by side (one-hot,
multi-hot or the number), NaN where the example has no label for that head, so a missing
label leaves that head's loss and metrics and trains the others. Class names are flat,
in column order: "HEAD/CLASS" for a classifier head, "HEAD" for a regression head (its one
target). The model's output is the heads' outputs concatenated (`kerasft.multitask_graph`);
the export's outputs are each head's, prefixed: `category/probabilities`,
`category/classes`, `price/predictions`. The monitored metric is `score`: the mean of the
heads' scores (accuracy for multiclass, macro ROC AUC for multilabel, R² for regression).
"""

from __future__ import annotations

import os
import re

import numpy as np

from kerasft.core.errors import UsageError, refuse
from kerasft.tasks.classify.outputs import KINDS, MAIN_OUTPUTS, Output

HEAD_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
SEPARATOR = "/"


def declared(tasks: str, columns: str, flag: str = "label_column"
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
  unknown = [k for k in kinds if k not in KINDS]
  if unknown:
    raise UsageError(f"--task: a head of several is {', '.join(KINDS)}, got {unknown[0]!r}")
  bad = [n for n in names if not HEAD_NAME.fullmatch(n)]
  if bad:
    raise UsageError(f"--{flag}: {bad[0]!r} names a head and its export outputs: use "
                     "letters, digits, '_', '.', '-' (rename the column or feature)")
  if len(set(names)) != len(names):
    raise UsageError(f"--{flag}: a column is named twice in {columns!r}")
  return list(zip(names, kinds))


class MultiTask(Output):
  """Several heads on one backbone. heads: [(name, Output)] in column order; weights: each
  head's loss weight [1 each]; spec: the `MultiHead` layer's head dicts once the model is
  built (`for_model`), which the loss and metrics need."""
  name, layer, noun = "multitask", "multitask", "classes"
  monitor, objective = ("val_score", "max"), ("score", "max")
  min_classes, one_label, sliceable = 1, False, False
  unsearched = ("few_shot",)

  def __init__(self, heads, weights=(), threshold: float = 0.5, spec=None):
    super().__init__(threshold)
    self.heads = list(heads)
    self.weights = [float(w) for w in weights] or [1.0] * len(self.heads)
    self.spec = spec

  @classmethod
  def from_card(cls, card: dict) -> "MultiTask":
    """The output an export's model card describes."""
    return cls([(h["name"], KINDS[h["task"]](h.get("threshold", 0.5)))
                for h in card["heads"]], card.get("task_weights", ()))

  def parts(self, class_names: list[str]) -> list[tuple]:
    """[(head name, Output, (start, stop) columns, its class names)] of flat names."""
    out, start = [], 0
    for name, head in self.heads:
      stop = start
      while stop < len(class_names) and (
          class_names[stop].startswith(name + SEPARATOR) if head.classifies
          else class_names[stop] == name and stop == start):
        stop += 1
      own = [n[len(name) + 1:] if head.classifies else n for n in class_names[start:stop]]
      out.append((name, head, (start, stop), own))
      start = stop
    return out

  # --- labels and targets
  def targets(self, labels, k):
    return np.asarray(labels, np.float32).reshape(len(labels), k)

  def class_counts(self, labels, k):
    t = self.targets(labels, k)
    return np.sum(np.isfinite(t) & (np.nan_to_num(t) != 0), axis=0).astype(int).tolist()

  def strata(self, labels, class_names=None):
    """The first multiclass head's class (its flat column), -1 where it is missing; None
    without such a head."""
    first = next((p for p in self.parts(class_names or []) if p[1].one_label), None)
    if first is None or not labels:
      return None
    block = np.asarray(labels, np.float32)[:, first[2][0]:first[2][1]]
    return np.where(np.isfinite(block).all(axis=1), np.nan_to_num(block).argmax(axis=1)
                    + first[2][0], -1)

  def parse_cells(self, rows, label_column, flag, path, class_names=None):
    """Each head's column parsed by its own output; an empty cell is a missing label."""
    columns = [c.strip() for c in label_column.split(",")]
    if len(columns) != len(self.heads):
      raise UsageError(f"--label_column: the model has {len(self.heads)} heads "
                       f"({', '.join(n for n, _ in self.heads)}), got {label_column!r}")
    known = [p[3] for p in self.parts(class_names)] if class_names else [None] * len(columns)
    blocks, names = [], []
    for (name, head), column, own in zip(self.heads, columns, known):
      present = [i for i, r in enumerate(rows)
                 if r[column] is not None and str(r[column]).strip()]
      if not present:
        raise UsageError(f"--{flag}: {path} has no {column!r} labels; every head needs some")
      labels, found = head.parse_cells([rows[i] for i in present], column, flag, path,
                                       None if own is None or not head.classifies else own)
      block = np.full((len(rows), len(found)), np.nan, np.float32)
      block[present] = head.targets(labels, len(found))
      blocks.append(block)
      names += [f"{name}{SEPARATOR}{n}" if head.classifies else name for n in found]
    return list(np.concatenate(blocks, axis=1)), names

  def default_label_column(self, class_names):
    return ",".join(name for name, _ in self.heads)

  def check(self, config):
    d = config.data
    if not (d.csv or d.tfrecord or d.tfds):
      raise UsageError("--task/--label_column: several heads read their labels from --csv "
                       "columns (--label_column=a,b), or --tfrecord/--tfds features "
                       "(--label_key=a,b)")
    if not d.csv and any(not head.classifies for _, head in self.heads):
      raise UsageError("--task=regression: a regression head reads numbers from --csv; "
                       "TFRecord and TFDS labels are class ids")
    if config.model.task_weights and len(config.model.task_weights) != len(self.heads):
      raise UsageError(f"--task_weights: one per head ({len(self.heads)}), got "
                       f"{len(config.model.task_weights)}")
    refuse(self.name, class_weight=d.class_weight != "none", oversample=d.oversample,
            recipe=config.methods.recipe == "few_shot",
            calibrate=config.training.calibrate != "none", slice_column=bool(d.slice_column))

  def evaluation_labels(self, files):
    return files.targets()

  # --- the model
  def head_stats(self, train_files):
    """The `MultiHead` layer's head dicts: sizes, activations, a regression head's
    target mean and std (over the examples that have it)."""
    targets, spec = train_files.targets(), []
    for name, head, (start, stop), _ in self.parts(train_files.class_names):
      entry = {"name": name, "size": stop - start, "activation": head.activation}
      if head.activation == "linear":
        block = targets[:, start:stop]
        entry["offset"] = np.nanmean(block, axis=0).tolist()
        entry["scale"] = np.maximum(np.nanstd(block, axis=0), 1e-6).tolist()
      spec.append(entry)
    return spec

  def last_layer(self, x, n, stats=None):
    import keras  # pylint: disable=g-import-not-at-top
    from kerasft.tasks.multitask import graph
    if not stats:
      raise ValueError("several heads are built from their sizes: pass head_stats(train)")
    x = keras.layers.Dense(n, dtype="float32", name=graph.DENSE)(x)
    return graph.MultiHead(stats, dtype="float32", name=graph.LAYER)(x)

  def head_layer_names(self):
    from kerasft.tasks.multitask.graph import DENSE, LAYER
    return (DENSE, LAYER)

  def for_model(self, model):
    from kerasft.tasks.multitask import graph
    return MultiTask(self.heads, self.weights, self.threshold, graph.find_heads(model))

  def solver_parts(self, model, class_names, standardize=True, floor=0.0):
    """[(name, (start, stop), labels of a block of targets, solver)] per head: each head
    is solved on its own, with its own L2 strength, on the examples that have its label."""
    from kerasft.tasks.multitask.graph import find_heads
    from kerasft.tasks.classify import solvers
    spec = {h["name"]: h for h in find_heads(model)}
    out = []
    for name, head, span, _ in self.parts(class_names):
      solver = (solvers.Ridge(spec[name]["offset"], spec[name]["scale"])
                if head.activation == "linear" else head.solver(model, standardize, floor))
      out.append((name, span, head.labels_from_targets, solver))
    return out

  def loss(self, label_smoothing=0.0):
    from kerasft.tasks.multitask import graph
    return graph.MultiTaskLoss(self.spec, [h.loss(label_smoothing) for _, h in self.heads],
                               self.weights)

  def metrics(self):
    from kerasft.tasks.multitask import graph
    spans = graph.spans(self.spec)
    own = [graph.HeadMetric(m, a, b, f"{name}_{m.name}")
           for (name, head), (a, b) in zip(self.heads, spans) for m in head.metrics()]
    return own + [graph.MeanScore([graph.HeadMetric(
        next(m for m in head.metrics() if m.name == head.score[0]), a, b, f"{name}_score")
                                   for (name, head), (a, b) in zip(self.heads, spans)])]

  # --- serving
  def serving_outputs(self, result, class_names):
    out = {}
    for name, head, (start, stop), own in self.parts(class_names):
      for key, value in head.serving_outputs(result[:, start:stop], own).items():
        out[f"{name}{SEPARATOR}{key}"] = value
    return out

  def label_files(self, class_names):
    files = super().label_files(class_names)
    for name, _, _, own in self.parts(class_names):
      files[f"labels_{name}.txt"] = own
    return files

  def card(self):
    return {"task": self.name, "heads": [{"name": n, **h.card()} for n, h in self.heads],
            "task_weights": self.weights}

  def predict_row(self, key, name, values, class_names, top_k, error):
    heads = {}
    for head_name, head, (start, stop), own in self.parts(class_names):
      row = head.predict_row(key, name, None if error else values[start:stop], own, top_k,
                             error)
      heads[head_name] = {k: v for k, v in row.items() if k not in (key, "error")}
    return {key: name, "heads": heads, "error": error}

  def calibrate(self, labels, outputs, fit):  # --calibrate is refused for this output
    return outputs, None, None

  def main_output(self, result):
    """The heads' main outputs side by side, as the model outputs them."""
    blocks = []
    for name, _ in self.heads:
      key = next(f"{name}{SEPARATOR}{k}" for k in MAIN_OUTPUTS
                 if f"{name}{SEPARATOR}{k}" in result)
      value = np.asarray(result[key])
      blocks.append(value.reshape(len(value), -1))
    return np.concatenate(blocks, axis=1)

  def agreement(self, got, expected):
    return {"max_difference": float(np.max(np.abs(got - expected)))}

  # --- reports
  def report(self, labels, outputs, class_names, out_dir):
    """Each head's report (its metrics, its PNG in out_dir/heads/NAME/) on the examples
    that have its label, and `score`, the mean of the heads' `score` figures."""
    labels, outputs = np.asarray(labels, np.float32), np.asarray(outputs)
    heads = {}
    for name, head, (start, stop), own in self.parts(class_names):
      block = labels[:, start:stop]
      present = np.all(np.isfinite(block), axis=1)
      folder = os.path.join(out_dir, "heads", name)
      os.makedirs(folder, exist_ok=True)
      heads[name] = {**head.report(head.labels_from_targets(block[present]),
                                   outputs[present, start:stop], own, folder),
                     "num_labelled": int(present.sum())}
    scores = [heads[name][head.score[1]] for name, head in self.heads]
    return {"task": self.name, "score": float(np.mean([s or 0.0 for s in scores])),
            "heads": heads, "num_examples": len(labels)}

  def headline(self, metrics):
    return f"score {metrics['score']:.4f} (" + "; ".join(
        f"{name}: {head.headline(metrics['heads'][name])}" for name, head in self.heads) + ")"

  def table(self, metrics):
    return "\n\n".join(f"head {name} ({head.name})\n{head.table(metrics['heads'][name])}"
                       for name, head in self.heads) + f"\n\nscore {metrics['score']:.4f}"
