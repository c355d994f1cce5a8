"""`kerasft.predict`'s work: an export's predictions of files, folders, globs or texts
(`predict`), class maps written as PNGs, and each input's top class explained with the
Keras model of the run that made the export (`explain_inputs`)."""

from __future__ import annotations

import os

import numpy as np

from kerasft.core.errors import UsageError
from kerasft.core.files import read_labels
from kerasft.data import examples as data
from kerasft.reporting import html as html_report, metrics as reports
from kerasft.serving import client
from kerasft.tasks import registry
from kerasft.workflows.load import load_run


def predict(settings, inputs: list) -> list[dict]:
  """predict's rows (`kerasft.serving.client.classify_files`) of `inputs` with the export a
  `PredictConfig` names; with --mask_dir, each image's class map written there (with
  --draw_dir, each image with its boxes drawn); an export without class maps (boxes)
  refuses the flag before predicting."""
  version_dir = client.resolve(settings.export)
  _, output = registry.for_card(client.read_model_card(version_dir))
  output.check_prediction(settings)
  rows = client.classify_files(settings.export, inputs, settings.top_k, settings.batch_size)
  masks = [(row.get("file", ""), row.pop("mask")) for row in rows if "mask" in row]
  if settings.mask_dir:
    output.write_masks(masks, settings.mask_dir, len(read_labels(version_dir)))
  if settings.draw_dir:
    output.write_drawings(rows, settings.draw_dir)
  return rows


def explain_inputs(export: str, inputs: list, out_dir: str, batch_size: int = 32) -> list:
  """Explains each readable input's top class with the Keras model of the run that made
  `export` (its folder from the model card's "run"; checked to give the export's outputs):
  <out_dir>/explanations.html and the modality's files (images: Grad-CAM PNGs). Returns
  the written paths."""
  version_dir = client.resolve(export)
  run_dir = (client.read_model_card(version_dir).get("run") or {}).get("model_dir", "")
  if not run_dir or not os.path.isdir(run_dir):
    raise UsageError(f"--explain: needs the run folder that made {version_dir} (its model "
                     f"card names {run_dir or 'none'}), which is not here; evaluate "
                     "--run_dir explains a run's validation data instead")
  model, task, class_names = load_run(run_dir)
  task.check_explain()
  files = data.Examples(list(inputs), [0] * len(inputs), class_names, task.output.labels)
  outputs = reports.predict(model, task.pipeline(files, batch_size))[1]
  predict, _ = client.load_predictor(version_dir)
  served = client.predict_files(predict, task.client_items(files), batch_size)
  if np.max(np.abs(outputs - served)) > 1e-3:
    raise UsageError(f"--explain: {run_dir}/best.keras no longer computes what {version_dir} "
                     "serves (retrained or changed since); export the run again")
  class_ids = np.asarray(outputs).reshape(len(outputs), -1).argmax(-1).tolist()
  os.makedirs(out_dir, exist_ok=True)
  names = task.output.caption_names(class_names)
  captions = [f"{names[c]} ({np.ravel(o)[c]:.3g})" for c, o in zip(class_ids, outputs)]
  cards = task.cards(model, files)(list(range(len(inputs))), class_ids, captions)
  page = os.path.join(out_dir, "explanations.html")
  html_report.write(page, f"kerasft explanations: {version_dir}", [(
      "Explanations", lambda: '<div class="gallery">' + "".join(cards) + "</div>")])
  return [page] + task.explanation_files(model, files, class_ids, out_dir)
