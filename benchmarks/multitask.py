"""Several heads on one backbone against one run per label.

  .venv/bin/python benchmarks/multitask.py [--markdown] [--extra=--unfreeze_blocks=2 ...]

The fashion sample (../shared/data/fashion_mnist_small: 1,000 training and 500 test
images) gets a second, coarse label derived here from the class: tops (t-shirt/top,
pullover, dress, coat, shirt), bottoms (trouser), footwear (sandal, sneaker, ankle boot),
bags (bag). Three `python -m kerasft.train` runs on MobileNet (ImageNet) at 96 px, each
with the default recipe plus --extra:
  multi-task: --label_column=category,group (two multiclass heads on one backbone);
  category, group: one single-head run per label.
--missing drops that share of the training rows' group labels (seeded), in every case that
reads them (the single group run gets the rows that keep one), to show that rows without a
label still train the other head. Each export is scored on the whole test split
(`kerasft.evaluate`). Prints each head's test accuracy and the train processes' seconds,
and the multi-task run's time against the two single runs' together.
"""

import csv
import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from small_data import _rows, print_table, run_kerasft  # noqa: E402

flags.DEFINE_float("missing", 0.0, "Share of training rows whose group label is dropped.")
flags.DEFINE_multi_string("extra", [], "More kerasft.train flags for every run.")
FLAGS = flags.FLAGS
GROUPS = {"t_shirt_top": "tops", "pullover": "tops", "dress": "tops", "coat": "tops",
          "shirt": "tops", "trouser": "bottoms", "sandal": "footwear", "sneaker": "footwear",
          "ankle_boot": "footwear", "bag": "bags"}
MODEL = ["--model=mobilenet", "--image_size=96"]


def _table(rows: list[dict], path: str, columns: list[str]) -> str:
  """Writes `rows` (path, category, group) with `columns` as a CSV; returns its path."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["path"] + columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  return path


def _labelled(missing: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
  """(training rows, test rows) with category and group; `missing` of the training rows'
  groups emptied."""
  train, test, _ = _rows("image")
  rng = np.random.default_rng(seed)
  out = []
  for rows, drop in ((train, missing), (test, 0.0)):
    out.append([{"path": r["path"], "category": r["label"],
                 "group": "" if rng.random() < drop else GROUPS[r["label"]]} for r in rows])
  return out[0], out[1]


def _run(work: str, name: str, train: list[dict], test_csv: str, columns: list[str]
         ) -> tuple[dict, float]:
  """({label: test accuracy}, train seconds) of one run on `columns`."""
  folder = os.path.join(work, name)
  os.makedirs(folder)
  rows = [r for r in train if all(r[c] for c in columns)] if len(columns) == 1 else train
  _, seconds = run_kerasft(
      "train", *MODEL, f"--csv={_table(rows, os.path.join(folder, 'train.csv'), columns)}",
      f"--label_column={','.join(columns)}", f"--model_dir={folder}/run",
      f"--export_dir={folder}/export", *FLAGS.extra)
  run_kerasft("evaluate", f"--export={folder}/export", f"--csv={test_csv}",
              f"--label_column={','.join(columns)}", f"--output_dir={folder}/eval")
  with open(os.path.join(folder, "eval", "metrics.json")) as f:
    metrics = json.load(f)
  if len(columns) == 1:
    return {columns[0]: metrics["accuracy"]}, seconds
  return {c: metrics["heads"][c]["accuracy"] for c in columns}, seconds


def main(argv):
  del argv
  train, test = _labelled(FLAGS.missing)
  with tempfile.TemporaryDirectory(prefix="kerasft-multitask-") as work:
    test_csv = _table(test, os.path.join(work, "test.csv"), ["category", "group"])
    multi, multi_seconds = _run(work, "multi", train, test_csv, ["category", "group"])
    category, category_seconds = _run(work, "category", train, test_csv, ["category"])
    group, group_seconds = _run(work, "group", train, test_csv, ["group"])
  rows = [["multi-task (2 heads)", f"{multi['category']:.3f}", f"{multi['group']:.3f}",
           f"{multi_seconds:.1f}"],
          ["category alone", f"{category['category']:.3f}", "-", f"{category_seconds:.1f}"],
          ["group alone", "-", f"{group['group']:.3f}", f"{group_seconds:.1f}"],
          ["two single runs", f"{category['category']:.3f}", f"{group['group']:.3f}",
           f"{category_seconds + group_seconds:.1f}"]]
  print(f"fashion sample, {len(train)} training images ({FLAGS.missing:.0%} without a group "
        f"label), {len(test)} test images; extra flags: {' '.join(FLAGS.extra) or 'none'}")
  print_table(["case", "category test accuracy", "group test accuracy", "train seconds"],
              rows, FLAGS.markdown)
  print(f"multi-task: {multi_seconds / (category_seconds + group_seconds):.2f}x the time of "
        "the two single-head runs")


if __name__ == "__main__":
  app.run(main)
