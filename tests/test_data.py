import os

import numpy as np
import pytest
from PIL import Image

from conftest import write_color_images
from kerasft.data.source import Source
from kerasft.data import examples as data, pipeline, folders
from kerasft.core.errors import UsageError


def test_class_folders_and_stratified_split(color_dir):
  train, val = folders.index(color_dir, validation_split=0.25, seed=3)
  assert train.class_names == ["blue", "green", "red"]
  assert len(val.inputs) == 9 and len(train.inputs) == 27
  assert np.bincount(val.labels).tolist() == [3, 3, 3]
  assert not set(train.inputs) & set(val.inputs)
  again_train, again_val = folders.index(color_dir, validation_split=0.25, seed=3)
  assert again_val.inputs == val.inputs
  _, other_val = folders.index(color_dir, validation_split=0.25, seed=4)
  assert other_val.inputs != val.inputs


def test_split_folders_are_used_and_test_is_never_trained_on(tmp_path):
  root = tmp_path / "d"
  write_color_images(root / "train", per_class=4)
  write_color_images(root / "val", per_class=2)
  write_color_images(root / "test", per_class=2)
  train, val = folders.index(str(root))
  assert all("/train/" in p for p in train.inputs) and len(train.inputs) == 12
  assert all("/val/" in p for p in val.inputs) and len(val.inputs) == 6
  (root / "val").rename(root / "elsewhere")
  train, val = folders.index(str(root), validation_split=0.5)
  assert all("/train/" in p for p in train.inputs + val.inputs)


def test_val_dir_with_unknown_class_is_an_error(tmp_path):
  write_color_images(tmp_path / "train", per_class=2)
  write_color_images(tmp_path / "other", per_class=2, colors={"purple": (128, 0, 128)})
  with pytest.raises(UsageError, match=r"^--val_dir: .* classes \['purple'\]"):
    folders.index(str(tmp_path / "train"), val_dir=str(tmp_path / "other"))


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "^--data_dir: folder .* does not exist"),
    (lambda root: root.mkdir(), "^--data_dir: .* has no class sub-folders"),
    (lambda root: (root / "a").mkdir(parents=True), "^--data_dir: .* holds no images"),
    (lambda root: write_color_images(root, per_class=2, colors={"red": (255, 0, 0)}),
     "^--data_dir: .* single class"),
    (lambda root: write_color_images(root / "test", per_class=2), "^--data_dir: .* no train/"),
])
def test_bad_folders_are_one_line_usage_errors(tmp_path, setup, message):
  root = tmp_path / "data"
  setup(root)
  with pytest.raises(UsageError, match=message) as e:
    folders.index(str(root))
  assert "\n" not in str(e.value)


def _spoil(color_dir):
  """A truncated JPEG, a text file named .png and a zero-byte file."""
  from PIL import Image
  jpeg = os.path.join(color_dir, "red", "cut.jpg")
  Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(jpeg, quality=90)
  content = open(jpeg, "rb").read()
  open(jpeg, "wb").write(content[: len(content) // 2])
  with open(os.path.join(color_dir, "blue", "notes.png"), "w") as f:
    f.write("not an image")
  open(os.path.join(color_dir, "green", "empty.png"), "wb").close()
  return {"cut.jpg", "notes.png", "empty.png"}


def test_unreadable_files_are_skipped_with_one_warning(color_dir, caplog):
  import logging
  bad = _spoil(color_dir)
  with caplog.at_level(logging.WARNING):
    train, val = folders.index(color_dir)
  kept = {os.path.basename(p) for p in train.inputs + val.inputs}
  assert not kept & bad and len(train.inputs + val.inputs) == 36
  warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
  assert len(warnings) == 1 and "skipping 3 unreadable image(s)" in warnings[0]
  assert all(name in warnings[0] for name in bad)


def test_strict_data_makes_them_an_error(color_dir):
  _spoil(color_dir)
  with pytest.raises(UsageError, match="^--strict_data: 3 unreadable image"):
    folders.index(color_dir, strict=True)


def test_balanced_class_weights_follow_the_label_counts():
  files = data.Examples(["x"] * 10, [0] * 6 + [1] * 3 + [2], ["a", "b", "c"])
  weights = data.balanced_class_weights(files)
  assert weights == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})
  from sklearn.utils.class_weight import compute_class_weight
  np.testing.assert_allclose(
      compute_class_weight("balanced", classes=np.arange(3), y=np.asarray(files.labels)),
      [weights[i] for i in range(3)])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_and_palette_images_become_rgb(tmp_path, mode):
  folder = write_color_images(tmp_path / "d", per_class=2, size=20, mode=mode)
  files = folders.scan_class_folder(Source("data_dir", folder))
  ds = pipeline.make_pipeline(files, 16, batch_size=4)
  images, labels = next(iter(ds))
  assert images.shape == (4, 16, 16, 3) and images.dtype.name == "float32"
  assert labels.shape == (4, 3)
  assert 0 <= float(np.min(images)) and float(np.max(images)) <= 255


def test_decode_and_resize_matches_pillow_pixels(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  path = tmp_path / "x.png"
  Image.fromarray(pixels).save(path)
  out = np.asarray(pipeline.decode_and_resize(path.read_bytes(), 8))
  np.testing.assert_array_equal(out, pixels.astype(np.float32))


def test_pipeline_shuffles_each_epoch_but_keeps_all(color_dir):
  files = folders.scan_class_folder(Source("data_dir", color_dir))
  ds = pipeline.make_pipeline(files, 8, batch_size=100, shuffle=True, seed=1)
  first = np.asarray(next(iter(ds))[1]).argmax(1)
  second = np.asarray(next(iter(ds))[1]).argmax(1)
  assert sorted(first) == sorted(second) == sorted(files.labels)
  assert first.tolist() != second.tolist()


def test_builtin_digits_are_written_once(tmp_path):
  folder = folders.builtin_digits(str(tmp_path))
  files = folders.scan_class_folder(Source("data_dir", folder))
  assert files.class_names == [str(d) for d in range(10)] and len(files.inputs) == 1797
  mtime = os.path.getmtime(files.inputs[0])
  assert folders.builtin_digits(str(tmp_path)) == folder
  assert os.path.getmtime(files.inputs[0]) == mtime
