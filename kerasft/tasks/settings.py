"""The registry's settings half: the task names and each task's own settings groups,
composed into the run's config (`RunConfig.tasks`, `DataConfig.task_data`). Flags stay
flat: `kerasft.core.cli` makes one flag per field of the nested groups.

A task's settings live in its folder (`tasks/<task>/settings.py`, no TensorFlow); adding
a task adds its groups here and its classes to `kerasft.tasks.registry`.
"""

from __future__ import annotations

import dataclasses

from kerasft.core.settings import setting
from kerasft.tasks.detection.settings import DetectionData, DetectionSettings
from kerasft.tasks.multitask.settings import MultitaskSettings
from kerasft.tasks.segmentation.settings import SegmentationData, SegmentationSettings
from kerasft.tasks.tagging.settings import TaggingData, TaggingSettings

HEAD_KINDS = ("multiclass", "multilabel", "regression")  # a head of several is one of these
TASKS = HEAD_KINDS + ("tagging", "segmentation", "detection")


@dataclasses.dataclass(frozen=True)
class TaskSettings:
  """Each task's model and training settings, a group per task."""
  tagging: TaggingSettings = setting(factory=TaggingSettings)
  segmentation: SegmentationSettings = setting(factory=SegmentationSettings)
  detection: DetectionSettings = setting(factory=DetectionSettings)
  multitask: MultitaskSettings = setting(factory=MultitaskSettings)

  def changed(self) -> list[tuple[str, str, str]]:
    """(task, flag, what the group is for) of every setting changed from its default."""
    return _changed(self)

  @classmethod
  def of(cls, **flags) -> "TaskSettings":
    """The groups from flat flag names (`words="whitespace"`, `decoder="fpn"`)."""
    return _of(cls, flags)


@dataclasses.dataclass(frozen=True)
class TaskData:
  """Each task's own data sources and reading options, a group per task."""
  tagging: TaggingData = setting(factory=TaggingData)
  segmentation: SegmentationData = setting(factory=SegmentationData)
  detection: DetectionData = setting(factory=DetectionData)

  def sources(self) -> list[str]:
    """The flags of the task data sources given (a run has one data source)."""
    return [flag for group in self._groups() for flag in group.SOURCES
            if getattr(group, flag)]

  def paths(self) -> dict:
    """{group: {flag: path}} of every path given, to be made absolute."""
    return {f.name: {p: getattr(g, p) for p in g.PATHS if getattr(g, p)}
            for f, g in zip(dataclasses.fields(self), self._groups())}

  def with_paths(self, fix) -> "TaskData":
    """A copy with every given path replaced by fix(path)."""
    return dataclasses.replace(self, **{
        name: dataclasses.replace(getattr(self, name), **{k: fix(v) for k, v in paths.items()})
        for name, paths in self.paths().items()})

  def changed(self) -> list[tuple[str, str, str]]:
    """(task, flag, what the group is for) of every setting changed from its default."""
    return _changed(self)

  @classmethod
  def of(cls, **flags) -> "TaskData":
    """The groups from flat flag names (`conll=...`, `mask_column=...`)."""
    return _of(cls, flags)

  @classmethod
  def evaluation_fields(cls) -> tuple[str, ...]:
    """The flags of every group that evaluation data takes (all but the val_ ones)."""
    return tuple(f.name for group in dataclasses.fields(cls)
                 for f in dataclasses.fields(group.default_factory)
                 if not f.name.startswith("val_"))

  def _groups(self):
    return [getattr(self, f.name) for f in dataclasses.fields(self)]


def _of(cls, flags: dict):
  """An instance of a groups dataclass (`TaskSettings`, `TaskData`) from flat flag names;
  a name no group has is a TypeError, as for any dataclass."""
  groups = {}
  for field in dataclasses.fields(cls):
    names = {f.name for f in dataclasses.fields(field.default_factory)}
    mine = {k: flags.pop(k) for k in list(flags) if k in names}
    groups[field.name] = field.default_factory(**mine)
  if flags:
    raise TypeError(f"{cls.__name__}: unknown settings {sorted(flags)}")
  return cls(**groups)


def _changed(groups) -> list[tuple[str, str, str]]:
  """(task, flag, what the group is for) of every field of `groups`' groups not at its
  default."""
  out = []
  for field in dataclasses.fields(groups):
    group = getattr(groups, field.name)
    default = type(group)()
    out += [(field.name, f.name, group.FOR) for f in dataclasses.fields(group)
            if getattr(group, f.name) != getattr(default, f.name)]
  return out


def migrated(d: dict) -> dict:
  """A config.json dict written before the task groups existed (their fields flat in
  "model" and "data"), with those fields moved into "tasks" and "data.task_data"."""
  d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
  for key, holder, groups in (("tasks", "model", TaskSettings),
                              ("task_data", "data", TaskData)):
    flat = d.get(holder, {})
    target = d.setdefault(key, {}) if key == "tasks" else flat.setdefault(key, {})
    for field in dataclasses.fields(groups):
      group_class = field.default_factory  # pylint: disable=no-member
      for name in (f.name for f in dataclasses.fields(group_class)):
        if name in flat:
          target.setdefault(field.name, {})[name] = flat.pop(name)
  return d
