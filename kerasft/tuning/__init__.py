"""Automatic fine-tuning: `kerasft.tune` finds the backbone, depth and recipe.

    from kerasft import tune, RunConfig, DataConfig
    result = tune(RunConfig(data=DataConfig(data_dir="flowers/")), time_budget="10m")

`space` (the search space and a trial's config), `search` (probes, trials, the oracle),
`tuner` (KerasTuner's tuner running kerasft trials; `tune`, and `tune_with` for keyword
settings), `report` (the search folder's outputs, the winner's export, `TuneResult`).
"""
