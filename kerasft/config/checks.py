"""Checks that span a run's settings groups, run once before a run starts (not when a
config is made or replaced: `dataclasses.replace` never re-runs them).

`check_run(config)` raises a `UsageError` naming the flag for settings that contradict each
other across groups (model, data, training, methods); what a task's modality and output
cannot honour is asked of the task objects (`kerasft.tasks.registry.check`, which calls
this first). No TensorFlow.
"""

from __future__ import annotations

from kerasft.config.methods import DEFAULTS
from kerasft.core.errors import UsageError, refuse


def check_run(config) -> None:
  """Raises a UsageError for settings of a `RunConfig` that contradict each other."""
  _phases(config)
  _methods(config)


def _phases(config) -> None:
  """The fine-tune phase, the convex head and the feature cache against the rest."""
  m, t, d = config.model, config.training, config.data
  if m.unfreezes and not t.fine_tune_epochs:
    raise UsageError("--unfreeze_top/--unfreeze_blocks/--unfreeze_from/--gradual_unfreeze "
                     "have no effect without --fine_tune_epochs; pass --fine_tune_epochs=N")
  if t.head_solver == "convex" and t.label_smoothing and not m.head:
    raise UsageError("--label_smoothing: the convex head solver fits the labels exactly; "
                     "pass --head_solver=epochs to smooth them")
  mixing = [f for f in ("augment", "mixup", "cutmix") if getattr(d, f)]
  if t.cache_features == "on" and mixing:
    raise UsageError(f"--cache_features=on: --{mixing[0]} changes the backbone's input "
                     "every epoch, so its features cannot be cached; leave --cache_features "
                     "at auto")
  _batch(config)
  check_accumulation(config)
  if t.fine_tune_epochs and not m.unfreezes:
    raise UsageError(f"--fine_tune_epochs={t.fine_tune_epochs} needs layers to train; pass "
                     "--unfreeze_top=N (or --unfreeze_blocks, --unfreeze_from, "
                     "--gradual_unfreeze) as well")


def _batch(config) -> None:
  """--effective_batch_size against --batch_size and --gradient_accumulation_steps."""
  t, size = config.training, config.data.batch_size
  if not t.effective_batch_size:
    return
  if t.gradient_accumulation_steps > 1:
    raise UsageError("--effective_batch_size: sets the accumulation steps itself; pass it or "
                     "--gradient_accumulation_steps, not both")
  if size != "auto" and t.effective_batch_size % size:
    raise UsageError(f"--effective_batch_size={t.effective_batch_size}: must be a multiple "
                     f"of --batch_size={size} (or pass --batch_size=auto)")


def check_accumulation(config) -> None:
  """Raises a UsageError when a `RunConfig` accumulates gradients (its
  --gradient_accumulation_steps, or --effective_batch_size over a numeric --batch_size)
  with no phase trained by epochs to accumulate them in."""
  t, size = config.training, config.data.batch_size
  steps = t.gradient_accumulation_steps
  if t.effective_batch_size and size != "auto":
    steps = t.effective_batch_size // size
  if steps > 1 and not _last_phase_by_epochs(config):
    flag = "gradient_accumulation_steps" if t.gradient_accumulation_steps > 1 else \
        "effective_batch_size"
    raise UsageError(f"--{flag}: accumulates the gradients of phases trained by epochs, and "
                     "the convex head is one solve; add a fine-tune phase (--fine_tune_epochs "
                     "with an unfreeze flag) or pass --head_solver=epochs")


def _last_phase_by_epochs(config) -> bool:
  """Whether a `RunConfig`'s last phase trains by epochs (not one convex solve)."""
  t, d = config.training, config.data
  return bool(t.fine_tune_epochs or t.head_solver == "epochs" or config.model.head
              or d.augment or d.mixup or d.cutmix)


def _methods(config) -> None:
  """Raises a UsageError for methods a `RunConfig` cannot honour (what they need from the
  model and training settings)."""
  m, t, k = config.model, config.training, config.methods
  if not config.data.unlabeled_source or k.teacher:
    for name in ("self_training_rounds", "pseudo_label_threshold", "pseudo_labels_per_class"):
      if getattr(k, name) != DEFAULTS[name]:
        raise UsageError(f"--{name}: only goes with unlabelled examples (--unlabeled_dir, "
                         "--unlabeled_csv, --unlabeled_tfrecord, --unlabeled_text_dir)"
                         + (" and without --teacher (which distils on them)" if k.teacher
                            else ""))
  if k.teacher and k.recipe == "few_shot":
    raise UsageError("--teacher: distils into the head and the fine-tuned backbone; "
                     "--recipe=few_shot trains on pairs of labels; pass one of them")
  if k.average != "best" and not _last_phase_by_epochs(config):
    raise UsageError(f"--average={k.average}: averages epochs, and the convex head is one "
                     "solve; add a fine-tune phase (--fine_tune_epochs with an unfreeze flag) "
                     "or pass --head_solver=epochs")
  needs_fine_tune = [f for f, on in (("wise_ft", k.wise_ft), ("l2sp", k.l2sp),
                                     ("peft", k.peft != "none")) if on]
  if needs_fine_tune and not t.fine_tune_epochs:
    raise UsageError(f"--{needs_fine_tune[0]}: acts on the fine-tune phase; pass "
                     "--fine_tune_epochs=N with --unfreeze_blocks (or another unfreeze flag)")
  if k.peft != "none" and m.bn_mode == "train":
    raise UsageError(f"--bn_mode=train: --peft={k.peft} keeps the backbone's batch-norm "
                     "statistics fixed; leave --bn_mode at frozen or affine")
  if k.peft != "none" and m.gradual_unfreeze:
    raise UsageError(f"--gradual_unfreeze: --peft={k.peft} trains one fixed set of "
                     "parameters; use --unfreeze_blocks (or --unfreeze_top/--unfreeze_from)")


MOVED_WITH_PIXELS = ("flip", "zoom", "translate", "contrast")  # augmentations such labels take


def check_labels_on_pixels(config, task: str, what: str, squashed: str) -> None:
  """Raises a UsageError for RunConfig options a task whose labels lie on the pixels
  (`what`: "masks", "boxes") cannot honour: weighting or mixing examples, calibration, a
  searched head, a --resize other than squashing (`squashed`: what happens to the labels
  then) and augmentations that do not move the labels."""
  d, t = config.data, config.training
  refuse(task, class_weight=d.class_weight != "none", oversample=d.oversample,
         slice_column=bool(d.slice_column), calibrate=t.calibrate != "none",
         mixup=bool(d.mixup), cutmix=bool(d.cutmix), label_smoothing=bool(t.label_smoothing),
         head=bool(config.model.head), recipe=config.methods.recipe == "few_shot",
         label_column=d.label_column != "label")
  if d.resize != "squash":
    raise UsageError(f"--resize: --task={task} squashes images to the square and {squashed}; "
                     "leave --resize out")
  other = [a for a in d.augment if a not in MOVED_WITH_PIXELS]
  if other:
    raise UsageError(f"--augment={other[0]}: --task={task} moves {what} with images for "
                     f"{', '.join(MOVED_WITH_PIXELS)}")
