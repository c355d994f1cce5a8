"""The tagger as TensorFlow ops, the same in training, evaluation and the export's graph.

    packed = windows(texts, tokenizer, special, length)   # strings [N] -> model inputs
    word_probs = tf.gather_nd(model(packed["inputs"]), word_index(packed))
    outputs = decode(packed, word_probs, tag_names)      # per-word tags, entity spans

Words are the text split at white space and around every punctuation mark (tensorflow-text's
`regex_split_with_offsets`, so character offsets come with them); each word is tokenized
on its own by the preset's tokenizer (with a leading space, as byte-pair tokenizers expect
a word inside a text), and its first sub-word carries its tag. A text longer than the
model's `length` is cut into windows overlapping by half; each word is read from the
window where it sits nearest the middle, so nothing is truncated and every word has
context on both sides.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

_PUNCT = r"[^\p{L}\p{N}\p{M}_\s]"
WORDS = {  # --words: (split at, keep as words) regular expressions
    "punctuation": (r"\s+|" + _PUNCT, _PUNCT),  # raw text: "U.S." is U . S .
    "whitespace": (r"\s+", ""),  # pre-tokenized text (CoNLL tokens): "U.S." is one word
}


def split_words(texts, words: str = "punctuation"):
  """(words, starts, ends) of strings [N], each ragged [N, (words)]; ends exclusive."""
  import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
  return tf_text.regex_split_with_offsets(texts, *WORDS[words])


def special_tokens(preprocessor) -> tuple[int, int, int]:
  """(start, end, pad) token ids the preset's packer puts around and after a sequence."""
  if getattr(preprocessor, "packer", None) is None:
    preprocessor.build(None)
  first = lambda v: int(v[0] if isinstance(v, (list, tuple)) else v)  # noqa: E731
  packer = preprocessor.packer
  return first(packer.start_value), first(packer.end_value), first(packer.pad_value)


def windows(texts, tokenizer, special: tuple[int, int, int], length: int,
            words_mode: str = "punctuation") -> dict:
  """Model inputs of texts [N]: {"inputs": {token_ids, padding_mask, segment_ids} [Nw,
  length], "texts", "words", "starts", "ends" (ragged [N, (W)]), "window", "position" (where each
  word's tag is read, [sum W]), "pieces" (sub-words per word, [sum W])}."""
  start, end, pad = special
  words, starts, ends = split_words(texts, words_mode)
  rows = words.value_rowids()
  pieces = tokenizer(tf.strings.join([" ", words.flat_values]))
  if not isinstance(pieces, tf.RaggedTensor):
    pieces = tf.RaggedTensor.from_tensor(pieces)
  counts = pieces.row_lengths()
  total = tf.math.unsorted_segment_sum(counts, rows, tf.shape(texts, tf.int64)[0])
  text_pieces = tf.RaggedTensor.from_row_lengths(tf.cast(pieces.flat_values, tf.int32), total)
  first = tf.cumsum(counts, exclusive=True) - tf.gather(text_pieces.row_starts(), rows)
  content = length - 2
  stride = max(content // 2, 1)
  k = 1 + tf.maximum(tf.constant(0, tf.int64), (total - content + stride - 1) // stride)
  window_starts = tf.ragged.range(k) * stride
  window_text = window_starts.value_rowids()
  offsets = window_starts.flat_values
  lengths = tf.maximum(tf.minimum(tf.gather(total, window_text) - offsets, content), 0)
  ids = tf.gather(text_pieces.flat_values, tf.ragged.range(
      tf.gather(text_pieces.row_starts(), window_text) + offsets,
      tf.gather(text_pieces.row_starts(), window_text) + offsets + lengths))
  n = tf.shape(lengths)[0]
  packed = tf.concat([tf.fill([n, 1], start), ids, tf.fill([n, 1], end)], axis=1)
  token_ids = packed.to_tensor(default_value=pad, shape=[None, length])
  j = tf.clip_by_value((first - stride // 2) // stride, 0, tf.gather(k, rows) - 1)
  position = tf.clip_by_value(first - j * stride + 1, 1, length - 2)
  inputs = {"token_ids": token_ids, "padding_mask": tf.sequence_mask(lengths + 2, length),
            "segment_ids": tf.zeros_like(token_ids)}
  return {"inputs": inputs, "texts": texts, "words": words, "starts": starts, "ends": ends,
          "window": tf.gather(window_starts.row_starts(), rows) + j, "position": position,
          "pieces": counts}


def model_inputs(model, packed: dict) -> dict:
  """The packed inputs `model` takes, cast to its input dtypes."""
  return {t.name: tf.cast(packed["inputs"][t.name], t.dtype) for t in model.inputs}


def word_index(packed: dict):
  """[sum W, 2] (window, position) of each word's tag in the model's output."""
  return tf.stack([packed["window"], packed["position"]], axis=-1)


def tag_tables(n_tags: int) -> tuple[np.ndarray, np.ndarray]:
  """(type id per tag: 0 for O, else 1 + the type's index; whether the tag is a B-) of the
  IOB2 tags `kerasft.tasks.tagging.data.tag_names` lays out: O, B-type, I-type, B-type, ..."""
  kind = np.array([0] + [1 + (i - 1) // 2 for i in range(1, n_tags)], np.int64)
  return kind, np.array([i % 2 == 1 for i in range(n_tags)], bool)


def segments(tags, kind, begins):
  """Entities of ragged tag ids [N, (W)] (IOB2 read as conlleval reads it: B-, a change of
  type, or a word after O starts one): (row, first word, last word, type id >= 1), each
  [E]; words are indices into `tags.flat_values`."""
  flat = tags.flat_values
  rows = tags.value_rowids()
  typ = tf.gather(kind, flat)
  index = tf.range(tf.size(flat, tf.int64), dtype=tf.int64)
  row_start = tf.equal(index, tf.gather(tags.row_starts(), rows))
  previous = tf.concat([tf.zeros([1], tf.int64), typ[:-1]], axis=0)
  starts = (typ > 0) & (tf.gather(begins, flat) | row_start | tf.not_equal(previous, typ))
  inside = typ > 0
  segment = tf.boolean_mask(tf.cumsum(tf.cast(starts, tf.int64)) - 1, inside)
  word = tf.boolean_mask(index, inside)
  return (tf.math.segment_min(tf.boolean_mask(rows, inside), segment),
          tf.math.segment_min(word, segment), tf.math.segment_max(word, segment),
          tf.math.segment_max(tf.boolean_mask(typ, inside), segment))


def decode(packed: dict, word_probs, tag_names: list[str]) -> dict:
  """The export's outputs, padded per text: words, their character starts and ends (-1
  pads), IOB2 tags ("" pads) and scores; entities: text, type, start, end, score (the mean
  of its words' scores)."""
  kind, begins = tag_tables(len(tag_names))
  types = [t[2:] for t in tag_names[1::2]]
  words, starts, ends = packed["words"], packed["starts"], packed["ends"]
  tag_ids = tf.argmax(word_probs, axis=-1)
  scores = tf.reduce_max(word_probs, axis=-1)
  ragged = words.with_flat_values(tag_ids)
  row, first, last, typ = segments(ragged, tf.constant(kind), tf.constant(begins))
  e_start = tf.gather(starts.flat_values, first)
  e_end = tf.gather(ends.flat_values, last)
  n = words.nrows()
  running = tf.cumsum(scores)
  e_score = ((tf.gather(running, last) - tf.gather(running, first) + tf.gather(scores, first))
             / tf.cast(last - first + 1, tf.float32))
  e_text = tf.strings.substr(tf.gather(packed["texts"], row), e_start, e_end - e_start)
  by_text = lambda v: tf.RaggedTensor.from_value_rowids(v, row, nrows=n)  # noqa: E731
  names = tf.constant(tag_names)
  return {"words": words.to_tensor(""), "word_starts": starts.to_tensor(-1),
          "word_ends": ends.to_tensor(-1),
          "tags": words.with_flat_values(tf.gather(names, tag_ids)).to_tensor(""),
          "tag_scores": words.with_flat_values(scores).to_tensor(0.0),
          "entities": by_text(e_text).to_tensor(""),
          "entity_types": by_text(tf.gather(tf.constant([""] + types), typ)).to_tensor(""),
          "entity_starts": by_text(e_start).to_tensor(-1),
          "entity_ends": by_text(e_end).to_tensor(-1),
          "entity_scores": by_text(e_score).to_tensor(0.0)}


@keras.saving.register_keras_serializable(package="kerasft")
class EntityF1(keras.metrics.Metric):
  """Exact-match entity F1 of per-token one-hot targets [B, L, T] (all-zero rows: no tag
  there) and predicted probabilities of the IOB2 tags `kerasft.tasks.tagging.data.tag_names` lays
  out; over the rows as given (windows), which is the texts' figure when each text fits in
  one window."""

  def __init__(self, name: str = "entity_f1", **kwargs):
    super().__init__(name=name, **kwargs)
    self.counts = self.add_variable(shape=(3,), initializer="zeros", name="counts")

  def _keys(self, ids, mask, n_tags: int):
    kind, begins = tag_tables(n_tags)
    tags = tf.ragged.boolean_mask(ids, mask)
    row, first, last, typ = segments(tags, tf.constant(kind), tf.constant(begins))
    width = tf.cast(tf.shape(mask)[1], tf.int64)
    offset = tf.gather(tags.row_starts(), row)
    return ((row * width + first - offset) * width + last - offset) * 1000 + typ

  def update_state(self, y_true, y_pred, sample_weight=None):
    mask = tf.reduce_max(y_true, axis=-1) > 0
    n_tags = y_pred.shape[-1]
    true = self._keys(tf.argmax(y_true, -1), mask, n_tags)
    got = self._keys(tf.argmax(y_pred, -1), mask, n_tags)
    hits = tf.size(tf.sets.intersection(true[None], got[None]).values)
    self.counts.assign_add(tf.cast(tf.stack([hits, tf.size(true), tf.size(got)]),
                                   self.dtype))

  def result(self):
    return tf.math.divide_no_nan(2 * self.counts[0], self.counts[1] + self.counts[2])

  def reset_state(self):
    self.counts.assign(tf.zeros(3, self.dtype))


@keras.saving.register_keras_serializable(package="kerasft")
class TokenAccuracy(keras.metrics.Metric):
  """The share of tagged positions (non-zero target rows) whose top tag is the target's."""

  def __init__(self, name: str = "token_accuracy", **kwargs):
    super().__init__(name=name, **kwargs)
    self.counts = self.add_variable(shape=(2,), initializer="zeros", name="counts")

  def update_state(self, y_true, y_pred, sample_weight=None):
    mask = tf.reduce_max(y_true, axis=-1) > 0
    right = tf.equal(tf.argmax(y_true, -1), tf.argmax(y_pred, -1)) & mask
    self.counts.assign_add(tf.cast(tf.stack([tf.reduce_sum(tf.cast(right, tf.int32)),
                                             tf.reduce_sum(tf.cast(mask, tf.int32))]),
                                   self.dtype))

  def result(self):
    return tf.math.divide_no_nan(self.counts[0], self.counts[1])

  def reset_state(self):
    self.counts.assign(tf.zeros(2, self.dtype))


def tag(model, packed: dict, tag_names: list[str]) -> dict:
  """`decode`d outputs of the tagger `model` on `packed` texts (`windows`)."""
  probs = model(model_inputs(model, packed), training=False)
  return decode(packed, tf.gather_nd(tf.cast(probs, tf.float32), word_index(packed)),
                tag_names)


@keras.saving.register_keras_serializable(package="kerasft")
class TokenCrossentropy(keras.losses.Loss):
  """Cross-entropy of per-token one-hot targets [B, L, T], averaged over the tagged
  positions only (all-zero target rows: sub-words after a word's first, special tokens,
  padding). A mean over all positions would shrink every step by the share of untagged
  positions: a linear head on frozen features then stays below the all-O baseline."""

  def __init__(self, label_smoothing: float = 0.0, name: str = "token_crossentropy",
               **kwargs):
    kwargs.pop("reduction", None)
    super().__init__(name=name, reduction="sum", **kwargs)
    self.label_smoothing = label_smoothing

  def call(self, y_true, y_pred):
    y_true = tf.cast(y_true, y_pred.dtype)
    tagged = tf.reduce_max(y_true, axis=-1, keepdims=True)
    if self.label_smoothing:
      k = tf.cast(tf.shape(y_true)[-1], y_pred.dtype)
      y_true = (y_true * (1.0 - self.label_smoothing) + self.label_smoothing / k) * tagged
    log = tf.math.log(tf.clip_by_value(y_pred, keras.config.epsilon(), 1.0))
    return -tf.reduce_sum(y_true * log) / tf.maximum(tf.reduce_sum(tagged), 1.0)

  def get_config(self):
    return {**super().get_config(), "label_smoothing": self.label_smoothing}


def lengths(x):
  return tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1)


def by_length(x, y):
  """A batch's rows ordered by their length."""
  order = tf.argsort(lengths(x))
  return {k: tf.gather(v, order) for k, v in x.items()}, tf.gather(y, order)


def cut_batch(x, y):
  """A batch cut to its longest row, rounded up to a multiple of 8."""
  n = tf.minimum((tf.reduce_max(lengths(x)) + 7) // 8 * 8, tf.shape(y)[1])
  return {k: v[:, :n] for k, v in x.items()}, y[:, :n]


def packer(encoder, length: int, words: str = "punctuation"):
  """A tf.function: texts [N] -> `windows` for `encoder` (a
  `kerasft.models.text_encoders.TextBackbone`) and `length` tokens per window."""
  special = special_tokens(encoder.preprocessor)
  tokenizer = encoder.preprocessor.tokenizer
  return tf.function(lambda texts: windows(texts, tokenizer, special, length, words),
                     input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)


def piece_counts(encoder, texts: list[str], words: str = "punctuation") -> np.ndarray:
  """Sub-words per text, as the tagger tokenizes (word by word)."""
  pack, counts = packer(encoder, encoder.max_length, words), []
  for start in range(0, len(texts), 512):
    chunk = texts[start:start + 512]
    packed = pack(tf.constant(chunk, tf.string))
    counts.append(tf.math.unsorted_segment_sum(
        packed["pieces"], packed["words"].value_rowids(), len(chunk)).numpy())
  return np.concatenate(counts) if counts else np.zeros(1, int)


def build_tagger(encoder, n_types: int, length: int, output, head: tuple = (),
                 dropout: float = 0.2):
  """Packed token inputs [N, length] -> tag probabilities [N, length, 1 + 2 n_types]: the
  frozen encoder in inference mode, then `kerasft.models.heads.add_head` on every token."""
  from kerasft.core import _compat
  from kerasft.models import heads
  del length  # any length: batches are cut to their longest text, windows are `length`
  inputs = {t.name: keras.Input((None,), dtype=t.dtype, name=t.name)
            for t in encoder.model.inputs}
  encoder.model.trainable = False
  _compat.pin_inference_mode(encoder.model)
  x = encoder.model(inputs, training=False)
  outputs = heads.add_head(x, n_types, output, head, dropout)
  return keras.Model(inputs, outputs, name=f"{encoder.name.replace('-', '_')}_tagger")
