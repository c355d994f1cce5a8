"""report.html: one self-contained page per run or evaluation.

Figures are inlined as PNG data URIs; there is no script and nothing is fetched, so the
file reads on a laptop offline and prints. The sections come from the task
(`kerasft.tasks.report.sections`); a section that fails to draw becomes a warning in the
page, never a failed run. The same PNGs go to TensorBoard as image summaries.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
import time
from typing import Callable, Optional

import numpy as np
from absl import logging

from kerasft.core.files import atomic_path

REPORT = "report.html"
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ccc;
padding-bottom:.2em;margin-top:2em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.warn{background:#fff4e5;border:1px solid
#f0a020;padding:.5em}.gallery{display:flex;flex-wrap:wrap;gap:10px}.card{width:200px;
font-size:12px}.card img{width:200px;image-rendering:pixelated}.text{max-width:1000px;
width:auto;font-size:13px;border:1px solid #eee;padding:4px}nav a{margin-right:1em}
img.fig{max-width:100%}.kv td{text-align:left}@media print{nav{display:none}h2{page-break-after:avoid}}
"""


@dataclasses.dataclass
class ReportData:
  """What a report is drawn from (validation data of a run, or evaluated data).

  labels/outputs: the output type's labels and the model's outputs on `files`, aligned;
  model: the Keras model (None for an export: no explanations); figures: PNGs already in
  the folder by name; train_counts: training examples per class (None when unknown);
  slices: {column: {value: {"count": n, metric: value}}}.
  """
  title: str
  summary: list
  metrics: dict
  class_names: list
  labels: np.ndarray
  outputs: np.ndarray
  files: object
  out_dir: str
  model: object = None
  train_counts: Optional[list] = None
  slices: Optional[dict] = None
  held_out: str = ""


def esc(value) -> str:
  return html.escape(str(value))


def table(header: list | None, rows: list) -> str:
  """An HTML table; cells are escaped unless they are already html (`Raw`). Without a
  header: a two-column table of names and values, left-aligned."""
  cell = lambda c: c.html if isinstance(c, Raw) else esc(c)  # noqa: E731
  head = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
          if header else '<table class="kv">')
  return (head +
          "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
          + "</table>")


@dataclasses.dataclass
class Raw:
  """A table cell that is already HTML."""
  html: str


def png_uri(data: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(data).decode()


def array_png(pixels: np.ndarray) -> bytes:
  """uint8 pixels [H, W, 3] as PNG bytes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def figure(out_dir: str, name: str, caption: str = "") -> str:
  """An inlined PNG of `out_dir/name` (a warning when it was not drawn)."""
  path = os.path.join(out_dir, name)
  if not os.path.isfile(path):
    return warning(f"{name} was not drawn")
  with open(path, "rb") as f:
    img = f'<img class="fig" alt="{esc(name)}" src="{png_uri(f.read())}">'
  return img + (f"<p>{esc(caption)}</p>" if caption else "")


def warning(text: str) -> str:
  return f'<p class="warn">{esc(text)}</p>'


def _anchor(title: str) -> str:
  return "".join(c if c.isalnum() else "-" for c in title.lower())


def write(path: str, title: str, sections: list[tuple[str, Callable[[], str]]]) -> dict:
  """Writes the page at `path` atomically: a heading, a table of contents and each
  (title, build) section; a section whose build raises is a warning. Returns
  {"seconds", "warnings": [...]}."""
  start = time.perf_counter()
  parts, warnings = [], []
  for name, build in sections:
    try:
      body = build()
    except Exception as e:  # pylint: disable=broad-except  one figure never fails the run
      warnings.append(f"{name}: {type(e).__name__}: {e}")
      logging.warning("report section %s could not be drawn: %s", name, e)
      body = warning(f"this section could not be drawn ({type(e).__name__}: {e})")
    parts.append(f'<section id="{_anchor(name)}"><h2>{esc(name)}</h2>{body}</section>')
  nav = " ".join(f'<a href="#{_anchor(n)}">{esc(n)}</a>' for n, _ in sections)
  page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}"
          f"</title><style>{_STYLE}</style></head><body><h1>{esc(title)}</h1><nav>{nav}</nav>"
          + "".join(parts) + "</body></html>")
  with atomic_path(path) as staging, open(staging, "w", encoding="utf-8") as f:
    f.write(page)
  return {"seconds": time.perf_counter() - start, "warnings": warnings}


def to_tensorboard(out_dir: str, log_dir: str, names: list[str]) -> None:
  """Writes the report's PNGs that exist in `out_dir` as image summaries under
  `log_dir/report` (step 0)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  present = [n for n in names if os.path.isfile(os.path.join(out_dir, n))]
  if not present:
    return
  writer = tf.summary.create_file_writer(os.path.join(log_dir, "report"))
  with writer.as_default():
    for name in present:
      with open(os.path.join(out_dir, name), "rb") as f:
        image = tf.io.decode_png(f.read(), channels=3)
      tf.summary.image(name.rsplit(".", 1)[0], image[None], step=0)
  writer.close()
