"""A run's training plan: named segments, each one `fit` call.

The head phase trains the new head on the frozen backbone; the fine-tune phase (when
asked for) unfreezes part of the backbone at its own rate, in one segment, or with
--gradual_unfreeze in one segment per epoch, each unfreezing more blocks. Segments are
what a resumed run counts as done.
"""

from __future__ import annotations

import dataclasses

from absl import logging

from kerasft.config import checks
from kerasft.models import memory


@dataclasses.dataclass(frozen=True)
class Segment:
  """One `fit` call, named "head", "fine_tune" or "unfreeze_K" (a gradual-unfreeze step
  with K blocks unfrozen): epochs [first, last) of `phase` ("head" or "fine_tune").

  n_blocks: the top blocks the fine-tune phase unfreezes (0: as --unfreeze_top/_from say).
  learning_rate: the phase's peak rate; phase_epochs: the phase's length (its schedule
  spans all of them); offset: epochs of the phase before this segment.
  """
  name: str
  phase: str
  first: int
  last: int
  n_blocks: int
  learning_rate: float
  phase_epochs: int
  offset: int = 0


def make_plan(training, model, total_blocks: int, head_epochs: int = 0
              ) -> tuple[Segment, ...]:
  """The segments a `TrainingConfig` (resolved) and `ModelConfig` ask for, in order, for
  a backbone of `total_blocks` blocks. head_epochs: the head phase's length when it is not
  --epochs (1: one convex solve, `kerasft.training.head_solver`)."""
  t = dataclasses.replace(training, epochs=head_epochs or training.epochs)
  head = Segment("head", "head", 0, t.epochs, 0, t.learning_rate, t.epochs)
  if model.gradual_unfreeze:
    steps = [min((e + 1) * model.gradual_unfreeze, total_blocks)
             for e in range(t.fine_tune_epochs)]
    return (head,) + tuple(
        Segment(f"unfreeze_{k}", "fine_tune", t.epochs + e, t.epochs + e + 1, k,
                t.fine_tune_learning_rate, t.fine_tune_epochs, e)
        for e, k in enumerate(steps))
  if t.fine_tune_epochs:
    return (head, Segment("fine_tune", "fine_tune", t.epochs, t.epochs + t.fine_tune_epochs,
                          model.unfreeze_blocks, t.fine_tune_learning_rate,
                          t.fine_tune_epochs))
  return (head,)


def batch(config, model, replicas: int, available: int | None = None) -> tuple:
  """(a `RunConfig` whose --batch_size is a number and whose --gradient_accumulation_steps
  reach --effective_batch_size, now 0: an ordinary config; the model card's "batch" entry,
  or {} when neither flag was given). --batch_size=auto takes the largest batch whose
  activations for `model` fit `available` bytes [`memory.batch_memory()`] per replica
  (`memory.auto_batch`) up to --effective_batch_size [32]. Raises a UsageError when
  nothing fits, or when the steps accumulate in no phase trained by epochs."""
  d, t = config.data, config.training
  if d.batch_size != "auto" and not t.effective_batch_size:
    return config, {}
  effective = t.effective_batch_size or d.inference_batch  # auto: 32
  how = "--batch_size"
  size = d.batch_size
  if size == "auto":
    available = memory.batch_memory() if available is None else available
    per = memory.per_example(model, bool(t.fine_tune_epochs and config.model.unfreezes))
    size, _ = memory.auto_batch(per, effective, replicas, available)
    how = (f"auto: the largest dividing {effective} whose activations (at least "
           f"{per * size / replicas / 2**20:,.0f} MiB per replica) fit "
           f"{available / 2**30:,.1f} GiB")
  config = dataclasses.replace(config, data=dataclasses.replace(d, batch_size=size),
                               training=dataclasses.replace(t, effective_batch_size=effective))
  checks.check_accumulation(config)
  config = dataclasses.replace(config, training=dataclasses.replace(
      t, effective_batch_size=0, gradient_accumulation_steps=effective // size))
  logging.info("batch: %d examples x %d accumulated = %d per optimizer step (%s)", size,
               effective // size, effective, how)
  return config, {"batch_size": size, "gradient_accumulation_steps": effective // size,
                  "effective_batch_size": effective, "chosen": how}
