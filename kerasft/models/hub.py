"""TF Hub modules and SavedModels as Keras 3 layers.

`tensorflow_hub.KerasLayer` is a tf.keras (Keras 2) layer and cannot be used in a Keras 3
model (tensorflow/hub#920), and `keras.layers.TFSMLayer` breaks with Adam when trainable.
`HubLayer` wraps a loaded module directly: each of the module's variables is registered
with the layer as a Keras variable that *is* the module's tf.Variable (no copy), so
`trainable` freezes or unfreezes all of them, optimizers update them in place, the module's
regularization losses join the loss, and `training` is passed through when the module's
function accepts it.
"""

from __future__ import annotations

import os
import re

import keras
import tensorflow as tf

from kerasft.core import _compat
from kerasft.core.errors import UsageError


def load(handle: str, flag: str = "model"):
  """`hub.load(handle)` (honours TFHUB_CACHE_DIR) with one-line errors for the user."""
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top

  is_remote = re.match(r"^[a-z]+://", handle) or not os.path.exists(handle)
  if not is_remote and not os.path.isfile(os.path.join(handle, "saved_model.pb")):
    raise UsageError(f"--{flag}: {handle} is not a SavedModel folder (no saved_model.pb)")
  try:
    return hub.load(handle)
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = os.environ.get("TFHUB_CACHE_DIR", "the TF Hub cache (TFHUB_CACHE_DIR)")
    raise UsageError(f"--{flag}: cannot load {handle!r} ({message}); offline, put the "
                     f"module in {where} or pass a local SavedModel folder") from None


def _sanitize(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name.split(":")[0])


def _pick_function(module, signature: str | None, flag: str = "signature"):
  """The callable of `module`: `signature` from its signatures, else `__call__`, else the
  serving_default signature. Returns (function, input key or None, accepts training)."""
  if signature:
    if signature not in getattr(module, "signatures", {}):
      raise UsageError(f"--{flag}: the SavedModel has no signature {signature!r}; it has "
                       f"{sorted(getattr(module, 'signatures', {}))}")
    fn = module.signatures[signature]
  elif callable(module) and hasattr(module, "__call__") and not _is_bare_signatures(module):
    fn = module.__call__
    concrete = getattr(fn, "concrete_functions", None) or []
    accepts = any("training" in (c.structured_input_signature[1] or {})
                  or len(c.structured_input_signature[0]) > 1 for c in concrete)
    return fn, None, accepts
  elif "serving_default" in getattr(module, "signatures", {}):
    fn = module.signatures["serving_default"]
  else:
    raise UsageError(f"--{flag}: the SavedModel has no __call__ and no serving_default "
                     "signature; pass --signature=NAME")
  keys = list(fn.structured_input_signature[1])
  if len(keys) != 1:
    raise UsageError(f"--{flag}: signature inputs {keys} are not one image tensor")
  return fn, keys[0], False


def _is_bare_signatures(module) -> bool:
  return not getattr(module.__call__, "concrete_functions", None)


def declared_image_size(module, signature: str | None = None) -> int | None:
  """The square input side the module's function declares, or None when it is dynamic."""
  fn, key, _ = _pick_function(module, signature)
  concrete = getattr(fn, "concrete_functions", None) or [fn]
  for c in concrete:
    args, kwargs = c.structured_input_signature
    spec = kwargs[key] if key else (args[0] if args else None)
    if isinstance(spec, tf.TensorSpec) and spec.shape.rank == 4:
      h, w = spec.shape[1], spec.shape[2]
      if h is not None and h == w:
        return int(h)
  return None


@keras.saving.register_keras_serializable(package="kerasft")
class HubLayer(keras.layers.Layer):
  """A TF Hub module or SavedModel from images to features, as a Keras 3 layer.

  handle: a TF Hub handle, URL or SavedModel folder. signature/output_key: which function
  and which output of a dict to use (default: `__call__`, else `serving_default`; the only
  output, else "default", else the first in sorted order). Outputs of rank 4 are averaged
  over height and width.
  """

  def __init__(self, handle: str, signature: str | None = None,
               output_key: str | None = None, **kwargs):
    super().__init__(**kwargs)
    self.handle, self.signature, self.output_key = handle, signature, output_key
    module = load(handle)
    self._fn, self._input_key, self._accepts_training = _pick_function(module, signature)
    object.__setattr__(self, "_module", module)  # not a Keras-tracked attribute
    trainable_ids = {id(v) for v in getattr(module, "trainable_variables", [])}
    with keras.name_scope(self.name, caller=self):
      for v in getattr(module, "variables", []):
        _compat.track_variable(self, keras.Variable(initializer=v, name=_sanitize(v.name),
                                                    trainable=id(v) in trainable_ids))

  def _run(self, inputs, training=None):
    """The module's chosen output for `inputs` (a dict output: --output_key's entry)."""
    if self._input_key:
      outputs = self._fn(**{self._input_key: inputs})
    elif self._accepts_training:
      outputs = self._fn(inputs, training=bool(training) and self.trainable)
    else:
      outputs = self._fn(inputs)
    if isinstance(outputs, dict):
      key = self.output_key or (next(iter(outputs)) if len(outputs) == 1 else
                                "default" if "default" in outputs else sorted(outputs)[0])
      if key not in outputs:
        raise UsageError(f"--output_key: the module has no output {key!r}; it has "
                         f"{', '.join(sorted(outputs))}")
      outputs = outputs[key]
    return outputs

  def check(self, size: int) -> None:
    """Calls the module once on a blank image of `size` px outside Keras (whose call
    wrapper would turn a UsageError into a multi-line message): a missing --output_key or
    an input the module refuses is one line here."""
    try:
      self._run(tf.zeros((1, size, size, 3)))
    except (ValueError, TypeError, tf.errors.OpError) as e:
      raise UsageError(f"--model: {self.handle} cannot be called on {size}x{size} RGB images "
                       f"({str(e).splitlines()[0][:200]})") from None

  def call(self, inputs, training=None):
    outputs = self._run(inputs, training)
    if len(outputs.shape) == 4:
      outputs = tf.reduce_mean(outputs, axis=(1, 2))
    if self.trainable:
      for loss in getattr(self._module, "regularization_losses", []):
        self.add_loss(loss())
    return outputs

  def get_config(self):
    return {**super().get_config(), "handle": self.handle, "signature": self.signature,
            "output_key": self.output_key}
