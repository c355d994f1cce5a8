"""Fine-tuning methods side by side: weight averaging, WiSE-FT, L2-SP, LoRA/BitFit/NormFit,
few-shot text, against kerasft's default and a plain full fine-tune.

  python benchmarks/methods.py [--markdown] [--settings=image,text,few_shot]

Each row is one `kerasft.run_training` run in its own process (so its peak RSS is its
own), measured through its export: test accuracy, accuracy on a shifted test set (images:
the test images at half contrast and blurred, made here), wall time of the whole run,
trainable parameters of the last phase (from the model card), and validation figures of
what was kept. Settings:
  image     ../shared/data/fashion_mnist_small, MobileNet (ImageNet) at 96 px
  text      ../shared/data/fortunes_4class (all training texts), MiniLM, 64 tokens
  few_shot  the same texts, 8 labelled per class (seeded slice): frozen features +
            LogisticRegressionCV, the default, --recipe=few_shot
"""

import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import small_data  # noqa: E402  pylint: disable=wrong-import-position

FULL = {"image": {"unfreeze_blocks": 15, "fine_tune_epochs": 4},
        "text": {"unfreeze_blocks": 10, "fine_tune_epochs": 2}}
RATES = {"image": 1e-4, "text": 5e-5}  # the full fine-tune's rate; PEFT methods take 10x
METHODS = {  # name: (methods fields, whether it fine-tunes)
    "default (frozen, convex head)": ({}, False),
    "full fine-tune": ({}, True),
    "greedy soup (top 3)": ({"average": "greedy_soup"}, True),
    "uniform soup (top 3)": ({"average": "uniform_soup"}, True),
    "EMA": ({"average": "ema", "ema_momentum": 0.95}, True),
    "WiSE-FT auto": ({"wise_ft": "auto"}, True),
    "L2-SP 0.01": ({"l2sp": 0.01}, True),
    "LoRA rank 8": ({"peft": "lora"}, True),
    "BitFit": ({"peft": "bitfit"}, True),
    "NormFit": ({"peft": "normfit"}, True),
}
flags.DEFINE_list("settings", ["image", "text", "few_shot"], "Settings to run.")
# --markdown is small_data's flag (defined when it is imported).
flags.DEFINE_list("only", [], "Run only these methods (names as in the table).")
flags.DEFINE_string("row", "", "Internal: run one row (setting:method) in this process.")
flags.DEFINE_string("work", "", "Internal: the benchmark's scratch folder.")
FLAGS = flags.FLAGS


def _shifted(rows, work):
  """The test images at half contrast and blurred (a distribution shift), as rows."""
  from PIL import Image, ImageFilter  # pylint: disable=g-import-not-at-top
  out = []
  for i, r in enumerate(rows):
    path = os.path.join(work, "shifted", f"{i}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.open(r["path"]).convert("RGB").point(lambda v: 64 + v // 2)
    image.filter(ImageFilter.GaussianBlur(1.2)).save(path)
    out.append({"path": path, "label": r["label"]})
  return out


def _data(setting, work):
  """(train csv, {test name: csv}, class names) of a setting, written into `work`."""
  kind = "image" if setting == "image" else "text"
  train, test, column = small_data._rows(kind)  # pylint: disable=protected-access
  train = small_data._slice(train, 8 if setting == "few_shot" else 0)  # pylint: disable=protected-access
  tests = {"test": test}
  if kind == "image":
    tests["shifted"] = _shifted(test, work)
  write = small_data._write  # pylint: disable=protected-access
  return (write(train, os.path.join(work, f"{setting}.csv"), column),
          {k: write(v, os.path.join(work, f"{setting}-{k}.csv"), column) for k, v in tests.items()},
          sorted({r["label"] for r in train}))


def _config(setting, method, work, train_csv):
  import kerasft  # pylint: disable=g-import-not-at-top
  kind = "image" if setting == "image" else "text"
  fields, tunes = METHODS.get(method, ({"recipe": "few_shot"} if method == "few-shot" else {},
                                       False))
  model = (kerasft.ModelConfig(model="mobilenet", image_size=96) if kind == "image" else
           kerasft.ModelConfig(model="keras_hub:" + small_data.MINILM, max_length=64))
  training = {}
  if tunes:
    rate = RATES[kind] * (10 if "peft" in fields else 1)
    model = dataclasses.replace(model, unfreeze_blocks=FULL[kind]["unfreeze_blocks"])
    training = {"fine_tune_epochs": FULL[kind]["fine_tune_epochs"],
                "fine_tune_learning_rate": rate}
  name = f"{setting}-{re.sub('[^a-z0-9]+', '_', method.lower()).strip('_')}"
  return kerasft.RunConfig(model=model, data=kerasft.DataConfig(csv=train_csv),
                           training=kerasft.TrainingConfig(**training),
                           methods=kerasft.methods.MethodsConfig(**fields), name=name,
                           model_dir=os.path.join(work, name, "run"),
                           export_dir=os.path.join(work, name, "export"))


def _accuracy(export_path, csv_path, kind, names):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from kerasft.serving import client
  from kerasft.data import tables as sources
  from kerasft.tasks import registry as tasks
  files = (sources.read_texts if kind == "text" else sources.read_csv)(csv_path, "csv",
                                                                         class_names=names)
  predict, _ = client.load_predictor(export_path)
  task_class, _ = tasks.for_card(client.read_model_card(export_path))
  outputs = client.predict_files(predict, task_class.client_items(files), 64)
  return float(np.mean(outputs.argmax(1) == np.asarray(files.labels)))


def _endpoints(result, tests, kind, names):
  """WiSE-FT's two endpoints (head phase, fine-tuned) on each test set, through exports."""
  from kerasft.tasks import registry as tasks
  from kerasft.methods import averaging
  run = result.config.model_dir
  top = json.load(open(os.path.join(run, averaging.TOP_K, "index.json")))[0]["file"]
  out = {}
  for alpha, path in (("0", os.path.join(run, averaging.HEAD_WEIGHTS)),
                      ("1", os.path.join(run, averaging.TOP_K, top))):
    result.model.set_weights(averaging.load_weights(path))
    task = tasks.for_config(result.config)
    export = task.export(result.model, names, os.path.join(run, f"alpha{alpha}"),
                         task.card(None))
    out.update({f"{k} alpha {alpha}": _accuracy(export, v, kind, names) for k, v in tests.items()})
  return out


def _one_row(setting, method, work):
  """Trains one row in this process; prints its figures as one JSON line."""
  import kerasft  # pylint: disable=g-import-not-at-top
  train_csv, tests, names = _data(setting, work) if not os.path.exists(
      os.path.join(work, f"{setting}.csv")) else _read_data(setting, work)
  kind = "image" if setting == "image" else "text"
  if method == "features + LogisticRegressionCV":
    config = _config(setting, "default (frozen, convex head)", work, train_csv)
    from kerasft.data import tables as sources
    from kerasft.data.source import Source
    test = sources.read_texts(Source("csv", tests["test"]), class_names=names)
    accuracy, seconds = small_data._probe(config, test)  # pylint: disable=protected-access
    row = {"test": accuracy, "seconds": seconds}
  else:
    start = time.perf_counter()
    result = kerasft.run_training(_config(setting, method, work, train_csv), verbose=0)
    row = {"seconds": time.perf_counter() - start, "validation": result.metrics["accuracy"],
           **{k: _accuracy(result.export_path, v, kind, names) for k, v in tests.items()}}
    card = json.load(open(os.path.join(result.export_path, "model_card.json")))
    row.update(trainable=card["parameters"]["trainable"], kept=card["kept"])
    scores = os.path.join(result.config.model_dir, "averaging.json")
    if os.path.exists(scores):
      row["averaging"] = json.load(open(scores))["validation"]
      row["best_epoch_validation"] = max(result.history["val_accuracy"])
    tuned = [v for v, p in zip(result.history.get("val_accuracy", []),
                               result.history.get("phase", [])) if p == "fine_tune"]
    if tuned:
      row["best_fine_tune_epoch_validation"] = max(tuned)
    if method.startswith("WiSE-FT"):
      row.update(_endpoints(result, tests, kind, names))
  row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(row), flush=True)


def _read_data(setting, work):
  tests = {k: os.path.join(work, f"{setting}-{k}.csv") for k in ("test", "shifted")
           if os.path.exists(os.path.join(work, f"{setting}-{k}.csv"))}
  import csv  # pylint: disable=g-import-not-at-top
  names = sorted({r["label"] for r in csv.DictReader(open(os.path.join(work, f"{setting}.csv")))})
  return os.path.join(work, f"{setting}.csv"), tests, names


def _rows(setting):
  if setting == "few_shot":
    rows = ["features + LogisticRegressionCV", "default (frozen, convex head)", "few-shot"]
  else:
    rows = list(METHODS)
  return [r for r in rows if not FLAGS.only or r in FLAGS.only]


def _cell(row, key):
  return f"{row[key]:.3f}" if key in row else ""


def main(argv):
  del argv
  if FLAGS.row:
    setting, method = FLAGS.row.split(":", 1)
    return _one_row(setting, method, FLAGS.work)
  header = ["setting", "method", "test acc.", "shifted test acc.", "val. acc. (kept)",
            "kept", "trainable params", "wall time", "peak RSS"]
  table = []
  with tempfile.TemporaryDirectory(prefix="kerasft-methods-") as work:
    for setting in FLAGS.settings:
      _data(setting, work)
      for method in _rows(setting):
        done = subprocess.run([sys.executable, __file__, f"--row={setting}:{method}",
                               f"--work={work}"], capture_output=True, text=True)
        if done.returncode:
          sys.exit(f"{setting} {method} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        table.append([setting, method, _cell(row, "test"), _cell(row, "shifted"),
                      _cell(row, "validation"), row.get("kept", ""),
                      f"{row['trainable']:,}" if "trainable" in row else "",
                      f"{row['seconds']:.0f} s", f"{row['peak_rss_mib']:.0f} MiB"])
        extra = {k: v for k, v in row.items() if "alpha" in k or k in (
            "averaging", "best_epoch_validation", "best_fine_tune_epoch_validation")}
        print(" | ".join(table[-1]) + (f"   {json.dumps(extra)}" if extra else ""),
              file=sys.stderr, flush=True)
  small_data.print_table(header, table, FLAGS.markdown)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)
