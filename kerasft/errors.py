"""The one exception type for user mistakes.

Entry points print a `UsageError` as a single `error: ...` line on stderr and exit with
code 2 (`guarded`, used by `kerasft.cli.run_app`). Anything else is a bug and keeps its
traceback.
"""

import sys


class UsageError(Exception):
  """A mistake in the user's flags, files or data, with what to do about it.

  The message names the flag or file, says what was received and what to do, e.g.
  `UsageError("--data_dir: folder /x does not exist; pass a folder with one sub-folder per class")`.
  """


def guarded(main):
  """`main` whose `UsageError` prints one `error:` line and exits with code 2."""
  def run(argv):
    try:
      return main(argv)
    except UsageError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  return run
