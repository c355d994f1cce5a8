"""What a finished search leaves in its folder, and the winner's export.

    trials.csv        one row per trial: kind, backbone, search values, validation
                      objective, seconds, status
    leaderboard.txt   the best trials (also logged)
    tune.png          the validation objective of each trial against time, best so far
    hparams/          TensorBoard HParams logs (the HParams dashboard)
    best.cfg          an absl flagfile: python -m kerasft.train --flagfile=best.cfg
    test.json         the chosen model and the default recipe on the test split (once)
"""

from __future__ import annotations

import csv
import dataclasses
import os

from absl import logging

from kerasft.config import RunConfig
from kerasft.core.files import atomic_path, write_json
from kerasft.serving import versions
from kerasft.training.run_folder import RunFolder
from kerasft.tuning import search
from kerasft.workflows.evaluate import evaluate_run
from kerasft.workflows.load import load_run

SKIPPED_FLAGS = ("name", "model_dir", "export_dir", "overwrite")



@dataclasses.dataclass(frozen=True)
class TuneResult:
  """A search's leaderboard (records, best first), the best trial's config, the export
  of the winner ("" on a worker), and the test figures (chosen and default; {} without a
  test split)."""
  leaderboard: list
  best_config: object
  export_path: str
  test: dict
  extractions: int


def test_data(config, settings):
  """The `DataConfig` of the test split (--test_dir, --test_csv, <data_dir>/test), or None."""
  d = config.data
  if settings.test_dir:
    return dataclasses.replace(d, data_dir="", csv="", text_dir="", **{
        "text_dir" if d.text_dir else "data_dir": settings.test_dir})
  if settings.test_csv:
    return dataclasses.replace(d, csv=settings.test_csv, val_csv="")
  if d.data_dir and os.path.isdir(os.path.join(d.data_dir, "test")):
    return dataclasses.replace(d, val_dir="")
  return None


def _ranked(records: list, direction: str) -> list:
  scored = [r for r in records if r.value is not None]
  return sorted(scored, key=lambda r: r.value, reverse=direction == "max")


def write_trials(records: list, path: str) -> None:
  """trials.csv: one row per trial, the search values as columns."""
  keys = sorted({k for r in records for k in r.values})
  with atomic_path(path) as staging, open(staging, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["trial", "kind", "model", "status", "value", "seconds", "finished_at",
                     "worker", *keys])
    for r in records:
      writer.writerow([r.trial_id, r.kind, r.model, r.status,
                       "" if r.value is None else f"{r.value:.6f}", f"{r.seconds:.1f}",
                       f"{r.finished_at:.1f}", r.worker, *(r.values.get(k, "") for k in keys)])


def plot(records: list, objective: tuple, path: str) -> None:
  """tune.png: each trial's validation objective when it finished, and the best so far."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  scored = [r for r in records if r.value is not None]
  pick = max if objective[1] == "max" else min
  best = [pick(r.value for r in scored[:i + 1]) for i in range(len(scored))]
  fig, ax = plt.subplots(figsize=(6, 4))
  for kind, marker in (("probe", "s"), ("frozen", "o"), ("unfrozen", "^")):
    points = [r for r in scored if r.kind == kind]
    ax.scatter([r.finished_at for r in points], [r.value for r in points], marker=marker,
               label=f"{kind} trials", alpha=0.8)
  ax.step([r.finished_at for r in scored], best, where="post", color="black",
          label="best so far")
  ax.set_xlabel("seconds since the search began")
  ax.set_ylabel(f"validation {objective[0]}")
  ax.legend(loc="lower right" if objective[1] == "max" else "upper right", fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  with atomic_path(path) as staging:
    fig.savefig(staging, dpi=100)
  plt.close(fig)


def write_hparams(records: list, objective: tuple, folder: str) -> None:
  """TensorBoard HParams logs: the search values and objective of every trial."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import api as hp_api  # pylint: disable=g-import-not-at-top
  metric = f"validation_{objective[0]}"
  keys = sorted({k for r in records for k in r.values if not k.startswith("tuner/")})
  with tf.summary.create_file_writer(folder).as_default():
    hp_api.hparams_config(hparams=[hp_api.HParam(k) for k in keys],
                          metrics=[hp_api.Metric(metric, display_name=objective[0])])
  for r in records:
    if r.value is None:
      continue
    with tf.summary.create_file_writer(os.path.join(folder, r.trial_id)).as_default():
      hp_api.hparams({k: _scalar(r.values[k]) for k in keys if k in r.values},
                     trial_id=r.trial_id)
      tf.summary.scalar(metric, r.value, step=1)


def _scalar(value):
  return value if isinstance(value, (bool, int, float, str)) else str(value)


def flagfile(config_dict: dict) -> str:
  """The absl flags (one per line) of a `RunConfig` dict's settings that are not defaults
  (flags are flat: nested groups' fields are flags of their own)."""
  default = _leaves(RunConfig().to_dict())
  lines = []
  for name, value in _leaves(config_dict).items():
    if name in SKIPPED_FLAGS or value == default.get(name) or value is None:
      continue
    if isinstance(value, (list, tuple)):
      value = ",".join(str(v) for v in value)
    lines.append(f"--{name}={str(value).lower() if isinstance(value, bool) else value}")
  return "\n".join(lines) + "\n"


def _leaves(d: dict) -> dict:
  """{field: value} of a nested dict's leaves (every field name is a flag)."""
  out = {}
  for key, value in d.items():
    out.update(_leaves(value) if isinstance(value, dict) else {key: value})
  return out


def finish(config, task, settings, root: str, test, extracted: tuple, clock):
  """Writes the search's outputs, exports the best trial and evaluates it and the default
  recipe on the test split; returns the `TuneResult`. extracted: (feature extraction
  passes, their seconds) in this process."""
  records = search.records(root)
  ranked = _ranked(records, task.output.objective[1])
  if not ranked:
    raise RuntimeError(f"the search in {root} finished no trial")
  write_trials(records, os.path.join(root, "trials.csv"))
  plot(records, task.output.objective, os.path.join(root, "tune.png"))
  write_hparams(records, task.output.objective, os.path.join(root, "hparams"))
  best = ranked[0]
  with atomic_path(os.path.join(root, "best.cfg")) as staging, open(staging, "w") as f:
    f.write(f"# kerasft.tune: the best of {len(records)} trials (trial {best.trial_id}, "
            f"validation {task.output.objective[0]} {best.value:.4f})\n"
            + flagfile(best.config))
  table = leaderboard(ranked, task.output.objective[0])
  with open(os.path.join(root, "leaderboard.txt"), "w") as f:
    f.write(table + "\n")
  logging.info("leaderboard (validation):\n%s", table)
  _log_budget(records, *extracted)
  export_path = _export(best, records, settings, config, task)
  tested = _test(best, records, test, root, task) if test else {}
  return TuneResult(ranked, _config(best), export_path, tested, extracted[0])


def leaderboard(ranked: list, objective: str, top: int = 10) -> str:
  rows = [f"{'trial':<10} {'kind':<9} {'model':<22} {objective:>9} {'seconds':>8}  values"]
  rows += [f"{r.trial_id:<10} {r.kind:<9} {r.model[-22:]:<22} {r.value:>9.4f} {r.seconds:>8.0f}  "
           + ", ".join(f"{k}={v}" for k, v in r.values.items() if k != "model"
                       and not k.startswith("tuner/")) for r in ranked[:top]]
  return "\n".join(rows)


def _log_budget(records: list, extractions: int, extracting: float) -> None:
  spent = {kind: sum(r.seconds for r in records if r.kind == kind)
           for kind in ("probe", "frozen", "unfrozen")}
  logging.info("time: %.0f s extracting features (%d passes in this process, within the "
               "trials), %.0f s in frozen trials (probes included), %.0f s in unfrozen trials",
               extracting, extractions, spent["probe"] + spent["frozen"], spent["unfrozen"])


def _config(record):
  return RunConfig.from_dict(record.config)


def _run_dir(record) -> str:
  return _config(record).model_dir


def _export(best, records, settings, config, task) -> str:
  """The best trial's model, exported to --export_dir with the search in its card."""
  model, trial_task, class_names = load_run(_run_dir(best))
  card = {**trial_task.card(RunFolder(_run_dir(best)).metrics()), "search": {
      "trial": best.trial_id, "trials": len(records), "oracle": settings.search,
      "values": best.values, "validation": best.value}}
  path = versions.export_model(trial_task, model, class_names, config.export_dir, card)
  logging.info("exported the best trial (%s) to %s", best.trial_id, path)
  return path


def _test(best, records, test, root: str, task) -> dict:
  """The best trial and the default recipe (the first probe) on the test split, once."""
  default = next(r for r in records if r.trial_id == "probe-0")
  name = task.output.objective[0]
  result = {}
  for label, record in (("chosen", best), ("default", default)):
    evaluation = evaluate_run(_run_dir(record), test, "test",
                              os.path.join(root, "test", label))
    result[label] = {"trial": record.trial_id, name: evaluation.metrics.get(name)}
  write_json(result, os.path.join(root, "test.json"))
  logging.info("test %s: chosen (trial %s) %.4f, default recipe %.4f", name, best.trial_id,
               result["chosen"][name], result["default"][name])
  return result

