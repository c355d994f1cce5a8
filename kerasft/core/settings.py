"""Declaring a setting once: its default, help text and choices live on the dataclass field.

    model: str = setting("mobilenet", "The backbone ...")
    bn_mode: str = setting("frozen", "Unfrozen BatchNorm ...", choices=("frozen", "affine"))

`kerasft.core.cli` defines every entry point's absl flags from these fields, and `check_choices`
validates every field that has choices, so a choice is written in one place. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from kerasft.core.errors import UsageError


def setting(default: Any = dataclasses.MISSING, help: str = "", choices: tuple = (),  # pylint: disable=redefined-builtin
            factory=None) -> Any:
  """A dataclass field with its flag's `help` and allowed `choices` in its metadata.

  factory: a default factory (for nested dataclasses) instead of `default`.
  """
  metadata = {"help": help, "choices": tuple(choices)}
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def fields(cls) -> list[tuple[dataclasses.Field, Any]]:
  """(field, resolved type) of a dataclass type, in declaration order."""
  hints = typing.get_type_hints(cls)
  return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def check_choices(obj) -> None:
  """Raises a UsageError naming the flag when a field with choices holds another value
  (a tuple field: any item)."""
  for f in dataclasses.fields(obj):
    choices = f.metadata.get("choices")
    if not choices:
      continue
    value = getattr(obj, f.name)
    if isinstance(value, tuple):
      unknown = [v for v in value if v not in choices]
      check(not unknown, f.name, f"must be among {', '.join(choices)}", ",".join(value))
    else:
      check(value in choices, f.name, f"must be one of {', '.join(choices)}", value)


def check(condition: bool, flag: str, message: str, value: Any) -> None:
  """Raises `UsageError("--flag: message, got value")` unless `condition`."""
  if not condition:
    raise UsageError(f"--{flag}: {message}, got {value!r}")


def positive_int(value, flag):
  check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
        flag, "must be a positive integer", value)


def non_negative_int(value, flag):
  check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        flag, "must be an integer >= 0", value)


def positive_float(value, flag):
  check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
        flag, "must be a positive number", value)


def fraction(value, flag, low_open: bool = True, high_open: bool = True):
  """A number in (0, 1), [0, 1) (`low_open=False`) or (0, 1] (`high_open=False`)."""
  ok = isinstance(value, (int, float)) and (0 < value if low_open else 0 <= value) and (
      value < 1 if high_open else value <= 1)
  check(ok, flag, f"must be in {'(' if low_open else '['}0, 1{')' if high_open else ']'}",
        value)
