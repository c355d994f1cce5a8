"""Weight averaging at the end of a run: model soups, EMA, WiSE-FT.

`TopK` keeps the best `k` epochs of the last phase as raw weight lists in
`<model_dir>/top_k/` (atomic, so a killed run resumes with them). After the last segment,
`finish` tries what --average and --wise_ft ask for, each scored on the validation split by
the same model and data the epochs were scored with:
- greedy_soup (Wortsman et al. 2022): the best epoch, then each next-best epoch added to the
  average only when the validation metric does not drop; uniform_soup: the mean of the top k;
  ema: the weights Keras' optimizer averaged (`use_ema`) during the last phase.
  A soup or the EMA replaces the best epoch only when it scores at least as well.
- WiSE-FT (Wortsman et al. 2022): (1 - alpha) * head-phase weights + alpha * fine-tuned
  weights, alpha given or chosen from `WISE_FT_ALPHAS` on validation, ties going to the
  alpha nearest 0.5 (plotted as wise_ft.png).
Batch-norm statistics of an average are recomputed on training batches when the backbone's
batch norm trains (--bn_mode=train).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
from absl import logging

from kerasft.core.files import atomic_path, read_json, write_json
from kerasft.config.methods import WISE_FT_ALPHAS, wise_ft_alpha

TOP_K, HEAD_WEIGHTS, EMA_WEIGHTS = "top_k", "head_phase.npz", "ema.npz"
WISE_FT_PLOT, SCORES = "wise_ft.png", "averaging.json"
BN_BATCHES = 200


def save_weights(weights: list, path: str) -> None:
  """Writes a raw weight list (`Model.get_weights()`) to `path` (.npz) atomically."""
  with atomic_path(path) as staging, open(staging, "wb") as f:
    np.savez(f, *weights)


def load_weights(path: str) -> list:
  with np.load(path) as f:
    return [f[f"arr_{i}"] for i in range(len(f.files))]


class TopK(keras.callbacks.Callback):
  """Keeps the `k` best epochs of `model` by `monitor` in `folder` (index.json + .npz)."""

  def __init__(self, model, folder: str, k: int, monitor: str, mode: str, write: bool = True):
    super().__init__()
    self._full, self._folder, self._k, self._write = model, folder, k, write
    self._monitor, self._sign = monitor, 1.0 if mode == "max" else -1.0

  def entries(self) -> list[dict]:
    """[{"epoch", "value" (signed: higher is better), "file"}], best first."""
    return read_json(os.path.join(self._folder, "index.json"), [])

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self._monitor)
    if value is None or not self._write:
      return
    new = {"epoch": epoch, "value": self._sign * float(value), "file": f"epoch_{epoch}.npz"}
    entries = sorted([e for e in self.entries() if e["epoch"] != epoch] + [new],
                     key=lambda e: -e["value"])
    os.makedirs(self._folder, exist_ok=True)
    if new in entries[:self._k]:
      save_weights(self._full.get_weights(), os.path.join(self._folder, new["file"]))
    write_json(entries[:self._k], os.path.join(self._folder, "index.json"))
    for dropped in entries[self._k:]:
      path = os.path.join(self._folder, dropped["file"])
      if os.path.exists(path):
        os.remove(path)


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What `finish` chose: `kept` names it ("greedy_soup of 3 epochs", "wise_ft alpha 0.5",
  "" when the best epoch stayed); `scores` what each candidate scored on validation."""
  kept: str
  scores: dict


def mean(weight_lists: list, coefficients=None) -> list:
  """The weighted mean of weight lists (floating arrays; others from the first list)."""
  coefficients = coefficients or [1.0 / len(weight_lists)] * len(weight_lists)
  return [sum(c * ws[i] for c, ws in zip(coefficients, weight_lists)).astype(first.dtype)
          if np.issubdtype(first.dtype, np.floating) else first
          for i, first in enumerate(weight_lists[0])]


def greedy_soup(ranked: list, score, best_value: float) -> tuple[list, list[int], float]:
  """Greedy soup of `ranked` weight lists (best first): (weights, indices used, score).
  `score(weights)` is the signed validation metric; `best_value` the first one's."""
  used, value = [0], best_value
  for i in range(1, len(ranked)):
    trial = [ranked[j] for j in used + [i]]
    trial_value = score(mean(trial))
    logging.info("greedy soup: adding epoch %d of %d: %.4f (soup so far %.4f)", i + 1,
                 len(ranked), trial_value, value)
    if trial_value >= value:
      used, value = used + [i], trial_value
  return mean([ranked[j] for j in used]), used, value


def recompute_batch_norm(model, train, backbone, batches: int = BN_BATCHES) -> int:
  """Recomputes the moving statistics of `backbone`'s trainable BatchNorm layers as the
  mean over up to `batches` training batches of `train`; returns the batches used."""
  layers = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)
            and l.trainable]
  if not layers:
    return 0
  momenta = [layer.momentum for layer in layers]
  for layer in layers:
    layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
    layer.moving_variance.assign(np.ones(layer.moving_variance.shape))
  n = 0
  for n, batch in enumerate(train.take(batches), start=1):
    for layer in layers:  # a cumulative mean: batch n weighs 1/n
      layer.momentum = (n - 1) / n
    model(batch[0], training=True)
  for layer, momentum in zip(layers, momenta):
    layer.momentum = momentum
  return n


class Scorer:
  """Scores weight lists on validation: sets them on `model`, recomputes batch-norm
  statistics when asked (`train`, `backbone`), evaluates `eval_model` on `val`; returns
  the signed monitored value. `weights` holds the list last scored (statistics included).
  epoch_callbacks: the output's callbacks that put a monitored figure `evaluate` does not
  compute into an epoch's logs (detection's `val_map`), asked the same way."""

  def __init__(self, model, eval_model, val, monitor: str, mode: str, train=None,
               backbone=None, epoch_callbacks=()):
    self.model, self.eval_model, self.val, self.monitor = model, eval_model, val, monitor
    self.sign, self.train, self.backbone = 1.0 if mode == "max" else -1.0, train, backbone
    self.weights, self.epoch_callbacks = None, list(epoch_callbacks)

  def __call__(self, weights: list) -> float:
    self.model.set_weights(weights)
    if self.train is not None:
      recompute_batch_norm(self.model, self.train, self.backbone)
    self.weights = self.model.get_weights()
    logs = {f"val_{k}": v for k, v in self.eval_model.evaluate(
        self.val, verbose=0, return_dict=True).items()}
    for callback in self.epoch_callbacks:
      callback.set_model(self.eval_model)
      callback.on_epoch_end(0, logs)
    return self.sign * float(logs[self.monitor])


def average(methods, scorer: Scorer, ranked: list, best_value: float, ema=None):
  """--average: (weights, name, signed score) of the soup or EMA, or None for "best"."""
  if methods.average == "best":
    return None
  if methods.average == "ema":
    value = scorer(ema)
    return scorer.weights, "ema", value
  if methods.average == "uniform_soup":
    value = scorer(mean(ranked))
    return scorer.weights, f"uniform_soup of {len(ranked)} epochs", value
  weights, used, value = greedy_soup(ranked, scorer, best_value)
  scorer(weights)
  return scorer.weights, f"greedy_soup of {len(used)} epochs", value


def wise_ft(value: str, scorer: Scorer, start: list, end: list) -> tuple[list, float, dict]:
  """(weights, alpha, {alpha: signed score}) of WiSE-FT between `start` and `end`."""
  alphas = WISE_FT_ALPHAS if value == "auto" else (wise_ft_alpha(value),)
  scores, best = {}, None
  for alpha in alphas:
    scores[alpha] = scorer(mean([start, end], [1.0 - alpha, alpha]))
    logging.info("WiSE-FT alpha %.2f: %s %.4f", alpha, scorer.monitor,
                 scorer.sign * scores[alpha])
    # ties go to the alpha nearest 0.5 (the paper's robust middle)
    if best is None or (scores[alpha], -abs(alpha - 0.5)) > (best[1], -abs(best[2] - 0.5)):
      best = (scorer.weights, scores[alpha], alpha)
  return best[0], best[2], scores


def plot_wise_ft(scores: dict, monitor: str, sign: float, path: str) -> None:
  """wise_ft.png: the validation metric against alpha."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  alphas = sorted(scores)
  ax.plot(alphas, [sign * scores[a] for a in alphas], marker="o")
  ax.set_xlabel("alpha (0: head phase, 1: fine-tuned)")
  ax.set_ylabel(monitor)
  ax.set_title("WiSE-FT on the validation split")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  with atomic_path(path) as staging:
    fig.savefig(staging, dpi=100)
  plt.close(fig)


def finish(methods, scorer: Scorer, top_dir: str, best: tuple, head=None, ema=None,
           plot_path: str = "") -> Outcome:
  """Applies --average then --wise_ft to `scorer.model`, which ends with the chosen weights.

  best: (weights, signed value) of the run's best epoch; top_dir: `TopK`'s folder (the last
  phase's best epochs); head: the head phase's final weights (for WiSE-FT); ema: the
  optimizer's averaged weights at the end of the last phase.
  """
  entries = read_json(os.path.join(top_dir, "index.json"), [])
  ranked = [load_weights(os.path.join(top_dir, e["file"])) for e in entries]
  weights, value = best
  tuned, tuned_value = (ranked[0], entries[0]["value"]) if ranked else best
  kept, scores = "", {}
  got = average(methods, scorer, ranked or [tuned], tuned_value, ema)
  if got:
    scores[got[1]] = got[2]
    keep = got[2] >= value
    logging.info("%s: %s %.4f on validation, best epoch %.4f: %s", got[1], scorer.monitor,
                 scorer.sign * got[2], scorer.sign * value,
                 "kept" if keep else "the best epoch is kept")
    if got[2] >= tuned_value:
      tuned, tuned_value = got[0], got[2]
    if keep:
      weights, value, kept = got[0], got[2], got[1]
  if methods.wise_ft:
    weights, alpha, by_alpha = wise_ft(methods.wise_ft, scorer, head, tuned)
    value, kept = by_alpha[alpha], f"wise_ft alpha {alpha:g}"
    scores.update({f"wise_ft alpha {a:g}": v for a, v in by_alpha.items()})
    if plot_path and len(by_alpha) > 1:
      plot_wise_ft(by_alpha, scorer.monitor, scorer.sign, plot_path)
  scorer.model.set_weights(weights)
  return Outcome(kept, {k: scorer.sign * v for k, v in scores.items()})
