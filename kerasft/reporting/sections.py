"""The parts of report.html every output uses: the summary, the training curves, galleries
of example cards, and the metric per --slice_column value. Each output lists its own
sections (`Output.report_sections`), from these and its task folder's `report` module;
`cards(indices, class_ids, captions)` renders examples as the modality draws them (images
with Grad-CAM, texts with word attributions).
"""

from __future__ import annotations

import numpy as np

from kerasft.reporting.html import ReportData, esc, figure, table

GALLERY = 12  # examples per gallery


def gallery(cards: list[str]) -> str:
  """The cards side by side ("none" without any)."""
  return '<div class="gallery">' + "".join(cards) + "</div>" if cards else "<p>none</p>"


def summary(data: ReportData, headline: str) -> str:
  rows = [(k, v) for k, v in data.summary] + [("result", headline)]
  if data.held_out:
    rows.append(("figures from", data.held_out))
  return table(None, rows)


def common(data: ReportData, headline: str) -> list:
  """The sections every report starts with: the summary and the training curves."""
  return [("Summary", lambda: summary(data, headline)),
          ("Training curves", lambda: figure(data.out_dir, "training_curves.png") if
           data.model is not None else "<p>An export was evaluated: no training history.</p>")]


def slices_table(data: ReportData) -> str:
  if not data.slices:
    return "<p>No --slice_column given (CSV sources: --slice_column=site,device).</p>"
  parts = []
  for column, values in data.slices.items():
    metric = next(k for k in next(iter(values.values())) if k != "count")
    rows = [(value, r["count"], f"{r[metric]:.4f}") for value, r in values.items()]
    parts.append(f"<h3>{esc(column)}</h3>" + table([column, "count", metric], rows))
  return "".join(parts)


def slices(output, values: dict, labels: np.ndarray, outputs: np.ndarray) -> dict:
  """{column: {value: {"count", metric}}} of `values` ({column: per-example values}), the
  metric each slice's `output.slice_metric`."""
  out = {}
  for column, per_example in values.items():
    per_example = np.asarray(per_example, object)
    out[column] = {}
    for value in sorted(set(per_example.tolist()), key=str):
      idx = np.flatnonzero(per_example == value)
      name, figure_ = output.slice_metric(labels[idx], outputs[idx])
      out[column][str(value)] = {"count": int(len(idx)), name: figure_}
  return out
