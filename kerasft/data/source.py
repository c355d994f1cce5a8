"""`Source`: where examples come from, as every message about them names it."""

from __future__ import annotations

import dataclasses

from kerasft.core.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Source:
  """A data source: the flag it was given by (`csv`, `val_dir`, `tfds`, ...) and its path (a
  file, folder, glob, or a TFDS split such as `mnist[train]`). Readers take one `Source`
  and name it in every `UsageError` they raise."""
  flag: str
  path: str = ""

  def error(self, message: str) -> UsageError:
    """`UsageError("--flag: message")`."""
    return UsageError(f"--{self.flag}: {message}")

  def at(self, path: str) -> "Source":
    """The same flag at another path (a file of a glob, a sub-folder)."""
    return dataclasses.replace(self, path=path)
