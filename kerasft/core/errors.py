"""The one exception type for user mistakes.

Entry points print a `UsageError` as a single `error: ...` line on stderr and exit with
code 2 (`guarded`, used by `kerasft.core.cli.run_app`). Anything else is a bug and keeps its
traceback.
"""

import signal
import sys


class UsageError(Exception):
  """A mistake in the user's flags, files or data, with what to do about it.

  The message names the flag or file, says what was received and what to do, e.g.
  `UsageError("--data_dir: folder /x does not exist; pass a folder with one sub-folder per class")`.
  """


def refuse(task: str, **used: bool) -> None:
  """Raises a UsageError naming the first flag in `used` that is on: not for --task=`task`."""
  chosen = [flag for flag, on in used.items() if on]
  if chosen:
    raise UsageError(f"--{chosen[0]}: not for --task={task}")


class Interrupted(BaseException):
  """SIGTERM or SIGINT arrived (a preemption, Ctrl-C): raised where the program is, so
  training stops at once; what was saved (every finished epoch, the best one) stays, and
  staging folders are removed on the way out."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


PROGRESS: dict = {}  # what the run is doing, for the interruption line ("epoch", "epochs")
DEFERRED = {"depth": 0, "signum": 0}  # inside `fit`: the signal waits for a batch's end


def _raise(signum, frame):
  """Raises `Interrupted` at once, or inside `fit` (where Keras writes backups that must
  not be cut short) leaves it for `raise_pending` at the next batch's end."""
  del frame
  if DEFERRED["depth"]:
    DEFERRED["signum"] = signum
    return
  raise Interrupted(signum)


def raise_pending() -> None:
  """Raises the `Interrupted` a signal left while deferred (see `kerasft.training.callbacks`)."""
  if DEFERRED["signum"]:
    signum, DEFERRED["signum"], DEFERRED["depth"] = DEFERRED["signum"], 0, 0
    raise Interrupted(signum)


def disk_full(error: BaseException):
  """The folder a write failed in for lack of space (None: not a full disk)."""
  import errno  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  if getattr(error, "errno", None) != errno.ENOSPC and "No space left on device" not in str(
      error):
    return None
  path = getattr(error, "filename", None) or str(error).split(";")[0].strip()
  if os.path.sep not in path:
    return "the output folder"
  parts = os.path.dirname(path).split(os.path.sep)
  staged = [i for i, p in enumerate(parts) if p.startswith(".tmp-")]  # an export's staging
  return os.path.sep.join(parts[:staged[0]] if staged else parts)


def guarded(main):
  """`main` whose `UsageError` prints one `error:` line and exits with code 2, and which a
  SIGTERM or SIGINT stops with one line and exit code 128 + the signal's number."""
  def run(argv):
    DEFERRED.update(depth=0, signum=0)
    try:
      previous = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave the signals alone
      previous = {}
    try:
      return main(argv)
    except UsageError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except Exception as e:  # pylint: disable=broad-except
      where = disk_full(e)
      if where is None:
        raise
      print(f"error: no space left on the device of {where}; free space there and run the "
            "same command again (finished epochs and earlier versions are kept)",
            file=sys.stderr)
      sys.exit(1)
    except Interrupted as e:
      where = (f" at epoch {PROGRESS['epoch'] + 1} of {PROGRESS['epochs']}"
               if "epoch" in PROGRESS else "")
      print(f"interrupted ({e}){where}; run the same command to resume", file=sys.stderr)
      sys.exit(128 + e.signum)
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
  return run
