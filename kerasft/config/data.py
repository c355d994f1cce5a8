"""The data settings of a run (`DataConfig`): where the labelled examples are and how they
are batched. Declared once, like the rest of `kerasft.config`; a task's own sources and
reading options are its group in `task_data` (`kerasft.tasks.settings`)."""

from __future__ import annotations

import dataclasses

from kerasft.core.errors import UsageError
from kerasft.core.settings import check, check_choices, fraction, positive_int, setting
from kerasft.tasks.settings import TaskData

AUGMENTATIONS = ("flip", "rotate", "zoom", "contrast", "translate")
DATA_SOURCES = ("data_dir", "csv", "tfrecord", "tfds", "text_dir")  # + task_data's
UNLABELED_SOURCES = ("unlabeled_dir", "unlabeled_csv", "unlabeled_tfrecord",
                     "unlabeled_text_dir")
DATA_PATHS = ("data_dir", "val_dir", "csv", "val_csv", "tfrecord", "val_tfrecord",  # absolute
              "label_names", "text_dir", "tfds_data_dir", "cache_dir") + UNLABELED_SOURCES
# (and task_data's paths: in config.json)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the labelled examples are and how they are batched.

  One source: data_dir (image folders), csv, tfrecord, tfds, text_dir, or a task's own
  (`task_data`); none: the built-in recipe (scikit-learn's digits).
  """
  data_dir: str = setting("", "Folder with one sub-folder per class, or train/ and "
                          "validation/ (val/) split folders [the built-in digits recipe].")
  val_dir: str = setting("", "Validation folder with the same class sub-folders.")
  csv: str = setting("", "A .csv/.tsv of image paths (--path_column, relative to its folder) "
                     "and labels (--label_column): a class, a|b for multilabel, numbers for "
                     "regression. Text models: .csv, .tsv or .jsonl of texts.")
  val_csv: str = setting("", "Validation rows, like --csv.")
  path_column: str = setting("path", "--csv: the column of image paths.")
  label_column: str = setting("label", "--csv: the label column (regression: target columns, "
                              "comma-separated) [evaluate, regression: the model's targets].")
  tfrecord: str = setting("", "A glob of TFRecord files of tf.train.Examples (--image_key, "
                          "--label_key).")
  val_tfrecord: str = setting("", "Validation TFRecord files, like --tfrecord.")
  label_names: str = setting("", "--tfrecord: a file of class names, line i naming label id "
                             "i [the ids].")
  image_key: str = setting("", "--tfrecord/--tfds: the image feature [image/encoded; for TFDS "
                           "its Image feature].")
  label_key: str = setting("", "--tfrecord/--tfds: the label feature [image/class/label; for "
                           "TFDS its ClassLabel feature].")
  text_dir: str = setting("", "Text models: a folder with one sub-folder of .txt files per "
                          "class.")
  text_column: str = setting("text", "Text models with --csv (.csv, .tsv, .jsonl): the column "
                             "of texts.")
  text_key: str = setting("", "Text models with --tfds: the text feature [its first Text "
                          "feature].")
  unlabeled_dir: str = setting("", "Self-training (with --teacher, distillation): a folder "
                               "of unlabelled images (searched recursively).")
  unlabeled_csv: str = setting("", "Self-training (with --teacher, distillation): a "
                               ".csv/.tsv/.jsonl of unlabelled image paths (--path_column) or "
                               "texts (--text_column).")
  unlabeled_tfrecord: str = setting("", "Self-training (with --teacher, distillation): a glob "
                                    "of TFRecord files of unlabelled images (--image_key; "
                                    "labels ignored).")
  unlabeled_text_dir: str = setting("", "Self-training or distillation, text models: a folder "
                                    "of unlabelled .txt files (searched recursively).")
  tfds: str = setting("", "A prepared TFDS data set, NAME or NAME:CONFIG (read with "
                      "download=False; prepare it with `tfds build NAME`).")
  tfds_data_dir: str = setting("", "Where TFDS data sets are prepared [~/tensorflow_datasets "
                               "or $TFDS_DATA_DIR].")
  train_split: str = setting("train", "--tfds: the training split, e.g. train[:80%].")
  val_split: str = setting("", "--tfds: the validation split [validation if the data set has "
                           "one, else --validation_split of the training split].")
  validation_split: float = setting(0.2, "Stratified share of the training data held out for "
                                    "validation when there is no validation part.")
  cache_dir: str = setting("", "Cache decoded images in files here [in memory when they fit].")
  mixup: float = setting(0.0, "MixUp on training batches with Beta(alpha, alpha) [0: off].")
  cutmix: float = setting(0.0, "CutMix on training batches with Beta(alpha, alpha) [0: off]; "
                          "with --mixup, each batch uses one of them.")
  oversample: bool = setting(False, "Repeat examples of smaller classes up to the largest "
                             "class's count.")
  batch_size: int | str = setting(
      32, "Global batch size, or auto (kerasft.train): the largest that fits the device's "
      "memory for the backbone and image size, up to --effective_batch_size [32], which "
      "gradient accumulation then reaches.")
  strict_data: bool = setting(False, "Stop on unreadable images (corrupt, truncated, or over "
                              "100 megapixels) instead of skipping them with a warning.")
  resize: str = setting("squash", "How images become squares, in training and in the "
                        "export's serving_bytes.", choices=("squash", "crop", "pad"))
  slice_column: tuple[str, ...] = setting((), "--csv: report the monitored metric per value "
                                          "of these columns (e.g. site,device) with counts.")
  augment: tuple[str, ...] = setting(
      (), "Training-only augmentation, any of flip,rotate,zoom,contrast,translate (never in "
      "the export; turns feature caching off).", choices=AUGMENTATIONS)
  augment_strength: float = setting(0.1, "How strong each augmentation is (fraction of a turn "
                                    "/ size / contrast).")
  class_weight: str = setting("none", "balanced: weight each class's loss by n / (classes * "
                              "its count).", choices=("none", "balanced"))
  task_data: TaskData = setting(factory=TaskData)

  def __post_init__(self):
    object.__setattr__(self, "augment", tuple(self.augment))
    object.__setattr__(self, "slice_column", tuple(self.slice_column))
    check_choices(self)
    check(isinstance(self.validation_split, (int, float)) and 0 < self.validation_split < 1,
          "validation_split", "must be between 0 and 1 (exclusive)", self.validation_split)
    check(self.batch_size == "auto" or (type(self.batch_size) is int and self.batch_size > 0),
          "batch_size", "must be a positive integer or auto", self.batch_size)
    fraction(self.augment_strength, "augment_strength")
    unlabeled = [f for f in UNLABELED_SOURCES if getattr(self, f)]
    if len(unlabeled) > 1:
      raise UsageError(f"--{unlabeled[1]}: pass one source of unlabelled examples, got "
                       f"--{' and --'.join(unlabeled)}")
    sources = self.sources()
    if len(sources) > 1:
      raise UsageError(f"--{sources[1]}: pass one data source, got --{' and --'.join(sources)}")
    for val, train in (("val_dir", "data_dir"), ("val_csv", "csv"),
                       ("val_tfrecord", "tfrecord"), ("label_names", "tfrecord")):
      if getattr(self, val) and not getattr(self, train):
        raise UsageError(f"--{val}: only goes with --{train}")
    if self.label_key and not (self.tfrecord or self.tfds):
      raise UsageError("--image_key/--label_key: only go with --tfrecord or --tfds")
    if self.image_key and not (self.tfrecord or self.tfds or self.unlabeled_tfrecord):
      raise UsageError("--image_key: only goes with --tfrecord, --tfds or --unlabeled_tfrecord")
    for flag, used, source in (
        ("train_split", self.train_split != "train", "tfds"),
        ("val_split", self.val_split, "tfds"), ("tfds_data_dir", self.tfds_data_dir, "tfds"),
        ("text_key", self.text_key, "tfds"), ("path_column", self.path_column != "path", "csv"),
        ("text_column", self.text_column != "text", "csv"),
        ("slice_column", self.slice_column, "csv")):
      if used and not getattr(self, source):
        raise UsageError(f"--{flag}: only goes with --{source}")
    for alpha in ("mixup", "cutmix"):
      check(isinstance(getattr(self, alpha), (int, float)) and getattr(self, alpha) >= 0,
            alpha, "must be >= 0 (the Beta distribution's alpha; 0: off)",
            getattr(self, alpha))
    if self.oversample and self.class_weight != "none":
      raise UsageError("--oversample: already balances the classes; leave out "
                       "--class_weight=balanced")

  @property
  def unlabeled_source(self) -> str:
    """The flag of the unlabelled examples in use ("" when none)."""
    return next((f for f in UNLABELED_SOURCES if getattr(self, f)), "")

  @property
  def inference_batch(self) -> int:
    """Examples per batch where a model only predicts: --batch_size, or 32 for auto (it
    chooses the training batch)."""
    return 32 if self.batch_size == "auto" else self.batch_size

  @classmethod
  def of(cls, **flags) -> "DataConfig":
    """A DataConfig from flat flag names, as on the command line: a task's own (--conll,
    --mask_column, ...) go into `task_data`'s groups."""
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(task_data=TaskData.of(**{k: v for k, v in flags.items() if k not in own}),
               **{k: v for k, v in flags.items() if k in own})

  def sources(self) -> list[str]:
    """The flags of the data sources given (a run takes one)."""
    return [f for f in DATA_SOURCES if getattr(self, f)] + self.task_data.sources()

  @property
  def source(self) -> str:
    """The flag of the data source in use ("" when none is given)."""
    return next(iter(self.sources()), "")

  def source_path(self) -> str:
    """The value of the data source in use ("" when none is given)."""
    flag = self.source
    groups = [self] + [getattr(self.task_data, f.name)
                       for f in dataclasses.fields(self.task_data)]
    return next((str(getattr(g, flag)) for g in groups if hasattr(g, flag)), "")
