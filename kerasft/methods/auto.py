"""--recipe=auto: a data-aware default, in the spirit of BiT's HyperRule (Kolesnikov et al.
2020): the longer schedule and MixUp only for larger data sets, smaller inputs for small
images. The rule per modality is the task's (`Task.auto_settings`); this module applies it
to the settings the user left at their defaults, once the data is indexed.

| data (labelled examples) | images | texts |
| --- | --- | --- |
| up to 16 per class | frozen backbone, convex head | few-shot pairs, then the convex head |
| 17 to 49 per class | frozen backbone, convex head | frozen encoder, convex head |
| 50 per class or more | + fine-tune every block 4 epochs at 1e-4, greedy soup of the top 3 | frozen encoder, convex head |
| 20,000 or more in all | + 8 epochs, cosine schedule, MixUp 0.1 | + fine-tune the top 2 blocks 2 epochs at 5e-5, greedy soup |
| small images (median side 64 px or less) | 128 px inputs where the backbone allows | |
"""

from __future__ import annotations

import dataclasses

from absl import logging

from kerasft.config import ModelConfig, RunConfig, TrainingConfig


def apply(task, train, val, given=frozenset()):
  """The task with its recipe resolved into concrete settings for `train` + `val`:
  --recipe=auto, the task's rule (`Task.auto_settings`); --recipe=default, the task's own
  defaults (`Task.default_settings`: a tagger fine-tunes its encoder, whose frozen features
  lose to a plain fine-tuning script); other recipes, none. Settings the user changed
  from their defaults stay, and so do those named in `given` ("group.name": set by the
  user to their default value, e.g. --image_size=224)."""
  config = task.config
  if config.methods.recipe not in ("auto", "default"):
    return task
  n = len(train.inputs) + len(val.inputs)
  per_class = n / max(len(train.class_names), 1)
  rule = task.auto_settings if config.methods.recipe == "auto" else task.default_settings
  changes, reason = rule(per_class, n, train)
  if not changes:
    return task
  if config.model.unfreezes:  # the user chose what to unfreeze
    changes.pop("model.unfreeze_blocks", None)
  defaults = RunConfig(model=ModelConfig(model=config.model.model), training=TrainingConfig(
      learning_rate=config.training.learning_rate)).resolved()  # as the config's are filled
  groups = {}
  for dotted, value in changes.items():
    group, name = dotted.split(".")
    if dotted not in given and (getattr(getattr(config, group), name) ==
                                getattr(getattr(defaults, group), name)):
      groups.setdefault(group, {})[name] = value
  recipe = groups.setdefault("methods", {}).pop("recipe", "default")
  groups["methods"]["recipe"] = recipe
  resolved = dataclasses.replace(config, **{g: dataclasses.replace(getattr(config, g), **v)
                                            for g, v in groups.items()})
  logging.info("recipe %s (%d examples, %.0f per class): %s; set %s", config.methods.recipe,
               n, per_class, reason,
               ", ".join(f"--{k}={v}" for g in groups.values() for k, v in g.items()) or
               "nothing")
  return task.with_config(resolved, task.backbone)
