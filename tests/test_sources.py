"""Data sources (--csv, --tfrecord, --tfds), tasks (multilabel, regression) and the training
pipeline's MixUp/CutMix, oversampling and file cache."""

import csv
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import checked, COLORS, call_main, output, run_cli, tiny_model
from conftest import write_color_images
import kerasft
from kerasft.data.source import Source
from kerasft.data import examples as data, pipeline, records, tables as sources, folders
from kerasft.core.files import read_labels
from kerasft.core.errors import UsageError

# Per color: multilabel tags and a regression target ("redness").
TAGS = {"blue": "cool", "green": "cool|natural", "red": "warm"}
REDNESS = {"blue": 0.0, "green": 0.25, "red": 1.0}


def _write_csv(path, folder, rows_per_class=None, tags=False):
  """A CSV of color images (paths relative to the CSV) with label, tags and redness."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label", "tags", "redness", "blueness"])
    for color in sorted(os.listdir(folder)):
      names = sorted(os.listdir(os.path.join(folder, color)))[:rows_per_class]
      for name in names:
        rel = os.path.relpath(os.path.join(folder, color, name), os.path.dirname(path))
        writer.writerow([rel, color, TAGS[color], REDNESS[color], COLORS[color][2] / 255])
  return str(path)


def _write_tfrecord(path, folder, label_ids=None, image_key="image/encoded",
                    label_key="image/class/label"):
  """TFRecord of tf.train.Examples from color class folders; returns the class order."""
  classes = sorted(os.listdir(folder))
  with tf.io.TFRecordWriter(str(path)) as writer:
    for c, color in enumerate(classes):
      for name in sorted(os.listdir(os.path.join(folder, color))):
        with open(os.path.join(folder, color, name), "rb") as f:
          encoded = f.read()
        ids = label_ids[color] if label_ids else [c]
        example = tf.train.Example(features=tf.train.Features(feature={
            image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
            label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=ids))}))
        writer.write(example.SerializeToString())
  return classes


def _config(tmp_path, data_config, **model):
  return kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model(), **model),
      data=dataclasses.replace(data_config, batch_size=8),
      training=kerasft.TrainingConfig(epochs=6, learning_rate=0.03),
      name="m", model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))


def _serve(export_path, signature, **inputs):
  fn = tf.saved_model.load(export_path).signatures[signature]
  return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


# ---- CSV -------------------------------------------------------------------------------

def test_csv_reads_paths_relative_to_its_folder_and_each_task(tmp_path):
  colors = write_color_images(tmp_path / "img" / "colors", per_class=3, size=16)
  path = _write_csv(tmp_path / "img" / "labels.csv", colors)
  files = sources.read_csv(Source("csv", path))
  assert files.class_names == ["blue", "green", "red"] and len(files.inputs) == 9
  assert all(os.path.isfile(p) for p in files.inputs)
  multi = sources.read_csv(Source("csv", path), label_column="tags", kind=output("multilabel").labels)
  assert multi.class_names == ["cool", "natural", "warm"]
  green = multi.targets()[np.asarray(files.labels) == 1]
  np.testing.assert_array_equal(green, [[1, 1, 0]] * 3)
  regression = sources.read_csv(Source("csv", path), label_column="redness,blueness", kind=output("regression").labels)
  assert regression.class_names == ["redness", "blueness"]
  assert regression.targets().shape == (9, 2)
  np.testing.assert_allclose(regression.targets()[np.asarray(files.labels) == 2, 0], 1.0)


def test_tsv_and_val_csv_with_an_unknown_class(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_text("path\tlabel\na.png\tcat\nb.png\tdog\n")
  assert sources.read_csv(Source("csv", str(path))).class_names == ["cat", "dog"]
  val = tmp_path / "val.csv"
  val.write_text("path,label\nc.png,bird\n")
  with pytest.raises(UsageError, match=r"^--val_csv: .* classes \['bird'\]"):
    sources.read_csv(Source("val_csv", str(val)), class_names=["cat", "dog"])


@pytest.mark.parametrize("content, kwargs, message", [
    ("file,label\na.png,x\n", {}, r"^--csv: .* has no column 'path' \(columns: file, label\)"),
    ("path,label\na.png,x\nb.png,\n", {}, r"^--csv: .* row 2 has an empty 'label'"),
    ("path,label\na.png,high\n", {"kind": output("regression").labels}, r"^--csv: .* row 1: .* numbers"),
    ("path,label\n", {}, r"^--csv: .* has no rows"),
])
def test_bad_csv_files_are_one_line_errors(tmp_path, content, kwargs, message):
  path = tmp_path / "d.csv"
  path.write_text(content)
  with pytest.raises(UsageError, match=message) as e:
    sources.read_csv(Source("csv", str(path)), **kwargs)
  assert "\n" not in str(e.value)


def test_missing_files_in_a_csv_are_skipped_or_refused(tmp_path, caplog):
  import logging
  colors = write_color_images(tmp_path / "colors", per_class=3, size=16)
  path = _write_csv(tmp_path / "labels.csv", colors)
  with open(path, "a") as f:
    f.write("colors/red/gone.png,red,warm,1.0,0.1\n")
  config = kerasft.DataConfig(csv=path)
  with caplog.at_level(logging.WARNING):
    train, val = sources.index_images(config)
  assert len(train.inputs) + len(val.inputs) == 9
  assert any("gone.png" in r.getMessage() for r in caplog.records)
  with pytest.raises(UsageError,
                     match="^--strict_data: 1 unreadable image.* from --csv, first: .*gone.png"):
    sources.index_images(kerasft.DataConfig(csv=path, strict_data=True))


def test_csv_trains_and_exports_through_the_cli(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=10, size=32)
  train_csv = _write_csv(tmp_path / "train.csv", colors, rows_per_class=7)
  val_csv = tmp_path / "val.csv"
  rows = open(train_csv).read().splitlines()
  all_csv = _write_csv(tmp_path / "all.csv", colors)
  held_out = [r for r in open(all_csv).read().splitlines()[1:] if r not in rows]
  val_csv.write_text("\n".join([rows[0]] + held_out) + "\n")
  result = call_main("train", f"--csv={train_csv}", f"--val_csv={val_csv}",
                     f"--model={tiny_model()}", "--epochs=4", "--learning_rate=0.03",
                     "--batch_size=8", f"--model_dir={tmp_path / 'run'}",
                     f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "data: 21 training and 9 validation images, 3 classes" in result.stderr
  import json
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  # 10 images per class: the head is chosen by k-fold over all 30 labelled images
  assert metrics["num_examples"] == 30 and "all 30 labelled" in metrics["validated_on"]
  assert metrics["accuracy"] > 0.6  # chance is 1/3
  out = _serve(str(tmp_path / "export" / "1"), "serving_bytes",
               image_bytes=[open(os.path.join(colors, "red", "000.png"), "rb").read()])
  assert set(out) == {"probabilities", "class_ids", "classes"}


# ---- Tasks ------------------------------------------------------------------------------

def test_multilabel_head_trains_and_exports_scores_and_labels(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=12, size=32)
  path = _write_csv(tmp_path / "labels.csv", colors)
  config = _config(tmp_path, kerasft.DataConfig(csv=path, label_column="tags"),
                   task="multilabel", threshold=0.4)
  result = kerasft.run_training(config, verbose=0)
  assert result.class_names == ["cool", "natural", "warm"]
  assert {"val_auc", "val_f1", "auc"} <= set(result.history)
  assert result.metrics["task"] == "multilabel" and "macro_auc" in result.metrics
  assert result.metrics["macro_auc"] > 0.75  # chance is 0.5
  images = np.stack([np.asarray(pipeline.decode_and_resize(
      open(os.path.join(colors, c, "001.png"), "rb").read(), 32)) for c in ("blue", "green")])
  out = _serve(result.export_path, "serving_default", images=images)
  assert set(out) == {"scores", "labels"}
  assert out["scores"].shape == (2, 3) and out["labels"].shape == (2, 3)
  np.testing.assert_allclose(out["scores"], result.model(images), atol=1e-5)
  expected = np.where(out["scores"] >= 0.4, np.asarray(result.class_names, object), "")
  assert out["labels"].astype(str).tolist() == expected.astype(str).tolist()
  card = read_labels(result.export_path)
  assert card == ["cool", "natural", "warm"]
  tflite = call_main("export", f"--run_dir={tmp_path / 'run'}", "--format=tflite",
                     f"--export_dir={tmp_path / 'tfl'}")  # no top-1 agreement for scores
  assert tflite.returncode == 0, tflite.stderr[-2000:]
  assert "largest difference" in tflite.stdout and "top-1" not in tflite.stdout


def test_regression_head_trains_and_exports_predictions(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=12, size=32)
  path = _write_csv(tmp_path / "labels.csv", colors)
  config = _config(tmp_path, kerasft.DataConfig(csv=path, label_column="redness"),
                   task="regression")
  config = dataclasses.replace(config, training=kerasft.TrainingConfig(epochs=10,
                                                                      learning_rate=0.01))
  result = kerasft.run_training(config, verbose=0)
  assert {"mae", "val_mae"} <= set(result.history)
  assert result.metrics["task"] == "regression"
  assert (tmp_path / "run" / "predictions.png").stat().st_size > 0
  red, blue = (np.stack([np.asarray(pipeline.decode_and_resize(
      open(os.path.join(colors, c, f"{i:03d}.png"), "rb").read(), 32)) for i in range(12)])
               for c in ("red", "blue"))
  out = _serve(result.export_path, "serving_default", images=np.concatenate([red, blue]))
  assert set(out) == {"predictions"} and out["predictions"].shape == (24,)
  np.testing.assert_allclose(out["predictions"], np.asarray(result.model(
      np.concatenate([red, blue])))[:, 0], atol=1e-5)
  # red images are predicted redder than blue ones
  assert out["predictions"][:12].mean() > out["predictions"][12:].mean() + 0.3
  # evaluate and predict read the task from the export
  run = call_main("evaluate", f"--export={result.export_path}", f"--csv={path}",
                f"--output_dir={tmp_path / 'eval'}")
  assert run.returncode == 0, run.stderr[-3000:]
  import json
  metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert metrics["task"] == "regression" and metrics["num_examples"] == 36
  assert "redness" in run.stdout and "r2" in run.stdout
  run = call_main("predict", f"--export={result.export_path}",
                f"--output={tmp_path / 'p.csv'}", os.path.join(colors, "red"))
  assert run.returncode == 0, run.stderr[-3000:]
  lines = (tmp_path / "p.csv").read_text().splitlines()
  assert lines[0] == "file,redness,error" and len(lines) == 13
  first = float(lines[1].split(",")[1])
  assert abs(first - out["predictions"][0]) < 1e-4


def test_two_regression_targets_give_predictions_of_width_two(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=4, size=32)
  path = _write_csv(tmp_path / "labels.csv", colors)
  config = _config(tmp_path, kerasft.DataConfig(csv=path, label_column="redness,blueness"),
                   task="regression")
  config = dataclasses.replace(config, training=kerasft.TrainingConfig(epochs=1))
  result = kerasft.run_training(config, verbose=0)
  out = _serve(result.export_path, "serving_default", images=np.zeros((3, 32, 32, 3), np.float32))
  assert out["predictions"].shape == (3, 2)
  assert set(result.metrics["per_target"]) == {"redness", "blueness"}


# ---- TFRecord ---------------------------------------------------------------------------

def test_tfrecord_ids_as_names_or_from_label_names(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=3, size=16)
  _write_tfrecord(tmp_path / "a.tfrecord", colors,
                  label_ids={"blue": [2], "green": [5], "red": [7]})
  files = records.read_tfrecords(Source("tfrecord", str(tmp_path / "*.tfrecord")))
  assert files.class_names == ["2", "5", "7"]
  assert files.streams and files.inputs[0].endswith("a.tfrecord#0")  # streamed, not held
  assert files.name(0).endswith("a.tfrecord#0")
  names = tmp_path / "names.txt"
  names.write_text("\n".join(f"class{i}" for i in range(8)) + "\n")
  named = records.read_tfrecords(Source("tfrecord", str(tmp_path / "*.tfrecord")), label_names=str(names))
  assert len(named.class_names) == 8 and named.class_names[7] == "class7"
  assert sorted(set(named.labels)) == [2, 5, 7]
  names.write_text("a\nb\n")
  with pytest.raises(UsageError, match="^--tfrecord: .* label id 2, but --label_names"):
    records.read_tfrecords(Source("tfrecord", str(tmp_path / "*.tfrecord")), label_names=str(names))


def test_tfrecord_with_several_label_ids_is_multilabel(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=2, size=16)
  _write_tfrecord(tmp_path / "m.tfrecord", colors,
                  label_ids={"blue": [0], "green": [0, 1], "red": [2]})
  files = records.read_tfrecords(Source("tfrecord", str(tmp_path / "m.tfrecord")), kind=output("multilabel").labels)
  assert files.class_names == ["0", "1", "2"]
  np.testing.assert_array_equal(files.targets()[2:4], [[1, 1, 0], [1, 1, 0]])
  with pytest.raises(UsageError, match="has 2 'image/class/label' values; a multiclass"):
    records.read_tfrecords(Source("tfrecord", str(tmp_path / "m.tfrecord")))


def test_tfrecord_with_other_keys_and_bad_records(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=2, size=16)
  _write_tfrecord(tmp_path / "b.tfrecord", colors, image_key="jpeg", label_key="y")
  with pytest.raises(UsageError, match="^--tfrecord: .* has no 'image/encoded' feature"):
    records.read_tfrecords(Source("tfrecord", str(tmp_path / "b.tfrecord")))
  files = records.read_tfrecords(Source("tfrecord", str(tmp_path / "b.tfrecord")), "jpeg", "y")
  assert len(files.inputs) == 6
  (tmp_path / "junk.tfrecord").write_bytes(b"not a tfrecord file at all")
  with pytest.raises(UsageError, match="^--tfrecord: .*junk.tfrecord is not a TFRecord"):
    records.read_tfrecords(Source("tfrecord", str(tmp_path / "junk.tfrecord")))
  with pytest.raises(UsageError, match="^--tfrecord: no files match"):
    records.read_tfrecords(Source("tfrecord", str(tmp_path / "none-*.tfrecord")))


def test_tfrecord_trains_and_exports_with_class_names(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=10, size=32)
  write_color_images(tmp_path / "bad", per_class=1, size=32)
  with open(os.path.join(tmp_path, "bad", "red", "000.png"), "wb") as f:
    f.write(b"broken")  # one unreadable record: skipped with a warning
  _write_tfrecord(tmp_path / "train-00000.tfrecord", colors)
  _write_tfrecord(tmp_path / "train-00001.tfrecord", str(tmp_path / "bad"))
  names = tmp_path / "names.txt"
  names.write_text("blue\ngreen\nred\n")
  config = _config(tmp_path, kerasft.DataConfig(tfrecord=str(tmp_path / "train-*.tfrecord"),
                                                label_names=str(names)))
  result = kerasft.run_training(config, verbose=0)
  assert result.class_names == ["blue", "green", "red"]
  assert len(result.history["loss"]) == 1  # the head is solved, not trained for --epochs
  assert (len(sources.index_images(config.data)[0].inputs)
          + len(sources.index_images(config.data)[1].inputs)) == 32
  out = _serve(result.export_path, "serving_bytes",
               image_bytes=[open(os.path.join(colors, "green", "003.png"), "rb").read()])
  assert out["classes"].shape == (1,)
  assert result.metrics["accuracy"] > 0.6


# ---- TFDS -------------------------------------------------------------------------------

def _prepare_tiny_tfds(data_dir):
  """Prepares a 3-class color data set ("kerasft_colors", train and validation splits) in
  `data_dir`, as `tfds build` would; nothing is downloaded. Not registered: readers find
  it from its files, as a user's process would."""
  import tensorflow_datasets as tfds

  class KerasftColors(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=list(COLORS))}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 10),
              "validation": self._generate_examples(1, 4)}

    def _generate_examples(self, seed, n):
      rng = np.random.default_rng(seed)
      for c, rgb in enumerate(COLORS.values()):
        for i in range(n):
          pixels = np.clip(np.asarray(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255)
          yield f"{c}-{i}", {"image": pixels.astype(np.uint8), "label": c}

  KerasftColors(data_dir=str(data_dir)).download_and_prepare()


@pytest.mark.slow
def test_tfds_prepared_in_a_data_dir_trains_through_the_cli(tmp_path):
  _prepare_tiny_tfds(tmp_path / "tfds")
  result = run_cli("train", "--tfds=kerasft_colors", f"--tfds_data_dir={tmp_path / 'tfds'}",
                   f"--model={tiny_model()}", "--epochs=4",
                   "--learning_rate=0.03", "--batch_size=8", f"--model_dir={tmp_path / 'run'}",
                   f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 0, result.stderr[-3000:]
  # Its own validation split (4 per class), not a split of train.
  assert "data: 30 training and 12 validation images, 3 classes (blue, green, red)" in \
      result.stderr
  assert read_labels(str(tmp_path / "export" / "1")) == ["blue", "green", "red"]


def test_tfds_split_syntax_and_keys(tmp_path):
  _prepare_tiny_tfds(tmp_path / "tfds")
  files = records.read_tfds("kerasft_colors", str(tmp_path / "tfds"), "train[:50%]")
  assert len(files.inputs) == 15 and files.class_names == ["blue", "green", "red"]
  with pytest.raises(UsageError, match="^--image_key: kerasft_colors has no feature 'photo'"):
    records.read_tfds("kerasft_colors", str(tmp_path / "tfds"), "train", image_key="photo")
  with pytest.raises(UsageError, match="^--train_split/--val_split: .* no split 'dev'"):
    records.read_tfds("kerasft_colors", str(tmp_path / "tfds"), "dev")


def test_tfds_names_take_a_config_after_a_colon():
  assert records.tfds_name("mnist") == "mnist"
  assert records.tfds_name("cifar10_corrupted:brightness_1") == "cifar10_corrupted/brightness_1"
  assert records.tfds_name("cifar10_corrupted:brightness_1:1.0.0") == \
      "cifar10_corrupted/brightness_1:1.0.0"
  assert records.tfds_name("mnist:3.0.1") == "mnist:3.0.1"
  assert records.tfds_name("mnist/x:3.*") == "mnist/x:3.*"


def test_tfds_mock_data_trains_and_exports(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=40):
    config = _config(tmp_path, kerasft.DataConfig(tfds="mnist", validation_split=0.25))
    config = dataclasses.replace(config, training=kerasft.TrainingConfig(epochs=1))
    result = kerasft.run_training(config, verbose=0)
  assert result.class_names == [str(i) for i in range(10)]
  assert os.path.isfile(os.path.join(result.export_path, "saved_model.pb"))


def test_tfds_offline_with_nothing_prepared_is_a_one_line_error(tmp_path):
  result = call_main("train", "--tfds=mnist", f"--tfds_data_dir={tmp_path / 'empty'}",
                     f"--model_dir={tmp_path / 'run'}")
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --tfds: mnist is not prepared in ")
  assert str(tmp_path / "empty") in last and "tfds build mnist" in last
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
  result = call_main("train", "--tfds=no_such_dataset_xyz", cwd=tmp_path)
  assert result.returncode == 2 and "error: --tfds: no data set 'no_such_dataset_xyz'" in \
      result.stderr


# ---- Pipeline ---------------------------------------------------------------------------

def _batch(n=8, size=8):
  """One batch, repeated: image i is the constant 10 * i and its target is class i."""
  images = np.stack([np.full((size, size, 3), 10.0 * i, np.float32) for i in range(n)])
  return tf.data.Dataset.from_tensors((images, np.eye(n, dtype=np.float32))).repeat(4)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_mix_images_and_targets_alike(mixup, cutmix):
  values = np.arange(8) * 10.0
  first = list(pipeline.mix(_batch(), mixup, cutmix, seed=3).as_numpy_iterator())
  again = list(pipeline.mix(_batch(), mixup, cutmix, seed=3).as_numpy_iterator())
  changed = 0.0
  for (x, y), (x2, _) in zip(first, again):
    np.testing.assert_array_equal(x, x2)  # seeded
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
    assert ((y > 1e-6).sum(axis=1) <= 2).all()  # itself and one partner
    # Each image is its own and its partner's in the proportions its target says.
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), y @ values, atol=1e-3)
    changed = max(changed, float(np.abs(x.mean(axis=(1, 2, 3)) - values).max()))
    if not mixup:  # CutMix: every pixel comes from one of the two images
      for i in range(8):
        partners = values[y[i] > 1e-6]
        assert np.isin(x[i], partners).all()
  assert changed > 0


def test_oversample_balances_the_classes():
  files = data.Examples([f"{i}.png" for i in range(10)], [0] * 7 + [1] * 2 + [2], list("abc"))
  out = data.oversampled(files, seed=0)
  assert np.bincount(out.labels).tolist() == [7, 7, 7]
  assert set(files.inputs) <= set(out.inputs)
  assert data.oversampled(files, seed=0).inputs == out.inputs


def test_cache_dir_holds_the_decoded_images(tmp_path, color_dir):
  files = folders.scan_class_folder(Source("data_dir", color_dir))
  ds = pipeline.make_pipeline(files, 16, 8, cache_dir=str(tmp_path / "cache"))
  first = np.concatenate([x for x, _ in ds.as_numpy_iterator()])
  written = os.listdir(tmp_path / "cache")
  assert any(n.startswith("images-16-squash-") for n in written)
  again = np.concatenate([x for x, _ in pipeline.make_pipeline(
      files, 16, 8, cache_dir=str(tmp_path / "cache")).as_numpy_iterator()])
  np.testing.assert_array_equal(first, again)
  pipeline.make_pipeline(files, 16, 8, cache_dir=str(tmp_path / "cache"), resize="pad")
  list(pipeline.make_pipeline(files, 16, 8, cache_dir=str(tmp_path / "cache"),
                          resize="pad").as_numpy_iterator())
  assert any(n.startswith("images-16-pad-") for n in os.listdir(tmp_path / "cache"))


@pytest.mark.parametrize("kwargs, message", [
    ({"data": {"data_dir": "a", "csv": "b.csv"}}, "^--csv: pass one data source"),
    ({"data": {"val_csv": "v.csv"}}, "^--val_csv: only goes with --csv"),
    ({"data": {"data_dir": "a", "label_key": "y"}}, "^--image_key/--label_key: only go"),
    ({"data": {"data_dir": "a"}, "model": {"task": "regression"}},
     "^--task=regression: needs numeric targets from --csv"),
    ({"data": {"csv": "a.csv", "class_weight": "balanced"}, "model": {"task": "multilabel"}},
     "^--class_weight: not for --task=multilabel"),
    ({"data": {"csv": "a.csv", "mixup": 0.2}, "model": {"task": "regression"}},
     "^--mixup: not for --task=regression"),
    ({"data": {"oversample": True, "class_weight": "balanced"}}, "^--oversample: already"),
    ({"data": {"cutmix": -1.0}}, "^--cutmix: must be >= 0"),
    ({"model": {"threshold": 1.0}}, "^--threshold: must be between 0 and 1"),
])
def test_bad_source_and_task_combinations_are_usage_errors(kwargs, message):
  with pytest.raises(UsageError, match=message):
    checked(kwargs)


def test_an_image_folder_cannot_hold_multilabel_data(color_dir):
  with pytest.raises(UsageError, match="^--task=multilabel: an image folder"):
    sources.index_images(kerasft.DataConfig(data_dir=color_dir), output("multilabel").labels)


def test_streamed_records_come_in_order_with_their_targets(tmp_path):
  from PIL import Image
  folder = tmp_path / "gray"
  for c in ("a", "b"):
    (folder / c).mkdir(parents=True)
  for i in range(12):  # image i is the constant 10 * i; even ones are "a", odd ones "b"
    Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(
        folder / ("a" if i % 2 == 0 else "b") / f"{i:02d}.png")
  _write_tfrecord(tmp_path / "g.tfrecord", str(folder))
  files = records.read_tfrecords(Source("tfrecord", str(tmp_path / "g.tfrecord")))
  assert files.streams and not any(isinstance(x, bytes) for x in files.inputs)
  value = {key: 10 * int(os.path.basename(n)[:2]) for key, n in zip(
      files.inputs, sorted(str(p) for p in folder.rglob("*.png")))}
  train, val = data.stratified_split(files, 0.25, seed=1)
  train = data.oversampled(data.Examples(train.inputs, [0] * 2 + train.labels[2:],
                                         train.class_names, names=train.names,
                                         streams=train.streams), seed=0)
  for part in (train, val):
    x, y = (np.concatenate(t) for t in zip(*pipeline.make_pipeline(
        part, 8, 4, cache=False).as_numpy_iterator()))
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), [value[k] for k in part.inputs])
    np.testing.assert_array_equal(y, part.targets())
  shuffled = pipeline.make_pipeline(train, 8, 100, shuffle=True, cache=False, seed=3)
  first, second = (np.concatenate([x for x, _ in shuffled.as_numpy_iterator()])
                   .mean(axis=(1, 2, 3)) for _ in range(2))
  assert sorted(first) == sorted(second) == sorted(value[k] for k in train.inputs)
  assert first.tolist() != second.tolist()
  encoded = list(pipeline.encoded_inputs(val))
  assert len(encoded) == len(val.inputs) and all(e.startswith(b"\x89PNG") for e in encoded)
