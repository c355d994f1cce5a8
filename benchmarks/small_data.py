"""Small labelled sets: kerasft's default against a frozen backbone + logistic regression.

  python benchmarks/small_data.py [--markdown] [--cases=fashion5,fortunes8,...]

For each case (a seeded slice of the training data, N examples per class) and the full
test split it prints test accuracy and wall time of
  (a) frozen features + scikit-learn LogisticRegressionCV (C chosen by cross-validation):
      the same backbone and preprocessing as kerasft, features extracted once;
  (b) kerasft with --head_solver=epochs (the default before the convex head);
  (c) kerasft's default (the convex head).
kerasft's figures are measured through its export, on the test split, and its time is the
whole `run_training` call (data, model, training, report, export).
Images: ../shared/data/fashion_mnist_small on MobileNet (ImageNet) at 96 px; texts:
../shared/data/fortunes_4class on the MiniLM encoder in ../shared/models.
"""

import csv
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
FASHION = os.path.join(SHARED, "data", "fashion_mnist_small")
FORTUNES = os.path.join(SHARED, "data", "fortunes_4class")
MINILM = os.path.join(SHARED, "models", "all-minilm-l6-v2")
CASES = {"fashion5": ("image", 5), "fashion10": ("image", 10), "fashion100": ("image", 100),
         "fortunes8": ("text", 8), "fortunes32": ("text", 32), "fortunesall": ("text", 0)}
flags.DEFINE_list("cases", list(CASES), "Cases to run.")
flags.DEFINE_bool("markdown", False, "Print the table as Markdown.")
FLAGS = flags.FLAGS


def _rows(kind):
  """(train rows, test rows, column of inputs): rows are dicts with the input and label."""
  if kind == "text":
    read = lambda name: list(csv.DictReader(open(os.path.join(FORTUNES, name))))  # noqa: E731
    return read("train.csv"), read("test.csv"), "text"
  def folder(split):
    root = os.path.join(FASHION, split)
    return [{"path": os.path.join(root, c, f), "label": c} for c in sorted(os.listdir(root))
            for f in sorted(os.listdir(os.path.join(root, c)))]
  return folder("train"), folder("test"), "path"


def _slice(rows, per_class, seed=0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not per_class:
    return rows
  rng, out = np.random.default_rng(seed), []
  for label in sorted({r["label"] for r in rows}):
    members = [r for r in rows if r["label"] == label]
    out += [members[i] for i in sorted(rng.permutation(len(members))[:per_class])]
  return out


def _write(rows, path, column):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[column, "label"])
    writer.writeheader()
    writer.writerows({column: r[column], "label": r["label"]} for r in rows)
  return path


def _config(kind, train_csv, work, name, **training):
  import kerasft  # pylint: disable=g-import-not-at-top
  model = (kerasft.ModelConfig(model="keras_hub:" + MINILM) if kind == "text"
           else kerasft.ModelConfig(model="mobilenet", image_size=96))
  return kerasft.RunConfig(model=model, data=kerasft.DataConfig(csv=train_csv),
                           training=kerasft.TrainingConfig(**training), name=name,
                           model_dir=os.path.join(work, name, "run"),
                           export_dir=os.path.join(work, name, "export"))


def _kerasft(config, test_files):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import kerasft  # pylint: disable=g-import-not-at-top
  from kerasft.serving import client
  from kerasft.tasks import registry as tasks
  start = time.perf_counter()
  result = kerasft.run_training(config, verbose=0)
  seconds = time.perf_counter() - start
  predict, _ = client.load_predictor(result.export_path)
  task_class, _ = tasks.for_card(client.read_model_card(result.export_path))
  outputs = client.predict_files(predict, task_class.client_items(test_files), 64)
  return float(np.mean(outputs.argmax(1) == np.asarray(test_files.labels))), seconds


def _probe(config, test_files):
  """(a): the same frozen backbone's features + LogisticRegressionCV."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegressionCV  # pylint: disable=g-import-not-at-top
  from kerasft.models import features
  from kerasft.tasks import registry as tasks
  start = time.perf_counter()
  task = tasks.for_config(config.resolved())
  train, val = task.index(0)
  files = train + val
  task, model = task.build_model(files)
  extract = features.feature_model(model)
  x = extract.predict(task.pipeline(files, 64), verbose=0)
  folds = int(min(5, np.bincount(files.labels).min()))
  probe = LogisticRegressionCV(Cs=10, cv=folds, max_iter=2000).fit(x, files.labels)
  seconds = time.perf_counter() - start
  predicted = probe.predict(extract.predict(task.pipeline(test_files, 64), verbose=0))
  return float(np.mean(predicted == np.asarray(test_files.labels))), seconds


def _case(name, work):
  from kerasft.data import tables as sources
  from kerasft.data.source import Source
  kind, per_class = CASES[name]
  train_rows, test_rows, column = _rows(kind)
  train_csv = _write(_slice(train_rows, per_class), os.path.join(work, f"{name}.csv"), column)
  test_csv = _write(test_rows, os.path.join(work, f"{name}-test.csv"), column)
  read = sources.read_texts if kind == "text" else sources.read_csv
  names = sorted({r["label"] for r in train_rows})
  test = read(Source("csv", test_csv), class_names=names)
  probe = _probe(_config(kind, train_csv, work, name + "-a"), test)
  before = _kerasft(_config(kind, train_csv, work, name + "-b", head_solver="epochs"), test)
  now = _kerasft(_config(kind, train_csv, work, name + "-c"), test)
  per = per_class or "all"
  return [f"{name} ({per} per class)", f"{len(test.inputs)}", *(f"{a:.3f} ({s:.0f} s)"
                                                                for a, s in (probe, before, now))]


def main(argv):
  del argv
  header = ["case", "test examples", "(a) features + LogisticRegressionCV",
            "(b) kerasft --head_solver=epochs", "(c) kerasft default (convex head)"]
  rows = []
  with tempfile.TemporaryDirectory(prefix="kerasft-small-data-") as work:
    for name in FLAGS.cases:
      rows.append(_case(name, work))
      print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
  print_table(header, rows, FLAGS.markdown)


def run_kerasft(module: str, *args):
  """Runs `python -m kerasft.<module> args` from the repository (KERAS_HOME: .keras_home
  unless set); exits with its stderr when it fails. Returns (the process, its seconds)."""
  start = time.monotonic()
  run = subprocess.run([sys.executable, "-m", f"kerasft.{module}", *args], cwd=REPO,
                       capture_output=True, text=True, env={
                           **os.environ, "PYTHONPATH": REPO,
                           "KERAS_HOME": os.environ.get("KERAS_HOME", os.path.join(
                               REPO, ".keras_home"))})
  if run.returncode:
    sys.exit(f"kerasft.{module} failed:\n{run.stderr[-3000:]}")
  return run, time.monotonic() - start


def print_table(header: list, rows: list, markdown: bool) -> None:
  """Prints a benchmark's table: Markdown, or columns separated by two spaces."""
  if markdown:
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    print("\n".join("| " + " | ".join(r) + " |" for r in rows))
  else:
    print("\n".join("  ".join(r) for r in [header] + rows))


if __name__ == "__main__":
  app.run(main)
