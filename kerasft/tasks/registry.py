"""The registry: task names -> their `Output` and `Task` classes, and the task of a run's
config or of an export's model card.

    task = registry.for_config(run_config)   # ImageTask/TextTask or a task's own class
    task_class, output = registry.for_card(model_card)

A task is made of its modality's class (images, texts, or the task folder's own) and one
`Output`; several heads on one backbone are one `MultiTask` output holding an `Output`
per head. Adding a task: its folder, its classes here, its settings groups in
`kerasft.tasks.settings`.
"""

from __future__ import annotations

from kerasft.config import checks
from kerasft.core.errors import UsageError
from kerasft.tasks import image, text
from kerasft.tasks.base import Output, Task
from kerasft.tasks.classify.output import KINDS
from kerasft.tasks.detection.output import Detection
from kerasft.tasks.detection.task import DetectionTask
from kerasft.tasks.multitask.data import declared
from kerasft.tasks.multitask.output import MultiTask
from kerasft.tasks.segmentation.output import Segmentation
from kerasft.tasks.segmentation.task import SegmentationTask
from kerasft.tasks.tagging.output import Tagging
from kerasft.tasks.tagging.task import TaggingTask

OUTPUTS = {**KINDS, "tagging": Tagging, "segmentation": Segmentation, "detection": Detection}
TASK_CLASSES = {"tagging": TaggingTask, "segmentation": SegmentationTask,
                "detection": DetectionTask}  # else a modality's


def make_output(task: str = "multiclass", threshold: float = 0.5) -> Output:
  """The Output for one --task name."""
  return OUTPUTS[task](threshold)


def modality_class(model: str, output: Output | None = None) -> type:
  """The task class of a --model value and an output: the output's own task class, else
  `TextTask` for keras_hub: encoders, else `ImageTask`."""
  if output is not None and output.name in TASK_CLASSES:
    return TASK_CLASSES[output.name]
  return text.TextTask if model.startswith(text.TEXT_PREFIX) else image.ImageTask


def reads_texts(model: str) -> bool:
  """Whether a --model value is a text encoder (a task of texts)."""
  return modality_class(model) is text.TextTask


def output_of(config) -> Output:
  """The `Output` of a `RunConfig`: one head's, or `MultiTask` for several label columns."""
  m, d = config.model, config.data
  flag = "label_key" if (d.tfrecord or d.tfds) else "label_column"
  heads = declared(m.task, getattr(d, flag), flag)
  if heads:
    return MultiTask([(name, make_output(kind, m.threshold)) for name, kind in heads],
                     config.tasks.multitask.task_weights, m.threshold)
  return make_output(m.task, m.threshold)


def for_config(config, backbone=None) -> Task:
  """The task of a `RunConfig`; `backbone` is an already loaded backbone to reuse."""
  output = output_of(config)
  return modality_class(config.model.model, output)(config, output, backbone)


def check(config) -> None:
  """Every check across a run's settings, once, before anything is read: the groups'
  (`kerasft.config.checks`), then what the task's output and modality cannot honour."""
  checks.check_run(config)
  output = output_of(config)
  group = "multitask" if isinstance(output, MultiTask) else output.name
  for task, flag, what in config.tasks.changed() + config.data.task_data.changed():
    if task != group:
      raise UsageError(f"--{flag}: {what}, not --task={output.name}")
  if config.methods.teacher and not output.distills:
    raise UsageError(f"--teacher: distils into classifiers (--task=multiclass or multilabel), "
                     f"not --task={output.name}")
  if (config.data.unlabeled_source and not config.methods.teacher
      and output.labels.task != "multiclass"):
    raise UsageError(f"--{config.data.unlabeled_source}: self-training pseudo-labels one "
                     f"class per example (--task=multiclass), not --task={output.name}")
  output.check(config)
  modality_class(config.model.model, output).check_inputs(config)


def for_card(card: dict) -> tuple[type, Output]:
  """(task class, Output) of an export, from its model card."""
  output = (MultiTask.from_card(card) if "heads" in card else
            make_output(card.get("task", "multiclass"), card.get("threshold", 0.5)))
  texts = card.get("input", {}).get("dtype", "float32") == "string"
  return modality_class(text.TEXT_PREFIX if texts else "", output), output
