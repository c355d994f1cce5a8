"""report.html's sections of the classifying outputs: per class, confusions, mistakes,
calibration and slices (multiclass); per label (multilabel); residuals (regression)."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

from kerasft.reporting import metrics as reports
from kerasft.reporting.html import ReportData, esc, figure, png_uri, table, warning
from kerasft.reporting.sections import GALLERY, common, gallery, slices_table

PAIRS, PER_PAIR = 4, 3  # the most confused pairs shown, and examples of each


def multiclass_sections(data: ReportData, headline: str, cards: Callable) -> list:
  """Multiclass: the confusion matrix, per class, confusions, mistakes, calibration."""
  return common(data, headline) + [
      ("Confusion matrix", lambda: figure(data.out_dir, "confusion_matrix.png")),
      ("Per class", lambda: _per_class(data)),
      ("Most confused pairs", lambda: _confused(data, cards)),
      ("Most confident mistakes", lambda: _confident_mistakes(data, cards)),
      ("Calibration", lambda: _calibration(data)),
      ("Slices", lambda: slices_table(data))]


def multilabel_sections(data: ReportData, headline: str, cards: Callable) -> list:
  """Multilabel: per label, the largest errors, slices."""
  names = data.class_names

  def describe(i):
    true = [n for n, t in zip(names, data.labels[i]) if t]
    got = [n for n, s in zip(names, data.outputs[i]) if s >= data.metrics["threshold"]]
    return f"true {'|'.join(true) or '-'}; predicted {'|'.join(got) or '-'}"
  return common(data, headline) + [("Per label", lambda: _per_label(data)),
                                   ("Largest errors",
                                    lambda: _largest_errors(data, cards, describe)),
                                   ("Slices", lambda: slices_table(data))]


def regression_sections(data: ReportData, headline: str, cards: Callable) -> list:
  """Regression: predictions and residuals, the largest errors, slices."""
  names = data.class_names
  describe = lambda i: "; ".join(  # noqa: E731
      f"{n}: true {float(np.ravel(data.labels[i])[k]):.3g}, predicted "
      f"{float(np.ravel(data.outputs[i])[k]):.3g}" for k, n in enumerate(names))
  return common(data, headline) + [("Predictions and residuals", lambda: _residuals(data)),
                                   ("Largest errors",
                                    lambda: _largest_errors(data, cards, describe)),
                                   ("Slices", lambda: slices_table(data))]


def _per_class(data: ReportData) -> str:
  per_class = data.metrics["per_class"]
  total = sum(data.train_counts) if data.train_counts else 0
  rows = []
  for i, name in enumerate(data.class_names):
    r = per_class[name]
    share = f"{data.train_counts[i] / total:.1%}" if total else "-"
    rows.append((name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1-score']:.3f}",
                 int(r["support"]), share))
  return table(["class", "precision", "recall", "F1", "support", "share of training data"],
               rows)


def _confused(data: ReportData, cards: Callable) -> str:
  confusion = np.asarray(data.metrics["confusion_matrix"])
  np.fill_diagonal(confusion, 0)
  order = np.dstack(np.unravel_index(np.argsort(-confusion, axis=None), confusion.shape))[0]
  labels, predicted = np.asarray(data.labels), data.outputs.argmax(-1)
  if labels.ndim == 2:
    labels = labels.argmax(-1)
  pairs = [(t, g) for t, g in order[:PAIRS] if confusion[t, g]]
  chosen = [np.flatnonzero((labels == t) & (predicted == g))[:PER_PAIR].tolist()
            for t, g in pairs]
  flat = [i for idx in chosen for i in idx]  # one call: explanations cost per call
  drawn = iter(cards(flat, [int(predicted[i]) for i in flat],
                     [f"p={data.outputs[i, predicted[i]]:.2f}" for i in flat]))
  names = data.class_names
  parts = [f"<h3>{esc(names[t])} taken for {esc(names[g])}: {confusion[t, g]} examples</h3>"
           + gallery([next(drawn) for _ in idx]) for (t, g), idx in zip(pairs, chosen)]
  return "".join(parts) or "<p>no confusions</p>"


def _confident_mistakes(data: ReportData, cards: Callable) -> str:
  labels = np.asarray(data.labels)
  labels = labels.argmax(-1) if labels.ndim == 2 else labels
  predicted, confidence = data.outputs.argmax(-1), data.outputs.max(-1)
  wrong = np.flatnonzero(predicted != labels)
  idx = wrong[np.argsort(-confidence[wrong])][:GALLERY].tolist()
  names = data.class_names
  return (f"<p>{len(wrong)} of {len(labels)} examples are misclassified; the "
          f"{len(idx)} most confident (the explanation is of the predicted class):</p>" +
          gallery(cards(idx, [int(predicted[i]) for i in idx], [
              f"true {names[labels[i]]}, predicted {names[predicted[i]]} "
              f"({confidence[i]:.2f})" for i in idx])))


def _calibration(data: ReportData) -> str:
  c = data.metrics.get("calibration")
  if not c:
    return warning("no calibration figures")
  rows = [("expected calibration error (15 bins)", f"{c['ece']:.4f}")]
  if "temperature" in c:
    rows += [("temperature T (fit on the held-out predictions)", f"{c['temperature']:.3f}"),
             ("ECE with T (on the same predictions)", f"{c['ece_calibrated']:.4f}")]
  return table(None, rows) + figure(data.out_dir, "reliability.png")


def _largest_errors(data: ReportData, cards: Callable, describe: Callable) -> str:
  error = np.abs(np.asarray(data.outputs, np.float64).reshape(len(data.outputs), -1) -
                 np.asarray(data.labels, np.float64).reshape(len(data.labels), -1)).sum(-1)
  idx = np.argsort(-error)[:GALLERY].tolist()
  return gallery(cards(idx, [None] * len(idx), [describe(i) for i in idx]))


def _per_label(data: ReportData) -> str:
  m = data.metrics
  rows = [(name, "-" if r["auc"] is None else f"{r['auc']:.3f}", f"{r['precision']:.3f}",
           f"{r['recall']:.3f}", f"{r['f1-score']:.3f}", r["support"])
          for name, r in m["per_label"].items()]
  return (f"<p>A label is predicted where its score is at least {m['threshold']}.</p>" +
          table(["label", "AUC", "precision", "recall", "F1", "support"], rows))


def _residuals(data: ReportData) -> str:
  plt = reports.pyplot()
  y = np.asarray(data.labels, np.float64).reshape(len(data.labels), -1)
  p = np.asarray(data.outputs, np.float64).reshape(len(data.outputs), -1)
  fig, axes = plt.subplots(1, y.shape[1], figsize=(4.5 * y.shape[1], 3.5), squeeze=False)
  for i, (ax, name) in enumerate(zip(axes[0], data.class_names)):
    ax.scatter(p[:, i], y[:, i] - p[:, i], s=8, alpha=0.6)
    ax.axhline(0, color="gray", linestyle="--")
    ax.set_xlabel(f"predicted {name}")
    ax.set_ylabel("residual (true - predicted)")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  rows = [(n, f"{r['mae']:.4f}", f"{r['mse']:.4f}", f"{r['r2']:.3f}")
          for n, r in data.metrics["per_target"].items()]
  return (figure(data.out_dir, "predictions.png") +
          f'<img class="fig" alt="residuals" src="{png_uri(buffer.getvalue())}">' +
          table(["target", "MAE", "MSE", "R²"], rows))
