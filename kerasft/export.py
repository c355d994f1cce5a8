"""Export a trained run or checkpoint as a TF Serving version and/or TFLite.

  python -m kerasft.export --run_dir=runs/NAME                       # next version
  python -m kerasft.export --run_dir=runs/NAME --version=3 --overwrite
  python -m kerasft.export --checkpoint=runs/NAME/best.keras --format=both --quantize=dynamic
  python -m kerasft.export --run_dir=runs/NAME --format=tflite --quantize=int8 --tflite_io=uint8
  python -m kerasft.export --run_dir=runs/NAME --format=all            # + ONNX (onnx extra)
  python -m kerasft.export --adapter=runs/NAME/adapter.npz --export_dir=saved_models/NAME2

The SavedModel goes to <export_dir>/<N>/; TFLite to <export_dir>/tflite/<N>/model.tflite
and ONNX to <export_dir>/onnx/<N>/model.onnx, each with labels.txt and a model card beside
it, checked against the SavedModel on the run's validation images (`kerasft.serving.formats`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasft.core import cli, errors  # noqa: E402
from kerasft.config import commands  # noqa: E402

cli.define_flags(commands.ExportConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  settings = cli.from_flags(commands.ExportConfig)
  from kerasft.workflows.export import export_run  # pylint: disable=g-import-not-at-top  (TensorFlow)
  result = export_run(
      settings.run_dir or settings.checkpoint or settings.adapter, settings.export_dir,
      settings.version, settings.overwrite, settings.formats, settings.quantize,
      settings.calibration_examples or 200, settings.tflite_io, settings.min_agreement)
  for fmt in settings.formats:
    print(f"{fmt}: {result[fmt]}")
    if f"{fmt}_check" in result:
      print(f"  {fmt} vs SavedModel: {describe(result[f'{fmt}_check'])}")
    if f"{fmt}_choice" in result:
      print(f"  {describe_choice(result[f'{fmt}_choice'])}")


def describe(check: dict) -> str:
  """One line for a converted file's check (`kerasft.workflows.export.export_run`)."""
  parts = [f"largest difference {check['max_difference']:.2e}"]
  for key, what in (("top1_agreement", "same top-1 class"),
                    ("label_agreement", "same label decisions")):
    if key in check:
      parts.append(f"{what} on {100 * check[key]:.1f}%")
  return (", ".join(parts) + f" of {check['on']}; {check['ms_per_image']:.1f} ms per image "
          "on this CPU")


def describe_choice(choice: dict) -> str:
  """One line for --quantize=int8's choice (`kerasft.workflows.export._int8_choice`)."""
  tried = "; ".join(f"{t['variant']}: " + (t["error"][:80] if "error" in t else (
      f"{t['bytes'] / 1e6:.2f} MB" + ("" if t["agreement"] is None else
                                      f", keeps {100 * t['agreement']:.1f}%")))
                    for t in choice["tried"])
  floats = f" (float: {', '.join(choice['float_ops'])})" if choice.get("float_ops") else ""
  verdict = "" if choice["met"] else (f"; NONE reaches --min_agreement="
                                      f"{choice['min_agreement']:g}: kept the closest")
  return f"int8 choice: {choice['chosen']}{floats}{verdict} [tried {tried}]"


if __name__ == "__main__":
  cli.run_app(main)
