"""kerasft: fine-tune Keras and TF Hub backbones on your own labelled data, export for TF Serving.

    import kerasft
    config = kerasft.RunConfig(model=kerasft.ModelConfig(model="mobilenet", image_size=96),
                               data=kerasft.DataConfig(data_dir="flowers/"))
    result = kerasft.train_classifier(config)  # .model, .history, .metrics, .export_path

`import kerasft` is cheap: TensorFlow is imported on first use of `train_classifier`.
"""

from kerasft.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from kerasft.errors import UsageError

__version__ = "0.1.0"
__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrainingConfig", "UsageError",
           "train_classifier"]


def __getattr__(name):
  if name == "train_classifier":
    from kerasft.run import train_classifier  # pylint: disable=g-import-not-at-top
    return train_classifier
  raise AttributeError(f"module 'kerasft' has no attribute {name!r}")
