"""Evaluate an export or a training run on labelled images: metrics.json, a table, PNGs.

  python -m kerasft.evaluate --export=saved_models/NAME --data_dir=photos/
  python -m kerasft.evaluate --export=saved_models/NAME --csv=test.csv
  python -m kerasft.evaluate --export=saved_models/NAME --tfds=NAME --split=test
  python -m kerasft.evaluate --run_dir=runs/NAME      # its validation data by default

--data_dir may hold class folders or split folders (test/ is used first, then
validation/ or val/). The data flags mean what they mean in `kerasft.train`. Multilabel
and regression models get their own metrics (AUC and F1; MSE, MAE and R²).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasft.core import cli, errors  # noqa: E402
from kerasft.config import commands  # noqa: E402
from kerasft import config  # noqa: E402

cli.define_flags(commands.EvaluateConfig)
cli.define_flags(config.DataConfig, only=commands.EVALUATION_DATA)


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  settings = cli.from_flags(commands.EvaluateConfig)
  data = cli.from_flags(config.DataConfig, only=commands.EVALUATION_DATA)
  from kerasft.workflows.evaluate import evaluate_export, evaluate_run  # pylint: disable=g-import-not-at-top  (TensorFlow)
  evaluate = evaluate_export if settings.export else evaluate_run
  result = evaluate(settings.export or settings.run_dir, data, settings.split,
                    settings.output_dir, cli.given("label_column"))
  print(result.table)
  print(f"reports in {result.output_dir}")


if __name__ == "__main__":
  cli.run_app(main)
