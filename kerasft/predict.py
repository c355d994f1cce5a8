"""Classify image files with an export: a table on screen, or a CSV / JSON Lines file.

  python -m kerasft.predict --export=saved_models/all-minilm-l6-v2 "first text" "second"

Multiclass exports give the top-k classes, multilabel exports the top-k labels by score,
regression exports their predicted targets. A text model's export takes the texts
themselves as arguments.

  python -m kerasft.predict --export=saved_models/NAME photos/ 'more/*.jpg' one.png
  python -m kerasft.predict --export=saved_models/NAME/3 --top_k=3 --output=preds.csv photos/

Folders are searched recursively. Uses only the export (its serving_bytes signature).
Files that are missing or not readable images are reported on their own row, not fatal.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

from kerasft import errors  # noqa: E402

flags.DEFINE_string("export", "", "An export: saved_models/NAME (newest version) or "
                    "saved_models/NAME/N.")
flags.DEFINE_integer("top_k", 5, "How many classes to report per image.")
flags.DEFINE_string("output", "", "Write the predictions to this .csv or .jsonl file.")
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
FLAGS = flags.FLAGS


def main(argv):
  if not FLAGS.export:
    raise errors.UsageError("--export: pass an export folder, saved_models/NAME or "
                            "saved_models/NAME/N")
  if len(argv) < 2:
    raise errors.UsageError("inputs: pass image files, folders or globs (for a text model: "
                            "texts) after the flags")
  if FLAGS.top_k <= 0:
    raise errors.UsageError(f"--top_k: must be a positive integer, got {FLAGS.top_k}")
  if FLAGS.output and not FLAGS.output.endswith((".csv", ".jsonl")):
    raise errors.UsageError(f"--output: must end in .csv or .jsonl, got {FLAGS.output!r}")
  from kerasft import serving  # pylint: disable=g-import-not-at-top
  rows = serving.classify_files(FLAGS.export, argv[1:], FLAGS.top_k, FLAGS.batch_size)
  failed = sum(1 for r in rows if r["error"])
  from kerasft import reports  # pylint: disable=g-import-not-at-top
  if FLAGS.output:
    reports.write_predictions(rows, FLAGS.output)
    print(f"{len(rows) - failed} predictions written to {FLAGS.output}")
  else:
    for row in rows:
      if row["error"]:
        print(f"{row.get('file')}\tERROR {row['error']}")
      else:
        print(row.get("file", row.get("text")) + "\t" + "  ".join(
            f"{name} {float(value):.4f}" for name, value in reports.prediction_cells(row)))
  if failed:
    print(f"{failed} of {len(rows)} inputs could not be read", file=sys.stderr)


if __name__ == "__main__":
  errors.run_app(main)
