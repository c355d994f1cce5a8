"""Self-training on unlabelled examples (--unlabeled_dir, --unlabeled_csv,
--unlabeled_text_dir): pseudo-label selection, honesty, rounds kept or dropped, features
extracted once, and the one-line mistakes."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import call_main, tiny_model, write_color_images, write_unlabeled_colors

import kerasft
import kerasft.data.pipeline
import kerasft.tasks.registry
from kerasft.data import examples as data
from kerasft.training.fit import FitResult
from kerasft.methods import self_training


def test_pseudo_labels_respect_the_threshold_and_the_per_class_cap():
  probabilities = np.array([[0.95, 0.05], [0.6, 0.4], [0.85, 0.15], [0.1, 0.9], [0.99, 0.01]])
  rows, ids = self_training.pseudo_labels(probabilities, 0.8)
  assert rows.tolist() == [0, 2, 3, 4] and ids.tolist() == [0, 0, 1, 0]
  rows, ids = self_training.pseudo_labels(probabilities, 0.8, per_class=2)
  assert rows.tolist() == [0, 3, 4] and ids.tolist() == [0, 1, 0]  # the 2 surest of class 0


def test_unlabelled_examples_that_are_labelled_ones_are_refused(tmp_path):
  a, b = tmp_path / "a.png", tmp_path / "b.png"
  a.write_bytes(b"x")
  b.write_bytes(b"y")
  self_training.check_disjoint([str(b)], [str(a)], "unlabeled_dir")
  with pytest.raises(kerasft.UsageError, match="--unlabeled_dir: 1 unlabelled examples are "
                     "also labelled ones"):
    self_training.check_disjoint([str(tmp_path / "." / "a.png")], [str(a)], "unlabeled_dir")
  with pytest.raises(kerasft.UsageError, match="also labelled"):
    self_training.check_disjoint([b"same bytes"], [b"same bytes"], "unlabeled_csv")


class _Task:
  """What `self_training.run` asks of a task."""

  def __init__(self, config, output=None, backbone=None):
    self.config, self.output = config, output or kerasft.tasks.registry.make_output()
    self.backbone = backbone

  def with_config(self, config, backbone=None):
    return _Task(config, self.output, backbone)


def _fitted(best):
  return FitResult(history={}, best=best, validation_view=None)


@pytest.mark.parametrize("student_best, kept", [(0.9, True), (0.7, False)])
def test_a_round_that_lowers_validation_is_dropped(monkeypatch, tmp_path, student_best, kept):
  config = kerasft.RunConfig(model_dir=str(tmp_path / "run"), data=kerasft.DataConfig(
      data_dir=str(tmp_path), unlabeled_dir=str(tmp_path / "u")),
      methods=kerasft.MethodsConfig(self_training_rounds=2, pseudo_label_threshold=0.8))
  probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
  monkeypatch.setattr(self_training, "teacher_outputs", lambda *a: probabilities)
  monkeypatch.setattr(self_training, "calibrated", lambda *a: 1.0)
  trained = []

  def train(student_task, train, val):
    trained.append((student_task.config, train))
    return f"student{len(trained)}", _fitted(student_best + 0.01 * (len(trained) - 1)), "data"
  labelled = data.Examples(["a.png", "b.png"], [0, 1], ["x", "y"])
  dataset = kerasft.data.pipeline.Dataset(None, None, ["x", "y"], labelled,
                                     data.Examples(["c.png"], [1], ["x", "y"]), None)
  unlabeled = data.Examples([f"u{i}.png" for i in range(3)], [0] * 3, ["x", "y"])
  model, fitted, _, rounds = self_training.run(_Task(config), "teacher", dataset, unlabeled,
                                               _fitted(0.8), train)
  student_config, train_files = trained[0]
  assert train_files.inputs == ["a.png", "b.png", "u0.png", "u1.png"]  # never c.png (val)
  assert train_files.labels == [0, 1, 0, 1]
  assert student_config.model_dir.endswith(os.path.join("self_training", "round_1"))
  assert student_config.training.kfold_below == 0 and not student_config.data.unlabeled_dir
  assert rounds[0].pseudo_labels == {"x": 1, "y": 1} and rounds[0].kept == kept
  assert len(rounds) == (2 if kept else 1)  # a dropped round ends self-training
  assert model == ("student2" if kept else "teacher")


@pytest.mark.parametrize("judged, trained_rounds, model", [
    ([((0.8, -0.5), (0.7, -0.6))], 0, "teacher"),  # no gain: no student is even trained
    ([((0.8, -0.5), (0.9, -0.4)), ((0.9, -0.4), (0.85, -0.5))], 1, "student1"),
])
def test_rounds_are_judged_out_of_fold_before_a_student_trains(monkeypatch, tmp_path, judged,
                                                               trained_rounds, model):
  """The out-of-fold estimate over every labelled example decides; a student it does not
  favour is never trained, and self-training stops there."""
  config = kerasft.RunConfig(model_dir=str(tmp_path / "run"), data=kerasft.DataConfig(
      data_dir=str(tmp_path), unlabeled_dir=str(tmp_path / "u")),
      methods=kerasft.MethodsConfig(self_training_rounds=2, pseudo_label_threshold=0.5))
  monkeypatch.setattr(self_training, "teacher_outputs",
                      lambda *a: np.array([[0.9, 0.1], [0.2, 0.8]]))
  monkeypatch.setattr(self_training, "calibrated", lambda *a: 1.0)
  monkeypatch.setattr(self_training, "judge_out_of_fold", lambda *a: judged)
  trained = []

  def train(student_task, train, val):
    trained.append(train)
    return f"student{len(trained)}", _fitted(0.0), "data"  # validation is not asked
  labelled = data.Examples(["a.png", "b.png"], [0, 1], ["x", "y"])
  dataset = kerasft.data.pipeline.Dataset(None, None, ["x", "y"], labelled,
                                          data.Examples(["c.png"], [1], ["x", "y"]), None)
  unlabeled = data.Examples(["u0.png", "u1.png"], [0, 0], ["x", "y"])
  got, _, _, rounds = self_training.run(_Task(config), "teacher", dataset, unlabeled,
                                        _fitted(0.8), train)
  assert len(trained) == trained_rounds and got == model
  assert [r.kept for r in rounds] == [True] * trained_rounds + [False]
  assert (rounds[-1].before, rounds[-1].after) == (judged[len(rounds) - 1][0][0],
                                                   judged[len(rounds) - 1][1][0])


def _colors(tmp_path):
  """(labelled colour folders, 3 per class, and a folder of 30 unlabelled ones)."""
  labelled = write_color_images(tmp_path / "labelled", per_class=3, size=32)
  return labelled, write_unlabeled_colors(tmp_path / "unlabeled", per_class=10, seed=1)


@pytest.mark.slow
def test_self_training_run_extracts_each_image_once_and_records_its_rounds(tmp_path):
  labelled, unlabeled = _colors(tmp_path)
  result = call_main("train", f"--data_dir={labelled}", f"--unlabeled_dir={unlabeled}",
                     f"--model={tiny_model()}", "--self_training_rounds=2",
                     "--pseudo_label_threshold=0.5", f"--model_dir={tmp_path / 'run'}",
                     f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stderr
  assert "extracting 9 examples" in log  # the teacher's labelled images
  assert "extracting 30 examples (0 extracted earlier in this process)" in log
  assert "every example's features were extracted earlier in this process" in log
  card = json.load(open(tmp_path / "export" / "1" / "model_card.json"))
  rounds = card["self_training"]
  assert 1 <= len(rounds) <= 2 and sum(rounds[0]["pseudo_labels"].values()) > 0
  assert "self-training round 1: out of fold over 9 labelled examples" in log
  # a student is trained only when the out-of-fold estimate says it gains
  assert os.path.isfile(tmp_path / "run" / "self_training" / "round_1" / "best.keras") == (
      rounds[0]["kept"])


@pytest.mark.slow
def test_unlabelled_tfrecords_are_streamed_and_their_pseudo_labels_train(tmp_path):
  import tensorflow as tf
  labelled = write_color_images(tmp_path / "labelled", per_class=3, size=32)
  pool = write_color_images(tmp_path / "pool", per_class=6, size=32, seed=1)
  with tf.io.TFRecordWriter(str(tmp_path / "u.tfrecord")) as writer:
    for name in sorted(os.listdir(pool)):
      for file in sorted(os.listdir(os.path.join(pool, name))):
        encoded = open(os.path.join(pool, name, file), "rb").read()
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "jpeg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))})
        ).SerializeToString())
    writer.write(tf.train.Example(features=tf.train.Features(feature={"jpeg": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[b"not an image"]))})).SerializeToString())
  result = call_main("train", f"--data_dir={labelled}", f"--unlabeled_tfrecord={tmp_path}/*.tfrecord",
                     "--image_key=jpeg", f"--model={tiny_model()}", "--pseudo_label_threshold=0.3",
                     f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "skipping 1 unreadable image(s) from --unlabeled_tfrecord" in result.stderr
  assert "self-training: 18 unlabelled examples from --unlabeled_tfrecord" in result.stderr
  card = json.load(open(tmp_path / "export" / "1" / "model_card.json"))
  assert sum(card["self_training"][0]["pseudo_labels"].values()) > 0


@pytest.mark.parametrize("args, message", [
    (["--unlabeled_dir={missing}"], "--unlabeled_dir: {missing} is not a folder"),
    (["--unlabeled_dir={empty}"], "inputs: no images match"),
    (["--unlabeled_dir={labelled}"], "unlabelled examples are also labelled ones"),
    (["--unlabeled_dir={unlabeled}", "--task=multilabel", "--csv={csv}"],
     "--unlabeled_dir: self-training pseudo-labels one class per example"),
    (["--self_training_rounds=2"], "--self_training_rounds: only goes with unlabelled"),
    (["--unlabeled_text_dir={unlabeled}"], "--unlabeled_text_dir: unlabelled texts are for "
     "text models"),
    (["--unlabeled_dir={unlabeled}", "--unlabeled_csv={csv}"],
     "--unlabeled_csv: pass one source of unlabelled examples"),
])
def test_self_training_mistakes_are_one_line_errors(tmp_path, args, message):
  labelled, unlabeled = _colors(tmp_path)
  (tmp_path / "empty").mkdir()
  (tmp_path / "t.csv").write_text("path,label\n")
  paths = {"missing": str(tmp_path / "nothing"), "empty": str(tmp_path / "empty"),
           "labelled": labelled, "unlabeled": unlabeled, "csv": str(tmp_path / "t.csv")}
  args = [a.format(**paths) for a in args]
  if not any(a.startswith("--csv") for a in args):
    args.append(f"--data_dir={labelled}")
  result = call_main("train", *args, f"--model={tiny_model()}",
                     f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert message.format(**paths) in last, last
  assert not os.path.exists(tmp_path / "export")


@pytest.mark.slow
def test_texts_self_train_from_a_folder_and_a_killed_run_resumes_its_rounds(tmp_path):
  pytest.importorskip("keras_hub", reason="pip install 'kerasft[text]'")
  from test_text import TEXTS, _write_csv, make_tiny_preset
  preset = make_tiny_preset("distil_bert", str(tmp_path / "preset"))
  pool = tmp_path / "pool"
  pool.mkdir()
  for i, words in enumerate(["soup and bread tonight", "wine cheese pasta dinner",
                             "the program crashed again", "unix keyboard mouse update"]):
    (pool / f"{i}.txt").write_text(words)
  args = [f"--model=keras_hub:{preset}", f"--csv={_write_csv(tmp_path / 't.csv', TEXTS, 3)}",
          f"--unlabeled_text_dir={pool}", "--pseudo_label_threshold=0.3",
          f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}"]
  first = call_main("train", *args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "self-training: 4 unlabelled examples from --unlabeled_text_dir" in first.stderr
  assert "self-training round 1:" in first.stderr
  # killed after the rounds, before the export: the rerun reads the rounds back
  shutil.rmtree(tmp_path / "export")
  os.remove(tmp_path / "run" / "state.json")
  again = call_main("train", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming" in again.stderr and "segment head" not in again.stderr
  card = json.load(open(tmp_path / "export" / "1" / "model_card.json"))
  assert card["self_training"][0]["index"] == 1
