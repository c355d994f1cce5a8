"""Self-training on unlabelled examples (--unlabeled_dir, --unlabeled_csv,
--unlabeled_tfrecord, --unlabeled_text_dir): after the labelled run, the model labels the unlabelled examples;
the confident ones (--pseudo_label_threshold of the teacher's probabilities calibrated on
the validation examples, at most --pseudo_labels_per_class per class)
join the labelled training examples, and a student trains on them as the run did (its
--augment and dropout are the noise of the "noisy student" recipe), from the pretrained
backbone; --self_training_rounds times, each student the next round's teacher.

Honest by construction: pseudo-labels never come from the labelled (training and
validation) examples, and an unlabelled set that overlaps them is refused; every round is
judged on the same validation examples (k-fold is off), and a student that does worse on
them than its teacher is dropped (the teacher is kept). With a frozen backbone, every
example's features are extracted once in the whole run (`kerasft.models.features.shared_extraction`):
the teacher's predictions and the students' head phases reuse them. Each round trains in
<model_dir>/self_training/round_<k>/ (a run folder of its own: a killed run resumes there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
from absl import logging

from kerasft.reporting import calibration
from kerasft.core.errors import UsageError
from kerasft.config.methods import MethodsConfig
from kerasft.models import features
from kerasft.data import pipeline

FOLDER = "self_training"


@dataclasses.dataclass(frozen=True)
class Round:
  """One round: pseudo-labels per class, the monitored validation metric of its teacher and
  its student, and whether the student was kept."""
  index: int
  pseudo_labels: dict
  before: float
  after: float
  kept: bool

  def card(self) -> dict:
    return dataclasses.asdict(self)


def check_disjoint(unlabeled, labelled, flag: str) -> None:
  """A UsageError when an unlabelled example is one of the labelled ones (same file, same
  encoded bytes or same text)."""
  def key(item):
    if isinstance(item, bytes):
      return hashlib.sha1(item).hexdigest()
    return os.path.realpath(item) if os.path.exists(item) else item
  seen = {key(x) for x in labelled}
  both = [x for x in unlabeled if key(x) in seen]
  if both:
    raise UsageError(f"--{flag}: {len(both)} unlabelled examples are also labelled ones (first: "
                     f"{str(both[0])[:80]}); pseudo-labels must come from other examples")


def pseudo_labels(probabilities: np.ndarray, threshold: float, per_class: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(indices ascending, class ids) of the rows of `probabilities` [N, C] whose top class has
  at least `threshold`; with per_class > 0, at most that many per class, the most confident."""
  top, confidence = probabilities.argmax(1), probabilities.max(1)
  chosen = np.flatnonzero(confidence >= threshold)
  if per_class:
    kept = []
    for c in np.unique(top[chosen]):
      rows = chosen[top[chosen] == c]
      kept.extend(rows[np.argsort(-confidence[rows], kind="stable")][:per_class])
    chosen = np.sort(np.asarray(kept, int))
  return chosen, top[chosen]


def student_config(config, index: int):
  """The config a round's student trains with: the run's, in its round folder, without
  unlabelled data or export, k-fold off (the validation examples judge every round)."""
  data = dataclasses.replace(config.data, unlabeled_dir="", unlabeled_csv="",
                             unlabeled_text_dir="")
  default = MethodsConfig()
  methods = dataclasses.replace(config.methods, **{name: getattr(default, name) for name in (
      "self_training_rounds", "pseudo_label_threshold", "pseudo_labels_per_class")})
  training = dataclasses.replace(config.training, kfold_below=0)
  return dataclasses.replace(config, data=data, training=training, methods=methods,
                             model_dir=os.path.join(config.model_dir, FOLDER,
                                                    f"round_{index}"))


def calibrated(task, model, fitted, dataset) -> float:
  """The temperature that calibrates the teacher's probabilities on the validation examples
  (held out from it: the convex head's pre-refit outputs when it was solved), so that
  --pseudo_label_threshold means the same whatever the head's regularization."""
  targets, outputs = ((fitted.solution.targets, fitted.solution.outputs)
                      if fitted.solution is not None else task.held_out(model, dataset))
  temperature = calibration.fit_temperature(np.asarray(outputs), np.asarray(targets))
  logging.info("self-training: the teacher's probabilities calibrated on %d validation "
               "examples (temperature %.3f)", len(outputs), temperature)
  return temperature


def teacher_outputs(model, task, unlabeled, batch_size: int) -> np.ndarray:
  """Probabilities [N, C] of `model` on the unlabelled examples, through their backbone
  features (`kerasft.models.features.extract`: extracted once per backbone weights in the run)."""
  maps = features.extract(model, unlabeled, task.pipeline)
  return features.head_model(model).predict(maps, batch_size=batch_size, verbose=0)


def run(task, model, dataset, unlabeled, fitted, train_fn):
  """The rounds after the labelled run of `task` (its `model`, `dataset`, `fitted`:
  `kerasft.training.fit.FitResult`) on the `unlabeled` Examples (`Task.unlabeled`, checked with
  `check_disjoint`). train_fn(student task, train Examples, val Examples) trains a student
  (its own run folder) and returns (model, FitResult, Dataset). Returns (the kept model, its
  FitResult, the Dataset it trained on, [Round])."""
  config = task.config
  k, d = config.methods, config.data
  frozen = not config.model.unfreezes and k.recipe != "few_shot"
  monitor, mode = task.output.monitor
  better = (lambda a, b: a >= b) if mode == "max" else (lambda a, b: a <= b)  # noqa: E731
  rounds, teacher = [], (model, fitted, dataset)
  for index in range(1, k.self_training_rounds + 1):
    temperature = calibrated(task, *teacher)
    probabilities = calibration.scaled(
        teacher_outputs(teacher[0], task, unlabeled, d.batch_size), temperature)
    rows, ids = pseudo_labels(probabilities, k.pseudo_label_threshold, k.pseudo_labels_per_class)
    counts = {name: int(np.sum(ids == c)) for c, name in enumerate(dataset.class_names)}
    logging.info("self-training round %d: %d of %d unlabelled examples pseudo-labelled "
                 "(threshold %.2f): %s", index, len(rows), len(unlabeled.inputs),
                 k.pseudo_label_threshold, ", ".join(f"{n} {c}" for n, c in counts.items()))
    if not len(rows):
      logging.warning("self-training round %d: no unlabelled example reaches --pseudo_label_"
                      "threshold=%g; stopping", index, k.pseudo_label_threshold)
      break
    pseudo = dataclasses.replace(unlabeled.subset(rows.tolist()), labels=ids.tolist(),
                                 names=[f"{unlabeled.name(int(i))} (pseudo-label)" for i in rows])
    if pseudo.streams:  # records: the chosen images join the training files as bytes
      pseudo = dataclasses.replace(pseudo, inputs=list(pipeline.encoded_inputs(pseudo)),
                                   streams=(), problems=None)
    student_task = type(task)(student_config(config, index), task.output,
                              task.backbone if frozen else None)
    student, result, data = train_fn(student_task, dataset.train_files + pseudo,
                                     dataset.val_files)
    before, after = teacher[1].best, result.best
    kept = after is not None and (before is None or better(after, before))
    rounds.append(Round(index, counts, before, after, kept))
    logging.info("self-training round %d: %s %.4f with the teacher, %.4f with the student: %s",
                 index, monitor, before or float("nan"), after or float("nan"),
                 "the student is kept" if kept else "the round is dropped (the teacher stays)")
    if not kept:
      break
    teacher = (student, result, data)
  return (*teacher, rounds)
