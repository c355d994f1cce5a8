"""Text tasks: a KerasHub encoder (BERT, DistilBERT, RoBERTa, DeBERTa-v3, ALBERT) on texts."""

from __future__ import annotations

import functools
import os

import numpy as np
from absl import logging

from kerasft.config import backbones
from kerasft.core.errors import UsageError
from kerasft.data import examples, tables
from kerasft.data.source import Source
from kerasft.models import explain, signatures, text_encoders as text
from kerasft.reporting import html
from kerasft.tasks.base import FEW_SHOT_UP_TO, LARGE_FROM, Task

TEXT_PREFIX = "keras_hub:"  # --model=keras_hub:PRESET_OR_FOLDER is a text encoder


class TextTask(Task):
  """Texts in: CSV/TSV/JSONL, text folders or TFDS; tokenized by the preset's preprocessor
  in tf.data and inside the export, whose serving_default takes raw strings."""
  CLIENT_SIGNATURE, CLIENT_INPUT, ROW_KEY = "serving_default", "text", "text"

  @classmethod
  def check_inputs(cls, config) -> None:
    d = config.data
    if d.data_dir or d.tfrecord:
      raise UsageError(f"--{'data_dir' if d.data_dir else 'tfrecord'}: a text model "
                       "(--model=keras_hub:...) reads --csv, --text_dir or --tfds")
    if d.unlabeled_dir or d.unlabeled_tfrecord:
      raise UsageError(f"--{d.unlabeled_source}: unlabelled images; a text model reads "
                       "unlabelled texts from --unlabeled_text_dir or --unlabeled_csv")
    used = [f for f in ("augment", "mixup", "cutmix") if getattr(d, f)]
    if used:
      raise UsageError(f"--{used[0]}: image augmentation; not for text models")
    m = config.model
    for flag, used in (("image_size", m.image_size is not None),
                       ("resize", d.resize != "squash"), ("bn_mode", m.bn_mode != "frozen"),
                       ("cache_dir", d.cache_dir)):
      if used:
        raise UsageError(f"--{flag}: an image setting; not for text models "
                         "(--model=keras_hub:...)")

  def searches_images(self) -> bool:
    """Texts: no image size or augmentation to search."""
    return False

  @property
  def preset(self) -> str:
    return backbones.source(self.config.model.model)[1]

  @functools.cached_property
  def encoder(self) -> text.TextBackbone:
    """The encoder and preprocessor, packing to the config's max_length (loaded once)."""
    encoder = self.backbone or text.load(self.preset)
    if self.config.model.max_length:
      text.set_length(encoder, self.config.model.max_length)
    return encoder

  def index(self, seed: int = 0):
    return tables.index_texts(self.config.data, self.output.labels, seed)

  def unlabeled(self, class_names: list[str]):
    """`Examples` of the texts of --unlabeled_text_dir (.txt files, searched recursively) or
    --unlabeled_csv (--text_column), labelled 0 (a placeholder); empty ones skipped."""
    d = self.config.data
    flag = d.unlabeled_source
    source = Source(flag, getattr(d, flag))
    if flag == "unlabeled_text_dir":
      if not os.path.isdir(d.unlabeled_text_dir):
        raise UsageError(f"--unlabeled_text_dir: {d.unlabeled_text_dir} is not a folder")
      paths = sorted(os.path.join(root, f) for root, _, files in os.walk(d.unlabeled_text_dir)
                     for f in files if f.endswith(".txt"))
      texts = [open(p, encoding="utf-8", errors="replace").read().strip() for p in paths]
    else:
      texts = [str(r[d.text_column] or "") for r in tables.read_table(
          source, [d.text_column])]
    if not texts:
      raise source.error("no unlabelled texts")
    return tables.readable_texts(examples.Examples(texts, [0] * len(texts), class_names,
                                                   self.output.labels), source, d.strict_data)

  @staticmethod
  def evaluation_examples(data_config, output, class_names, split="test"):
    return tables.evaluation_texts(data_config, output.labels, class_names, split)

  def build_model(self, train_files, stats=None):
    """(this task with the text length chosen, the classifier sized for `train_files`)."""
    m = self.config.model
    encoder = self.backbone or text.load(self.preset)
    length = m.max_length or text.choose_max_length(
        text.token_lengths(encoder, train_files.inputs), encoder.max_length)
    text.set_length(encoder, length)
    logging.info("texts are packed to %d tokens%s", length,
                 "" if m.max_length else " (the 99th percentile of the training texts)")
    model = text.build_classifier(encoder, len(train_files.class_names), length, self.output,
                                  m.pooling, m.head, m.dropout,
                                  stats or self.output.head_stats(train_files))
    return self.replace(backbone=encoder, max_length=length), model

  def auto_settings(self, per_class, n, train):
    if per_class <= FEW_SHOT_UP_TO and self.output.labels.task == "multiclass":
      return {"methods.recipe": "few_shot"}, "few-shot pairs, then the convex head"
    if n >= LARGE_FROM:
      return ({"model.unfreeze_blocks": 2, "training.fine_tune_epochs": 2,
               "training.fine_tune_learning_rate": 5e-5, "methods.average": "greedy_soup"},
              "fine-tune the top 2 blocks 2 epochs, greedy soup")
    return {}, "frozen encoder, convex head"

  def pipelines(self, train, val):
    return text.pipelines(train, val, self.encoder, self.config.data.batch_size,
                          self.config.training.seed)

  def pipeline(self, files, batch_size: int):
    return text.make_pipeline(files, self.encoder, batch_size)

  @staticmethod
  def client_items(files):
    return files.inputs

  def card(self, metrics):
    card = super().card(metrics)
    card.pop("weights")
    return card

  def input_card(self) -> dict:
    return {"input": {"shape": [None], "dtype": "string", "range": "raw text"},
            "preprocessing": f"the preset's tokenizer inside the export (tensorflow-text "
                             f"ops), packed to {self.config.model.max_length} tokens",
            "pooling": self.config.model.pooling}

  def load_model(self, path: str):
    text.import_keras_hub()  # registers the encoder classes the checkpoint names
    return super().load_model(path)

  def export_signatures(self, model, class_names, labels_path):
    return signatures.text_signatures(model, self.encoder.preprocessor, class_names,
                                      labels_path, self.output.serving_outputs)

  def check_formats(self, formats):
    if formats != ("saved_model",):
      raise UsageError(f"--format={'+'.join(formats)}: text models export as saved_model "
                       "only: the tokenizer runs in the graph as tensorflow-text ops, which "
                       "LiteRT does not have and tf2onnx maps only for SentencePiece, to "
                       "onnxruntime-extensions custom ops (not WordPiece or BPE)")

  def block_model(self):
    return text.load(self.preset).model

  SLICE_KEY = "text_column"

  def cards(self, model, files):
    return self.example_cards(files, model, self.encoder)

  @classmethod
  def export_cards(cls, files, card):
    return cls.example_cards(files)

  @staticmethod
  def example_cards(files, model=None, encoder=None):
    """A function (indices, class ids or None, captions) -> HTML cards of `files`' texts,
    each word shaded by how much removing it lowers the class's probability (green: the
    word supports the class, red: it speaks against it) when `model`, its `encoder`
    (`kerasft.models.text_encoders.TextBackbone`) and a class are given."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # one graph for every batch size (each size would otherwise trace anew)
    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def shaded(pairs):
      top = max([abs(v) for _, v in pairs] + [1e-12])
      return " ".join(
          f'<span style="background:rgba({"0,150,0" if v >= 0 else "220,0,0"},'
          f'{abs(v) / top * 0.7:.2f})">{html.esc(w)}</span>' for w, v in pairs)

    def cards(indices, class_ids, captions):
      texts = [files.inputs[i] for i in indices]
      if not indices or model is None or encoder is None or class_ids[0] is None:
        return [f'<div class="card text">{html.esc(t)}<br><i>{html.esc(c)}</i></div>'
                for t, c in zip(texts, captions)]
      predict = lambda batch: run(text.tokenize(encoder, batch))  # noqa: E731
      return [f'<div class="card text">{shaded(pairs)}<br><i>{html.esc(caption)}</i></div>'
              for pairs, caption in zip(explain.word_occlusion(predict, texts, class_ids),
                                        captions)]
    return cards

  @staticmethod
  def import_serving_ops() -> None:
    """tensorflow-text registers the tokenizer ops a text export's graph uses."""
    import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  @staticmethod
  def request_items(items: list) -> list:
    return list(items)

  @staticmethod
  def client_inputs(texts: list[str]) -> tuple[list, list]:
    return list(texts), [None] * len(texts)
