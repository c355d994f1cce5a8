"""Token tagging on ../shared/data/fortunes_entities: kerasft against a plain KerasHub script,
each given the same selection on a validation part of train.conll.

  .venv/bin/python benchmarks/tagging.py --markdown             # both cases
  .venv/bin/python benchmarks/tagging.py --taggers=kerasft

Selection: train.conll's sentences are split once (seed 0): --val_fraction of them are the
validation part, the rest the training part; every choice below is made on the validation
part's entity F1 and test.conll is read once per chosen setting, at the end.
  plain:   the script a KerasHub user writes: the MiniLM backbone with a Dense softmax on
           every token, each word tokenized on its own and its first sub-word labelled
           (the others weighted 0), padded to --plain_length tokens, every layer trained with
           `fit` (Adam). Chosen on validation: the learning rate (--plain_learning_rates)
           and the epoch (1..--plain_epochs, the best epoch's weights kept). The chosen rate
           then runs with --seeds seeds (the first is the selection run); the table gives
           their mean test F1 and range. Scored with seqeval on the files' own tokens.
  kerasft: `python -m kerasft.train --task=tagging` with its defaults (the per-token head,
           then every encoder block fine-tuned; the best epoch on the validation part kept),
           --val_conll the validation part. Chosen on validation: --words (punctuation, the
           default, or whitespace: the CoNLL tokens as words). Scored through the export
           (`kerasft.evaluate --conll`, character spans).
Prints one table: the setting each chose with its validation F1, test entity F1, training
seconds (kerasft: the whole train process; plain: `fit`'s seconds of the chosen run), and
whether the target (a higher test F1 in less time than the plain script) is met.
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
flags.DEFINE_integer("plain_epochs", 3, "plain: most epochs of full fine-tuning.")
flags.DEFINE_integer("plain_length", 128, "plain: tokens per text (padded).")
flags.DEFINE_list("plain_learning_rates", ["5e-5", "1e-4"], "plain: Adam rates tried.")
flags.DEFINE_integer("seeds", 3, "plain: seeds of the chosen rate.")
flags.DEFINE_float("val_fraction", 0.1, "The share of train.conll's sentences held out.")
flags.DEFINE_list("words", ["punctuation", "whitespace"], "kerasft: --words tried.")
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


def _split(sentences, fraction: float, seed: int = 0):
  """(training part, validation part) of `sentences`, a seeded `fraction` held out."""
  order = np.random.default_rng(seed).permutation(len(sentences))
  held = set(order[:int(round(fraction * len(sentences)))].tolist())
  return ([s for i, s in enumerate(sentences) if i not in held],
          [s for i, s in enumerate(sentences) if i in held])


def _write_conll(sentences, path: str) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for tokens, tags in sentences:
      f.write("".join(f"{t} {g}\n" for t, g in zip(tokens, tags)) + "\n")
  return path


def plain(train, val, test, learning_rate: float, seed: int) -> dict:
  """The plain KerasHub script at `learning_rate` and `seed`, the best epoch on `val` kept:
  {"val": its validation F1, "epoch", "seconds" of fit up to it, "score_test": a function
  that returns its F1 on `test`}."""
  import keras
  import keras_hub
  from seqeval.metrics import f1_score
  keras.utils.set_random_seed(seed)
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

  def f1(model, sentences):
    x, _, _, firsts = encode(sentences)
    predicted = model.predict(x, batch_size=64, verbose=0).argmax(-1)
    gold, got = [], []
    for (tokens, tags), first, row in zip(sentences, firsts, predicted):
      gold.append(tags)
      got.append([names[row[p]] for p in first] + ["O"] * (len(tags) - len(first)))
    return float(f1_score(gold, got))

  x, y, w, _ = encode(train)
  outputs = keras.layers.Dense(len(names), activation="softmax")(backbone(backbone.input)[
      "sequence_output"])
  model = keras.Model(backbone.input, outputs)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy")
  best = {"val": -1.0, "epoch": 0, "seconds": 0.0}
  seconds, weights = 0.0, None
  for epoch in range(1, FLAGS.plain_epochs + 1):
    start = time.monotonic()
    model.fit(x, y, sample_weight=w, batch_size=32, epochs=1, verbose=2)
    seconds += time.monotonic() - start
    score = f1(model, val)
    print(f"plain lr {learning_rate:g} seed {seed} epoch {epoch}: validation F1 {score:.4f}",
          flush=True)
    if score > best["val"]:
      best.update(val=score, epoch=epoch, seconds=seconds)
      weights = model.get_weights()
  model.set_weights(weights)
  best["score_test"] = lambda: f1(model, test)  # read only for the chosen setting
  return best


def kerasft_case(root: str, train_path: str, val_path: str, words: str) -> dict:
  """kerasft's defaults with `words`: {"val", "seconds" of the train process, "export"}."""
  out = os.path.join(root, words)
  _, seconds = run_kerasft("train", "--task=tagging", f"--model=keras_hub:{FLAGS.preset}",
                           f"--conll={train_path}", f"--val_conll={val_path}",
                           f"--words={words}", f"--model_dir={out}/run",
                           f"--export_dir={out}/export")
  return {"val": _evaluate(f"{out}/export", val_path, f"{out}/val"), "seconds": seconds,
          "export": f"{out}/export"}


def _evaluate(export: str, conll: str, out: str) -> float:
  """Entity F1 of an export on a CoNLL file (`kerasft.evaluate`)."""
  run_kerasft("evaluate", f"--export={export}", f"--conll={conll}", f"--output_dir={out}")
  with open(os.path.join(out, "metrics.json")) as f:
    return json.load(f)["entity_f1"]


def main(argv):
  del argv
  train_all = _conll(os.path.join(DATA, "train.conll"))
  test = _conll(os.path.join(DATA, "test.conll"))
  train, val = _split(train_all, FLAGS.val_fraction)
  print(f"selection: {len(train)} training and {len(val)} validation sentences of "
        f"train.conll; test.conll ({len(test)}) read once per chosen setting", flush=True)
  rows, results = [], {}
  with tempfile.TemporaryDirectory(prefix="kerasft-tagging-") as root:
    if "plain" in FLAGS.taggers:
      tried = {float(r): plain(train, val, test, float(r), 0) for r in FLAGS.plain_learning_rates}
      rate = max(tried, key=lambda r: tried[r]["val"])
      print("plain, validation F1 per rate: " + ", ".join(
          f"{r:g}: {t['val']:.4f} (epoch {t['epoch']})" for r, t in tried.items()), flush=True)
      runs = [tried[rate]] + [plain(train, val, test, rate, seed)
                              for seed in range(1, FLAGS.seeds)]
      scores = [r["score_test"]() for r in runs]
      results["plain"] = (float(np.mean(scores)), float(np.mean([r["seconds"] for r in runs])))
      rows.append(["plain", f"Adam {rate:g}, epoch {runs[0]['epoch']} (seed 0)",
                   f"{tried[rate]['val']:.4f}",
                   f"{np.mean(scores):.4f} ({min(scores):.4f}-{max(scores):.4f}, "
                   f"{len(scores)} seeds)", f"{results['plain'][1]:.0f}"])
    if "kerasft" in FLAGS.taggers:
      paths = (_write_conll(train, os.path.join(root, "train_part.conll")),
               _write_conll(val, os.path.join(root, "val_part.conll")))
      tried = {w: kerasft_case(root, *paths, w) for w in FLAGS.words}
      words = max(tried, key=lambda w: tried[w]["val"])
      print("kerasft, validation F1 per --words: " + ", ".join(
          f"{w}: {t['val']:.4f}" for w, t in tried.items()), flush=True)
      f1 = _evaluate(tried[words]["export"], os.path.join(DATA, "test.conll"),
                     os.path.join(root, "test"))
      results["kerasft"] = (f1, tried[words]["seconds"])
      rows.append(["kerasft", f"defaults, --words={words}", f"{tried[words]['val']:.4f}",
                   f"{f1:.4f}", f"{tried[words]['seconds']:.0f}"])
  print_table(["case", "chosen on validation", "validation F1", "entity F1 (test.conll)",
               "training s"], rows, FLAGS.markdown)
  if {"plain", "kerasft"} <= set(results):
    (f1, s), (pf1, ps) = results["kerasft"], results["plain"]
    print(f"target (higher F1 in less time): {'met' if f1 > pf1 and s < ps else 'NOT met'} "
          f"(F1 {f1:.4f} vs {pf1:.4f}, {s:.0f} s vs {ps:.0f} s)")


if __name__ == "__main__":
  app.run(main)
