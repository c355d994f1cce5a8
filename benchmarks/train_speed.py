"""Training speed of kerasft against a plain Keras transfer-learning script.

  .venv/bin/python benchmarks/train_speed.py                 # all cases, 3 runs each
  .venv/bin/python benchmarks/train_speed.py --cases=frozen96 --repeats=1

Each run is its own process. (a) "keras" is written the way the Keras transfer-learning
guide does it: `image_dataset_from_directory`, a frozen backbone called with
`training=False`, `model.fit`. (b) "kerasft" is `kerasft.run_training`. Training time
is data indexing + feature extraction + training; import, model build, export and reports
are listed separately. Prints one table of medians (and --markdown prints it as Markdown).
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
CASES = {  # name: (image size, head epochs, layers to unfreeze, fine-tune epochs, backbone)
    "frozen96": (96, 10, 0, 0, "mobilenet"),
    "frozen224": (224, 10, 0, 0, "mobilenet"),
    "unfrozen96": (96, 1, 10, 3, "mobilenet"),
    "resnet224": (224, 3, 0, 0, "resnet50"),  # random weights (none offline): speed only
}
APPLICATIONS = {"mobilenet": ("MobileNet", "mobilenet", "imagenet"),  # class, module, weights
                "resnet50": ("ResNet50", "resnet50", None)}
flags.DEFINE_list("cases", list(CASES), "Cases to run.")
flags.DEFINE_integer("repeats", 3, "Runs per case and implementation; medians are reported.")
flags.DEFINE_string("data_dir", os.path.join(SHARED, "data", "fashion_mnist_small", "train"),
                    "Class folders to train on (20% held out for validation).")
flags.DEFINE_bool("markdown", False, "Print the table as Markdown.")
flags.DEFINE_string("child", "", "Internal: run one measurement (keras, kerasft or probe).")
flags.DEFINE_string("case", "", "Internal: the case of --child.")
FLAGS = flags.FLAGS


def _peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _unfrozen_names(model, n):
  from kerasft.models import backbones
  return backbones.unfreeze(model, top=n) if n else []


def child_keras(size, epochs, unfreeze, fine_epochs, backbone, data_dir, out):
  """The Keras transfer-learning guide's recipe, timed."""
  start = time.perf_counter()
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seconds = {"import": time.perf_counter() - start}
  t = time.perf_counter()
  common = dict(validation_split=0.2, seed=0, image_size=(size, size), batch_size=32,
                label_mode="categorical")
  train = keras.utils.image_dataset_from_directory(data_dir, subset="training", **common)
  val = keras.utils.image_dataset_from_directory(data_dir, subset="validation", **common)
  n = len(train.file_paths)
  train, val = train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)
  seconds["data"] = time.perf_counter() - t
  t = time.perf_counter()
  name, module, weights = APPLICATIONS[backbone]
  base = getattr(keras.applications, name)(include_top=False, weights=weights,
                                           input_shape=(size, size, 3), pooling="avg")
  base.trainable = False
  inputs = keras.Input((size, size, 3))
  x = getattr(keras.applications, module).preprocess_input(inputs)
  x = base(x, training=False)
  x = keras.layers.Dropout(0.2)(x)
  model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
  model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                metrics=["accuracy"])
  seconds["model"] = time.perf_counter() - t
  t = time.perf_counter()
  history = model.fit(train, validation_data=val, epochs=epochs, verbose=0).history
  step_seconds = None
  if fine_epochs:
    _unfrozen_names(base, unfreeze)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    timer = _StepTimer()
    history = model.fit(train, validation_data=val, epochs=epochs + fine_epochs,
                        initial_epoch=epochs, callbacks=[timer], verbose=0).history
    step_seconds = timer.median()
  seconds["train"] = seconds["data"] + time.perf_counter() - t
  # the best epoch's, as kerasft reports the best epoch it keeps (was the last epoch's)
  json.dump({"seconds": seconds, "val_accuracy": max(history["val_accuracy"]),
             "step_seconds": step_seconds, "images": n, "epochs": epochs,
             "peak_rss_mib": _peak_rss_mib()}, open(out, "w"))


class _StepTimer:
  """Median seconds per training step, skipping the first fine-tune epoch (tracing)."""

  def __new__(cls):
    import keras  # pylint: disable=g-import-not-at-top

    class Timer(keras.callbacks.Callback):
      def __init__(self):
        super().__init__()
        self.epochs = []

      def on_epoch_begin(self, epoch, logs=None):
        self.steps, self.start = 0, time.perf_counter()

      def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

      def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((time.perf_counter() - self.start) / max(self.steps, 1))

      def median(self):
        return statistics.median(self.epochs[1:] or self.epochs)
    return Timer()


def child_kerasft(size, epochs, unfreeze, fine_epochs, backbone, data_dir, out):
  start = time.perf_counter()
  import kerasft  # pylint: disable=g-import-not-at-top
  from kerasft.data import folders
  from kerasft.data.source import Source
  seconds = {"import": time.perf_counter() - start}
  with tempfile.TemporaryDirectory() as tmp:
    config = kerasft.RunConfig(
        model=kerasft.ModelConfig(model=backbone, image_size=size, unfreeze_top=unfreeze,
                                  weights=APPLICATIONS[backbone][2] or "none"),
        data=kerasft.DataConfig(data_dir=data_dir),
        training=kerasft.TrainingConfig(epochs=epochs, fine_tune_epochs=fine_epochs,
                                        head_solver="epochs"),  # the same recipe as keras
        model_dir=os.path.join(tmp, "run"), export_dir=os.path.join(tmp, "export"))
    result = kerasft.run_training(config, verbose=0)
  s = result.seconds
  seconds.update(data=s["data"], model=s["model"], train=s["data"] + s["train"],
                 export=s["export"], report=s["report"])
  n = len(folders.scan_class_folder(Source("data_dir", data_dir)).inputs) - result.metrics["num_examples"]
  step_seconds = None
  if fine_epochs:
    history = result.history
    fine = [t for t, p in zip(history["epoch_seconds"], history["phase"]) if p == "fine_tune"]
    step_seconds = statistics.median(fine[1:] or fine) / -(-n // 32)
  json.dump({"seconds": seconds, "val_accuracy": result.metrics["accuracy"],
             "step_seconds": step_seconds, "images": n, "epochs": epochs,
             "peak_rss_mib": _peak_rss_mib()}, open(out, "w"))


def child_probe(size, backbone, data_dir, out):
  """Forward pass and input pipeline images/s; export vs in-memory latency for 32 images."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kerasft import config
  from kerasft.data import folders, pipeline
  from kerasft.data.source import Source
  from kerasft.models import backbones, features, heads, signatures
  from kerasft.serving import versions as serving
  from kerasft.tasks import registry as tasks

  files = folders.scan_class_folder(Source("data_dir", data_dir))
  n = len(files.inputs)
  images = np.concatenate([x for x, _ in pipeline.make_pipeline(files, size, 32)])
  data_seconds = []
  for _ in range(3):
    t = time.perf_counter()
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(files.inputs)).map(  # no cache
        lambda p: pipeline.decode_and_resize(tf.io.read_file(p), size),
        num_parallel_calls=tf.data.AUTOTUNE).batch(32).prefetch(tf.data.AUTOTUNE)
    for _ in ds:
      pass
    data_seconds.append(time.perf_counter() - t)
  output = tasks.make_output()
  model = heads.build_classifier(backbones.build(config.ModelConfig(
      model=backbone, image_size=size, weights=APPLICATIONS[backbone][2] or "none")), 10, output)
  extractor = features.feature_model(model)
  extractor.predict(images[:64], verbose=0)
  forward_seconds = []
  for _ in range(3):
    t = time.perf_counter()
    extractor.predict(images, batch_size=32, verbose=0)
    forward_seconds.append(time.perf_counter() - t)
  with tempfile.TemporaryDirectory() as tmp:
    names = [str(i) for i in range(10)]
    path = serving.export(lambda labels: signatures.image_signatures(
        model, names, size, labels, outputs=output.serving_outputs), names,
                          os.path.join(tmp, "m"))
    signature = tf.saved_model.load(path).signatures["serving_default"]
    batch = images[:32]
    timings = {"export": [], "keras": []}
    for _ in range(3):
      signature(images=tf.constant(batch))
      model.predict_on_batch(batch)
    for _ in range(20):
      t = time.perf_counter()
      signature(images=tf.constant(batch))
      timings["export"].append(time.perf_counter() - t)
      t = time.perf_counter()
      model.predict_on_batch(batch)
      timings["keras"].append(time.perf_counter() - t)
  json.dump({"images": n, "pipeline_images_per_second": n / statistics.median(data_seconds),
             "forward_images_per_second": n / statistics.median(forward_seconds),
             "serve32_ms": 1000 * statistics.median(timings["export"]),
             "predict_on_batch32_ms": 1000 * statistics.median(timings["keras"])},
            open(out, "w"))


def _spawn(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  with tempfile.NamedTemporaryFile(suffix=".json") as out:
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, *args, f"--out={out.name}"], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    result = json.load(open(out.name))
  result["process_seconds"] = wall
  return result


def _median(runs, *keys):
  values = []
  for run in runs:
    for key in keys:
      run = run[key]
    values.append(run)
  return statistics.median(values) if None not in values else None


def main(argv):
  del argv
  if FLAGS.child:
    size, epochs, unfreeze, fine, backbone = CASES[FLAGS.case]
    if FLAGS.child == "keras":
      child_keras(size, epochs, unfreeze, fine, backbone, FLAGS.data_dir, FLAGS.out)
    elif FLAGS.child == "kerasft":
      child_kerasft(size, epochs, unfreeze, fine, backbone, FLAGS.data_dir, FLAGS.out)
    else:
      child_probe(size, backbone, FLAGS.data_dir, FLAGS.out)
    return
  if "KERAS_HOME" not in os.environ and os.path.isdir(os.path.join(SHARED, "keras_home")):
    home = tempfile.mkdtemp(prefix="kerasft-bench-keras-home-")
    os.makedirs(os.path.join(home, "models"))
    shared_models = os.path.join(SHARED, "keras_home", "models")
    for name in os.listdir(shared_models):
      os.symlink(os.path.join(shared_models, name), os.path.join(home, "models", name))
    os.environ["KERAS_HOME"] = home
  rows = []
  for case in FLAGS.cases:
    size = CASES[case][0]
    probe = _spawn(["--child=probe", f"--case={case}"])
    results = {impl: [_spawn([f"--child={impl}", f"--case={case}"])
                      for _ in range(FLAGS.repeats)] for impl in ("keras", "kerasft")}
    row = {"case": case, "size": size, **probe}
    for impl, runs in results.items():
      train = _median(runs, "seconds", "train")
      epochs = runs[0]["epochs"]
      row[impl] = {
          "train_s": train, "process_s": _median(runs, "process_seconds"),
          "import_s": _median(runs, "seconds", "import"),
          "model_s": _median(runs, "seconds", "model"),
          "export_s": _median(runs, "seconds", "export") if impl == "kerasft" else None,
          "images_per_s": runs[0]["images"] * epochs / train,
          "peak_rss_mib": _median(runs, "peak_rss_mib"),
          "val_accuracy": _median(runs, "val_accuracy"),
          "step_ms": (1000 * _median(runs, "step_seconds")
                      if runs[0]["step_seconds"] is not None else None)}
    rows.append(row)
    print(f"# {case}: {json.dumps(row)}", file=sys.stderr, flush=True)
  print(format_table(rows, FLAGS.markdown))


def format_table(rows, markdown):
  header = ["case", "impl", "train s", "process s", "import s", "build s", "img/s (train)",
            "peak RSS MiB", "val acc", "fine-tune ms/step"]
  lines = []
  for row in rows:
    speed_only = APPLICATIONS[CASES[row["case"]][4]][2] is None  # random weights
    for impl in ("keras", "kerasft"):
      r = row[impl]
      lines.append([row["case"], impl, f"{r['train_s']:.1f}", f"{r['process_s']:.1f}",
                    f"{r['import_s']:.1f}", f"{r['model_s']:.1f}", f"{r['images_per_s']:.0f}",
                    f"{r['peak_rss_mib']:.0f}",
                    "-" if speed_only else f"{r['val_accuracy']:.3f}",
                    f"{r['step_ms']:.0f}" if r["step_ms"] else "-"])
    a, b = row["keras"], row["kerasft"]
    lines.append([row["case"], "kerasft/keras", f"{b['train_s'] / a['train_s']:.2f}x",
                  f"{b['process_s'] / a['process_s']:.2f}x", "", "", "",
                  f"{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x",
                  "-" if speed_only else f"{100 * (b['val_accuracy'] - a['val_accuracy']):+.1f} pt",
                  f"{b['step_ms'] / a['step_ms']:.2f}x" if a["step_ms"] else "-"])
  probe_header = ["case", "px", "input pipeline img/s", "forward pass img/s",
                  "pipeline/forward", "one forward pass over all images s",
                  "kerasft train / forward pass", "serve 32 ms", "predict_on_batch 32 ms",
                  "serve/keras"]
  probe_lines = []
  for row in rows:
    forward = row["images"] / row["forward_images_per_second"]
    probe_lines.append([row["case"], str(row["size"]),
                        f"{row['pipeline_images_per_second']:.0f}",
                        f"{row['forward_images_per_second']:.0f}",
                        f"{row['pipeline_images_per_second'] / row['forward_images_per_second']:.1f}x",
                        f"{forward:.1f}", f"{row['kerasft']['train_s'] / forward:.2f}x",
                        f"{row['serve32_ms']:.1f}", f"{row['predict_on_batch32_ms']:.1f}",
                        f"{row['serve32_ms'] / row['predict_on_batch32_ms']:.2f}x"])
  return "\n\n".join([_render(header, lines, markdown),
                      _render(probe_header, probe_lines, markdown),
                      _render(["target (issue #17)", "case", "measured", "met"],
                              targets(rows), markdown)])


def targets(rows):
  """[target, case, measured, met] of every target the cases measured."""
  out = []
  for row in rows:
    case, a, b = row["case"], row["keras"], row["kerasft"]
    forward = row["images"] / row["forward_images_per_second"]
    checks = []
    if case == "frozen96":
      floor = a["import_s"] + forward
      checks.append(("whole process <= 1.5x (import + one forward pass)", b["process_s"] / floor,
                     1.5, f"{b['process_s']:.1f} s vs {floor:.1f} s"))
    if row["kerasft"]["step_ms"] is None:
      checks.append(("training <= 1.3x one forward pass", b["train_s"] / forward, 1.3,
                     f"{b['train_s']:.1f} s vs {forward:.1f} s"))
      checks.append(("export <= 2 s", b["export_s"] / 2, 1.0, f"{b['export_s']:.1f} s"))
    else:
      checks.append(("fine-tuning per step <= 1.1x model.fit", b["step_ms"] / a["step_ms"], 1.1,
                     f"{b['step_ms']:.0f} vs {a['step_ms']:.0f} ms"))
    if row["size"] >= 224:
      checks.append(("peak RSS <= 1.2x the plain script's", b["peak_rss_mib"] / a["peak_rss_mib"],
                     1.2, f"{b['peak_rss_mib']:.0f} vs {a['peak_rss_mib']:.0f} MiB"))
    for name, ratio, limit, what in checks:
      shown = f"{ratio:.2f}x ({what})" if "export" not in name else what
      out.append([name, case, shown, "yes" if ratio <= limit else "no"])
  return out


def _render(header, lines, markdown):
  if markdown:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
  widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
  fmt = "  ".join(f"{{:<{w}}}" for w in widths)
  return "\n".join(fmt.format(*line) for line in [header] + lines)


if __name__ == "__main__":
  flags.DEFINE_string("out", "", "Internal: where a child writes its JSON.")
  app.run(main)
