"""The run report's cost and what --calibrate=temperature does, on both shared data sets.

  python benchmarks/report.py [--markdown] [--settings=image,text]

Per setting, two runs of the recipe (flags/fashion_mnist_small.cfg; flags/fortunes_minilm.cfg),
without and with --calibrate=temperature, each `python -m kerasft.train` in its own process:
  - the seconds report.html took (the log's "report.html written in X s") against the
    run's wall time (target: under 10%);
  - the ECE (15 bins) of each export on the test split (`kerasft.evaluate --export`, which
    computes it on the data it evaluates), and the temperature the run fit.
"""

import json
import os
import re
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import small_data  # noqa: E402  pylint: disable=wrong-import-position

flags.DEFINE_list("settings", ["image", "text"], "Settings to run.")
FLAGS = flags.FLAGS
SETTINGS = {  # flagfile, test data flag
    "image": ("flags/fashion_mnist_small.cfg",
              f"--data_dir={os.path.join(small_data.FASHION, 'test')}"),
    "text": ("flags/fortunes_minilm.cfg",
             f"--csv={os.path.join(small_data.FORTUNES, 'test.csv')}"),
}


def _row(setting, calibrate, work):
  flagfile, test = SETTINGS[setting]
  name = f"{setting}-{calibrate}"
  run, seconds = small_data.run_kerasft("train", f"--flagfile={flagfile}", f"--model_dir={work}/{name}",
                      f"--export_dir={work}/export/{name}", f"--calibrate={calibrate}")
  report = float(re.search(r"report.html written in ([\d.]+) s", run.stderr).group(1))
  metrics = json.load(open(f"{work}/{name}/metrics.json"))
  small_data.run_kerasft("evaluate", f"--export={work}/export/{name}", test, f"--output_dir={work}/eval/{name}")
  tested = json.load(open(f"{work}/eval/{name}/metrics.json"))
  t = metrics["calibration"].get("temperature")
  return [setting, calibrate, f"{seconds:.1f} s", f"{report:.1f} s ({report / seconds:.1%})",
          "-" if t is None else f"{t:.2f}", f"{metrics['calibration']['ece']:.3f}",
          f"{tested['calibration']['ece']:.3f}", f"{tested['accuracy']:.3f}"]


def main(argv):
  del argv
  work = tempfile.mkdtemp(prefix="kerasft-report-")
  rows = []
  for setting in FLAGS.settings:
    for calibrate in ("none", "temperature"):
      rows.append(_row(setting, calibrate, work))
      print(json.dumps(rows[-1]), file=sys.stderr)
  small_data.print_table(["setting", "--calibrate", "run wall time", "report.html",
                          "temperature", "validation ECE (before T)", "test ECE",
                          "test accuracy"], rows, FLAGS.markdown)


if __name__ == "__main__":
  app.run(main)
