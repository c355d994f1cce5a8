"""Text classification with KerasHub encoders (BERT, DistilBERT, RoBERTa, DeBERTa-v3, ALBERT).

`--model=keras_hub:PRESET_OR_FOLDER` loads an encoder and its tokenizer from one KerasHub
preset: a preset name (downloaded from its hub when online), or a local folder in
KerasHub's preset format or Hugging Face format (`config.json`, `model.safetensors` and
the vocabulary), which KerasHub converts on load.

The classifier takes the preprocessor's packed inputs (`token_ids`, `padding_mask` and,
for BERT, `segment_ids`) of a fixed length; the pipeline tokenizes in tf.data and the
export tokenizes inside its graph (tensorflow-text ops), so serving takes raw strings.
The encoder runs in inference mode, its transformer layers are the blocks that
`--unfreeze_blocks` and `--layer_lr_decay` count, and a pooling layer ("pooling": masked
mean of the token vectors, or the first ([CLS]) token's) feeds the head of
`kerasft.models.heads`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import keras
import numpy as np
from keras import ops

from kerasft.core import _compat
from kerasft.models import heads
from kerasft.core.errors import UsageError
from kerasft.data import pipeline


POOLINGS = ("mean", "cls")


@dataclasses.dataclass
class TextBackbone:
  """A KerasHub encoder and the preprocessor (tokenizer + packer) of the same preset."""
  name: str
  model: keras.Model  # token inputs -> token vectors [N, L, H]
  preprocessor: keras.layers.Layer  # strings [N] -> packed token inputs of sequence_length
  max_length: int  # the encoder's limit


def import_keras_hub():
  """Imports keras_hub (and tensorflow_text, for the tokenizers' ops) or raises a UsageError."""
  try:
    import keras_hub  # pylint: disable=g-import-not-at-top
    import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise UsageError(f"--model: keras_hub: models need keras-hub, tensorflow-text and "
                     f"safetensors ({e}); pip install 'kerasft[text]'") from None
  return keras_hub


def _is_folder(preset: str) -> bool:
  return os.sep in preset or preset.startswith(".") or os.path.exists(preset)


def load(preset: str) -> TextBackbone:
  """Loads encoder and preprocessor of `preset` (a KerasHub preset name or a folder).

  The tokenizer follows the preset's casing and accent settings; a Hugging Face
  `tokenizer_config.json` with `strip_accents: null` on an uncased vocabulary strips
  accents (the Hugging Face meaning), so "Café" becomes "cafe", not [UNK].
  """
  keras_hub = import_keras_hub()
  if _is_folder(preset):
    if not os.path.isdir(preset):
      raise UsageError(f"--model: keras_hub: folder {preset} does not exist; pass a KerasHub "
                       "preset name or a folder with config.json and the weights")
    if not any(os.path.isfile(os.path.join(preset, f))
               for f in ("config.json", "metadata.json")):
      raise UsageError(f"--model: keras_hub: {preset} holds no config.json (Hugging Face) or "
                       "metadata.json (KerasHub preset)")
  try:
    model = keras_hub.models.Backbone.from_preset(preset)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(preset)
  except (OSError, ValueError, KeyError, ImportError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = "" if _is_folder(preset) else (
        "; offline, download the preset where there is internet and pass its folder")
    raise UsageError(f"--model: cannot load KerasHub preset {preset!r} ({first}){where}"
                     ) from None
  limit = int(getattr(model, "max_sequence_length", 0) or 512)
  # The token vectors are all a classifier uses: a functional model on the same layers that
  # ends there leaves out what only feeds other outputs (BERT's [CLS] pooler), so blocks and
  # unfreezing see only the layers that train.
  sequence = model.output["sequence_output"] if isinstance(model.output, dict) else model.output
  model = keras.Model(model.input, sequence, name=model.name)
  tokenizer = preprocessor.tokenizer
  if getattr(tokenizer, "lowercase", False) and not getattr(tokenizer, "strip_accents", True):
    if _hf_strip_accents(preset) is not False:
      tokenizer.strip_accents = True
  name = os.path.basename(os.path.normpath(preset)) if _is_folder(preset) else preset
  return TextBackbone(name=name, model=model, preprocessor=preprocessor, max_length=limit)


def _hf_strip_accents(preset: str):
  """The `strip_accents` of a Hugging Face folder's tokenizer_config.json (None: unset)."""
  path = os.path.join(preset, "tokenizer_config.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("strip_accents")


def token_lengths(backbone: TextBackbone, texts: list[str]) -> np.ndarray:
  """Tokens per text, with the preprocessor's special tokens ([CLS], [SEP]: 2)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  lengths = []
  for start in range(0, len(texts), 1024):
    tokens = backbone.preprocessor.tokenizer(tf.constant(texts[start:start + 1024]))
    lengths.append(tokens.row_lengths().numpy() if hasattr(tokens, "row_lengths")
                   else np.asarray([len(t) for t in tokens]))
  return np.concatenate(lengths) + 2 if lengths else np.zeros(0, int)


def choose_max_length(lengths: np.ndarray, limit: int) -> int:
  """The 99th percentile of `lengths`, rounded up to a multiple of 8, at most `limit`."""
  p99 = float(np.percentile(lengths, 99)) if len(lengths) else 8
  return int(min(limit, max(8, math.ceil(p99 / 8) * 8)))


def set_length(backbone: TextBackbone, max_length: int) -> None:
  """Makes the preprocessor pack (truncate or pad) every text to `max_length` tokens."""
  if max_length > backbone.max_length:
    raise UsageError(f"--max_length: {backbone.name} takes at most {backbone.max_length} "
                     f"tokens, got {max_length}")
  backbone.preprocessor.sequence_length = max_length


def model_inputs(backbone: TextBackbone, packed: dict) -> dict:
  """The preprocessor's output restricted to (and cast for) the encoder's inputs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {t.name: tf.cast(packed[t.name], t.dtype) for t in backbone.model.inputs}


@keras.saving.register_keras_serializable(package="kerasft")
class Pooling(keras.layers.Layer):
  """Token vectors [N, L, H] -> [N, H]: the mean over unpadded tokens, or the first."""

  def __init__(self, mode: str = "mean", **kwargs):
    super().__init__(**kwargs)
    if mode not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    self.mode = mode

  def call(self, sequence, padding_mask):
    if self.mode == "cls":
      return sequence[:, 0, :]
    mask = ops.expand_dims(ops.cast(padding_mask, sequence.dtype), -1)
    return ops.sum(sequence * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

  def get_config(self):
    return {**super().get_config(), "mode": self.mode}


def build_classifier(backbone: TextBackbone, num_classes: int, max_length: int, output,
                     pooling: str = "mean", head: tuple[int, ...] = (), dropout: float = 0.2,
                     stats=None) -> keras.Model:
  """Returns a model from packed token inputs of `max_length` to `output`'s last layer.

  The encoder is frozen and called in inference mode; "pooling" pools its token vectors;
  the head is `kerasft.models.heads.add_head` (output: `kerasft.tasks.classify.output.Output`).
  """
  inputs = {t.name: keras.Input((max_length,), dtype=t.dtype, name=t.name)
            for t in backbone.model.inputs}
  backbone.model.trainable = False
  _compat.pin_inference_mode(backbone.model)
  encoded = backbone.model(inputs, training=False)
  x = Pooling(pooling, name="pooling")(encoded, inputs["padding_mask"])
  outputs = heads.add_head(x, num_classes, output, head, dropout, stats)
  return keras.Model(inputs, outputs, name=f"{backbone.name.replace('-', '_')}_classifier")


def tokenize(backbone: TextBackbone, texts: list[str]) -> dict:
  """The packed model inputs of `texts` ({input name: int array [N, max_length]}),
  tokenized eagerly in chunks of 1,024: no graph of the tokenizer is traced (tracing a
  byte-pair tokenizer takes seconds per trace)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  chunks = [model_inputs(backbone, backbone.preprocessor(tf.constant(texts[i:i + 1024])))
            for i in range(0, len(texts), 1024)]
  if not chunks:
    return {t.name: np.zeros((0, backbone.preprocessor.sequence_length), t.dtype)
            for t in backbone.model.inputs}
  return {name: np.concatenate([np.asarray(c[name]) for c in chunks]) for name in chunks[0]}


def make_pipeline(files, backbone: TextBackbone, batch_size: int, shuffle: bool = False,
                  seed: int = 0):
  """A tf.data pipeline of (packed token inputs, float32 targets [B, C]) from texts
  (`files.inputs` holds the texts), tokenized once (`tokenize`) and held in memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_tensor_slices((tokenize(backbone, files.inputs), files.targets()))
  if shuffle:
    ds = ds.shuffle(len(files.inputs), seed=seed, reshuffle_each_iteration=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


TOKENS_PER_EXAMPLE = 16  # bucketed batches hold batch_size x this many tokens


def bucketed(files, backbone: TextBackbone, batch_size: int):
  """([(packed inputs cut to their longest text, rounded up to 16 tokens, None)], the order
  of `files` they hold): the texts sorted by length, in batches of about batch_size x
  `TOKENS_PER_EXAMPLE` tokens. A pooled model's outputs do not change (padding is masked);
  the fortunes (24 tokens on average of a 64-token length) extract 2x faster than in
  full-length batches of 128 (5.4 s against 11.0 s on this CPU)."""
  packed = tokenize(backbone, files.inputs)
  lengths = packed["padding_mask"].sum(axis=1)
  order = np.argsort(lengths, kind="stable")
  full = packed["padding_mask"].shape[1]
  batches, i = [], 0
  while i < len(order):
    cut = int(min(full, -(-max(int(lengths[order[i]]), 1) // 16) * 16))
    rows = order[i:i + max(1, batch_size * TOKENS_PER_EXAMPLE // cut)]
    cut = int(min(full, -(-int(lengths[rows].max()) // 16) * 16))
    batches.append(({k: v[rows, :cut] for k, v in packed.items()}, None))
    i += len(rows)
  return batches, order


def pipelines(train, val, backbone: TextBackbone, batch_size: int, seed: int = 0):
  """Training (reshuffled each epoch) and validation pipelines of texts, as a
  `kerasft.data.pipeline.Dataset`."""
  return pipeline.Dataset(
      train=make_pipeline(train, backbone, batch_size, shuffle=True, seed=seed),
      val=make_pipeline(val, backbone, batch_size), class_names=train.class_names,
      train_files=train, val_files=val,
      make_inputs=lambda files, batch: make_pipeline(files, backbone, batch),
      bucketed=lambda files, batch: bucketed(files, backbone, batch))
