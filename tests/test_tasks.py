"""Task objects, the training plan and the run folder, without training anything."""

import dataclasses
import os

import numpy as np
import pytest

from conftest import checked
import kerasft
from kerasft.data.source import Source
from kerasft.core import files
from kerasft.training import plan, run_folder
from kerasft.tasks import registry as tasks
from kerasft.core.errors import UsageError
from kerasft.tasks import image, text
from kerasft.tasks.classify import output as outputs


def _config(**model):
  return kerasft.RunConfig(model=kerasft.ModelConfig(**model))


def test_a_task_per_modality_holding_its_output():
  task = tasks.for_config(_config(task="multilabel", threshold=0.3))
  assert isinstance(task, image.ImageTask) and isinstance(task.output, outputs.Multilabel)
  assert task.output.threshold == 0.3
  text_task = tasks.for_config(kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:some/folder", task="regression"),
      data=kerasft.DataConfig(csv="t.csv")))
  assert isinstance(text_task, text.TextTask) and isinstance(text_task.output,
                                                             outputs.Regression)
  assert tasks.for_card({"input": {"dtype": "string"}, "task": "multilabel"})[0] is text.TextTask
  cls, out = tasks.for_card({})
  assert cls is image.ImageTask and out.name == "multiclass"


def test_outputs_turn_labels_into_targets():
  assert tasks.make_output().labels.targets([2, 0], 3).tolist() == [[0, 0, 1], [1, 0, 0]]
  assert tasks.make_output("multilabel").labels.targets([[0, 2], []], 3).tolist() == [[1, 0, 1], [0, 0, 0]]
  assert tasks.make_output("regression").labels.targets([[1.5, 2.0]], 2).tolist() == [[1.5, 2.0]]
  assert tasks.make_output("multilabel").labels.strata([[0], [1]]) is None
  assert tasks.make_output().labels.strata([0, 1]).tolist() == [0, 1]


def test_outputs_read_table_cells():
  rows = [{"y": "cat|dog"}, {"y": ""}, {"y": "dog"}]
  labels, names = tasks.make_output("multilabel").labels.parse_cells(rows, "y", Source("csv", "f.csv"))
  assert names == ["cat", "dog"] and labels == [[0, 1], [], [1]]
  with pytest.raises(UsageError, match="row 2 has an empty 'y'"):
    tasks.make_output().labels.parse_cells(rows, "y", Source("csv", "f.csv"))
  labels, names = tasks.make_output("regression").labels.parse_cells([{"a": "1", "b": "2.5"}], "a,b", Source("csv", "f.csv"))
  assert labels == [[1.0, 2.5]] and names == ["a", "b"]
  with pytest.raises(UsageError, match="^--label_column: one column for --task=multiclass"):
    tasks.make_output().labels.parse_cells(rows, "y,z", Source("csv", "f.csv"))


def test_outputs_name_their_serving_outputs_and_predict_rows():
  import tensorflow as tf
  scores = tf.constant([[0.2, 0.7, 0.1]])
  names = ["a", "b", "c"]
  multiclass = tasks.make_output().serving_outputs(scores, names)
  assert multiclass["classes"].numpy().tolist() == [b"b"]
  multilabel = tasks.make_output("multilabel", 0.15).serving_outputs(scores, names)
  assert multilabel["labels"].numpy().tolist() == [[b"a", b"b", b""]]
  assert tasks.make_output("regression").serving_outputs(scores[:, :1], ["t"])[
      "predictions"].shape == (1,)
  row = tasks.make_output().predict_row("file", "x.png", np.array([0.2, 0.7, 0.1]), names, 2, None)
  assert row == {"file": "x.png", "classes": ["b", "a"], "probabilities": [0.7, 0.2],
                 "error": None}
  assert tasks.make_output("regression").predict_row("file", "x", None, ["t"], 1, "bad")[
      "predictions"] == []


@pytest.mark.parametrize("task, data, flag", [
    ("multilabel", {"data_dir": "d", "class_weight": "balanced"}, "--class_weight"),
    ("regression", {"csv": "t.csv", "mixup": 0.2}, "--mixup"),
    ("regression", {"data_dir": "d"}, "--task=regression"),
])
def test_outputs_refuse_what_they_cannot_honour(task, data, flag):
  with pytest.raises(UsageError, match=f"^{flag}"):
    checked(kerasft.RunConfig(model=kerasft.ModelConfig(task=task),
                              data=kerasft.DataConfig(**data)))


def test_the_plan_names_its_segments():
  training = kerasft.TrainingConfig(epochs=2, fine_tune_epochs=3, fine_tune_learning_rate=0.1)
  head_only = plan.make_plan(kerasft.TrainingConfig(epochs=4), kerasft.ModelConfig(), 14)
  assert [(s.name, s.first, s.last) for s in head_only] == [("head", 0, 4)]
  one = plan.make_plan(training, kerasft.ModelConfig(unfreeze_blocks=2), 14)
  assert [(s.name, s.first, s.last, s.n_blocks, s.learning_rate) for s in one] == [
      ("head", 0, 2, 0, 1e-3), ("fine_tune", 2, 5, 2, 0.1)]
  gradual = plan.make_plan(training, kerasft.ModelConfig(gradual_unfreeze=5), 12)
  assert [(s.name, s.first, s.last, s.n_blocks, s.offset) for s in gradual[1:]] == [
      ("unfreeze_5", 2, 3, 5, 0), ("unfreeze_10", 3, 4, 10, 1), ("unfreeze_12", 4, 5, 12, 2)]
  assert {s.phase_epochs for s in gradual[1:]} == {3}


def test_the_run_folder_owns_its_files(tmp_path):
  config = dataclasses.replace(_config(), model_dir=str(tmp_path / "run")).resolved()
  folder = run_folder.RunFolder(config.model_dir)
  assert not folder.check_new_or_same(config)  # nothing there yet
  folder.start(config, ["a", "b"])
  assert folder.read_config() == config and folder.class_names() == ["a", "b"]
  assert folder.check_new_or_same(config)  # an unfinished run with the same settings
  other = dataclasses.replace(config, training=kerasft.TrainingConfig(epochs=9))
  with pytest.raises(UsageError, match="unfinished run with other settings"):
    folder.check_new_or_same(other)
  assert folder.fit_state() == {"segments_done": 0, "best": None}
  folder.write_fit_state(1, 0.5)
  assert folder.fit_state() == {"segments_done": 1, "best": 0.5}
  folder.finish("export/1", {"train": 1.0})
  assert folder.is_finished()
  with pytest.raises(UsageError, match="already holds a finished run"):
    folder.check_new_or_same(config)
  assert not folder.check_new_or_same(dataclasses.replace(config, overwrite=True))
  assert not [n for n in os.listdir(folder.root) if n.endswith(".tmp")]
  with pytest.raises(UsageError, match="^--run_dir: .*best.keras does not exist"):
    folder.require()


def test_json_is_written_atomically(tmp_path, monkeypatch):
  path = str(tmp_path / "x.json")
  files.write_json({"a": 1}, path)

  def fail(*_):
    raise OSError("disk full")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError):
    files.write_json({"a": 2}, path)
  assert files.read_json(path) == {"a": 1}  # the old content is intact
