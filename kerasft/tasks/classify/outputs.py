"""What differs by output type: multiclass, multilabel and regression heads.

An `Output` answers, for its kind of target: how labels are read and turned into targets,
the head's last layer, loss, metrics and the monitored metric, the export's outputs, the
report and its headline, the model card's entries, predict's rows, and which options it
refuses. Code outside `kerasft.tasks` asks these objects instead of comparing task names.
Several heads on one backbone: `kerasft.tasks.multitask`, an `Output` per head.
"""

from __future__ import annotations

import numpy as np

from kerasft.reporting import metrics as reports
from kerasft.core.errors import UsageError, refuse


class Output:
  """The multiclass output (softmax "probabilities", one class per example); the base of
  the other kinds."""
  name = "multiclass"
  layer = "probabilities"  # the last layer's name, also the export's main output
  names_key = "classes"  # what the model card calls the class (or target) names
  noun = "classes"
  monitor = ("val_accuracy", "max")  # what picks the best epoch and stops early
  objective = ("accuracy", "max")  # the report's figure that compares runs (a search)
  min_classes = 2
  one_label = True  # one class per example (image folders can hold it)
  convex = True  # a linear head on fixed features is a convex problem (`head_solver`)
  model_augmentation = True  # --augment: layers in the training model (else the pipeline's)
  per_pixel = False  # outputs are class maps (predict --mask_dir writes them)
  unsearched: tuple = ()  # kerasft.tune's search-space entries this output refuses
  classifies = True  # class names are given by the data (not target names)
  activation = "softmax"  # of the last layer (a head of several: `multitask_graph.MultiHead`)
  score = ("accuracy", "accuracy")  # (Keras metric, report key) a multi-task score averages
  sliceable = True  # evaluate and runs report a metric per --slice_column value

  def __init__(self, threshold: float = 0.5):
    self.threshold = threshold

  # --- labels and targets
  def targets(self, labels: list, k: int) -> np.ndarray:
    """float32 [N, k] training targets of per-example labels."""
    out = np.zeros((len(labels), k), np.float32)
    for i, label in enumerate(labels):
      out[i, label] = 1.0
    return out

  def class_counts(self, labels: list, k: int) -> list[int]:
    """Examples per class (per label, multilabel) among per-example `labels`."""
    ids = np.concatenate([np.ravel(np.asarray(l, int)) for l in labels] or [[]])
    return np.bincount(ids.astype(int), minlength=k).tolist()

  def strata(self, labels: list, class_names=None):
    """The labels a validation split is stratified by, or None for a random split."""
    return np.asarray(labels)

  def from_names(self, per_row: list[list[str]], names: list[str], flag: str,
                 label_key: str) -> None:
    """Checks class names read per record (TFRecord, TFDS); raises a UsageError."""
    wrong = [i for i, row in enumerate(per_row) if len(row) != 1]
    if wrong:
      raise UsageError(f"--{flag}: {names[wrong[0]]} has {len(per_row[wrong[0]])} "
                       f"{label_key!r} values; a multiclass example has exactly one (pass "
                       "--task=multilabel for several)")

  def labels_of(self, ids: list[list[int]]) -> list:
    """Per-example labels from class ids per example."""
    return [row[0] for row in ids]

  def cell_names(self, cells: list[str], flag: str, path: str, column: str
                 ) -> list[list[str]]:
    """Class names per row of a table's label cells."""
    empty = [i for i, cell in enumerate(cells) if not cell]
    if empty:
      raise UsageError(f"--{flag}: {path} row {empty[0] + 1} has an empty {column!r}; give "
                       "every row a label")
    return [[cell] for cell in cells]

  def parse_cells(self, rows: list[dict], label_column: str, flag: str, path: str,
                  class_names=None) -> tuple[list, list[str]]:
    """A table's label cells -> (labels, class names): one class name per cell (multilabel:
    names separated by "|", an empty cell is an example with no label)."""
    from kerasft.data.records import class_ids
    if "," in label_column:
      raise UsageError(f"--label_column: one column for --task={self.name}, got "
                       f"{label_column!r}")
    cells = [str(row[label_column] if row[label_column] is not None else "").strip()
             for row in rows]
    ids, class_names = class_ids(self.cell_names(cells, flag, path, label_column),
                                 class_names, flag, path)
    return self.labels_of(ids), class_names

  def known_names(self, class_names: list[str]):
    """The names evaluation labels must be among (None: read from the data)."""
    return class_names

  def check_names(self, found: list[str], model: list[str]) -> None:
    """Raises a UsageError when evaluation data names other targets than the model's."""

  def check(self, config) -> None:
    """Raises a UsageError for RunConfig options this output cannot honour."""

  def evaluation_labels(self, files) -> np.ndarray:
    """What the report compares the model's outputs with: class ids [N]."""
    return np.asarray(files.labels)

  # --- the model
  def head_stats(self, train_files):
    """Constants the head is built with from the training data (regression: mean, std)."""
    return None

  def last_layer(self, x, n: int, stats=None):
    """The output layer on head features `x` [N, F] (float32, named `layer`)."""
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Dense(n, dtype="float32", name=self.layer, activation="softmax")(x)

  def head_layer_names(self) -> tuple[str, ...]:
    """The head's layers with weights after the hidden ones; the first is its Dense layer."""
    return (self.layer,)

  def solver(self, model, standardize: bool = True, floor: float = 0.0):
    """The convex solver of this head's Dense layer (`kerasft.tasks.solvers`), on
    standardized features unless `standardize` is False (floor: `solvers._standardized`)."""
    from kerasft.tasks.classify import solvers
    return solvers.Softmax(standardize, floor)

  def loss(self, label_smoothing: float = 0.0):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)

  def metrics(self) -> list:
    import keras  # pylint: disable=g-import-not-at-top
    return [keras.metrics.CategoricalAccuracy(name="accuracy")]

  def labels_from_targets(self, targets: np.ndarray):  # as `evaluation_labels` gives them
    return np.asarray(targets).argmax(axis=1)

  def default_label_column(self, class_names: list[str]):  # evaluate's (None: the flag's)
    return None if self.classifies else ",".join(class_names)

  def label_files(self, class_names: list[str]) -> dict:
    """{file name: names} the export's assets/ holds (labels.txt: the class names)."""
    from kerasft.core.files import LABELS
    return {LABELS: list(class_names)}

  def solver_parts(self, model, class_names, standardize=True, floor=0.0):  # several heads
    return None

  def for_model(self, model) -> "Output":  # as `model`'s head is built (several heads)
    return self

  # --- serving
  def serving_outputs(self, result, class_names: list[str]) -> dict:
    """The export's outputs for the model's output `result` [N, C] (a tf.Tensor)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    result = tf.cast(result, tf.float32)
    class_ids = tf.argmax(result, axis=-1, output_type=tf.int64)
    return {"probabilities": result, "class_ids": class_ids,
            "classes": tf.gather(tf.constant(class_names), class_ids)}

  def card(self) -> dict:
    """The model card's entries of this output."""
    return {"task": self.name}

  def predict_row(self, key: str, name: str, values, class_names: list[str], top_k: int,
                  error) -> dict:
    """predict's row for one input: the top-k classes and their probabilities."""
    if error:
      return {key: name, "classes": [], "probabilities": [], "error": error}
    top = np.argsort(-values)[:top_k]
    return {key: name, "classes": [class_names[i] for i in top],
            "probabilities": [float(values[i]) for i in top], "error": None}

  def calibrate(self, labels, outputs: np.ndarray, fit: bool):
    """`kerasft.calibration.held_out`: (outputs, ECE entry, temperature or None)."""
    from kerasft.reporting import calibration
    return calibration.held_out(labels, outputs, fit)

  def served(self, result: dict):
    """What a client keeps of a signature's outputs (numpy arrays by name): the main one."""
    return self.main_output(result)

  def main_output(self, result: dict):
    """The main output [N, ...] of a signature's outputs (probabilities, scores or
    predictions): what a converted model is compared on."""
    return np.asarray(result[next(k for k in MAIN_OUTPUTS if k in result)])

  def agreement(self, got: np.ndarray, expected: np.ndarray) -> dict:
    """How a converted model's main output `got` agrees with the SavedModel's `expected`
    on the same inputs: the largest difference, and the share of the same top-1 class."""
    return {"max_difference": float(np.max(np.abs(got - expected))),
            "top1_agreement": float(np.mean(got.argmax(1) == expected.argmax(1)))}

  # --- reports
  def report(self, labels, outputs, class_names: list[str], out_dir: str) -> dict:
    """The metrics of `outputs` against `labels` and the task's PNG in `out_dir`."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
      labels = labels.argmax(axis=-1)
    result = reports.classification_metrics(labels, outputs, class_names)
    reports.plot_confusion_matrix(result["confusion_matrix"], class_names,
                                  f"{out_dir}/confusion_matrix.png")
    return result

  def headline(self, metrics: dict) -> str:
    return f"accuracy {metrics['accuracy']:.4f}"

  def table(self, metrics: dict) -> str:
    return reports.class_table(metrics)


class Multilabel(Output):
  """A sigmoid score per label ("scores"); an example has any number of labels."""
  name, layer = "multilabel", "scores"
  monitor = ("val_auc", "max")
  unsearched = ("few_shot",)
  objective = ("macro_auc", "max")
  one_label = False
  activation, score = "sigmoid", ("auc", "macro_auc")

  def strata(self, labels, class_names=None):
    return None

  def labels_from_targets(self, targets):
    return np.asarray(targets)

  def from_names(self, per_row, names, flag, label_key):
    return None

  def labels_of(self, ids):
    return ids

  def cell_names(self, cells, flag, path, column):
    return [[n.strip() for n in cell.split("|") if n.strip()] for cell in cells]

  def check(self, config):
    refuse(self.name, class_weight=config.data.class_weight != "none",
            oversample=config.data.oversample, recipe=config.methods.recipe == "few_shot",
            calibrate=config.training.calibrate != "none")

  def evaluation_labels(self, files):
    return files.targets()

  def last_layer(self, x, n, stats=None):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Dense(n, dtype="float32", name=self.layer, activation="sigmoid")(x)

  def loss(self, label_smoothing=0.0):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)

  def solver(self, model, standardize=True, floor=0.0):
    from kerasft.tasks.classify import solvers
    return solvers.OneVsRest(standardize, floor)

  def metrics(self):
    import keras  # pylint: disable=g-import-not-at-top
    return [keras.metrics.AUC(multi_label=True, name="auc"),
            keras.metrics.F1Score(average="micro", threshold=self.threshold, name="f1")]

  def serving_outputs(self, result, class_names):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    result = tf.cast(result, tf.float32)
    named = tf.broadcast_to(tf.constant(class_names), tf.shape(result))
    return {"scores": result, "labels": tf.where(result >= self.threshold, named, "")}

  def card(self):
    return {"task": self.name, "threshold": self.threshold}

  def calibrate(self, labels, outputs, fit):  # --calibrate is refused for this output
    return outputs, None, None

  def agreement(self, got, expected):  # the share of the same label decisions
    return {"max_difference": float(np.max(np.abs(got - expected))),
            "label_agreement": float(np.mean((got >= self.threshold)
                                             == (expected >= self.threshold)))}

  def report(self, labels, outputs, class_names, out_dir):
    return {"task": self.name, **reports.multilabel_metrics(np.asarray(labels), outputs,
                                                            class_names, self.threshold)}

  def headline(self, metrics):
    auc = metrics["macro_auc"]
    return f"macro AUC {'-' if auc is None else f'{auc:.4f}'}, micro F1 {metrics['micro_f1']:.4f}"

  def table(self, metrics):
    return reports.label_table(metrics)


class Regression(Multilabel):
  """Numeric targets ("predictions"): a linear layer on standardized targets, rescaled."""
  name, layer, names_key, noun = "regression", "predictions", "targets", "targets"
  monitor = ("val_loss", "min")
  objective = ("mae", "min")
  min_classes = 1
  classifies = False
  unsearched = ("label_smoothing", "mixup", "few_shot")
  activation, score = "linear", ("r2", "r2")

  def targets(self, labels, k):
    return np.asarray(labels, np.float32).reshape(len(labels), k)

  def from_names(self, per_row, names, flag, label_key):
    raise UsageError(f"--task=regression: --{flag} holds class labels; pass numeric targets "
                     "in a --csv")

  def parse_cells(self, rows, label_column, flag, path, class_names=None):
    """Numbers in one or several (comma-separated) target columns."""
    columns, labels = label_column.split(","), []
    for i, row in enumerate(rows):
      try:
        labels.append([float(row[c]) for c in columns])
      except (TypeError, ValueError):
        raise UsageError(f"--{flag}: {path} row {i + 1}: --label_column {label_column!r} must "
                         f"hold numbers for --task=regression, got {[row[c] for c in columns]}"
                         ) from None
    return labels, columns

  def known_names(self, class_names):
    return None

  def check_names(self, found, model):
    if found != model:
      raise UsageError(f"--label_column: the model predicts {', '.join(model)}, got "
                       f"{', '.join(found)}")

  def check(self, config):
    d = config.data
    if not d.csv:
      raise UsageError("--task=regression: needs numeric targets from --csv (--label_column "
                       "names the target columns)")
    refuse(self.name, class_weight=d.class_weight != "none", oversample=d.oversample,
            mixup=bool(d.mixup), cutmix=bool(d.cutmix),
            label_smoothing=bool(config.training.label_smoothing),
            recipe=config.methods.recipe == "few_shot",
            calibrate=config.training.calibrate != "none")

  def head_stats(self, train_files):
    targets = train_files.targets()
    return targets.mean(axis=0).tolist(), np.maximum(targets.std(axis=0), 1e-6).tolist()

  def last_layer(self, x, n, stats=None):
    import keras  # pylint: disable=g-import-not-at-top
    from kerasft.models.heads import Rescale
    mean, std = stats or ([0.0] * n, [1.0] * n)
    x = keras.layers.Dense(n, dtype="float32", name="regression_dense")(x)
    return Rescale(std, mean, dtype="float32", name=self.layer)(x)

  def head_layer_names(self):
    return ("regression_dense", self.layer)

  def solver(self, model, standardize=True, floor=0.0):  # ridge: closed form, raw features
    from kerasft.tasks.classify import solvers
    rescale = model.get_layer(self.layer)
    return solvers.Ridge(rescale.offset, rescale.scale)

  def loss(self, label_smoothing=0.0):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.losses.MeanSquaredError()

  def metrics(self):
    import keras  # pylint: disable=g-import-not-at-top
    return [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.R2Score(name="r2")]

  def serving_outputs(self, result, class_names):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    result = tf.cast(result, tf.float32)
    return {"predictions": result[:, 0] if len(class_names) == 1 else result}

  def card(self):
    return {"task": self.name}

  def agreement(self, got, expected):
    difference = np.abs(got - expected)
    return {"max_difference": float(np.max(difference)),
            "mean_difference": float(np.mean(difference))}

  def predict_row(self, key, name, values, class_names, top_k, error):
    return {key: name, "targets": class_names,
            "predictions": [] if error else [float(v) for v in np.atleast_1d(values)],
            "error": error}

  def report(self, labels, outputs, class_names, out_dir):
    result = {"task": self.name,
              **reports.regression_metrics(np.asarray(labels), outputs, class_names)}
    reports.plot_predictions(np.asarray(labels), outputs, class_names,
                             f"{out_dir}/predictions.png")
    return result

  def headline(self, metrics):
    return f"MAE {metrics['mae']:.4f}, R2 {metrics['r2']:.4f}"

  def table(self, metrics):
    return reports.target_table(metrics)


KINDS = {cls.name: cls for cls in (Output, Multilabel, Regression)}
MAIN_OUTPUTS = tuple(cls.layer for cls in KINDS.values())  # probabilities, scores, predictions
