"""Export a trained run or checkpoint as a TF Serving version and/or TFLite.

  python -m kerasft.export --run_dir=runs/NAME                       # next version
  python -m kerasft.export --run_dir=runs/NAME --version=3 --overwrite
  python -m kerasft.export --checkpoint=runs/NAME/best.keras --format=both --quantize=dynamic

The SavedModel goes to <export_dir>/<N>/; TFLite to <export_dir>/tflite/<N>/model.tflite
with labels.txt beside it, checked against the SavedModel on sample images.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

from kerasft import errors  # noqa: E402

FORMATS = ("saved_model", "tflite", "both")
flags.DEFINE_string("run_dir", "", "A training run's folder; its best checkpoint is exported.")
flags.DEFINE_string("checkpoint", "", "A .keras checkpoint inside a run folder.")
flags.DEFINE_string("export_dir", "", "The model's TF Serving folder [the run's --export_dir].")
flags.DEFINE_integer("version", None, "The version number [the next free one].")
flags.DEFINE_bool("overwrite", False, "Replace an existing --version.")
flags.DEFINE_enum("format", "saved_model", FORMATS, "What to write.")
flags.DEFINE_enum("quantize", "none", ("none", "dynamic", "float16"), "TFLite quantization.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  if bool(FLAGS.run_dir) == bool(FLAGS.checkpoint):
    raise errors.UsageError("--run_dir or --checkpoint: pass exactly one of them")
  if FLAGS.version is not None and FLAGS.version <= 0:
    raise errors.UsageError(f"--version: must be a positive integer, got {FLAGS.version}")
  from kerasft import run  # pylint: disable=g-import-not-at-top

  result = run.export_run(FLAGS.run_dir or FLAGS.checkpoint, FLAGS.export_dir, FLAGS.version,
                          FLAGS.overwrite, FLAGS.format, FLAGS.quantize)
  for kind in ("saved_model", "tflite"):
    if kind in result:
      print(f"{kind}: {result[kind]}")
  if "tflite" in result:
    print(f"TFLite vs SavedModel on sample images: largest probability difference "
          f"{result['tflite_max_difference']:.2e}, same top-1 class on "
          f"{100 * result['tflite_top1_agreement']:.0f}%")


if __name__ == "__main__":
  errors.run_app(main)
