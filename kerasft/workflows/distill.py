"""Distillation (--teacher): a run trains on a kerasft export's outputs.

The teacher is any kerasft export of the run's task (one class or several labels per
example) and kind of input (images or texts), with the data's classes; the student is the
run's model, any backbone at any image size. Every training, validation and --unlabeled_*
example goes through the teacher's own signature once, in one pass before training; then
each labelled training example's target is --distill_weight x the teacher's outputs
softened at --distill_temperature (`kerasft.data.labels.distilled`) + the rest x its
label, and each unlabelled example's target is the softened outputs alone. The student
keeps temperature 1, so its head stays one cross-entropy: with a frozen backbone still one
convex solve (`kerasft.tasks.classify.solver` fits soft targets exactly). The validation
examples keep their labels: they choose and report as in any run, and the teacher is
scored on them too, so the card holds both models' figures on the same examples.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.core.files import read_labels
from kerasft.data import labels as label_kinds
from kerasft.data import pipeline
from kerasft.serving import client
from kerasft.tasks import registry


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A checked teacher: its version folder, model card, task class and class names."""
  version_dir: str
  card: dict
  task_class: type
  class_names: list


def check(config, output) -> Teacher | None:
  """The run's --teacher, checked before any data is read (None without one): an export of
  the same task (`output`) taking the same kind of input as the run's model. Raises a
  one-line UsageError naming --teacher."""
  path = config.methods.teacher
  if not path:
    return None
  if not os.path.exists(path):
    raise UsageError(f"--teacher: {path} does not exist; pass an export of a trained run "
                     "(saved_models/NAME or saved_models/NAME/N)")
  version_dir = client.resolve(path, "teacher")
  card = client.read_model_card(version_dir, "teacher")
  task_class, teacher_output = registry.for_card(card)
  if teacher_output.name != output.name:
    raise UsageError(f"--teacher: {version_dir} is a --task={teacher_output.name} export and "
                     f"this run is --task={output.name}; distil from a teacher of the same task")
  student_class = registry.modality_class(config.model.model, output)
  if task_class.CLIENT_INPUT != student_class.CLIENT_INPUT:
    raise UsageError(f"--teacher: {version_dir} takes {task_class.ROW_KEY}s and this run's "
                     f"model takes {student_class.ROW_KEY}s; distil from a teacher of the "
                     "same kind of input")
  try:
    class_names = read_labels(version_dir)
  except OSError:
    raise UsageError(f"--teacher: {version_dir} has no assets/labels.txt; export the teacher "
                     "again") from None
  return Teacher(version_dir, card, task_class, class_names)


def apply(teacher: Teacher, task, train, val, unlabeled=None):
  """The training examples with distillation's soft targets (`Examples.soft`), and the
  unlabelled ones joined to them with the teacher's softened outputs alone; the teacher's
  outputs are computed once per example. Refuses a teacher whose classes are not the
  data's. Returns (task, training Examples, the model card's "distillation" entry); with
  unlabelled examples k-fold is off (they must not be scored: the validation examples
  choose)."""
  if teacher.class_names != train.class_names:
    raise UsageError(f"--teacher: its classes ({', '.join(teacher.class_names[:10])}) are not "
                     f"the data's ({', '.join(train.class_names[:10])}); distil from a teacher "
                     "trained on the same classes, in the same order")
  config, kind = task.config, task.output.labels
  k, batch_size = config.methods, config.data.inference_batch
  predict, _ = client.load_predictor(teacher.version_dir, "teacher")
  logging.info("distillation: the teacher %s labels %d training, %d validation and %d "
               "unlabelled examples", teacher.version_dir, len(train.inputs), len(val.inputs),
               len(unlabeled.inputs) if unlabeled is not None else 0)
  outputs = [client.predict_files(predict, teacher.task_class.client_items(files), batch_size)
             for files in (train, val)]
  train = dataclasses.replace(train, soft=label_kinds.distilled(
      kind, train.targets(), outputs[0], k.distill_temperature, k.distill_weight))
  card = _card(teacher, task.output, val, outputs[1], config)
  card["training_examples"] = len(train.inputs)
  if unlabeled is not None and len(unlabeled.inputs):
    p = client.predict_files(predict, teacher.task_class.client_items(unlabeled), batch_size)
    if unlabeled.streams:  # records join the training files as their encoded bytes
      unlabeled = dataclasses.replace(unlabeled, inputs=list(pipeline.encoded_inputs(unlabeled)),
                                      streams=(), problems=None)
    train = train + dataclasses.replace(
        unlabeled, labels=kind.decided(p, task.output.threshold),
        soft=kind.soften(p, k.distill_temperature))
    card["unlabeled_examples"] = len(unlabeled.inputs)
    if config.training.kfold_below:
      logging.info("distillation: k-fold is off (the unlabelled examples must not be scored); "
                   "the validation examples choose")
      task = task.with_config(dataclasses.replace(config, training=dataclasses.replace(
          config.training, kfold_below=0)))
  return task, train, card


def _card(teacher: Teacher, output, val, outputs: np.ndarray, config) -> dict:
  """The model card's record of the teacher: which export, its own validation figures and
  its figure on this run's validation examples."""
  name, value = output.slice_metric(output.labels.evaluation_labels(val), outputs)
  logging.info("distillation: the teacher scores %s %.4f on the %d validation examples", name,
               value, len(val.inputs))
  own = teacher.card.get("validation_metrics", {})
  return {"teacher": {
      "export": os.path.abspath(teacher.version_dir), "name": teacher.card.get("name", ""),
      "version": os.path.basename(os.path.normpath(teacher.version_dir)),
      "backbone": teacher.card.get("backbone", ""),
      "weights": teacher.card.get("run", {}).get("weights", ""),
      "its_validation": {k: v for k, v in own.items() if isinstance(v, (int, float))},
      "this_validation": {name: value, "num_examples": len(val.inputs)}},
      "temperature": config.methods.distill_temperature,
      "weight": config.methods.distill_weight}
