"""kerasft: fine-tune Keras and TF Hub backbones on your own labelled data, export for TF Serving.

    import kerasft
    config = kerasft.RunConfig(model=kerasft.ModelConfig(model="mobilenet", image_size=96),
                               data=kerasft.DataConfig(data_dir="flowers/"))
    result = kerasft.train_classifier(config)  # .model, .history, .metrics, .export_path
    search = kerasft.tune(config, time_budget="10m")  # .leaderboard, .best_config, ...

`import kerasft` is cheap: TensorFlow is imported on first use of `train_classifier`.
"""

from kerasft.config.methods import MethodsConfig
from kerasft.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from kerasft.core.errors import UsageError

__version__ = "0.1.0"
__all__ = ["DataConfig", "MethodsConfig", "ModelConfig", "RunConfig", "TrainingConfig", "UsageError",
           "train_classifier", "tune"]


def tune(config, space: str = "", time_budget: str = "", **kwargs):
  """Searches fine-tuning recipes for `config`'s data (`kerasft.tuning.tune`): space, a
  space file; time_budget, e.g. "10m"; kwargs: max_trials, models, search, test_dir,
  test_csv. Returns a `TuneResult` (leaderboard, best_config, export_path, test)."""
  from kerasft.tuning import tune as search
  return search(config, space=space, time_budget=time_budget, **kwargs)


def __getattr__(name):
  if name == "train_classifier":
    from kerasft.workflows.train import train_classifier
    return train_classifier
  raise AttributeError(f"module 'kerasft' has no attribute {name!r}")
