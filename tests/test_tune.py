"""kerasft.tune: KerasTuner's oracles over the fine-tuning space, on a tiny backbone."""

import csv
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import COLORS, REPO, call_main, run_cli, tiny_model, write_color_images
import kerasft
from kerasft.core import budget
from kerasft.workflows import evaluate as evaluation
from kerasft.tuning import report, search, space

pytest.importorskip("keras_tuner")


@pytest.fixture
def data(tmp_path):
  write_color_images(tmp_path / "data" / "train", per_class=12, size=32)
  write_color_images(tmp_path / "data" / "test", per_class=4, size=32, seed=1)
  return tmp_path / "data"


def _flags(tmp_path, data, *extra):
  return [f"--model={tiny_model()}", f"--data_dir={data}", "--learning_rate=0.03",
          f"--model_dir={tmp_path / 'search'}", f"--export_dir={tmp_path / 'export'}", *extra]


def _frozen_space(tmp_path):
  path = tmp_path / "space.json"
  path.write_text(json.dumps({"unfreeze": "none"}))
  return str(path)


def _rows(tmp_path):
  with open(tmp_path / "search" / "trials.csv") as f:
    return list(csv.DictReader(f))


def test_a_search_writes_every_output_and_exports_the_winner(tmp_path, data, monkeypatch):
  evaluated = []
  original = report.evaluate_run
  monkeypatch.setattr(report, "evaluate_run", lambda *a, **k: (
      evaluated.append((a[0], len(search.records(str(tmp_path / "search"))))), original(*a, **k))[1])
  done = call_main("tune", *_flags(tmp_path, data, "--max_trials=4", "--search=random",
                                   "--deterministic"))
  assert done.returncode == 0, done.stderr[-3000:]
  root = tmp_path / "search"
  rows = _rows(tmp_path)
  assert len(rows) == 4 and rows[0]["trial"] == "probe-0"
  assert len({r["trial"] for r in rows}) == 4 and all(r["value"] for r in rows)
  assert {"unfreeze", "dropout", "head"} <= set(rows[0])
  for name in ("leaderboard.txt", "tune.png", "best.cfg", "test.json", "search.json"):
    assert (root / name).stat().st_size > 0, name
  assert any(f.startswith("events") for f in os.listdir(root / "hparams"))
  card = json.load(open(tmp_path / "export" / "1" / "model_card.json"))
  assert card["search"]["trials"] == 4 and card["search"]["oracle"] == "random"
  # the test split: read once, at the end, for the chosen model and the default recipe
  assert len(evaluated) == 2 and all(n == 4 for _, n in evaluated)
  test = json.load(open(root / "test.json"))
  chance = 1 / len(COLORS)  # the test images' classes are balanced
  assert test["default"]["trial"] == "probe-0" and test["chosen"]["accuracy"] > chance + 0.3
  assert "best of 4 trials" in done.stdout and "test, chosen" in done.stdout
  # best.cfg repeats the winner: the same validation figure, deterministically
  best = min(rows, key=lambda r: -float(r["value"]))
  again = call_main("train", f"--flagfile={root / 'best.cfg'}",
                    f"--model_dir={tmp_path / 'again'}", f"--export_dir={tmp_path / 'e2'}")
  assert again.returncode == 0, again.stderr[-3000:]
  metrics = json.load(open(tmp_path / "again" / "metrics.json"))
  assert abs(metrics["accuracy"] - float(best["value"])) <= 0.01


def test_frozen_trials_share_one_feature_extraction(tmp_path, data):
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model()),
      data=kerasft.DataConfig(data_dir=str(data)),
      model_dir=str(tmp_path / "search"), export_dir=str(tmp_path / "export"))
  result = kerasft.tune(config, space=_frozen_space(tmp_path), max_trials=5, search="random")
  assert len(result.leaderboard) == 5 and result.extractions == 1
  assert all(r.kind in ("probe", "frozen") for r in result.leaderboard)
  assert result.best_config.training.fine_tune_epochs == 0


def test_the_time_budget_is_kept_within_ten_percent(tmp_path, data, monkeypatch):
  """On the budget's own clock (injected: every reading advances it by a quarter second),
  so the check does not depend on the machine's speed."""
  readings = itertools.count()
  monkeypatch.setattr(budget, "now", lambda: next(readings) * 0.25)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model()),
      data=kerasft.DataConfig(data_dir=str(data)), training=kerasft.TrainingConfig(
          learning_rate=0.03), model_dir=str(tmp_path / "search"),
      export_dir=str(tmp_path / "export"))
  space_file = tmp_path / "slow.json"  # unfrozen trials long enough to be cut by the budget
  space_file.write_text(json.dumps({"unfreeze": "all", "fine_tune_epochs": 40, "peft": "none",
                                    "average": "best", "wise_ft": "off"}))
  result = kerasft.tune(config, space=str(space_file), time_budget="25s", search="random")
  spent = json.load(open(tmp_path / "search" / "search.json"))["spent"]
  assert spent <= 25 * 1.1, spent
  assert max(r.finished_at for r in result.leaderboard) <= 25 * 1.1
  assert any(r.status == "stopped by the time budget" for r in search.records(
      str(tmp_path / "search")))


@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_or_repeating_trials(tmp_path, data):
  flags = _flags(tmp_path, data, "--max_trials=5", "--search=random",
                 f"--space={_frozen_space(tmp_path)}")
  proc = subprocess.Popen([sys.executable, "-m", "kerasft.tune", *flags], cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  trials = tmp_path / "search" / search.TRIALS
  deadline = time.time() + 300
  while time.time() < deadline and len([t for t in (os.listdir(trials) if trials.exists()
                                                     else []) if (trials / t / "trial.json").exists()]) < 2:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished_before = {r.trial_id for r in search.records(str(tmp_path / "search"))}
  assert 2 <= len(finished_before) < 5
  done = run_cli("tune", *flags, cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = _rows(tmp_path)
  assert len(rows) == 5 and len({r["trial"] for r in rows}) == 5
  assert finished_before <= {r["trial"] for r in rows}
  assert os.listdir(tmp_path / "export") == ["1"]


@pytest.mark.parametrize("args,message", [
    (["--time_budget=soon"], "--time_budget: a duration such as 300s"),
    (["--models="], "--models: name one or more backbones"),
    (["--models=mobilenet,,resnet50"], "--models: name one or more backbones"),
    (["--models=mobilenett"], "--model"),
    (["--space={bad}"], "--space: {bad} has an unknown entry 'learning_speed'"),
    (["--space={badvalue}"], "--space: {badvalue}: optimizer cannot be 'adagrad'"),
    (["--max_trials=-1"], "--max_trials: must be >= 0"),
    (["--search=grid"], "flag --search=grid: value should be one of"),
])
def test_tune_mistakes_are_one_line_exit_2(tmp_path, data, args, message):
  bad, badvalue = tmp_path / "bad.json", tmp_path / "badvalue.json"
  bad.write_text(json.dumps({"learning_speed": [1, 2]}))
  badvalue.write_text(json.dumps({"optimizer": ["adam", "adagrad"]}))
  args = [a.format(bad=bad, badvalue=badvalue) for a in args]
  done = call_main("tune", *_flags(tmp_path, data, *args))
  assert done.returncode == 2, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {message.format(bad=bad, badvalue=badvalue)}"), last
  assert not (tmp_path / "search").exists() and not (tmp_path / "export").exists()


def test_space_entries_map_to_valid_configs_and_frozen_trials_drop_fine_tune_settings():
  base = kerasft.RunConfig(model=kerasft.ModelConfig(model=tiny_model()))
  frozen = space.to_config(base, {"unfreeze": "none", "peft": "lora", "l2sp": 0.01,
                                  "mixup": 0.2, "average": "ema"}, 3, True)
  assert frozen.training.fine_tune_epochs == 0 and frozen.methods.peft == "none"
  assert frozen.data.mixup == 0 and frozen.methods.average == "best"
  tuned = space.to_config(base, {"unfreeze": "top", "top_blocks": 9, "peft": "lora",
                                 "l2sp": 0.01, "augment_strength": 0.1, "tuner/epochs": 3}, 3,
                          True)
  assert tuned.model.unfreeze_blocks == 3 and tuned.training.fine_tune_epochs == 3
  assert tuned.methods.peft == "lora" and tuned.methods.l2sp == 0.0  # not both
  assert tuned.data.augment == space.AUGMENTS
  gradual = space.to_config(base, {"unfreeze": "gradual", "peft": "bitfit"}, 3, False)
  assert gradual.model.gradual_unfreeze == 1 and gradual.methods.peft == "none"
  assert report.flagfile(tuned.to_dict()).count("--unfreeze_blocks=3") == 1


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.serial
def test_a_chief_and_two_workers_search_together(tmp_path, data):
  """KerasTuner's distributed mode: the chief probes and serves the oracle, two worker
  processes run the trials, the chief writes the outputs and exports."""
  flags = _flags(tmp_path, data, "--max_trials=5", "--search=random",
                 f"--space={_frozen_space(tmp_path)}")
  port = str(_free_port())
  env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port,
         "PYTHONPATH": REPO}
  procs = [subprocess.Popen([sys.executable, "-m", "kerasft.tune", *flags], cwd=tmp_path,
                            env={**env, "KERASTUNER_TUNER_ID": tuner_id},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for tuner_id in ("chief", "tuner0", "tuner1")]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  rows = _rows(tmp_path)
  assert len(rows) == 5 and len({r["trial"] for r in rows}) == 5
  assert {r["worker"] for r in rows if r["trial"].startswith("probe")} == {"chief"}
  assert {r["worker"] for r in rows if not r["trial"].startswith("probe")} == {"tuner0",
                                                                               "tuner1"}
  assert os.listdir(tmp_path / "export") == ["1"] and "best of 5 trials" in outs[0][0]


def test_entries_an_output_refuses_are_not_searched():
  import keras_tuner
  for task, refused in (("segmentation", {"head", "label_smoothing", "mixup"}),
                        ("regression", {"label_smoothing", "mixup"}), ("multiclass", set())):
    output = kerasft.tasks.registry.make_output(task)
    hp = keras_tuner.HyperParameters()
    space.declare(hp, {}, True, False, (), output.refused_search_entries())
    assert not refused & set(hp.values), task
    assert {"dropout", "unfreeze"} <= set(hp.values)
    if task == "multiclass":
      assert {"head", "mixup", "label_smoothing"} <= set(hp.values)
