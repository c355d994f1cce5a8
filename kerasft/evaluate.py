"""Evaluate an export or a training run on labelled images: metrics.json, a table, PNGs.

  python -m kerasft.evaluate --export=saved_models/NAME --data_dir=photos/
  python -m kerasft.evaluate --run_dir=runs/NAME      # its validation data by default

--data_dir may hold class folders or split folders (test/ is used first, then
validation/ or val/).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

from kerasft import errors  # noqa: E402

flags.DEFINE_string("export", "", "An export: saved_models/NAME (newest version) or "
                    "saved_models/NAME/N.")
flags.DEFINE_string("run_dir", "", "A training run's folder (its best checkpoint).")
flags.DEFINE_string("data_dir", "", "Labelled images [for --run_dir: the run's validation data].")
flags.DEFINE_string("output_dir", "", "Where to write the reports [eval/<name>-<version>].")
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  if bool(FLAGS.export) == bool(FLAGS.run_dir):
    raise errors.UsageError("--export or --run_dir: pass exactly one of them")
  if FLAGS.batch_size <= 0:
    raise errors.UsageError(f"--batch_size: must be a positive integer, got {FLAGS.batch_size}")
  from kerasft import data, reports, run, serving  # pylint: disable=g-import-not-at-top

  history = None
  if FLAGS.export:
    version_dir = serving.resolve(FLAGS.export)
    if not FLAGS.data_dir:
      raise errors.UsageError("--data_dir: pass the labelled images to evaluate the export on")
    predict, class_names = serving.load_predictor(version_dir)
    files = data.evaluation_files(FLAGS.data_dir, class_names)
    probabilities = serving.predict_files(predict, files.paths, FLAGS.batch_size)
    labels = files.labels
    name = f"{os.path.basename(os.path.dirname(os.path.abspath(version_dir)))}-" \
           f"{os.path.basename(version_dir)}"
  else:
    model, config, class_names = run.load_run(FLAGS.run_dir)
    if FLAGS.data_dir:
      files = data.evaluation_files(FLAGS.data_dir, class_names)
    else:
      files = data.index(config.data.data_dir, config.data.val_dir,
                         config.data.validation_split, config.training.seed)[1]
    pipeline = data.make_pipeline(files, config.model.image_size, FLAGS.batch_size,
                                  resize=config.data.resize)
    labels, probabilities = reports.predict(model, pipeline)
    history_path = os.path.join(FLAGS.run_dir, "history.json")
    if os.path.exists(history_path):
      with open(history_path) as f:
        history = json.load(f)
    name = f"{config.name}-best"
  output_dir = FLAGS.output_dir or os.path.join("eval", name)
  result = reports.write(labels, probabilities, class_names, output_dir, history)
  print(reports.format_table(result))
  print(f"reports in {output_dir}")


if __name__ == "__main__":
  errors.run_app(main)
