"""Export a trained run or checkpoint as a TF Serving version and/or TFLite.

  python -m kerasft.export --run_dir=runs/NAME                       # next version
  python -m kerasft.export --run_dir=runs/NAME --version=3 --overwrite
  python -m kerasft.export --checkpoint=runs/NAME/best.keras --format=both --quantize=dynamic
  python -m kerasft.export --adapter=runs/NAME/adapter.npz --export_dir=saved_models/NAME2

The SavedModel goes to <export_dir>/<N>/; TFLite to <export_dir>/tflite/<N>/model.tflite
with labels.txt beside it, checked against the SavedModel on sample images.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasft import cli, commands, errors  # noqa: E402

cli.define_flags(commands.ExportConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  settings = cli.from_flags(commands.ExportConfig)
  from kerasft import artifacts  # pylint: disable=g-import-not-at-top
  result = artifacts.export_run(settings.run_dir or settings.checkpoint or settings.adapter,
                                settings.export_dir,
                                settings.version, settings.overwrite, settings.format,
                                settings.quantize)
  for kind in ("saved_model", "tflite"):
    if kind in result:
      print(f"{kind}: {result[kind]}")
  if "tflite" in result:
    agreement = result.get("tflite_top1_agreement")
    print(f"TFLite vs SavedModel on sample inputs: largest probability difference "
          f"{result['tflite_max_difference']:.2e}" + (
              "" if agreement is None else f", same top-1 class on {100 * agreement:.0f}%"))


if __name__ == "__main__":
  cli.run_app(main)
