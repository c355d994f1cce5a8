"""--recipe=few_shot: contrastive tuning of the encoder on pairs of labelled examples
(SetFit, Tunstall et al. 2022), before the usual head phase.

Each labelled training example is paired `pairs_per_example` times, half with an example of
its own class (target similarity 1) and half with one of another class (0); the encoder
(with its pooling) is tuned so that the cosine similarity of the two embeddings matches
(`CosineSimilarityLoss` of sentence-transformers, in Keras). The pairs come from the
training split, or from every labelled example when the head is then cross-validated on all
of them (small data): its k-fold figures are then optimistic, as the encoder has seen the
held-out folds' labels. The tuned encoder's weights are saved in the run folder, so a
resumed run does not tune it again.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
from absl import logging

from kerasft.core import budget
from kerasft.core.files import atomic_path
from kerasft.models import backbones, features
from kerasft.models.heads import backbone_of

TUNED = "few_shot.weights.h5"


def sample_pairs(labels, per_example: int, seed: int = 0) -> tuple[np.ndarray, ...]:
  """(first, second, similarity) index arrays: for each example, `per_example` partners,
  alternately of the same class (1.0; itself when it is alone in its class) and of another
  class (0.0), drawn with `seed`."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
  first, second, same = [], [], []
  for i, label in enumerate(labels):
    own = by_class[label][by_class[label] != i]
    other = np.flatnonzero(labels != label)
    for j in range(per_example):
      positive = j % 2 == 0 or not len(other)
      pool = (own if len(own) else np.array([i])) if positive else other
      first.append(i)
      second.append(int(rng.choice(pool)))
      same.append(1.0 if positive else 0.0)
  return np.array(first), np.array(second), np.array(same, "float32")


class PairSimilarity(keras.Model):
  """Two inputs through one embedding model -> their cosine similarity [N]."""

  def __init__(self, embed: keras.Model, **kwargs):
    super().__init__(**kwargs)
    self.embed = embed

  def call(self, inputs):
    a, b = (keras.ops.normalize(self.embed(x), axis=-1) for x in inputs)
    return keras.ops.sum(a * b, axis=-1)


def labelled(dataset, config):
  """The examples the pairs come from: the training split, or every labelled example when
  the head is then chosen by k-fold cross-validation of all of them and refit on all
  (small data, no fine-tune phase: `TrainingConfig.uses_kfold`)."""
  train, val = dataset.train_files, dataset.val_files
  n = len(train.inputs) + len(val.inputs)
  if (not config.training.fine_tune_epochs and config.training.head_solver == "convex"
      and config.training.uses_kfold(n, len(train.class_names))):
    return train + val
  return train


def _inputs(dataset, files) -> object:
  """The model inputs of `files` as arrays (a dict of arrays for text models)."""
  batches = [x for x, *_ in dataset.make_inputs(files, 256)]
  return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *batches)


def tune(model: keras.Model, dataset, config, path: str, verbose="auto") -> dict:
  """Tunes `model`'s backbone contrastively on pairs of `dataset`'s training examples (or
  loads the result from `path` when an earlier process saved it); the backbone ends
  frozen. Returns {"pairs", "loss", "seconds"} ({} when loaded)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  k, seed = config.methods, config.training.seed
  if os.path.exists(path):
    model.load_weights(path)
    logging.info("few-shot: the contrastively tuned encoder from %s", path)
    return {}
  start = time.perf_counter()
  files = labelled(dataset, config)
  first, second, same = sample_pairs(files.labels, k.pairs_per_example, seed)
  inputs = _inputs(dataset, files)
  take = lambda idx: keras.tree.map_structure(lambda x: tf.gather(x, idx), inputs)  # noqa: E731
  pairs = tf.data.Dataset.from_tensor_slices((first, second, same)).shuffle(
      len(same), seed=seed).batch(config.data.batch_size).map(
          lambda a, b, y: ((take(a), take(b)), y)).prefetch(tf.data.AUTOTUNE)
  backbone = backbone_of(model)
  backbone.trainable = True
  pair_model = PairSimilarity(features.feature_model(model))
  pair_model.compile(optimizer=keras.optimizers.Adam(k.few_shot_learning_rate), loss="mse")
  logging.info("few-shot: tuning the encoder on %d pairs of %d examples (%d epoch(s))",
               len(same), len(files.labels), k.few_shot_epochs)
  history = pair_model.fit(pairs, epochs=k.few_shot_epochs, shuffle=False, verbose=verbose,
                           callbacks=[budget.Deadline()] if budget.past_deadline()
                           is not None else [])
  backbones.freeze(backbone)
  with atomic_path(path) as staging:
    model.save_weights(staging)
  result = {"pairs": len(same), "loss": float(history.history["loss"][-1]),
            "seconds": time.perf_counter() - start}
  logging.info("few-shot: pair loss %.4f after %.1f s", result["loss"], result["seconds"])
  return result
