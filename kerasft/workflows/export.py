"""`kerasft.export`'s work: a run's checkpoint (or an adapter file) as a TF Serving version
and/or LiteRT and ONNX files, each converted file checked against the SavedModel."""

from __future__ import annotations

import os
import tempfile
import time

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
               tflite_io: str = "float", min_agreement: float = 0.98) -> dict:
  """Exports a run's best checkpoint (or a .keras checkpoint inside a run folder, or an
  adapter file, .npz: `load_adapter`) in `formats` ("saved_model", "tflite", "onnx").

  export_dir defaults to the run's. TFLite and ONNX files (`kerasft.serving.formats`) are
  converted from the SavedModel written here (or one in a scratch folder) into
  <export_dir>/<format>/<version>/, and compared with it on up to CHECK_EXAMPLES of the
  run's validation images; int8 calibrates on `calibration_examples` training images and
  keeps `min_agreement` of the SavedModel's answers on them (`_int8_choice`).
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
      content, options = _convert(task.output, fmt, saved, (quantize, tflite_io, calibration),
                                  (images, expected, min_agreement), scratch)
      if "chosen" in options:  # int8's choice
        result[f"{fmt}_choice"] = options
      result[fmt], result[f"{fmt}_check"] = _write_converted(
          task.output, fmt, content, saved, export_dir, version, options,
          (images, expected, checked_on), overwrite, scratch)
  return result


def _convert(output, fmt: str, saved: str, quantization: tuple, check_on: tuple,
             scratch: str) -> tuple[bytes, dict]:
  """(the file's bytes, the card's record of how it was made) of format `fmt` from the
  SavedModel `saved`; quantization = (quantize, tflite_io, (calibration images, what they
  are)); check_on = (images, the SavedModel's main output, --min_agreement) for int8's
  choice (`_int8_choice`)."""
  if fmt != "tflite":
    return conversions.onnx_bytes(saved), {"opset": conversions.ONNX_OPSET}
  quantize, io, (calibration, calibrated_on) = quantization
  options = {"quantize": quantize, "io": io, **(
      {"calibration": calibrated_on} if calibrated_on else {})}
  if quantize != "int8":
    return conversions.tflite_bytes(saved, quantize, calibration, io), options
  content, chosen = _int8_choice(output, saved, calibration, io, check_on, scratch)
  return content, {**options, **chosen}


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
  started = time.perf_counter()
  outputs = conversions.RUNNERS[fmt](trial, images)
  check = {**output.agreement(output.main_output(outputs), expected), "on": checked_on,
           "ms_per_image": 1000 * (time.perf_counter() - started) / max(len(images), 1)}
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


SELECTIVE_STEPS = (1, 2, 3, 4, 5, 6, 8, 12, 16)  # ops left float, tried in this order


def _agreement(output, content: bytes, images, expected, scratch: str) -> float | None:
  """The share of `expected` (the SavedModel's main output) a LiteRT file's answers keep
  (`Output.agreement`'s "*_agreement"), None for outputs without answers (numbers)."""
  trial = os.path.join(scratch, "trial.tflite")
  with open(trial, "wb") as f:
    f.write(content)
  check = output.agreement(output.main_output(conversions.run_tflite(trial, images)), expected)
  shares = [v for k, v in check.items() if k.endswith("_agreement")]
  return shares[0] if shares else None


def _int8_choice(output, saved: str, calibration, io: str, check_on: tuple, scratch: str):
  """The most compressed LiteRT file that keeps check_on = (images, the SavedModel's main
  output on them, the floor) of its answers: full int8, then selective int8 (the ops the
  quantization debugger ranks worst left in float, fewest first: SELECTIVE_STEPS), then
  16x8, then float16. Never silently below the floor: when every variant misses it, the
  one that keeps most is kept, logged as a warning and recorded ("met": false). uint8 io
  and outputs without answers (numbers): full int8 alone. Returns (its bytes, the card's
  record of the choice)."""
  images, expected, floor = check_on
  tried, made = [], []

  def attempt(name, make) -> bool:
    """Makes and checks one variant; whether it is kept (meets the floor)."""
    try:
      content = make()
    except UsageError as e:  # a variant the converter cannot make is skipped, and said
      tried.append({"variant": name, "error": str(e)})
      logging.info("int8 choice: %s: %s", name, e)
      return False
    try:
      share = _agreement(output, content, images, expected, scratch)
    except (RuntimeError, ValueError) as e:  # converted, but LiteRT cannot run it here
      tried.append({"variant": name, "error": f"LiteRT cannot run it: {str(e)[:200]}"})
      logging.info("int8 choice: %s: LiteRT cannot run it (%s)", name, str(e)[:200])
      return False
    tried.append({"variant": name, "bytes": len(content), "agreement": share})
    made.append((-1.0 if share is None else share, len(tried) - 1, content))
    logging.info("int8 choice: %s, %d bytes, keeps %s of the float model's answers on %d "
                 "validation images (floor %.3f)", name, len(content),
                 "-" if share is None else f"{share:.4f}", len(images), floor)
    return share is None or share >= floor

  float_ops = {}  # the selective variants' names -> the ops they leave in float
  kept = attempt("int8", lambda: conversions.tflite_bytes(saved, "int8", calibration, io))
  if not kept and io == "float":
    ranking = conversions.quantization_ranking(saved, calibration, scratch)
    float_ops = {f"int8, {n} ops in float": [name for name, _, _ in ranking[:n]]
                 for n in SELECTIVE_STEPS if n < len(ranking)}
    variants = [(variant, lambda ops=ops: conversions.selective_int8_bytes(
        saved, calibration, ops, scratch)) for variant, ops in float_ops.items()]
    variants += [("int16x8", lambda: conversions.tflite_bytes(saved, "int16x8", calibration)),
                 ("float16", lambda: conversions.tflite_bytes(saved, "float16"))]
    kept = any(attempt(name, make) for name, make in variants)  # stops at the first kept
  if not made:
    raise UsageError(tried[0]["error"])
  share, index, content = made[-1] if kept else max(made)
  chosen = tried[index]
  met = chosen["agreement"] is None or chosen["agreement"] >= floor
  if not met:
    logging.warning("int8 choice: no variant keeps %.3f of the float model's answers on the "
                    "validation images; kept %s (%.4f)%s", floor, chosen["variant"], share,
                    " (--tflite_io=uint8 allows full int8 alone)" if io != "float" else "")
  record = {"chosen": chosen["variant"], "min_agreement": floor, "met": met, "tried": tried}
  if chosen["variant"] in float_ops:
    record["float_ops"] = float_ops[chosen["variant"]]
  return content, record
