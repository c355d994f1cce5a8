"""The one exception type for user mistakes.

Entry points print a `UsageError` as a single `error: ...` line on stderr and exit with
code 2. Anything else is a bug and keeps its traceback.
"""

import sys


class UsageError(Exception):
  """A mistake in the user's flags, files or data, with what to do about it.

  The message names the flag or file, says what was received and what to do, e.g.
  `UsageError("--data_dir: folder /x does not exist; pass a folder with one sub-folder per class")`.
  """


def _parse(argv):
  """absl's flag parsing; a bad flag value prints one `error:` line and exits with 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def guarded(main):
  """`main` whose `UsageError` prints one `error:` line and exits with code 2."""
  def run(argv):
    try:
      return main(argv)
    except UsageError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  return run


def run_app(main) -> None:
  """`absl.app.run(main)` for an entry point: user mistakes become one line and exit 2."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(guarded(main), flags_parser=_parse)


def run_in_process(main, argv: list[str]) -> int:
  """Parses `argv` and runs `main` as `run_app` would, in this process (tests, notebooks):
  returns the exit code. The caller restores the flags (absl's `flagsaver`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  try:
    guarded(main)(_parse(argv))
  except SystemExit as e:
    return int(e.code or 0)
  return 0
