"""report.html of a training run or an evaluation, and the figures it adds to
metrics.json: the per-slice metric (--slice_column) and the reliability diagram.

The page itself is `kerasft.reporting.html`; its sections are the output's
(`Output.report_sections`); the examples are drawn by the modality (`Task.cards`).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from kerasft.reporting import html as html_report, metrics as reports
from kerasft.data import tables
from kerasft.reporting import sections

FIGURES = ("training_curves.png", "confusion_matrix.png", "predictions.png", "reliability.png",
           "iou.png")


def slices(task_class, output, data_config, files, targets, outputs) -> dict:
  """{column: {value: {"count", metric}}} of --slice_column over `files` ({} without);
  the CSV rows are matched by the task's key column (`Task.SLICE_KEY`)."""
  if not data_config.slice_column:
    return {}
  values = tables.slice_values(data_config, files, getattr(data_config, task_class.SLICE_KEY))
  return sections.slices(output, values, np.asarray(targets), np.asarray(outputs))


def train_counts(output, train_files) -> list | None:
  """Training examples per class (per label for multilabel); None for regression."""
  return output.labels.class_counts(train_files.labels, len(train_files.class_names))


def summary(config, dataset, metrics: dict, seconds: dict, monitor: str) -> list:
  """The summary rows of a run's report."""
  m, d, t = config.model, config.data, config.training
  recipe = [f"head {list(m.head) or 'linear'}, solver {t.head_solver}"]
  if m.unfreezes:
    recipe.append(f"fine-tune {t.fine_tune_epochs} epochs")
  methods = config.methods
  recipe += [f"{k} {getattr(methods, k)}" for k in ("average", "wise_ft", "peft", "recipe")
             if getattr(methods, k) not in ("none", "default", "", 0, 0.0, None)]
  value = metrics.get(monitor.removeprefix("val_"))
  return [("run", config.name), ("data", f"--{d.source} {d.source_path()}"
                                  f": {len(dataset.train_files.inputs)} training, "
                                  f"{len(dataset.val_files.inputs)} validation examples, "
                                  f"{len(dataset.class_names)} classes"),
          ("backbone", f"{m.model} (weights {m.weights}), {m.image_size or ''} "
                       f"{'px' if m.image_size else ''}".strip(", ")),
          ("recipe", "; ".join(recipe)),
          ("monitored metric", f"{monitor} = {value:.4f}" if isinstance(value, float)
           else monitor),
          ("time per phase", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))]


def write(data: html_report.ReportData, output, headline: str, cards, log_dir: str = ""
          ) -> dict:
  """Writes `data.out_dir/report.html` (and its figures to TensorBoard under `log_dir`);
  never raises for a figure. Returns {"seconds", "warnings"}."""
  start = time.perf_counter()
  try:
    result = html_report.write(os.path.join(data.out_dir, html_report.REPORT), data.title,
                               output.report_sections(data, headline, cards))
    if log_dir:
      html_report.to_tensorboard(data.out_dir, log_dir, list(FIGURES))
  except OSError as e:  # the folder cannot take it: the run's results stand
    logging.warning("report.html could not be written: %s", e)
    result = {"warnings": [str(e)]}
  result["seconds"] = time.perf_counter() - start
  logging.info("report.html written in %.1f s%s", result["seconds"],
               f" ({len(result['warnings'])} sections with warnings)"
               if result["warnings"] else "")
  return result
