"""What every task does the same way, whatever its modality: the model card, checkpoints,
exporting through `kerasft.serving`."""

from __future__ import annotations

import dataclasses

from kerasft.tasks.classify.outputs import Output


class Task:
  """A run's task: its (resolved) `RunConfig`, its modality (the subclass) and its
  `Output`. `backbone` is the loaded backbone once `build_model` has run (or one given to
  reuse). Subclasses say how inputs are read, batched, modelled and served."""
  INPUT_DTYPE = "float32"  # what the export's serving_default takes

  def __init__(self, config, output: Output, backbone=None):
    self.config, self.output, self.backbone = config, output, backbone

  def replace(self, backbone=None, **model_fields) -> "Task":
    """A task of the same kind whose ModelConfig has `model_fields` replaced."""
    config = dataclasses.replace(self.config, model=dataclasses.replace(
        self.config.model, **model_fields))
    return type(self)(config, self.output, backbone or self.backbone)

  @classmethod
  def check_inputs(cls, config) -> None:
    """Raises a UsageError for data or model flags this modality cannot honour."""

  def resolve_data(self) -> "Task":
    """The task with its default data filled in (image tasks: the built-in recipe)."""
    return self

  def auto_settings(self, per_class: float, n: int, train) -> tuple[dict, str]:
    """--recipe=auto's rule for this modality (`kerasft.methods.auto`): ({"group.field":
    value}, why) for `n` labelled examples, `per_class` per class (`train`: the split)."""
    raise NotImplementedError

  def card(self, metrics: dict | None) -> dict:
    """What a version's `model_card.json` says about the model and how it was made."""
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import kerasft  # pylint: disable=g-import-not-at-top
    c, d = self.config, self.config.data
    from kerasft.models import backbones
    prefix = backbones.source(c.model.model)[0]
    card = {"name": c.name, **self.output.card(), "backbone": c.model.model,
            "weights": f"the {prefix[:-1]} model's own" if prefix else c.model.weights,
            "head": list(c.model.head),
            "data": f"{d.source} {getattr(d, d.source)}" if d.source else "",
            "versions": {"kerasft": kerasft.__version__, "tensorflow": tf.__version__,
                         "keras": keras.__version__}}
    card.update(self.input_card())
    if metrics:
      card["validation_metrics"] = _headline_metrics(metrics)
    return card

  def input_card(self) -> dict:
    """The model card's entries about the input (shape, range, preprocessing)."""
    raise NotImplementedError

  def load_model(self, path: str):
    """Loads a .keras checkpoint of this task's model (kerasft's layers registered first)."""
    import keras  # pylint: disable=g-import-not-at-top
    from kerasft.models import heads, hub
    from kerasft.tasks.multitask import graph as multitask_graph
    return keras.saving.load_model(path, compile=False)

  def export(self, model, class_names: list[str], export_dir: str, card: dict,
             version: int | None = None, overwrite: bool = False) -> str:
    """Writes `model` as a TF Serving version of `export_dir` (see `kerasft.serving`).
    LoRA layers are merged into their kernels first (in place; the model computes the
    same), so the export has a full fine-tune's layers and latency."""
    from kerasft.serving import versions as serving
    from kerasft.methods import peft
    peft.merge(model)
    return serving.export(lambda labels_path: self.export_signatures(model, class_names,
                                                                     labels_path),
                          self.output.label_files(class_names), export_dir, version,
                          overwrite,
                          {**card, self.output.names_key: list(class_names)})

  def export_signatures(self, model, class_names: list[str], labels_path: str):
    """A `kerasft.serving.Signatures` for `model` (its module, descriptions, warm-up)."""
    raise NotImplementedError

  def block_table(self) -> str:
    """One line per block of the backbone (what --unfreeze_blocks counts), for --list_blocks."""
    from kerasft.models import backbones
    return "\n".join(f"{name:<28} {len(layers):>3} layers: {', '.join(l.name for l in layers)}"
                     for name, layers in backbones.blocks(self.block_model()))

  def explanation_files(self, model, files, class_ids, out_dir: str) -> list[str]:
    """Writes per-input explanation files (images: Grad-CAM PNGs); returns their paths."""
    return []

  def predict_examples(self, model, files, batch_size: int):
    """(what the report compares with, `model`'s outputs) on `files` (evaluate --run_dir)."""
    from kerasft.reporting import metrics as reports
    return reports.predict(model, self.pipeline(files, batch_size))

  def held_out(self, model, dataset, view=None):
    """(targets, outputs) of `model` on the run's validation examples; view: (head model,
    cached validation features) when the head trained on cached features."""
    from kerasft.reporting import metrics as reports
    return reports.predict(*(view or (model, dataset.val)))

  @staticmethod
  def write_figures(files, labels, outputs, out_dir: str) -> None:
    """Writes figures that need the examples themselves next to the report (segmentation:
    predictions.png, masks over images); `labels`, `outputs` are `files`' own, in order."""

  def check_explain(self) -> None:
    """Raises a UsageError when predict --explain cannot explain this task's outputs."""

  def check_formats(self, formats: tuple[str, ...]) -> None:
    """Raises a UsageError when --format asks for what this task cannot write
    (`kerasft.formats`); images convert to every format."""


def _headline_metrics(metrics: dict) -> dict:
  """`metrics` without the per-class tables (also of each head of several)."""
  return {k: {h: _headline_metrics(m) for h, m in v.items()} if k == "heads" else v
          for k, v in metrics.items() if k not in (
              "per_class", "per_label", "per_target", "confusion_matrix", "type_confusion")}
