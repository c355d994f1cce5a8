"""Several heads on one backbone (`kerasft.tasks.multitask`): a label column per head."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import checked, call_main, tiny_model, write_color_images
import kerasft
from kerasft.data.source import Source
from kerasft.data import tables as sources
from kerasft.core.errors import UsageError
from kerasft.tasks.multitask import data as multitask_data, output as multitask
from kerasft.tasks.classify.output import KINDS

VALUES = {"red": 1.0, "green": 2.0, "blue": 3.0}


def _write_table(tmp_path, per_class=14, missing=0.15, seed=0):
  """Colour squares with three label columns: colour (a class), tone (labels), value (a
  number), each cell missing with probability `missing`."""
  root = write_color_images(tmp_path / "colors", per_class=per_class, size=32)
  rng = np.random.default_rng(seed)
  path = tmp_path / "labels.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "colour", "tone", "value"])
    for c in sorted(VALUES):
      for name in sorted(os.listdir(os.path.join(root, c))):
        cells = [c, "warm" if c == "red" else "cool|calm",
                 f"{VALUES[c] + rng.normal(0, 0.1):.3f}"]
        cells = [v if rng.random() >= missing else "" for v in cells]
        writer.writerow([f"colors/{c}/{name}"] + cells)
  return str(path)


def _config(tmp_path, csv_path, **fields):
  """A checked RunConfig of the table's three heads (`checked`: as a run starts it)."""
  model = {"model": tiny_model(), "task": "multiclass,multilabel,regression",
           **fields.pop("model", {})}
  weights = model.pop("task_weights", ())
  return checked(kerasft.RunConfig(
      model=kerasft.ModelConfig(**model),
      data=kerasft.DataConfig(csv=csv_path, label_column="colour,tone,value", batch_size=8,
                              **fields.pop("data", {})),
      training=kerasft.TrainingConfig(**fields.pop("training", {})),
      tasks=kerasft.TaskSettings.of(task_weights=weights),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"), **fields))


def test_heads_are_declared_by_label_columns_and_tasks():
  assert multitask_data.declared("multiclass", "label") is None
  assert multitask_data.declared("regression", "a,b") is None  # one head, two targets
  assert multitask_data.declared("multiclass", "a,b") == [("a", "multiclass"), ("b", "multiclass")]
  assert multitask_data.declared("multilabel,regression", "a, b") == [("a", "multilabel"),
                                                                  ("b", "regression")]
  for tasks, columns, flag in (("multiclass,regression", "a,b,c", "--task"),
                               ("multiclass,tagging", "a,b", "--task"),
                               ("multiclass", "a,unit price", "--label_column"),
                               ("multiclass", "a,a", "--label_column")):
    with pytest.raises(UsageError, match=flag):
      multitask_data.declared(tasks, columns)


def test_cells_become_one_row_per_example_with_nan_for_missing_labels():
  heads = multitask.MultiTask([("colour", KINDS["multiclass"]()),
                               ("tone", KINDS["multilabel"]()),
                               ("value", KINDS["regression"]())])
  rows = [{"colour": "red", "tone": "warm", "value": "1.5"},
          {"colour": "", "tone": "cool|calm", "value": "3"},
          {"colour": "blue", "tone": "", "value": None}]
  labels, names = heads.labels.parse_cells(rows, "colour,tone,value", Source("csv", "t.csv"))
  assert names == ["colour/blue", "colour/red", "tone/calm", "tone/cool", "tone/warm", "value"]
  got = np.asarray(labels)
  np.testing.assert_array_equal(got[0], [0, 1, 0, 0, 1, 1.5])
  assert np.isnan(got[1, :2]).all() and got[1, 2:].tolist() == [1, 1, 0, 3]
  assert np.isnan(got[2, 2:]).all() and got[2, :2].tolist() == [1, 0]
  assert [p[2] for p in heads.parts(names)] == [(0, 2), (2, 5), (5, 6)]
  # evaluation data is read into the model's columns
  again, same = heads.labels.parse_cells(rows[:1], "colour,tone,value", Source("csv", "t.csv"), names)
  assert same == names and np.asarray(again).shape == (1, 6)
  with pytest.raises(UsageError, match="no 'value' labels"):
    heads.labels.parse_cells([dict(rows[0], value="")], "colour,tone,value", Source("csv", "t.csv"))


def test_the_validation_split_is_stratified_by_the_first_class_head():
  from kerasft.data import examples as data
  heads = multitask.MultiTask([("v", KINDS["regression"]()), ("c", KINDS["multiclass"]())])
  rows = [{"v": str(i), "c": "ab"[i % 2] if i % 5 else ""} for i in range(40)]
  labels, names = heads.labels.parse_cells(rows, "v,c", Source("csv", "t.csv"))
  assert names == ["v", "c/a", "c/b"]
  strata = heads.labels.strata(labels, names)
  assert sorted(set(strata.tolist())) == [-1, 1, 2]
  files = data.Examples([str(i) for i in range(40)], labels, names, heads.labels)
  train, val = data.stratified_split(files, 0.25, 0)
  got = heads.labels.strata(val.labels, names).tolist()
  assert got.count(1) == got.count(2) == 4 and got.count(-1) == 2


def test_missing_labels_do_not_contribute_to_the_loss_or_metrics():
  import keras
  from kerasft.tasks.multitask import graph
  spec = [{"name": "a", "size": 2, "activation": "softmax"},
          {"name": "b", "size": 1, "activation": "linear", "scale": [2.0], "offset": [1.0]}]
  heads = multitask.MultiTask([("a", KINDS["multiclass"]()), ("b", KINDS["regression"]())],
                              weights=(1.0, 0.5), spec=spec)
  loss = heads.loss()
  y = np.array([[1, 0, 3.0], [np.nan, np.nan, 5.0], [0, 1, np.nan]], np.float32)
  p = np.array([[0.8, 0.2, 2.0], [0.5, 0.5, 4.0], [0.3, 0.7, 0.0]], np.float32)
  moved = p.copy()
  moved[1, :2], moved[2, 2] = [0.99, 0.01], 100.0  # only where the labels are missing
  assert float(loss(y, p)) == pytest.approx(float(loss(y, moved)), rel=1e-6)
  ce = -np.log([0.8, 0.7]).mean()  # head a: the two labelled rows
  mse = np.mean(((np.array([3.0, 5.0]) - [2.0, 4.0]) / 2.0) ** 2)  # head b, standardized
  assert float(loss(y, p)) == pytest.approx(ce + 0.5 * mse, rel=1e-5)
  metrics = {m.name: m for m in heads.metrics()}
  for m in metrics.values():
    m.update_state(y, moved)
  assert float(metrics["a_accuracy"].result()) == pytest.approx(1.0)
  assert float(metrics["b_mae"].result()) == pytest.approx(1.0)
  assert isinstance(loss, keras.losses.Loss) and set(metrics) == {"a_accuracy", "b_mae", "b_r2",
                                                                   "score"}
  layer = graph.MultiHead(spec)
  out = np.asarray(layer(np.array([[0.0, 0.0, 1.0]], np.float32)))
  np.testing.assert_allclose(out, [[0.5, 0.5, 3.0]], atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("multitask")
  csv_path = _write_table(tmp_path)
  config = _config(tmp_path, csv_path, data={"validation_split": 0.25})
  return kerasft.run_training(config, verbose=0), tmp_path, csv_path


def test_three_heads_train_export_and_reload_identically(trained):
  import tensorflow as tf
  from kerasft.data import pipeline
  result, tmp_path, _ = trained
  assert result.metrics["task"] == "multitask"
  assert set(result.metrics["heads"]) == {"colour", "tone", "value"}
  assert result.metrics["heads"]["colour"]["accuracy"] >= 0.8, result.metrics["heads"]
  assert result.metrics["score"] == pytest.approx(np.mean(
      [result.metrics["heads"]["colour"]["accuracy"],
       result.metrics["heads"]["tone"]["macro_auc"], result.metrics["heads"]["value"]["r2"]]))
  assert os.path.isfile(tmp_path / "run" / "heads" / "colour" / "confusion_matrix.png")
  assert os.path.isfile(tmp_path / "run" / "heads" / "value" / "predictions.png")
  history = json.loads((tmp_path / "run" / "history.json").read_text())
  assert {"val_score", "val_colour_accuracy", "val_tone_auc", "val_value_mae"} <= set(history)
  export = result.export_path
  card = json.loads(open(os.path.join(export, "model_card.json")).read())
  assert card["task"] == "multitask" and [h["name"] for h in card["heads"]] == [
      "colour", "tone", "value"]
  assert sorted(card["outputs"]) == ["colour/class_ids", "colour/classes",
                                     "colour/probabilities", "tone/labels", "tone/scores",
                                     "value/predictions"]
  assert "per_class" not in card["validation_metrics"]["heads"]["colour"]
  assets = sorted(os.listdir(os.path.join(export, "assets")))
  assert assets == ["labels.txt", "labels_colour.txt", "labels_tone.txt", "labels_value.txt"]
  assert open(os.path.join(export, "assets", "labels_colour.txt")).read().split() == [
      "blue", "green", "red"]
  paths = [str(tmp_path / "colors" / c / "000.png") for c in ("red", "blue")]
  pixels = np.stack([np.asarray(pipeline.decode_and_resize(open(p, "rb").read(), 32))
                     for p in paths])
  expected = np.asarray(result.model(pixels, training=False))
  out = tf.saved_model.load(export).signatures["serving_default"](images=tf.constant(pixels))
  np.testing.assert_allclose(out["colour/probabilities"].numpy(), expected[:, :3], atol=1e-5)
  np.testing.assert_allclose(out["tone/scores"].numpy(), expected[:, 3:6], atol=1e-5)
  np.testing.assert_allclose(out["value/predictions"].numpy(), expected[:, 6], atol=1e-5)
  assert out["colour/classes"].numpy().tolist() == [b"red", b"blue"]
  np.save(tmp_path / "images.npy", pixels)
  for head in ("colour", "tone", "value"):  # saved_model_cli writes KEY.npy: KEY has a "/"
    os.makedirs(tmp_path / "cli" / head)
  run = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                        "run", "--dir", export, "--tag_set", "serve", "--signature_def",
                        "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}",
                        "--outdir", str(tmp_path / "cli")], capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "cli" / "colour" / "probabilities.npy"),
                             expected[:, :3], atol=1e-5)


def test_each_head_is_solved_on_its_own_labelled_examples():
  """A head's convex solve is the single-head solve on the examples that have its label."""
  import keras
  from kerasft.data import examples as data
  from kerasft.training import head_solver
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 8)).astype(np.float32)
  classes = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
  value = x[:, 2] * 3 + 1
  targets = np.zeros((60, 4), np.float32)
  targets[np.arange(60), classes] = 1
  targets[:, 3] = value
  targets[::4, :3] = np.nan  # a quarter without a class
  names = ["c/a", "c/b", "c/c", "v"]
  heads = multitask.MultiTask([("c", KINDS["multiclass"]()), ("v", KINDS["regression"]())])

  def examples(rows, output, labels, class_names):
    return data.Examples([str(i) for i in rows], labels, class_names, output.labels)

  train, val = np.arange(45), np.arange(45, 60)
  multi_train = examples(train, heads, list(targets[train]), names)
  inputs = keras.Input((8,))
  model = keras.Model(inputs, heads.last_layer(inputs, 4, heads.head_stats(multi_train)))
  training = kerasft.TrainingConfig(kfold_below=0)
  head_solver.solve(heads, model, head_solver.Cached(
      x[train], x[val], multi_train, examples(val, heads, list(targets[val]), names)), training)
  has = ~np.isnan(targets[:, 0])
  one = KINDS["multiclass"]()
  t, v = train[has[train]], val[has[val]]
  single = keras.Model(inputs, one.last_layer(inputs, 3))
  head_solver.solve(one, single, head_solver.Cached(
      x[t], x[v], examples(t, one, classes[t].tolist(), names[:3]),
      examples(v, one, classes[v].tolist(), names[:3])), training)
  kernel = model.get_layer("multitask_dense").get_weights()[0]
  np.testing.assert_allclose(kernel[:, :3], single.get_layer("probabilities").get_weights()[0],
                             atol=1e-5)
  prediction = np.asarray(model(x[val]))[:, 3]
  assert np.abs(prediction - value[val]).max() < 0.1  # the ridge head, in the targets' units


def test_evaluate_and_predict_report_every_head(trained, tmp_path):
  result, _, csv_path = trained
  run = call_main("evaluate", f"--export={result.export_path}", f"--csv={csv_path}",
                  f"--output_dir={tmp_path / 'eval'}")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "head colour (multiclass)" in run.stdout and "head value (regression)" in run.stdout
  metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert set(metrics["heads"]) == {"colour", "tone", "value"}
  image = os.path.join(os.path.dirname(csv_path), "colors", "red", "001.png")
  run = call_main("predict", f"--export={result.export_path}", f"--output={tmp_path / 'p.csv'}",
                  image)
  assert run.returncode == 0, run.stderr[-2000:]
  row = next(csv.DictReader(open(tmp_path / "p.csv")))
  assert row["colour/class_1"] == "red" and float(row["value/value"]) == pytest.approx(
      1.0, abs=0.6)
  run = call_main("evaluate", f"--run_dir={result.config.model_dir}",
                  f"--output_dir={tmp_path / 'eval_run'}")
  assert run.returncode == 0 and "score" in run.stdout, run.stderr[-2000:]


def test_heads_fine_tune_by_epochs_with_weights(tmp_path):
  csv_path = _write_table(tmp_path, per_class=8)
  config = _config(tmp_path, csv_path, model={"unfreeze_blocks": 1, "task_weights": (1, 0.5, 2)},
                   training={"head_solver": "epochs", "epochs": 2, "fine_tune_epochs": 1},
                   data={"augment": ("flip",)})
  result = kerasft.run_training(config, verbose=0, export=False)
  assert result.history["phase"] == ["head", "head", "fine_tune"]
  assert np.isfinite(result.history["val_score"]).all() and np.isfinite(
      result.history["loss"]).all()


@pytest.mark.parametrize("fields, flag", [
    ({"model": {"task_weights": (1.0, 2.0)}}, "--task_weights"),
    ({"data": {"class_weight": "balanced"}}, "--class_weight"),
    ({"training": {"calibrate": "temperature"}}, "--calibrate"),
    ({"model": {"task": "multiclass,multilabel"}}, "--task"),
])
def test_multitask_mistakes_are_found_before_any_work(tmp_path, fields, flag):
  csv_path = _write_table(tmp_path, per_class=2)
  with pytest.raises(UsageError, match=flag):
    _config(tmp_path, csv_path, **fields)
  assert not os.path.exists(tmp_path / "run")


def test_multitask_needs_csv_columns_one_line_exit_2(tmp_path):
  colors = write_color_images(tmp_path / "c", per_class=2, size=32)
  run = call_main("train", f"--data_dir={colors}", "--label_column=a,b",
                  f"--model={tiny_model()}", f"--model_dir={tmp_path / 'run'}")
  assert run.returncode == 2 and "error: --task/--label_column" in run.stderr
  assert not os.path.exists(tmp_path / "run")
  with pytest.raises(UsageError, match="--task_weights: only for several heads"):
    checked({"tasks": {"multitask": {"task_weights": [1.0]}}, "data": {"data_dir": colors}})


def test_sources_read_several_heads_for_text_tables(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text("text,topic,score\nsoup and bread,food,1\nthe kernel crashed,computers,\n")
  heads = multitask.MultiTask([("topic", KINDS["multiclass"]()),
                               ("score", KINDS["regression"]())])
  files = sources.read_texts(Source("csv", str(path)), "text", "topic,score", heads.labels)
  assert files.class_names == ["topic/computers", "topic/food", "score"]
  assert np.isnan(files.targets()[1, 2]) and files.targets()[0].tolist() == [0, 1, 1]


@pytest.mark.slow
def test_heads_train_over_two_cpu_replicas(tmp_path):
  from conftest import run_cli
  csv_path = _write_table(tmp_path, per_class=8)
  run = run_cli("train", f"--csv={csv_path}", "--label_column=colour,tone,value",
                "--task=multiclass,multilabel,regression", f"--model={tiny_model()}",
                "--strategy=mirrored", "--cpu_replicas=2", "--batch_size=8",
                "--head_solver=epochs", "--epochs=3", "--learning_rate=0.03",
                f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert run.returncode == 0, run.stderr[-3000:]
  assert "MirroredStrategy: 2 replicas" in run.stderr
  history = json.loads((tmp_path / "run" / "history.json").read_text())
  assert np.isfinite(history["val_score"]).all() and len(history["loss"]) == 3
  assert os.listdir(tmp_path / "export") == ["1"]


def _two_label_tfrecord(path, colors_dir):
  """TFRecord of colour squares with int64 `colour` and `warm` (absent for blue)."""
  import tensorflow as tf
  with tf.io.TFRecordWriter(str(path)) as writer:
    for c, colour in enumerate(sorted(VALUES)):
      for name in sorted(os.listdir(os.path.join(colors_dir, colour))):
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[open(os.path.join(colors_dir, colour, name), "rb").read()])),
                   "colour": tf.train.Feature(int64_list=tf.train.Int64List(value=[c]))}
        if colour != "blue":
          feature["warm"] = tf.train.Feature(int64_list=tf.train.Int64List(
              value=[int(colour == "red")]))
        writer.write(tf.train.Example(features=tf.train.Features(
            feature=feature)).SerializeToString())


def test_tfrecord_label_keys_and_tfds_class_labels_make_heads(tmp_path):
  import tensorflow_datasets as tfds
  from kerasft.data import records
  colors = write_color_images(tmp_path / "colors", per_class=4, size=32)
  _two_label_tfrecord(tmp_path / "d.tfrecord", colors)
  heads = multitask.MultiTask([("colour", KINDS["multiclass"]()),
                               ("warm", KINDS["multiclass"]())])
  files = records.read_tfrecords(Source("tfrecord", str(tmp_path / "d.tfrecord")),
                                 label_key="colour,warm", kind=heads.labels)
  assert files.class_names == ["colour/0", "colour/1", "colour/2", "warm/0", "warm/1"]
  targets = files.targets()
  assert np.isnan(targets[:4, 3:]).all() and targets[4].tolist() == [0, 1, 0, 1, 0]
  with pytest.raises(UsageError, match="--label_names"):
    records.read_tfrecords(Source("tfrecord", str(tmp_path / "d.tfrecord")), label_key="colour,warm",
                           kind=heads.labels, label_names=str(tmp_path / "n.txt"))

  class KerasftTwoLabels(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "colour": tfds.features.ClassLabel(names=sorted(VALUES)),
          "tone": tfds.features.ClassLabel(names=["cool", "warm"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      rng = np.random.default_rng(0)
      for c, colour in enumerate(sorted(VALUES)):
        for i in range(4):
          yield f"{c}-{i}", {"image": rng.integers(0, 255, (32, 32, 3), np.uint8),
                             "colour": c, "tone": int(colour == "red")}

  KerasftTwoLabels(data_dir=str(tmp_path / "tfds")).download_and_prepare()
  heads = multitask.MultiTask([("colour", KINDS["multiclass"]()),
                               ("tone", KINDS["multiclass"]())])
  files = records.read_tfds("kerasft_two_labels", str(tmp_path / "tfds"), "train",
                            label_key="colour,tone", kind=heads.labels)
  assert files.class_names == ["colour/blue", "colour/green", "colour/red", "tone/cool",
                               "tone/warm"]
  assert files.targets().sum(axis=0).tolist() == [4, 4, 4, 8, 4]
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model()),
      data=kerasft.DataConfig(tfds="kerasft_two_labels", tfds_data_dir=str(tmp_path / "tfds"),
                              label_key="colour,tone", batch_size=8),
      model_dir=str(tmp_path / "run"), export_dir="")
  result = kerasft.run_training(config, verbose=0, export=False)
  assert set(result.metrics["heads"]) == {"colour", "tone"}
  with pytest.raises(UsageError, match="--task=regression"):
    checked(kerasft.RunConfig(
        model=kerasft.ModelConfig(model=tiny_model(), task="multiclass,regression"),
        data=kerasft.DataConfig(tfrecord="x", label_key="a,b")))


def test_a_fresh_process_exports_the_run_and_converts_it(trained, tmp_path):
  """The checkpoint loads without the training process's imports; TFLite keeps every head."""
  from conftest import run_cli
  result, _, _ = trained
  run = run_cli("export", f"--run_dir={result.config.model_dir}",
                f"--export_dir={tmp_path / 'export'}", "--format=both")
  assert run.returncode == 0, run.stderr[-3000:]
  card = json.loads((tmp_path / "export" / "1" / "model_card.json").read_text())
  check = card["formats"]["tflite"]["check"]
  assert check["max_difference"] < 1e-4, check
  tflite_card = json.loads((tmp_path / "export" / "tflite" / "1" / "model_card.json").read_text())
  assert "colour/probabilities" in tflite_card["outputs"], tflite_card["outputs"]


def test_evaluate_refuses_slices_of_several_heads_before_reading(trained, tmp_path):
  result, _, csv_path = trained
  run = call_main("evaluate", f"--export={result.export_path}", f"--csv={csv_path}",
                  "--slice_column=colour", f"--output_dir={tmp_path / 'eval'}")
  assert run.returncode == 2 and "error: --slice_column" in run.stderr
  assert not (tmp_path / "eval").exists()
