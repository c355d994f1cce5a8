"""Token tagging (`--task=tagging`): readers, schemes, metrics, windows, train to export."""

import json
import os
import random

import numpy as np
import pytest

from conftest import checked, call_main, text_saved_model_cli
import kerasft
from kerasft.data.source import Source
from kerasft.tasks.tagging import data as tagging
from kerasft.core.errors import UsageError

keras_hub = pytest.importorskip("keras_hub", reason="pip install 'kerasft[text]'")
tensorflow_text = pytest.importorskip("tensorflow_text")

FOOD, DRINK = ("soup", "bread", "cheese", "crepes", "pasta"), ("wine", "coffee")
WORDS = ("i love a good with and for dinner tonight the cafe serves fresh tomato sauce "
         "my keyboard mouse").split() + list(FOOD) + list(DRINK)


def _sentences(n, seed=0, longest=12):
  """Random sentences of the tiny vocabulary; foods are FOOD entities (a food followed by
  "sauce" is a two-word FOOD), drinks DRINK."""
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    tokens = [rng.choice(WORDS) for _ in range(rng.randint(3, longest))]
    tags, previous = [], "O"
    for t in tokens:
      if t in FOOD:
        tag = "B-FOOD"
      elif t == "sauce" and previous.endswith("FOOD"):
        tag = "I-FOOD"
      elif t in DRINK:
        tag = "B-DRINK"
      else:
        tag = "O"
      tags.append(tag)
      previous = tag
    out.append((tokens, tags))
  return out


def _write_conll(path, sentences, docstart=False):
  lines = ["-DOCSTART- O", ""] if docstart else []
  for tokens, tags in sentences:
    lines += [f"{t} NN {g}" for t, g in zip(tokens, tags)] + [""]
  path.write_text("\n".join(lines))
  return str(path)


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
  """A one-layer DistilBERT (random weights) and a WordPiece vocabulary of WORDS."""
  import keras
  keras.utils.set_random_seed(int(os.environ.get("KERASFT_TEST_SEED", "0")))
  folder = str(tmp_path_factory.mktemp("tiny_tagger_preset"))
  vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + ["##s"]
  keras_hub.models.DistilBertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(
      folder)
  keras_hub.models.DistilBertBackbone(
      vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=32,
      intermediate_dim=64, max_sequence_length=32).save_to_preset(folder)
  return folder


# ---- Readers and tag schemes --------------------------------------------------------------

def test_iob1_iob2_and_bioes_give_the_same_character_spans():
  tokens = "Ada Lovelace met Charles Babbage in London".split()
  schemes = {"iob2": "B-PER I-PER O B-PER I-PER O B-LOC",
             "iob1": "I-PER I-PER O I-PER I-PER O I-LOC",
             "bioes": "B-PER E-PER O B-PER E-PER O S-LOC"}
  expected = [(0, 12, "PER"), (17, 32, "PER"), (36, 42, "LOC")]
  for scheme, tags in schemes.items():
    text, entities = tagging.from_tokens(tokens, tags.split(), scheme)
    assert text == " ".join(tokens)
    assert entities == expected, scheme
    assert [text[a:b] for a, b, _ in entities] == ["Ada Lovelace", "Charles Babbage", "London"]
  # IOB1's B- separates two adjacent entities of one type; a stray I- after O starts one
  assert tagging.spans("I-PER B-PER O I-LOC".split()) == [(0, 0, "PER"), (1, 1, "PER"),
                                                          (3, 3, "LOC")]


def test_conll_and_jsonl_readers(tmp_path):
  conll = _write_conll(tmp_path / "a.conll", [("Dave Barry wrote".split(), ["B-PER", "I-PER",
                                                                            "O"])],
                       docstart=True)
  texts, entities = tagging.read_conll(Source("conll", conll))
  assert texts == ["Dave Barry wrote"] and entities == [[(0, 10, "PER")]]
  rows = [{"tokens": ["in", "Paris"], "tags": ["O", "S-LOC"]},
          {"text": "Visit Rome, then Oslo.", "entities": [[17, 21, "LOC"], [6, 10, "LOC"]]},
          {"text": "doccano style", "label": [[0, 7, "ORG"]]}]
  path = tmp_path / "a.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  texts, entities = tagging.read_jsonl(Source("jsonl", str(path)))
  assert texts == ["in Paris", "Visit Rome, then Oslo.", "doccano style"]
  assert entities == [[(3, 8, "LOC")], [(6, 10, "LOC"), (17, 21, "LOC")], [(0, 7, "ORG")]]


@pytest.mark.parametrize("content, flag_reader, message", [
    ("Dave B-PER\nBarry\n", "conll", "line 2: expected a token and its tag"),
    ("Dave X-PER\n", "conll", "tag 'X-PER' is neither O nor B-/I-/E-/S-"),
    ("\n\n", "conll", "holds no tagged sentences"),
    ('{"text": "abc", "entities": [[1, 9, "X"]]}\n', "jsonl",
     "entity [1, 9, 'X'] is not [start, end, type]"),
    ('{"tokens": ["a"], "tags": []}\n', "jsonl", "1 tokens but 0 tags"),
    ("not json\n", "jsonl", "line 1: not JSON"),
])
def test_malformed_files_are_usage_errors_naming_flag_file_and_line(tmp_path, content,
                                                                   flag_reader, message):
  path = tmp_path / f"bad.{flag_reader}"
  path.write_text(content)
  reader = tagging.read_conll if flag_reader == "conll" else tagging.read_jsonl
  with pytest.raises(UsageError, match=f"--{flag_reader}: {path}"):
    reader(Source(flag_reader, str(path)))
  with pytest.raises(UsageError) as error:
    reader(Source(flag_reader, str(path)))
  assert message in str(error.value)
  with pytest.raises(UsageError, match="does not exist"):
    reader(Source(flag_reader, str(tmp_path / "missing")))


def test_entity_f1_equals_seqeval():
  seqeval = pytest.importorskip("seqeval.metrics")
  rng = random.Random(3)
  kinds = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
  gold_tags, predicted_tags, gold, predicted = [], [], [], []
  for tokens, tags in _sentences(60, seed=5):
    noisy = [rng.choice(kinds) if rng.random() < 0.2 else t.replace("FOOD", "PER")
             .replace("DRINK", "LOC") for t in tags]
    tags = [t.replace("FOOD", "PER").replace("DRINK", "LOC") for t in tags]
    gold_tags.append(tags)
    predicted_tags.append(noisy)  # stray I- tags included
    gold.append(tagging.from_tokens(tokens, tags, "gold")[1])
    predicted.append(tagging.from_tokens(tokens, noisy, "predicted")[1])
  ours = tagging.entity_metrics(gold, predicted, ["LOC", "ORG", "PER"])
  assert ours["entity_f1"] == pytest.approx(seqeval.f1_score(gold_tags, predicted_tags))
  assert ours["entity_precision"] == pytest.approx(
      seqeval.precision_score(gold_tags, predicted_tags))
  assert ours["entity_recall"] == pytest.approx(seqeval.recall_score(gold_tags, predicted_tags))
  report = seqeval.classification_report(gold_tags, predicted_tags, output_dict=True,
                                         zero_division=0)
  for kind in ("LOC", "PER"):
    assert ours["per_type"][kind]["f1"] == pytest.approx(report[kind]["f1-score"])
    assert ours["per_type"][kind]["support"] == report[kind]["support"]
  assert 0.3 < ours["entity_f1"] < 0.95  # the noise made a non-trivial case


def test_cut_splits_long_texts_between_words_and_outside_entities():
  text = "a b c Ada Lovelace d e"
  words = [(0, 1), (2, 3), (4, 5), (6, 9), (10, 18), (19, 20), (21, 22)]
  entities = [(6, 18, "PER")]
  parts = tagging.cut(text, entities, words, [1] * 7, 4)
  assert [p[0] for p in parts] == ["a b c", "Ada Lovelace d e"]
  assert parts[1][1] == [(0, 12, "PER")]
  assert tagging.cut(text, entities, words, [1] * 7, 7) == [(text, entities)]
  clipped = tagging.cut(text, entities, words, [1, 1, 1, 3, 3, 1, 1], 3)
  assert all(sum(1 for _ in p[0].split()) >= 1 for p in clipped)
  assert "".join(p[0] for p in clipped).replace(" ", "") == text.replace(" ", "")


# ---- The graph: windows, decoding, loss and metric ----------------------------------------

class _Echo:
  """A stand-in tagger whose output at a position depends only on the token there
  (tag = token id mod tags), so any window must give each word the same tags."""

  def __init__(self, n_tags):
    import keras
    self.inputs = [keras.Input((None,), dtype="int32", name="token_ids"),
                   keras.Input((None,), dtype="bool", name="padding_mask")]
    self.n_tags = n_tags

  def __call__(self, inputs, training=False):
    import tensorflow as tf
    return tf.one_hot(inputs["token_ids"] % self.n_tags, self.n_tags)


def test_windows_give_every_word_the_tag_of_a_full_pass(tiny_preset):
  import tensorflow as tf
  from kerasft.tasks.tagging import graph
  from kerasft.models import text_encoders as text
  encoder = text.load(tiny_preset)
  special = graph.special_tokens(encoder.preprocessor)
  names = tagging.tag_names(["DRINK", "FOOD"])
  texts = [" ".join(t) for t, _ in _sentences(6, seed=1, longest=30)] + ["", "soup"]
  outputs = {}
  for length in (8, 11, 64):
    packed = graph.windows(tf.constant(texts), encoder.preprocessor.tokenizer, special, length)
    if length == 8:
      assert packed["inputs"]["token_ids"].shape[0] > len(texts)  # windows were needed
      position = packed["position"].numpy()
      assert position.min() >= 1 and position.max() <= 6
    outputs[length] = graph.tag(_Echo(len(names)), packed, names)
  for length in (8, 11):
    for key in ("tags", "entities", "entity_starts", "entity_types"):
      np.testing.assert_array_equal(outputs[length][key].numpy(), outputs[64][key].numpy())
  words = outputs[64]["words"].numpy()
  assert [w.decode() for w in words[len(texts) - 1] if w] == ["soup"]
  starts, ends = outputs[64]["word_starts"].numpy(), outputs[64]["word_ends"].numpy()
  for i, t in enumerate(texts[:6]):
    spelled = [t[a:b] for a, b in zip(starts[i], ends[i]) if a >= 0]
    assert spelled == t.split()


def test_untagged_positions_do_not_count_in_the_loss_and_f1_matches_python():
  import tensorflow as tf
  from kerasft.tasks.tagging import graph
  rng = np.random.default_rng(0)
  y_true = np.eye(5, dtype=np.float32)[rng.integers(0, 5, (4, 6))]
  y_pred = rng.dirichlet(np.ones(5), (4, 6)).astype(np.float32)
  loss = graph.TokenCrossentropy()
  padded_true = np.concatenate([y_true, np.zeros((4, 3, 5), np.float32)], axis=1)
  padded_pred = np.concatenate([y_pred, rng.dirichlet(np.ones(5), (4, 3)).astype(np.float32)],
                               axis=1)
  assert float(loss(padded_true, padded_pred)) == pytest.approx(float(loss(y_true, y_pred)),
                                                                rel=1e-6)
  expected = -np.mean(np.log(y_pred[y_true > 0]))
  assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
  metric = graph.EntityF1()
  metric.update_state(tf.constant(padded_true), tf.constant(padded_pred))
  names = tagging.tag_names(["A", "B"])
  words = [(i, i + 1) for i in range(6)]
  gold = [tagging.tag_entities(words, [names[k] for k in row.argmax(-1)]) for row in y_true]
  got = [tagging.tag_entities(words, [names[k] for k in row.argmax(-1)]) for row in y_pred]
  assert float(metric.result()) == pytest.approx(
      tagging.entity_metrics(gold, got, ["A", "B"])["entity_f1"], rel=1e-6)


# ---- Train, export, evaluate, predict ------------------------------------------------------

def _tagger_config(preset, root, methods=None):
  """160 sentences in root/train.conll; the head, then the encoder's block 3 epochs."""
  train = _write_conll(root / "train.conll", _sentences(160, seed=0))
  return kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + preset, task="tagging", dropout=0.0,
                                unfreeze_blocks=1),
      data=kerasft.DataConfig.of(conll=train, batch_size=16),
      training=kerasft.TrainingConfig(learning_rate=1e-2, fine_tune_epochs=3,
                                      fine_tune_learning_rate=3e-3),
      methods=methods or kerasft.MethodsConfig(),
      model_dir=str(root / "run"), export_dir=str(root / "export"))


@pytest.fixture(scope="module")
def tagging_run(tiny_preset, tmp_path_factory):
  root = tmp_path_factory.mktemp("tagging")
  test = _write_conll(root / "test.conll", _sentences(30, seed=9, longest=40))
  config = _tagger_config(tiny_preset, root)
  result = kerasft.run_training(config, verbose=0)
  return result, root, test


@pytest.mark.slow
def test_tagger_trains_exports_and_serves_what_it_computes(tagging_run, tmp_path):
  import tensorflow as tf
  from kerasft.workflows import evaluate as evaluation
  from kerasft.tasks import registry as tasks
  result, root, test = tagging_run
  assert result.class_names == ["DRINK", "FOOD"]
  assert result.metrics["entity_f1"] > 0.9, result.metrics  # the tags follow the words
  history = result.history
  assert "val_entity_f1" in history and "fine_tune" in history["phase"]  # after the head
  card = json.load(open(os.path.join(result.export_path, "model_card.json")))
  assert card["task"] == "tagging" and card["entity_types"] == ["DRINK", "FOOD"]
  # texts longer than the training texts: the export reads them in windows
  texts = [" ".join(t) for t, _ in _sentences(5, seed=4, longest=40)] + ["bread and wine"]
  task = tasks.for_config(result.config)
  packed = task.packer(tf.constant(texts))
  assert packed["inputs"]["token_ids"].shape[0] > len(texts)
  expected = {k: v.numpy() for k, v in __import__("kerasft.tasks.tagging.graph", fromlist=["tag"]).tag(
      result.model, packed, tagging.tag_names(result.class_names)).items()}
  served = tf.saved_model.load(result.export_path).signatures["serving_default"](
      text=tf.constant(texts))
  np.testing.assert_allclose(served["entity_scores"].numpy(), expected["entity_scores"],
                             atol=1e-5)
  np.testing.assert_array_equal(served["tags"].numpy(), expected["tags"])
  last = [t.decode() for t in served["entities"].numpy()[-1] if t]
  assert last == ["bread", "wine"], last
  assert [t.decode() for t in served["entity_types"].numpy()[-1] if t] == ["FOOD", "DRINK"]
  text_saved_model_cli(result.export_path, texts, tmp_path / "cli")
  np.testing.assert_allclose(np.load(tmp_path / "cli" / "entity_scores.npy"),
                             expected["entity_scores"], atol=1e-5)
  np.testing.assert_array_equal(np.load(tmp_path / "cli" / "entity_starts.npy"),
                                expected["entity_starts"])
  # the export and the run's checkpoint evaluate the same texts to the same figures
  data = kerasft.DataConfig.of(conll=test)
  by_export = evaluation.evaluate_export(result.export_path, data, output_dir=str(tmp_path / "a"))
  by_run = evaluation.evaluate_run(str(root / "run"), data, output_dir=str(tmp_path / "b"))
  assert by_export.metrics["entity_f1"] == pytest.approx(by_run.metrics["entity_f1"])
  assert by_export.metrics["entity_f1"] > 0.85, by_export.metrics  # longer texts: windows
  assert "FOOD" in by_export.table and os.path.isfile(tmp_path / "a" / "report.html")


@pytest.mark.slow
def test_predict_and_evaluate_commands_report_entities(tagging_run, tmp_path):
  result, _, test = tagging_run
  out = call_main("predict", f"--export={result.export_path}", "--top_k=3",
                  f"--output={tmp_path / 'p.jsonl'}", "i love soup and coffee")
  assert out.returncode == 0, out.stderr[-2000:]
  row = json.loads((tmp_path / "p.jsonl").read_text())
  assert [(e["text"], e["type"]) for e in row["entities"]] == [("soup", "FOOD"),
                                                               ("coffee", "DRINK")]
  assert row["entities"][0]["start"] == 7 and row["entities"][0]["end"] == 11
  shown = call_main("predict", f"--export={result.export_path}", "i love soup")
  assert "FOOD: soup" in shown.stdout
  evaluated = call_main("evaluate", f"--export={result.export_path}", f"--conll={test}",
                        f"--output_dir={tmp_path / 'e'}")
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert "all (micro)" in evaluated.stdout
  metrics = json.load(open(tmp_path / "e" / "metrics.json"))
  assert set(metrics["per_type"]) == {"DRINK", "FOOD"}
  explain = call_main("predict", f"--export={result.export_path}", "--explain", "soup")
  assert explain.returncode == 2 and "--explain: not for --task=tagging" in explain.stderr


@pytest.mark.parametrize("args, message", [
    (["--task=tagging", "--csv={conll}"], "--csv: --task=tagging reads --conll, --jsonl or --tfds"),
    (["--task=tagging"], "--conll/--jsonl: --task=tagging needs tagged texts"),
    (["--conll={conll}"], "--conll: tagged texts are for --task=tagging, not --task=multiclass"),
    (["--task=tagging", "--conll={conll}", "--model=mobilenet"],
     "--task=tagging: tags the words of texts with a text encoder"),
    (["--task=tagging", "--conll={conll}", "--calibrate=temperature"],
     "--calibrate: not for --task=tagging"),
    (["--task=tagging", "--conll={bad}"], "--conll: {bad} line 1: tag 'PER' is neither"),
    (["--task=tagging", "--conll={untagged}"], "tags no entities (every tag is O)"),
    (["--task=tagging", "--conll={conll}", "--val_conll={other}"],
     "has entity types the training data lacks: ORG"),
])
def test_tagging_mistakes_are_one_line_errors(tiny_preset, tmp_path, args, message):
  paths = {"conll": _write_conll(tmp_path / "t.conll", _sentences(10)),
           "bad": _write_conll(tmp_path / "bad.conll", [(["Dave"], ["PER"])]),
           "untagged": _write_conll(tmp_path / "o.conll", [(["a", "b"], ["O", "O"])]),
           "other": _write_conll(tmp_path / "v.conll", [(["Acme"], ["B-ORG"])])}
  args = [a.format(**paths) for a in args]
  if not any(a.startswith("--model") for a in args):
    args.append("--model=keras_hub:" + tiny_preset)
  result = call_main("train", *args, f"--model_dir={tmp_path / 'run'}",
                     f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert message.format(**paths) in last, last
  assert not os.path.exists(tmp_path / "run")


def _prepare_tiny_tagging_tfds(data_dir):
  """A conll2003-shaped data set ("kerasft_entities": tokens, pos and ner sequences, train
  and validation splits) prepared in `data_dir`, as `tfds build` would."""
  import tensorflow_datasets as tfds
  tags = ["O", "B-DRINK", "I-DRINK", "B-FOOD", "I-FOOD"]

  class KerasftEntities(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "tokens": tfds.features.Sequence(tfds.features.Text()),
          "pos": tfds.features.Sequence(tfds.features.ClassLabel(names=["NN", "VB"])),
          "ner": tfds.features.Sequence(tfds.features.ClassLabel(names=tags))}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 40), "validation": self._generate_examples(
          1, 10)}

    def _generate_examples(self, seed, n):
      for i, (tokens, labels) in enumerate(_sentences(n, seed=seed)):
        yield str(i), {"tokens": tokens, "pos": [0] * len(tokens),
                       "ner": [tags.index(t) for t in labels]}

  KerasftEntities(data_dir=str(data_dir)).download_and_prepare()


def test_tfds_token_and_tag_sequences(tiny_preset, tmp_path):
  from kerasft.data import records
  from kerasft.tasks import registry as tasks
  _prepare_tiny_tagging_tfds(tmp_path / "tfds")
  texts, entities = tagging.read_tfds_tokens("kerasft_entities", str(tmp_path / "tfds"),
                                             "train")
  expected = [tagging.from_tokens(t, g, "") for t, g in _sentences(40, seed=0)]
  assert sorted(zip(texts, map(str, entities))) == sorted((t, str(e)) for t, e in expected)
  with pytest.raises(UsageError, match="^--label_key: kerasft_entities has no"):
    tagging.read_tfds_tokens("kerasft_entities", str(tmp_path / "tfds"), "train",
                             tags_key="chunks")
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + tiny_preset, task="tagging"),
      data=kerasft.DataConfig(tfds="kerasft_entities", tfds_data_dir=str(tmp_path / "tfds")))
  train, val = tasks.for_config(config.resolved()).index()
  assert (len(train.inputs), len(val.inputs)) == (40, 10)  # its own validation split
  assert train.class_names == ["DRINK", "FOOD"]


@pytest.mark.parametrize("family", ["roberta", "albert"])
def test_byte_pair_and_sentencepiece_encoders_tag_every_word(family, tmp_path):
  """Each word is tokenized on its own with a leading space (byte-pair vocabularies spell
  a word inside a text with one): every word gets sub-words, and the tagger runs."""
  import tensorflow as tf
  from test_text import TEXTS, make_tiny_preset
  from kerasft.tasks.tagging import graph
  from kerasft.models import text_encoders as text
  from kerasft.tasks.tagging.output import Tagging
  encoder = text.load(make_tiny_preset(family, str(tmp_path / family)))
  texts = [t for items in TEXTS.values() for t in items]
  packed = graph.packer(encoder, 16)(tf.constant(texts))
  assert packed["pieces"].numpy().min() >= 1
  start, end, pad = graph.special_tokens(encoder.preprocessor)
  ids = packed["inputs"]["token_ids"].numpy()
  assert (ids[:, 0] == start).all() and pad not in ids[:, 1][ids[:, 1] != end]
  model = graph.build_tagger(encoder, 2, 16, Tagging())
  out = graph.tag(model, packed, tagging.tag_names(["A", "B"]))
  words = [[w.decode() for w in row if w] for row in out["words"].numpy()]
  assert words[0] == texts[0].split()


def test_whitespace_words_keep_pre_tokenized_tokens_whole(tiny_preset):
  import tensorflow as tf
  from kerasft.tasks.tagging import graph
  from kerasft.models import text_encoders as text
  encoder = text.load(tiny_preset)
  texts = tf.constant(["H. L. Mencken in the U.S. , 1925"])
  spelled = {}
  for words in ("punctuation", "whitespace"):
    packed = graph.packer(encoder, 16, words)(texts)
    spelled[words] = [w.decode() for w in packed["words"].flat_values.numpy()]
  assert spelled["whitespace"] == ["H.", "L.", "Mencken", "in", "the", "U.S.", ",", "1925"]
  assert spelled["punctuation"][:4] == ["H", ".", "L", "."]
  with pytest.raises(UsageError, match="--words: only for --task=tagging"):
    checked({"tasks": {"tagging": {"words": "whitespace"}}})


@pytest.mark.slow
def test_a_lora_tagger_killed_mid_fine_tune_resumes_and_exports(tiny_preset, tmp_path,
                                                                monkeypatch):
  """The fine-tuning methods and resuming go through the same training loop as for
  classification: LoRA on the encoder's attention with a greedy soup, killed after its
  second fine-tune epoch, then run again."""
  from kerasft.methods import averaging
  config = _tagger_config(tiny_preset, tmp_path, kerasft.MethodsConfig(
      peft="lora", lora_rank=2, average="greedy_soup"))
  original, seen = averaging.TopK.on_epoch_end, []

  def dies(self, epoch, logs=None):
    original(self, epoch, logs)
    seen.append(epoch)
    if len(seen) == 2:
      raise KeyboardInterrupt("killed")
  monkeypatch.setattr(averaging.TopK, "on_epoch_end", dies)
  with pytest.raises(KeyboardInterrupt):
    kerasft.run_training(config, verbose=0)
  assert not (tmp_path / "export").exists()
  result = kerasft.run_training(config, verbose=0)
  assert len(seen) == 3  # the third fine-tune epoch ran after the resume, the others did not
  assert result.history["phase"].count("fine_tune") == 3
  assert os.listdir(tmp_path / "export") == ["1"]
  assert result.metrics["entity_f1"] > 0.8, result.metrics


def test_the_default_recipe_fine_tunes_the_encoder_and_frozen_keeps_it(tiny_preset, tmp_path):
  """A per-token head on a frozen encoder loses to a plain fine-tuning script, so the
  tagger's default fine-tunes every block (--recipe=frozen keeps the encoder frozen)."""
  import dataclasses
  from kerasft.methods import auto
  from kerasft.models import backbones
  from kerasft.tasks import registry
  conll = _write_conll(tmp_path / "t.conll", _sentences(40, seed=0))
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + tiny_preset, task="tagging"),
      data=kerasft.DataConfig.of(conll=conll)).resolved()
  task = registry.for_config(config)
  train, val = task.index()
  resolved = auto.apply(task, train, val).config
  blocks = len(backbones.blocks(task.encoder.model))  # every one of them
  assert resolved.model.unfreeze_blocks == blocks and resolved.training.fine_tune_epochs == 4
  assert resolved.training.fine_tune_learning_rate == 1e-4
  frozen = task.with_config(dataclasses.replace(config, methods=kerasft.MethodsConfig(
      recipe="frozen")))
  assert auto.apply(frozen, train, val).config == frozen.config
