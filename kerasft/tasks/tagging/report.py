"""report.html's sections of a tagger: per entity type, types confused, texts with errors."""

from __future__ import annotations

from typing import Callable

import numpy as np

from kerasft.reporting.html import ReportData, esc, figure, table
from kerasft.reporting.sections import GALLERY, common


def sections(data: ReportData, headline: str, cards: Callable) -> list:
  """The tagger's sections, after the common ones."""
  return common(data, headline) + [
      ("Per entity type", lambda: _per_type(data)),
      ("Entity types confused", lambda: figure(data.out_dir, "confusion_matrix.png")),
      ("Texts with errors", lambda: _tagging_errors(data, cards))]


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
