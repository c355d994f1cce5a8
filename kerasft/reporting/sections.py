"""The sections of report.html for each output type, and the per-slice metric.

`sections(output_name, data, cards)` lists (title, build) pairs for
`kerasft.html_report.write`; `cards(indices, class_ids, captions)` renders examples as
the modality draws them (images with Grad-CAM, texts with word attributions).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from kerasft.reporting.html import Raw, ReportData, esc, figure, table, warning
from kerasft.reporting.html import array_png, png_uri  # noqa: F401  (re-exported for tasks)

GALLERY = 12
PAIRS, PER_PAIR = 4, 3


def _gallery(cards: list[str]) -> str:
  return '<div class="gallery">' + "".join(cards) + "</div>" if cards else "<p>none</p>"


def _summary(data: ReportData, headline: str) -> str:
  rows = [(k, v) for k, v in data.summary] + [("result", headline)]
  if data.held_out:
    rows.append(("figures from", data.held_out))
  return table(None, rows)


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


def _head(data: ReportData, name: str) -> str:
  """One head of several: its figures (heads/NAME/) and its overall metrics."""
  metrics = data.metrics["heads"][name]
  shown = [f for f in ("confusion_matrix.png", "predictions.png")
           if os.path.isfile(os.path.join(data.out_dir, "heads", name, f))]
  rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)]
  return "".join(figure(data.out_dir, os.path.join("heads", name, f)) for f in shown) + table(
      ["metric", "value"], rows)


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
           + _gallery([next(drawn) for _ in idx]) for (t, g), idx in zip(pairs, chosen)]
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
          _gallery(cards(idx, [int(predicted[i]) for i in idx], [
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
  return _gallery(cards(idx, [None] * len(idx), [describe(i) for i in idx]))


def _per_label(data: ReportData) -> str:
  m = data.metrics
  rows = [(name, "-" if r["auc"] is None else f"{r['auc']:.3f}", f"{r['precision']:.3f}",
           f"{r['recall']:.3f}", f"{r['f1-score']:.3f}", r["support"])
          for name, r in m["per_label"].items()]
  return (f"<p>A label is predicted where its score is at least {m['threshold']}.</p>" +
          table(["label", "AUC", "precision", "recall", "F1", "support"], rows))


def _residuals(data: ReportData) -> str:
  from kerasft.reporting.metrics import pyplot
  import io  # pylint: disable=g-import-not-at-top
  plt = pyplot()
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


def _per_type(data: ReportData) -> str:
  m = data.metrics
  rows = [(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
           r["support"], r["predicted"]) for name, r in sorted(m["per_type"].items())]
  rows.append(("all (micro)", f"{m['entity_precision']:.3f}", f"{m['entity_recall']:.3f}",
               f"{m['entity_f1']:.3f}", m["entities"], sum(r[5] for r in rows)))
  return table(["type", "precision", "recall", "F1", "true entities", "predicted"], rows)


def _tagging_errors(data: ReportData, cards: Callable) -> str:
  """Texts whose predicted entities differ most from the true ones (true: underlined;
  predicted: shaded, type above)."""
  wrong = [len({tuple(e[:3]) for e in t} ^ {tuple(e[:3]) for e in p})
           for t, p in zip(data.labels, data.outputs)]
  order = [int(i) for i in np.argsort(wrong, kind="stable")[::-1][:GALLERY] if wrong[i]]
  shown = cards(order, [data.outputs[i] for i in order],
                [f"{wrong[i]} entities differ" for i in order])
  return (f"<p>{sum(1 for w in wrong if w)} of {len(wrong)} texts have errors; the "
          f"{len(order)} with the most:</p>" + "".join(shown) if order else "<p>none</p>")


def _per_class_iou(data: ReportData) -> str:
  rows = [(name, "-" if r["iou"] is None else f"{r['iou']:.3f}", r["pixels"])
          for name, r in data.metrics["per_class"].items()]
  return figure(data.out_dir, "iou.png") + table(["class", "IoU", "true pixels"], rows)


def _worst_masks(data: ReportData, cards: Callable) -> str:
  """The images whose predicted masks agree least with the true ones (pixel accuracy)."""
  from kerasft.tasks.segmentation.data import IGNORE
  scores = [float(np.mean((t == p)[t != IGNORE])) if np.any(t != IGNORE) else 1.0
            for t, p in zip(data.labels, data.outputs)]
  order = [int(i) for i in np.argsort(scores, kind="stable")[:GALLERY]]
  shown = cards(order, [(data.labels[i], data.outputs[i]) for i in order],
                [f"pixel accuracy {scores[i]:.3f} (left: true, right: predicted)"
                 for i in order])
  return "".join(shown) if order else "<p>none</p>"


def _slices(data: ReportData) -> str:
  if not data.slices:
    return "<p>No --slice_column given (CSV sources: --slice_column=site,device).</p>"
  parts = []
  for column, values in data.slices.items():
    metric = next(k for k in next(iter(values.values())) if k != "count")
    rows = [(value, r["count"], f"{r[metric]:.4f}") for value, r in values.items()]
    parts.append(f"<h3>{esc(column)}</h3>" + table([column, "count", metric], rows))
  return "".join(parts)


def sections(output_name: str, data: ReportData, headline: str,
             cards: Callable) -> list[tuple[str, Callable[[], str]]]:
  """The (title, build) sections of report.html for an output type."""
  common = [("Summary", lambda: _summary(data, headline)),
            ("Training curves", lambda: figure(data.out_dir, "training_curves.png") if
             data.model is not None else "<p>An export was evaluated: no training history.</p>")]
  if output_name == "multiclass":
    return common + [
        ("Confusion matrix", lambda: figure(data.out_dir, "confusion_matrix.png")),
        ("Per class", lambda: _per_class(data)),
        ("Most confused pairs", lambda: _confused(data, cards)),
        ("Most confident mistakes", lambda: _confident_mistakes(data, cards)),
        ("Calibration", lambda: _calibration(data)),
        ("Slices", lambda: _slices(data))]
  if output_name == "multitask":
    return common + [(f"Head {name}", lambda name=name: _head(data, name))
                     for name in data.metrics["heads"]]
  if output_name == "tagging":
    return common + [("Per entity type", lambda: _per_type(data)),
                     ("Entity types confused", lambda: figure(data.out_dir,
                                                              "confusion_matrix.png")),
                     ("Texts with errors", lambda: _tagging_errors(data, cards))]
  if output_name == "segmentation":
    return common + [("Per class IoU", lambda: _per_class_iou(data)),
                     ("Masks", lambda: figure(data.out_dir, "predictions.png")),
                     ("Images with the most errors", lambda: _worst_masks(data, cards))]
  names = data.class_names
  if output_name == "multilabel":
    def describe(i):
      true = [n for n, t in zip(names, data.labels[i]) if t]
      got = [n for n, s in zip(names, data.outputs[i]) if s >= data.metrics["threshold"]]
      return f"true {'|'.join(true) or '-'}; predicted {'|'.join(got) or '-'}"
    return common + [("Per label", lambda: _per_label(data)),
                     ("Largest errors", lambda: _largest_errors(data, cards, describe)),
                     ("Slices", lambda: _slices(data))]
  describe = lambda i: "; ".join(  # noqa: E731
      f"{n}: true {float(np.ravel(data.labels[i])[k]):.3g}, predicted "
      f"{float(np.ravel(data.outputs[i])[k]):.3g}" for k, n in enumerate(names))
  return common + [("Predictions and residuals", lambda: _residuals(data)),
                   ("Largest errors", lambda: _largest_errors(data, cards, describe)),
                   ("Slices", lambda: _slices(data))]


def slice_metric(output_name: str, labels: np.ndarray, outputs: np.ndarray,
                 threshold: float = 0.5) -> tuple[str, float]:
  """(name, value) of the monitored figure on one slice: accuracy (multiclass), micro F1
  (multilabel), MAE (regression); scikit-learn's."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels)
  if output_name == "multiclass":
    ids = labels.argmax(-1) if labels.ndim == 2 else labels
    return "accuracy", float(metrics.accuracy_score(ids, outputs.argmax(-1)))
  if output_name == "multilabel":
    return "micro_f1", float(metrics.f1_score(labels.astype(int), (outputs >= threshold)
                                              .astype(int), average="micro", zero_division=0))
  return "mae", float(metrics.mean_absolute_error(labels.reshape(len(labels), -1),
                                                  outputs.reshape(len(outputs), -1)))


def slices(output_name: str, values: dict, labels: np.ndarray, outputs: np.ndarray,
           threshold: float = 0.5) -> dict:
  """{column: {value: {"count", metric}}} of `values` ({column: per-example values})."""
  out = {}
  for column, per_example in values.items():
    per_example = np.asarray(per_example, object)
    out[column] = {}
    for value in sorted(set(per_example.tolist()), key=str):
      idx = np.flatnonzero(per_example == value)
      name, figure_ = slice_metric(output_name, labels[idx], outputs[idx], threshold)
      out[column][str(value)] = {"count": int(len(idx)), name: figure_}
  return out


def marked(text: str, gold: list, predicted: list) -> str:
  """`text` as HTML: predicted entities shaded (type as a superscript), true ones
  underlined."""
  edges = sorted({0, len(text)} | {e[k] for e in list(gold) + list(predicted) for k in (0, 1)})
  out = []
  for a, b in zip(edges, edges[1:]):
    piece = esc(text[a:b])
    got = next((e for e in predicted if e[0] <= a and b <= e[1]), None)
    true = any(e[0] <= a and b <= e[1] for e in gold)
    if true:
      piece = f"<u>{piece}</u>"
    if got:
      piece = f'<span style="background:#cde">{piece}</span>'
      if b == got[1]:
        piece += f"<sup>{esc(got[2])}</sup>"
    out.append(piece)
  return "".join(out)
