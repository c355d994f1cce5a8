"""The Keras side of several heads on one backbone (`kerasft.tasks.multitask`).

The heads share one Dense layer on the backbone's features (`multitask_dense`, its columns
the heads' logits side by side) and the `MultiHead` layer (`multitask`) gives each head its
own activation: softmax, sigmoid, or a linear rescale to the targets' units. The model's
output is the heads' outputs concatenated [N, sum of sizes], so pipelines, feature caching,
checkpoints and the convex head solver see one output as for a single head. A missing label
is a row of NaN targets in its head's columns: `MultiTaskLoss` and `HeadMetric` leave it out.
"""

from __future__ import annotations

import keras
from keras import ops

DENSE, LAYER = "multitask_dense", "multitask"


@keras.saving.register_keras_serializable(package="kerasft")
class MultiHead(keras.layers.Layer):
  """Each head's activation on its columns of the shared logits [N, sum of sizes].

  heads: one dict per head, in column order: "name", "size", "activation" (softmax,
  sigmoid or linear) and, for linear heads, "scale" and "offset" (the targets' std and mean:
  the Dense layer learns standardized targets)."""

  def __init__(self, heads, **kwargs):
    super().__init__(**kwargs)
    self.heads = [dict(h) for h in heads]

  def call(self, z):
    parts = []
    for head, (start, stop) in zip(self.heads, spans(self.heads)):
      block = z[:, start:stop]
      if head["activation"] == "softmax":
        block = ops.softmax(block, axis=-1)
      elif head["activation"] == "sigmoid":
        block = ops.sigmoid(block)
      else:
        block = block * ops.array(head["scale"], block.dtype) + ops.array(head["offset"],
                                                                          block.dtype)
      parts.append(block)
    return ops.concatenate(parts, axis=-1)

  def get_config(self):
    return {**super().get_config(), "heads": self.heads}


def spans(heads: list[dict]) -> list[tuple[int, int]]:
  """(start, stop) of each head's columns."""
  stops = [0]
  for head in heads:
    stops.append(stops[-1] + int(head["size"]))
  return list(zip(stops[:-1], stops[1:]))


def find_heads(model) -> list[dict]:
  """The head dicts of the `MultiHead` layer in `model` or a model nested in it."""
  for layer in model.layers:
    if isinstance(layer, MultiHead):
      return layer.heads
    if isinstance(layer, keras.Model):
      found = find_heads(layer)
      if found:
        return found
  return []


def _block(y_true, y_pred, start: int, stop: int):
  """(targets with missing rows zeroed, outputs, float mask of rows with a label) of one
  head's columns."""
  y = y_true[:, start:stop]
  finite = ops.isfinite(y)
  present = ops.cast(ops.all(finite, axis=-1), y_pred.dtype)
  return ops.where(finite, y, ops.zeros_like(y)), y_pred[:, start:stop], present


def _standardized(head: dict, values):
  """A linear head's values in standardized units (the others unchanged)."""
  if head["activation"] != "linear":
    return values
  return (values - ops.array(head["offset"], values.dtype)) / ops.array(head["scale"],
                                                                         values.dtype)


class MultiTaskLoss(keras.losses.Loss):
  """The weighted sum of each head's loss, each the mean over the examples of the batch
  that have its label (a linear head's MSE in standardized units, so that a target in
  thousands does not drown the classifiers).

  heads: `MultiHead`'s head dicts; losses: each head's Keras loss; weights: per head."""

  def __init__(self, heads: list[dict], losses: list, weights, name="multitask_loss"):
    super().__init__(name=name)
    self.heads, self.losses, self.weights = heads, losses, [float(w) for w in weights]

  def call(self, y_true, y_pred):
    y_true = ops.cast(y_true, y_pred.dtype)
    total = ops.zeros_like(y_pred[:, 0])
    batch = ops.cast(ops.shape(y_pred)[0], y_pred.dtype)
    for head, loss, weight, (start, stop) in zip(self.heads, self.losses, self.weights,
                                                 spans(self.heads)):
      y, p, present = _block(y_true, y_pred, start, stop)
      per_example = loss.call(_standardized(head, y), _standardized(head, p))
      scale = weight * batch / ops.maximum(ops.sum(present), 1.0)
      total = total + per_example * present * scale
    return total


class HeadMetric(keras.metrics.Metric):
  """A metric of one head: `inner` on its columns, over the examples that have its label."""

  def __init__(self, inner, start: int, stop: int, name: str):
    super().__init__(name=name)
    self.inner, self.start, self.stop = inner, start, stop

  def update_state(self, y_true, y_pred, sample_weight=None):
    y, p, present = _block(ops.cast(y_true, y_pred.dtype), y_pred, self.start, self.stop)
    if sample_weight is not None:
      present = present * ops.cast(ops.reshape(sample_weight, ops.shape(present)), p.dtype)
    self.inner.update_state(y, p, sample_weight=present)

  def result(self):
    return self.inner.result()

  def reset_state(self):
    self.inner.reset_state()


class MeanScore(keras.metrics.Metric):
  """The mean of the heads' scores (`HeadMetric`s whose higher values are better)."""

  def __init__(self, parts: list, name: str = "score"):
    super().__init__(name=name)
    for i, part in enumerate(parts):
      setattr(self, f"part_{i}", part)
    self.count = len(parts)

  def _parts(self):
    return [getattr(self, f"part_{i}") for i in range(self.count)]

  def update_state(self, y_true, y_pred, sample_weight=None):
    for part in self._parts():
      part.update_state(y_true, y_pred, sample_weight)

  def result(self):
    return ops.mean(ops.stack([ops.cast(p.result(), "float32") for p in self._parts()]))

  def reset_state(self):
    for part in self._parts():
      part.reset_state()
