"""Text classification with a KerasHub encoder (`--model=keras_hub:...`), end to end."""

import json
import os

import numpy as np
import pytest

from conftest import checked, SHARED, call_main, text_saved_model_cli
import kerasft
from kerasft.data.source import Source
from kerasft.models import backbones
from kerasft.data import tables as sources
from kerasft.core.errors import UsageError
from conftest import fit_run, output

MINILM = os.path.join(SHARED, "models", "all-minilm-l6-v2")
FORTUNES = os.path.join(SHARED, "data", "fortunes_4class")
needs_minilm = pytest.mark.skipif(not os.path.isfile(os.path.join(MINILM, "model.safetensors")),
                                  reason="../shared/models/all-minilm-l6-v2 is absent")
needs_fortunes = pytest.mark.skipif(not os.path.isfile(os.path.join(FORTUNES, "test.csv")),
                                    reason="../shared/data/fortunes_4class is absent")
keras_hub = pytest.importorskip("keras_hub", reason="pip install 'kerasft[text]'")
tensorflow_text = pytest.importorskip("tensorflow_text")

TEXTS = {"food": ["I love a good soup with bread", "Cheese and wine for dinner tonight",
                  "The café serves crêpes and coffee", "Fresh pasta with tomato sauce"],
         "computers": ["The kernel crashed after the update", "Compile the program again",
                       "My keyboard and mouse stopped working", "Unix pipes connect programs"]}


def _write_csv(path, texts=TEXTS, times=1):
  import csv
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label"])
    for _ in range(times):
      for label, items in texts.items():
        for t in items:
          writer.writerow([t, label])
  return str(path)


# ---- Sources ----------------------------------------------------------------------------

def test_tsv_jsonl_and_text_dir_give_the_same_texts(tmp_path):
  (tmp_path / "a.tsv").write_text("text\tlabel\nhello there\tx\nbye now\ty\n")
  (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello there", "label": "x"}) + "\n"
                                    + json.dumps({"text": "bye now", "label": "y"}) + "\n")
  for name in ("x", "y"):
    (tmp_path / "dir" / name).mkdir(parents=True)
  (tmp_path / "dir" / "x" / "1.txt").write_text("hello there")
  (tmp_path / "dir" / "y" / "2.txt").write_text("bye now")
  for files in (sources.read_texts(Source("csv", str(tmp_path / "a.tsv"))),
                sources.read_texts(Source("csv", str(tmp_path / "a.jsonl"))),
                sources.read_text_dir(Source("text_dir", str(tmp_path / "dir")))):
    assert files.inputs == ["hello there", "bye now"] and files.class_names == ["x", "y"]
    assert files.labels == [0, 1]


def test_empty_and_undecodable_texts_are_skipped_or_refused(tmp_path, caplog):
  import logging
  path = tmp_path / "t.csv"
  path.write_bytes(b"text,label\nfine text,a\n,b\n   ,a\nbad \xff\xfe bytes,b\nmore,b\nok,a\n")
  files = sources.read_texts(Source("csv", str(path)))
  with caplog.at_level(logging.WARNING):
    kept = sources.readable_texts(files, Source("csv"))
  assert kept.inputs == ["fine text", "more", "ok"]
  message = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
  assert len(message) == 1 and "skipping 3 empty or undecodable text(s)" in message[0]
  assert "row 2 (empty)" in message[0] and "row 4 (not UTF-8)" in message[0]
  with pytest.raises(UsageError,
                     match=r"^--strict_data: 3 empty or undecodable text\(s\) from --csv, first: .* row 2"):
    sources.readable_texts(files, Source("csv"), strict=True)


@pytest.mark.parametrize("model_fields,data_fields,flag", [
    ({"image_size": 96}, {}, "image_size"), ({"bn_mode": "affine"}, {}, "bn_mode"),
    ({}, {"resize": "crop"}, "resize"), ({}, {"cache_dir": "c"}, "cache_dir")])
def test_image_settings_on_a_text_model_are_errors(model_fields, data_fields, flag):
  with pytest.raises(UsageError, match=f"^--{flag}: an image setting; not for text models"):
    checked(kerasft.RunConfig(model=kerasft.ModelConfig(model="keras_hub:x", **model_fields),
                              data=kerasft.DataConfig(csv="t.csv", **data_fields)))


def test_text_and_image_flags_do_not_mix():
  with pytest.raises(UsageError, match="^--data_dir: a text model"):
    checked({"model": {"model": "keras_hub:x"}, "data": {"data_dir": "d"}})
  with pytest.raises(UsageError, match="^--augment: image augmentation"):
    checked({"model": {"model": "keras_hub:x"}, "data": {"csv": "a.csv", "augment": ["flip"]}})
  with pytest.raises(UsageError, match="^--text_dir: needs a text model"):
    checked({"data": {"text_dir": "d"}})
  with pytest.raises(UsageError, match="^--max_length/--pooling: only for text models"):
    checked({"model": {"max_length": 64}})


def test_max_length_is_the_99th_percentile_rounded_up_to_8():
  from kerasft.models import text_encoders as text
  assert text.choose_max_length(np.arange(1, 101), 512) == 104  # p99 = 99.01
  assert text.choose_max_length(np.full(10, 3), 512) == 8
  assert text.choose_max_length(np.full(10, 700), 512) == 512


# ---- With the shared MiniLM encoder ------------------------------------------------------

@needs_minilm
def test_accented_input_tokenizes_to_real_tokens():
  from kerasft.models import text_encoders as text
  encoder = text.load(MINILM)
  tokenizer = encoder.preprocessor.tokenizer
  unk = tokenizer.token_to_id("[UNK]")
  for row in tokenizer(["Café", "crème brûlée", "naïve résumé"]):
    assert unk not in [int(i) for i in row]
  assert [tokenizer.id_to_token(int(i)) for i in tokenizer(["Café"])[0]] == ["cafe"]
  assert backbones.blocks(encoder.model)[-1][0] == "transformer_layer_5"


@needs_minilm
@pytest.mark.parametrize("args, message", [
    (["--model=keras_hub:/no/such/preset", "--csv={csv}"],
     "--model: keras_hub: folder /no/such/preset does not exist"),
    (["--model=keras_hub:" + MINILM, "--csv={csv}", "--text_column=body"],
     "--csv: {csv} has no column 'body' (columns: text, label)"),
    (["--model=keras_hub:" + MINILM, "--csv={empty}"],
     "--csv: every text is empty or undecodable (8 rows, first: {empty} row 1)"),
    (["--model=keras_hub:" + MINILM, "--csv={csv}", "--max_length=1000"],
     "--max_length: all-minilm-l6-v2 takes at most 512 tokens, got 1000"),
    (["--model=keras_hub:" + MINILM, "--data_dir={csv}"],
     "--data_dir: a text model (--model=keras_hub:...) reads --csv, --text_dir or --tfds"),
])
def test_text_mistakes_are_one_line_errors(tmp_path, args, message):
  csv_path = _write_csv(tmp_path / "t.csv")
  empty = _write_csv(tmp_path / "empty.csv", {"a": [""] * 4, "b": ["  "] * 4})
  args = [a.format(csv=csv_path, empty=empty) for a in args]
  result = call_main("train", *args, f"--model_dir={tmp_path / 'run'}",
                     f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: " + message.format(csv=csv_path, empty=empty)), last
  assert not (tmp_path / "run").exists() and not (tmp_path / "export").exists()


@needs_minilm
def test_unfreezing_the_top_block_changes_exactly_that_block(tmp_path):
  from kerasft.models import heads, text_encoders as text
  path = _write_csv(tmp_path / "t.csv", times=2)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + MINILM, max_length=16,
                                unfreeze_blocks=1),
      data=kerasft.DataConfig(csv=path, batch_size=8),
      training=kerasft.TrainingConfig(epochs=1, fine_tune_epochs=1, learning_rate=1e-2),
      model_dir=str(tmp_path / "run")).resolved()
  train, val = sources.index_texts(config.data)
  encoder = text.load(MINILM)
  text.set_length(encoder, 16)
  model = text.build_classifier(encoder, 2, 16, output())
  before = {w.path: np.asarray(w) for w in encoder.model.weights}
  history = fit_run(config, model, text.pipelines(train, val, encoder, 8), restore_best=False,
                    verbose=0)
  after = {w.path: np.asarray(w) for w in heads.backbone_of(model).weights}
  assert set(before) == set(after)
  changed = {p for p in before if not np.array_equal(before[p], after[p])}
  block = {p for p in before if p.startswith("transformer_layer_5/")}
  assert changed and changed <= block
  assert len(changed) == len(block)  # every weight of the block moved
  assert history["phase"] == ["head", "fine_tune"]


@pytest.fixture(scope="session")
def fortunes_run(tmp_path_factory):
  if not (os.path.isfile(os.path.join(MINILM, "model.safetensors"))
          and os.path.isfile(os.path.join(FORTUNES, "test.csv"))):
    pytest.skip("../shared/models/all-minilm-l6-v2 or ../shared/data/fortunes_4class is absent")
  root = tmp_path_factory.mktemp("fortunes")
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + MINILM),
      data=kerasft.DataConfig(csv=os.path.join(FORTUNES, "train.csv")),
      training=kerasft.TrainingConfig(epochs=10),
      name="fortunes", model_dir=str(root / "run"), export_dir=str(root / "export"))
  return kerasft.run_training(config, verbose=0)


@pytest.mark.slow
def test_frozen_minilm_with_the_default_head_reaches_080_on_fortunes_test(fortunes_run, tmp_path):
  result = fortunes_run
  assert result.class_names == ["computers", "food", "politics", "science"]
  assert 8 <= result.config.model.max_length <= 512 and result.config.model.max_length % 8 == 0
  out = tmp_path / "eval"
  run = call_main("evaluate", f"--export={result.export_path}",
                f"--csv={os.path.join(FORTUNES, 'test.csv')}", f"--output_dir={out}")
  assert run.returncode == 0, run.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["num_examples"] == 620
  assert metrics["accuracy"] >= 0.80, metrics["accuracy"]  # majority class: 0.381


@pytest.mark.slow
def test_text_export_reproduces_the_model_on_raw_strings(fortunes_run, tmp_path):
  import tensorflow as tf
  from kerasft.models import text_encoders as text
  result = fortunes_run
  strings = ["Café au lait and croissants", "The senate votes on the budget",
             "Black holes bend light", "rm -rf / is a bad idea", ""]
  signature = tf.saved_model.load(result.export_path).signatures["serving_default"]
  out = signature(text=tf.constant(strings))
  encoder = text.load(MINILM)
  text.set_length(encoder, result.config.model.max_length)
  expected = np.asarray(result.model(text.model_inputs(
      encoder, encoder.preprocessor(tf.constant(strings)))))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
  assert [c.decode() for c in out["classes"].numpy()] == [
      result.class_names[i] for i in expected.argmax(1)]
  text_saved_model_cli(result.export_path, strings, tmp_path / "cli")
  cli = np.load(tmp_path / "cli" / "probabilities.npy")
  np.testing.assert_allclose(cli, expected, atol=1e-5)
  variables = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in
                  os.walk(os.path.join(result.export_path, "variables")) for f in fs)
  params = sum(int(np.prod(w.shape)) * 4 for w in result.model.weights)
  assert variables <= 1.1 * params


# ---- A tiny encoder in KerasHub's own preset format (no ../shared needed) ----------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "i love a good soup with bread cheese and wine for dinner tonight the cafe serves crepes "
    "coffee fresh pasta tomato sauce kernel crashed after update compile program again my "
    "keyboard mouse stopped working unix pipes connect programs").split()


def _sentencepiece(**special):
  """A tiny SentencePiece model (word pieces of TEXTS) as serialized bytes."""
  import io
  import sentencepiece
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter([t for items in TEXTS.values() for t in items] * 4),
      model_writer=model, vocab_size=30, model_type="word", hard_vocab_limit=False, **special)
  return model.getvalue()


def _byte_pair_vocabulary():
  """A tiny RoBERTa vocabulary and merges that spell every word of TEXTS."""
  words = sorted({w for items in TEXTS.values() for t in items for w in t.split()})
  vocabulary = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
  for c in sorted({c for w in words for c in w}) + ["Ġ"]:
    vocabulary.setdefault(c, len(vocabulary))
  merges = []
  for piece in [p for w in words for p in (w, "Ġ" + w)]:
    for end in range(2, len(piece) + 1):
      merges.append(f"{piece[:end - 1]} {piece[end - 1]}")
      vocabulary.setdefault(piece[:end], len(vocabulary))
  return vocabulary, list(dict.fromkeys(merges))


def make_tiny_preset(family: str, folder: str) -> str:
  """A 2-layer encoder of a KerasHub family and its tokenizer, saved with `save_to_preset`."""
  small = dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
               max_sequence_length=32)
  models = keras_hub.models
  if family == "distil_bert":  # WordPiece; no segment_ids input
    tokenizer = models.DistilBertTokenizer(vocabulary=VOCAB, lowercase=True)
    backbone = models.DistilBertBackbone(vocabulary_size=len(VOCAB), **small)
  elif family == "albert":  # SentencePiece; dict output
    tokenizer = models.AlbertTokenizer(proto=_sentencepiece(
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>", unk_piece="<unk>",
        bos_piece="[CLS]", eos_piece="[SEP]", user_defined_symbols="[MASK]"))
    backbone = models.AlbertBackbone(vocabulary_size=tokenizer.vocabulary_size(),
                                     embedding_dim=8, num_groups=1, num_inner_repetitions=1,
                                     **small)
  elif family == "deberta_v3":  # SentencePiece; relative attention
    tokenizer = models.DebertaV3Tokenizer(proto=_sentencepiece(
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
        eos_piece="[SEP]", unk_piece="[UNK]", user_defined_symbols="[MASK]"))
    backbone = models.DebertaV3Backbone(vocabulary_size=tokenizer.vocabulary_size(),
                                        bucket_size=8, **small)
  else:  # roberta: byte-pair encoding
    vocabulary, merges = _byte_pair_vocabulary()
    tokenizer = models.RobertaTokenizer(vocabulary=vocabulary, merges=merges)
    backbone = models.RobertaBackbone(vocabulary_size=len(vocabulary), **small)
  os.makedirs(folder, exist_ok=True)
  tokenizer.save_to_preset(folder)
  backbone.save_to_preset(folder)
  return folder


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
  return make_tiny_preset("distil_bert", str(tmp_path_factory.mktemp("tiny_distilbert")))


def test_a_kerashub_preset_folder_trains_from_text_dir_and_exports(tiny_preset, tmp_path):
  import tensorflow as tf
  from kerasft.models import text_encoders as text
  for label, items in TEXTS.items():
    (tmp_path / "texts" / label).mkdir(parents=True)
    for i, t in enumerate(items * 3):
      (tmp_path / "texts" / label / f"{i}.txt").write_text(t)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + tiny_preset, pooling="cls", dropout=0.0),
      data=kerasft.DataConfig(text_dir=str(tmp_path / "texts"), batch_size=4),
      training=kerasft.TrainingConfig(epochs=2, learning_rate=1e-2),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  assert result.class_names == ["computers", "food"]
  assert result.config.model.max_length == 16  # the longest text is 11 tokens with [CLS]/[SEP]
  assert result.config.name == os.path.basename(tiny_preset)
  strings = ["the cafe serves coffee", "unix programs crashed", "words the model never saw"]
  out = tf.saved_model.load(result.export_path).signatures["serving_default"](
      text=tf.constant(strings))
  encoder = text.load(tiny_preset)
  text.set_length(encoder, 16)
  expected = np.asarray(result.model(text.model_inputs(encoder, encoder.preprocessor(
      tf.constant(strings)))))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
  assert set(out) == {"probabilities", "class_ids", "classes"}
  card = json.loads(open(os.path.join(result.export_path, "model_card.json")).read())
  assert card["input"]["dtype"] == "string" and card["signatures"] == {
      "serving_default": {"text": "string [N], raw text"}}
  # What a model server must have linked in: tensorflow-text's tokenizer ops, nothing else.
  assert "FastWordpieceTokenizeWithOffsets" in card["custom_ops"]
  assert all(op in ("CaseFoldUTF8", "NormalizeUTF8", "RegexSplitWithOffsets",
                    "FastWordpieceTokenizeWithOffsets", "TFText>RoundRobinTrim")
             for op in card["custom_ops"]), card["custom_ops"]
  from kerasft.workflows import export as exporting  # LiteRT and ONNX cannot carry those ops: refused, nothing written
  for formats in (("tflite",), ("onnx",), ("saved_model", "tflite", "onnx")):
    with pytest.raises(UsageError, match=r"^--format=.*: text models export as saved_model "
                                         r"only: .*tensorflow-text ops"):
      exporting.export_run(str(tmp_path / "run"), str(tmp_path / "other"), formats=formats)
  assert not os.path.exists(tmp_path / "other")


def test_tfds_text_data_sets_are_read_with_their_text_feature():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12):
    train, val = sources.index_texts(kerasft.DataConfig(tfds="imdb_reviews"))
  assert train.class_names == ["neg", "pos"]
  assert all(isinstance(t, str) and t for t in train.inputs + val.inputs)
  assert len(train.inputs) + len(val.inputs) <= 24


@pytest.mark.parametrize("family, top_block", [
    ("albert", "group_0_inner_layer_0"), ("deberta_v3", "disentangled_attention_encoder_layer_1"),
    ("roberta", "transformer_layer_1")])
def test_other_encoder_families_train_and_export(family, top_block, tmp_path):
  import tensorflow as tf
  from kerasft.models import heads, text_encoders as text
  preset = make_tiny_preset(family, str(tmp_path / family))
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + preset, unfreeze_blocks=1),
      data=kerasft.DataConfig(csv=_write_csv(tmp_path / "t.csv", times=2), batch_size=8),
      training=kerasft.TrainingConfig(epochs=1, fine_tune_epochs=1),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  encoder_model = heads.backbone_of(result.model)
  assert backbones.blocks(encoder_model)[-1][0] == top_block
  assert result.history["phase"] == ["head", "fine_tune"]
  strings = ["fresh soup and bread", "the program crashed"]
  out = tf.saved_model.load(result.export_path).signatures["serving_default"](
      text=tf.constant(strings))
  encoder = text.load(preset)
  text.set_length(encoder, result.config.model.max_length)
  expected = np.asarray(result.model(text.model_inputs(encoder, encoder.preprocessor(
      tf.constant(strings)))))
  np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_text_models_take_the_other_tasks(task, tiny_preset, tmp_path):
  import csv
  import tensorflow as tf
  path = tmp_path / "t.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label"])
    for label, items in TEXTS.items():
      for t in items * 2:
        cell = {"food": "food|home", "computers": "work"}[label] if task == "multilabel" \
            else {"food": "1.5", "computers": "-2"}[label]
        writer.writerow([t, cell])
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + tiny_preset, task=task),
      data=kerasft.DataConfig(csv=str(path), batch_size=4),
      training=kerasft.TrainingConfig(epochs=2),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  out = tf.saved_model.load(result.export_path).signatures["serving_default"](
      text=tf.constant(["fresh soup", "unix"]))
  if task == "multilabel":
    assert set(out) == {"scores", "labels"} and out["scores"].shape == (2, 3)
    assert result.class_names == ["food", "home", "work"]
  else:
    assert set(out) == {"predictions"} and out["predictions"].shape == (2,)
    assert result.metrics["task"] == "regression"


def test_bucketed_extraction_gives_the_full_length_features_in_order(tiny_preset):
  from kerasft.data import examples as data
  from kerasft.models import features, text_encoders as text
  from kerasft.tasks import registry as tasks
  texts = [" ".join([t] * (1 + i % 3)) for i, t in enumerate(
      [t for items in TEXTS.values() for t in items] * 3)]
  files = data.Examples(texts, [0] * len(texts), ["a", "b"])
  encoder = text.load(tiny_preset)
  text.set_length(encoder, 32)
  model = text.build_classifier(encoder, 2, 32, tasks.make_output())
  batches, order = text.bucketed(files, encoder, 2)
  assert sorted(order.tolist()) == list(range(len(texts)))
  assert len({b[0]["token_ids"].shape[1] for b in batches}) > 1  # cut to their longest
  assert sum(len(b[0]["token_ids"]) for b in batches) == len(texts)
  plain = features._predict(features.feature_model(model), files,
                            lambda f, b: text.make_pipeline(f, encoder, b), 0)
  cut = features._predict(features.feature_model(model), files, None, 0,
                          lambda f, b: text.bucketed(f, encoder, b))
  np.testing.assert_allclose(cut, plain, atol=1e-5)


def test_text_models_take_several_heads(tiny_preset, tmp_path):
  import csv
  import tensorflow as tf
  path = tmp_path / "t.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "topic", "score"])
    for label, items in TEXTS.items():
      for i, t in enumerate(items * 2):
        writer.writerow([t, label, "" if i % 3 == 0 else {"food": "1.5", "computers": "-2"}[label]])
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + tiny_preset, task="multiclass,regression"),
      data=kerasft.DataConfig(csv=str(path), label_column="topic,score", batch_size=4),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  assert result.class_names == ["topic/computers", "topic/food", "score"]
  out = tf.saved_model.load(result.export_path).signatures["serving_default"](
      text=tf.constant(["fresh soup", "unix"]))
  assert set(out) == {"topic/probabilities", "topic/class_ids", "topic/classes",
                      "score/predictions"} and out["score/predictions"].shape == (2,)
  assert set(result.metrics["heads"]) == {"topic", "score"}


@needs_minilm
def test_few_shot_tunes_the_encoder_on_pairs_then_the_head_and_resumes(tmp_path, monkeypatch):
  from kerasft.training import head_solver
  from kerasft.methods import few_shot
  path = _write_csv(tmp_path / "t.csv")
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + MINILM, max_length=16),
      data=kerasft.DataConfig(csv=path, batch_size=8),
      methods=kerasft.MethodsConfig(recipe="few_shot", pairs_per_example=4),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  tuned = []
  original_tune = few_shot.tune
  monkeypatch.setattr(few_shot, "tune", lambda *a, **k: tuned.append(original_tune(*a, **k)))

  def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed after the pairs")
  monkeypatch.setattr(head_solver, "solve", killed)
  with pytest.raises(KeyboardInterrupt):
    kerasft.run_training(config, verbose=0)
  # all 8 labelled texts (k-fold regime: the head is then cross-validated on all of them)
  assert tuned[0]["pairs"] == 8 * 4 and (tmp_path / "run" / few_shot.TUNED).is_file()
  monkeypatch.undo()
  monkeypatch.setattr(few_shot, "tune", lambda *a, **k: tuned.append(original_tune(*a, **k)))
  result = kerasft.run_training(config, verbose=0)
  assert tuned[1] == {}  # resumed: the tuned encoder was loaded, not tuned again
  from kerasft.models import text_encoders as text
  fresh = {w.path: np.asarray(w) for w in text.load(MINILM).model.weights}
  from kerasft.models.heads import backbone_of
  after = {w.path: np.asarray(w) for w in backbone_of(result.model).weights}
  assert sum(not np.array_equal(fresh[p], after[p]) for p in fresh) > len(fresh) // 2
  import tensorflow as tf
  serve = tf.saved_model.load(result.export_path).signatures["serving_default"]
  probabilities = serve(text=tf.constant(["Fresh bread and soup", "The kernel crashed"]))
  assert probabilities["probabilities"].shape == (2, 2)
