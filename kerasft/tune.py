"""Search fine-tuning recipes (backbone, depth, rates, regularization) within a budget.

  python -m kerasft.tune --data_dir=flowers/ --time_budget=10m
  python -m kerasft.tune --data_dir=flowers/ --models=mobilenet,efficientnet_b0 \
      --search=bayesian --max_trials=30 --space=space.json
  python -m kerasft.train --flagfile=runs/mobilenet-tune/best.cfg   # repeat the winner

Takes kerasft.train's data, task and export flags. The search folder (--model_dir, default
runs/<name>-tune) holds trials.csv, leaderboard.txt, tune.png, hparams/ (TensorBoard),
best.cfg and KerasTuner's state: the same command resumes a killed search. The winner is
exported to --export_dir. Several processes search together with KerasTuner's
KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT (README).
"""

import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasft.core import cli, errors  # noqa: E402
from kerasft.config import commands  # noqa: E402
from kerasft import config  # noqa: E402

cli.define_flags(config.RunConfig)
cli.define_flags(commands.TuneConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  run_config = cli.from_flags(config.RunConfig)
  settings = cli.from_flags(commands.TuneConfig)
  from kerasft.tuning import tuner
  result = tuner.tune(run_config, settings)
  if not result.export_path:  # a KerasTuner worker: the chief reports
    return
  best = result.leaderboard[0]
  print(f"best of {len(result.leaderboard)} trials: trial {best.trial_id} ({best.model}), "
        f"validation {best.value:.4f}; flags in "
        f"{os.path.join(tuner.search_folder(run_config), 'best.cfg')}; exported to "
        f"{result.export_path}")
  for label, figures in result.test.items():
    print(f"test, {label}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


class _Callable(types.ModuleType):
  """`import kerasft.tune` replaces the package's `kerasft.tune` function with this module;
  calling the module calls the function."""

  def __call__(self, *args, **kwargs):
    from kerasft.tuning import tuner
    return tuner.tune_with(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable

if __name__ == "__main__":
  cli.run_app(main)
