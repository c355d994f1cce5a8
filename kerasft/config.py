"""The frozen dataclasses that describe one training run.

Field names are the command-line flag names and field defaults are the flags' defaults
(`kerasft/train.py` reads them from here). Every value is validated when the dataclass is
made, so a bad value fails before anything is read or written, with a `UsageError` that
names the flag. `RunConfig.resolved()` fills the defaults that depend on other values
(name, folders, image size); the resolved config is written as `config.json` next to every
run and `RunConfig.from_json` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional

from kerasft import backbones
from kerasft.errors import UsageError

OPTIMIZERS = ("adam", "sgd", "adamw")
BN_MODES = ("frozen", "affine", "train")
LR_SCHEDULES = ("constant", "cosine")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu", "parameter_server")
MIXED_PRECISION = ("auto", "off", "mixed_float16", "mixed_bfloat16")
ON_OFF_AUTO = ("auto", "on", "off")
AUGMENTATIONS = ("flip", "rotate", "zoom", "contrast", "translate")
CACHE_MODES = ("auto", "on", "off")
TASKS = ("multiclass", "multilabel", "regression")


def _check(condition: bool, flag: str, message: str, value: Any) -> None:
  if not condition:
    raise UsageError(f"--{flag}: {message}, got {value!r}")


def _positive_int(value, flag):
  _check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
         flag, "must be a positive integer", value)


def _non_negative_int(value, flag):
  _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
         flag, "must be an integer >= 0", value)


def _positive_float(value, flag):
  _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
         flag, "must be a positive number", value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The backbone, its weights and the new head."""
  model: str = "mobilenet"
  weights: str = "imagenet"  # "imagenet", "none", or a path to a weights file
  image_size: Optional[int] = None  # None: the backbone's own default size
  head: tuple[int, ...] = ()  # hidden Dense sizes before the classifier layer
  dropout: float = 0.2
  # What the fine-tune phase unfreezes: at most one of these three, or gradual_unfreeze.
  unfreeze_top: int = 0  # the top N backbone layers with weights (BatchNorm not counted)
  unfreeze_blocks: int = 0  # the top K blocks (see --list_blocks)
  unfreeze_from: str = ""  # every layer from this one to the top
  gradual_unfreeze: int = 0  # K more blocks at the start of each fine-tune epoch
  bn_mode: str = "frozen"  # unfrozen BatchNorm: frozen | affine (gamma, beta) | train
  # hub:/savedmodel: sources
  signature: str = ""
  output_key: str = ""
  hub_input_range: str = "0,1"
  backbone_layer: str = ""  # keras: source
  task: str = "multiclass"  # multiclass | multilabel (sigmoid per label) | regression
  max_length: int = 0  # keras_hub: tokens per text; 0: the 99th percentile, rounded up to 8
  pooling: str = "mean"  # keras_hub: mean (of unpadded tokens) | cls
  threshold: float = 0.5  # multilabel: the score at which the export names a label

  def __post_init__(self):
    prefix, _ = backbones.source(self.model)  # raises UsageError with close matches
    _check(isinstance(self.weights, str) and self.weights != "", "weights",
           "must be 'imagenet', 'none' or a path to a weights file", self.weights)
    if self.image_size is not None:
      _positive_int(self.image_size, "image_size")
      minimum = 1 if prefix else backbones.spec(self.model).min_size
      _check(self.image_size >= minimum, "image_size",
             f"{self.model} needs at least {minimum} pixels", self.image_size)
    object.__setattr__(self, "head", tuple(self.head))
    for size in self.head:
      _positive_int(size, "head")
    _check(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1, "dropout",
           "must be in [0, 1)", self.dropout)
    _non_negative_int(self.unfreeze_top, "unfreeze_top")
    _non_negative_int(self.unfreeze_blocks, "unfreeze_blocks")
    _non_negative_int(self.gradual_unfreeze, "gradual_unfreeze")
    chosen = [f for f in ("unfreeze_top", "unfreeze_blocks", "unfreeze_from", "gradual_unfreeze")
              if getattr(self, f)]
    if len(chosen) > 1:
      raise UsageError(f"--{chosen[1]}: pass only one of --unfreeze_top, --unfreeze_blocks, "
                       f"--unfreeze_from and --gradual_unfreeze, got {', '.join(chosen)}")
    _check(self.bn_mode in BN_MODES, "bn_mode", f"must be one of {', '.join(BN_MODES)}",
           self.bn_mode)
    _check(self.hub_input_range in backbones.INPUT_RANGES, "hub_input_range",
           f"must be one of {', '.join(backbones.INPUT_RANGES)}", self.hub_input_range)
    _non_negative_int(self.max_length, "max_length")
    _check(self.pooling in ("mean", "cls"), "pooling", "must be mean or cls", self.pooling)
    if (self.max_length or self.pooling != "mean") and prefix != "keras_hub:":
      raise UsageError("--max_length/--pooling: only for text models (--model=keras_hub:...)")
    _check(self.task in TASKS, "task", f"must be one of {', '.join(TASKS)}", self.task)
    _check(isinstance(self.threshold, (int, float)) and 0 < self.threshold < 1, "threshold",
           "must be between 0 and 1 (exclusive)", self.threshold)

  @property
  def unfreezes(self) -> bool:
    """Whether a fine-tune phase would have anything to train."""
    return bool(self.unfreeze_top or self.unfreeze_blocks or self.unfreeze_from
                or self.gradual_unfreeze)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the labelled images are and how they are batched.

  One source: data_dir (image folders), csv, tfrecord or tfds; none: the built-in recipe.
  """
  data_dir: str = ""  # "" and no other source: the built-in recipe (scikit-learn's digits)
  val_dir: str = ""
  csv: str = ""  # a .csv/.tsv with --path_column (relative to its folder) and --label_column
  val_csv: str = ""
  path_column: str = "path"
  label_column: str = "label"  # regression: several target columns separated by commas
  tfrecord: str = ""  # a glob of TFRecord files of tf.train.Examples
  val_tfrecord: str = ""
  label_names: str = ""  # tfrecord: a file naming the classes, line i for label id i
  image_key: str = ""  # tfrecord/tfds: the image feature [image/encoded; tfds: its Image]
  label_key: str = ""  # tfrecord/tfds: the label feature [image/class/label; its ClassLabel]
  text_dir: str = ""  # keras_hub: one sub-folder of .txt files per class
  text_column: str = "text"  # keras_hub with --csv: the column of texts
  text_key: str = ""  # keras_hub with --tfds: the text feature [its first Text feature]
  tfds: str = ""  # NAME or NAME:CONFIG of a prepared TFDS data set (never downloaded)
  tfds_data_dir: str = ""  # "": TFDS' default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  train_split: str = "train"
  val_split: str = ""  # "": the data set's validation split if any, else --validation_split
  validation_split: float = 0.2
  cache_dir: str = ""  # decoded images cached in files here ("": in memory when they fit)
  mixup: float = 0.0  # MixUp Beta(alpha, alpha) on training batches; 0: off
  cutmix: float = 0.0  # CutMix Beta(alpha, alpha) on training batches; 0: off
  oversample: bool = False  # draw every class up to the largest's count (multiclass)
  batch_size: int = 32
  strict_data: bool = False  # unreadable images are an error instead of skipped
  resize: str = "squash"  # squash | crop | pad, in training and in the export alike
  augment: tuple[str, ...] = ()  # training-only Keras preprocessing layers (AUGMENTATIONS)
  augment_strength: float = 0.1
  class_weight: str = "none"  # none | balanced (weights from the training label counts)

  def __post_init__(self):
    _check(isinstance(self.validation_split, (int, float)) and 0 < self.validation_split < 1,
           "validation_split", "must be between 0 and 1 (exclusive)", self.validation_split)
    _positive_int(self.batch_size, "batch_size")
    _check(self.resize in ("squash", "crop", "pad"), "resize", "must be squash, crop or pad",
           self.resize)
    object.__setattr__(self, "augment", tuple(self.augment))
    unknown = [a for a in self.augment if a not in AUGMENTATIONS]
    _check(not unknown, "augment", f"must be among {', '.join(AUGMENTATIONS)}",
           ",".join(self.augment))
    _check(isinstance(self.augment_strength, (int, float)) and 0 < self.augment_strength < 1,
           "augment_strength", "must be between 0 and 1 (exclusive)", self.augment_strength)
    _check(self.class_weight in ("none", "balanced"), "class_weight",
           "must be none or balanced", self.class_weight)
    sources = [f for f in ("data_dir", "csv", "tfrecord", "tfds", "text_dir")
               if getattr(self, f)]
    if len(sources) > 1:
      raise UsageError(f"--{sources[1]}: pass one data source, got --{' and --'.join(sources)}")
    for val, train in (("val_dir", "data_dir"), ("val_csv", "csv"),
                       ("val_tfrecord", "tfrecord"), ("label_names", "tfrecord")):
      if getattr(self, val) and not getattr(self, train):
        raise UsageError(f"--{val}: only goes with --{train}")
    if (self.image_key or self.label_key) and not (self.tfrecord or self.tfds):
      raise UsageError("--image_key/--label_key: only go with --tfrecord or --tfds")
    for alpha in ("mixup", "cutmix"):
      _check(isinstance(getattr(self, alpha), (int, float)) and getattr(self, alpha) >= 0,
             alpha, "must be >= 0 (the Beta distribution's alpha; 0: off)",
             getattr(self, alpha))
    if self.oversample and self.class_weight != "none":
      raise UsageError("--oversample: already balances the classes; leave out "
                       "--class_weight=balanced")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """The optimizer and the two phases: head (frozen backbone), then optional fine-tuning."""
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  epochs: int = 5
  fine_tune_epochs: int = 0
  fine_tune_learning_rate: Optional[float] = None  # None: a tenth of learning_rate
  label_smoothing: float = 0.0
  seed: int = 0
  lr_schedule: str = "constant"  # constant | cosine, in each phase
  warmup_epochs: float = 0.0  # linear warmup at the start of each phase
  weight_decay: Optional[float] = None  # None: adamw's default 0.004, else 0; L2 for adam/sgd
  layer_lr_decay: float = 1.0  # each backbone block's rate: this factor per block below top
  early_stopping_patience: int = 0  # epochs without a better monitored metric; 0: off
  reduce_lr_patience: int = 0  # epochs without a lower val_loss before halving the rate; 0: off
  deterministic: bool = False  # seeds plus tf.config.experimental.enable_op_determinism()
  # Distribution and speed (see kerasft/fit.py)
  strategy: str = "auto"  # auto: mirrored with more than one GPU, else the default
  cpu_replicas: int = 0  # split the CPU into N logical devices (for mirrored without GPUs)
  cluster_resolver: str = "tf_config"  # multi_worker: tf_config | slurm
  mixed_precision: str = "auto"  # auto: mixed_bfloat16 on GPUs that support it, else off
  jit_compile: str = "auto"  # auto: off on CPU (XLA was 7-12x slower here), on with GPUs
  steps_per_execution: int = 1
  cache_features: str = "auto"  # auto: cache the frozen backbone's features in the head phase
  feature_cache_memory: int = 0  # MiB of features kept in memory; 0: a quarter of the RAM
  feature_cache_dir: str = ""  # "": <model_dir>/feature_cache
  feature_cache_dtype: str = "float32"

  def __post_init__(self):
    _check(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}",
           self.optimizer)
    _positive_float(self.learning_rate, "learning_rate")
    _positive_int(self.epochs, "epochs")
    _non_negative_int(self.fine_tune_epochs, "fine_tune_epochs")
    if self.fine_tune_learning_rate is not None:
      _positive_float(self.fine_tune_learning_rate, "fine_tune_learning_rate")
    _check(isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1,
           "label_smoothing", "must be in [0, 1)", self.label_smoothing)
    _non_negative_int(self.seed, "seed")
    _check(self.lr_schedule in LR_SCHEDULES, "lr_schedule",
           f"must be one of {', '.join(LR_SCHEDULES)}", self.lr_schedule)
    _check(isinstance(self.warmup_epochs, (int, float)) and self.warmup_epochs >= 0,
           "warmup_epochs", "must be >= 0", self.warmup_epochs)
    if self.weight_decay is not None:
      _check(isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < 1,
             "weight_decay", "must be in [0, 1)", self.weight_decay)
    _check(isinstance(self.layer_lr_decay, (int, float)) and 0 < self.layer_lr_decay <= 1,
           "layer_lr_decay", "must be in (0, 1]", self.layer_lr_decay)
    _non_negative_int(self.early_stopping_patience, "early_stopping_patience")
    _non_negative_int(self.reduce_lr_patience, "reduce_lr_patience")
    if self.reduce_lr_patience and self.lr_schedule != "constant":
      raise UsageError("--reduce_lr_patience: cannot change the rate of --lr_schedule="
                       f"{self.lr_schedule}; use one of them")
    _check(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}",
           self.strategy)
    _non_negative_int(self.cpu_replicas, "cpu_replicas")
    _check(self.cluster_resolver in ("tf_config", "slurm"), "cluster_resolver",
           "must be tf_config or slurm", self.cluster_resolver)
    _check(self.mixed_precision in MIXED_PRECISION, "mixed_precision",
           f"must be one of {', '.join(MIXED_PRECISION)}", self.mixed_precision)
    _check(self.jit_compile in ON_OFF_AUTO, "jit_compile", "must be auto, on or off",
           self.jit_compile)
    _positive_int(self.steps_per_execution, "steps_per_execution")
    _check(self.cache_features in CACHE_MODES, "cache_features",
           f"must be one of {', '.join(CACHE_MODES)}", self.cache_features)
    _non_negative_int(self.feature_cache_memory, "feature_cache_memory")
    _check(self.feature_cache_dtype in ("float32", "float16"), "feature_cache_dtype",
           "must be float32 or float16", self.feature_cache_dtype)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One training run: model, data, training, and where its outputs go."""
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
  name: str = ""  # "": derived from the backbone
  model_dir: str = ""  # "": runs/<name>
  export_dir: str = ""  # "": saved_models/<name>
  overwrite: bool = False

  def __post_init__(self):
    if self.name:
      _check(os.sep not in self.name and self.name not in (".", ".."), "name",
             "must be a plain name without path separators", self.name)
    if self.model.unfreezes and not self.training.fine_tune_epochs:
      raise UsageError("--unfreeze_top/--unfreeze_blocks/--unfreeze_from/--gradual_unfreeze "
                       "have no effect without --fine_tune_epochs; pass --fine_tune_epochs=N")
    task, d = self.model.task, self.data
    if task != "multiclass":
      chosen = [f for f, on in (("class_weight", d.class_weight != "none"),
                                ("oversample", d.oversample)) if on]
      if task == "regression":
        chosen += [f for f in ("mixup", "cutmix") if getattr(d, f)]
        chosen += ["label_smoothing"] if self.training.label_smoothing else []
        if not d.csv:
          raise UsageError("--task=regression: needs numeric targets from --csv "
                           "(--label_column names the target columns)")
      if chosen:
        raise UsageError(f"--{chosen[0]}: not for --task={task}")
    if self.is_text:
      if d.data_dir or d.tfrecord:
        raise UsageError(f"--{'data_dir' if d.data_dir else 'tfrecord'}: a text model "
                         "(--model=keras_hub:...) reads --csv, --text_dir or --tfds")
      used = [f for f in ("augment", "mixup", "cutmix") if getattr(d, f)]
      if used:
        raise UsageError(f"--{used[0]}: image augmentation; not for text models")
    elif d.text_dir:
      raise UsageError("--text_dir: needs a text model, --model=keras_hub:PRESET_OR_FOLDER")
    if self.training.fine_tune_epochs and not self.model.unfreezes:
      raise UsageError(f"--fine_tune_epochs={self.training.fine_tune_epochs} needs layers to "
                       "train; pass --unfreeze_top=N (or --unfreeze_blocks, --unfreeze_from, "
                       "--gradual_unfreeze) as well")

  @property
  def is_text(self) -> bool:
    """Whether this is a text run (a KerasHub encoder)."""
    return self.model.model.startswith("keras_hub:")

  def resolved(self) -> "RunConfig":
    """Returns a copy with name, folders, image size and fine-tune rate filled in."""
    name = self.name or backbones.default_name(self.model.model)
    model = self.model
    if model.image_size is None and not backbones.source(model.model)[0]:
      model = dataclasses.replace(model, image_size=backbones.spec(model.model).default_size)
    training = self.training
    if training.fine_tune_learning_rate is None:
      training = dataclasses.replace(
          training, fine_tune_learning_rate=training.learning_rate / 10)
    return dataclasses.replace(
        self, name=name, model=model, training=training,
        model_dir=self.model_dir or os.path.join("runs", name),
        export_dir=self.export_dir or os.path.join("saved_models", name))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=2, sort_keys=True)
      f.write("\n")

  @classmethod
  def from_dict(cls, d: dict) -> "RunConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise UsageError(f"config: unknown keys {sorted(unknown)}")
    return cls(model=ModelConfig(**d.get("model", {})), data=DataConfig(**d.get("data", {})),
               training=TrainingConfig(**d.get("training", {})),
               **{k: v for k, v in d.items() if k not in ("model", "data", "training")})

  @classmethod
  def from_json(cls, path: str) -> "RunConfig":
    try:
      with open(path) as f:
        return cls.from_dict(json.load(f))
    except (OSError, ValueError) as e:
      raise UsageError(f"{path}: cannot read the run's config ({e})") from None
