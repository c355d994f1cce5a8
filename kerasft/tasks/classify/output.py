"""The classifying outputs: one class per example (`Multiclass`, softmax), any number of
labels (`Multilabel`, a sigmoid per label) and numeric targets (`Regression`).

Each answers, for its kind of target: the head's last layer, loss, metrics and the
monitored metric, its convex solver, the export's outputs, the report, its sections and
headline, the model card's entries, predict's rows, the metric per slice, and which
options it refuses. Labels are read by their label kind (`kerasft.data.labels`).
"""

from __future__ import annotations

import numpy as np

from kerasft.core.errors import UsageError, refuse
from kerasft.data.labels import Classes, Labels, Targets
from kerasft.reporting import calibration, metrics as reports
from kerasft.tasks import base
from kerasft.tasks.classify import report, solver as solvers


class Multiclass(base.Output):
  """Softmax "probabilities" [N, C], one class per example."""
  name = "multiclass"
  labels = Classes()
  monitor = ("val_accuracy", "max")
  objective = ("accuracy", "max")
  classifies = True  # class names are given by the data (not target names)
  activation = "softmax"  # of the last layer (a head of several: `multitask.graph.MultiHead`)
  score = ("accuracy", "accuracy")  # (Keras metric, report key) a multi-task score averages
  distills = True

  def check_evaluation(self, data_config) -> None:
    """Every option of evaluate applies (slices included)."""

  def has_convex_head(self) -> bool:
    return True

  # --- the model
  def last_layer(self, x, n: int, stats=None):
    """The output layer on head features `x` [N, F] (float32, named `layer`)."""
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Dense(n, dtype="float32", name=self.layer, activation="softmax")(x)

  def solver(self, model, standardize: bool = True, floor: float = 0.0):
    """Multinomial logistic regression (`solver.Softmax`), on standardized features unless
    `standardize` is False (floor: `solver._standardized`)."""
    return solvers.Softmax(standardize, floor)

  def loss(self, label_smoothing: float = 0.0):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)

  def metrics(self) -> list:
    import keras  # pylint: disable=g-import-not-at-top
    return [keras.metrics.CategoricalAccuracy(name="accuracy")]

  # --- serving
  def serving_outputs(self, result, class_names: list[str]) -> dict:
    """The export's outputs for the model's output `result` [N, C] (a tf.Tensor)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    result = tf.cast(result, tf.float32)
    class_ids = tf.argmax(result, axis=-1, output_type=tf.int64)
    return {"probabilities": result, "class_ids": class_ids,
            "classes": tf.gather(tf.constant(class_names), class_ids)}

  def predict_row(self, key: str, name: str, values, class_names: list[str], top_k: int,
                  error) -> dict:
    """predict's row for one input: the top-k classes and their probabilities."""
    if error:
      return {key: name, "classes": [], "probabilities": [], "error": error}
    top = np.argsort(-values)[:top_k]
    return {key: name, "classes": [class_names[i] for i in top],
            "probabilities": [float(values[i]) for i in top], "error": None}

  def calibrate(self, labels, outputs: np.ndarray, fit: bool):
    """`kerasft.reporting.calibration.held_out`: (outputs, ECE entry, temperature or None)."""
    return calibration.held_out(labels, outputs, fit)

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

  def report_sections(self, data, headline: str, cards) -> list:
    return report.multiclass_sections(data, headline, cards)

  def slice_metric(self, labels, outputs):
    """Accuracy (scikit-learn's)."""
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
    labels = np.asarray(labels)
    ids = labels.argmax(-1) if labels.ndim == 2 else labels
    return "accuracy", float(metrics.accuracy_score(ids, np.asarray(outputs).argmax(-1)))


class Multilabel(Multiclass):
  """A sigmoid score per label ("scores"); an example has any number of labels."""
  name, layer = "multilabel", "scores"
  labels = Labels()
  monitor = ("val_auc", "max")
  objective = ("macro_auc", "max")
  activation, score = "sigmoid", ("auc", "macro_auc")

  def refused_search_entries(self):
    return ("few_shot",)

  def check(self, config):
    refuse(self.name, class_weight=config.data.class_weight != "none",
            oversample=config.data.oversample, recipe=config.methods.recipe == "few_shot",
            calibrate=config.training.calibrate != "none")

  def last_layer(self, x, n, stats=None):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Dense(n, dtype="float32", name=self.layer, activation="sigmoid")(x)

  def loss(self, label_smoothing=0.0):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)

  def solver(self, model, standardize=True, floor=0.0):
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

  def calibrate(self, labels, outputs, fit):
    """--calibrate is refused for this output: outputs as they are."""
    return outputs, None, None

  def agreement(self, got, expected):
    """The largest difference and the share of the same label decisions."""
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

  def report_sections(self, data, headline, cards):
    return report.multilabel_sections(data, headline, cards)

  def slice_metric(self, labels, outputs):
    """Micro F1 at the threshold (scikit-learn's)."""
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
    predicted = (np.asarray(outputs) >= self.threshold).astype(int)
    return "micro_f1", float(metrics.f1_score(np.asarray(labels).astype(int), predicted,
                                              average="micro", zero_division=0))


class Regression(Multilabel):
  """Numeric targets ("predictions"): a linear layer on standardized targets, rescaled."""
  name, layer, names_key = "regression", "predictions", "targets"
  labels = Targets()
  monitor = ("val_loss", "min")
  objective = ("mae", "min")
  classifies = distills = False
  activation, score = "linear", ("r2", "r2")

  def refused_search_entries(self):
    return ("label_smoothing", "mixup", "few_shot")

  def default_label_column(self, class_names):
    return ",".join(class_names)

  def caption_names(self, class_names):
    return [f"{n} (regression)" for n in class_names]

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

  def solver(self, model, standardize=True, floor=0.0):
    """Ridge regression (closed form, raw features) on the standardized targets."""
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

  def report_sections(self, data, headline, cards):
    return report.regression_sections(data, headline, cards)

  def slice_metric(self, labels, outputs):
    """Mean absolute error (scikit-learn's)."""
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
    labels, outputs = np.asarray(labels), np.asarray(outputs)
    return "mae", float(metrics.mean_absolute_error(labels.reshape(len(labels), -1),
                                                    outputs.reshape(len(outputs), -1)))


KINDS = {cls.name: cls for cls in (Multiclass, Multilabel, Regression)}
