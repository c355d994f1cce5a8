"""Token tagging data: CoNLL and JSON Lines readers, tag schemes, entity spans and metrics.

Every tagging example is held as its text and its entities as character spans,
`(start, end, type)` with `text[start:end]` the entity's words: a CoNLL file's tokens are
joined by single spaces and its tags (IOB1, IOB2 or BIOES, mixed files too) decoded into
spans; a JSON Lines file gives `tokens` and `tags` lists, or `text` and character-offset
`entities` (`[[start, end, label], ...]`, the format annotation tools export). The model
tags *words* — the text split at white space and before and after every punctuation mark
(`kerasft.tasks.tagging.graph.split_words`, the same op in training and in the export) — with
IOB2 tags, so the entities it predicts are character spans of the same text, and entity
precision, recall and F1 are exact matches of spans and types (the CoNLL measure).
No TensorFlow here.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from kerasft.core.errors import UsageError
from kerasft.data import examples, records
from kerasft.data.labels import Classes
from kerasft.data.source import Source

OUTSIDE = "O"
_TAG = re.compile(r"^([BIES])-(.+)$")


def tag_names(types: list[str]) -> list[str]:
  """The model's IOB2 tags for entity `types`: O, B-type, I-type, ... (in that order)."""
  return [OUTSIDE] + [f"{p}-{t}" for t in types for p in "BI"]


def spans(tags: list[str], context: str = "") -> list[tuple[int, int, str]]:
  """Entities of a tag sequence as (first token, last token, type), whatever the scheme:
  B- and S- start an entity, I- and E- continue one of the same type (or start one, as
  conlleval and seqeval read a stray I-), E- and S- end one, O is outside. `context` names
  the sequence in the error for a malformed tag."""
  found, current = [], None
  for i, tag in enumerate(tags):
    if tag == OUTSIDE:
      current = None
      continue
    match = _TAG.match(tag)
    if not match:
      raise UsageError(f"{context}: tag {tag!r} is neither O nor B-/I-/E-/S- and a type "
                       "(IOB1, IOB2 or BIOES)")
    prefix, kind = match.groups()
    if prefix in "BS" or current is None or found[current][2] != kind:
      found.append([i, i, kind])
      current = len(found) - 1
    else:
      found[current][1] = i
    if prefix in "ES":
      current = None
  return [tuple(f) for f in found]


def from_tokens(tokens: list[str], tags: list[str], context: str) -> tuple[str, list]:
  """(text, character-span entities) of a tagged token sequence; tokens joined by spaces."""
  starts, offset = [], 0
  for token in tokens:
    starts.append(offset)
    offset += len(token) + 1
  text = " ".join(tokens)
  return text, [(starts[a], starts[b] + len(tokens[b]), kind)
                for a, b, kind in spans(tags, context)]


def read_conll(source: Source) -> tuple[list[str], list[list]]:
  """(texts, entities) of a CoNLL file: a token per line, its tag in the last column, a
  blank line between sentences, -DOCSTART- lines skipped. UsageError naming the source."""
  sentences, tokens, tags, path, number = [], [], [], source.path, 0
  for number, line in enumerate(_lines(source), start=1):
    columns = line.split()
    if not columns or columns[0] == "-DOCSTART-":
      if tokens:
        sentences.append((tokens, tags, number))
      tokens, tags = [], []
      continue
    if len(columns) < 2:
      raise source.error(f"{path} line {number}: expected a token and its tag separated by "
                         f"white space, got {line.strip()!r}")
    tokens.append(columns[0])
    tags.append(columns[-1])
  if tokens:
    sentences.append((tokens, tags, number + 1))
  if not sentences:
    raise source.error(f"{path} holds no tagged sentences (CoNLL: one 'token tag' per line, "
                       "a blank line between sentences)")
  pairs = [from_tokens(t, g, f"--{source.flag}: {path} line {n - len(t)}")
           for t, g, n in sentences]
  return [p[0] for p in pairs], [p[1] for p in pairs]


def read_jsonl(source: Source) -> tuple[list[str], list[list]]:
  """(texts, entities) of a JSON Lines file: per line `tokens` and `tags`, or `text` and
  `entities` (or doccano's `label`) as [[start, end, type], ...]."""
  texts, entities = [], []
  for number, line in enumerate(_lines(source), start=1):
    if not line.strip():
      continue
    where = f"--{source.flag}: {source.path} line {number}"
    try:
      row = json.loads(line)
    except ValueError as e:
      raise UsageError(f"{where}: not JSON ({e})") from None
    if isinstance(row, dict) and "tokens" in row and "tags" in row:
      if len(row["tokens"]) != len(row["tags"]):
        raise UsageError(f"{where}: {len(row['tokens'])} tokens but {len(row['tags'])} tags")
      text, found = from_tokens([str(t) for t in row["tokens"]], [str(t) for t in row["tags"]],
                                where)
    elif isinstance(row, dict) and isinstance(row.get("text"), str):
      text, found = row["text"], _offsets(row.get("entities", row.get("label", [])), row["text"],
                                          where)
    else:
      raise UsageError(f"{where}: expected an object with 'tokens' and 'tags', or 'text' and "
                       "'entities'")
    texts.append(text)
    entities.append(found)
  if not texts:
    raise source.error(f"{source.path} holds no examples")
  return texts, entities


def _offsets(items, text: str, context: str) -> list:
  found = []
  for item in items:
    if isinstance(item, dict):
      item = (item.get("start"), item.get("end"), item.get("label", item.get("type")))
    ok = (isinstance(item, (list, tuple)) and len(item) == 3 and all(
        isinstance(v, int) for v in item[:2]) and isinstance(item[2], str))
    if not ok or not 0 <= item[0] < item[1] <= len(text):
      raise UsageError(f"{context}: entity {item!r} is not [start, end, type] with 0 <= start "
                       f"< end <= {len(text)} (the text's length)")
    found.append((item[0], item[1], item[2]))
  return sorted(found)


def _lines(source: Source) -> list[str]:
  """The lines of a source's file; a UsageError naming it when it cannot be read."""
  if not os.path.isfile(source.path):
    raise source.error(f"{source.path} does not exist")
  try:
    with open(source.path, encoding="utf-8") as f:
      return f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise source.error(f"cannot read {source.path} ({e})") from None


def entity_types(entities: list[list]) -> list[str]:
  """The sorted entity types found in `entities` (per text, (start, end, type) lists)."""
  return sorted({e[2] for items in entities for e in items})


def word_tags(words: list[tuple[int, int]], entities: list, types: list[str]) -> np.ndarray:
  """IOB2 tag ids (`tag_names(types)`) of a text's words (character spans): a word
  overlapping an entity is B- if it is the entity's first such word, else I-; types not
  in `types` are O."""
  index = {t: i for i, t in enumerate(types)}
  tags = np.zeros(len(words), np.int32)
  for start, end, kind in entities:
    if kind not in index:
      continue
    inside = [i for i, (a, b) in enumerate(words) if a < end and b > start]
    for k, i in enumerate(inside):
      tags[i] = 1 + 2 * index[kind] + (0 if k == 0 else 1)
  return tags


def tag_entities(words: list[tuple[int, int]], tags: list[str], scores=None) -> list:
  """Entities (start, end, type, score) of a text from its words' spans and IOB2 tags;
  score: the mean of the entity's word scores (1.0 without `scores`)."""
  found = []
  for a, b, kind in spans(tags, "predicted tags"):
    score = float(np.mean(scores[a:b + 1])) if scores is not None else 1.0
    found.append((int(words[a][0]), int(words[b][1]), kind, score))
  return found


def entity_metrics(gold: list[list], predicted: list[list], types: list[str]) -> dict:
  """Exact-match entity precision, recall and F1 per type and overall (micro, the CoNLL
  figure; also the macro F1 over types) of per-text entity lists ((start, end, type, ...))."""
  counts = {t: [0, 0, 0] for t in sorted(set(types) | {e[2] for g in gold for e in g}
                                          | {e[2] for p in predicted for e in p})}
  for true, got in zip(gold, predicted):
    true = {tuple(e[:3]) for e in true}
    got = {tuple(e[:3]) for e in got}
    for e in true:
      counts[e[2]][1] += 1
    for e in got:
      counts[e[2]][0] += 1
      counts[e[2]][2] += e in true

  def prf(n_pred, n_true, hit):
    p = hit / n_pred if n_pred else 0.0
    r = hit / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "support": n_true, "predicted": n_pred}
  per_type = {t: prf(*c) for t, c in counts.items()}
  overall = prf(*np.sum(list(counts.values()) or [[0, 0, 0]], axis=0).tolist())
  present = [v["f1"] for t, v in per_type.items() if v["support"]]
  return {"task": "tagging", "entity_f1": overall["f1"], "entity_precision":
          overall["precision"], "entity_recall": overall["recall"],
          "macro_entity_f1": float(np.mean(present)) if present else 0.0,
          "entities": overall["support"], "per_type": per_type}


def type_confusion(gold: list[list], predicted: list[list], types: list[str]) -> np.ndarray:
  """[K+1, K+1] counts of gold entity type (rows; last: none) against the predicted type
  of the entity with the same span (columns; last: none, the entity was missed or is
  spurious)."""
  index = {t: i for i, t in enumerate(types)}
  k = len(types)
  matrix = np.zeros((k + 1, k + 1), np.int64)
  for true, got in zip(gold, predicted):
    true = {tuple(e[:2]): index.get(e[2], k) for e in true}
    got = {tuple(e[:2]): index.get(e[2], k) for e in got}
    for span in set(true) | set(got):
      matrix[true.get(span, k), got.get(span, k)] += 1
  return matrix


def cut(text: str, entities: list, words: list[tuple[int, int]], pieces: list[int],
        limit: int) -> list[tuple[str, list]]:
  """`text` and its `entities` as parts of at most `limit` sub-words (`pieces` per word):
  cuts fall between words, before an entity rather than inside it where the part allows;
  an entity that still spans a cut is clipped to each part. One part when it fits."""
  if sum(pieces) <= limit or not words:
    return [(text, list(entities))]
  inside = [any(s < b and e > a for s, e, _ in entities) and not any(
      s >= a and s < b for s, _, _ in entities) for a, b in words]  # continues an entity
  parts, first, used = [], 0, 0
  for i, n in enumerate(pieces):
    if used + n > limit and i > first:
      at = i
      while at > first + 1 and inside[at]:
        at -= 1
      at = i if at == first + 1 and inside[at] else at
      parts.append((first, at))
      first, used = at, sum(pieces[at:i])
    used += n
  parts.append((first, len(words)))
  out = []
  for a, b in parts:
    start, end = words[a][0], words[b - 1][1]
    out.append((text[start:end], [(max(s, start) - start, min(e, end) - start, kind)
                                  for s, e, kind in entities if s < end and e > start]))
  return out


def read_tfds_tokens(name: str, data_dir: str, split: str, tokens_key: str = "",
                     tags_key: str = "") -> tuple[list[str], list[list]]:
  """(texts, character-span entities) of one split of a prepared TFDS data set of token
  and tag sequences (`kerasft.tasks.tagging.data`): a `Sequence` of `Text` (--text_key [the first])
  and a `Sequence` of `ClassLabel` tag names (--label_key [ner, else tags, else the
  first]), as `conll2003` or `wikiann` hold them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = records.tfds_builder(name, data_dir)
  features = builder.info.features
  of = lambda kind: [k for k, f in features.items()  # noqa: E731
                     if isinstance(getattr(f, "feature", None), kind)]
  tokens_key = tokens_key or next(iter(of(tfds.features.Text)), "")
  sequences = of(tfds.features.ClassLabel)
  tags_key = tags_key or next((k for k in ("ner", "tags", "ner_tags") if k in sequences),
                              next(iter(sequences), ""))
  for flag, key, kind in (("text_key", tokens_key, "Sequence(Text)"),
                          ("label_key", tags_key, "Sequence(ClassLabel)")):
    if key not in features:
      raise UsageError(f"--{flag}: {name} has no {kind} feature {key!r}; its features are "
                       f"{', '.join(features)}")
  names = features[tags_key].feature.names
  ds = records.tfds_split(builder, name, data_dir, split, None)
  texts, entities = [], []
  for example in tfds.as_numpy(ds):
    tokens = [t.decode("utf-8", errors="replace") for t in example[tokens_key]]
    if tokens:
      text, found = from_tokens(tokens, [names[i] for i in example[tags_key]],
                                        f"--tfds: {name}[{split}] example {len(texts) + 1}")
      texts.append(text)
      entities.append(found)
  if not texts:
    raise UsageError(f"--tfds: split {split!r} of {name} is empty")
  return texts, entities


class Entities(Classes):
  """A text's labels are its entities, (start, end, type) character spans; the "class
  names" are the entity types."""
  task, noun, min_classes = "tagging", "entity types", 1

  def strata(self, labels, class_names=None):
    return None

  def class_counts(self, labels, k):
    """Entities per type, types in `entity_types` order."""
    types = entity_types(labels)
    counts = {t: 0 for t in types}
    for items in labels:
      for e in items:
        counts[e[2]] += 1
    return [counts[t] for t in types] if len(types) == k else None

  def targets(self, labels, k):
    raise ValueError("tagging targets are per token: TaggingTask.encode")

  def evaluation_labels(self, files):
    return examples.objects([list(e) for e in files.labels])
