"""The two interfaces every task implements: `Task` (a modality: how inputs are read,
batched, modelled and served) and `Output` (a kind of output: labels, head, loss, metrics,
export outputs, reports).

Everything the rest of kerasft calls on a task or an output is declared here (the
structure test lists what is used outside `kerasft.tasks` and checks it is), either
abstract or with a default that refuses in one line. Code outside `kerasft.tasks` asks
these objects and never branches on which kind they are.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from kerasft.core.errors import UsageError, refuse
from kerasft.data.labels import Classes
from kerasft.core.files import LABELS
from kerasft.config import backbones as backbone_names
from kerasft.models import backbones
from kerasft.reporting import metrics

# --recipe=auto's thresholds (`kerasft.methods.auto`; each task's rule: `Task.auto_settings`)
FEW_SHOT_UP_TO = 16  # labelled examples per class: few-shot pairs for text classifiers
FINE_TUNE_FROM = 50  # per class: image classifiers fine-tune every block
LARGE_FROM = 20_000  # examples in all: longer schedules


class Output(abc.ABC):
  """A kind of output: one class per example, several labels, numbers, a tag per word, a
  class per pixel, several heads. Abstract: a bare `Output()` is no output."""
  name = ""  # the --task value
  layer = "probabilities"  # the last layer's name, also the export's main output
  names_key = "classes"  # what the model card calls the class (or target) names
  monitor = ("val_loss", "min")  # what picks the best epoch and stops early
  objective = ("loss", "min")  # the report's figure that compares runs (a search)
  labels: Classes = Classes()  # how labels are read and become targets (`kerasft.data.labels`)
  writes: tuple = ()  # predict's folders of files: "mask_dir" (class maps), "draw_dir" (boxes)
  distills = False  # --teacher: trains on a teacher's softened outputs (one row per example)

  def __init__(self, threshold: float = 0.5):
    self.threshold = threshold

  @property
  def min_classes(self) -> int:
    """The fewest classes (or targets) the output's head can have."""
    return self.labels.min_classes

  def check(self, config) -> None:
    """Raises a UsageError for RunConfig options this output cannot honour."""

  def check_evaluation(self, data_config) -> None:
    """Raises a UsageError for evaluation options this output cannot honour (the metric
    per --slice_column value is the classifying outputs' own)."""
    refuse(self.name, slice_column=bool(data_config.slice_column))

  def refused_search_entries(self) -> tuple:
    """kerasft.tune's search-space entries this output cannot use."""
    return ()

  # --- the model
  def head_stats(self, train_files):
    """Constants the head is built with from the training data (regression: mean, std)."""
    return None

  @abc.abstractmethod
  def last_layer(self, x, n: int, stats=None):
    """The output layer on head features `x` (float32, named `layer`)."""

  def head_layer_names(self) -> tuple[str, ...]:
    """The head's layers with weights after the hidden ones; the first is its Dense layer."""
    return (self.layer,)

  def has_convex_head(self) -> bool:
    """Whether a head without hidden layers on fixed features is a convex problem (solved
    exactly: `kerasft.training.head_solver`); else it trains by epochs (a tag per token, a
    decoder)."""
    return False

  def solver(self, model, standardize: bool = True, floor: float = 0.0):
    """The convex solver of the head's Dense layer (`kerasft.tasks.classify.solver`), or
    None when the head is not one convex problem (it then trains by epochs)."""
    return None

  def solver_parts(self, model, class_names, standardize=True, floor=0.0):
    """Several heads: [(name, columns, labels of targets, solver)] solved one by one; None
    for one head."""
    return None

  @abc.abstractmethod
  def loss(self, label_smoothing: float = 0.0):
    """The Keras loss of the head's output."""

  @abc.abstractmethod
  def metrics(self) -> list:
    """The Keras metrics compiled with the loss (the monitored one among them)."""

  def epoch_callbacks(self, config, val, val_files) -> list:
    """Keras callbacks that put the monitored figure in each epoch's logs when no compiled
    metric gives it (COCO's AP needs every validation image's detections); `val`: the
    validation batches the fitted model takes, `val_files` their `Examples`."""
    return []

  def augments_in_model(self) -> bool:
    """Whether --augment runs as layers in the training model (else the pipeline moves
    the labels with the images)."""
    return True

  def for_model(self, model) -> "Output":
    """The output as `model`'s head is built (several heads read their layout from it)."""
    return self

  # --- serving
  def serving_outputs(self, result, class_names: list[str]) -> dict:
    """The export's outputs for the model's output `result` (a tf.Tensor); an output
    whose task builds its own signatures has none."""
    raise NotImplementedError(f"{self.name}: served through its task's export_signatures")

  def card(self) -> dict:
    """The model card's entries of this output."""
    return {"task": self.name}

  @abc.abstractmethod
  def predict_row(self, key: str, name: str, values, class_names: list[str], top_k: int,
                  error) -> dict:
    """predict's row for one input (`key`: "file" or "text") from its served `values`."""

  def served(self, result: dict):
    """What a client keeps of a signature's outputs (numpy arrays by name)."""
    return self.main_output(result)

  def main_output(self, result: dict):
    """The main output [N, ...] of a signature's outputs: what a converted model (LiteRT,
    ONNX) is compared on."""
    return np.asarray(result[self.layer])

  def agreement(self, got: np.ndarray, expected: np.ndarray) -> dict:
    """How a converted model's main output `got` agrees with the SavedModel's."""
    return {"max_difference": float(np.max(np.abs(got - expected)))}

  def label_files(self, class_names: list[str]) -> dict:
    """{file name: names} the export's assets/ holds (labels.txt: the class names)."""
    return {LABELS: list(class_names)}

  def check_prediction(self, settings) -> None:
    """Raises a UsageError for predict options (a `PredictConfig`) this output cannot
    honour: --mask_dir and --draw_dir write files only some outputs have (`writes`)."""
    for flag, what in (("mask_dir", "writes the class maps of a segmentation export"),
                       ("draw_dir", "draws the boxes of a detection export")):
      if getattr(settings, flag) and flag not in self.writes:
        raise UsageError(f"--{flag}: {what}; {settings.export} is a {self.name} export")

  def write_masks(self, masks: list, mask_dir: str, k: int) -> None:
    """predict --mask_dir: writes each (file, class map) as a PNG."""
    raise NotImplementedError(f"{self.name} outputs have no class maps")

  def write_drawings(self, rows: list[dict], draw_dir: str) -> None:
    """predict --draw_dir: writes each row's image with its boxes drawn."""
    raise NotImplementedError(f"{self.name} outputs have no boxes")

  # --- reports
  def calibrate(self, labels, outputs: np.ndarray, fit: bool):
    """(outputs, ECE entry or None, temperature or None) of held-out outputs; only
    outputs with one class per example are calibrated."""
    return outputs, None, None

  def default_label_column(self, class_names: list[str]):
    """evaluate's label column(s) when --label_column is not given (None: the flag's)."""
    return None

  def caption_names(self, class_names: list[str]) -> list[str]:
    """How explanations caption each output column."""
    return list(class_names)

  def slice_metric(self, labels: np.ndarray, outputs: np.ndarray) -> tuple[str, float]:
    """(name, value) of the monitored figure on one slice of the examples."""
    raise UsageError(f"--slice_column: per-slice metrics are for multiclass, multilabel and "
                     f"regression models, not {self.name}")

  @abc.abstractmethod
  def report(self, labels, outputs, class_names: list[str], out_dir: str) -> dict:
    """The metrics of `outputs` against `labels` and the output's PNGs in `out_dir`."""

  @abc.abstractmethod
  def headline(self, metrics: dict) -> str:
    """The metrics in a few words."""

  @abc.abstractmethod
  def table(self, metrics: dict) -> str:
    """The metrics as a printable table."""

  @abc.abstractmethod
  def report_sections(self, data, headline: str, cards) -> list:
    """The (title, build) sections of report.html (`kerasft.reporting.sections`)."""


class Task(abc.ABC):
  """A run's task: its (resolved) `RunConfig`, its modality (the subclass) and its
  `Output`. `backbone` is the loaded backbone once `build_model` has run (or one given to
  reuse). Subclasses say how inputs are read, batched, modelled and served."""
  CLIENT_SIGNATURE = "serving_default"  # the signature a client of the export calls
  CLIENT_INPUT = "images"  # ... and its input
  ROW_KEY = "file"  # what predict's rows call an input
  SLICE_KEY = "path_column"  # the DataConfig column --slice_column rows are matched by

  def __init__(self, config, output: Output, backbone=None):
    self.config, self.output, self.backbone = config, output, backbone

  def replace(self, backbone=None, **model_fields) -> "Task":
    """A task of the same kind whose ModelConfig has `model_fields` replaced."""
    config = dataclasses.replace(self.config, model=dataclasses.replace(
        self.config.model, **model_fields))
    return type(self)(config, self.output, backbone or self.backbone)

  def with_config(self, config, backbone=None) -> "Task":
    """A task of the same kind and output for another (resolved) config."""
    return type(self)(config, self.output, backbone)

  @classmethod
  def check_inputs(cls, config) -> None:
    """Raises a UsageError for data or model flags this modality cannot honour."""

  def resolve_data(self) -> "Task":
    """The task with its default data filled in (image tasks: the built-in recipe)."""
    return self

  @abc.abstractmethod
  def index(self, seed: int = 0):
    """(training, validation) `Examples` of the config's data."""

  def unlabeled(self, class_names: list[str]):
    """`Examples` of the unlabelled examples (--unlabeled_*), for self-training."""
    raise UsageError(f"--{self.config.data.unlabeled_source}: self-training is not for "
                     f"--task={self.output.name}")

  @staticmethod
  def evaluation_examples(data_config, output, class_names: list[str], split: str = "test"):
    """The labelled examples to evaluate on, from a DataConfig's source."""
    raise NotImplementedError

  @abc.abstractmethod
  def build_model(self, train_files, stats=None):
    """(this task with the sizes the model was built at, the model sized for
    `train_files`); stats: the head's constants (`Output.head_stats`)."""

  def default_settings(self, per_class: float, n: int, train) -> tuple[dict, str]:
    """The task's own default recipe beyond the settings' defaults, applied to what the
    user left at its default (`kerasft.methods.auto.apply`): ({"group.field": value},
    why); none for most tasks (a frozen backbone and its convex head)."""
    return {}, ""

  @abc.abstractmethod
  def auto_settings(self, per_class: float, n: int, train) -> tuple[dict, str]:
    """--recipe=auto's rule for this task (`kerasft.methods.auto`): ({"group.field":
    value}, why) for `n` labelled examples, `per_class` per class (`train`: the split)."""

  @abc.abstractmethod
  def pipelines(self, train, val):
    """The training and validation pipelines (`kerasft.data.pipeline.Dataset`)."""

  @abc.abstractmethod
  def pipeline(self, files, batch_size: int):
    """An unshuffled pipeline of `files` as the model takes them."""

  def card(self, metrics: dict | None) -> dict:
    """What a version's `model_card.json` says about the model and how it was made."""
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import kerasft  # pylint: disable=g-import-not-at-top
    c, d = self.config, self.config.data
    prefix = backbone_names.source(c.model.model)[0]
    card = {"name": c.name, **self.output.card(), "backbone": c.model.model,
            "weights": f"the {prefix[:-1]} model's own" if prefix else c.model.weights,
            "head": list(c.model.head),
            "data": f"{d.source} {d.source_path()}" if d.source else "",
            "versions": {"kerasft": kerasft.__version__, "tensorflow": tf.__version__,
                         "keras": keras.__version__}}
    card.update(self.input_card())
    if c.training.gradient_accumulation_steps > 1:
      card["gradient_accumulation_steps"] = c.training.gradient_accumulation_steps
    if metrics:
      card["validation_metrics"] = headline_metrics(metrics)
    return card

  @abc.abstractmethod
  def input_card(self) -> dict:
    """The model card's entries about the input (shape, range, preprocessing)."""

  def load_model(self, path: str):
    """Loads a .keras checkpoint of this task's model (kerasft's layers registered first)."""
    import keras  # pylint: disable=g-import-not-at-top
    from kerasft.models import heads, hub  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    self.register_layers()
    return keras.saving.load_model(path, compile=False)

  def register_layers(self) -> None:
    """Imports the modules that register the task's own Keras layers, for loading."""

  @abc.abstractmethod
  def export_signatures(self, model, class_names: list[str], labels_path: str):
    """A `kerasft.models.signatures.Signatures` for `model` (its module, warm-up)."""

  def block_table(self) -> str:
    """One line per block of the backbone (what --unfreeze_blocks counts), for --list_blocks."""
    return "\n".join(f"{name:<28} {len(layers):>3} layers: {', '.join(l.name for l in layers)}"
                     for name, layers in backbones.blocks(self.block_model()))

  @abc.abstractmethod
  def block_model(self):
    """The backbone (without downloading weights) whose blocks --list_blocks prints."""

  def explanation_files(self, model, files, class_ids, out_dir: str) -> list[str]:
    """Writes per-input explanation files (images: Grad-CAM PNGs); returns their paths."""
    return []

  def predict_examples(self, model, files, batch_size: int):
    """(what the report compares with, `model`'s outputs) on `files` (evaluate --run_dir)."""
    return metrics.predict(model, self.pipeline(files, batch_size))

  def held_out(self, model, dataset, view=None):
    """(targets, outputs) of `model` on the run's validation examples; view: (head model,
    cached validation features) when the head trained on cached features."""
    return metrics.predict(*(view or (model, dataset.val)))

  @staticmethod
  def write_figures(files, labels, outputs, out_dir: str) -> None:
    """Writes figures (and files) that need the examples themselves next to the report
    (segmentation: predictions.png, masks over images; detection: also detections.json in
    COCO's results format); `labels`, `outputs` are `files`' own, in order."""

  def check_explain(self) -> None:
    """Raises a UsageError when predict --explain cannot explain this task's outputs."""

  def check_formats(self, formats: tuple[str, ...]) -> None:
    """Raises a UsageError when --format asks for what this task cannot write
    (`kerasft.serving.formats`); images convert to every format."""

  def searches_images(self) -> bool:
    """Whether kerasft.tune searches image settings (size, augmentation) for this task."""
    return True

  def sample_inputs(self, n: int, split: str = "validation"):
    """Up to `n` model inputs of the run's split, and what they are (format checks, int8
    calibration); tasks whose exports do not convert have none."""
    raise NotImplementedError(f"--task={self.output.name}: no inputs to convert with")

  @abc.abstractmethod
  def cards(self, model, files):
    """A function (indices, class ids or None, captions) -> report.html cards of `files`."""

  @classmethod
  def export_cards(cls, files, card: dict):
    """Cards of `files` read as an export's model card says (no model)."""
    raise NotImplementedError

  @staticmethod
  def client_items(files):
    """What an export's client is given for `files`."""
    raise NotImplementedError

  @staticmethod
  def import_serving_ops() -> None:
    """Imports what loading an export needs (text: the tokenizer's ops)."""

  @staticmethod
  def request_items(items: list) -> list:
    """The request values of inputs, for the client signature."""
    raise NotImplementedError

  @staticmethod
  def client_inputs(patterns: list[str]) -> tuple[list, list]:
    """(inputs named on predict's command line, why each is unreadable or None)."""
    raise NotImplementedError


def headline_metrics(metrics: dict) -> dict:
  """`metrics` without the per-class tables (also of each head of several)."""
  return {k: {h: headline_metrics(m) for h, m in v.items()} if k == "heads" else v
          for k, v in metrics.items() if k not in (
              "per_class", "per_label", "per_target", "confusion_matrix", "type_confusion",
              "pr_curves")}
