"""What a finished run leaves, used again: loading its checkpoint, exporting it (SavedModel,
TFLite), and evaluating it or one of its exports on labelled data."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
from absl import logging

from kerasft.serving import client, versions as serving
from kerasft.reporting import metrics as reports
from kerasft.tasks import registry as tasks
from kerasft.core.errors import UsageError
from kerasft.core.files import LABELS, read_labels
from kerasft.training.run_folder import RunFolder


def load_run(run_dir: str, checkpoint: str = ""):
  """Loads a training run's checkpoint (default: its best); returns (model, task,
  class names)."""
  folder = RunFolder(run_dir)
  flag = "checkpoint" if checkpoint else "run_dir"
  path = folder.require(checkpoint, flag)
  task = tasks.for_config(folder.read_config())
  try:
    model = task.load_model(path)
  except (OSError, ValueError, TypeError, KeyError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UsageError(f"--{flag}: {path} cannot be loaded ({first}); train the run again or "
                     "pass another checkpoint") from None
  return model, task, folder.class_names()


def load_adapter(path: str):
  """Builds the model an adapter file was made from: its backbone (loaded as its config
  says), LoRA on the same layers, the adapter's factors and head; returns (model, task,
  class names)."""
  from kerasft.data import examples as data
  from kerasft.config import RunConfig
  from kerasft.methods import peft
  if not os.path.isfile(path):
    raise UsageError(f"--adapter: {path} does not exist")
  meta, arrays = peft.read_adapter(path)
  task = tasks.for_config(RunConfig.from_dict(meta["config"]))
  labels = meta["labels"]
  task, model = task.build_model(data.Examples([], [], labels, task.output), meta["stats"])
  peft.enable(model, task.config)
  peft.apply_adapter(model, meta, arrays)
  return model, task, labels


CHECK_EXAMPLES = 300  # validation images a converted file is compared on


def export_run(run_or_checkpoint: str, export_dir: str = "", version: int | None = None,
               overwrite: bool = False, formats: tuple[str, ...] = ("saved_model",),
               quantize: str = "none", calibration_examples: int = 200,
               tflite_io: str = "float") -> dict:
  """Exports a run's best checkpoint (or a .keras checkpoint inside a run folder, or an
  adapter file, .npz: `load_adapter`) in `formats` ("saved_model", "tflite", "onnx").

  export_dir defaults to the run's. TFLite and ONNX files (`kerasft.formats`) are
  converted from the SavedModel written here (or one in a scratch folder) into
  <export_dir>/<format>/<version>/, and compared with it on up to CHECK_EXAMPLES of the
  run's validation images; int8 calibrates on `calibration_examples` training images.
  Returns {format: path} and {format + "_check": the comparison (`Output.agreement`, with
  "on": which images)}; the checks also go into the model cards.
  """
  from kerasft.serving import formats as conversions
  if "onnx" in formats:
    conversions.check_onnx_installed()
  if run_or_checkpoint.endswith(".npz"):  # an adapter
    model, task, class_names = load_adapter(run_or_checkpoint)
    card = {**task.card(None), "adapter": os.path.abspath(run_or_checkpoint)}
  else:
    is_checkpoint = os.path.isfile(run_or_checkpoint)
    run_dir = os.path.dirname(run_or_checkpoint) if is_checkpoint else run_or_checkpoint
    model, task, class_names = load_run(run_dir, run_or_checkpoint if is_checkpoint else "")
    card = task.card(RunFolder(run_dir).metrics())
  task.check_formats(formats)
  export_dir = export_dir or task.config.export_dir
  converted = [f for f in formats if f != "saved_model"]
  if converted and version is None and "saved_model" not in formats:  # the next free one
    version = 1 + max([0, *serving.versions(export_dir), *(
        v for f in converted for v in serving.versions(os.path.join(export_dir, f)))])
  for fmt in converted:  # before any work: an existing version is kept without --overwrite
    if version is not None and os.path.exists(conversions.folder(export_dir, fmt, version)) \
        and not overwrite:
      raise UsageError(f"--version: {conversions.folder(export_dir, fmt, version)} already "
                       "exists; pass --overwrite to replace it")
  calibration = (task.sample_inputs(calibration_examples, "train") if quantize == "int8"
                 else (None, ""))
  result = {}
  with tempfile.TemporaryDirectory() as scratch:
    if "saved_model" in formats:
      saved = result["saved_model"] = task.export(model, class_names, export_dir, card,
                                                  version, overwrite)
      version = int(os.path.basename(saved))
    elif converted:
      saved = task.export(model, class_names, os.path.join(scratch, "m"), card, 1)
    if converted:
      images, checked_on = task.sample_inputs(CHECK_EXAMPLES)
      expected = client.saved_model_probabilities(saved, images, task.output)
    for fmt in converted:
      options = ({"quantize": quantize, "io": tflite_io, **(
          {"calibration": calibration[1]} if calibration[1] else {})} if fmt == "tflite"
                 else {"opset": conversions.ONNX_OPSET})
      content = (conversions.tflite_bytes(saved, quantize, calibration[0], tflite_io)
                 if fmt == "tflite" else conversions.onnx_bytes(saved))
      result[fmt], result[f"{fmt}_check"] = _write_converted(
          task.output, fmt, content, saved, export_dir, version, options,
          (images, expected, checked_on), overwrite, scratch)
  return result


def _write_converted(output, fmt: str, content: bytes, saved: str, export_dir: str,
                     version: int, options: dict, check_on: tuple, overwrite: bool,
                     scratch: str) -> tuple[str, dict]:
  """Checks a converted file against the SavedModel `saved` on check_on = (images, the
  SavedModel's main output on them, what they are), then writes it with its model card
  (`kerasft.formats.write`), recording it in `saved`'s card when that is in `export_dir`.
  Returns (its path, the check)."""
  from kerasft.serving import formats as conversions
  images, expected, checked_on = check_on
  trial = os.path.join(scratch, conversions.FILES[fmt])
  with open(trial, "wb") as f:
    f.write(content)
  outputs = conversions.RUNNERS[fmt](trial, images)
  check = {**output.agreement(output.main_output(outputs), expected), "on": checked_on}
  entry = {"file": f"{fmt}/{version}/{conversions.FILES[fmt]}", "bytes": len(content),
           **options, "check": check}
  card = {k: v for k, v in client.read_model_card(saved).items()
          if k not in ("signatures", "custom_ops")}
  path = conversions.write(export_dir, fmt, version, content,
                           os.path.join(saved, "assets", LABELS),
                           {**card, "outputs": sorted(outputs), "format": entry}, overwrite)
  if os.path.dirname(os.path.abspath(saved)) == os.path.abspath(export_dir):
    conversions.record(os.path.join(saved, serving.MODEL_CARD_FILE), fmt, entry)
  logging.info("%s: %s (%s)", fmt, path, check)
  return path, check


def explain_inputs(export: str, inputs: list, out_dir: str, batch_size: int = 32) -> list:
  """Explains each readable input's top class with the Keras model of the run that made
  `export` (its folder from the model card's "run"; checked to give the export's outputs):
  <out_dir>/explanations.html and the modality's files (images: Grad-CAM PNGs). Returns
  the written paths."""
  from kerasft.data import examples as data
  from kerasft.reporting import html as html_report
  version_dir = client.resolve(export)
  run_dir = (client.read_model_card(version_dir).get("run") or {}).get("model_dir", "")
  if not run_dir or not os.path.isdir(run_dir):
    raise UsageError(f"--explain: needs the run folder that made {version_dir} (its model "
                     f"card names {run_dir or 'none'}), which is not here; evaluate "
                     "--run_dir explains a run's validation data instead")
  model, task, class_names = load_run(run_dir)
  task.check_explain()
  files = data.Examples(list(inputs), [0] * len(inputs), class_names, task.output)
  outputs = reports.predict(model, task.pipeline(files, batch_size))[1]
  predict, _ = client.load_predictor(version_dir)
  served = client.predict_files(predict, task.client_items(files), batch_size)
  if np.max(np.abs(outputs - served)) > 1e-3:
    raise UsageError(f"--explain: {run_dir}/best.keras no longer computes what {version_dir} "
                     "serves (retrained or changed since); export the run again")
  class_ids = np.asarray(outputs).reshape(len(outputs), -1).argmax(-1).tolist()
  os.makedirs(out_dir, exist_ok=True)
  names = class_names if task.output.classifies else [f"{n} (regression)" for n in class_names]
  captions = [f"{names[c]} ({np.ravel(o)[c]:.3g})" for c, o in zip(class_ids, outputs)]
  cards = task.cards(model, files)(list(range(len(inputs))), class_ids, captions)
  page = os.path.join(out_dir, "explanations.html")
  html_report.write(page, f"kerasft explanations: {version_dir}", [(
      "Explanations", lambda: '<div class="gallery">' + "".join(cards) + "</div>")])
  return [page] + task.explanation_files(model, files, class_ids, out_dir)


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
  task_class, output = tasks.for_card(card)
  _check_slices(data_config, output)
  class_names = read_labels(version_dir)
  data_config = _label_columns(data_config, output, class_names, label_column_given)
  files = task_class.evaluation_examples(data_config, output, class_names, split)
  predict, _ = client.load_predictor(version_dir)
  outputs = client.predict_files(predict, task_class.client_items(files),
                                 data_config.batch_size)
  name = (f"{os.path.basename(os.path.dirname(os.path.abspath(version_dir)))}-"
          f"{os.path.basename(version_dir)}")
  labels = output.evaluation_labels(files)
  return _write(output, labels, outputs, class_names,
                output_dir or os.path.join("eval", name), None,
                _Seen(task_class, data_config, files, f"the export {version_dir}",
                      task_class.export_cards(files, card)))


def evaluate_run(run_dir: str, data_config, split: str = "test", output_dir: str = "",
                 label_column_given: bool = True) -> Evaluation:
  """Evaluates a run's best checkpoint on a `DataConfig`'s labelled data, or without a
  data source on the run's own validation data; with the run's training curves."""
  model, task, class_names = load_run(run_dir)
  _check_slices(data_config, task.output)
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
  labels, outputs = task.predict_examples(model, files, data_config.batch_size)
  return _write(task.output, labels, outputs, class_names,
                output_dir or os.path.join("eval", f"{task.config.name}-best"),
                RunFolder(run_dir).history(),
                _Seen(type(task), data_config, files, f"the run {run_dir} (best checkpoint)",
                      task.cards(model, files), model))


def _check_slices(data_config, output) -> None:
  if data_config.slice_column and not output.sliceable:
    raise UsageError(f"--slice_column: per-slice metrics are for multiclass, multilabel and "
                     f"regression models, not {output.name}")


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
  from kerasft.reporting import html as html_report, page as run_report
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
    from kerasft.reporting import calibration
    calibration.plot(outputs, labels, os.path.join(output_dir, "reliability.png"))
  d = seen.data_config
  data = html_report.ReportData(
      title=f"kerasft evaluation: {seen.model_name}", metrics=metrics,
      class_names=class_names, labels=np.asarray(labels), outputs=np.asarray(outputs),
      files=seen.files, out_dir=output_dir, model=seen.model, slices=extra.get("slices"),
      summary=[("model", seen.model_name), ("data", f"--{d.source} {getattr(d, d.source)}: "
                                                   f"{len(seen.files.inputs)} examples")])
  run_report.write(data, output, output.headline(metrics), seen.cards)
  return Evaluation(metrics, output.table(metrics), output_dir)
