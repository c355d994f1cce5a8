"""`tune(config, settings)`: the whole search, from probes to the exported winner."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os


from kerasft.config import ModelConfig, RunConfig, backbones as backbone_names
from kerasft.config.commands import TuneConfig
from kerasft.core import budget
from kerasft.core.errors import UsageError
from kerasft.models import backbones, features
from kerasft.tasks import registry as tasks
from kerasft.tuning import report, search, space as space_module
from kerasft.tuning.report import TuneResult
from kerasft.workflows.train import check_outputs

DEFAULT_MAX_TRIALS = 20  # with neither --max_trials nor --time_budget


@functools.lru_cache(maxsize=None)
def _block_count(model_name: str) -> int:
  task = tasks.for_config(RunConfig(model=ModelConfig(model=model_name)))
  return len(backbones.blocks(task.block_model()))


def _tuner_class():
  import keras_tuner  # pylint: disable=g-import-not-at-top

  class Tuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Runs each KerasTuner trial as a kerasft run (`search.run_trial`)."""

    def __init__(self, oracle, base, root, images, clock, **kwargs):
      super().__init__(oracle, directory=root, project_name=search.TUNER, **kwargs)
      self.base, self.root, self.images, self.clock = base, root, images, clock

    def run_trial(self, trial, *args, **kwargs):
      values = dict(trial.hyperparameters.values)
      name = values.get("model", self.base.model.model)
      model = dataclasses.replace(self.base.model, model=name, image_size=values.get(
          "image_size", self.base.model.image_size if name == self.base.model.model else None))
      try:
        config = space_module.to_config(dataclasses.replace(self.base, model=model), values,
                                        _block_count(name), self.images).resolved()
      except UsageError as e:
        raise keras_tuner.errors.FailedTrialError(str(e)) from None
      kind = "unfrozen" if config.training.fine_tune_epochs else "frozen"
      record = search.run_trial(trial.trial_id, config, self.root, kind, self.clock)
      self.clock.save()
      if record.value is None:
        raise keras_tuner.errors.FailedTrialError(record.status)
      return {self.oracle.objective.name: record.value}

  return Tuner


def search_folder(config) -> str:
  """A search's folder: --model_dir, else runs/<name>-tune."""
  return config.model_dir or os.path.join(
      "runs", f"{config.name or backbone_names.default_name(config.model.model)}-tune")


def _objective(output):
  import keras_tuner  # pylint: disable=g-import-not-at-top
  name, direction = output.objective
  return keras_tuner.Objective(f"val_{name}", direction=direction)


def _hyperparameters(settings, overrides: dict, kept: list[str], images: bool, pinned_size,
                     skip: tuple = ()):
  import keras_tuner  # pylint: disable=g-import-not-at-top
  hp = keras_tuner.HyperParameters()
  hp.Choice("model", kept) if len(kept) > 1 else hp.Fixed("model", kept[0])
  sizes = () if pinned_size else tuple(sorted(set.intersection(
      *(set(search.image_sizes(m)) for m in kept)), reverse=True))
  space_module.declare(hp, overrides, images, settings.search == "hyperband", sizes, skip)
  return hp


def tune(config, settings, verbose: int | str = 0, share_features: bool = True
         ) -> TuneResult:
  """Searches fine-tuning recipes for `config`'s data within `settings` (a `TuneConfig`):
  probes each candidate backbone frozen, then runs KerasTuner's oracle over the space;
  writes the search folder's outputs (`kerasft.tuning.report`), exports the best trial and
  evaluates it and the default recipe once on the test split. share_features=False: every
  trial extracts its own features (a naive search, for comparison). Raises UsageError for
  mistakes, before any training."""
  pinned = config.model.image_size is not None  # the user chose it: not searched
  config = dataclasses.replace(config, model_dir=search_folder(config)).resolved()
  tasks.check(config)
  task = tasks.for_config(config).resolve_data()
  config, images = task.config, task.searches_images()
  check_outputs(config)
  overrides = space_module.load(settings.space)
  test_data = report.test_data(config, settings)
  root = config.model_dir
  os.makedirs(root, exist_ok=True)
  clock = search.Clock(root)
  remaining = None if settings.budget is None else max(settings.budget - clock(), 0.0)
  limit = settings.max_trials or (None if settings.budget else DEFAULT_MAX_TRIALS)
  is_worker = os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief" and \
      "KERASTUNER_ORACLE_IP" in os.environ
  deadline_ = (budget.deadline(remaining) if remaining is not None
               else contextlib.nullcontext())
  sharing = features.shared_extraction() if share_features else contextlib.nullcontext(
      features.SharedExtraction())
  with sharing as shared, deadline_:
    deadline = budget.now() + remaining if remaining is not None else None
    candidates = settings.candidates or (config.model.model,)
    kept, probes = ([], []) if is_worker else search.probe(config, candidates, root, clock)
    clock.save()
    hp = _hyperparameters(settings, overrides, kept or list(candidates), images, pinned,
                          task.output.refused_search_entries())
    oracle = search.make_oracle(settings.search, _objective(task.output), hp,
                                None if limit is None else max(limit - len(probes), 0),
                                deadline, config.training.seed)
    tuner = _tuner_class()(oracle, config, root, images, clock)
    tuner.search(verbose=verbose)
    extractions, extracting = shared.extractions, shared.seconds
  if is_worker:
    return TuneResult([], None, "", {}, extractions)  # a worker: the chief reports
  return report.finish(config, task, settings, root, test_data, (extractions, extracting),
                       clock)



def tune_with(config, space: str = "", time_budget: str = "", max_trials: int = 0,
              models: str | None = None, search: str = "hyperband", test_dir: str = "",
              test_csv: str = "", verbose=0) -> TuneResult:
  """`tune` with `TuneConfig`'s settings as keywords (space: a space file's path): what
  `kerasft.tune(config, ...)` calls."""
  settings = TuneConfig(models=models, time_budget=time_budget, max_trials=max_trials,
                        search=search, space=space, test_dir=test_dir, test_csv=test_csv)
  return tune(config, settings, verbose)
