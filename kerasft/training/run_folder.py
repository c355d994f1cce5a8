"""`RunFolder`: every file of a training run's folder, named once, written atomically.

    runs/NAME/
      config.json        the resolved RunConfig (any run can be repeated from it)
      run_id.json        made when the run starts (its exports' model cards name it)
      labels.txt         class (or target) names in output order
      fit_state.json     training segments done and the best monitored value (resume)
      resume.weights.h5  the weights after the last finished segment (resume)
      backup/            keras.callbacks.BackupAndRestore, per segment and worker
      epochs.jsonl       one line per epoch (metrics, rate, phase, seconds)
      history.json       the per-epoch history of the whole run
      best.keras         the best epoch's model (raw inputs in), or the average kept
      best.keras.npz     --peft=lora: its weights as in memory (LoRA factors unmerged)
      few_shot.weights.h5  --recipe=few_shot: the contrastively tuned encoder
      metrics.json, *.png  the validation report
      report.html        the run report (`kerasft.reporting.html`)
      logs/              TensorBoard
      feature_cache/     cached backbone features that did not fit in memory
      top_k/, head_phase.npz, ema.npz, averaging.json, wise_ft.png
                         --average / --wise_ft: kept epochs, head-phase weights, EMA, scores
      adapter.npz        --save_adapter: LoRA factors and head with the config and labels
      state.json         {"status": "finished", "export_path", "seconds"} once exported
      timings.json       where the whole run's seconds went (phases, "other", total)

A non-chief worker of a multi-worker run reads the chief's folder but writes its own
outputs into a scratch folder (`out`), which is removed afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid

from kerasft.config import RunConfig
from kerasft.core.errors import UsageError
from kerasft.core.files import LABELS, read_json, read_labels, write_json, write_labels


CONFIG, STATE, FIT_STATE = "config.json", "state.json", "fit_state.json"
RESUME_WEIGHTS, BEST, HISTORY, METRICS = ("resume.weights.h5", "best.keras", "history.json",
                                          "metrics.json")
TIMINGS = "timings.json"
EPOCH_LOG, LOGS, BACKUP, FEATURE_CACHE = "epochs.jsonl", "logs", "backup", "feature_cache"
ADAPTER, RUN_ID = "adapter.npz", "run_id.json"


@dataclasses.dataclass(frozen=True)
class RunFolder:
  """A run's folder `root`; `out` is where this process writes its outputs (the chief:
  `root`; another worker: a scratch folder)."""
  root: str
  out: str = ""

  def __post_init__(self):
    if not self.out:
      object.__setattr__(self, "out", self.root)

  def path(self, name: str) -> str:
    """A shared file of the run (config, labels, fit state, resume weights, backups)."""
    return os.path.join(self.root, name)

  def output(self, name: str) -> str:
    """A file this process writes (best.keras, epoch log, history, reports, logs)."""
    return os.path.join(self.out, name)

  def is_finished(self) -> bool:
    """Whether the run went through to its export."""
    return read_json(self.path(STATE), {}).get("status") == "finished"

  def check_new_or_same(self, config: RunConfig) -> bool:
    """Raises a UsageError when the folder holds a finished run (without --overwrite) or
    an unfinished one with other settings; returns whether there is one to resume."""
    if config.overwrite or not os.path.exists(self.path(CONFIG)):
      return False
    if self.is_finished():
      raise UsageError(f"--model_dir: {self.root} already holds a finished run; pass "
                       "--overwrite to replace it or --name/--model_dir for a new run")
    previous = dataclasses.replace(self.read_config(), overwrite=False)
    if previous != dataclasses.replace(config, overwrite=False):
      raise UsageError(f"--model_dir: {self.root} holds an unfinished run with other "
                       "settings; run the same command to resume it, or pass --overwrite")
    return True

  def start(self, config: RunConfig, class_names: list[str]) -> None:
    """Makes the folder (emptied first with --overwrite) and writes config and labels."""
    if config.overwrite and os.path.isdir(self.root):
      shutil.rmtree(self.root)
    os.makedirs(self.root, exist_ok=True)
    if not read_json(self.path(RUN_ID)):
      write_json({"id": uuid.uuid4().hex}, self.path(RUN_ID))
    config.to_json(self.path(CONFIG))
    write_labels(self.path(LABELS), class_names)

  def run_id(self) -> str:
    """This run's id: made when the run starts, kept when it resumes, new after
    --overwrite (an export records it, so a resumed run does not export twice)."""
    return (read_json(self.path(RUN_ID)) or {}).get("id", "")

  def read_config(self) -> RunConfig:
    return RunConfig.from_json(self.path(CONFIG))

  def class_names(self) -> list[str]:
    return read_labels(self.path(LABELS))

  def fit_state(self) -> dict:
    """{"segments_done": N, "best": the best monitored value so far (signed) or None}."""
    return read_json(self.path(FIT_STATE), {"segments_done": 0, "best": None})

  def write_fit_state(self, segments_done: int, best: float) -> None:
    write_json({"segments_done": segments_done, "best": best}, self.path(FIT_STATE))

  def backup_dir(self, segment: int, worker: str) -> str:
    return os.path.join(self.root, BACKUP, f"segment_{segment}", worker)

  def remove_backups(self, worker: str) -> None:
    """Removes `worker`'s backup folders (a finished non-chief worker's)."""
    base = os.path.join(self.root, BACKUP)
    for segment in os.listdir(base) if os.path.isdir(base) else []:
      shutil.rmtree(os.path.join(base, segment, worker), ignore_errors=True)

  def metrics(self):
    """The validation metrics of the run (None before its report)."""
    return read_json(self.path(METRICS))

  def history(self):
    """The per-epoch history (None when absent)."""
    return read_json(self.path(HISTORY))

  def finish(self, export_path: str, seconds: dict) -> None:
    write_json({"status": "finished", "export_path": export_path, "seconds": seconds},
               self.path(STATE))

  def require(self, checkpoint: str = "", flag: str = "run_dir") -> str:
    """Checks that the folder holds a finished training's files; returns the checkpoint
    to load (default: best.keras). Raises a UsageError naming `flag`."""
    paths = [checkpoint or self.path(BEST), self.path(CONFIG), self.path(LABELS)]
    for path in paths:
      if not os.path.isfile(path):
        raise UsageError(f"--{flag}: {path} does not exist; pass the --model_dir of a "
                         "training run (runs/NAME) or a .keras checkpoint inside one")
    return paths[0]
