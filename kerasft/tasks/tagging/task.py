"""Token tagging (`--task=tagging`): a tag per word from a KerasHub encoder, entities out.

`TaggingTask` (a text task) with the `output.Tagging` output: examples are texts with
character-span entities (`data`), the model is the encoder with a per-token head whose
tags are IOB2 over the entity types (`labels.txt` lists the types), the loss counts only
each word's first sub-word, and the monitored metric is entity F1. The graph that turns
strings into windows and per-word tags into entity spans (`graph`) is the same in
training, evaluation and the export (`serving`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from absl import logging

from kerasft.core.errors import UsageError
from kerasft.data import examples, pipeline, records
from kerasft.data.source import Source
from kerasft.models import backbones, text_encoders as text
from kerasft.reporting import html
from kerasft.tasks.tagging import data as tagging, graph, report, serving
from kerasft.tasks.text import TEXT_PREFIX, TextTask

SOURCES = ("conll", "jsonl", "tfds")
CHUNK = 512  # texts per tokenizer call


class TaggingTask(TextTask):
  """Texts with entities in (--conll, --jsonl), a KerasHub encoder with a per-token head."""

  @classmethod
  def check_inputs(cls, config) -> None:
    if not config.model.model.startswith(TEXT_PREFIX):
      raise UsageError(f"--task=tagging: tags the words of texts with a text encoder; pass "
                       f"--model=keras_hub:PRESET_OR_FOLDER, not --model={config.model.model}")
    d = config.data
    if d.source not in SOURCES + ("",):
      raise UsageError(f"--{d.source}: --task=tagging reads --conll, --jsonl or --tfds")
    if d.source == "":
      raise UsageError("--conll/--jsonl: --task=tagging needs tagged texts; pass "
                       "--conll=FILE, --jsonl=FILE or --tfds=NAME")
    if config.model.pooling != "mean":
      raise UsageError("--pooling: --task=tagging tags every token; it pools nothing")
    super().check_inputs(config)

  @staticmethod
  def read(data_config, flag_prefix: str = "", split: str = "") -> tuple[Source, tuple]:
    """(source, (texts, entities)) of a DataConfig's --conll/--jsonl (or --val_...), or
    --tfds (its --train_split, or `split`; flag_prefix "val_": --val_split or the set's
    validation split); the source's path is "" when there is none."""
    d, own = data_config, data_config.task_data.tagging
    if d.tfds:
      split = split or (d.train_split if not flag_prefix else d.val_split or
                        records.tfds_validation_split(d.tfds, d.tfds_data_dir))
      return Source("tfds", f"{d.tfds}[{split}]" if split else ""), tagging.read_tfds_tokens(
          d.tfds, d.tfds_data_dir, split, d.text_key, d.label_key) if split else ((), ())
    flag = next(f"{flag_prefix}{s}" for s in SOURCES if getattr(own, s, ""))
    source = Source(flag, getattr(own, flag))
    reader = tagging.read_conll if flag.endswith("conll") else tagging.read_jsonl
    return source, reader(source) if source.path else ((), ())

  def index(self, seed: int = 0):
    c = self.config.data
    source, (texts, entities) = self.read(c)
    types = tagging.entity_types(entities)
    if not types:
      raise source.error(f"{source.path} tags no entities (every tag is O)")
    train = _examples(texts, entities, types, self.output, source.path)
    val_source, (val_texts, val_entities) = self.read(c, "val_")
    if val_source.path:
      val = _examples(val_texts, val_entities, types, self.output, val_source.path)
      unknown = sorted(set(tagging.entity_types(val_entities)) - set(types))
      if unknown:
        raise val_source.error(f"{val_source.path} has entity types the training data "
                               f"lacks: {', '.join(unknown)}")
    else:
      train, val = examples.stratified_split(train, c.validation_split, seed)
    logging.info("data: %d training and %d validation texts, %d entity types (%s)",
                 len(train.inputs), len(val.inputs), len(types), ", ".join(types))
    return train, val

  @staticmethod
  def evaluation_examples(data_config, output, class_names, split="test"):
    source, (texts, entities) = TaggingTask.read(data_config, split=split)
    unknown = sorted(set(tagging.entity_types(entities)) - set(class_names))
    if unknown:
      logging.warning("--%s: %s has entity types the model does not tag (%s): they count as "
                      "missed", source.flag, source.path, ", ".join(unknown))
    return _examples(texts, entities, class_names, output, source.path)

  def build_model(self, train_files, stats=None):
    """(this task with the window length chosen, the tagger sized for `train_files`):
    --max_length, else the longest training text's sub-words (rounded up to 8, at most
    the encoder's limit); longer texts are read in overlapping windows."""
    m = self.config.model
    encoder = self.backbone or text.load(self.preset)
    length = m.max_length
    if not length:
      counts = graph.piece_counts(encoder, train_files.inputs, self._words)
      length = int(min(encoder.max_length, max(8, -(-(int(counts.max()) + 2) // 8) * 8)))
      logging.info("texts are packed to %d tokens (the longest training text)", length)
    elif length > encoder.max_length:
      raise UsageError(f"--max_length: {encoder.name} takes at most {encoder.max_length} "
                       f"tokens, got {length}")
    model = graph.build_tagger(encoder, len(train_files.class_names), length, self.output,
                         m.head, m.dropout)
    return self.replace(backbone=encoder, max_length=length), model

  def default_settings(self, per_class, n, train):
    """The default recipe fine-tunes the encoder as --recipe=auto does: measured on entity
    types kerasft never saw, a per-token head on the frozen encoder scored entity F1 0.381,
    every block fine-tuned 0.589, a plain KerasHub fine-tuning script 0.538 (the best epoch
    on validation is kept, so a head that wins before fine-tuning stays);
    --recipe=frozen keeps the encoder frozen."""
    return self.auto_settings(per_class, n, train)

  def auto_settings(self, per_class, n, train):
    """--recipe=auto: fine-tune every encoder block (a per-token head on frozen features
    finds far fewer entities: entity F1 0.45 against 0.63 on the fortunes entities)."""
    blocks = len(backbones.blocks(self.encoder.model))
    return ({"model.unfreeze_blocks": blocks, "training.fine_tune_epochs": 4,
             "training.fine_tune_learning_rate": 1e-4},
            f"fine-tune all {blocks} encoder blocks 4 epochs at 1e-4")

  @property
  def _words(self) -> str:
    return self.config.tasks.tagging.words

  @functools.cached_property
  def packer(self):
    """texts [N] -> `kerasft.tasks.tagging.graph.windows` of this task's length (a tf.function)."""
    return graph.packer(self.encoder, self.config.model.max_length, self._words)

  def encode(self, files) -> tuple[dict, np.ndarray]:
    """(model inputs {name: [rows, L]}, one-hot targets [rows, L, tags], all-zero where no
    word starts) of `files`' texts and entities; a row per window (one per text that fits)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    n_tags = 1 + 2 * len(files.class_names)
    inputs, targets = [], []
    for start in range(0, len(files.inputs), CHUNK):
      chunk = files.inputs[start:start + CHUNK]
      packed = self.packer(tf.constant(chunk, tf.string))
      ids = np.concatenate([tagging.word_tags(list(zip(a, b)), e, files.class_names) for a, b, e
                            in zip(packed["starts"].to_list(), packed["ends"].to_list(),
                                   files.labels[start:start + CHUNK])] + [np.zeros(0, int)])
      rows = packed["inputs"]["token_ids"].shape[0]
      target = np.zeros((rows, self.config.model.max_length, n_tags), np.float32)
      has = packed["pieces"].numpy() > 0
      target[packed["window"].numpy()[has], packed["position"].numpy()[has], ids[has]] = 1.0
      inputs.append({k: v.numpy() for k, v in packed["inputs"].items()})
      targets.append(target)
    if not inputs:
      length = self.config.model.max_length
      return ({t.name: np.zeros((0, length), t.dtype) for t in self.encoder.model.inputs},
              np.zeros((0, length, n_tags), np.float32))
    return ({k: np.concatenate([i[k] for i in inputs]) for k in inputs[0]},
            np.concatenate(targets))

  def fit_length(self, files):
    """`files` with every text longer than the model's length cut, at word boundaries
    outside entities where possible, into parts that fit (a row per example)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    limit = self.config.model.max_length - 2
    texts, labels, names = [], [], []
    for start in range(0, len(files.inputs), CHUNK):
      packed = self.packer(tf.constant(files.inputs[start:start + CHUNK], tf.string))
      pieces = packed["words"].with_flat_values(packed["pieces"]).to_list()
      for i, (a, b, p) in enumerate(zip(packed["starts"].to_list(), packed["ends"].to_list(),
                                        pieces), start=start):
        parts = tagging.cut(files.inputs[i], files.labels[i], list(zip(a, b)), p, limit)
        texts += [t for t, _ in parts]
        labels += [e for _, e in parts]
        names += [files.name(i) + (f" part {k + 1}" if len(parts) > 1 else "")
                  for k in range(len(parts))]
    if len(texts) > len(files.inputs):
      logging.info("%d texts longer than %d tokens are cut into parts (%d examples now)",
                   sum(n.endswith(" part 1") for n in names), limit + 2, len(texts))
    return dataclasses.replace(files, inputs=texts, labels=labels, names=names, problems=None)

  def pipelines(self, train, val):
    """Training batches of texts of similar length, each cut to its longest text (a
    fraction of the padded length's work: most texts are short), reshuffled every epoch;
    validation batches cut the same way; `make_inputs` (the feature cache's) padded."""
    train, val = self.fit_length(train), self.fit_length(val)
    batch, seed = self.config.data.batch_size, self.config.training.seed
    return pipeline.Dataset(
        train=self.make_pipeline(train, batch, True, seed, cut=True),
        val=self.make_pipeline(val, batch, cut=True), class_names=train.class_names,
        train_files=train, val_files=val, make_inputs=self.make_pipeline,
        targets=lambda files: self.encode(files)[1])

  def make_pipeline(self, files, batch_size: int, shuffle: bool = False, seed: int = 0,
                    cut: bool = False):
    """Batched (model inputs, per-token targets) of `files`, encoded once, in memory, padded
    to the model's length; cut: each batch cut to its longest row (rounded up to 8), and
    with `shuffle`, batches drawn from runs of 16 batches sorted by length."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    inputs, targets = self.encode(files)
    ds = tf.data.Dataset.from_tensor_slices(({t.name: inputs[t.name] for t in
                                              self.encoder.model.inputs}, targets))
    if shuffle:
      ds = ds.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    if shuffle and cut:  # (unbatch loses the count: Keras would warn at the first epoch's end)
      ds = ds.batch(batch_size * 16).map(graph.by_length).unbatch().apply(
          tf.data.experimental.assert_cardinality(len(targets)))
    ds = ds.batch(batch_size)
    if cut:
      ds = ds.map(graph.cut_batch)
    if shuffle and cut:
      ds = ds.shuffle(16, seed=seed, reshuffle_each_iteration=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def pipeline(self, files, batch_size: int):
    return self.make_pipeline(files, batch_size)

  def predict_examples(self, model, files, batch_size: int, view=None):
    """(gold, predicted) per-text entity lists of `model` on `files` (any length)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    names, length = tagging.tag_names(files.class_names), self.config.model.max_length
    special, tokenizer = (graph.special_tokens(self.encoder.preprocessor),
                          self.encoder.preprocessor.tokenizer)
    words = self._words
    run = tf.function(lambda texts: graph.tag(model, graph.windows(
        texts, tokenizer, special, length, words), names), autograph=False,
                      input_signature=[tf.TensorSpec([None], tf.string)])
    predicted = []
    for start in range(0, len(files.inputs), batch_size):
      result = run(tf.constant(files.inputs[start:start + batch_size], tf.string))
      predicted += list(self.output.served({k: v.numpy() for k, v in result.items()}))
    return self.output.labels.evaluation_labels(files), examples.objects([list(p) for p in predicted])

  def held_out(self, model, dataset, view=None):
    return self.predict_examples(model, dataset.val_files, self.config.data.batch_size)

  def input_card(self) -> dict:
    return {"input": {"shape": [None], "dtype": "string", "range": "raw text"},
            "words": self._words,
            "preprocessing": f"words: the text split as --words={self._words} says; "
                             "each word tokenized by the preset's tokenizer inside the export "
                             f"(tensorflow-text ops); windows of {self.config.model.max_length}"
                             " tokens overlapping by half for longer texts",
            "tags": "IOB2; the first sub-word of each word carries its tag"}

  def export_signatures(self, model, class_names, labels_path):
    return serving.signatures(model, self.encoder.preprocessor, tagging.tag_names(class_names),
                              labels_path, self.config.model.max_length, self._words)

  def check_explain(self) -> None:
    raise UsageError("--explain: not for --task=tagging; predict prints each text's "
                     "entities with their scores")

  @staticmethod
  def example_cards(files, model=None, encoder=None):
    """A function (indices, predicted entity lists, captions) -> HTML cards of `files`'
    texts with the true entities underlined and the predicted ones shaded (the text task's
    `cards` passes a model and an encoder, unused: nothing is explained)."""

    def cards(indices, predicted, captions):
      return [f'<div class="card text">{report.marked(files.inputs[i], files.labels[i], p)}<br>'
              f'<i>{html.esc(c)}</i></div>' for i, p, c in zip(indices, predicted, captions)]
    return cards


def _examples(texts, entities, types, output, where: str):
  """`Examples` of texts and their entity lists, named "<where> example i"."""
  return examples.Examples(list(texts), list(entities), list(types), output.labels,
                           names=[f"{where} example {i + 1}" for i in range(len(texts))])
