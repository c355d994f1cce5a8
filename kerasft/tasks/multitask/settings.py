"""Several heads' settings: each head's loss weight."""

from __future__ import annotations

import dataclasses

from kerasft.core.settings import positive_float, setting


@dataclasses.dataclass(frozen=True)
class MultitaskSettings:
  """Several heads on one backbone (`--label_column=a,b` with a --task per head)."""
  FOR = "only for several heads (--label_column=a,b)"  # what a message says it is for

  task_weights: tuple[float, ...] = setting((), "Several heads: each head's loss weight, "
                                            "in --label_column order [1 each].")

  def __post_init__(self):
    object.__setattr__(self, "task_weights", tuple(self.task_weights))
    for weight in self.task_weights:
      positive_float(weight, "task_weights")
