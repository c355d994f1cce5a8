"""`kerasft.export`'s work: a run's checkpoint (or an adapter file) as a TF Serving version
and/or LiteRT and ONNX files, each converted file checked against the SavedModel."""

from __future__ import annotations

import os
import tempfile

from absl import logging

from kerasft.core.errors import UsageError
from kerasft.core.files import LABELS
from kerasft.serving import client, formats as conversions, versions as serving
from kerasft.training.run_folder import RunFolder
from kerasft.workflows.load import load_adapter, load_run


CHECK_EXAMPLES = 300  # validation images a converted file is compared on


def export_run(run_or_checkpoint: str, export_dir: str = "", version: int | None = None,
               overwrite: bool = False, formats: tuple[str, ...] = ("saved_model",),
               quantize: str = "none", calibration_examples: int = 200,
               tflite_io: str = "float") -> dict:
  """Exports a run's best checkpoint (or a .keras checkpoint inside a run folder, or an
  adapter file, .npz: `load_adapter`) in `formats` ("saved_model", "tflite", "onnx").

  export_dir defaults to the run's. TFLite and ONNX files (`kerasft.serving.formats`) are
  converted from the SavedModel written here (or one in a scratch folder) into
  <export_dir>/<format>/<version>/, and compared with it on up to CHECK_EXAMPLES of the
  run's validation images; int8 calibrates on `calibration_examples` training images.
  Returns {format: path} and {format + "_check": the comparison (`Output.agreement`, with
  "on": which images)}; the checks also go into the model cards.
  """
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
      saved = result["saved_model"] = serving.export_model(task, model, class_names,
                                                           export_dir, card, version,
                                                           overwrite)
      version = int(os.path.basename(saved))
    elif converted:
      saved = serving.export_model(task, model, class_names, os.path.join(scratch, "m"),
                                   card, 1)
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
  (`kerasft.serving.formats.write`), recording it in `saved`'s card when that is in `export_dir`.
  Returns (its path, the check)."""
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
