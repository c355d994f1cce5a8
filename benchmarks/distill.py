"""Distillation: a MobileNet student at 96 px taught by MobileNet at 224 px, on fashion.

  .venv/bin/python benchmarks/distill.py --markdown

Data: ../shared/data/fashion_mnist_small. Of its training images, per class (seeded) half
are labelled and half are the unlabelled pool (their labels withheld from every model);
the 500 test images are read once per row, at the end.
  teacher    MobileNet v1 (ImageNet) at 224 px, fine-tuned as `--recipe=auto` does at 50
             labelled images per class (every block, 4 epochs at 1e-4, greedy soup), its
             settings given explicitly (auto itself would also pick 128 px for 28 px images).
  alone      the student, MobileNet v1 at 96 px (about 5x fewer operations), with the same
             fixed rule (--student_recipe, auto: every block fine-tuned), the labelled
             images only.
  distilled  the student with --teacher; --distill_temperature x --distill_weight chosen on
             the validation split of the labelled images (the run's own, the same split for
             every row) from --temperatures x --weights.
  +unlabeled the same, with the pool as --unlabeled_csv (chosen alike).
Each row: the chosen setting, validation and test accuracy, and the LiteRT float32 file's
latency for one image on one thread (median of 200 test images). The target: the
distilled student closes at least half the test-accuracy gap between the student alone
and the teacher.
"""

import csv
import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_formats  # noqa: E402  pylint: disable=wrong-import-position
import small_data  # noqa: E402  pylint: disable=wrong-import-position

flags.DEFINE_list("temperatures", ["1", "2", "4"], "--distill_temperature values tried.")
flags.DEFINE_list("weights", ["1"], "--distill_weight values tried (0.5 lost to 1 at every "
                  "temperature on validation in the first run).")
flags.DEFINE_integer("teacher_size", 224, "The teacher's image size.")
flags.DEFINE_integer("student_size", 96, "The student's image size.")
flags.DEFINE_string("student_recipe", "auto", "Every student's --recipe.")
FLAGS = flags.FLAGS
TEACHER = {"model.unfreeze_blocks": 15, "training.fine_tune_epochs": 4,  # MobileNet: 15 blocks
           "training.fine_tune_learning_rate": 1e-4, "methods.average": "greedy_soup"}


def _split(work):
  """(labelled CSV, unlabelled CSV, test Examples): half of each class's training images
  labelled, half in the pool (seed 0)."""
  from kerasft.data import tables
  from kerasft.data.source import Source
  train, test, _ = small_data._rows("image")  # pylint: disable=protected-access
  labelled = small_data._slice(train, 50)  # pylint: disable=protected-access
  chosen = {r["path"] for r in labelled}
  pool = [r for r in train if r["path"] not in chosen]
  labelled_csv = small_data._write(labelled, os.path.join(work, "labelled.csv"), "path")  # pylint: disable=protected-access
  pool_csv = os.path.join(work, "pool.csv")
  with open(pool_csv, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path"])
    writer.writerows([r["path"]] for r in pool)
  names = sorted({r["label"] for r in train})
  test_csv = small_data._write(test, os.path.join(work, "test.csv"), "path")  # pylint: disable=protected-access
  return labelled_csv, pool_csv, tables.read_csv(Source("csv", test_csv), class_names=names)


def _run(name, work, labelled_csv, size, **fields):
  """A kerasft run on the labelled images at `size` px; fields: MethodsConfig's and
  DataConfig's (unlabeled_csv). Returns its TrainResult."""
  import kerasft  # pylint: disable=g-import-not-at-top
  groups = {"model": {}, "data": {}, "training": {}, "methods": {}}
  for key, value in fields.items():  # "group.field", or a DataConfig/MethodsConfig field
    group, _, field = key.rpartition(".")
    groups[group or ("data" if field == "unlabeled_csv" else "methods")][field] = value
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="mobilenet", image_size=size, **groups["model"]),
      data=kerasft.DataConfig(csv=labelled_csv, **groups["data"]),
      training=kerasft.TrainingConfig(**groups["training"]),
      methods=kerasft.MethodsConfig(**groups["methods"]), name=name,
      model_dir=os.path.join(work, name, "run"), export_dir=os.path.join(work, name, "export"))
  result = kerasft.run_training(config, verbose=0)
  print(json.dumps({"run": name, "validation": result.metrics["accuracy"],
                    "seconds": sum(result.seconds.values())}), file=sys.stderr, flush=True)
  return result


def _chosen(name, work, labelled_csv, **fields):
  """The best on validation of the distilled students over the temperature x weight grid:
  (its (T, w), TrainResult)."""
  best = None
  for t in map(float, FLAGS.temperatures):
    for w in map(float, FLAGS.weights):
      result = _run(f"{name}-t{t:g}-w{w:g}", work, labelled_csv, FLAGS.student_size,
                    distill_temperature=t, distill_weight=w, **fields)
      if best is None or result.metrics["accuracy"] > best[1].metrics["accuracy"]:
        best = ((t, w), result)
  return best


def _test_row(name, setting, result, test, work):
  """The table's row of a chosen run: test accuracy through its export, LiteRT latency."""
  from kerasft.serving import client, formats
  from kerasft.tasks import registry as tasks
  predict, _ = client.load_predictor(result.export_path)
  task_class, _ = tasks.for_card(client.read_model_card(result.export_path))
  outputs = client.predict_files(predict, task_class.client_items(test), 64)
  accuracy = float(np.mean(outputs.argmax(1) == np.asarray(test.labels)))
  export_dir = os.path.join(work, name, "tflite")
  small_data.run_kerasft("export", f"--run_dir={result.config.model_dir}",
                         f"--export_dir={export_dir}", "--format=tflite")
  path = os.path.join(export_dir, "tflite", "1", formats.FILES["tflite"])
  runner = formats._interpreter(path).get_signature_runner("serving_default")  # pylint: disable=protected-access
  size = result.config.model.image_size
  images = np.concatenate([x for x, _ in tasks.for_config(result.config).pipeline(
      test.subset(range(200)), 64)]).astype(np.float32)
  latency = export_formats._latency(lambda x: runner(images=x), images)  # pylint: disable=protected-access
  return accuracy, [name, f"{size} px", setting, f"{result.metrics['accuracy']:.3f}",
                    f"{accuracy:.3f}", f"{1000 * latency:.1f} ms"]


def main(argv):
  del argv
  work = tempfile.mkdtemp(prefix="kerasft-distill-")
  labelled_csv, pool_csv, test = _split(work)
  teacher = _run("teacher", work, labelled_csv, FLAGS.teacher_size, **TEACHER)
  recipe = FLAGS.student_recipe
  alone = _run("alone", work, labelled_csv, FLAGS.student_size, recipe=recipe)
  distilled = _chosen("distilled", work, labelled_csv, teacher=teacher.export_path,
                      recipe=recipe)
  pooled = _chosen("pooled", work, labelled_csv, teacher=teacher.export_path,
                   unlabeled_csv=pool_csv, recipe=recipe)
  rows, accuracy = [], {}
  for name, setting, result in (
      ("teacher", "fine-tuned (fixed)", teacher), ("student alone", f"--recipe={recipe}", alone),
      ("student distilled", "T={:g}, weight {:g}".format(*distilled[0]), distilled[1]),
      ("student distilled + unlabelled pool", "T={:g}, weight {:g}".format(*pooled[0]),
       pooled[1])):
    accuracy[name], row = _test_row(name, setting, result, test, work)
    rows.append(row)
  small_data.print_table(["model", "input", "chosen on validation", "validation accuracy",
                          "test accuracy", "LiteRT latency, 1 image, 1 thread"], rows,
                         FLAGS.markdown)
  gap = accuracy["teacher"] - accuracy["student alone"]
  for name in ("student distilled", "student distilled + unlabelled pool"):
    closed = (accuracy[name] - accuracy["student alone"]) / gap if gap > 0 else float("nan")
    print(f"\n{name}: closes {closed:.0%} of the teacher's {gap:+.3f} lead "
          f"(target: at least 50%: {'met' if closed >= 0.5 else 'not met'})")


if __name__ == "__main__":
  app.run(main)
