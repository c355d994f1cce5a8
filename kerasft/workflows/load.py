"""A finished run's model, loaded again: its checkpoint (`load_run`) or an adapter file
applied to its backbone (`load_adapter`)."""

from __future__ import annotations

import os

from kerasft.config import RunConfig
from kerasft.core.errors import UsageError
from kerasft.data import examples as data
from kerasft.methods import peft
from kerasft.tasks import registry
from kerasft.training.run_folder import RunFolder


def load_run(run_dir: str, checkpoint: str = ""):
  """Loads a training run's checkpoint (default: its best); returns (model, task,
  class names)."""
  folder = RunFolder(run_dir)
  flag = "checkpoint" if checkpoint else "run_dir"
  path = folder.require(checkpoint, flag)
  task = registry.for_config(folder.read_config())
  try:
    model = task.load_model(path)
  except (OSError, ValueError, TypeError, KeyError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UsageError(f"--{flag}: {path} cannot be loaded ({first}); train the run again or "
                     "pass another checkpoint") from None
  return model, task, folder.class_names()


def load_adapter(path: str):
  """Builds the model an adapter file was made from: its backbone (loaded as its config
  says), LoRA on the same layers, the adapter's factors and head; returns (model, task,
  class names)."""
  if not os.path.isfile(path):
    raise UsageError(f"--adapter: {path} does not exist")
  meta, arrays = peft.read_adapter(path)
  task = registry.for_config(RunConfig.from_dict(meta["config"]))
  labels = meta["labels"]
  task, model = task.build_model(data.Examples([], [], labels, task.output.labels), meta["stats"])
  peft.enable(model, task.config)
  peft.apply_adapter(model, meta, arrays)
  return model, task, labels
