"""Whether multiclass probabilities mean what they say, and temperature scaling.

`ece` is the expected calibration error over BINS equal-width confidence bins (Guo et al.,
ICML 2017, "On Calibration of Modern Neural Networks"); `fit_temperature` finds the one
temperature T that minimizes the negative log-likelihood of held-out predictions, and
`bake` divides the last layer's kernel and bias by T, so the model (and its export)
returns softmax(logits / T) with the same argmax.
"""

from __future__ import annotations

import numpy as np
from kerasft.reporting.metrics import pyplot

BINS = 15
_RANGE = (np.log(0.05), np.log(20.0))  # temperatures searched


def _labels(labels: np.ndarray) -> np.ndarray:
  labels = np.asarray(labels)
  return labels.argmax(-1) if labels.ndim == 2 else labels.astype(int)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS):
  """Per equal-width confidence bin: (mean confidence, accuracy, count) arrays [bins]
  (NaN where a bin is empty)."""
  probabilities, labels = np.asarray(probabilities, np.float64), _labels(labels)
  confidence = probabilities.max(-1)
  correct = probabilities.argmax(-1) == labels
  which = np.minimum((confidence * bins).astype(int), bins - 1)
  counts = np.bincount(which, minlength=bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_confidence = np.bincount(which, confidence, bins) / counts
    accuracy = np.bincount(which, correct.astype(float), bins) / counts
  return mean_confidence, accuracy, counts


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
  """Expected calibration error: sum over bins of |accuracy - confidence| x its share."""
  confidence, accuracy, counts = reliability(probabilities, labels, bins)
  used = counts > 0
  return float(np.sum(np.abs(accuracy[used] - confidence[used]) * counts[used]) /
               max(1, counts.sum()))


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(logits / T) from probabilities (log p are the logits up to a constant)."""
  logits = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)) / temperature
  logits -= logits.max(-1, keepdims=True)
  exp = np.exp(logits)
  return (exp / exp.sum(-1, keepdims=True)).astype(np.float32)


def _nll(probabilities: np.ndarray, labels: np.ndarray, log_t: float) -> float:
  p = scaled(probabilities, float(np.exp(log_t)))
  return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0))))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
  """The temperature in [0.05, 20] minimizing the NLL of held-out `probabilities` [N, C]
  against `labels` (ids [N] or one-hot): a grid over log T, then golden-section search
  around its best point (the NLL is convex in 1/T)."""
  labels = _labels(labels)
  grid = np.linspace(*_RANGE, 41)
  best = int(np.argmin([_nll(probabilities, labels, g) for g in grid]))
  low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
  ratio = (np.sqrt(5) - 1) / 2
  for _ in range(40):
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    if _nll(probabilities, labels, a) < _nll(probabilities, labels, b):
      high = b
    else:
      low = a
  return float(np.exp((low + high) / 2))


def held_out(labels, outputs: np.ndarray, fit: bool):
  """(outputs, {"ece"[, "temperature", "ece_calibrated"]}, T or None) of held-out
  `outputs` against `labels`; with `fit`, the temperature minimizing their NLL and the
  outputs scaled by it."""
  entry = {"ece": ece(outputs, labels), "bins": BINS}
  if not fit:
    return outputs, entry, None
  temperature = fit_temperature(outputs, labels)
  calibrated = scaled(outputs, temperature)
  entry.update(temperature=temperature, ece_calibrated=ece(calibrated, labels))
  return calibrated, entry, temperature


def bake(model, temperature: float, layer_name: str = "probabilities") -> None:
  """Divides the softmax layer `layer_name`'s kernel and bias by `temperature`, in place:
  the model then outputs softmax(logits / T)."""
  layer = model.get_layer(layer_name)
  if layer.get_config().get("activation") != "softmax":
    raise ValueError(f"{layer_name} is not a softmax layer; temperature scaling needs one")
  for weight in (layer.kernel, layer.bias):  # the head: LoRA only targets the backbone
    weight.assign(weight / temperature)


def plot(probabilities: np.ndarray, labels: np.ndarray, path: str,
         temperature: float | None = None) -> None:
  """Writes the reliability diagram (accuracy against confidence per bin, ECE in the
  legend; with `temperature`, the calibrated probabilities beside) as a PNG."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5, 4.5))
  centers = (np.arange(BINS) + 0.5) / BINS
  variants = [("uncalibrated", probabilities, "tab:red")]
  if temperature:
    variants.append((f"T = {temperature:.2f}", scaled(probabilities, temperature), "tab:blue"))
  width = 1 / BINS / len(variants)
  for i, (name, p, color) in enumerate(variants):
    _, accuracy, counts = reliability(p, labels)
    ax.bar(centers - 0.5 / BINS + (i + 0.5) * width, np.nan_to_num(accuracy), width,
           color=color, alpha=0.7, label=f"{name}: ECE {ece(p, labels):.3f}")
  ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
  ax.set_xlabel("confidence (top-1 probability)")
  ax.set_ylabel("accuracy")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.legend(loc="upper left", fontsize=8)
  ax.set_title(f"reliability diagram ({len(probabilities)} held-out examples)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
