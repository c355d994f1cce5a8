"""Evaluate an export or a training run on labelled images: metrics.json, a table, PNGs.

  python -m kerasft.evaluate --export=saved_models/NAME --data_dir=photos/
  python -m kerasft.evaluate --export=saved_models/NAME --csv=test.csv
  python -m kerasft.evaluate --export=saved_models/NAME --tfds=NAME --split=test
  python -m kerasft.evaluate --run_dir=runs/NAME      # its validation data by default

--data_dir may hold class folders or split folders (test/ is used first, then
validation/ or val/). The data flags mean what they mean in `kerasft.train`. Multilabel
and regression models get their own metrics (AUC and F1; MSE, MAE and R²).
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
flags.DEFINE_string("csv", "", "A .csv/.tsv of image paths and labels, as in training.")
flags.DEFINE_string("path_column", "path", "--csv: the column of image paths.")
flags.DEFINE_string("label_column", "", "--csv: the label column [label; regression: the "
                    "model's target names].")
flags.DEFINE_string("tfrecord", "", "A glob of TFRecord files of tf.train.Examples.")
flags.DEFINE_string("label_names", "", "--tfrecord: a file of class names, line i for id i.")
flags.DEFINE_string("image_key", "", "--tfrecord/--tfds: the image feature.")
flags.DEFINE_string("label_key", "", "--tfrecord/--tfds: the label feature.")
flags.DEFINE_string("tfds", "", "A prepared TFDS data set, NAME or NAME:CONFIG.")
flags.DEFINE_string("tfds_data_dir", "", "Where TFDS data sets are prepared.")
flags.DEFINE_string("text_dir", "", "Text models: one sub-folder of .txt files per class.")
flags.DEFINE_string("text_column", "text", "Text models with --csv: the column of texts.")
flags.DEFINE_string("text_key", "", "Text models with --tfds: the text feature.")
flags.DEFINE_string("split", "test", "--tfds: the split to evaluate, e.g. test or "
                    "train[80%:].")
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
  from kerasft import config, data, reports, run, serving, sources  # pylint: disable=g-import-not-at-top

  history = None
  given = any((FLAGS.data_dir, FLAGS.csv, FLAGS.tfrecord, FLAGS.tfds, FLAGS.text_dir))
  if FLAGS.export:
    version_dir = serving.resolve(FLAGS.export)
    if not given:
      raise errors.UsageError("--data_dir/--csv/--tfrecord/--tfds: pass the labelled images "
                              "to evaluate the export on")
    predict, class_names = serving.load_predictor(version_dir)
    card = serving.read_model_card(version_dir)
    task, threshold = card["task"], card.get("threshold", 0.5)
    is_text = serving.is_text_export(version_dir)
    files = sources.evaluation_source(_data_config(config, task, class_names), task, class_names,
                                   FLAGS.split, is_text)
    outputs = serving.predict_files(predict, files.inputs if is_text else
                                    data.encoded_inputs(files), FLAGS.batch_size,
                                    read=not is_text)
    labels = files.targets() if task != "multiclass" else files.labels
    name = f"{os.path.basename(os.path.dirname(os.path.abspath(version_dir)))}-" \
           f"{os.path.basename(version_dir)}"
  else:
    model, run_config, class_names = run.load_run(FLAGS.run_dir)
    task, threshold = run_config.model.task, run_config.model.threshold
    if given:
      files = sources.evaluation_source(_data_config(config, task, class_names), task,
                                     class_names, FLAGS.split, run_config.is_text)
    else:
      files = sources.index_source(run_config.data, task, run_config.training.seed,
                                run_config.is_text)[1]
    pipeline = run.input_pipeline(run_config, files, FLAGS.batch_size)
    labels, outputs = reports.predict(model, pipeline)
    history_path = os.path.join(FLAGS.run_dir, "history.json")
    if os.path.exists(history_path):
      with open(history_path) as f:
        history = json.load(f)
    name = f"{run_config.name}-best"
  output_dir = FLAGS.output_dir or os.path.join("eval", name)
  result = reports.write(labels, outputs, class_names, output_dir, history, task, threshold)
  print(reports.format_table(result))
  print(f"reports in {output_dir}")


def _data_config(config, task: str, class_names: list[str]):
  """The evaluation data flags as a DataConfig (validated like training's)."""
  label_column = FLAGS.label_column or (",".join(class_names) if task == "regression"
                                        else "label")
  return config.DataConfig(data_dir=FLAGS.data_dir, csv=FLAGS.csv, path_column=FLAGS.path_column,
                           label_column=label_column, tfrecord=FLAGS.tfrecord,
                           label_names=FLAGS.label_names, image_key=FLAGS.image_key,
                           label_key=FLAGS.label_key, tfds=FLAGS.tfds,
                           tfds_data_dir=FLAGS.tfds_data_dir, batch_size=FLAGS.batch_size,
                           text_dir=FLAGS.text_dir, text_column=FLAGS.text_column,
                           text_key=FLAGS.text_key)


if __name__ == "__main__":
  errors.run_app(main)
