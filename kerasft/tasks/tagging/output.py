"""The tagging output: IOB2 tag probabilities per token, entity spans as labels and
outputs, entity F1 monitored."""

from __future__ import annotations

import numpy as np

from kerasft.core.errors import refuse
from kerasft.reporting import metrics as reports
from kerasft.data import examples
from kerasft.tasks.base import Output
from kerasft.tasks.tagging import data, report


class Tagging(Output):
  """IOB2 tag probabilities per token ("probabilities" [N, L, 1 + 2 types]); labels and
  outputs are per-text entity lists ((start, end, type[, score]) character spans)."""
  name = "tagging"
  labels = data.Entities()
  names_key = "entity_types"
  monitor = ("val_entity_f1", "max")
  objective = ("entity_f1", "max")

  def refused_search_entries(self):
    return ("few_shot",)

  def check(self, config):
    d = config.data
    refuse(self.name, class_weight=d.class_weight != "none", oversample=d.oversample,
            slice_column=bool(d.slice_column), calibrate=config.training.calibrate != "none",
            recipe=config.methods.recipe == "few_shot")

  def last_layer(self, x, n, stats=None):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Dense(1 + 2 * n, dtype="float32", name=self.layer,
                              activation="softmax")(x)

  def loss(self, label_smoothing=0.0):
    from kerasft.tasks.tagging import graph  # pylint: disable=g-import-not-at-top
    return graph.TokenCrossentropy(label_smoothing)

  def metrics(self):
    from kerasft.tasks.tagging import graph  # pylint: disable=g-import-not-at-top
    return [graph.TokenAccuracy(), graph.EntityF1()]

  def card(self):
    return {"task": self.name, "tags": "IOB2"}

  def served(self, result: dict) -> np.ndarray:
    """Per-text entity lists (start, end, type, score, text) of the export's outputs."""
    return examples.objects([[(int(a), int(b), t.decode(), float(s), x.decode())
             for a, b, t, s, x in zip(*(result[k][i] for k in (
                 "entity_starts", "entity_ends", "entity_types", "entity_scores", "entities")))
             if a >= 0] for i in range(len(result["entities"]))])

  def predict_row(self, key, name, values, class_names, top_k, error):
    if error:
      return {key: name, "classes": [], "probabilities": [], "entities": [], "error": error}
    return {key: name, "classes": [f"{e[2]}: {e[4]}" for e in values],
            "probabilities": [e[3] for e in values],
            "entities": [{"text": e[4], "type": e[2], "start": e[0], "end": e[1],
                          "score": e[3]} for e in values], "error": None}

  def report(self, labels, outputs, class_names, out_dir):
    result = data.entity_metrics(list(labels), list(outputs), class_names)
    matrix = data.type_confusion(list(labels), list(outputs), class_names)
    result["type_confusion"] = matrix.tolist()
    reports.plot_confusion_matrix(matrix.tolist(), list(class_names) + ["(none)"],
                                  f"{out_dir}/confusion_matrix.png")
    return result

  def headline(self, metrics):
    return (f"entity F1 {metrics['entity_f1']:.4f} (precision "
            f"{metrics['entity_precision']:.4f}, recall {metrics['entity_recall']:.4f})")

  def table(self, metrics):
    rows = [f"{'type':<12}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}"]
    for name, r in sorted(metrics["per_type"].items()):
      rows.append(f"{name:<12}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}"
                  f"{r['support']:>9d}")
    rows.append(f"{'all (micro)':<12}{metrics['entity_precision']:>10.4f}"
                f"{metrics['entity_recall']:>10.4f}{metrics['entity_f1']:>10.4f}"
                f"{metrics['entities']:>9d}")
    return "\n".join(rows)

  def report_sections(self, data_, headline, cards):
    return report.sections(data_, headline, cards)
