"""`kerasft.evaluate`'s work: an export (through its own signatures) or a run's best
checkpoint on labelled data: metrics.json, a table, PNGs and report.html."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.core.files import read_labels
from kerasft.reporting import calibration, html as html_report, metrics as reports
from kerasft.reporting import page as run_report
from kerasft.serving import client
from kerasft.tasks import registry
from kerasft.training.run_folder import RunFolder
from kerasft.workflows.load import load_run


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """An evaluation's metrics, its printable table and the folder of its reports."""
  metrics: dict
  table: str
  output_dir: str


def evaluate_export(export: str, data_config, split: str = "test", output_dir: str = "",
                    label_column_given: bool = True) -> Evaluation:
  """Evaluates an export (`saved_models/NAME[/N]`) on a `DataConfig`'s labelled data
  through its own signatures. For regression, the label columns default to the model's
  target names unless `label_column_given`."""
  version_dir = client.resolve(export)
  if not data_config.source:
    raise UsageError("--data_dir/--csv/--tfrecord/--tfds/--text_dir: pass the labelled data "
                     "to evaluate the export on")
  card = client.read_model_card(version_dir)
  task_class, output = registry.for_card(card)
  output.check_evaluation(data_config)
  class_names = read_labels(version_dir)
  data_config = _label_columns(data_config, output, class_names, label_column_given)
  files = task_class.evaluation_examples(data_config, output, class_names, split)
  predict, _ = client.load_predictor(version_dir)
  outputs = client.predict_files(predict, task_class.client_items(files),
                                 data_config.inference_batch)
  name = (f"{os.path.basename(os.path.dirname(os.path.abspath(version_dir)))}-"
          f"{os.path.basename(version_dir)}")
  labels = output.labels.evaluation_labels(files)
  return _write(output, labels, outputs, class_names,
                output_dir or os.path.join("eval", name), None,
                _Seen(task_class, data_config, files, f"the export {version_dir}",
                      task_class.export_cards(files, card)))


def evaluate_run(run_dir: str, data_config, split: str = "test", output_dir: str = "",
                 label_column_given: bool = True) -> Evaluation:
  """Evaluates a run's best checkpoint on a `DataConfig`'s labelled data, or without a
  data source on the run's own validation data; with the run's training curves."""
  model, task, class_names = load_run(run_dir)
  task.output.check_evaluation(data_config)
  if data_config.source:
    data_config = _label_columns(data_config, task.output, class_names, label_column_given)
    files = task.evaluation_examples(data_config, task.output, class_names, split)
  else:
    files = task.index(task.config.training.seed)[1]
    data_config = task.config.data
    held_out = (RunFolder(run_dir).metrics() or {}).get("validated_on", "")
    if "refit" in held_out:
      logging.warning("the run's head was refit on its validation examples too, so these "
                      "figures are not held out; its metrics.json has held-out ones (%s)",
                      held_out)
  labels, outputs = task.predict_examples(model, files, data_config.inference_batch)
  return _write(task.output, labels, outputs, class_names,
                output_dir or os.path.join("eval", f"{task.config.name}-best"),
                RunFolder(run_dir).history(),
                _Seen(type(task), data_config, files, f"the run {run_dir} (best checkpoint)",
                      task.cards(model, files), model))


def _label_columns(data_config, output, class_names, given: bool):
  column = output.default_label_column(class_names)
  if given or column is None:
    return data_config
  return dataclasses.replace(data_config, label_column=column)


@dataclasses.dataclass
class _Seen:
  """What an evaluation looked at, for its slices and report.html."""
  task_class: type
  data_config: object
  files: object
  model_name: str
  cards: object
  model: object = None


def _write(output, labels, outputs, class_names, output_dir, history, seen: _Seen
           ) -> Evaluation:
  extra = {}
  if seen.data_config.slice_column:
    extra["slices"] = run_report.slices(seen.task_class, output, seen.data_config,
                                        seen.files, labels, outputs)
  _, calibrated, _ = output.calibrate(labels, outputs, False)
  if calibrated:
    extra["calibration"] = calibrated
  metrics = reports.write(output, labels, outputs, class_names, output_dir, history,
                          extra=extra)
  seen.task_class.write_figures(seen.files, labels, outputs, output_dir)
  if calibrated:
    calibration.plot(outputs, labels, os.path.join(output_dir, "reliability.png"))
  d = seen.data_config
  data = html_report.ReportData(
      title=f"kerasft evaluation: {seen.model_name}", metrics=metrics,
      class_names=class_names, labels=np.asarray(labels), outputs=np.asarray(outputs),
      files=seen.files, out_dir=output_dir, model=seen.model, slices=extra.get("slices"),
      summary=[("model", seen.model_name), ("data", f"--{d.source} {d.source_path()}: "
                                                   f"{len(seen.files.inputs)} examples")])
  run_report.write(data, output, output.headline(metrics), seen.cards)
  return Evaluation(metrics, output.table(metrics), output_dir)
