"""A tagger's export signature: raw strings in; words, tags and entities out."""

from __future__ import annotations

import tensorflow as tf

from kerasft.core import _compat
from kerasft.models import signatures as signatures_lib
from kerasft.tasks.tagging import graph


def signatures(model, preprocessor, tag_names: list[str], labels_path: str, length: int,
               words: str = "punctuation") -> signatures_lib.Signatures:
  """`serving_default` of a tagger (`graph.build_tagger`) taking raw strings `text`
  [None]: words, their character offsets, IOB2 tags and scores, and the entities (text,
  type, start, end, score), each padded to the longest in the batch ("" or -1 pads);
  texts longer than `length` tokens are read in overlapping windows
  (`graph.windows`)."""
  module = signatures_lib.variables_module(model, labels_path)
  module.tokenizer_resources = _compat.capturable_resources(preprocessor)
  special = graph.special_tokens(preprocessor)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")],
               autograph=False)  # plain ops: nothing for AutoGraph to convert
  def serving_default(text):
    return graph.tag(model, graph.windows(text, preprocessor.tokenizer, special, length,
                                          words), tag_names)

  module.serving_default = serving_default
  return signatures_lib.Signatures(module, {"serving_default": {"text": "string [N], raw text"}},
                    {"serving_default": ("text", ["Ada Lovelace lived in London."])})
