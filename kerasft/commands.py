"""The settings of the entry points besides a training run's (`kerasft.config`).

Declared once like a run's settings (`kerasft.settings.setting`); `kerasft.cli` makes the
flags. Data flags of `evaluate` are `DataConfig`'s own (`EVALUATION_DATA`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from kerasft.errors import UsageError
from kerasft.settings import check_choices, positive_int, setting

_EXPORT_HELP = "An export: saved_models/NAME (newest version) or saved_models/NAME/N."
_RUN_DIR_HELP = "A training run's folder (its best checkpoint)."

# The DataConfig flags `evaluate` reads: one source and how to read it, no training options.
EVALUATION_DATA = ("data_dir", "csv", "path_column", "label_column", "tfrecord", "label_names",
                   "image_key", "label_key", "tfds", "tfds_data_dir", "text_dir",
                   "text_column", "text_key", "batch_size")


@dataclasses.dataclass(frozen=True)
class TrainActions:
  """What `kerasft.train` can do instead of training."""
  list_models: bool = setting(False, "Print the --model names with their input size and exit.")
  list_blocks: bool = setting(False, "Print the blocks of --model (for --unfreeze_blocks) and "
                              "exit.")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """Which model `kerasft.evaluate` evaluates and where its reports go."""
  export: str = setting("", _EXPORT_HELP)
  run_dir: str = setting("", _RUN_DIR_HELP)
  split: str = setting("test", "evaluate --tfds: the split to evaluate, e.g. test or "
                       "train[80%:].")
  output_dir: str = setting("", "evaluate: where to write the reports "
                            "[eval/<name>-<version>].")

  def __post_init__(self):
    if bool(self.export) == bool(self.run_dir):
      raise UsageError("--export or --run_dir: pass exactly one of them")


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """What `kerasft.predict` reports and where."""
  export: str = setting("", _EXPORT_HELP)
  top_k: int = setting(5, "predict: how many classes to report per input.")
  output: str = setting("", "predict: write the predictions to this .csv or .jsonl file.")
  batch_size: int = setting(32, "Global batch size.")

  def __post_init__(self):
    if not self.export:
      raise UsageError("--export: pass an export folder, saved_models/NAME or "
                       "saved_models/NAME/N")
    positive_int(self.top_k, "top_k")
    positive_int(self.batch_size, "batch_size")
    if self.output and not self.output.endswith((".csv", ".jsonl")):
      raise UsageError(f"--output: must end in .csv or .jsonl, got {self.output!r}")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """What `kerasft.export` writes from which run."""
  run_dir: str = setting("", _RUN_DIR_HELP)
  checkpoint: str = setting("", "export: a .keras checkpoint inside a run folder.")
  adapter: str = setting("", "export: an adapter file (train --peft=lora --save_adapter): "
                         "its LoRA factors and head applied to its backbone, merged.")
  export_dir: str = setting("", "The model's TF Serving folder; each run or export adds a "
                            "version [saved_models/<name>; export: the run's].")
  version: Optional[int] = setting(None, "export: the version number [the next free one].")
  overwrite: bool = setting(False, "Replace a finished run in --model_dir, or an existing "
                            "--version.")
  format: str = setting("saved_model", "export: what to write.",
                        choices=("saved_model", "tflite", "both"))
  quantize: str = setting("none", "export: TFLite quantization.",
                          choices=("none", "dynamic", "float16"))

  def __post_init__(self):
    check_choices(self)
    if sum(map(bool, (self.run_dir, self.checkpoint, self.adapter))) != 1:
      raise UsageError("--run_dir, --checkpoint or --adapter: pass exactly one of them")
    if self.adapter and not self.export_dir:
      raise UsageError("--export_dir: pass where the model made from --adapter goes")
    if self.version is not None:
      positive_int(self.version, "version")
