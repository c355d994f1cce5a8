"""The search: frozen-feature probes of the candidate backbones, then KerasTuner's oracle
over `kerasft.tuning.space`, each trial a resumable kerasft run in the search folder.

    <model_dir>/                 the search folder (--model_dir, default runs/<name>)
      keras_tuner/               KerasTuner's oracle and trial state (its resume)
      trials/<id>/               each trial's run folder, and trial.json (its record)
      search.json                time spent so far (a resumed search keeps its budget)

Frozen trials of one backbone share one feature extraction (`features.shared_extraction`);
a trial that unfreezes solves its head on those shared features in a fraction of a second
before fine-tuning. Trials are compared on the validation split only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

from absl import logging

from kerasft.core import budget
from kerasft.tasks import registry as tasks
from kerasft.core.errors import UsageError
from kerasft.core.files import read_json, write_json
from kerasft.tuning import space as space_module
from kerasft.config import backbones
from kerasft.workflows.train import run_training

TRIALS, STATE, TUNER = "trials", "search.json", "keras_tuner"
PROBE_MARGIN = 0.03  # backbones whose probe is within this of the best get full trials


@dataclasses.dataclass(frozen=True)
class Record:
  """One finished trial: its id, kind (probe, frozen, unfrozen), backbone, the search
  entries it used (`space.effective`), its config, the validation objective, seconds,
  status and when it finished (seconds since the search began)."""
  trial_id: str
  kind: str
  model: str
  values: dict
  config: dict
  value: float | None
  seconds: float
  status: str
  finished_at: float
  worker: str = ""  # KerasTuner's tuner id of the process that ran it


def run_trial(trial_id: str, config, root: str, kind: str, clock) -> Record:
  """Trains (or resumes) one trial's run under `root`/trials/<id> without exporting;
  returns its record, also written as trial.json there. A finished trial is read back."""
  folder = os.path.join(root, TRIALS, trial_id)
  done = read_json(os.path.join(folder, "trial.json"))
  if done:
    return Record(**done)
  config = dataclasses.replace(config, name=f"trial-{trial_id}",
                               model_dir=os.path.join(folder, "run"),
                               export_dir=os.path.join(folder, "unused"), overwrite=False)
  objective, _ = tasks.for_config(config).output.objective
  start, status, value = time.perf_counter(), "completed", None
  try:
    result = run_training(config, verbose=0, export=False)
    value = result.metrics.get(objective)
    if budget.past_deadline():
      status = "stopped by the time budget"
  except UsageError as e:
    status = f"failed: {e}"
  record = Record(trial_id, kind, config.model.model, space_module.effective(config),
                  config.to_dict(), value, time.perf_counter() - start, status, clock(),
                  os.environ.get("KERASTUNER_TUNER_ID", "tuner0"))
  write_json(dataclasses.asdict(record), os.path.join(folder, "trial.json"))
  logging.info("trial %s (%s, %s): %s %s in %.0f s", trial_id, kind, config.model.model,
               objective, "-" if value is None else f"{value:.4f}", record.seconds)
  return record


def records(root: str) -> list[Record]:
  """Every finished trial's record under `root`, in the order they finished."""
  folder = os.path.join(root, TRIALS)
  found = [read_json(os.path.join(folder, t, "trial.json")) for t in sorted(os.listdir(folder))
           ] if os.path.isdir(folder) else []
  return sorted((Record(**r) for r in found if r), key=lambda r: r.finished_at)


def probe(config, candidates: tuple, root: str, clock) -> tuple[list[str], list[Record]]:
  """Ranks `candidates` by a frozen default trial each (features extracted once per
  backbone); returns (the backbones worth full trials, the probe records)."""
  done = []
  for i, name in enumerate(candidates):
    model = dataclasses.replace(config.model, model=name, image_size=(
        config.model.image_size if name == config.model.model else None))
    base = dataclasses.replace(config, model=model).resolved()
    done.append(run_trial(f"probe-{i}", base, root, "probe", clock))
  scored = [r for r in done if r.value is not None]
  if not scored:
    raise UsageError(f"--models: no backbone could be trained ({done[0].status})")
  sign = -1.0 if tasks.for_config(config).output.objective[1] == "min" else 1.0
  ranked = sorted(scored, key=lambda r: -sign * r.value)
  best = sign * ranked[0].value
  keep = [r.model for r in ranked if sign * r.value >= best - PROBE_MARGIN]
  keep = keep[:max(1, math.ceil(len(candidates) / 2))]
  if len(candidates) > 1:
    logging.info("probes: %s; full trials for %s", ", ".join(
        f"{r.model} {r.value:.4f}" for r in ranked), ", ".join(keep))
  return keep, done


def image_sizes(model_name: str) -> tuple:
  """The searched image sizes a Keras Applications backbone accepts (none for others)."""
  if backbones.source(model_name)[0]:
    return ()
  spec = backbones.spec(model_name)
  return tuple(s for s in space_module.SPACE["image_size"].values
               if spec.min_size <= s <= spec.default_size)


class Clock:
  """Seconds since the search began, across resumed processes (`search.json`)."""

  def __init__(self, root: str):
    self._path = os.path.join(root, STATE)
    self._before = float(read_json(self._path, {}).get("spent", 0.0))
    self._start = budget.now()

  def __call__(self) -> float:
    return self._before + budget.now() - self._start

  def save(self) -> None:
    write_json({"spent": self()}, self._path)


def make_oracle(kind: str, objective, hp, max_trials: int | None, deadline: float | None,
                seed: int):
  """KerasTuner's Hyperband, Bayesian or random-search oracle over `hp`, which stops
  creating trials after `max_trials` or once `budget.now()` passes `deadline`."""
  import keras_tuner  # pylint: disable=g-import-not-at-top
  base = {"hyperband": keras_tuner.oracles.HyperbandOracle,
          "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
          "random": keras_tuner.oracles.RandomSearchOracle}[kind]

  class Budgeted(base):  # pylint: disable=missing-class-docstring

    def populate_space(self, trial_id):
      if deadline is not None and budget.now() > deadline:
        return {"status": "STOPPED", "values": None}
      return super().populate_space(trial_id)

  kwargs = {"max_epochs": space_module.HYPERBAND_MAX_EPOCHS,  # with a deadline: more
             "hyperband_iterations": 1 if deadline is None else 10**3,  # brackets until it
             } if kind == "hyperband" else {"max_trials": max_trials or 10**6}
  oracle = Budgeted(objective=objective, hyperparameters=hp, seed=seed,
                    max_consecutive_failed_trials=10**6, **kwargs)
  oracle.max_trials = max_trials or None
  return oracle
