"""absl flags defined from the config dataclasses, and the dataclasses read back from them.

Every entry point calls `define_flags(SomeConfig, ...)` at import; `from_flags(SomeConfig)`
turns the parsed flags into the validated dataclass. A flag that two entry points share
(`--data_dir`, `--batch_size`, `--export`) is defined once, so any entry modules can be
imported into one process. The library below the entry points never reads `FLAGS`.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Iterable, Optional

from absl import flags

from kerasft.core import settings
from kerasft.core.errors import UsageError, guarded

flags.disclaim_key_flags()  # flags defined here are key flags of the entry point calling us


def _kind(tp) -> tuple[type, bool]:
  """(the base type, whether None is allowed) of an annotation such as Optional[int]."""
  args = typing.get_args(tp)
  if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
    return next(a for a in args if a is not type(None)), True
  return tp, False


def flag_fields(cls, only: Optional[Iterable[str]] = None) -> list[tuple]:
  """(field, type) of every flag that dataclass `cls` declares: its own plain fields and
  those of nested dataclass fields, restricted to the names in `only` when given."""
  out = []
  for field, tp in settings.fields(cls):
    if dataclasses.is_dataclass(tp):
      out += flag_fields(tp, only)
    elif only is None or field.name in only:
      out.append((field, tp))
  return out


def _int_or_word(tp) -> bool:
  """Whether annotation `tp` is `int | str`: a number or a word such as `auto`."""
  return set(typing.get_args(tp)) == {int, str}


def _define(field: dataclasses.Field, tp, flag_values: flags.FlagValues) -> None:
  base, _ = _kind(tp)
  name, default = field.name, field.default
  if _int_or_word(base):
    base, default = str, str(default)
  help_text, choices = field.metadata.get("help", ""), field.metadata.get("choices", ())
  if not help_text:
    raise ValueError(f"{name}: a setting needs help text")
  if typing.get_origin(base) is tuple:
    flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
  elif base is bool:
    flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
  elif base is int:
    flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
  elif base is float:
    flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
  elif choices:
    flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
  else:
    flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def define_flags(cls, only: Optional[Iterable[str]] = None,
                 flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines a flag for each field of dataclass `cls` (see `flag_fields`).

  A flag another entry point defined already is kept (declared a key flag of the caller);
  it must have the same default, else this is a bug and raises ValueError.
  """
  for field, tp in flag_fields(cls, only):
    if field.name in flag_values:
      existing = flag_values[field.name].default
      expected = list(map(str, field.default)) if isinstance(field.default, tuple) else \
          str(field.default) if _int_or_word(tp) else field.default
      if existing != expected:
        raise ValueError(f"--{field.name} is declared twice with defaults {existing!r} and "
                         f"{expected!r}")
      flags.declare_key_flag(field.name, flag_values=flag_values)
    else:
      _define(field, tp, flag_values)


def _value(field: dataclasses.Field, tp, flag_values: flags.FlagValues):
  value = flag_values[field.name].value
  base, _ = _kind(tp)
  if typing.get_origin(base) is tuple:
    item = typing.get_args(base)[0]
    try:
      return tuple(item(v) for v in value)
    except ValueError:
      raise UsageError(f"--{field.name}: expected comma-separated {item.__name__} values, got "
                       f"{','.join(value)!r}") from None
  if _int_or_word(base):  # the dataclass checks the word
    return int(value) if value.strip().lstrip("-").isdigit() else value
  return value


def from_flags(cls, only: Optional[Iterable[str]] = None,
               flag_values: flags.FlagValues = flags.FLAGS, **overrides):
  """An instance of dataclass `cls` from the parsed flags (validated by `cls` itself).

  Fields outside `only` keep their defaults; `overrides` replace values by field name.
  """
  kwargs = {}
  for field, tp in settings.fields(cls):
    if dataclasses.is_dataclass(tp):
      kwargs[field.name] = from_flags(tp, only, flag_values, **overrides)
    elif field.name in overrides:
      kwargs[field.name] = overrides[field.name]
    elif only is None or field.name in only:
      kwargs[field.name] = _value(field, tp, flag_values)
  return cls(**kwargs)


def progress_verbosity(verbose="auto"):
  """Keras' `verbose` for progress: "auto" is a redrawn bar (1) on a terminal and one line
  per epoch (2) when stdout is a file or a pipe, which would fill with the bar's escape
  codes and redraws."""
  if verbose != "auto":
    return verbose
  return 1 if sys.stdout.isatty() else 2


def given(name: str, flag_values: flags.FlagValues = flags.FLAGS) -> bool:
  """Whether the user passed `--name` on the command line (or in a flagfile)."""
  return bool(flag_values[name].present)


def _parse(argv):
  """absl's flag parsing; a bad flag value prints one `error:` line and exits with 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run_app(main) -> None:
  """`absl.app.run(main)` for an entry point: user mistakes become one line and exit 2."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(guarded(main), flags_parser=_parse)


def run_in_process(main, argv: list[str]) -> int:
  """Parses `argv` and runs `main` as `run_app` would, in this process (tests, notebooks):
  returns the exit code. The caller restores the flags (absl's `flagsaver`)."""
  flags.FLAGS.unparse_flags()
  try:
    guarded(main)(_parse(argv))
  except SystemExit as e:
    return int(e.code or 0)
  return 0
