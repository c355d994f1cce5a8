"""Automatic fine-tuning: `kerasft.tune` finds the backbone, depth and recipe.

    from kerasft import tune, RunConfig, DataConfig
    result = tune(RunConfig(data=DataConfig(data_dir="flowers/")), time_budget="10m")

`space` (the search space and a trial's config), `search` (probes, trials, the oracle),
`tuner` (KerasTuner's tuner running kerasft trials; `tune`), `report` (the search folder's
outputs and the winner's export).
"""

from __future__ import annotations


def tune(config, space: str = "", time_budget: str = "", max_trials: int = 0,
         models: str | None = None, search: str = "hyperband", test_dir: str = "",
         test_csv: str = "", verbose=0):
  """Searches fine-tuning recipes for a `RunConfig`'s data (`kerasft.tuning.tuner.tune`);
  the keywords are `kerasft.commands.TuneConfig`'s (space: a space file's path). Returns a
  `TuneResult`: the leaderboard (best first), the best `RunConfig`, the export path and
  the test figures."""
  from kerasft.config.commands import TuneConfig
  from kerasft.tuning import tuner
  settings = TuneConfig(models=models, time_budget=time_budget, max_trials=max_trials,
                        search=search, space=space, test_dir=test_dir, test_csv=test_csv)
  return tuner.tune(config, settings, verbose)
