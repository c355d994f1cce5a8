"""Semantic segmentation (--task=segmentation): masks, metrics, joint augmentation, the
segmenter and its cached multi-scale features, training, export, evaluate and predict."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import call_main, needs_imagenet_mobilenet, tiny_model

import kerasft
from kerasft.data.source import Source
import kerasft.tasks.registry
import kerasft.data.examples
from kerasft.tasks.segmentation import data as seg, report as seg_report

PALETTE = [0, 0, 0, 255, 0, 0, 0, 0, 255] + [255] * (253 * 3)


def write_squares(root, n=24, size=(40, 48), seed=0, palette=True, classes=2):
  """root/images/*.jpg with a coloured square on grey and root/masks/*.png of its class
  (1..classes, background 0; the top-left pixel 255, ignored); returns root."""
  rng = np.random.default_rng(seed)
  os.makedirs(root / "images", exist_ok=True)
  os.makedirs(root / "masks", exist_ok=True)
  colours = [(220, 40, 40), (40, 40, 220), (40, 220, 40)]
  h, w = size
  for i in range(n):
    image = np.full((h, w, 3), 30, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    c = i % classes + 1
    y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
    image[y:y + 16, x:x + 16] = colours[c - 1]
    mask[y:y + 16, x:x + 16] = c
    mask[0, 0] = seg.IGNORE
    Image.fromarray(image).save(root / "images" / f"{i:03d}.jpg")
    if palette:
      m = Image.fromarray(mask, "P")
      m.putpalette(PALETTE)
    else:
      m = Image.fromarray(mask, "L")
    m.save(root / "masks" / f"{i:03d}.png")
  return root


def _config(tmp_path, data_dir, **fields):
  training = {"epochs": 2, "head_solver": "epochs", **fields.pop("training", {})}
  model = {"task": "segmentation", "weights": "none", "image_size": 32,
           **fields.pop("model", {})}
  own = {k: model.pop(k) for k in ("decoder",) if k in model}
  return kerasft.RunConfig(
      name="seg", model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"),
      model=kerasft.ModelConfig(**model), training=kerasft.TrainingConfig(**training),
      data=kerasft.DataConfig.of(data_dir=str(data_dir), batch_size=8, **fields),
      tasks=kerasft.TaskSettings.of(**own))


def test_masks_read_from_index_and_palette_pngs_with_255_kept(tmp_path):
  values = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
  Image.fromarray(values, "L").save(tmp_path / "gray.png")
  palette = Image.fromarray(values, "P")
  palette.putpalette(PALETTE)
  palette.save(tmp_path / "palette.png")
  Image.fromarray(np.stack([values] * 3, -1), "RGB").save(tmp_path / "rgb.png")
  for name in ("gray.png", "palette.png", "rgb.png"):
    np.testing.assert_array_equal(seg.read_mask(str(tmp_path / name), name), values)
  colour = np.zeros((2, 3, 3), np.uint8)
  colour[0, 0] = (255, 0, 0)
  Image.fromarray(colour, "RGB").save(tmp_path / "colour.png")
  with pytest.raises(kerasft.UsageError, match="colour.png: a colour"):
    seg.read_mask(str(tmp_path / "colour.png"), "colour.png")
  np.testing.assert_array_equal(seg.read_mask(seg.encode_mask(values), "bytes"), values)


def test_pairs_missing_or_mis_sized_masks_are_skipped_unknown_values_refused(tmp_path, caplog):
  root = write_squares(tmp_path / "d", n=6)
  os.remove(root / "masks" / "001.png")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "002.png")
  images, masks = seg.folder_pairs(Source("data_dir", str(root)))
  kept, encoded, names, classes = seg.check_pairs(images, masks, images, Source("data_dir"), None)
  assert len(kept) == 4 and classes == ["0", "1", "2"]
  assert "001.jpg: no mask" in caplog.text and "002.jpg: mask 8x8 differs from the " \
      "image's 48x40" in caplog.text
  with pytest.raises(kerasft.UsageError, match="--data_dir: .*002.jpg: mask 8x8 differs"):
    seg.check_pairs(images[2:], masks[2:], images[2:], Source("data_dir"), None, strict=True)
  with pytest.raises(kerasft.UsageError, match=r"003.jpg has mask value 2, which names no "
                     r"class \(there are 2: bg, red"):
    seg.check_pairs(images[3:], masks[3:], images[3:], Source("data_dir"), ["bg", "red"])


def test_iou_matches_keras_mean_iou_and_the_training_metric():
  import keras
  from kerasft.tasks.segmentation import graph
  rng = np.random.default_rng(0)
  true = rng.integers(0, 4, (3, 8, 8)).astype(np.uint8)
  true[0, :2] = seg.IGNORE
  probabilities = rng.random((3, 8, 8, 5)).astype(np.float32)
  probabilities[..., 4] = 0  # class 4: absent from truth and prediction
  predicted = probabilities.argmax(-1)
  metrics = seg_report.iou_metrics(seg_report.confusion(true, predicted, 5), list("abcde"))
  reference = keras.metrics.MeanIoU(5, ignore_class=seg.IGNORE, sparse_y_pred=True)
  reference.update_state(true, predicted)
  assert metrics["mean_iou"] == pytest.approx(float(reference.result()), abs=1e-6)
  assert metrics["per_class"]["e"]["iou"] is None
  keep = true != seg.IGNORE
  assert metrics["pixel_accuracy"] == pytest.approx(np.mean(true[keep] == predicted[keep]))
  for kind, key in (("iou", "mean_iou"), ("accuracy", "pixel_accuracy")):
    metric = graph.PixelConfusion(kind)
    metric.update_state(true[:2], probabilities[:2])
    metric.update_state(true[2:], probabilities[2:])
    assert float(metric.result()) == pytest.approx(metrics[key], abs=1e-6)


def test_joint_augmentation_keeps_image_and_mask_aligned():
  import tensorflow as tf
  from kerasft.tasks.segmentation import graph
  mask = np.zeros((32, 32), np.uint8)
  mask[4:14, 6:20], mask[18:30, 10:28] = 1, 2
  image = np.zeros((32, 32, 3), np.float32)  # class c drawn in channel c - 1
  image[..., 0], image[..., 1] = 200.0 * (mask == 1), 200.0 * (mask == 2)
  padded = 0
  for s in range(12):
    got_image, got_mask = graph.augment_pair(tf.constant(image), tf.constant(mask),
                                             tf.constant([s, 7]), ("flip", "zoom", "translate"),
                                             0.25)
    got_image, got_mask = got_image.numpy(), got_mask.numpy()
    inside = got_mask != seg.IGNORE
    seen = np.where(got_image[..., :2].max(-1) >= 100, got_image[..., :2].argmax(-1) + 1, 0)
    same = np.ones_like(inside)  # pixels whose 3x3 neighbourhood is one class: no edge blur
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        same &= np.roll(got_mask, (dy, dx), (0, 1)) == got_mask
    assert np.all(seen[same & inside] == got_mask[same & inside])
    grid = np.indices(got_mask.shape).reshape(2, -1)
    for c in (1, 2):  # no shift: the same centres, up to nearest-neighbour rounding (a shifted
      # crop would be whole pixels off)
      weight = got_image[..., c - 1].ravel()
      by_image = (grid * weight).sum(1) / weight.sum()
      by_mask = np.argwhere(got_mask == c).mean(0)
      assert np.abs(by_image - by_mask).max() < 0.75, (s, c, by_image, by_mask)  # (rounding)
    assert np.all(got_image[~inside] == 0)  # padding: black pixels, ignored in the mask
    padded += int((~inside).any())
  assert padded  # some draws zoomed out or shifted, padding the mask with 255


def test_multiscale_features_cached_reproduce_the_segmenter(tmp_path):
  from kerasft.models import backbones, features
  from kerasft.tasks.segmentation import graph
  from kerasft.config import ModelConfig
  backbone = backbones.build(ModelConfig(weights="none", image_size=64))
  for decoder, strides in (("deeplabv3plus", [4, 16]), ("fpn", [4, 8, 16, 32])):
    model, got = graph.build_segmenter(backbone, 3, kerasft.tasks.registry.make_output("segmentation"),
                                       decoder)
    assert list(got) == strides and got[4] == "conv_pw_3_relu"
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    maps = features.feature_model(model)(pixels)
    assert sorted(m.shape[1] for m in maps) == sorted(64 // s for s in strides)
    np.testing.assert_allclose(features.head_model(model)(maps), model(pixels), atol=1e-5)
  with pytest.raises(kerasft.UsageError, match="--image_size: --task=segmentation needs a "
                     "side divisible by 32, got 48"):
    graph.encoder(backbones.build(ModelConfig(weights="none", image_size=48)), "fpn")


@pytest.mark.parametrize("budget", [0, 1 << 30], ids=["on_disk", "in_memory"])
def test_feature_cache_holds_the_maps_and_the_masks(tmp_path, budget):
  from kerasft.models import features
  from kerasft.tasks import registry as tasks
  root = write_squares(tmp_path / "d", n=12)
  task = tasks.for_config(_config(tmp_path, root).resolved())
  train, val = task.index()
  task, model = task.build_model(train)
  dataset = task.pipelines(train, val)
  cached = features.build(model, dataset, 4, 0, budget, str(tmp_path / "cache"))
  assert cached.on_disk == (budget == 0)
  maps, masks = next(iter(cached.val))
  images, true = next(iter(task.pipeline(val, 4)))
  np.testing.assert_array_equal(masks, true)
  np.testing.assert_allclose(features.head_model(model)(maps, training=False),
                             model(images, training=False), atol=1e-5)


def _saved_model_cli(export, signature, key, npy, outdir):
  run = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                        "run", "--dir", export, "--tag_set", "serve", "--signature_def",
                        signature, "--inputs", f"{key}={npy}", "--outdir", str(outdir)],
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  return {k: np.load(outdir / f"{k}.npy") for k in ("class_map", "probabilities", "heights")}


@needs_imagenet_mobilenet
@pytest.mark.slow
def test_segmenter_trains_exports_and_serves_class_maps_at_each_images_size(tmp_path):
  """ImageNet MobileNet's maps (random ones carry nothing through 28 layers at 32 px: the
  segmenter then predicts the background everywhere, which this test would catch)."""
  import tensorflow as tf
  from kerasft.data import pipeline
  root = write_squares(tmp_path / "d", n=32)
  result = kerasft.run_training(_config(tmp_path, root, augment=("flip", "zoom"), model={
      "decoder": "fpn", "weights": "imagenet"}), verbose=0)
  per_class = result.metrics["per_class"]
  assert set(per_class) == {"0", "1", "2"}
  # predicting the most frequent class everywhere: its IoU is its share of the pixels, the
  # other classes' 0
  total = sum(r["pixels"] for r in per_class.values())
  majority = max(r["pixels"] for r in per_class.values()) / total
  assert result.metrics["mean_iou"] > majority / 3 + 0.2, (result.metrics, majority)  # 0.59, 0.29
  for name in ("iou.png", "predictions.png", "report.html", "metrics.json"):
    assert os.path.getsize(tmp_path / "run" / name) > 0, name
  card = json.load(open(os.path.join(result.export_path, "model_card.json")))
  assert card["task"] == "segmentation" and card["decoder"] == "fpn"
  paths = [str(root / "images" / f"{i:03d}.jpg") for i in range(3)]
  encoded = [open(p, "rb").read() for p in paths]
  pixels = np.stack([np.asarray(pipeline.decode_and_resize(b, 32)) for b in encoded])
  expected = np.asarray(result.model(pixels, training=False))
  at_size = tf.image.resize(expected, (40, 48)).numpy()
  np.save(tmp_path / "bytes.npy", np.array(encoded, dtype=object).astype("S"))
  served = _saved_model_cli(result.export_path, "serving_bytes", "image_bytes",
                            tmp_path / "bytes.npy", tmp_path / "out")
  assert served["class_map"].shape == (3, 40, 48)
  np.testing.assert_allclose(served["probabilities"], at_size, atol=1e-4)
  np.testing.assert_array_equal(served["class_map"], at_size.argmax(-1))
  raw = np.stack([np.asarray(Image.open(p)) for p in paths]).astype(np.float32)
  np.save(tmp_path / "pixels.npy", raw)
  by_pixels = _saved_model_cli(result.export_path, "serving_default", "images",
                               tmp_path / "pixels.npy", tmp_path / "out2")
  assert by_pixels["class_map"].shape == (3, 40, 48)
  assert np.mean(by_pixels["class_map"] == served["class_map"]) > 0.98  # (JPEG vs resize)


@pytest.mark.slow
def test_evaluate_and_predict_report_iou_and_write_masks(tmp_path):
  root = write_squares(tmp_path / "d", n=16, palette=False)
  (tmp_path / "classes.txt").write_text("background\nred\nblue\n")
  result = kerasft.run_training(_config(tmp_path, root, mask_classes=str(tmp_path / "classes.txt")),
                         verbose=0)
  assert result.class_names == ["background", "red", "blue"]
  evaluated = call_main("evaluate", f"--export={result.export_path}", f"--data_dir={root}",
                        f"--output_dir={tmp_path / 'e'}")
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert "mean IoU" in evaluated.stdout and "background" in evaluated.stdout
  metrics = json.load(open(tmp_path / "e" / "metrics.json"))
  assert metrics["pixels"] == 16 * (40 * 48 - 1)  # each image's own size, 255 left out
  assert os.path.getsize(tmp_path / "e" / "predictions.png") > 0
  by_run = call_main("evaluate", f"--run_dir={tmp_path / 'run'}", f"--output_dir={tmp_path / 'r'}")
  assert by_run.returncode == 0, by_run.stderr[-2000:]
  image = str(root / "images" / "000.jpg")
  shown = call_main("predict", f"--export={result.export_path}", f"--mask_dir={tmp_path / 'm'}",
                    "--output=" + str(tmp_path / "p.jsonl"), image, str(tmp_path / "none.jpg"))
  assert shown.returncode == 0, shown.stderr[-2000:]
  row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
  assert set(row["classes"]) <= {"background", "red", "blue"}
  assert sum(row["probabilities"]) == pytest.approx(1.0)
  written = Image.open(tmp_path / "m" / "000.png")
  assert written.mode == "P" and written.size == (48, 40)
  explain = call_main("predict", f"--export={result.export_path}", "--explain", image)
  assert explain.returncode == 2 and "--explain: not for --task=segmentation" in explain.stderr
  converted = call_main("export", f"--run_dir={tmp_path / 'run'}", "--format=all",
                        f"--export_dir={tmp_path / 'x'}")
  assert converted.returncode == 0, converted.stderr[-2000:]
  for fmt in ("tflite", "onnx"):
    check = json.load(open(tmp_path / "x" / fmt / "1" / "model_card.json"))["format"]["check"]
    assert check["pixel_agreement"] == 1.0 and check["max_difference"] < 1e-4, (fmt, check)


def test_csv_and_tfds_sources(tmp_path):
  import tensorflow_datasets as tfds
  from kerasft.tasks.segmentation.output import Segmentation
  from kerasft.tasks.segmentation.task import SegmentationTask
  root = write_squares(tmp_path / "d", n=8)
  (tmp_path / "t.csv").write_text("image,seg\n" + "".join(
      f"d/images/{i:03d}.jpg,d/masks/{i:03d}.png\n" for i in range(8)))
  task = SegmentationTask(None, Segmentation())
  files = task.read(kerasft.DataConfig.of(csv=str(tmp_path / "t.csv"), path_column="image",
                                          mask_column="seg"))
  assert len(files.inputs) == 8 and files.class_names == ["0", "1", "2"]

  class KerasftSquares(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "segmentation_mask": tfds.features.Image(shape=(None, None, 1))}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        mask = np.asarray(Image.open(root / "masks" / f"{i:03d}.png"))[..., None]
        yield str(i), {"image": str(root / "images" / f"{i:03d}.jpg"), "segmentation_mask": mask}
  KerasftSquares(data_dir=str(tmp_path / "tfds")).download_and_prepare()
  files = task.read(kerasft.DataConfig(tfds="kerasft_squares", tfds_data_dir=str(tmp_path / "tfds")))
  assert len(files.inputs) == 6 and isinstance(files.inputs[0], bytes)
  assert files.class_names == ["0", "1", "2"]


@pytest.mark.parametrize("args, message", [
    (["--task=segmentation", "--data_dir={flat}"], "--data_dir: {flat} holds neither images/"),
    (["--task=segmentation", "--data_dir={data}", "--augment=rotate"],
     "--augment=rotate: --task=segmentation moves masks with images for flip, zoom"),
    (["--task=segmentation", "--data_dir={data}", "--resize=crop"],
     "--resize: --task=segmentation squashes images"),
    (["--task=segmentation", "--data_dir={data}", "--image_size=48", "--weights=none"],
     "--image_size: --task=segmentation needs a side divisible by 32, got 48"),
    (["--task=segmentation", "--data_dir={data}", "--mask_classes={one}"],
     "--mask_classes: {one} must name at least 2 classes"),
    (["--task=segmentation", "--data_dir={data}", "--mask_classes={two}"],
     "has mask value 2, which names no class"),
    (["--task=segmentation", "--data_dir={data}", "--model=keras_hub:x"],
     "--task=segmentation: labels the pixels of images"),
    (["--data_dir={data}", "--decoder=fpn"], "--decoder: only for --task=segmentation"),
    (["--task=segmentation", "--text_dir={data}"], "--text_dir: --task=segmentation reads"),
    (["--task=segmentation", "--data_dir={data}", "--model={tiny}", "--image_size=32"],
     "gives no 1/4 and deeper feature maps (found 1/4); --task=segmentation needs"),
    (["--task=segmentation", "--csv={csv}", "--label_column=seg", "--weights=none",
      "--image_size=32"], "--label_column: not for --task=segmentation"),
])
def test_segmentation_mistakes_are_one_line_errors(tmp_path, args, message):
  paths = {"data": str(write_squares(tmp_path / "d", n=6)), "flat": str(tmp_path),
           "tiny": tiny_model(), "csv": str(tmp_path / "t.csv"),
           "one": str(tmp_path / "one.txt"), "two": str(tmp_path / "two.txt")}
  (tmp_path / "t.csv").write_text("path,seg\nd/images/000.jpg,d/masks/000.png\n")
  (tmp_path / "one.txt").write_text("only\n")
  (tmp_path / "two.txt").write_text("bg\nred\n")
  args = [a.format(**paths) for a in args]
  if not any(a.startswith(("--image_size", "--model")) for a in args):
    args += ["--image_size=32", "--weights=none"]
  result = call_main("train", *args,
                     f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert message.format(**paths) in last, last
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_a_segmenter_trains_over_two_cpu_replicas(tmp_path):
  from conftest import run_cli
  root = write_squares(tmp_path / "d", n=16)
  run = run_cli("train", "--task=segmentation", f"--data_dir={root}", "--weights=none",
                "--image_size=32", "--epochs=2", "--head_solver=epochs", "--strategy=mirrored",
                "--cpu_replicas=2", "--batch_size=8", f"--model_dir={tmp_path / 'run'}",
                f"--export_dir={tmp_path / 'export'}")
  assert run.returncode == 0, run.stderr[-3000:]
  assert "MirroredStrategy: 2 replicas, global batch 8 = 4 per replica" in run.stderr
  metrics = json.load(open(tmp_path / "run" / "metrics.json"))
  assert metrics["pixels"] == 3 * (32 * 32 - 1)  # the 3 validation images, each once
