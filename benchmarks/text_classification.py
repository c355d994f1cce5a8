"""Text classification on ../shared/data/fortunes_4class: kerasft against a TF-IDF baseline,
each given the same selection on a validation part of train.csv.

  .venv/bin/python benchmarks/text_classification.py --markdown       # all cases
  .venv/bin/python benchmarks/text_classification.py --classifiers=tfidf,frozen

Selection: a fifth of train.csv (stratified by label, seed 0) is the validation part every
choice is made on; every case trains on the other four fifths; test.csv is read once per
case, for the chosen setting, at the end.
  tfidf:     scikit-learn TF-IDF + logistic regression; the analyzer (character 2-5 grams
             within words, word unigrams, word 1-2 grams) and C (0.1, 1, 10, 100) chosen on
             the validation part.
  frozen:    kerasft's defaults (frozen MiniLM encoder, mean pooling, the head solved as a
             convex problem, its L2 strength chosen on the validation part).
  fine_tune: kerasft, the head, then the whole encoder fine-tuned 3 epochs with AdamW at 96
             tokens, the best epoch on the validation part kept; the fine-tune rate (2e-5,
             5e-5) chosen on the validation part's accuracy through the export.
Prints one table: the setting chosen, validation and test accuracy, train seconds (for
kerasft: the whole run_training call, including the export; for a case that tried several
settings, the chosen one's), and peak memory.
"""

import os
import resource
import sys
import tempfile
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
from small_data import print_table  # noqa: E402  (and its --markdown flag)

SHARED = os.path.join(os.path.dirname(REPO), "shared")
CASES = ("tfidf", "frozen", "fine_tune")
flags.DEFINE_list("classifiers", list(CASES), "Cases to run.")
flags.DEFINE_string("data_dir", os.path.join(SHARED, "data", "fortunes_4class"),
                    "A folder with train.csv and test.csv (columns text, label).")
flags.DEFINE_string("preset", os.path.join(SHARED, "models", "all-minilm-l6-v2"),
                    "The KerasHub preset or folder of the encoder.")
FLAGS = flags.FLAGS


def _read(path):
  import csv  # pylint: disable=g-import-not-at-top
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  return [r["text"] for r in rows], [r["label"] for r in rows]


def split(train_csv: str, folder: str) -> tuple[str, str]:
  """(training part, validation part) CSV paths: a fifth of each label of `train_csv`
  (seed 0) held out."""
  import csv  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  texts, labels = _read(train_csv)
  rng = np.random.default_rng(0)
  held = set()
  for label in sorted(set(labels)):
    rows = [i for i, l in enumerate(labels) if l == label]
    held.update(rng.permutation(rows)[:len(rows) // 5].tolist())
  paths = os.path.join(folder, "train_part.csv"), os.path.join(folder, "val_part.csv")
  for path, keep in zip(paths, (lambda i: i not in held, lambda i: i in held)):
    with open(path, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(["text", "label"])
      writer.writerows([t, l] for i, (t, l) in enumerate(zip(texts, labels)) if keep(i))
  return paths


def _accuracy(predicted, labels) -> float:
  return sum(p == t for p, t in zip(predicted, labels)) / len(labels)


def tfidf(train_csv, val_csv, test_csv, _):
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  texts, labels = _read(train_csv)
  val_texts, val_labels = _read(val_csv)
  tried = {}
  for analyzer, ngrams in (("char_wb", (2, 5)), ("word", (1, 1)), ("word", (1, 2))):
    for c in (0.1, 1, 10, 100):
      start = time.perf_counter()
      model = make_pipeline(TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams,
                                            sublinear_tf=True),
                            LogisticRegression(max_iter=3000, C=c)).fit(texts, labels)
      tried[(analyzer, ngrams, c)] = (_accuracy(model.predict(val_texts), val_labels), model,
                                      time.perf_counter() - start)
  (analyzer, ngrams, c), (val, model, seconds) = max(tried.items(), key=lambda kv: kv[1][0])
  test_texts, test_labels = _read(test_csv)
  return (f"{analyzer} {ngrams[0]}-{ngrams[1]} grams, C={c:g}", val,
          _accuracy(model.predict(test_texts), test_labels), seconds,
          "TF-IDF + logistic regression")


def _kerasft(train_csv, val_csv, work, model_kwargs, training_kwargs):
  """(the run's own validation accuracy, seconds of run_training, export path, max length).
  The run's figure, not the export's on the validation part: when the convex head is the
  last phase it is refit on every labelled example, validation ones included."""
  import kerasft  # pylint: disable=g-import-not-at-top
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + FLAGS.preset, **model_kwargs),
      data=kerasft.DataConfig(csv=train_csv, val_csv=val_csv),
      training=kerasft.TrainingConfig(**training_kwargs),
      model_dir=os.path.join(work, "run"), export_dir=os.path.join(work, "export"))
  start = time.perf_counter()
  result = kerasft.run_training(config, verbose=0)
  seconds = time.perf_counter() - start
  return (result.metrics["accuracy"], seconds, result.export_path,
          result.config.model.max_length)


def _export_accuracy(export: str, csv_path: str) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from kerasft.data import tables
  from kerasft.data.source import Source
  from kerasft.serving import client
  predict, names = client.load_predictor(export)
  rows = tables.read_texts(Source("csv", csv_path), class_names=names)
  scores = client.predict_files(predict, rows.inputs, 64)
  return float(np.mean(scores.argmax(1) == np.asarray(rows.labels)))


def frozen(train_csv, val_csv, test_csv, work):
  val, seconds, export, length = _kerasft(train_csv, val_csv, work, {}, {})
  return ("kerasft's defaults (C on validation)", val, _export_accuracy(export, test_csv),
          seconds, f"frozen encoder, mean pooling, convex head; {length} tokens")


def fine_tune(train_csv, val_csv, test_csv, work):
  tried = {}
  for rate in (2e-5, 5e-5):
    tried[rate] = _kerasft(train_csv, val_csv, os.path.join(work, f"{rate:g}"),
                           {"max_length": 96, "unfreeze_from": "token_embedding"},
                           {"fine_tune_epochs": 3, "optimizer": "adamw",
                            "fine_tune_learning_rate": rate})
    print(f"fine_tune at {rate:g}: validation accuracy {tried[rate][0]:.3f}", file=sys.stderr)
  rate = max(tried, key=lambda r: tried[r][0])
  val, seconds, export, length = tried[rate]
  return (f"fine-tune rate {rate:g}", val, _export_accuracy(export, test_csv), seconds,
          f"the head, then the whole encoder 3 epochs, AdamW; {length} tokens")


def main(argv):
  del argv
  unknown = set(FLAGS.classifiers) - set(CASES)
  if unknown:
    sys.exit(f"error: --classifiers: unknown {sorted(unknown)}; choose from {', '.join(CASES)}")
  test_csv = os.path.join(FLAGS.data_dir, "test.csv")
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    train_csv, val_csv = split(os.path.join(FLAGS.data_dir, "train.csv"), folder)
    print("selection: a fifth of train.csv (by label, seed 0) is the validation part; "
          "test.csv is read once per case", file=sys.stderr)
    for case in FLAGS.classifiers:
      with tempfile.TemporaryDirectory() as work:
        chosen, val, accuracy, seconds, note = globals()[case](train_csv, val_csv, test_csv,
                                                               work)
      rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
      rows.append([case, chosen, f"{val:.3f}", f"{accuracy:.3f}", f"{seconds:.1f}",
                   f"{rss:.0f}", note])
      print(f"{case}: {chosen}, validation {val:.3f}, test accuracy {accuracy:.3f} in "
            f"{seconds:.1f} s", file=sys.stderr)
  print_table(["case", "chosen on validation", "validation accuracy", "test accuracy",
               "train s", "peak RSS MiB (cumulative)", "what"], rows, FLAGS.markdown)


if __name__ == "__main__":
  app.run(main)
