"""One training run from a `RunConfig`: data -> model -> fit -> report -> export.

`run_training(config)` is what `python -m kerasft.train` calls and what Python users call
directly (`kerasft.run_training`). Everything that can be wrong with the user's input
(flags, data, weights, an existing run) is checked before the run's folder is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
import time

import keras
import numpy as np
from absl import logging

from kerasft.config import MethodsConfig, RunConfig
from kerasft.core import cli
from kerasft.core.errors import UsageError
from kerasft.core.files import atomic_path, check_writable, write_json
from kerasft.data import examples as data, tables
from kerasft.data.source import Source
from kerasft.methods import auto, peft, self_training
from kerasft.models import backbones, features, heads, memory
from kerasft.reporting import calibration, html as html_report, metrics as reports
from kerasft.reporting import page as run_report
from kerasft.serving import versions as serving
from kerasft.tasks import registry
from kerasft.training import distribute, fit, plan
from kerasft.training.run_folder import ADAPTER, BEST, LOGS, TIMINGS, RunFolder
from kerasft.workflows import distill


@dataclasses.dataclass
class TrainResult:
  """What a run produced: the trained model (raw inputs in), its history and export."""
  model: keras.Model
  history: dict
  metrics: dict
  export_path: str
  class_names: list[str]
  config: RunConfig
  seconds: dict  # wall time of each phase: data, model, train, report, export
  headline: str = ""  # the validation metrics in a few words


def run_training(config: RunConfig, verbose: int | str = "auto", export: bool = True,
                 before: dict | None = None) -> TrainResult:
  """Trains and exports a model as `config` says; returns a `TrainResult`.

  Checks the settings against each other first (`kerasft.tasks.registry.check`). Writes the
  run folder (`kerasft.training.run_folder`) in `config.model_dir` and the next
  SavedModel version into `config.export_dir`. Running it again on a `model_dir` whose
  run was interrupted resumes that run. Under multi-worker training only the chief writes
  these; other workers work in a temporary folder that is removed, and get
  `export_path=""`. export=False: no export (a search's trial; `export_path=""`). Raises
  `UsageError` for mistakes in the config or the data. before: seconds spent before this
  call by name (the command line passes its imports), counted in the time breakdown the
  run logs and writes (timings.json).
  """
  started = time.monotonic()
  verbose = cli.progress_verbosity(verbose)
  registry.check(config)
  task = registry.for_config(config.resolved()).resolve_data()
  check_outputs(task.config)
  runtime = distribute.setup(task.config.training, task.config.data.batch_size)
  policy = keras.mixed_precision.global_policy().name
  try:
    with tempfile.TemporaryDirectory(prefix="kerasft-worker-") as scratch:
      folder = RunFolder(task.config.model_dir, "" if runtime.is_chief else scratch)
      result = _train(task, folder, runtime, verbose, export, _given(config))
      if runtime.is_chief:
        _timings({**(before or {}), **result.seconds}, time.monotonic() - started +
                 sum((before or {}).values()), folder)
      return result
  finally:
    keras.mixed_precision.set_global_policy(policy)


def check_outputs(config: RunConfig) -> None:
  """Every folder a run writes can be made and written, before any work (UsageError)."""
  for flag in ("model_dir", "export_dir"):
    check_writable(getattr(config, flag), flag)
  check_writable(config.data.cache_dir, "cache_dir")
  check_writable(config.training.feature_cache_dir, "feature_cache_dir")


def _given(config: RunConfig) -> frozenset:
  """Settings the user gave that `RunConfig.resolved` cannot tell from its defaults once
  filled in (an --image_size equal to the backbone's), as "group.name": a recipe leaves
  them as given."""
  return frozenset({"model.image_size"} if config.model.image_size is not None else ())


def _prepare(task, folder: RunFolder, runtime, seconds: dict, given: frozenset = frozenset()):
  """Indexes the data (and the unlabelled examples, for self-training; with --teacher, its
  targets: `kerasft.workflows.distill`), checks the run folder and builds the model;
  nothing is written. Returns (task with the model's sizes filled in, model, Dataset,
  unlabelled Examples to self-train on or None, the card's "distillation" and "batch"
  entries where there are any)."""
  config = task.config
  teacher = distill.check(config, task.output)
  keras.utils.set_random_seed(config.training.seed)
  with _phase(seconds, "data"):
    logging.info("phase data: indexing --%s", config.data.source)
    train, val = task.index(config.training.seed)
    data.check_class_names(train.class_names, Source(config.data.source or "data_dir"))
    if config.data.slice_column:  # a missing column is found now, not after training
      tables.slice_values(config.data, val, getattr(config.data, task.SLICE_KEY))
    unlabeled, distilled = None, {}
    if config.data.unlabeled_source:
      unlabeled = task.unlabeled(train.class_names)
      self_training.check_disjoint(unlabeled.inputs, train.inputs + val.inputs,
                                   config.data.unlabeled_source)
      logging.info("%s: %d unlabelled examples from --%s", "distillation" if teacher else
                   "self-training", len(unlabeled.inputs), config.data.unlabeled_source)
    if teacher:
      task, train, distilled = distill.apply(teacher, task, train, val, unlabeled)
      unlabeled = None
    if config.data.oversample:
      train = data.oversampled(train, config.training.seed)
    task = auto.apply(task, train, val, given)
    config = task.config
  if folder.is_finished() and not config.overwrite:
    raise UsageError(f"--model_dir: {folder.root} already holds a finished run; pass "
                     "--overwrite to replace it or --name/--model_dir for a new run")
  with _phase(seconds, "model"), runtime.strategy.scope():
    logging.info("phase model: %s (weights %s)", config.model.model, config.model.weights)
    task, model = task.build_model(train)
    _check_unfreezing(task.config, model)
    config, batch = plan.batch(task.config, model, runtime.strategy.num_replicas_in_sync)
    task = task.with_config(config, task.backbone)
    memory.check_fits(model, config.data.batch_size,
                      bool(config.training.fine_tune_epochs and config.model.unfreezes))
    peft.enable(model, task.config)
  dataset = task.pipelines(train, val)
  if folder.check_new_or_same(task.config):
    logging.info("resuming the unfinished run in %s", folder.root)
  cards = {"distillation": distilled, "batch": batch}
  return task, model, dataset, unlabeled, {k: v for k, v in cards.items() if v}


def _check_unfreezing(config: RunConfig, model) -> None:
  """Fails now, not after the head phase, when the unfreeze choice is out of range."""
  m = config.model
  if m.unfreezes:
    backbone = heads.backbone_of(model)
    backbones.unfreeze(backbone, top=m.unfreeze_top, n_blocks=m.unfreeze_blocks,
                       from_layer=m.unfreeze_from)
    backbones.freeze(backbone)


def _train(task, folder: RunFolder, runtime, verbose, export: bool = True,
           given: frozenset = frozenset()) -> TrainResult:
  seconds = {}
  recipe = task.config.methods.recipe  # (auto resolves into settings: students redo it)
  task, model, dataset, unlabeled, cards = _prepare(task, folder, runtime, seconds, given)
  config = task.config
  if runtime.is_chief:
    folder.start(config, dataset.class_names)
  rounds = []
  with _phase(seconds, "train"), (features.shared_extraction() if config.data.unlabeled_source
                                  else contextlib.nullcontext()):
    fitted = fit.execute(fit.Run(config, model, dataset, task.output, folder, runtime, verbose))
    if unlabeled is not None:
      model, fitted, dataset, rounds = _self_train(task, model, dataset, unlabeled, fitted,
                                                   folder, runtime, verbose, recipe, given)
  fingerprint = weights_fingerprint(model)
  logging.info("final weights fingerprint %s", fingerprint)
  result = TrainResult(model=model, history=fitted.history, metrics={}, export_path="",
                       class_names=dataset.class_names, config=config, seconds=seconds)
  if not runtime.is_chief:
    folder.remove_backups(f"worker_{runtime.worker_id}")
    return result
  with _phase(seconds, "report"):
    logging.info("phase report: evaluating on %d validation examples",
                 len(dataset.val_files.inputs))
    metrics, shown = _report(task, model, dataset, fitted, folder, runtime)
    logging.info("validation %s", task.output.headline(metrics))
  if config.methods.save_adapter:
    size = peft.save_adapter(model, folder.output(ADAPTER), config.to_dict(),
                             dataset.class_names,
                             task.output.head_stats(dataset.train_files))
    logging.info("adapter (LoRA factors and head, %.0f kB) in %s", size / 1024,
                 folder.output(ADAPTER))
  export_path = ""
  with _phase(seconds, "export"):
    card = {**task.card(metrics), **_methods_card(config, fitted, rounds), **cards, "run": {
        "model_dir": os.path.abspath(config.model_dir), "id": folder.run_id(),
        "weights": fingerprint}}
    # a run killed after its export's rename, before it was recorded, exported already
    export_path = serving.find_version(config.export_dir, card["run"]) if export else ""
    if export_path:
      logging.info("phase export: already exported as %s (same run, same weights)",
                   export_path)
    elif export:
      logging.info("phase export: %s", config.export_dir)
      export_path = serving.export_model(task, model, dataset.class_names, config.export_dir,
                                         card)
  if config.training.report == "html":
    with _phase(seconds, "report_html"):
      _html_report(task, model, dataset, metrics, shown, folder, seconds)
  folder.finish(export_path, seconds)
  return dataclasses.replace(result, metrics=metrics, export_path=export_path,
                             headline=task.output.headline(metrics))


def _methods_card(config: RunConfig, fitted, rounds=()) -> dict:
  """The model card's record of the fine-tuning methods (those not at their defaults), what
  the run kept, its trainable and total parameters, and its self-training `rounds`."""
  default = MethodsConfig()
  methods = {f.name: getattr(config.methods, f.name) for f in dataclasses.fields(default)
             if getattr(config.methods, f.name) != getattr(default, f.name)}
  card = {"methods": methods, "kept": fitted.kept or "best epoch",
          "parameters": {"trainable": fitted.parameters[0], "total": fitted.parameters[1]}}
  if rounds:
    card["self_training"] = [r.card() for r in rounds]
  return card


def _self_train(task, model, dataset, unlabeled, fitted, folder: RunFolder, runtime,
                verbose, recipe: str = "default", given: frozenset = frozenset()):
  """--unlabeled_*: the rounds of `kerasft.methods.self_training` after the labelled run;
  each student trains in its own run folder (with --recipe=auto, on settings chosen for its
  own, larger training set). Returns (model, FitResult, Dataset, rounds) of what is kept,
  whose model replaces best.keras."""

  def train_student(student_task, train, val):
    root = student_task.config.model_dir
    student_folder = RunFolder(root, root if runtime.is_chief else os.path.join(
        folder.out, os.path.relpath(root, folder.root)))
    if recipe == "auto":  # the settings --recipe=auto picks for the student's own data
      student_task = auto.apply(student_task.with_config(dataclasses.replace(
          student_task.config, methods=dataclasses.replace(
              student_task.config.methods, recipe="auto")), student_task.backbone),
          train, val, given)
    if student_task.config.model.unfreezes:  # it trains its own backbone, from pretrained
      student_task = student_task.with_config(student_task.config)
    with runtime.strategy.scope():
      student_task, student = student_task.build_model(train)
      peft.enable(student, student_task.config)
    data = student_task.pipelines(train, val)
    student_folder.check_new_or_same(student_task.config)
    if runtime.is_chief:
      student_folder.start(student_task.config, data.class_names)
    result = fit.execute(fit.Run(student_task.config, student, data, task.output,
                                 student_folder, runtime, verbose))
    return student, result, data

  kept, fitted, dataset, rounds = self_training.run(task, model, dataset, unlabeled, fitted,
                                                    train_student)
  if kept is not model and runtime.is_chief:
    with atomic_path(folder.output(BEST)) as staging:
      kept.save(staging)
  return kept, fitted, dataset, rounds


def _report(task, model, dataset, fitted, folder: RunFolder, runtime) -> tuple[dict, tuple]:
  """The validation report: of the solved head's held-out predictions (validation examples,
  or out-of-fold predictions of every labelled example), else of the model on the
  validation examples (through cached features when the backbone stayed frozen). With
  --calibrate, the temperature fit on them is baked into `model` (and its checkpoint).
  Returns (metrics, (examples, targets, outputs) held out alike, for report.html)."""
  files, targets, outputs, validated_on = _held_out(task, model, dataset, fitted)
  config = task.config
  raw = outputs
  outputs, calibrated, temperature = task.output.calibrate(
      targets, outputs, config.training.calibrate == "temperature")
  if temperature:
    calibration.bake(model, temperature)
    logging.info("calibration: temperature %.3f; ECE %.4f -> %.4f on %s", temperature,
                 calibrated["ece"], calibrated["ece_calibrated"], validated_on)
    if runtime.is_chief:
      with atomic_path(folder.output(BEST)) as staging:
        model.save(staging)
  shown = _aligned(files, targets, outputs)
  extra = {"calibration": calibrated} if calibrated else {}
  if fitted.solution is not None and fitted.solution.nested:
    extra["nested_cross_validation"] = fitted.solution.nested
  if config.data.slice_column:
    extra["slices"] = run_report.slices(task, task.output, config.data, *shown)
  metrics = reports.write(task.output, targets, outputs, dataset.class_names, folder.out,
                          fitted.history, validated_on=validated_on, kept=fitted.kept,
                          extra=extra)
  task.write_figures(*shown, folder.out)
  if calibrated:
    calibration.plot(raw, targets, folder.output("reliability.png"), temperature)
  logging.info("validation figures from %s", validated_on)
  return metrics, shown


def _held_out(task, model, dataset, fitted) -> tuple:
  """(examples, targets, outputs, what they are) of the run's held-out predictions: the
  solved head's (out of fold: every labelled example, training ones first), else the
  model's on the validation examples."""
  solution = fitted.solution
  if solution is None:
    targets, outputs = task.held_out(model, dataset, fitted.validation_view)
    return (dataset.val_files, targets, outputs,
            f"the {len(dataset.val_files.inputs)} validation examples")
  files = dataset.val_files
  if solution.out_of_fold and not dataset.train_files.streams:
    files = dataset.train_files + dataset.val_files
  return files, solution.targets, solution.outputs, solution.validated_on


def _aligned(files, targets, outputs) -> tuple:
  """(examples, targets, outputs) of the examples the report shows; streamed records
  cannot be joined, so out-of-fold predictions show their validation rows alone."""
  if len(files.inputs) == len(outputs):
    return files, targets, outputs
  return files, targets[-len(files.inputs):], outputs[-len(files.inputs):]


def _html_report(task, model, dataset, metrics, shown, folder: RunFolder, seconds) -> None:
  """report.html of the run (after the export: it never holds the export up); `shown`:
  the held-out (examples, targets, outputs) of `_report`."""
  config = task.config
  files, targets, outputs = shown
  data = html_report.ReportData(
      title=f"kerasft run {config.name}", metrics=metrics, class_names=dataset.class_names,
      summary=run_report.summary(config, dataset, metrics, seconds, task.output.monitor[0]),
      labels=np.asarray(targets), outputs=np.asarray(outputs), files=files,
      out_dir=folder.out, model=model, slices=metrics.get("slices"),
      train_counts=run_report.train_counts(task.output, dataset.train_files),
      held_out=metrics.get("validated_on", ""))
  run_report.write(data, task.output, task.output.headline(metrics),
                   task.cards(model, files), folder.output(LOGS))


def _timings(seconds: dict, total: float, folder: RunFolder) -> None:
  """Logs where the run's `total` seconds went (one line) and writes them as timings.json:
  each phase, "other" (setting up, what no phase covers) and the total."""
  phases = {**seconds, "other": max(0.0, total - sum(seconds.values()))}
  logging.info("time: %s; total %.1f s", ", ".join(
      f"{k} {v:.1f} s" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])), total)
  write_json({"seconds": phases, "total": total}, folder.output(TIMINGS))


def weights_fingerprint(model: keras.Model) -> str:
  """A SHA-256 of all of `model`'s weights, to compare workers or runs bit for bit."""
  digest = hashlib.sha256()
  for w in model.weights:
    digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
  return digest.hexdigest()[:16]


@contextlib.contextmanager
def _phase(seconds: dict, name: str):
  start = time.perf_counter()
  yield
  seconds[name] = time.perf_counter() - start
  logging.info("phase %s took %.1f s", name, seconds[name])
