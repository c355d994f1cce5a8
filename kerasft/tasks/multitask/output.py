"""Several heads on one backbone: a label column per head (`--label_column=category,price`;
TFRecord and TFDS: a label feature per head, `--label_key=category,colour`),
each head a multiclass, multilabel or regression `Output` (`--task=multiclass,regression`).

An example's labels are one float32 row: each head's targets side by side (one-hot,
multi-hot or the number), NaN where the example has no label for that head, so a missing
label leaves that head's loss and metrics and trains the others. Class names are flat,
in column order: "HEAD/CLASS" for a classifier head, "HEAD" for a regression head (its one
target). The model's output is the heads' outputs concatenated (`graph`);
the export's outputs are each head's, prefixed: `category/probabilities`,
`category/classes`, `price/predictions`. The monitored metric is `score`: the mean of the
heads' scores (accuracy for multiclass, macro ROC AUC for multilabel, R² for regression).
"""

from __future__ import annotations

import os

import numpy as np

from kerasft.core.errors import UsageError, refuse
from kerasft.tasks.base import Output
from kerasft.tasks.classify import solver as solvers
from kerasft.tasks.classify.output import KINDS
from kerasft.tasks.multitask import data, graph, report
from kerasft.tasks.multitask.data import SEPARATOR


class MultiTask(Output):
  """Several heads on one backbone. heads: [(name, Output)] in column order; weights: each
  head's loss weight [1 each]; spec: the `MultiHead` layer's head dicts once the model is
  built (`for_model`), which the loss and metrics need."""
  name, layer = "multitask", "multitask"
  monitor, objective = ("val_score", "max"), ("score", "max")

  def __init__(self, heads, weights=(), threshold: float = 0.5, spec=None):
    super().__init__(threshold)
    self.heads = list(heads)
    self.weights = [float(w) for w in weights] or [1.0] * len(self.heads)
    self.spec = spec
    self.labels = data.HeadsLabels(self.heads)

  def refused_search_entries(self):
    return ("few_shot",)

  def has_convex_head(self):
    """Each head is solved on its own (`solver_parts`)."""
    return True

  @classmethod
  def from_card(cls, card: dict) -> "MultiTask":
    """The output an export's model card describes."""
    return cls([(h["name"], KINDS[h["task"]](h.get("threshold", 0.5)))
                for h in card["heads"]], card.get("task_weights", ()))

  def parts(self, class_names: list[str]) -> list[tuple]:
    """[(head name, Output, (start, stop) columns, its class names)] of flat names."""
    return data.parts(self.heads, class_names)

  def default_label_column(self, class_names):
    return ",".join(name for name, _ in self.heads)

  def check(self, config):
    d = config.data
    if not (d.csv or d.tfrecord or d.tfds):
      raise UsageError("--task/--label_column: several heads read their labels from --csv "
                       "columns (--label_column=a,b), or --tfrecord/--tfds features "
                       "(--label_key=a,b)")
    if not d.csv and any(not head.labels.classifies for _, head in self.heads):
      raise UsageError("--task=regression: a regression head reads numbers from --csv; "
                       "TFRecord and TFDS labels are class ids")
    weights = config.tasks.multitask.task_weights
    if weights and len(weights) != len(self.heads):
      raise UsageError(f"--task_weights: one per head ({len(self.heads)}), got {len(weights)}")
    refuse(self.name, class_weight=d.class_weight != "none", oversample=d.oversample,
            recipe=config.methods.recipe == "few_shot",
            calibrate=config.training.calibrate != "none", slice_column=bool(d.slice_column))


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
    if not stats:
      raise ValueError("several heads are built from their sizes: pass head_stats(train)")
    x = keras.layers.Dense(n, dtype="float32", name=graph.DENSE)(x)
    return graph.MultiHead(stats, dtype="float32", name=graph.LAYER)(x)

  def head_layer_names(self):
    return (graph.DENSE, graph.LAYER)

  def for_model(self, model):
    return MultiTask(self.heads, self.weights, self.threshold, graph.find_heads(model))

  def solver_parts(self, model, class_names, standardize=True, floor=0.0):
    """[(name, (start, stop), labels of a block of targets, solver)] per head: each head
    is solved on its own, with its own L2 strength, on the examples that have its label."""
    spec = {h["name"]: h for h in graph.find_heads(model)}
    out = []
    for name, head, span, _ in self.parts(class_names):
      solver = (solvers.Ridge(spec[name]["offset"], spec[name]["scale"])
                if head.activation == "linear" else head.solver(model, standardize, floor))
      out.append((name, span, head.labels.labels_from_targets, solver))
    return out

  def loss(self, label_smoothing=0.0):
    return graph.MultiTaskLoss(self.spec, [h.loss(label_smoothing) for _, h in self.heads],
                               self.weights)

  def metrics(self):
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

  def main_output(self, result):
    """The heads' main outputs side by side, as the model outputs them."""
    blocks = []
    for name, head in self.heads:
      key = f"{name}{SEPARATOR}{head.layer}"
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
      heads[name] = {**head.report(head.labels.labels_from_targets(block[present]),
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

  def report_sections(self, data_, headline, cards):
    return report.sections(data_, headline, cards)
