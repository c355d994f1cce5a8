"""Classify image files with an export: a table on screen, or a CSV / JSON Lines file.

  python -m kerasft.predict --export=saved_models/all-minilm-l6-v2 "first text" "second"

Multiclass exports give the top-k classes, multilabel exports the top-k labels by score,
regression exports their predicted targets. A text model's export takes the texts
themselves as arguments.

  python -m kerasft.predict --export=saved_models/NAME photos/ 'more/*.jpg' one.png
  python -m kerasft.predict --export=saved_models/NAME/3 --top_k=3 --output=preds.csv photos/

Folders are searched recursively. Uses only the export (its serving_bytes signature), except
--explain, which also needs the run folder that made it (Grad-CAM, word attributions):

  python -m kerasft.predict --export=saved_models/NAME --explain --explain_dir=why/ photos/

A segmentation export's rows are the classes covering most of each image (their shares of
its pixels); --mask_dir=DIR writes each image's class map as DIR/<name>.png. A detection
export's rows are each image's boxes (class, score, xmin, ymin, xmax, ymax in pixels; a CSV
has a row per box, in the layout --task=detection --csv reads); --draw_dir=DIR writes each
image with its boxes drawn as DIR/<name>.png.

Files that are missing or not readable images are reported on their own row, not fatal.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasft.core import cli, errors  # noqa: E402
from kerasft.config import commands  # noqa: E402
from kerasft.reporting import metrics as reports  # noqa: E402

cli.define_flags(commands.PredictConfig)


def main(argv):
  settings = cli.from_flags(commands.PredictConfig)
  if len(argv) < 2:
    raise errors.UsageError("inputs: pass image files, folders or globs (for a text model: "
                            "texts) after the flags")
  from kerasft.workflows import predict as predicting  # pylint: disable=g-import-not-at-top  (TensorFlow)
  rows = predicting.predict(settings, argv[1:])
  failed = sum(1 for r in rows if r["error"])
  if settings.output:
    reports.write_predictions(rows, settings.output)
    print(f"{len(rows) - failed} predictions written to {settings.output}")
  else:
    for row in rows:
      name = row.get("file", row.get("text"))
      print(f"{name}\tERROR {row['error']}" if row["error"] else name + "\t" + "  ".join(
          f"{label} {float(value):.4f}" for label, value in reports.prediction_cells(row)))
  if settings.mask_dir:
    print(f"{sum(1 for r in rows if not r['error'])} class maps written to {settings.mask_dir}")
  if settings.draw_dir:
    print(f"{sum(1 for r in rows if not r['error'])} images with their boxes drawn in "
          f"{settings.draw_dir}")
  readable = [r.get("file", r.get("text")) for r in rows if not r["error"]]
  if settings.explain and readable:
    written = predicting.explain_inputs(settings.export, readable, settings.explain_dir,
                                        settings.batch_size)
    print(f"explanations of {len(readable)} inputs in {written[0]}"
          + (f" and {len(written) - 1} PNGs" if len(written) > 1 else ""))
  if failed:
    print(f"{failed} of {len(rows)} inputs could not be read", file=sys.stderr)


if __name__ == "__main__":
  cli.run_app(main)
