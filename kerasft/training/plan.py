"""A run's training plan: named segments, each one `fit` call.

The head phase trains the new head on the frozen backbone; the fine-tune phase (when
asked for) unfreezes part of the backbone at its own rate, in one segment, or with
--gradual_unfreeze in one segment per epoch, each unfreezing more blocks. Segments are
what a resumed run counts as done.
"""

from __future__ import annotations

import dataclasses


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
