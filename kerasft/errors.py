"""The one exception type for user mistakes.

Entry points print a `UsageError` as a single `error: ...` line on stderr and exit with
code 2. Anything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
  """A mistake in the user's flags, files or data, with what to do about it.

  The message names the flag or file, says what was received and what to do, e.g.
  `UsageError("--data_dir: folder /x does not exist; pass a folder with one sub-folder per class")`.
  """


def run_app(main) -> None:
  """`absl.app.run(main)` for an entry point: user mistakes become one line and exit 2.

  A bad flag value (absl's parsing error) or a `UsageError` raised by `main` prints
  `error: ...` on stderr and exits with code 2, without a traceback.
  """
  import sys  # pylint: disable=g-import-not-at-top
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  def guarded(argv):
    try:
      return main(argv)
    except UsageError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(guarded, flags_parser=parse)
