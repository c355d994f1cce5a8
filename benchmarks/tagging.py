"""Token tagging on ../shared/data/fortunes_entities: kerasft against a plain KerasHub script.

  .venv/bin/python benchmarks/tagging.py                      # both cases
  .venv/bin/python benchmarks/tagging.py --taggers=kerasft --markdown

Cases (each trains on train.conll and is scored once on test.conll with the CoNLL measure,
exact-match entity F1):
  plain:   the script a KerasHub user writes: the MiniLM backbone with a Dense softmax on
           every token, each word tokenized on its own and its first sub-word labelled
           (the others weighted 0), padded to --plain_length tokens, every layer trained with
           `fit` (Adam at --plain_learning_rate) for --epochs epochs; scored with seqeval
           on test.conll's own tokens.
  kerasft: `python -m kerasft.train --flagfile=flags/fortunes_entities.cfg` (head on cached
           features, then every block fine-tuned: --recipe=auto's choice for tagging), then
           `python -m kerasft.evaluate --export=... --conll=test.conll` (through the export).
Prints one table: entity F1 on test.conll, training seconds (kerasft: the whole train
process, including the validation report and the export) and whether the target (a higher
F1 in less time than the plain script) is met.
"""

import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from small_data import print_table, run_kerasft  # noqa: E402  (and its --markdown flag)

SHARED = os.path.join(os.path.dirname(REPO), "shared")
DATA = os.path.join(SHARED, "data", "fortunes_entities")
flags.DEFINE_list("taggers", ["plain", "kerasft"], "Cases to run.")
flags.DEFINE_string("preset", os.path.join(SHARED, "models", "all-minilm-l6-v2"),
                    "The KerasHub preset or folder of the encoder.")
flags.DEFINE_integer("epochs", 3, "plain: epochs of full fine-tuning.")
flags.DEFINE_integer("plain_length", 128, "plain: tokens per text (padded).")
flags.DEFINE_float("plain_learning_rate", 5e-5, "plain: Adam's learning rate.")
FLAGS = flags.FLAGS


def _conll(path):
  """[(tokens, tags)] of a CoNLL file (token and tag per line, blank lines between)."""
  sentences, tokens, tags = [], [], []
  for line in open(path, encoding="utf-8").read().splitlines() + [""]:
    if not line.strip():
      if tokens:
        sentences.append((tokens, tags))
      tokens, tags = [], []
      continue
    columns = line.split()
    tokens.append(columns[0])
    tags.append(columns[-1])
  return sentences


def plain() -> tuple[float, float]:
  """(test entity F1, training seconds) of the plain KerasHub script."""
  import keras
  import keras_hub
  import tensorflow as tf
  from seqeval.metrics import f1_score
  train, test = _conll(os.path.join(DATA, "train.conll")), _conll(os.path.join(DATA,
                                                                                "test.conll"))
  names = sorted({t for _, tags in train for t in tags})
  index = {t: i for i, t in enumerate(names)}
  tokenizer = keras_hub.models.BertTokenizer.from_preset(FLAGS.preset)
  backbone = keras_hub.models.BertBackbone.from_preset(FLAGS.preset)
  length = FLAGS.plain_length

  def encode(sentences):
    ids = np.zeros((len(sentences), length), np.int32)
    labels = np.zeros((len(sentences), length), np.int32)
    weights = np.zeros((len(sentences), length), np.float32)
    firsts = []
    for i, (tokens, tags) in enumerate(sentences):
      pieces = [[int(p) for p in tokenizer(t)] or [tokenizer.token_to_id("[UNK]")]
                for t in tokens]
      row, first = [tokenizer.token_to_id("[CLS]")], []
      for piece, tag in zip(pieces, tags):
        if len(row) + len(piece) < length:
          first.append(len(row))
          labels[i, len(row)], weights[i, len(row)] = index.get(tag, 0), 1.0
        row += piece
      row = row[:length - 1] + [tokenizer.token_to_id("[SEP]")]
      ids[i, :len(row)] = row
      firsts.append(first)
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != 0}
    return x, labels, weights, firsts

  x, y, w, _ = encode(train)
  outputs = keras.layers.Dense(len(names), activation="softmax")(backbone(backbone.input)[
      "sequence_output"])
  model = keras.Model(backbone.input, outputs)
  model.compile(optimizer=keras.optimizers.Adam(FLAGS.plain_learning_rate),
                loss="sparse_categorical_crossentropy")
  start = time.monotonic()
  model.fit(x, y, sample_weight=w, batch_size=32, epochs=FLAGS.epochs, verbose=2)
  seconds = time.monotonic() - start
  tx, _, _, firsts = encode(test)
  predicted = model.predict(tx, batch_size=64, verbose=0).argmax(-1)
  gold, got = [], []
  for (tokens, tags), first, row in zip(test, firsts, predicted):
    gold.append(tags)
    got.append([names[row[p]] for p in first] + ["O"] * (len(tags) - len(first)))
  del tf
  return float(f1_score(gold, got)), seconds


def kerasft_case(root: str) -> tuple[float, float]:
  """(test entity F1 through the export, seconds of the whole train process)."""
  _, seconds = run_kerasft("train", "--flagfile=flags/fortunes_entities.cfg",
                           f"--model={'keras_hub:' + FLAGS.preset}",
                           f"--conll={os.path.join(DATA, 'train.conll')}",
                           f"--model_dir={root}/run", f"--export_dir={root}/export")
  run_kerasft("evaluate", f"--export={root}/export", f"--conll={os.path.join(DATA, 'test.conll')}",
              f"--output_dir={root}/eval")
  with open(os.path.join(root, "eval", "metrics.json")) as f:
    return json.load(f)["entity_f1"], seconds


def main(argv):
  del argv
  results = {}
  with tempfile.TemporaryDirectory(prefix="kerasft-tagging-") as root:
    for case in FLAGS.taggers:
      results[case] = plain() if case == "plain" else kerasft_case(root)
      print(f"{case}: entity F1 {results[case][0]:.4f}, {results[case][1]:.0f} s", flush=True)
  rows = [[case, f"{f1:.4f}", f"{s:.0f}"] for case, (f1, s) in results.items()]
  print_table(["case", "entity F1 (test.conll)", "training s"], rows, FLAGS.markdown)
  if {"plain", "kerasft"} <= set(results):
    (f1, s), (pf1, ps) = results["kerasft"], results["plain"]
    print(f"target (higher F1 in less time): {'met' if f1 > pf1 and s < ps else 'NOT met'} "
          f"(F1 {f1:.4f} vs {pf1:.4f}, {s:.0f} s vs {ps:.0f} s)")


if __name__ == "__main__":
  app.run(main)
