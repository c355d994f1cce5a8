"""How much memory a model's activations take, and what fits: the extraction batch of the
feature cache, the memory budgets, and the check that refuses a run whose activations cannot
fit the device before any work."""

from __future__ import annotations

import os
import subprocess

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from kerasft.core.errors import UsageError

MAX_EXTRACT_BATCH = 128  # examples per forward pass while extracting, at most
# Measured on CPU (MobileNet, ResNet50 at 224 px): a forward pass holds about 4x its largest
# layer output per example; MobileNet's throughput is the same from 16 to 128 per batch,
# its peak memory is not (1,155 MiB at 32 against 2,146 MiB at 128 for a whole run).
ACTIVATIONS_PER_LARGEST = 4
CPU_ACTIVATION_BUDGET = 512 << 20


def activation_budget() -> int:
  """Bytes one extraction batch's activations may take: on a GPU a quarter of its memory
  (2 GiB when `nvidia-smi` cannot say), else the smaller of 512 MiB and an eighth of the
  memory available now."""
  if tf.config.list_physical_devices("GPU"):
    return device_memory() // 4
  return min(CPU_ACTIVATION_BUDGET, device_memory() // 8)


def device_memory() -> int:
  """Bytes a run's activations can use at most: the smallest GPU's memory (`nvidia-smi`),
  else the memory available now."""
  if tf.config.list_physical_devices("GPU"):
    try:
      out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True,
                           timeout=10, check=True).stdout
      return min(int(v) for v in out.split()) << 20
    except (OSError, ValueError, subprocess.SubprocessError):
      return 8 << 30
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 4 << 30


def _output_bytes(tensor) -> int:
  return int(np.prod([d or 1 for d in tensor.shape[1:]])) * np.dtype(tensor.dtype).itemsize


def _all_outputs(model: keras.Model) -> int:
  """Bytes per example of every layer output of `model` (nested models included): what
  training through it keeps for the backward pass, at least."""
  total = 0
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      total += _all_outputs(layer)
      continue
    try:
      total += sum(_output_bytes(t) for t in keras.tree.flatten(layer.output))
    except (AttributeError, ValueError, TypeError):  # a layer called more than once
      continue
  return total


def check_fits(model: keras.Model, batch_size: int, trains_backbone: bool,
               available: int | None = None) -> None:
  """Raises a UsageError, before any work, when an image model's activations cannot fit
  `available` bytes [`device_memory()`]: training the backbone keeps every layer's output
  of a `batch_size` batch; a frozen backbone runs one example per forward pass at least.
  The message names the largest --batch_size that fits, else about the largest
  --image_size at which one image fits (activations grow with the side squared). A lower
  bound: a run it lets through can still run out of memory, one it refuses cannot run."""
  shape = model.input_shape
  if not isinstance(shape, tuple) or len(shape) != 4:
    return
  available = device_memory() if available is None else available
  per, batch = per_example(model, trains_backbone), batch_size if trains_backbone else 1
  what = (f"fine-tuning with --batch_size={batch_size}" if trains_backbone else
          "one forward pass of the frozen backbone")
  need = per * batch
  if need <= available:
    return
  side = shape[1]
  fits = available // per
  if trains_backbone and fits >= 1:
    hint = f"the largest --batch_size that fits is {fits}"
  else:
    largest = int(side * (available / per) ** 0.5) // 32 * 32  # one example
    hint = (f"the largest --image_size that fits one image is about {largest}"
            if largest >= 32 else "no --image_size fits")
  raise UsageError(f"--image_size={side}: {what} needs at least {need / 2**30:,.1f} GiB "
                   f"of activations, more than the {available / 2**30:,.1f} GiB of memory "
                   f"this device has; {hint}")


def per_example(model: keras.Model, trains_backbone: bool) -> int:
  """Bytes of activations one example takes at least: every layer's output when training
  goes through the backbone, else a few times its largest layer output (one forward pass)."""
  if trains_backbone:
    return _all_outputs(model)
  return ACTIVATIONS_PER_LARGEST * _largest_output(model)


def batch_memory() -> int:
  """Bytes `--batch_size=auto` fills at most: half the smallest GPU's memory, else half the
  machine's RAM (not the memory free now, so that a resumed run chooses the same batch)."""
  if tf.config.list_physical_devices("GPU"):
    return device_memory() // 2
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
  except (ValueError, OSError, AttributeError):
    return 4 << 30


def auto_batch(per: int, effective: int, replicas: int, available: int) -> tuple[int, int]:
  """(global batch, accumulation steps) for `--batch_size=auto`: the largest batch that
  divides `effective` evenly, splits evenly over `replicas` and whose activations (`per`
  bytes per example, `per_example`) fit `available` bytes on each replica; the steps reach
  `effective`. Raises a UsageError when not even one example per replica fits."""
  if effective % replicas:
    raise UsageError(f"--effective_batch_size={effective}: must divide evenly over the "
                     f"{replicas} replicas")
  fits = [b for b in range(replicas, effective + 1, replicas)
          if effective % b == 0 and (b // replicas) * per <= available]
  if not fits:
    raise UsageError(f"--batch_size=auto: one example takes {per / 2**30:,.1f} GiB of "
                     f"activations, more than the {available / 2**30:,.1f} GiB this device "
                     "gives a batch; pass a smaller --image_size")
  return fits[-1], effective // fits[-1]


def _largest_output(model: keras.Model) -> int:
  """Bytes per example of the largest layer output in `model` (nested models included),
  at least 5x its input's (a hub module's own activations are not visible)."""
  size = _output_bytes
  largest = 5 * max(size(t) for t in model.inputs)
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      largest = max(largest, _largest_output(layer))
      continue
    try:
      largest = max([largest] + [size(t) for t in keras.tree.flatten(layer.output)])
    except (AttributeError, ValueError, TypeError):  # a layer called more than once
      continue
  return largest


def extraction_batch(extractor: keras.Model, budget: int | None = None) -> int:
  """Examples per forward pass of `extractor`: the largest power of two up to
  `MAX_EXTRACT_BATCH` whose estimated activations fit `budget` bytes
  [`activation_budget()`], so that a large backbone or image size never exhausts memory."""
  per_example = ACTIVATIONS_PER_LARGEST * _largest_output(extractor)
  budget = activation_budget() if budget is None else budget
  batch = MAX_EXTRACT_BATCH
  while batch > 1 and batch * per_example > budget:
    batch //= 2
  logging.info("feature cache: %d examples per forward pass (about %.0f MiB of activations "
               "each, budget %.0f MiB)", batch, batch * per_example / 2**20, budget / 2**20)
  return batch


def default_memory_budget() -> int:
  """A quarter of the machine's physical memory, in bytes."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
  except (ValueError, OSError, AttributeError):
    return 2 << 30
