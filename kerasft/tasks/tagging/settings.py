"""--task=tagging's settings: the words it tags, and its sources of tagged texts."""

from __future__ import annotations

import dataclasses

from kerasft.core.errors import UsageError
from kerasft.core.settings import check_choices, setting


@dataclasses.dataclass(frozen=True)
class TaggingSettings:
  """How a tagger splits texts into the words it tags."""
  FOR = "only for --task=tagging"  # what a message says the group is for

  words: str = setting(
      "punctuation", "--task=tagging: the words tagged: punctuation (the text split at white "
      "space and around every punctuation mark: raw text) or whitespace (at white space "
      "only: pre-tokenized text such as CoNLL tokens, where 'U.S.' and 'H.' are one word), "
      "in training and in the export.", choices=("punctuation", "whitespace"))

  def __post_init__(self):
    check_choices(self)


@dataclasses.dataclass(frozen=True)
class TaggingData:
  """Tagged texts: CoNLL or JSON Lines files (a data source of their own)."""
  FOR = "tagged texts are for --task=tagging"

  conll: str = setting("", "--task=tagging: a CoNLL file (a token per line, its tag in the "
                       "last column, IOB1/IOB2/BIOES; a blank line between sentences).")
  val_conll: str = setting("", "--task=tagging: validation sentences, like --conll.")
  jsonl: str = setting("", "--task=tagging: a JSON Lines file, per line 'tokens' and 'tags' "
                       "lists, or 'text' and 'entities' [[start, end, type], ...].")
  val_jsonl: str = setting("", "--task=tagging: validation examples, like --jsonl.")

  SOURCES = ("conll", "jsonl")  # data sources (one per run); the others are their parts
  PATHS = ("conll", "val_conll", "jsonl", "val_jsonl")  # made absolute in config.json

  def __post_init__(self):
    for val, train in (("val_conll", "conll"), ("val_jsonl", "jsonl")):
      if getattr(self, val) and not getattr(self, train):
        raise UsageError(f"--{val}: only goes with --{train}")
