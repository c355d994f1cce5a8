"""Narrowly scoped fixes for upstream bugs, each with its issue link and version guard.

`apply()` is called by `kerasft.fit` before training; set KERASFT_DISABLE_COMPAT=1 to
run without the fixes (the tests do, to show each one is still needed).
"""

from __future__ import annotations

import os

import keras
from absl import logging

_applied = False


def _affected(first: str, last: str) -> bool:
  version = tuple(int(p) for p in keras.__version__.split(".")[:2])
  return (tuple(int(p) for p in first.split(".")) <= version
          <= tuple(int(p) for p in last.split(".")))


def apply() -> None:
  """Applies every fix whose version guard matches the installed Keras, once."""
  global _applied
  if _applied or os.environ.get("KERASFT_DISABLE_COMPAT") == "1":
    return
  _applied = True
  if _affected("3.0", "3.15") and keras.backend.backend() == "tensorflow":
    _fix_multi_worker_fit()


def _fix_multi_worker_fit() -> None:
  """keras-team/keras#20585: `model.fit` under MultiWorkerMirroredStrategy fails.

  1. `TensorFlowTrainer._maybe_symbolic_build` reduces the first distributed batch with an
     eager cross-worker `strategy.reduce`, outside the collective program the other
     workers run; building only needs shapes, so the first local replica's batch serves.
  2. `reduce_per_replica` reduces scalar logs along axis 0 across workers
     (`strategy.reduce("MEAN", v, axis=0)`), which fails for rank-0 values; they are
     reduced without an axis.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from keras.src import tree  # pylint: disable=g-import-not-at-top
  from keras.src.backend.tensorflow import trainer  # pylint: disable=g-import-not-at-top

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    if self._distribute_strategy is None:  # pylint: disable=protected-access
      return
    if iterator is not None:
      for _, _, it in iterator:
        data_batch = tree.map_structure(
            lambda x: (self.distribute_strategy.experimental_local_results(x)[0]
                       if isinstance(x, tf.distribute.DistributedValues) else x), next(it))
        break
    with self.distribute_strategy.scope():
      self._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

  original_reduce = trainer.reduce_per_replica

  def reduce_per_replica(values, strategy, reduction):
    if (reduction in ("auto", "mean")
        and trainer._collective_all_reduce_multi_worker(strategy)):  # pylint: disable=protected-access
      def _reduce(v):
        local = (strategy.experimental_local_results(v)[0]
                 if trainer._is_per_replica_instance(v) else v)  # pylint: disable=protected-access
        if local.shape.rank == 0:
          return strategy.reduce("MEAN", v, axis=None)
        return original_reduce(v, strategy, reduction)
      return tree.map_structure(_reduce, values)
    return original_reduce(values, strategy, reduction)

  trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build  # pylint: disable=protected-access
  trainer.reduce_per_replica = reduce_per_replica
  logging.info("kerasft._compat: patched Keras %s for keras-team/keras#20585",
               keras.__version__)
