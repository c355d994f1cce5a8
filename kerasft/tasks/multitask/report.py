"""report.html's sections of several heads: each head's figures and overall metrics."""

from __future__ import annotations

import os

from kerasft.reporting.html import ReportData, figure, table
from kerasft.reporting.sections import common


def sections(data: ReportData, headline: str, cards) -> list:
  """A section per head, after the common ones."""
  return common(data, headline) + [(f"Head {name}", lambda name=name: _head(data, name))
                                   for name in data.metrics["heads"]]


def _head(data: ReportData, name: str) -> str:
  """One head of several: its figures (heads/NAME/) and its overall metrics."""
  metrics = data.metrics["heads"][name]
  shown = [f for f in ("confusion_matrix.png", "predictions.png")
           if os.path.isfile(os.path.join(data.out_dir, "heads", name, f))]
  rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)]
  return "".join(figure(data.out_dir, os.path.join("heads", name, f)) for f in shown) + table(
      ["metric", "value"], rows)
