"""The frozen dataclasses that describe one training run: each setting declared once.

Field names are the command-line flag names; each field carries its default, its help
text and its choices (`kerasft.core.settings.setting`), and `kerasft.core.cli` defines the flags of
every entry point from them. Every value is validated when the dataclass is made, so a bad
value fails before anything is read or written, with a `UsageError` that names the flag.
`RunConfig.resolved()` fills the defaults that depend on other values (name, folders, image
size) and makes data paths absolute; it is written as `config.json` next to every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import kerasft.config.backbones as backbones
from kerasft.config.data import DATA_PATHS, DataConfig
from kerasft.config.methods import MethodsConfig
from kerasft.core.errors import UsageError
from kerasft.core.files import write_json
from kerasft.core.settings import (check, check_choices, fraction, non_negative_int,
                                   positive_float, positive_int, setting)
from kerasft.tasks.settings import HEAD_KINDS, TASKS, TaskSettings, migrated

AUTO_ON_OFF = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The backbone, its weights and the new head."""
  model: str = setting(
      "mobilenet", "The backbone: a Keras Applications name (--list_models), hub:HANDLE (a "
      "TF Hub handle, URL or folder), savedmodel:PATH, keras:PATH (a .keras file), or "
      "keras_hub:PRESET_OR_FOLDER (a text encoder: BERT, RoBERTa, ...).")
  weights: str = setting("imagenet", "'imagenet' (Keras' cache, $KERAS_HOME/models), 'none', "
                         "or a weights file.")
  image_size: Optional[int] = setting(None, "Input side in pixels [the backbone's own].")
  head: tuple[int, ...] = setting((), "Hidden Dense sizes of the head, e.g. 512,256 [none].")
  dropout: float = setting(0.2, "Dropout rate before each head layer.")
  unfreeze_top: int = setting(0, "Fine-tune phase: unfreeze the top N backbone layers with "
                              "weights (BatchNorm not counted).")
  unfreeze_blocks: int = setting(0, "Fine-tune phase: unfreeze the top K blocks "
                                 "(--list_blocks).")
  unfreeze_from: str = setting("", "Fine-tune phase: unfreeze every layer from this one to "
                               "the top.")
  gradual_unfreeze: int = setting(0, "Fine-tune phase: unfreeze K more blocks at the start "
                                  "of each epoch.")
  bn_mode: str = setting(
      "frozen", "Unfrozen BatchNorm layers: frozen (all weights fixed, inference mode), "
      "affine (train gamma and beta, keep the statistics), train (everything, in training "
      "mode).", choices=("frozen", "affine", "train"))
  signature: str = setting("", "hub:/savedmodel: the signature to call [__call__, else "
                           "serving_default].")
  output_key: str = setting("", "hub:/savedmodel: the output to use when the function "
                            "returns a dict.")
  hub_input_range: str = setting("0,1", "hub:/savedmodel: the pixel range the module "
                                 "expects.", choices=tuple(backbones.INPUT_RANGES))
  backbone_layer: str = setting("", "keras: the last layer kept as the backbone [the one "
                                "before the output].")
  task: str = setting("multiclass", "multiclass (softmax), multilabel (sigmoid per label, "
                      "binary cross-entropy), regression (--csv numeric targets, MSE) or "
                      "tagging (a tag per word: --conll/--jsonl, a keras_hub: encoder) or "
                      "segmentation (a class per pixel: images/ and masks/) or detection "
                      "(boxes: --coco, --voc, --yolo, a --csv of boxes). Several heads "
                      "(--label_column=a,b,c): one per column, e.g. "
                      "multiclass,multilabel,regression, or one for all.")
  max_length: int = setting(0, "Text models: tokens per text [0: the 99th percentile of the "
                            "training texts, rounded up to 8, at most the model's limit].")
  pooling: str = setting("mean", "Text models: the mean of the token vectors or the first "
                         "([CLS]) token's.", choices=("mean", "cls"))
  threshold: float = setting(0.5, "multilabel: the score at which the export's `labels` "
                             "output names a label.")

  def __post_init__(self):
    prefix, _ = backbones.source(self.model)  # raises UsageError with close matches
    check_choices(self)
    check(isinstance(self.weights, str) and self.weights != "", "weights",
          "must be 'imagenet', 'none' or a path to a weights file", self.weights)
    self._check_source_flags(prefix)
    if self.image_size is not None:
      positive_int(self.image_size, "image_size")
      minimum = 1 if prefix else backbones.spec(self.model).min_size
      check(self.image_size >= minimum, "image_size",
            f"{self.model} needs at least {minimum} pixels", self.image_size)
    object.__setattr__(self, "head", tuple(self.head))
    for size in self.head:
      positive_int(size, "head")
    fraction(self.dropout, "dropout", low_open=False)
    for name in ("unfreeze_top", "unfreeze_blocks", "gradual_unfreeze", "max_length"):
      non_negative_int(getattr(self, name), name)
    chosen = [f for f in ("unfreeze_top", "unfreeze_blocks", "unfreeze_from", "gradual_unfreeze")
              if getattr(self, f)]
    if len(chosen) > 1:
      raise UsageError(f"--{chosen[1]}: pass only one of --unfreeze_top, --unfreeze_blocks, "
                       f"--unfreeze_from and --gradual_unfreeze, got {', '.join(chosen)}")
    kinds = str(self.task).split(",")
    check(all(k in TASKS for k in kinds), "task", f"must be among {', '.join(TASKS)} (several "
          "heads: comma-separated, one per --label_column)", self.task)
    check(len(kinds) == 1 or all(k in HEAD_KINDS for k in kinds), "task",
          f"several heads are each one of {', '.join(HEAD_KINDS)}", self.task)
    check(isinstance(self.threshold, (int, float)) and 0 < self.threshold < 1, "threshold",
          "must be between 0 and 1 (exclusive)", self.threshold)

  def _check_source_flags(self, prefix: str) -> None:
    """Flags set for another kind of backbone than --model's are errors, not ignored."""
    if prefix and self.weights != "imagenet":
      raise UsageError(f"--weights: only for Keras Applications backbones; {self.model} "
                       "brings its own weights")
    module = prefix in ("hub:", "savedmodel:")
    for flag, used in (("signature", self.signature), ("output_key", self.output_key),
                       ("hub_input_range", self.hub_input_range != "0,1")):
      if used and not module:
        raise UsageError(f"--{flag}: only for hub: and savedmodel: backbones, not "
                         f"--model={self.model}")
    if self.backbone_layer and prefix != "keras:":
      raise UsageError(f"--backbone_layer: only for keras:PATH backbones, not "
                       f"--model={self.model}")

  @property
  def unfreezes(self) -> bool:
    """Whether a fine-tune phase would have anything to train."""
    return bool(self.unfreeze_top or self.unfreeze_blocks or self.unfreeze_from
                or self.gradual_unfreeze)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """The optimizer and the two phases: head (frozen backbone), then optional fine-tuning."""
  optimizer: str = setting("adam", "The optimizer (sgd: momentum 0.9).",
                           choices=("adam", "sgd", "adamw"))
  learning_rate: float = setting(1e-3, "Learning rate of the head phase.")
  epochs: int = setting(5, "Epochs of the head phase when it is trained by epochs (frozen "
                        "backbone; see --head_solver).")
  head_solver: str = setting(
      "convex", "How the head phase fits a head without hidden layers on cached features: "
      "convex (solved exactly with scikit-learn, its L2 strength chosen on validation data "
      "or by k-fold cross-validation) or epochs (--epochs of --optimizer). A head with "
      "--head layers, augmentation, MixUp/CutMix or --cache_features=off trains by epochs "
      "to convergence either way.", choices=("convex", "epochs"))
  kfold_below: int = setting(30, "convex head: below this many labelled examples per class "
                             "(on average), k-fold cross-validation of all of them replaces "
                             "the validation split, and the head is refit on all of them [0: "
                             "never].")
  folds: int = setting(5, "convex head: the folds of that cross-validation.")
  calibrate: str = setting(
      "none", "multiclass: temperature fits one temperature to the held-out predictions and "
      "bakes it into the last layer (calibrated probabilities, same classes).",
      choices=("none", "temperature"))
  report: str = setting("html", "Write report.html into the run folder (errors, "
                        "explanations, calibration, slices) [html].", choices=("html", "none"))
  fine_tune_epochs: int = setting(0, "Epochs of the fine-tune phase after the head phase "
                                  "(needs --unfreeze_top or another unfreeze flag).")
  fine_tune_learning_rate: Optional[float] = setting(
      None, "Learning rate of the fine-tune phase [a tenth of --learning_rate].")
  label_smoothing: float = setting(0.0, "Label smoothing of the loss.")
  seed: int = setting(0, "Seed for the split, shuffling and initialization.")
  lr_schedule: str = setting("constant", "Learning rate over each phase: constant or cosine "
                             "decay to 0.", choices=("constant", "cosine"))
  warmup_epochs: float = setting(0.0, "Linear warmup from 0 at the start of each phase, in "
                                 "epochs.")
  weight_decay: Optional[float] = setting(
      None, "Decoupled weight decay for adamw [0.004]; L2 on kernels for adam and sgd [0]. "
      "Only trainable weights (head, unfrozen layers) are affected; with --layer_lr_decay "
      "each block's decay is scaled with its rate.")
  layer_lr_decay: float = setting(1.0, "Fine-tune phase: each backbone block learns at this "
                                  "factor of the block above it (the top block at this factor "
                                  "of the head's rate).")
  early_stopping_patience: int = setting(0, "Stop a phase after N epochs without a better "
                                         "monitored metric (val_accuracy; multilabel: val_auc; "
                                         "regression: val_loss) [0: off].")
  reduce_lr_patience: int = setting(0, "Halve the rate after N epochs without a lower "
                                    "val_loss [0: off].")
  deterministic: bool = setting(False, "Seeds plus tf.config.experimental."
                                "enable_op_determinism(): two runs give bit-identical weights "
                                "on CPU.")
  strategy: str = setting(
      "auto", "tf.distribute strategy; auto: mirrored with more than one GPU, else the "
      "default. --batch_size is the global batch.",
      choices=("auto", "one_device", "mirrored", "multi_worker", "tpu", "parameter_server"))
  cpu_replicas: int = setting(0, "Split the CPU into N logical devices (to run "
                              "--strategy=mirrored without GPUs).")
  cluster_resolver: str = setting("tf_config", "multi_worker: where the cluster comes from "
                                  "(TF_CONFIG or Slurm).", choices=("tf_config", "slurm"))
  mixed_precision: str = setting(
      "auto", "auto: mixed_bfloat16 on GPUs that support it, off on CPU. The output layer "
      "and the export stay float32.",
      choices=("auto", "off", "mixed_float16", "mixed_bfloat16"))
  jit_compile: str = setting("auto", "XLA; auto: on with GPUs, off on CPU (7-12x slower for "
                             "MobileNets here).", choices=AUTO_ON_OFF)
  steps_per_execution: int = setting(1, "Training steps per tf.function call.")
  gradient_accumulation_steps: int = setting(
      1, "Phases trained by epochs: one optimizer step per N batches, on the mean of their "
      "gradients (Keras' optimizer accumulation): the updates of an N x --batch_size batch "
      "in the memory of one --batch_size batch (batch-norm statistics still see the small "
      "batches) [1: off].")
  effective_batch_size: int = setting(
      0, "The batch each optimizer step sees: --batch_size batches accumulated (as "
      "--gradient_accumulation_steps does) until it is reached; a multiple of a numeric "
      "--batch_size [0: --batch_size; with --batch_size=auto, 32].")
  cache_features: str = setting(
      "auto", "Compute the frozen backbone's features once and train the head on them "
      "(auto/on: when the backbone is frozen and nothing augments its input).",
      choices=AUTO_ON_OFF)
  feature_cache_memory: int = setting(0, "MiB of cached features kept in memory; more go to "
                                      "--feature_cache_dir [0: a quarter of the RAM].")
  feature_cache_dir: str = setting("", "Where features that do not fit in memory go "
                                   "[<model_dir>/feature_cache].")
  feature_cache_dtype: str = setting("float32", "How cached features are stored.",
                                     choices=("float32", "float16"))

  def __post_init__(self):
    check_choices(self)
    positive_float(self.learning_rate, "learning_rate")
    positive_int(self.epochs, "epochs")
    positive_int(self.steps_per_execution, "steps_per_execution")
    positive_int(self.gradient_accumulation_steps, "gradient_accumulation_steps")
    non_negative_int(self.kfold_below, "kfold_below")
    check(isinstance(self.folds, int) and self.folds >= 2, "folds", "must be at least 2",
          self.folds)
    for name in ("fine_tune_epochs", "seed", "early_stopping_patience", "reduce_lr_patience",
                 "cpu_replicas", "feature_cache_memory", "effective_batch_size"):
      non_negative_int(getattr(self, name), name)
    if self.fine_tune_learning_rate is not None:
      positive_float(self.fine_tune_learning_rate, "fine_tune_learning_rate")
    fraction(self.label_smoothing, "label_smoothing", low_open=False)
    check(isinstance(self.warmup_epochs, (int, float)) and self.warmup_epochs >= 0,
          "warmup_epochs", "must be >= 0", self.warmup_epochs)
    if self.weight_decay is not None:
      fraction(self.weight_decay, "weight_decay", low_open=False)
    fraction(self.layer_lr_decay, "layer_lr_decay", high_open=False)
    if self.reduce_lr_patience and self.lr_schedule != "constant":
      raise UsageError("--reduce_lr_patience: cannot change the rate of --lr_schedule="
                       f"{self.lr_schedule}; use one of them")

  def uses_kfold(self, n_labelled: int, n_classes: int) -> bool:
    """Whether a convex head refit on all `n_labelled` examples is chosen by k-fold
    cross-validation of all of them instead of on the validation split (small data)."""
    return n_labelled / max(n_classes, 1) < self.kfold_below


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One training run: model, data, training, and where its outputs go."""
  model: ModelConfig = setting(factory=ModelConfig)
  data: DataConfig = setting(factory=DataConfig)
  training: TrainingConfig = setting(factory=TrainingConfig)
  methods: MethodsConfig = setting(factory=MethodsConfig)
  name: str = setting("", "The model's name; names runs/<name> and saved_models/<name> "
                      "[the backbone's].")
  model_dir: str = setting("", "The run's folder [runs/<name>].")
  export_dir: str = setting("", "The model's TF Serving folder; each run or export adds a "
                            "version [saved_models/<name>; export: the run's].")
  overwrite: bool = setting(False, "Replace a finished run in --model_dir, or an existing "
                            "--version.")

  tasks: TaskSettings = setting(factory=TaskSettings)

  def __post_init__(self):
    """Checks this group's own fields; checks across groups are `kerasft.config.checks`'."""
    if self.name:
      check(os.sep not in self.name and self.name not in (".", ".."), "name",
            "must be a plain name without path separators", self.name)

  def resolved(self) -> "RunConfig":
    """A copy with name, folders, image size, fine-tune rate filled in, data paths absolute."""
    name = self.name or backbones.default_name(self.model.model)
    model = self.model
    if model.image_size is None and not backbones.source(model.model)[0]:
      model = dataclasses.replace(model, image_size=backbones.spec(model.model).default_size)
    training = self.training
    if training.fine_tune_learning_rate is None:
      training = dataclasses.replace(
          training, fine_tune_learning_rate=training.learning_rate / 10)
    data = dataclasses.replace(self.data, task_data=self.data.task_data.with_paths(
        os.path.abspath), **{f: os.path.abspath(getattr(self.data, f))
                             for f in DATA_PATHS if getattr(self.data, f)})
    return dataclasses.replace(
        self, name=name, model=model, training=training, data=data,
        model_dir=self.model_dir or os.path.join("runs", name),
        export_dir=self.export_dir or os.path.join("saved_models", name))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self, path: str) -> None:
    write_json(self.to_dict(), path, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict) -> "RunConfig":
    """The config a dict of `to_dict` describes (also one written before the task groups
    were nested: `kerasft.tasks.settings.migrated`)."""
    return _build(cls, migrated(d))

  @classmethod
  def from_json(cls, path: str) -> "RunConfig":
    try:
      with open(path) as f:
        return cls.from_dict(json.load(f))
    except (OSError, ValueError) as e:
      raise UsageError(f"{path}: cannot read the run's config ({e})") from None


def _build(cls, d: dict):
  """An instance of dataclass `cls` from a dict, nested groups built from nested dicts."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = set(d) - set(fields)
  if unknown:
    raise UsageError(f"config: unknown keys {sorted(unknown)}")
  return cls(**{k: _build(fields[k].default_factory, v)
                if isinstance(v, dict) and dataclasses.is_dataclass(fields[k].default_factory)
                else v for k, v in d.items()})
