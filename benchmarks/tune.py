"""kerasft.tune against the default recipe, --recipe=auto and a naive search.

  python benchmarks/tune.py [--markdown] [--settings=image,text] [--budgets=2m,5m]
                            [--naive_budgets=2m,8m]

For each setting: test accuracy and wall time of (1) the default recipe, (2) --recipe=auto,
(3) kerasft.tune (hyperband) at each of --budgets, (4) the same search without feature
sharing (every frozen trial extracts its own features: what a plain KerasTuner loop over
kerasft runs costs) at each of --naive_budgets. The test split is used once per row, at
its end. Settings:
  image  ../shared/data/fashion_mnist_small (train/ and test/), MobileNet at 96 px
  text   ../shared/data/fortunes_4class, MiniLM, 64 tokens
"""

import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import small_data  # noqa: E402  pylint: disable=wrong-import-position

flags.DEFINE_list("settings", ["image", "text"], "Settings to run.")
flags.DEFINE_list("budgets", ["2m", "5m"], "kerasft.tune's budgets.")
flags.DEFINE_list("naive_budgets", ["2m", "8m"], "The naive search's budgets.")
# --markdown is small_data's flag (defined when it is imported).
FLAGS = flags.FLAGS


def _base(setting, work, name, **methods):
  import kerasft  # pylint: disable=g-import-not-at-top
  if setting == "image":
    model = kerasft.ModelConfig(model="mobilenet", image_size=96)
    data = kerasft.DataConfig(data_dir=small_data.FASHION)
  else:
    model = kerasft.ModelConfig(model="keras_hub:" + small_data.MINILM, max_length=64)
    data = kerasft.DataConfig(csv=os.path.join(small_data.FORTUNES, "train.csv"))
  return kerasft.RunConfig(model=model, data=data, methods=kerasft.MethodsConfig(**methods),
                           name=name, model_dir=os.path.join(work, name, "run"),
                           export_dir=os.path.join(work, name, "export"))


def _test_flags(setting):
  return {"test_csv": os.path.join(small_data.FORTUNES, "test.csv")} if setting == "text" else {}


def _run(setting, config):
  """(test accuracy, seconds) of one training run through its export."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import kerasft  # pylint: disable=g-import-not-at-top
  from kerasft.serving import client
  from kerasft.tasks import registry as tasks
  start = time.perf_counter()
  result = kerasft.run_training(config, verbose=0)
  seconds = time.perf_counter() - start
  task = tasks.for_config(result.config)
  files = task.evaluation_examples(
      _test_data(setting, result.config), task.output, result.class_names)
  predict, _ = client.load_predictor(result.export_path)
  outputs = client.predict_files(predict, task.client_items(files), 64)
  return float(np.mean(outputs.argmax(1) == np.asarray(files.labels))), seconds


def _test_data(setting, config):
  import dataclasses  # pylint: disable=g-import-not-at-top
  if setting == "text":
    return dataclasses.replace(config.data, csv=_test_flags(setting)["test_csv"])
  return config.data  # fashion_mnist_small/test/


def _search(setting, work, name, budget, share):
  from kerasft.config.commands import TuneConfig
  from kerasft.tuning import tuner
  start = time.perf_counter()
  result = tuner.tune(_base(setting, work, name), TuneConfig(
      time_budget=budget, **_test_flags(setting)), share_features=share)
  seconds = time.perf_counter() - start
  return (result.test["chosen"]["accuracy"], seconds, len(result.leaderboard),
          result.leaderboard[0].value, result.test["default"]["accuracy"])


def _rows(setting, work):
  rows = []
  accuracy, seconds = _run(setting, _base(setting, work, f"{setting}-default"))
  rows.append([setting, "default recipe", f"{accuracy:.3f}", f"{seconds:.0f} s", "", ""])
  accuracy, seconds = _run(setting, _base(setting, work, f"{setting}-auto", recipe="auto"))
  rows.append([setting, "--recipe=auto", f"{accuracy:.3f}", f"{seconds:.0f} s", "", ""])
  searches = [(b, True) for b in FLAGS.budgets] + [(b, False) for b in FLAGS.naive_budgets]
  for budget, share in searches:
    label = "kerasft.tune" if share else "naive search (no feature sharing)"
    test, seconds, trials, validation, _ = _search(
        setting, work, f"{setting}-{budget}-{int(share)}", budget, share)
    rows.append([setting, f"{label}, {budget}", f"{test:.3f}", f"{seconds:.0f} s",
                 str(trials), f"{validation:.3f}"])
    print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
  return rows


def main(argv):
  del argv
  header = ["setting", "method", "test accuracy", "wall time", "trials", "best validation"]
  table = []
  with tempfile.TemporaryDirectory(prefix="kerasft-tune-") as work:
    for setting in FLAGS.settings:
      table += _rows(setting, work)
  small_data.print_table(header, table, FLAGS.markdown)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)
