"""Every use of a private Keras or TensorFlow API, each with its reason, upstream link,
the versions it was checked on, and a guard.

Checked on Keras 3.10-3.15 and TensorFlow 2.21 (`CHECKED`). Outside that range each
workaround first checks that the private API it needs is still there, and falls back
(or refuses with a `UsageError` naming the flag) when it is not; `tests/test_compat.py`
has one canary test per workaround that fails when upstream behaviour changes. Set
KERASFT_DISABLE_COMPAT=1 to run without the multi-worker fix (the tests do, to show it is
still needed).
"""

from __future__ import annotations

import functools
import os

import keras
from absl import logging

from kerasft.core.errors import UsageError

CHECKED = ("3.10", "3.15")  # Keras versions every workaround here was checked on
_applied = False


def _version(text: str) -> tuple[int, int]:
  return tuple(int(p) for p in text.split(".")[:2])


def checked(first: str = CHECKED[0], last: str = CHECKED[1]) -> bool:
  """Whether the installed Keras is within [first, last] (major.minor)."""
  return _version(first) <= _version(keras.__version__) <= _version(last)


def _missing(obj, attribute: str, what: str) -> bool:
  """True (and a warning) when a private attribute a workaround needs is gone."""
  if hasattr(obj, attribute):
    return False
  logging.warning("kerasft._compat: Keras %s has no %s (%s); checked on %s-%s",
                  keras.__version__, attribute, what, *CHECKED)
  return True


def sublayers(layer) -> list:
  """`layer` and every layer nested in it, at any depth (Keras' private
  `Layer._flatten_layers`, which KerasHub's own `Backbone.enable_lora` walks too; public
  `Model.layers` stops at the first level and layers that are not models have none)."""
  if _missing(layer, "_flatten_layers", "the nested layers of a layer"):
    raise UsageError("--peft: this Keras cannot list nested layers; use Keras "
                     f"{CHECKED[0]}-{CHECKED[1]}")
  return list(layer._flatten_layers(include_self=True, recursive=True))  # pylint: disable=protected-access


def disable_op_determinism() -> None:
  """Undoes `tf.config.experimental.enable_op_determinism()` in this process (TensorFlow
  has no public switch back: tensorflow/python/framework/config.py
  `disable_op_determinism`, checked on TF 2.21). A run without --deterministic after one
  with it (tests, notebooks, a search's trials) would otherwise keep deterministic ops and
  lose XLA (Keras turns jit_compile off under op determinism). Fallback: left as it is."""
  try:
    from tensorflow.python.framework import config as tf_config  # pylint: disable=g-import-not-at-top
    if tf_config.is_op_determinism_enabled():
      tf_config.disable_op_determinism()
  except (ImportError, AttributeError):
    logging.warning("kerasft._compat: cannot turn op determinism off in this TensorFlow")


def pin_inference_mode(layer) -> None:
  """Makes `layer(x, training=False)` in a functional model stay in inference mode.

  Keras 3 functional models pass their own `training` flag to every layer that accepts
  one, overriding the `training=False` a node was built with (upstream: Layer.__call__'s
  call-context propagation in keras/src/layers/layer.py; no issue filed), so trainable
  BatchNorm layers (--bn_mode=affine) would update their statistics during
  `fit`. A layer whose private `_call_context_args` lacks "training" keeps the node's own
  value. Fallback without it: nothing is pinned (a warning says so).
  """
  if _missing(layer, "_call_context_args", "pinning a backbone in inference mode"):
    return
  layer._call_context_args = set(layer._call_context_args) - {"training"}  # pylint: disable=protected-access


def reset_initial_epoch(model) -> None:
  """Clears the epoch `keras.callbacks.BackupAndRestore` leaves on the model.

  BackupAndRestore sets the private `model._initial_epoch` when it restores a backup, and
  `fit` prefers it to its own `initial_epoch` in every later call (upstream:
  keras/src/callbacks/backup_and_restore.py and `self._initial_epoch or initial_epoch` in
  keras/src/backend/tensorflow/trainer.py; no issue filed), so the next phase's `fit`
  would start at the wrong epoch. Fallback: nothing to clear.
  """
  if hasattr(model, "_initial_epoch"):
    model._initial_epoch = None  # pylint: disable=protected-access


def track_variable(layer, variable) -> None:
  """Makes a Keras layer own `variable` (a TF Hub module's weight) as one of its weights.

  Keras 3 has no public way to adopt an existing variable (`add_weight` makes a new one;
  upstream: keras/src/layers/layer.py); `Layer._track_variable` is what `add_weight` uses. Refuses when it is gone: a hub
  backbone cannot be trained or saved without it.
  """
  if _missing(layer, "_track_variable", "adopting a TF Hub module's variables"):
    raise UsageError(f"--model: hub:/savedmodel: backbones need Keras {CHECKED[0]}-"
                     f"{CHECKED[1]} (Layer._track_variable); installed {keras.__version__}")
  layer._track_variable(variable)  # pylint: disable=protected-access


def capturable_resources(obj, depth: int = 0, seen: set | None = None) -> list:
  """The TF resources (tensorflow-text's SentencePiece model, lookup tables) held in
  `obj`'s attributes, a few levels deep: a SavedModel must track what its functions
  capture, and KerasHub tokenizers keep them in plain attributes. The resource base class
  is only importable from `tensorflow.python` (no public alias in TF 2.21); without it,
  nothing is found and the export fails loudly if the graph needs a resource."""
  try:
    from tensorflow.python.trackable.resource import CapturableResource  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("kerasft._compat: no tensorflow.python.trackable.resource; tokenizer "
                    "resources are not tracked")
    return []
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seen = set() if seen is None else seen
  if id(obj) in seen or depth > 4:
    return []
  seen.add(id(obj))
  if isinstance(obj, CapturableResource):
    return [obj]
  if isinstance(obj, (list, tuple)):
    children = obj
  elif isinstance(obj, dict):
    children = obj.values()
  elif hasattr(obj, "__dict__") and not isinstance(obj, (tf.Tensor, tf.Variable, type)):
    children = vars(obj).values()
  else:
    return []
  return [r for child in children for r in capturable_resources(child, depth + 1, seen)]


def keras_home() -> str:
  """The folder whose models/ Keras searches for ImageNet weights (as `keras.utils.get_file`
  does). Keras 3 has no public accessor (`keras.src.backend.config.keras_home`); the
  fallback is Keras' own rule: $KERAS_HOME, else ~/.keras, else /tmp/.keras when that is
  not writable."""
  try:
    from keras.src.backend import config as keras_config  # pylint: disable=g-import-not-at-top
    home = keras_config.keras_home()
  except (ImportError, AttributeError):
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
  return home if os.access(home, os.W_OK) else os.path.join("/tmp", ".keras")


def tfds_data_root(builder) -> str:
  """The data folder a TFDS builder looks in (its `data_dir` is that folder plus name,
  config and version). TFDS keeps the root in the private `_data_dir_root` (tensorflow-
  datasets 4.9); the fallback is TFDS' default, `~/tensorflow_datasets`."""
  return str(getattr(builder, "_data_dir_root", None) or os.path.join("~", "tensorflow_datasets"))


@functools.lru_cache(maxsize=None)  # one subclass per optimizer class, not per optimizer
def with_variable_rates(base):
  """`base` optimizer class that scales the rate per variable and adds L2 (toward zero, or
  toward `anchors` {variable path: pretrained value} for L2-SP) to gradients.

  Keras has no per-variable learning rates (upstream: keras/src/optimizers/
  base_optimizer.py `apply`; no issue filed). This overrides the private
  `_backend_update_step` (called by `apply` with the gradients and the rate) to update
  each group of variables at its own rate, and `_apply_weight_decay` so that decoupled
  weight decay (AdamW) is scaled with the same factor: Keras applies it inside `apply`,
  before the update step, at the unscaled rate. Refuses (naming --layer_lr_decay) when
  the optimizer lacks those methods.
  """
  for name in ("_backend_update_step", "_apply_weight_decay"):
    if _missing(base, name, "per-variable learning rates"):
      raise UsageError(f"--layer_lr_decay/--weight_decay: need Keras {CHECKED[0]}-"
                       f"{CHECKED[1]} ({base.__name__}.{name}); installed {keras.__version__}")

  class Tuned(base):  # pylint: disable=missing-class-docstring

    def __init__(self, *args, lr_multipliers: dict | None = None, l2: float = 0.0,
                 anchors: dict | None = None, l2sp: float = 0.0, **kwargs):
      super().__init__(*args, **kwargs)
      self._lr_multipliers = dict(lr_multipliers or {})
      self._l2, self._l2sp = l2, l2sp
      self._anchors = {path: keras.ops.convert_to_tensor(value)
                       for path, value in (anchors or {}).items()} if l2sp else {}

    def _groups(self, grads, variables):
      groups: dict[float, tuple[list, list]] = {}
      for g, v in zip(grads, variables):
        pair = groups.setdefault(self._lr_multipliers.get(v.path, 1.0), ([], []))
        pair[0].append(g)
        pair[1].append(v)
      return groups

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
      if self._l2:  # coupled L2 on kernels: the gradient of l2 * sum(w ** 2)
        grads = [g + 2 * self._l2 * keras.ops.cast(v, g.dtype)
                 if len(v.shape) >= 2 and v.path not in self._anchors else g
                 for g, v in zip(grads, trainable_variables)]
      if self._anchors:  # L2-SP: the gradient of l2sp * sum((w - w0) ** 2)
        grads = [g + 2 * self._l2sp * keras.ops.cast(v - self._anchors[v.path], g.dtype)
                 if v.path in self._anchors else g for g, v in zip(grads, trainable_variables)]
      for multiplier, (group_grads, group_vars) in self._groups(
          grads, trainable_variables).items():
        super()._backend_update_step(group_grads, group_vars, learning_rate * multiplier)

    def _apply_weight_decay(self, variables):
      if self.weight_decay is None or not self._lr_multipliers:
        return super()._apply_weight_decay(variables)
      decay = self.weight_decay
      try:  # read when the decay is applied (traced), so each group gets its own factor
        for multiplier, (_, group) in self._groups(variables, variables).items():
          self.weight_decay = decay * multiplier
          super()._apply_weight_decay(group)
      finally:
        self.weight_decay = decay

  Tuned.__name__ = Tuned.__qualname__ = f"Tuned{base.__name__}"
  return Tuned


def apply() -> None:
  """Applies the process-wide fixes whose version guard matches the installed Keras, once."""
  global _applied
  if _applied or os.environ.get("KERASFT_DISABLE_COMPAT") == "1":
    return
  _applied = True
  if checked("3.0", CHECKED[1]) and keras.backend.backend() == "tensorflow":
    _fix_multi_worker_fit()
  elif keras.backend.backend() == "tensorflow":
    logging.warning("kerasft._compat: Keras %s is newer than %s; the multi-worker fit fix "
                    "(keras-team/keras#20585) is not applied", keras.__version__, CHECKED[1])


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
