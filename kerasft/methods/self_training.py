"""Self-training on unlabelled examples (--unlabeled_dir, --unlabeled_csv,
--unlabeled_tfrecord, --unlabeled_text_dir): after the labelled run, the model labels the unlabelled examples;
the confident ones (--pseudo_label_threshold of the teacher's probabilities calibrated on
the validation examples, at most --pseudo_labels_per_class per class)
join the labelled training examples, and a student trains on them as the run did (its
--augment and dropout are the noise of the "noisy student" recipe), from the pretrained
backbone; --self_training_rounds times, each student the next round's teacher.

Honest by construction: pseudo-labels never come from the labelled (training and
validation) examples, and an unlabelled set that overlaps them is refused. A round trains
its student only when an estimate that can tell says it gains: out of fold over every
labelled example, with each fold's pseudo-labels from a teacher that never saw the fold
(`judge_out_of_fold`, on the frozen backbone's features: a few convex fits). A student
that does not beat its teacher there is never trained, and the command says the
unlabelled examples do not help. Where the head is not one convex solve (a fine-tune
phase, a hidden head), the validation examples judge each round after training, which the
log calls a weak estimate. With a frozen backbone, every
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
from kerasft.tasks.classify import solver as solvers

FOLDER = "self_training"


@dataclasses.dataclass(frozen=True)
class Round:
  """One round: pseudo-labels per class, its teacher's and its student's held-out figure
  (out of fold over every labelled example, or the monitored validation metric), and
  whether the student was kept."""
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


def judge_out_of_fold(task, model, fitted, dataset, unlabeled, temperature: float):
  """[(teacher's, student's) out-of-fold score over every labelled example] of each
  round, simulated on the frozen backbone's features with the solved head's L2 strength:
  per fold, a teacher fitted without that fold pseudo-labels the unlabelled examples as
  the run does, a student is fitted on them and the rest, and both are scored on the
  fold; each fold's student is its next round's teacher. None when the head is not one
  convex solve on frozen features (then the validation examples judge, a weak estimate)."""
  if fitted.solution is None or dataset.train_files.streams:
    return None
  k, training = task.config.methods, task.config.training
  labelled = dataset.train_files + dataset.val_files
  x = features.extract(model, labelled, task.pipeline)
  x_u = features.extract(model, unlabeled, task.pipeline)
  y = np.asarray(task.output.labels.evaluation_labels(labelled))
  solver = task.output.solver(model, standardize=not fitted.solution.out_of_fold)
  n_classes, c = len(labelled.class_names), fitted.solution.c
  splits = solvers.folds(y, training.folds, training.seed, True)
  extra = [(np.zeros((0, x.shape[1]), x.dtype), np.zeros(0, int)) for _ in splits]
  judged = []
  for _ in range(k.self_training_rounds):
    teacher, student = np.zeros((len(y), n_classes)), np.zeros((len(y), n_classes))
    for f, (rows, held) in enumerate(splits):
      x_fit, y_fit = np.concatenate([x[rows], extra[f][0]]), np.concatenate([y[rows], extra[f][1]])
      weights = solver.fit(x_fit, y_fit, n_classes, c, group=("teacher", f))
      teacher[held] = solver.outputs(x[held], *weights)
      chosen, ids = pseudo_labels(calibration.scaled(solver.outputs(x_u, *weights), temperature),
                                  k.pseudo_label_threshold, k.pseudo_labels_per_class)
      extra[f] = (x_u[chosen], ids)
      student[held] = solver.outputs(x[held], *solver.fit(
          np.concatenate([x[rows], x_u[chosen]]), np.concatenate([y[rows], ids]),
          n_classes, c, group=("student", f)))
    judged.append((solver.score(y, teacher), solver.score(y, student)))
  return judged


def run(task, model, dataset, unlabeled, fitted, train_fn):
  """The rounds after the labelled run of `task` (its `model`, `dataset`, `fitted`:
  `kerasft.training.fit.FitResult`) on the `unlabeled` Examples (`Task.unlabeled`, checked with
  `check_disjoint`). train_fn(student task, train Examples, val Examples) trains a student
  (its own run folder) and returns (model, FitResult, Dataset). A round's student is
  trained only when the out-of-fold estimate says it gains (`judge_out_of_fold`), else the
  validation examples judge it after training. Returns (the kept model, its FitResult,
  the Dataset it trained on, [Round])."""
  config = task.config
  k, d = config.methods, config.data
  frozen = not config.model.unfreezes and k.recipe != "few_shot"
  rounds, teacher = [], (model, fitted, dataset)
  temperature = calibrated(task, *teacher)
  judged = judge_out_of_fold(task, model, fitted, dataset, unlabeled, temperature)
  if judged is None:
    logging.warning("self-training: the head is not one convex solve on frozen features, so "
                    "the %d validation examples judge each round (a weak estimate)",
                    len(dataset.val_files.inputs))
  for index in range(1, k.self_training_rounds + 1):
    if index > 1:
      temperature = calibrated(task, *teacher)
    pseudo, counts = _pseudo_examples(task, teacher[0], unlabeled, temperature, index,
                                      dataset.class_names)
    if pseudo is None:
      break
    if judged is not None:
      (before, _), (after, _) = judged[index - 1]
      kept = after > before
      rounds.append(Round(index, counts, before, after, kept))
      logging.info("self-training round %d: out of fold over %d labelled examples the "
                   "teacher scores %.4f, the student %.4f: %s", index,
                   len(dataset.train_files.inputs) + len(dataset.val_files.inputs), before,
                   after, "the student trains" if kept else
                   "the round is dropped (the unlabelled examples do not help here)")
      if not kept:
        break
    student_task = task.with_config(student_config(config, index),
                                    task.backbone if frozen else None)
    result = train_fn(student_task, dataset.train_files + pseudo, dataset.val_files)
    if judged is None:
      rounds.append(_judged_on_validation(task, index, counts, teacher[1], result[1]))
      if not rounds[-1].kept:
        break
    teacher = result
  return (*teacher, rounds)


def _pseudo_examples(task, model, unlabeled, temperature: float, index: int, class_names):
  """(the unlabelled examples the teacher `model` labels confidently enough, as Examples
  with those labels, or None; how many per class)."""
  k = task.config.methods
  probabilities = calibration.scaled(
      teacher_outputs(model, task, unlabeled, task.config.data.batch_size), temperature)
  rows, ids = pseudo_labels(probabilities, k.pseudo_label_threshold, k.pseudo_labels_per_class)
  counts = {name: int(np.sum(ids == c)) for c, name in enumerate(class_names)}
  logging.info("self-training round %d: %d of %d unlabelled examples pseudo-labelled "
               "(threshold %.2f): %s", index, len(rows), len(unlabeled.inputs),
               k.pseudo_label_threshold, ", ".join(f"{n} {c}" for n, c in counts.items()))
  if not len(rows):
    logging.warning("self-training round %d: no unlabelled example reaches --pseudo_label_"
                    "threshold=%g; stopping", index, k.pseudo_label_threshold)
    return None, counts
  pseudo = dataclasses.replace(unlabeled.subset(rows.tolist()), labels=ids.tolist(),
                               names=[f"{unlabeled.name(int(i))} (pseudo-label)" for i in rows])
  if pseudo.streams:  # records: the chosen images join the training files as bytes
    pseudo = dataclasses.replace(pseudo, inputs=list(pipeline.encoded_inputs(pseudo)),
                                 streams=(), problems=None)
  return pseudo, counts


def _judged_on_validation(task, index: int, counts: dict, teacher, student) -> "Round":
  """The round judged on the validation examples (a student no better is dropped)."""
  monitor, mode = task.output.monitor
  better = (lambda a, b: a >= b) if mode == "max" else (lambda a, b: a <= b)  # noqa: E731
  before, after = teacher.best, student.best
  kept = after is not None and (before is None or better(after, before))
  logging.info("self-training round %d: %s %.4f with the teacher, %.4f with the student: %s",
               index, monitor, before or float("nan"), after or float("nan"),
               "the student is kept" if kept else "the round is dropped (the teacher stays)")
  return Round(index, counts, before, after, kept)
