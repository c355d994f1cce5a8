"""kerasft: fine-tune Keras and TF Hub backbones on your own labelled data, export for TF Serving.

    import kerasft
    config = kerasft.RunConfig(model=kerasft.ModelConfig(model="mobilenet", image_size=96),
                               data=kerasft.DataConfig(data_dir="flowers/"))
    result = kerasft.run_training(config)  # .model, .history, .metrics, .export_path
    search = kerasft.tune(config, time_budget="10m")  # .leaderboard, .best_config, ...

`import kerasft` is cheap: TensorFlow is imported on first use of `run_training`.
`train_classifier` is the deprecated name of `run_training` (it trains every task).
"""

import warnings

from kerasft.config import (DataConfig, MethodsConfig, ModelConfig, RunConfig, TaskData,
                            TaskSettings, TrainingConfig)
from kerasft.core.errors import UsageError

__version__ = "0.1.0"
__all__ = ["DataConfig", "MethodsConfig", "ModelConfig", "RunConfig", "TaskData",
           "TaskSettings", "TrainingConfig", "UsageError", "run_training", "train_classifier",
           "tune"]


def run_training(config, **kwargs):
  """Trains and exports a model as `config` (a `RunConfig`) says
  (`kerasft.workflows.train.run_training`); returns a `TrainResult`."""
  from kerasft.workflows import train  # pylint: disable=g-import-not-at-top  (TensorFlow)
  return train.run_training(config, **kwargs)


def train_classifier(config, **kwargs):
  """Deprecated: `run_training` (the name said "classifier"; it trains every task)."""
  warnings.warn("kerasft.train_classifier is deprecated; use kerasft.run_training",
                DeprecationWarning, stacklevel=2)
  return run_training(config, **kwargs)


def tune(config, space: str = "", time_budget: str = "", **kwargs):
  """Searches fine-tuning recipes for `config`'s data (`kerasft.tuning.tuner.tune_with`):
  space, a space file; time_budget, e.g. "10m"; kwargs: max_trials, models, search,
  test_dir, test_csv. Returns a `TuneResult` (leaderboard, best_config, export_path,
  test)."""
  from kerasft.tuning import tuner  # pylint: disable=g-import-not-at-top  (TensorFlow)
  return tuner.tune_with(config, space=space, time_budget=time_budget, **kwargs)
