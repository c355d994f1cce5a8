"""Token tagging (`--task=tagging`): a tag per word from a KerasHub encoder, entities out.

The `Tagging` output and the `TaggingTask` (a text task) together: examples are texts with
character-span entities (`kerasft.tagging`), the model is the encoder with a per-token
head whose tags are IOB2 over the entity types (`labels.txt` lists the types), the loss
counts only each word's first sub-word, and the monitored metric is entity F1. The graph
that turns strings into windows and per-word tags into entity spans
(`kerasft.tagging_graph`) is the same in training, evaluation and the export.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from absl import logging

from kerasft.reporting import metrics as reports
from kerasft.tasks.tagging import data as tagging
from kerasft.core.errors import UsageError, refuse
from kerasft.tasks.classify.outputs import Output
from kerasft.tasks.text import TextTask

SOURCES = ("conll", "jsonl", "tfds")
CHUNK = 512  # texts per tokenizer call


def objects(items: list) -> np.ndarray:
  """A 1-D object array of `items` (per-text entity lists), which numpy leaves unbroadcast."""
  out = np.empty(len(items), object)
  out[:] = [list(i) for i in items]
  return out


class Tagging(Output):
  """IOB2 tag probabilities per token ("probabilities" [N, L, 1 + 2 types]); labels and
  outputs are per-text entity lists ((start, end, type[, score]) character spans)."""
  name = "tagging"
  sliceable = False
  names_key, noun = "entity_types", "entity types"
  monitor = ("val_entity_f1", "max")
  objective = ("entity_f1", "max")
  min_classes = 1
  one_label = False
  convex = False  # a per-token head trains by epochs
  unsearched = ("few_shot",)

  def strata(self, labels, class_names=None):
    return None

  def class_counts(self, labels, k):  # entities per type, types in `entity_types` order
    types = tagging.entity_types(labels)
    counts = {t: 0 for t in types}
    for items in labels:
      for e in items:
        counts[e[2]] += 1
    return [counts[t] for t in types] if len(types) == k else None

  def check(self, config):
    d = config.data
    refuse(self.name, class_weight=d.class_weight != "none", oversample=d.oversample,
            slice_column=bool(d.slice_column), calibrate=config.training.calibrate != "none",
            recipe=config.methods.recipe == "few_shot")

  def targets(self, labels, k):
    raise ValueError("tagging targets are per token: TaggingTask.targets")

  def evaluation_labels(self, files):
    return objects(files.labels)

  def last_layer(self, x, n, stats=None):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.layers.Dense(1 + 2 * n, dtype="float32", name=self.layer,
                              activation="softmax")(x)

  def solver(self, model, standardize=True, floor=0.0):
    return None

  def loss(self, label_smoothing=0.0):
    from kerasft.tasks.tagging import graph
    return graph.TokenCrossentropy(label_smoothing)

  def metrics(self):
    from kerasft.tasks.tagging import graph
    return [graph.TokenAccuracy(), graph.EntityF1()]

  def card(self):
    return {"task": self.name, "tags": "IOB2"}

  def served(self, result: dict) -> np.ndarray:
    """Per-text entity lists (start, end, type, score, text) of the export's outputs."""
    return objects([[(int(a), int(b), t.decode(), float(s), x.decode())
             for a, b, t, s, x in zip(*(result[k][i] for k in (
                 "entity_starts", "entity_ends", "entity_types", "entity_scores", "entities")))
             if a >= 0] for i in range(len(result["entities"]))])

  def predict_row(self, key, name, values, class_names, top_k, error):
    if error:
      return {key: name, "classes": [], "probabilities": [], "entities": [], "error": error}
    return {key: name, "classes": [f"{e[2]}: {e[4]}" for e in values],
            "probabilities": [e[3] for e in values],
            "entities": [{"text": e[4], "type": e[2], "start": e[0], "end": e[1],
                          "score": e[3]} for e in values], "error": None}

  def calibrate(self, labels, outputs, fit):
    return outputs, None, None

  def report(self, labels, outputs, class_names, out_dir):
    result = tagging.entity_metrics(list(labels), list(outputs), class_names)
    matrix = tagging.type_confusion(list(labels), list(outputs), class_names)
    result["type_confusion"] = matrix.tolist()
    reports.plot_confusion_matrix(matrix.tolist(), list(class_names) + ["(none)"],
                                  f"{out_dir}/confusion_matrix.png")
    return result

  def headline(self, metrics):
    return (f"entity F1 {metrics['entity_f1']:.4f} (precision "
            f"{metrics['entity_precision']:.4f}, recall {metrics['entity_recall']:.4f})")

  def table(self, metrics):
    rows = [f"{'type':<12}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}"]
    for name, r in sorted(metrics["per_type"].items()):
      rows.append(f"{name:<12}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}"
                  f"{r['support']:>9d}")
    rows.append(f"{'all (micro)':<12}{metrics['entity_precision']:>10.4f}"
                f"{metrics['entity_recall']:>10.4f}{metrics['entity_f1']:>10.4f}"
                f"{metrics['entities']:>9d}")
    return "\n".join(rows)


class TaggingTask(TextTask):
  """Texts with entities in (--conll, --jsonl), a KerasHub encoder with a per-token head."""

  @classmethod
  def check_inputs(cls, config) -> None:
    from kerasft.tasks import registry as tasks
    if not config.model.model.startswith(tasks.TEXT_PREFIX):
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
  def read(data_config, flag_prefix: str = "", split: str = "") -> tuple[str, str, tuple]:
    """(flag, path, (texts, entities)) of a DataConfig's --conll/--jsonl (or --val_...),
    or --tfds (its --train_split, or `split`; flag_prefix "val_": --val_split or the set's
    validation split, "" when it has none)."""
    d = data_config
    if d.tfds:
      from kerasft.data import records
      split = split or (d.train_split if not flag_prefix else d.val_split or
                        records.tfds_validation_split(d.tfds, d.tfds_data_dir))
      return "tfds", f"{d.tfds}[{split}]" if split else "", records.read_tfds_tokens(
          d.tfds, d.tfds_data_dir, split, d.text_key, d.label_key) if split else ((), ())
    flag = next(f"{flag_prefix}{s}" for s in SOURCES if getattr(data_config, s))
    path = getattr(data_config, flag)
    reader = tagging.read_conll if flag.endswith("conll") else tagging.read_jsonl
    return flag, path, reader(path, flag) if path else ((), ())

  def index(self, seed: int = 0):
    from kerasft.data import examples as data
    c = self.config.data
    flag, path, (texts, entities) = self.read(c)
    types = tagging.entity_types(entities)
    if not types:
      raise UsageError(f"--{flag}: {path} tags no entities (every tag is O)")
    train = _examples(texts, entities, types, self.output, path)
    val_flag, val_path, (val_texts, val_entities) = self.read(c, "val_")
    if val_path:
      val = _examples(val_texts, val_entities, types, self.output, val_path)
      unknown = sorted(set(tagging.entity_types(val_entities)) - set(types))
      if unknown:
        raise UsageError(f"--{val_flag}: {val_path} has entity types the training data lacks: "
                         f"{', '.join(unknown)}")
    else:
      train, val = data.stratified_split(train, c.validation_split, seed)
    logging.info("data: %d training and %d validation texts, %d entity types (%s)",
                 len(train.inputs), len(val.inputs), len(types), ", ".join(types))
    return train, val

  @staticmethod
  def evaluation_examples(data_config, output, class_names, split="test"):
    flag, path, (texts, entities) = TaggingTask.read(data_config, split=split)
    unknown = sorted(set(tagging.entity_types(entities)) - set(class_names))
    if unknown:
      logging.warning("--%s: %s has entity types the model does not tag (%s): they count as "
                      "missed", flag, path, ", ".join(unknown))
    return _examples(texts, entities, class_names, output, path)

  def build_model(self, train_files, stats=None):
    """(this task with the window length chosen, the tagger sized for `train_files`):
    --max_length, else the longest training text's sub-words (rounded up to 8, at most
    the encoder's limit); longer texts are read in overlapping windows."""
    from kerasft.tasks.tagging import graph
    from kerasft.models import text_encoders as text
    m = self.config.model
    encoder = self.backbone or text.load(self.preset)
    length = m.max_length
    if not length:
      counts = graph.piece_counts(encoder, train_files.inputs, m.words)
      length = int(min(encoder.max_length, max(8, -(-(int(counts.max()) + 2) // 8) * 8)))
      logging.info("texts are packed to %d tokens (the longest training text)", length)
    elif length > encoder.max_length:
      raise UsageError(f"--max_length: {encoder.name} takes at most {encoder.max_length} "
                       f"tokens, got {length}")
    model = graph.build_tagger(encoder, len(train_files.class_names), length, self.output,
                         m.head, m.dropout)
    return self.replace(backbone=encoder, max_length=length), model

  def auto_settings(self, per_class, n, train):
    """--recipe=auto: fine-tune every encoder block (a per-token head on frozen features
    finds far fewer entities: entity F1 0.45 against 0.63 on the fortunes entities)."""
    from kerasft.models import backbones
    blocks = len(backbones.blocks(self.encoder.model))
    return ({"model.unfreeze_blocks": blocks, "training.fine_tune_epochs": 4,
             "training.fine_tune_learning_rate": 1e-4},
            f"fine-tune all {blocks} encoder blocks 4 epochs at 1e-4")

  @functools.cached_property
  def packer(self):
    """texts [N] -> `kerasft.tagging_graph.windows` of this task's length (a tf.function)."""
    from kerasft.tasks.tagging import graph
    return graph.packer(self.encoder, self.config.model.max_length, self.config.model.words)

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
    from kerasft.data import pipeline
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
    from kerasft.tasks.tagging import graph
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
    from kerasft.tasks.tagging import graph
    names, length = tagging.tag_names(files.class_names), self.config.model.max_length
    special, tokenizer = (graph.special_tokens(self.encoder.preprocessor),
                          self.encoder.preprocessor.tokenizer)
    words = self.config.model.words
    run = tf.function(lambda texts: graph.tag(model, graph.windows(
        texts, tokenizer, special, length, words), names), autograph=False,
                      input_signature=[tf.TensorSpec([None], tf.string)])
    predicted = []
    for start in range(0, len(files.inputs), batch_size):
      result = run(tf.constant(files.inputs[start:start + batch_size], tf.string))
      predicted += list(self.output.served({k: v.numpy() for k, v in result.items()}))
    return self.output.evaluation_labels(files), objects(predicted)

  def held_out(self, model, dataset, view=None):
    return self.predict_examples(model, dataset.val_files, self.config.data.batch_size)

  def input_card(self) -> dict:
    return {"input": {"shape": [None], "dtype": "string", "range": "raw text"},
            "words": self.config.model.words,
            "preprocessing": f"words: the text split as --words={self.config.model.words} says; "
                             "each word tokenized by the preset's tokenizer inside the export "
                             f"(tensorflow-text ops); windows of {self.config.model.max_length}"
                             " tokens overlapping by half for longer texts",
            "tags": "IOB2; the first sub-word of each word carries its tag"}

  def export_signatures(self, model, class_names, labels_path):
    from kerasft.serving import versions as serving
    return serving.tagging_signatures(model, self.encoder.preprocessor,
                                      tagging.tag_names(class_names), labels_path,
                                      self.config.model.max_length, self.config.model.words)

  def check_explain(self) -> None:
    raise UsageError("--explain: not for --task=tagging; predict prints each text's "
                     "entities with their scores")

  @staticmethod
  def example_cards(files, model=None, encoder=None):
    """A function (indices, predicted entity lists, captions) -> HTML cards of `files`'
    texts with the true entities underlined and the predicted ones shaded (the text task's
    `cards` passes a model and an encoder, unused: nothing is explained)."""
    from kerasft.reporting import sections as report

    def cards(indices, predicted, captions):
      return [f'<div class="card text">{report.marked(files.inputs[i], files.labels[i], p)}<br>'
              f'<i>{report.esc(c)}</i></div>' for i, p, c in zip(indices, predicted, captions)]
    return cards


def _examples(texts, entities, types, output, where: str):
  """`kerasft.data.Examples` of texts and their entity lists, named "<where> example i"."""
  from kerasft.data import examples as data
  return data.Examples(list(texts), list(entities), list(types), output,
                       names=[f"{where} example {i + 1}" for i in range(len(texts))])
