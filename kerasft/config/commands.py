"""The settings of the entry points besides a training run's (`kerasft.config`).

Declared once like a run's settings (`kerasft.core.settings.setting`); `kerasft.core.cli` makes the
flags. Data flags of `evaluate` are `DataConfig`'s own (`EVALUATION_DATA`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

import kerasft.config.backbones as backbones
from kerasft.core.errors import UsageError
from kerasft.core.files import check_writable
from kerasft.core.settings import check, check_choices, positive_int, setting
from kerasft.tasks.settings import TaskData

# --format -> what it writes, the SavedModel first (the others are converted from it).
FORMATS = {"saved_model": ("saved_model",), "tflite": ("tflite",), "onnx": ("onnx",),
           "both": ("saved_model", "tflite"), "all": ("saved_model", "tflite", "onnx")}
_EXPORT_HELP = "An export: saved_models/NAME (newest version) or saved_models/NAME/N."
_RUN_DIR_HELP = "A training run's folder (its best checkpoint)."

# The DataConfig flags `evaluate` reads: one source and how to read it, no training options.
EVALUATION_DATA = ("data_dir", "csv", "path_column", "label_column", "slice_column", "tfrecord",
                   "label_names", "image_key", "label_key", "tfds", "tfds_data_dir",
                   "text_dir", "text_column", "text_key", "batch_size"
                   ) + TaskData.evaluation_fields()  # and each task's own sources


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
                       "train[80%:] (--task=segmentation's --data_dir: its sub-folder, when "
                       "the folder holds no images/).")
  output_dir: str = setting("", "evaluate: where to write the reports "
                            "[eval/<name>-<version>].")

  def __post_init__(self):
    if bool(self.export) == bool(self.run_dir):
      raise UsageError("--export or --run_dir: pass exactly one of them")
    check_writable(self.output_dir, "output_dir")


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """What `kerasft.predict` reports and where."""
  export: str = setting("", _EXPORT_HELP)
  top_k: int = setting(5, "predict: how many classes to report per input.")
  output: str = setting("", "predict: write the predictions to this .csv or .jsonl file.")
  batch_size: int | str = setting(32, "Images or texts per batch (auto: 32, as evaluate "
                                  "reads it).")
  explain: bool = setting(False, "predict: explain each input's top class with the run "
                          "that made the export (its folder, from the model card): Grad-CAM "
                          "over images, word attributions for texts, in --explain_dir.")
  explain_dir: str = setting("explanations", "predict --explain: where explanations.html "
                             "(and, for images, <file>.gradcam.png) go.")
  mask_dir: str = setting("", "predict with a segmentation export: write each image's class "
                          "map here as <file>.png (a palette PNG whose indices are the "
                          "classes, at the image's size).")
  draw_dir: str = setting("", "predict with a detection export: write each image with its "
                          "boxes drawn and labelled here as <file>.png.")

  def __post_init__(self):
    if not self.export:
      raise UsageError("--export: pass an export folder, saved_models/NAME or "
                       "saved_models/NAME/N")
    positive_int(self.top_k, "top_k")
    if self.batch_size == "auto":
      object.__setattr__(self, "batch_size", 32)
    positive_int(self.batch_size, "batch_size")
    if self.output and not self.output.endswith((".csv", ".jsonl")):
      raise UsageError(f"--output: must end in .csv or .jsonl, got {self.output!r}")
    if self.output and os.path.isdir(self.output):
      raise UsageError(f"--output: {self.output} is a folder; name a .csv or .jsonl file")
    check_writable(os.path.dirname(os.path.abspath(self.output)) if self.output else "",
                   "output")
    check_writable(self.mask_dir, "mask_dir")
    check_writable(self.draw_dir, "draw_dir")
    if self.explain:
      check_writable(self.explain_dir, "explain_dir")
    elif self.explain_dir != "explanations":
      raise UsageError("--explain_dir: only goes with --explain")


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
  format: str = setting("saved_model", "export: what to write: the TF Serving SavedModel, a "
                        "LiteRT (TFLite) file, an ONNX file (the onnx extra), both = "
                        "saved_model+tflite, all = the three.",
                        choices=tuple(FORMATS))
  quantize: str = setting("none", "export: TFLite quantization: dynamic (int8 weights), "
                          "float16 (float16 weights), int8 (weights and activations, "
                          "calibrated on the run's training images).",
                          choices=("none", "dynamic", "float16", "int8"))
  calibration_examples: Optional[int] = setting(
      None, "export --quantize=int8: how many of the run's training images calibrate the "
      "activation ranges [200].")
  min_agreement: float = setting(
      0.98, "export --quantize=int8: the share of the float model's answers (top-1 classes; "
      "label decisions; pixels' classes) the file must keep on the run's validation images: "
      "below it, the worst-quantized layers stay float (fewest first), then 16x8, then "
      "float16 [0: full int8 whatever it keeps].")
  tflite_io: str = setting("float", "export --quantize=int8: the TFLite file's input and "
                           "output type: float (float32 pixels 0..255 in, float32 out) or "
                           "uint8 (uint8 pixels in, uint8 outputs with their scale in the "
                           "file, for integer-only accelerators).", choices=("float", "uint8"))

  @property
  def formats(self) -> tuple[str, ...]:
    """The formats --format names, SavedModel first."""
    return FORMATS[self.format]

  def __post_init__(self):
    check_choices(self)
    if sum(map(bool, (self.run_dir, self.checkpoint, self.adapter))) != 1:
      raise UsageError("--run_dir, --checkpoint or --adapter: pass exactly one of them")
    if self.adapter and not self.export_dir:
      raise UsageError("--export_dir: pass where the model made from --adapter goes")
    check_writable(self.export_dir, "export_dir")
    if self.version is not None:
      positive_int(self.version, "version")
    if self.quantize != "none" and "tflite" not in self.formats:
      raise UsageError(f"--quantize={self.quantize}: quantizes the TFLite file; pass "
                       "--format=tflite (or both, all) or leave --quantize out")
    if self.tflite_io != "float" and self.quantize != "int8":
      raise UsageError(f"--tflite_io={self.tflite_io}: integer input and output need "
                       "--quantize=int8")
    check(isinstance(self.min_agreement, (int, float)) and 0 <= self.min_agreement <= 1,
          "min_agreement", "must be in [0, 1]", self.min_agreement)
    if self.min_agreement != 0.98 and self.quantize != "int8":
      raise UsageError("--min_agreement: chooses among int8 files; pass --quantize=int8")
    if self.calibration_examples is not None:
      positive_int(self.calibration_examples, "calibration_examples")
      if self.quantize != "int8":
        raise UsageError("--calibration_examples: calibrates --quantize=int8 only")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
  """What `kerasft.tune` searches and for how long (with a run's settings as the base)."""
  models: Optional[str] = setting(None, "tune: candidate backbones, comma-separated "
                                  "(--model names, hub:/savedmodel:/keras:/keras_hub: handles), "
                                  "ranked first by a frozen-feature probe [--model].")
  time_budget: str = setting("", "tune: stop the search after this long, e.g. 300s, 10m, 2h "
                             "(the running trial stops at its next batch).")
  max_trials: int = setting(0, "tune: stop after this many trials, probes included [0: with "
                            "no --time_budget, 20].")
  search: str = setting("hyperband", "tune: KerasTuner's oracle.",
                        choices=("hyperband", "bayesian", "random"))
  space: str = setting("", "tune: a JSON (or YAML) file narrowing or fixing search-space "
                       "entries (README: Automatic fine-tuning).")
  test_dir: str = setting("", "tune: labelled test images or texts, used once at the end "
                          "[<data_dir>/test when present].")
  test_csv: str = setting("", "tune: a test CSV, like --csv, used once at the end.")

  def __post_init__(self):
    check_choices(self)
    budget_seconds(self.time_budget)
    if self.max_trials < 0:
      raise UsageError(f"--max_trials: must be >= 0, got {self.max_trials}")
    if self.models is not None:
      names = [m.strip() for m in self.models.split(",")]
      if not any(names) or not all(names):
        raise UsageError(f"--models: name one or more backbones, comma-separated, got "
                         f"{self.models!r}")
      for name in names:
        backbones.source(name)  # unknown names: a UsageError with close matches
    if self.test_dir and self.test_csv:
      raise UsageError("--test_dir/--test_csv: pass one of them")
    for flag in ("test_dir", "test_csv", "space"):
      path = getattr(self, flag)
      if path and not os.path.exists(path):
        raise UsageError(f"--{flag}: {path} does not exist")

  @property
  def candidates(self) -> tuple[str, ...]:
    return tuple(m.strip() for m in self.models.split(",")) if self.models else ()

  @property
  def budget(self) -> Optional[float]:
    """The time budget in seconds (None: none)."""
    return budget_seconds(self.time_budget)


# What `kerasft.adapt` reads of the run settings: the encoder, its texts, seed and strategy.
ADAPT_MODEL = ("model", "max_length")
ADAPT_DATA = ("csv", "text_column", "text_dir", "tfds", "tfds_data_dir", "text_key",
              "train_split", "batch_size", "validation_split")
ADAPT_TRAINING = ("seed", "strategy", "cpu_replicas")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
  """How `kerasft.adapt` continues masked-language-model training of a text encoder."""
  output_dir: str = setting("", "adapt: the KerasHub preset folder to write "
                            "[adapted/<preset name>]; kerasft.train "
                            "--model=keras_hub:FOLDER fine-tunes it.")
  mlm_epochs: int = setting(3, "adapt: epochs of masked-LM training of the whole encoder.")
  mlm_learning_rate: float = setting(5e-5, "adapt: AdamW's rate for the whole encoder.")
  mlm_head_epochs: int = setting(1, "adapt: epochs of a new masked-LM head alone first (when "
                                 "the preset's own head predicts at chance) [0: none].")
  mask_rate: float = setting(0.15, "adapt: the share of tokens chosen for masking.")
  time_budget: str = setting("", "tune/adapt: stop after this long, e.g. 300s, 10m, 2h.")
  overwrite: bool = setting(False, "Allow replacing a finished run, an existing version "
                            "(adapt: an existing --output_dir).")

  def __post_init__(self):
    budget_seconds(self.time_budget)
    positive_int(self.mlm_epochs, "mlm_epochs")
    if not isinstance(self.mlm_head_epochs, int) or self.mlm_head_epochs < 0:
      raise UsageError(f"--mlm_head_epochs: must be >= 0, got {self.mlm_head_epochs}")
    if not (isinstance(self.mlm_learning_rate, (int, float)) and self.mlm_learning_rate > 0):
      raise UsageError(f"--mlm_learning_rate: must be positive, got {self.mlm_learning_rate}")
    if not (isinstance(self.mask_rate, (int, float)) and 0 < self.mask_rate < 1):
      raise UsageError(f"--mask_rate: must be between 0 and 1 (exclusive), got {self.mask_rate}")
    check_writable(self.output_dir, "output_dir")

  @property
  def budget(self) -> Optional[float]:
    return budget_seconds(self.time_budget)


def budget_seconds(text: str) -> Optional[float]:
  """Seconds of a duration such as "300s", "10m", "2h" or "90" (seconds); None for ""."""
  if not text:
    return None
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
  if not match or float(match.group(1)) <= 0:
    raise UsageError(f"--time_budget: a duration such as 300s, 10m or 2h, got {text!r}")
  return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
  """Which cluster `kerasft.cluster` describes and which worker of it this process is."""
  hosts: str = setting("", "cluster: the workers' host:port, comma-separated, or one pattern "
                       "with {i} for the worker index, e.g. kerasft-{i}.kerasft:2222 "
                       "(with --workers).")
  workers: int = setting(0, "cluster: how many workers --hosts' {i} pattern stands for.")
  index: Optional[int] = setting(None, "cluster: this worker's index [$JOB_COMPLETION_INDEX "
                                 "(Kubernetes indexed Job), else $SLURM_PROCID].")

  def __post_init__(self):
    if not self.hosts:
      raise UsageError("--hosts: pass the workers' host:port list or a pattern with {i}")
    if ("{i}" in self.hosts) != bool(self.workers):
      raise UsageError("--hosts, --workers: a pattern with {i} needs --workers=N; a list "
                       "of hosts takes none")
    if self.workers:
      positive_int(self.workers, "workers")
      if "," in self.hosts:
        raise UsageError(f"--hosts: one pattern with {{i}} or a list, got {self.hosts!r}")
    if self.index is not None and self.index < 0:
      raise UsageError(f"--index: must be 0 or more, got {self.index}")

