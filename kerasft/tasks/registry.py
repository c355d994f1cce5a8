"""Task objects: everything that differs by input modality (images, texts) and output type.

    task = tasks.for_config(run_config)      # ImageTask or TextTask, holding an Output
    train, val = task.index(seed)
    task, model = task.build_model(train)   # the config's image size / text length filled
    dataset = task.pipelines(train, val)

A task is made of its modality's class and one `Output` (`kerasft.tasks.outputs`:
multiclass, multilabel, regression; `tagging.Tagging` per token; `segmentation.Segmentation`
per pixel) for its head; the rest of kerasft asks these objects and never compares modality
or task names. Tagging and segmentation are an `Output` and a task class each, on the same
seams: `Output.last_layer`, `loss`, `metrics`, `served`, `report`; `Task.index`,
`build_model`, `pipelines`, `held_out`, `export_signatures`, `write_figures`. Several heads
on one backbone are one `multitask.MultiTask` output holding an `Output` per head.

Importing this package imports no TensorFlow.
"""

from __future__ import annotations

from kerasft.core.errors import UsageError
from kerasft.tasks.classify.outputs import KINDS, MAIN_OUTPUTS, Output

TEXT_PREFIX = "keras_hub:"  # --model=keras_hub:PRESET_OR_FOLDER is a text encoder


def make_output(task: str = "multiclass", threshold: float = 0.5) -> Output:
  """The Output for one --task name (tagging, segmentation: in their task's module)."""
  if task == "tagging":
    from kerasft.tasks.tagging.task import Tagging
    return Tagging(threshold)
  if task == "segmentation":
    from kerasft.tasks.segmentation.task import Segmentation
    return Segmentation(threshold)
  return KINDS[task](threshold)


def modality_class(model: str, output: Output | None = None):
  """The task class for a --model value and output: `TaggingTask` for the tagging
  output, `SegmentationTask` for the segmentation one, else `TextTask` for keras_hub:,
  else `ImageTask`."""
  from kerasft.tasks import image, text
  from kerasft.tasks.segmentation import task as segmentation
  from kerasft.tasks.tagging import task as tagging
  if isinstance(output, tagging.Tagging):
    return tagging.TaggingTask
  if isinstance(output, segmentation.Segmentation):
    return segmentation.SegmentationTask
  return text.TextTask if model.startswith(TEXT_PREFIX) else image.ImageTask


def output_of(config) -> Output:
  """The `Output` of a `RunConfig`: one head's, or `MultiTask` for several label columns."""
  from kerasft.tasks.multitask import output as multitask
  m, d = config.model, config.data
  flag = "label_key" if (d.tfrecord or d.tfds) else "label_column"
  heads = multitask.declared(m.task, getattr(d, flag), flag)
  if heads:
    return multitask.MultiTask([(name, make_output(kind, m.threshold)) for name, kind in heads],
                               m.task_weights, m.threshold)
  return make_output(m.task, m.threshold)


def for_config(config, backbone=None):
  """The task of a `RunConfig`; `backbone` is an already loaded backbone to reuse."""
  output = output_of(config)
  return modality_class(config.model.model, output)(config, output, backbone)


def check(config) -> None:
  """Raises a UsageError for settings the config's modality or output cannot honour."""
  output = output_of(config)
  d = config.data
  if config.model.task_weights and output.name != "multitask":
    raise UsageError("--task_weights: only for several heads (--label_column=a,b)")
  if config.model.words != "punctuation" and output.name != "tagging":
    raise UsageError(f"--words: only for --task=tagging, not --task={output.name}")
  if (d.conll or d.jsonl) and output.name != "tagging":  # (--tfds serves every task)
    raise UsageError(f"--{d.source}: tagged texts are for --task=tagging, not "
                     f"--task={output.name}")
  for flag, used in (("decoder", config.model.decoder != "deeplabv3plus"),
                     ("mask_classes", d.mask_classes), ("mask_column", d.mask_column != "mask")):
    if used and output.name != "segmentation":
      raise UsageError(f"--{flag}: only for --task=segmentation, not --task={output.name}")
  if d.unlabeled_source and not output.one_label:
    raise UsageError(f"--{d.unlabeled_source}: self-training pseudo-labels one class per "
                     f"example (--task=multiclass), not --task={output.name}")
  output.check(config)
  modality_class(config.model.model, output).check_inputs(config)


def for_card(card: dict):
  """(task class, Output) of an export, from its model card."""
  from kerasft.tasks import image, text
  from kerasft.tasks.multitask import output as multitask
  output = (multitask.MultiTask.from_card(card) if "heads" in card else
            make_output(card.get("task", "multiclass"), card.get("threshold", 0.5)))
  cls = next(c for c in (text.TextTask, image.ImageTask)
             if card.get("input", {}).get("dtype", "float32") == c.INPUT_DTYPE)
  return modality_class("keras_hub:" if cls is text.TextTask else "", output), output


__all__ = ["MAIN_OUTPUTS", "Output", "check", "for_card", "for_config", "make_output",
           "modality_class", "output_of"]
