"""A time budget for training: within `deadline(seconds)`, `fit` stops at the first batch
end after it (`Deadline`) and no further training segment starts (`past_deadline`). Every
reading of the budget's time goes through `now` (tests replace it with a clock of their
own, so that no test depends on the machine's speed)."""

from __future__ import annotations

import contextlib
import time

import keras

_DEADLINES: list[float] = []  # `now()` values; the innermost `deadline()` counts


def now() -> float:
  """The budget's clock: seconds from an arbitrary start (`time.monotonic`)."""
  return time.monotonic()


@contextlib.contextmanager
def deadline(seconds_from_now: float):
  """Within the block, training stops at the first batch end after `seconds_from_now`
  (`Deadline`), and `kerasft.training.fit` starts no further segment (a search's time budget)."""
  _DEADLINES.append(now() + seconds_from_now)
  try:
    yield
  finally:
    _DEADLINES.pop()


def past_deadline():
  """None without a `deadline()`; else whether it has passed."""
  return None if not _DEADLINES else now() > _DEADLINES[-1]


class Deadline(keras.callbacks.Callback):
  """Stops `fit` at the end of the first batch after the active `deadline()` (the epoch
  then ends with its validation, as with early stopping)."""

  def on_train_batch_end(self, batch, logs=None):
    if past_deadline():
      self.model.stop_training = True
