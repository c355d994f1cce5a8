"""Cached backbone features: train a frozen backbone's head at the cost of one forward pass.

A frozen backbone called in inference mode is a fixed function of the image, so the head
phase can compute the backbone's outputs once for the training and validation images and
train the head on those for every epoch. The head model built here shares its layers (and
so its weights) with the full model: after training, the full model, its checkpoint and its
export are what uncached training would have given.

Features stay in memory when they fit in the memory budget, else they are written with
`tf.data.Dataset.save` under the cache folder and streamed back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from kerasft.data.examples import Examples
from kerasft.data.pipeline import Dataset
from kerasft.models import memory
from kerasft.models.heads import backbone_of

SHUFFLE_BYTES = 64 << 20  # features streamed from disk are shuffled this many bytes at once
def refusal(model: keras.Model, augment: tuple = (), mixing: bool = False) -> str | None:
  """Why features of `model`'s backbone cannot be cached now, or None when they can.

  augment: the --augment layers in use; mixing: whether MixUp/CutMix mix the images.
  """
  if augment:
    return "augmentation changes the backbone's input every epoch"
  if mixing:
    return "MixUp/CutMix mix the backbone's input images in every batch"
  trainable = [w for w in backbone_of(model).weights if w.trainable]
  if trainable:
    return f"{len(trainable)} backbone weights are trainable"
  return None


POOLING_LAYER = "pooling"  # a text model's features are its pooling layer's output
TAPS = "features_"  # a segmenter's features: its encoder's maps, through identity layers


def _taps(model: keras.Model) -> list:
  """The outputs of `model`'s `TAPS` layers (a segmenter's multi-scale maps), or []."""
  return [layer.output for layer in model.layers if layer.name.startswith(TAPS)]


def _split(model: keras.Model) -> tuple[list, list]:
  """`model`'s layers before and including the backbone (a text model: its pooling layer),
  and the head's layers after it."""
  layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
  names = [layer.name for layer in layers]
  at = (names.index(POOLING_LAYER) if POOLING_LAYER in names
        else layers.index(backbone_of(model))) + 1
  return layers[:at], layers[at:]


def _chain(layers: list, input_shape: tuple, name: str) -> keras.Model:
  inputs = keras.Input(input_shape)
  x = inputs
  for layer in layers:
    x = layer(x, training=False) if isinstance(layer, keras.Model) else layer(x)
  return keras.Model(inputs, x, name=name)


def head_model(model: keras.Model) -> keras.Model:
  """A model from backbone features to the output that shares `model`'s head layers."""
  if _taps(model):
    return keras.Model(_taps(model), model.outputs, name=f"{model.name}_head")
  return _chain(_split(model)[1], feature_model(model).output_shape[1:], f"{model.name}_head")


def feature_model(model: keras.Model) -> keras.Model:
  """The part of `model` from its inputs to backbone features (in inference mode); a
  segmenter's: its encoder's maps (a list)."""
  if _taps(model):
    return keras.Model(model.inputs, _taps(model), name=f"{model.name}_features")
  if len(model.inputs) > 1:  # several inputs (a text model): cut the graph where the head starts
    extractor = keras.Model(model.inputs, _split(model)[1][0].input,
                            name=f"{model.name}_features")
    extractor.input_spec = None  # takes batches cut to their longest text (`Dataset.bucketed`)
    return extractor
  return _chain(_split(model)[0], model.input_shape[1:], f"{model.name}_features")


@dataclasses.dataclass
class FeatureDatasets:
  """Batched (features, targets) pipelines; `arrays` holds the (training, validation)
  features themselves when they are kept in memory (None on disk)."""
  train: tf.data.Dataset
  val: tf.data.Dataset
  on_disk: bool
  arrays: tuple | None = None


def cache_bytes(model: keras.Model, n_examples: int, dtype: str = "float32") -> int:
  """The bytes `n_examples` examples' features of `model`'s backbone take cached."""
  return n_examples * _size(feature_model(model).output_shape) * np.dtype(dtype).itemsize


def _size(shape) -> int:
  """Numbers per example of an output shape, or of a list of them (several maps)."""
  if isinstance(shape, list):
    return sum(_size(s) for s in shape)
  return int(np.prod(shape[1:]))


def _each(function, arrays):
  """`function` of an array, or a tuple of it on each of a list (several maps)."""
  return tuple(function(a) for a in arrays) if isinstance(arrays, (list, tuple)) else (
      function(arrays))


@dataclasses.dataclass
class SharedExtraction:
  """Features computed in memory while `shared_extraction()` is active, per example, by what
  they depend on (backbone weights, input shape, dtype, `inputs_key`): several runs in one
  process (the trials of a search, the rounds of self-training) extract each example once.
  `extractions` counts the extraction passes made."""
  rows: dict = dataclasses.field(default_factory=dict)  # model key -> {example key: row}
  extractions: int = 0
  seconds: float = 0.0  # spent extracting


_SHARED: list[SharedExtraction] = []


@contextlib.contextmanager
def shared_extraction():
  """Within the block, `build` and `extract` reuse in-memory features computed earlier."""
  store = SharedExtraction()
  _SHARED.append(store)
  try:
    yield store
  finally:
    _SHARED.remove(store)


def _model_key(extractor: keras.Model, dtype: str, inputs_key: str) -> str:
  digest = hashlib.sha1(f"{extractor.input_shape}|{dtype}|{inputs_key}".encode())
  for w in extractor.weights:
    digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
  return digest.hexdigest()


def _example_key(item) -> str:
  """An example's identity: its path or text, or a digest of its encoded bytes."""
  return hashlib.sha1(item).hexdigest() if isinstance(item, bytes) else f"{type(item)}{item}"


def extract(model: keras.Model, files: Examples, make_inputs, dtype: str = "float32",
            inputs_key: str = "", verbose: int | str = 0):
  """The backbone features of `files` (in order; a tuple of arrays for several maps),
  through make_inputs(files, batch_size) pipelines; within `shared_extraction()`, each
  example's once."""
  return _memoized(feature_model(model), files, make_inputs, dtype, inputs_key, verbose)


def _predict(extractor: keras.Model, files: Examples, make_inputs, verbose, bucketed=None):
  """`extractor`'s outputs on `files`, in their order; bucketed: `Dataset.bucketed`."""
  batch = memory.extraction_batch(extractor)
  if bucketed is None:
    return extractor.predict(make_inputs(files, batch), verbose=verbose)
  batches, order = bucketed(files, batch)
  spec = keras.tree.map_structure(lambda a: tf.TensorSpec([None] * a.ndim, a.dtype),
                                  batches[0][0])
  call = tf.function(lambda x: extractor(x, training=False), input_signature=[spec])
  progress = keras.utils.Progbar(len(files.inputs), verbose=0 if verbose == 0 else
                                 1 if verbose in (1, "auto") else 2)
  parts = []  # one trace for every batch shape (Keras' predict traces again per shape)
  for inputs, _ in batches:
    parts.append(keras.tree.map_structure(np.asarray, call(inputs)))
    progress.add(len(keras.tree.flatten(parts[-1])[0]))
  out = keras.tree.map_structure(lambda *a: np.concatenate(a), *parts)
  back = np.argsort(order)
  return _each(lambda a: a[back], out)


def _memoized(extractor: keras.Model, files: Examples, make_inputs, dtype: str,
              inputs_key: str, verbose, bucketed=None):
  shared = _SHARED[-1] if _SHARED and not files.streams else None
  if shared is None:
    logging.info("feature cache: extracting %d examples", len(files.inputs))
    return _each(lambda a: a.astype(dtype, copy=False), _predict(
        extractor, files, make_inputs, verbose, bucketed))
  memo = shared.rows.setdefault(_model_key(extractor, dtype, inputs_key), {})
  keys = [_example_key(x) for x in files.inputs]
  missing = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in memo}.values())
  if missing:
    logging.info("feature cache: extracting %d examples (%d extracted earlier in this "
                 "process)", len(missing), len(keys) - len(missing))
    start = time.perf_counter()
    missing.sort()
    computed = _each(lambda a: a.astype(dtype, copy=False), _predict(
        extractor, files.subset(missing), make_inputs, verbose, bucketed))
    for j, i in enumerate(missing):
      memo[keys[i]] = _each(lambda a: a[j], computed)  # pylint: disable=cell-var-from-loop
    shared.extractions, shared.seconds = (shared.extractions + 1,
                                          shared.seconds + time.perf_counter() - start)
  else:
    logging.info("feature cache: every example's features were extracted earlier in this "
                 "process")
  rows = [memo[k] for k in keys]
  if isinstance(rows[0], tuple):
    return tuple(np.stack([r[m] for r in rows]) for m in range(len(rows[0])))
  return np.stack(rows)


def build(model: keras.Model, dataset: Dataset, batch_size: int, seed: int,
          memory_budget: int, cache_dir: str, dtype: str = "float32",
          verbose: int | str = "auto", inputs_key: str = "") -> FeatureDatasets:
  """Computes backbone features of the training and validation examples once, over
  `dataset.make_inputs` pipelines.

  Returns batched (features, one-hot label) pipelines; the training one reshuffles every
  epoch with `seed`, like the image pipeline. Features are kept in memory when both splits
  fit in `memory_budget` bytes, else saved under `cache_dir` (replaced) and streamed.
  inputs_key: what else shapes the backbone's inputs (the resize mode), for
  `shared_extraction`.
  """
  extractor = feature_model(model)
  width = _width(extractor, dataset)
  n = len(dataset.train_files.inputs) + len(dataset.val_files.inputs)
  needed = n * width * np.dtype(dtype).itemsize
  on_disk = needed > memory_budget
  logging.info("feature cache: %d examples x %d features (%s) = %.1f MiB, %s", n, width, dtype,
               needed / 2**20, f"on disk in {cache_dir}" if on_disk else "in memory")

  def stream(files: Examples, name: str, shuffle: bool) -> tf.data.Dataset:
    path = os.path.join(cache_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    images = dataset.make_inputs(files, memory.extraction_batch(extractor))  # in file order
    logging.info("feature cache: extracting %d %s examples to %s", len(files.inputs), name, path)
    labels = dataset.targets(files)
    features = images.map(lambda x, _: _each(lambda f: tf.cast(f, dtype),
                                             extractor(x, training=False)))
    tf.data.Dataset.zip(features.unbatch(), tf.data.Dataset.from_tensor_slices(labels)).save(
        path, shard_func=lambda *_: np.int64(0))
    buffer = max(1024, SHUFFLE_BYTES // (width * np.dtype(dtype).itemsize))  # flat memory
    return finish(tf.data.Dataset.load(path), min(len(files.inputs), buffer), shuffle)

  def finish(ds, buffer, shuffle):
    ds = ds.map(lambda f, y: (tf.nest.map_structure(lambda a: tf.cast(a, tf.float32), f), y))
    if shuffle:
      ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

  train, val = dataset.train_files, dataset.val_files
  if on_disk:
    return FeatureDatasets(train=stream(train, "train", True), val=stream(val, "val", False),
                           on_disk=True)
  computed = _in_memory(extractor, dataset, dtype, verbose, inputs_key)
  onehot = np.concatenate([dataset.targets(train), dataset.targets(val)])
  n = len(train.inputs)
  head, tail = _each(lambda a: a[:n], computed), _each(lambda a: a[n:], computed)
  return FeatureDatasets(
      train=finish(tf.data.Dataset.from_tensor_slices((head, onehot[:n])), n, True),
      val=finish(tf.data.Dataset.from_tensor_slices((tail, onehot[n:])), 0, False),
      on_disk=False, arrays=(_each(lambda a: a.astype(np.float32, copy=False), head),
                             _each(lambda a: a.astype(np.float32, copy=False), tail)))


def _in_memory(extractor: keras.Model, dataset: Dataset, dtype: str, verbose,
               inputs_key: str):
  """The training then validation examples' features as `dtype` arrays (a tuple of them
  for several maps), extracted now or, within `shared_extraction()`, taken from earlier."""
  train, val = dataset.train_files, dataset.val_files
  if train.streams:
    logging.info("feature cache: extracting %d examples", len(train.inputs) + len(val.inputs))  # streamed records are read split by split, each in its stream's order
    batch = memory.extraction_batch(extractor)
    parts = [_each(np.asarray, extractor.predict(dataset.make_inputs(files, batch),
                                                 verbose=verbose)) for files in (train, val)]
    parts = [_each(lambda a: a.astype(dtype, copy=False), p) for p in parts]
    if isinstance(parts[0], tuple):
      return tuple(np.concatenate(maps) for maps in zip(*parts))
    return np.concatenate(parts)
  # one pass over training and validation examples together: one trace, full batches
  return _memoized(extractor, train + val, dataset.make_inputs, dtype, inputs_key, verbose,
                   dataset.bucketed)


def _width(extractor: keras.Model, dataset: Dataset) -> int:
  """Features per example; a sequence model's from one example (rows are padded alike)."""
  shape = extractor.output_shape
  if not isinstance(shape, list) and None in shape[1:]:
    shape = extractor.predict(dataset.make_inputs(dataset.train_files.subset([0]), 1),
                              verbose=0).shape
  return _size(shape)


