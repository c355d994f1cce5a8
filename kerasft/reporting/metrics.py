"""Metrics, per-class reports and plots of a trained classifier.

`predict` runs a model over a labelled pipeline; `classification_metrics` turns labels and
probabilities into the numbers of `metrics.json` using scikit-learn; the plot functions
write PNGs with matplotlib (no display needed).
"""

from __future__ import annotations

import json
import os

import numpy as np

from kerasft.core.files import write_json


def predict(model, dataset) -> tuple[np.ndarray, np.ndarray]:
  """Returns (targets [N, C], model outputs [N, C]) over a (pixels, targets) dataset."""
  targets, outputs = [], []
  for images, target in dataset:
    outputs.append(np.asarray(model(images, training=False)))
    targets.append(np.asarray(target))
  return np.concatenate(targets), np.concatenate(outputs)


def multilabel_metrics(targets: np.ndarray, scores: np.ndarray, class_names: list[str],
                       threshold: float = 0.5) -> dict:
  """Per-label and averaged ROC AUC, precision, recall and F1 at `threshold`, subset
  accuracy and binary cross-entropy of multi-hot `targets` [N, C] and `scores` [N, C]."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top

  predicted = (scores >= threshold).astype(int)
  targets = targets.astype(int)
  per_label = {}
  for i, name in enumerate(class_names):
    both = len(np.unique(targets[:, i])) == 2
    per_label[name] = {
        "auc": float(metrics.roc_auc_score(targets[:, i], scores[:, i])) if both else None,
        "precision": float(metrics.precision_score(targets[:, i], predicted[:, i],
                                                   zero_division=0)),
        "recall": float(metrics.recall_score(targets[:, i], predicted[:, i], zero_division=0)),
        "f1-score": float(metrics.f1_score(targets[:, i], predicted[:, i], zero_division=0)),
        "support": int(targets[:, i].sum())}
  aucs = [r["auc"] for r in per_label.values() if r["auc"] is not None]
  clipped = np.clip(scores, 1e-7, 1 - 1e-7)
  return {
      "num_examples": int(len(targets)), "threshold": threshold,
      "macro_auc": float(np.mean(aucs)) if aucs else None,
      "micro_f1": float(metrics.f1_score(targets, predicted, average="micro", zero_division=0)),
      "macro_f1": float(metrics.f1_score(targets, predicted, average="macro", zero_division=0)),
      "subset_accuracy": float(metrics.accuracy_score(targets, predicted)),
      "loss": float(-np.mean(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped))),
      "per_label": per_label}


def regression_metrics(targets: np.ndarray, predictions: np.ndarray,
                       target_names: list[str]) -> dict:
  """MSE (the loss), MAE and R² overall and per target of `targets`/`predictions` [N, K]."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top

  targets, predictions = targets.reshape(len(targets), -1), predictions.reshape(
      len(predictions), -1)
  per_target = {name: {"mse": float(metrics.mean_squared_error(targets[:, i], predictions[:, i])),
                       "mae": float(metrics.mean_absolute_error(targets[:, i], predictions[:, i])),
                       "r2": float(metrics.r2_score(targets[:, i], predictions[:, i]))}
                for i, name in enumerate(target_names)}
  return {"num_examples": int(len(targets)),
          "loss": float(metrics.mean_squared_error(targets, predictions)),
          "mse": float(metrics.mean_squared_error(targets, predictions)),
          "mae": float(metrics.mean_absolute_error(targets, predictions)),
          "r2": float(metrics.r2_score(targets, predictions)), "per_target": per_target}


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


def target_table(result: dict) -> str:
  """A per-target table of regression metrics."""
  width = max([len(n) for n in result["per_target"]] + [8])
  lines = [f"{'target':<{width}}  {'mse':>10}  {'mae':>10}  {'r2':>8}"]
  lines += [f"{n:<{width}}  {r['mse']:10.4f}  {r['mae']:10.4f}  {r['r2']:8.4f}"
            for n, r in result["per_target"].items()]
  lines.append(f"mse {result['mse']:.4f}  mae {result['mae']:.4f}  r2 {result['r2']:.4f}  "
               f"({result['num_examples']} examples)")
  return "\n".join(lines)


def label_table(result: dict) -> str:
  """A per-label table of multilabel metrics."""
  width = max([len(n) for n in result["per_label"]] + [8])
  lines = [f"{'label':<{width}}  {'auc':>6}  precision  recall  f1-score  support"]
  for n, r in result["per_label"].items():
    auc = f"{r['auc']:6.4f}" if r["auc"] is not None else "     -"
    lines.append(f"{n:<{width}}  {auc}  {r['precision']:9.4f}  {r['recall']:6.4f}  "
                 f"{r['f1-score']:8.4f}  {r['support']:7d}")
  macro = result["macro_auc"]
  lines.append(f"macro auc {macro if macro is None else round(macro, 4)}  micro f1 "
               f"{result['micro_f1']:.4f}  macro f1 {result['macro_f1']:.4f}  subset "
               f"accuracy {result['subset_accuracy']:.4f}  ({result['num_examples']} examples, "
               f"threshold {result['threshold']})")
  return "\n".join(lines)


def class_table(result: dict) -> str:
  """A per-class table of multiclass metrics."""
  width = max([len(n) for n in result["per_class"]] + [12])
  lines = [f"{'class':<{width}}  precision  recall  f1-score  support"]
  rows = list(result["per_class"].items()) + [("macro avg", result["macro_avg"]),
                                              ("weighted avg", result["weighted_avg"])]
  for name, r in rows:
    lines.append(f"{name:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  "
                 f"{r['f1-score']:8.4f}  {int(r['support']):7d}")
  lines.append(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}"
               + (f"  top-5 {result['top_5_accuracy']:.4f}" if "top_5_accuracy" in result else "")
               + f"  ({result['num_examples']} examples)")
  return "\n".join(lines)


def prediction_cells(row: dict) -> list[tuple[str, str]]:
  """(name, value) pairs of one predict row: class and probability per rank, or target and
  prediction per regression target; several heads' pairs named HEAD/NAME."""
  if "heads" in row:
    return [(f"{head}/{name}", value) for head, sub in row["heads"].items()
            for name, value in prediction_cells(sub)]
  if "predictions" in row:
    return [(t, f"{p:.6f}") for t, p in zip(row["targets"], row["predictions"])]
  if "boxes" in row:
    return [(f"{b['class']} ({b['xmin']:g}, {b['ymin']:g}, {b['xmax']:g}, {b['ymax']:g})",
             f"{b['score']:.6f}") for b in row["boxes"]]
  return [(c, f"{p:.6f}") for c, p in zip(row["classes"], row["probabilities"])]


def _csv_cells(row: dict) -> dict:
  """{column: value} of one predict row: a column per regression target, class_i and
  probability_i per rank; several heads' columns prefixed HEAD/."""
  if "heads" in row:
    return {f"{head}/{k}": v for head, sub in row["heads"].items()
            for k, v in _csv_cells(sub).items()}
  if "predictions" in row:
    return dict(zip(row["targets"], (f"{p:.6f}" for p in row["predictions"])))
  return {k: v for i, (c, p) in enumerate(zip(row["classes"], row["probabilities"]), 1)
          for k, v in ((f"class_{i}", c), (f"probability_{i}", f"{p:.6f}"))}


def write_predictions(rows: list[dict], path: str) -> None:
  """Writes predict's rows (file, classes and probabilities, or regression predictions,
  error) as .csv (the columns every row has: `_csv_cells`) or .jsonl."""
  import csv  # pylint: disable=g-import-not-at-top

  if rows and "boxes" in rows[0]:
    return _write_box_rows(rows, path)
  key = "text" if rows and "text" in rows[0] else "file"
  cells = [_csv_cells(row) for row in rows]
  columns = list(dict.fromkeys(
      [c for row in rows if "targets" in row for c in row["targets"]]
      + [c for row in cells for c in row])) or ["class_1", "probability_1"]
  staging = path + ".tmp"
  with open(staging, "w", newline="") as f:
    if path.endswith(".jsonl"):
      for row in rows:
        f.write(json.dumps(row) + "\n")
    else:
      writer = csv.writer(f)
      writer.writerow([key] + columns + ["error"])
      for row, values in zip(rows, cells):
        writer.writerow([row[key]] + [values.get(c, "") for c in columns]
                        + [row["error"] or ""])
  os.replace(staging, path)


def _write_box_rows(rows: list[dict], path: str) -> None:
  """Rows with boxes as .jsonl (a line per input) or .csv: a row per box (path, xmin, ymin,
  xmax, ymax, label, score, error), an input without boxes on a row with an empty label
  (the layout a detection --csv reads)."""
  import csv  # pylint: disable=g-import-not-at-top
  staging = path + ".tmp"
  with open(staging, "w", newline="") as f:
    if path.endswith(".jsonl"):
      for row in rows:
        f.write(json.dumps({k: v for k, v in row.items() if k not in ("classes",
                                                                      "probabilities")}) + "\n")
    else:
      writer = csv.writer(f)
      writer.writerow(["path", "xmin", "ymin", "xmax", "ymax", "label", "score", "error"])
      for row in rows:
        for b in row["boxes"] or [None]:
          writer.writerow([row["file"]] + ([b["xmin"], b["ymin"], b["xmax"], b["ymax"],
                                            b["class"], b["score"]] if b else [""] * 6)
                          + [row["error"] or ""])
  os.replace(staging, path)


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_confusion_matrix(confusion: list[list[int]], class_names: list[str], path: str) -> None:
  """Writes the row-normalized confusion matrix, class names on both axes, as a PNG."""
  plt = pyplot()
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


def plot_predictions(targets: np.ndarray, predictions: np.ndarray, target_names: list[str],
                     path: str) -> None:
  """Writes predicted against true values, one panel per regression target, as a PNG."""
  plt = pyplot()
  targets, predictions = targets.reshape(len(targets), -1), predictions.reshape(
      len(predictions), -1)
  k = len(target_names)
  fig, axes = plt.subplots(1, k, figsize=(4.5 * k, 4), squeeze=False)
  for i, (ax, name) in enumerate(zip(axes[0], target_names)):
    ax.scatter(targets[:, i], predictions[:, i], s=8, alpha=0.6)
    low, high = float(min(targets[:, i].min(), predictions[:, i].min())), float(
        max(targets[:, i].max(), predictions[:, i].max()))
    ax.plot([low, high], [low, high], color="gray", linestyle="--")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_training_curves(history: dict, path: str, monitored: str = "") -> None:
  """Writes loss and the task's metric (the `monitored` one unless it is the loss, else
  accuracy, auc or mae) per epoch (train and validation) as a PNG, phases marked."""
  plt = pyplot()
  epochs = np.arange(1, len(history["loss"]) + 1)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  metric = next((m for m in (monitored.removeprefix("val_"), "accuracy", "auc", "mae")
                 if m in history and m != "loss"), "loss")
  for ax, metric in zip(axes, ("loss", metric)):
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


def write(output, labels: np.ndarray, outputs: np.ndarray, class_names: list[str],
          out_dir: str, history: dict | None = None, validated_on: str = "",
          kept: str = "", extra: dict | None = None) -> dict:
  """Writes metrics.json and the `output`'s PNG (a `kerasft.tasks.classify.output.Output`:
  confusion_matrix.png, predictions.png) and, given a training history,
  training_curves.png into `out_dir`. labels: what `output.labels.evaluation_labels` gives (class
  ids or one-hot [N, C], multi-hot [N, C], targets [N, K]). validated_on: which examples the
  figures come from (written as "validated_on"); kept: the phase of the epoch the model
  ends with (written as "kept"); extra: more entries (calibration, slices). Returns the
  metrics."""
  os.makedirs(out_dir, exist_ok=True)
  result = output.report(labels, outputs, class_names, out_dir)
  if validated_on:
    result["validated_on"] = validated_on
  if kept:
    result["kept"] = kept
  result.update(extra or {})
  write_json(result, os.path.join(out_dir, "metrics.json"))
  if history:
    plot_training_curves(history, os.path.join(out_dir, "training_curves.png"),
                         output.monitor[0])
  return result
