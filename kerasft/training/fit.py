"""The training loop: a plan's segments (`kerasft.training.plan`), each one `fit` call.

The head segment trains the new head on the frozen backbone, on cached backbone features
when it can (`kerasft.models.features`); fine-tune segments unfreeze the top of the backbone and
continue at their own rate, recompiling in between as Keras requires after a change of
`trainable`. The best epoch by the output's monitored metric over all segments is saved as
`best.keras` and restored at the end. Every epoch is backed up and every finished segment
recorded in the run folder, so `execute` called again after a kill skips finished
segments and continues the unfinished one from its last epoch.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np
from absl import logging

from kerasft.config import RunConfig
from kerasft.core import _compat, budget
from kerasft.core.files import atomic_path, write_json
from kerasft.data import examples as data, pipeline
from kerasft.data.pipeline import Dataset
from kerasft.methods import averaging, few_shot, peft
from kerasft.models import backbones, features, memory
from kerasft.models.heads import backbone_of
from kerasft.training import callbacks, distribute, head_solver, optimizers
from kerasft.training.callbacks import BestCheckpoint, EpochLog, append_epoch, history_from_log
from kerasft.training.plan import Segment, make_plan
from kerasft.training.run_folder import (BEST, EPOCH_LOG, FEATURE_CACHE, HISTORY, LOGS,
                                         RESUME_WEIGHTS, RunFolder)


@dataclasses.dataclass(frozen=True)
class FitResult:
  """What training gives back.

  history: each metric per epoch, plus "phase" ("head" or "fine_tune") per epoch.
  best: the best monitored value (None when no epoch was monitored).
  validation_view: (head model, cached validation features) when the backbone stayed
  frozen and the head trained on cached features: the model's validation outputs without
  another pass through the backbone; else None.
  solution: the convex head's `kerasft.training.head_solver.Solution` when the head phase was
  solved and nothing trained after it (its held-out targets and outputs are the report's).
  """
  history: dict
  best: float | None
  validation_view: tuple | None
  solution: object = None
  kept: str = ""  # the phase of the restored best epoch, or the average kept (--average)
  parameters: tuple = (0, 0)  # (trainable, total) parameters of the last segment


@dataclasses.dataclass(frozen=True)
class _Step:
  """How one segment trains: the model `fit` is called on, its data, and switches."""
  model: keras.Model
  train: object
  val: object
  steps_per_execution: int
  on_features: bool
  view: tuple | None
  arrays: tuple | None = None  # the cached (training, validation) features in memory


@dataclasses.dataclass(frozen=True)
class Run:
  """What one training run carries through its segments: its (resolved) `RunConfig`, the
  model, its data (`kerasft.data.pipeline.Dataset`), its output, the run folder and the
  runtime (a `kerasft.training.distribute.Runtime`; None: this process's default strategy).
  `execute` fills in the checkpoint, the class weights and L2-SP's pretrained weights."""
  config: RunConfig
  model: keras.Model
  dataset: Dataset
  output: object
  folder: RunFolder
  runtime: object = None
  verbose: int | str = "auto"
  checkpoint: BestCheckpoint | None = None
  class_weight: dict | None = None
  anchors: tuple = ()


def execute(run: Run, restore_best: bool = True) -> FitResult:
  """Trains `run.model` as its config says, writing into its folder; returns a
  `FitResult`. The model ends with the best epoch's weights when `restore_best`."""
  config, model, output, folder = run.config, run.model, run.output, run.folder
  reason = head_solver.epochs_reason(config, model, len(run.dataset.train_files.inputs)
                                     + len(run.dataset.val_files.inputs), output)
  if reason and config.training.head_solver == "convex":
    logging.info("head phase by epochs, not solved: %s", reason)
  converge = reason in head_solver.CONVERGE
  plan = make_plan(config.training, config.model, len(backbones.blocks(backbone_of(model))),
                   head_epochs=head_solver.CONVERGE_EPOCHS if converge else 0 if reason else 1)
  monitor, mode = output.monitor
  run = dataclasses.replace(
      run, runtime=run.runtime or distribute.default_runtime(),
      checkpoint=BestCheckpoint(model, folder.output(BEST), monitor=monitor, mode=mode,
                                raw=config.methods.peft == "lora"),
      class_weight=_class_weight(config, run.dataset),
      anchors=tuple(_anchors(config, model)))  # pretrained, before a resume loads others
  done = _resume(folder, model, run.checkpoint, len(plan))
  if config.methods.recipe == "few_shot" and not done:
    with run.runtime.strategy.scope():
      few_shot.tune(model, run.dataset, config, folder.output(few_shot.TUNED), run.verbose)
  view = solution = step = None
  for index, segment in enumerate(plan[done:], start=done):
    if budget.past_deadline():
      logging.info("the time budget is spent: segment %s and later ones skipped", segment.name)
      break
    last = segment.phase == plan[-1].phase
    step = _prepare(run, segment, ema=last and config.methods.average == "ema")
    if segment.phase == "head" and not reason:
      solution = _solve(run, step, len(plan) == 1)
    else:
      _fit_segment(run, step, segment, index, converge and segment.phase == "head", last)
    view = step.view if len(plan) == 1 else None
    _finish_segment(run, index, segment, segment == plan[-1])
  if restore_best and run.checkpoint.restore():
    logging.info("restored the best epoch (%s %.4f), saved as %s", monitor,
                 run.checkpoint.best * (1 if mode == "max" else -1), folder.output(BEST))
  step = step or _prepare(run, plan[-1])
  averaged = _average(run, step)
  history = history_from_log(folder.output(EPOCH_LOG))
  write_json(history, folder.output(HISTORY))
  best = None if run.checkpoint.best == float("-inf") else float(run.checkpoint.best)
  return FitResult(history=history, best=best, validation_view=view,
                   solution=solution if len(plan) == 1 else None,
                   kept=averaged or _kept(history, output.monitor, restore_best),
                   parameters=(peft.parameter_counts(step.model)[0],
                               peft.parameter_counts(model)[1]))


def _fit_segment(run: Run, step: _Step, segment: Segment, index: int, converge: bool,
                 last: bool) -> None:
  """One segment's `fit` (a resumed segment continues from its last backed-up epoch);
  converge: a head with hidden layers trained on cached features to early stopping; last:
  the plan's last phase (its best epochs are kept for --average/--wise_ft)."""
  logging.info("segment %s: epochs %d-%d, %d of %d parameters trainable, learning rate %g%s",
               segment.name, segment.first + 1, segment.last,
               peft.parameter_counts(step.model)[0], peft.parameter_counts(run.model)[1],
               segment.learning_rate, ", on cached features" if step.on_features else "")
  step.model.fit(step.train, validation_data=step.val, initial_epoch=segment.first,
                 epochs=segment.last, class_weight=run.class_weight, shuffle=False,
                 verbose=run.verbose, callbacks=_callbacks(run, segment, index, step.val,
                                                           converge, top_k=last))
  _compat.reset_initial_epoch(step.model)


def _anchors(config: RunConfig, model) -> list:
  """--l2sp: [(variable, its pretrained value)] of the backbone's weights."""
  if not config.methods.l2sp:
    return []
  return [(w, keras.ops.convert_to_numpy(w)) for w in backbone_of(model).weights]


def _average(run: Run, step: _Step) -> str:
  """--average and --wise_ft on the restored best epoch (`kerasft.methods.averaging`);
  returns what was kept ("" when the best epoch stayed). The kept model replaces best.keras."""
  config, model, folder, checkpoint = run.config, run.model, run.folder, run.checkpoint
  k = config.methods
  if (k.average == "best" and not k.wise_ft) or checkpoint.best == float("-inf"):
    return ""
  monitor, mode = run.output.monitor
  trains_bn = config.model.bn_mode == "train"
  scorer = averaging.Scorer(
      model, step.model, step.val, monitor, mode, run.dataset.train if trains_bn else None,
      backbone_of(model), run.output.epoch_callbacks(config, step.val, run.dataset.val_files))
  load = lambda name, on: averaging.load_weights(folder.path(name)) if on else None  # noqa: E731
  outcome = averaging.finish(
      k, scorer, folder.path(averaging.TOP_K), (model.get_weights(), checkpoint.best),
      load(averaging.HEAD_WEIGHTS, k.wise_ft), load(averaging.EMA_WEIGHTS, k.average == "ema"),
      folder.output(averaging.WISE_FT_PLOT))
  if run.runtime.is_chief:
    write_json({"kept": outcome.kept or "best epoch", "validation": outcome.scores},
               folder.output(averaging.SCORES))
    if outcome.kept:
      model.save(folder.output(BEST))
  return outcome.kept


def _summaries(log_dir: str, logs: dict) -> None:
  """The solve's epoch in TensorBoard, as Keras' callback writes epochs (train/ and
  validation/ `epoch_<metric>` scalars at step 0)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for split, prefix in (("train", ""), ("validation", "val_")):
    with tf.summary.create_file_writer(os.path.join(log_dir, split)).as_default():
      for key, value in logs.items():
        if key.startswith(prefix) and (prefix or not key.startswith("val_")):
          tf.summary.scalar(f"epoch_{key[len(prefix):]}", value, step=0)


def _kept(history: dict, monitor: tuple, restored: bool) -> str:
  """The phase whose epoch the model ends with; with a fine-tune phase, says which won."""
  values, phases = history.get(monitor[0]), history.get("phase", [])
  if not (restored and values) or len(set(phases)) < 2:
    return ""
  pick = max if monitor[1] == "max" else min
  best = values.index(pick(values))
  if len(set(phases)) > 1:
    head = [v for v, p in zip(values, phases) if p == "head"]
    tuned = [v for v, p in zip(values, phases) if p != "head"]
    logging.info("kept the %s: %s %.4f with the head alone, %.4f at best fine-tuned",
                 "linear probe (the head alone)" if phases[best] == "head" else
                 "fine-tuned model", monitor[0], pick(head), pick(tuned))
  return phases[best]


def _finish_segment(run: Run, index: int, segment: Segment, last: bool) -> None:
  """Records a finished segment for resuming (the chief alone writes), with what the
  methods need later: the head phase's weights (--wise_ft), the EMA (--average=ema) after
  the `last` segment."""
  config, model, folder = run.config, run.model, run.folder
  if not run.runtime.is_chief:
    return
  if segment.phase == "head" and config.methods.wise_ft:
    averaging.save_weights(model.get_weights(), folder.path(averaging.HEAD_WEIGHTS))
  if last and config.methods.average == "ema":  # Keras swapped the EMA in
    averaging.save_weights(model.get_weights(), folder.path(averaging.EMA_WEIGHTS))
  with atomic_path(folder.path(RESUME_WEIGHTS)) as staging:  # a kill leaves no half file
    model.save_weights(staging)
  folder.write_fit_state(index + 1, float(run.checkpoint.best))


def _solve(run: Run, step: _Step, last: bool):
  """The head phase as one convex solve on the cached features
  (`kerasft.training.head_solver`), logged as the run's first epoch (Keras' own loss and
  metrics of the held-out solution) so the best-epoch checkpoint and the history treat it
  like any epoch; the model then keeps the final solution (refit on all labelled examples
  when nothing trains after it: `last`)."""
  start, model, output, folder = time.perf_counter(), run.model, run.output, run.folder
  solution = head_solver.solve(output, model, head_solver.Cached(
      *step.arrays, run.dataset.train_files, run.dataset.val_files), run.config.training,
                               run.class_weight, refit=last)
  logs = dict(step.model.evaluate(step.train, verbose=0, return_dict=True))
  logs.update({f"val_{k}": v for k, v in _held_out_logs(run, step, solution).items()})
  head_solver.install(model, output, solution.final)
  logs.update(epoch_seconds=time.perf_counter() - start, learning_rate=0.0, phase=0.0,
              l2_c=solution.c)
  append_epoch(folder.output(EPOCH_LOG), 0, logs)
  if run.runtime.is_chief:
    _summaries(folder.path(LOGS), logs)
  run.checkpoint.on_epoch_end(0, logs)
  run.checkpoint.on_train_end()
  return solution


def _held_out_logs(run: Run, step: _Step, solution) -> dict:
  """Keras' loss and metrics of the solved head on held-out examples: the validation
  examples, or under k-fold the out-of-fold predictions of every labelled example (the
  head refit on all of them has seen every one)."""
  if not solution.out_of_fold:
    return step.model.evaluate(step.val, verbose=0, return_dict=True)
  targets = np.concatenate([  # the labels' own targets (not distillation's soft ones)
      run.dataset.targets(dataclasses.replace(files, soft=None))
      for files in (run.dataset.train_files, run.dataset.val_files)])
  outputs = np.asarray(solution.outputs, np.float32)
  logs = {"loss": float(run.output.loss()(targets, outputs))}
  for metric in run.output.metrics():
    metric.update_state(targets, outputs)
    logs[metric.name] = float(metric.result())
  return logs


def _resume(folder: RunFolder, model, checkpoint: BestCheckpoint, n_segments: int) -> int:
  """Loads what a killed run left (best epoch, weights after its last finished segment);
  returns how many segments are done."""
  state = folder.fit_state()
  best = checkpoint.saved()  # written at every improvement, also mid-segment
  if best is None and state.get("best") is not None and os.path.exists(folder.output(BEST)):
    best = state["best"]
  if best is not None:
    checkpoint.resume(best)
  done = state.get("segments_done", 0)
  if done:
    model.load_weights(folder.path(RESUME_WEIGHTS))
    peft.revive(model)
    logging.info("resuming %s: %d of %d training segments done", folder.root, done,
                 n_segments)
  return done


def _class_weight(config: RunConfig, dataset: Dataset):
  if config.data.class_weight != "balanced":
    return None
  weights = data.balanced_class_weights(dataset.train_files)
  logging.info("class weights (balanced): %s", ", ".join(
      f"{dataset.class_names[i]} {w:.3f}" for i, w in weights.items()))
  return weights


def _prepare(run: Run, segment: Segment, ema: bool = False) -> _Step:
  """Freezes or unfreezes the backbone for `segment`, picks what `fit` trains on (cached
  features in a frozen head segment when possible) and compiles it. ema: average the
  weights in the optimizer (--average=ema)."""
  config, model, dataset = run.config, run.model, run.dataset
  t, backbone = config.training, backbone_of(model)
  steps = -(-len(dataset.train_files.inputs) // config.data.batch_size)
  with run.runtime.strategy.scope():
    step = _Step(_with_augmentation(model, config, run.output), dataset.train, dataset.val,
                 t.steps_per_execution, False, None)
    multipliers = None
    if segment.phase == "head":
      backbones.freeze(backbone)
      step = _on_features(run, step, steps)
    else:
      _unfreeze(segment, config, backbone)
      if config.methods.peft != "none":
        peft.restrict(backbone, config.methods.peft)
      multipliers = optimizers.layer_lr_multipliers(model, t.layer_lr_decay)
    rate = optimizers.learning_rate(segment.learning_rate, t.lr_schedule,
                                    round(t.warmup_epochs * steps),
                                    segment.phase_epochs * steps, segment.offset * steps)
    trained = {id(w) for w in backbone.trainable_weights}
    l2sp = optimizers.L2SP(config.methods.l2sp, [(w, w0) for w, w0 in run.anchors
                                                  if id(w) in trained])
    options = {"use_ema": True, "ema_momentum": config.methods.ema_momentum} if ema else {}
    if t.gradient_accumulation_steps > 1:
      options["gradient_accumulation_steps"] = t.gradient_accumulation_steps
    optimizers.compile_model(step.model, optimizers.make_optimizer(
        t.optimizer, rate, t.weight_decay, multipliers, l2sp, options),
        run.output, t.label_smoothing, step.steps_per_execution, run.runtime.jit_compile)
  return step


def _with_augmentation(model, config: RunConfig, output):
  """With --augment, a training model around the one that is exported; else `model` (also
  when the `output`'s pipeline augments, as segmentation's moves masks with images)."""
  if not config.data.augment or not output.augments_in_model():
    return model
  inputs = keras.Input(model.input_shape[1:], name="images")
  return keras.Model(inputs, model(pipeline.augmentation(
      config.data.augment, config.data.augment_strength)(inputs)), name="training")


def _on_features(run: Run, step: _Step, steps: int) -> _Step:
  """The head segment on cached backbone features, unless --cache_features=off or the
  backbone's input changes every epoch (the reason is logged); `steps` per epoch."""
  model, t, d = run.model, run.config.training, run.config.data
  if t.cache_features == "off":
    return step
  reason = features.refusal(model, augment=d.augment, mixing=bool(d.mixup or d.cutmix))
  if reason:
    logging.warning("feature cache off for the head phase: %s", reason)
    return step
  cached = features.build(
      model, run.dataset, d.batch_size, t.seed,
      t.feature_cache_memory * 2**20 or memory.default_memory_budget(),
      t.feature_cache_dir or run.folder.output(FEATURE_CACHE), t.feature_cache_dtype,
      run.verbose, inputs_key=d.resize)
  head = features.head_model(model)
  # A step is one small matmul: run a whole epoch per execution (Keras fails on >1 replicas).
  spe = steps if run.runtime.strategy.num_replicas_in_sync == 1 else step.steps_per_execution
  return _Step(head, cached.train, cached.val, spe, True, (head, cached.val), cached.arrays)


def _unfreeze(segment: Segment, config: RunConfig, backbone) -> None:
  m, t = config.model, config.training
  names = backbones.unfreeze(  # --peft: norms trainable (normfit, bitfit), in inference mode
      backbone, top=m.unfreeze_top, n_blocks=segment.n_blocks, from_layer=m.unfreeze_from,
      bn_mode="affine" if config.methods.peft != "none" else m.bn_mode)
  logging.info("segment %s: %d layers unfrozen (top: %s)%s%s", segment.name, len(names),
               ", ".join(names[-3:]),
               f", layer decay {t.layer_lr_decay}" if t.layer_lr_decay != 1 else "",
               "; feature cache off: the backbone trains" if t.cache_features != "off" else "")


def _callbacks(run: Run, segment: Segment, index: int, val, converge: bool = False,
               top_k: bool = False) -> list:
  """The callbacks of one segment (`val`: its validation batches); top_k: keep its best
  epochs for --average/--wise_ft. The output's own come first: they add the monitored
  figure to the epoch's logs the others read."""
  t, k, folder, runtime = run.config.training, run.config.methods, run.folder, run.runtime
  checkpoint = run.checkpoint
  monitor, mode = run.output.monitor
  worker = "chief" if runtime.is_chief else f"worker_{runtime.worker_id}"
  chosen = [*run.output.epoch_callbacks(run.config, val, run.dataset.val_files),
            callbacks.Interruptible(), EpochLog(folder.output(EPOCH_LOG), segment.phase),
            checkpoint, keras.callbacks.BackupAndRestore(folder.backup_dir(index, worker))]
  if k.peft == "lora":
    chosen.append(peft.Revive())  # after BackupAndRestore loaded (and zeroed) the factors
  if budget.past_deadline() is not None:
    chosen.append(budget.Deadline())
  if top_k and (k.average != "best" or k.wise_ft):
    chosen.append(averaging.TopK(
        checkpoint.full_model, folder.path(averaging.TOP_K),
        k.average_top_k if k.average.endswith("soup") else 1, monitor, mode,
        write=runtime.is_chief))
  if runtime.is_chief:
    chosen.append(keras.callbacks.TensorBoard(folder.path(LOGS)))
  if t.early_stopping_patience or converge:  # converge: a hidden head on cached features
    chosen.append(keras.callbacks.EarlyStopping(monitor, mode=mode, patience=max(
        t.early_stopping_patience, head_solver.CONVERGE_PATIENCE if converge else 0)))
  if t.reduce_lr_patience:
    chosen.append(keras.callbacks.ReduceLROnPlateau(
        "val_loss", factor=0.5, patience=t.reduce_lr_patience))
  return chosen
