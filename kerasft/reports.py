"""Metrics, per-class reports and plots of a trained classifier.

`predict` runs a model over a labelled pipeline; `classification_metrics` turns labels and
probabilities into the numbers of `metrics.json` using scikit-learn; the plot functions
write PNGs with matplotlib (no display needed).
"""

from __future__ import annotations

import json
import os

import numpy as np


def predict(model, dataset) -> tuple[np.ndarray, np.ndarray]:
  """Returns (integer labels [N], probabilities [N, C]) over a (pixels, one-hot) dataset."""
  labels, probabilities = [], []
  for images, onehot in dataset:
    probabilities.append(np.asarray(model(images, training=False)))
    labels.append(np.argmax(np.asarray(onehot), axis=-1))
  return np.concatenate(labels), np.concatenate(probabilities)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray,
                           class_names: list[str]) -> dict:
  """Accuracy, top-5 (more than 5 classes), loss, per-class and averaged P/R/F1/support."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top

  classes = list(range(len(class_names)))
  predicted = probabilities.argmax(axis=-1)
  report = metrics.classification_report(labels, predicted, labels=classes,
                                         target_names=class_names, output_dict=True,
                                         zero_division=0)
  result = {
      "num_examples": int(len(labels)),
      "accuracy": float(metrics.accuracy_score(labels, predicted)),
      "loss": float(metrics.log_loss(labels, np.clip(probabilities, 1e-7, 1), labels=classes)),
      "per_class": {name: report[name] for name in class_names},
      "macro_avg": report["macro avg"],
      "weighted_avg": report["weighted avg"],
      "confusion_matrix": metrics.confusion_matrix(labels, predicted, labels=classes).tolist(),
  }
  if len(class_names) > 5:
    result["top_5_accuracy"] = float(metrics.top_k_accuracy_score(labels, probabilities, k=5,
                                                                  labels=classes))
  return result


def format_table(result: dict) -> str:
  """A readable per-class table of `classification_metrics` output."""
  width = max([len(n) for n in result["per_class"]] + [12])
  lines = [f"{'class':<{width}}  precision  recall  f1-score  support"]
  rows = list(result["per_class"].items()) + [("macro avg", result["macro_avg"]),
                                              ("weighted avg", result["weighted_avg"])]
  for name, r in rows:
    lines.append(f"{name:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  "
                 f"{r['f1-score']:8.4f}  {int(r['support']):7d}")
  lines.append(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}"
               + (f"  top-5 {result['top_5_accuracy']:.4f}" if "top_5_accuracy" in result else "")
               + f"  ({result['num_examples']} images)")
  return "\n".join(lines)


def write_predictions(rows: list[dict], path: str) -> None:
  """Writes predict's rows (file, classes, probabilities, error) as .csv or .jsonl."""
  import csv  # pylint: disable=g-import-not-at-top

  staging = path + ".tmp"
  with open(staging, "w", newline="") as f:
    if path.endswith(".jsonl"):
      for row in rows:
        f.write(json.dumps(row) + "\n")
    else:
      k = max([len(r["classes"]) for r in rows] + [1])
      writer = csv.writer(f)
      writer.writerow(["file"] + [c for i in range(1, k + 1)
                                  for c in (f"class_{i}", f"probability_{i}")] + ["error"])
      for row in rows:
        pairs = [v for c, p in zip(row["classes"], row["probabilities"]) for v in (c, f"{p:.6f}")]
        writer.writerow([row["file"]] + pairs + [""] * (2 * k - len(pairs)) + [row["error"] or ""])
  os.replace(staging, path)


def write_json(obj: dict, path: str) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_confusion_matrix(confusion: list[list[int]], class_names: list[str], path: str) -> None:
  """Writes the row-normalized confusion matrix, class names on both axes, as a PNG."""
  plt = _pyplot()
  counts = np.asarray(confusion, dtype=np.float64)
  normalized = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2), max(4, 0.6 * n + 1.5)))
  im = ax.imshow(normalized, vmin=0, vmax=1, cmap="Blues")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if n <= 20:
    for i in range(n):
      for j in range(n):
        ax.text(j, i, f"{normalized[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if normalized[i, j] > 0.5 else "black")
  fig.colorbar(im, ax=ax, fraction=0.046)
  ax.set_title("confusion matrix (rows normalized)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_training_curves(history: dict, path: str) -> None:
  """Writes loss and accuracy per epoch (train and validation) as a PNG, phases marked."""
  plt = _pyplot()
  epochs = np.arange(1, len(history["loss"]) + 1)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, metric in zip(axes, ("loss", "accuracy")):
    ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
    if f"val_{metric}" in history:
      ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {metric}")
    phases = history.get("phase", [])
    for i in range(1, len(phases)):
      if phases[i] != phases[i - 1]:
        ax.axvline(i + 0.5, color="gray", linestyle="--")
        ax.text(i + 0.6, ax.get_ylim()[1], phases[i], va="top", fontsize=8, color="gray")
    ax.set_xlabel("epoch")
    ax.set_title(metric)
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], out_dir: str,
          history: dict | None = None) -> dict:
  """Writes metrics.json and confusion_matrix.png (and, given a training history,
  training_curves.png) into `out_dir`. Returns the metrics."""
  os.makedirs(out_dir, exist_ok=True)
  result = classification_metrics(labels, probabilities, class_names)
  write_json(result, os.path.join(out_dir, "metrics.json"))
  plot_confusion_matrix(result["confusion_matrix"], class_names,
                        os.path.join(out_dir, "confusion_matrix.png"))
  if history:
    plot_training_curves(history, os.path.join(out_dir, "training_curves.png"))
  return result
