"""Garment segmentation from ../shared/data/fashion_mnist_small: kerasft against the Keras
example "Image segmentation with a U-Net-like architecture", each given the same selection on
a validation part of the training images, the U-Net for the same wall time.

  .venv/bin/python benchmarks/segmentation.py --markdown            # both cases
  .venv/bin/python benchmarks/segmentation.py --segmenters=kerasft

The data set is derived here: each Fashion-MNIST image (28x28, grayscale) with a mask
that is the garment's class where the pixel is part of the garment (intensity above
--threshold) and background elsewhere: 11 classes. train/'s 1,000 images are split once
(seed 0): 800 train, 200 are the validation part every choice is made on; test/ (500) is
read once per case, for the chosen setting: mean IoU over the 11 classes at the images' own
28x28 size.
Cases:
  kerasft: `python -m kerasft.train --flagfile=flags/garments.cfg --image_size=S` (MobileNet's
           ImageNet weights, the decoder on the frozen encoder's cached maps) with --val_dir
           the validation part, for each S of --kerasft_sizes; the S whose export scores the
           higher validation mean IoU (`kerasft.evaluate`, class maps at 28x28) is chosen.
  unet:    the Keras example's model (Xception-style U-Net, RMSprop, sparse cross-entropy)
           from scratch at each side of --unet_sizes, trained for the chosen kerasft run's
           whole train-process seconds (or --unet_seconds); after every epoch its validation
           mean IoU is measured and the best epoch's weights kept; the side with the higher
           validation mean IoU is chosen (probabilities resized to 28x28, bilinear).
Prints one table (the chosen setting and its validation IoU, test mean IoU, pixel accuracy,
seconds) and whether the target (kerasft's test mean IoU at least 0.1 higher at equal time)
is met.
"""

import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
from small_data import print_table, run_kerasft  # noqa: E402  (and its --markdown flag)

DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion_mnist_small")
flags.DEFINE_list("segmenters", ["kerasft", "unet"], "Cases to run.")
flags.DEFINE_integer("threshold", 25, "A pixel brighter than this is part of the garment.")
flags.DEFINE_list("kerasft_sizes", ["64", "96"], "kerasft: --image_size tried.")
flags.DEFINE_list("unet_sizes", ["32", "64"], "unet: input sides tried (the 28 px images "
                  "resized).")
flags.DEFINE_float("unet_seconds", 0, "unet: its training seconds [the kerasft case's].")
FLAGS = flags.FLAGS


def garments(root: str) -> list[str]:
  """Writes root/{train,validation,test}/{images,masks}/ (a fifth of each class of train/
  in validation/) and root/classes.txt; returns the classes (background, then the
  Fashion-MNIST classes)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  names = sorted(os.listdir(os.path.join(DATA, "train")))
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for sub in ("images", "masks"):
      for part in ((split,) if split == "test" else ("train", "validation")):
        os.makedirs(os.path.join(root, part, sub), exist_ok=True)
    for k, name in enumerate(names, start=1):
      folder = os.path.join(DATA, split, name)
      files = sorted(os.listdir(folder))
      held = set(rng.permutation(len(files))[:len(files) // 5].tolist())
      for i, file in enumerate(files):
        part = "validation" if split == "train" and i in held else split
        pixels = np.asarray(Image.open(os.path.join(folder, file)).convert("L"))
        stem = f"{name}-{os.path.splitext(file)[0]}.png"
        Image.fromarray(pixels).save(os.path.join(root, part, "images", stem))
        mask = np.where(pixels > FLAGS.threshold, k, 0).astype(np.uint8)
        Image.fromarray(mask, "L").save(os.path.join(root, part, "masks", stem))
  classes = ["background"] + names
  with open(os.path.join(root, "classes.txt"), "w") as f:
    f.write("\n".join(classes) + "\n")
  return classes


def kerasft_case(root: str, size: int) -> dict:
  """kerasft at `size` px: {"val": validation metrics through the export, "seconds" of the
  whole train process, "export"}."""
  out = os.path.join(root, f"kerasft{size}")
  _, seconds = run_kerasft("train", "--flagfile=flags/garments.cfg", f"--image_size={size}",
                           f"--data_dir={root}/train", f"--val_dir={root}/validation",
                           f"--mask_classes={root}/classes.txt",
                           f"--model_dir={out}/run", f"--export_dir={out}/export")
  return {"val": _evaluate(f"{out}/export", f"{root}/validation", f"{out}/val"),
          "seconds": seconds, "export": f"{out}/export"}


def _evaluate(export: str, folder: str, out: str) -> dict:
  """Metrics of an export on a folder of images/ and masks/ (`kerasft.evaluate`)."""
  run_kerasft("evaluate", f"--export={export}", f"--data_dir={folder}", f"--output_dir={out}")
  with open(os.path.join(out, "metrics.json")) as f:
    return json.load(f)


def _split(root: str, split: str, size: int):
  """(float32 images [N, size, size, 3] 0..255, uint8 masks [N, 28, 28], masks at size)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, split)
  files = sorted(os.listdir(os.path.join(folder, "images")))
  images = np.stack([np.asarray(Image.open(os.path.join(folder, "images", f)).convert("RGB"))
                     for f in files]).astype(np.float32)
  masks = np.stack([np.asarray(Image.open(os.path.join(folder, "masks", f))) for f in files])
  resized = tf.image.resize(images, (size, size)).numpy()
  small = tf.image.resize(masks[..., None], (size, size), method="nearest").numpy()[..., 0]
  return resized, masks, small


def unet(size: int, classes: int):
  """The Keras example's U-Net-like model (keras.io/examples/vision/oxford_pets_image_
  segmentation), as written there."""
  import keras  # pylint: disable=g-import-not-at-top
  from keras import layers  # pylint: disable=g-import-not-at-top
  inputs = keras.Input(shape=(size, size, 3))
  x = layers.Rescaling(1.0 / 255)(inputs)
  x = layers.Conv2D(32, 3, strides=2, padding="same")(x)
  x = layers.BatchNormalization()(x)
  x = layers.Activation("relu")(x)
  previous = x
  for filters in [64, 128, 256]:
    x = layers.Activation("relu")(x)
    x = layers.SeparableConv2D(filters, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.SeparableConv2D(filters, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous)
    x = layers.add([x, residual])
    previous = x
  for filters in [256, 128, 64, 32]:
    x = layers.Activation("relu")(x)
    x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.UpSampling2D(2)(x)
    residual = layers.UpSampling2D(2)(previous)
    residual = layers.Conv2D(filters, 1, padding="same")(residual)
    x = layers.add([x, residual])
    previous = x
  outputs = layers.Conv2D(classes, 3, activation="softmax", padding="same")(x)
  return keras.Model(inputs, outputs)


def unet_case(root: str, classes: list[str], size: int, seconds: float) -> dict:
  """The U-Net at `size` px trained for `seconds` of wall time (whole epochs), the best
  epoch on the validation part kept: {"val": its validation metrics, "epochs", "seconds",
  "score_test": a function that returns its test metrics}."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kerasft.tasks.segmentation import report as segmentation
  start = time.monotonic()
  keras.utils.set_random_seed(0)
  images, _, masks = _split(root, "train", size)
  val, val_true, _ = _split(root, "validation", size)
  model = unet(size, len(classes))
  model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")

  def metrics(pixels, true):
    probabilities = tf.image.resize(model.predict(pixels, verbose=0), true.shape[1:3]).numpy()
    matrix = segmentation.confusion(true, probabilities.argmax(-1), len(classes))
    return segmentation.iou_metrics(matrix, classes)
  best = {"val": {"mean_iou": -1.0}, "weights": None}

  class Deadline(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      scores = metrics(val, val_true)
      if scores["mean_iou"] > best["val"]["mean_iou"]:
        best.update(val=scores, weights=self.model.get_weights())
      spent = time.monotonic() - start
      if spent + spent / (epoch + 1) > seconds:  # the next epoch would overrun
        self.model.stop_training = True
  history = model.fit(images, masks, batch_size=32, epochs=1000, verbose=0,
                      callbacks=[Deadline()])
  spent = time.monotonic() - start
  model.set_weights(best["weights"])

  def score_test():
    test, true, _ = _split(root, "test", size)
    return metrics(test, true)
  return {"val": best["val"], "epochs": len(history.history["loss"]), "seconds": spent,
          "score_test": score_test}


def main(argv):
  del argv
  results, chosen = {}, {}
  with tempfile.TemporaryDirectory(prefix="kerasft-segmentation-") as root:
    classes = garments(root)
    print("selection: 800 training and 200 validation images of train/; test/ (500) read "
          "once per case", flush=True)
    if "kerasft" in FLAGS.segmenters:
      tried = {int(s): kerasft_case(root, int(s)) for s in FLAGS.kerasft_sizes}
      size = max(tried, key=lambda s: tried[s]["val"]["mean_iou"])
      print("kerasft, validation mean IoU per --image_size: " + ", ".join(
          f"{s}: {t['val']['mean_iou']:.4f} ({t['seconds']:.0f} s)" for s, t in tried.items()),
          flush=True)
      test = _evaluate(tried[size]["export"], os.path.join(root, "test"),
                       os.path.join(root, "test_eval"))
      results["kerasft"] = (test, tried[size]["seconds"])
      chosen["kerasft"] = (f"--image_size={size}", tried[size]["val"]["mean_iou"])
    if "unet" in FLAGS.segmenters:
      budget = FLAGS.unet_seconds or results.get("kerasft", (None, 180.0))[1]
      tried = {int(s): unet_case(root, classes, int(s), budget) for s in FLAGS.unet_sizes}
      size = max(tried, key=lambda s: tried[s]["val"]["mean_iou"])
      print("unet, validation mean IoU per side: " + ", ".join(
          f"{s}: {t['val']['mean_iou']:.4f} ({t['epochs']} epochs)" for s, t in tried.items()),
          flush=True)
      results["unet"] = (tried[size]["score_test"](), tried[size]["seconds"])
      chosen["unet"] = (f"{size} px, {tried[size]['epochs']} epochs",
                        tried[size]["val"]["mean_iou"])
  rows = [[case, chosen[case][0], f"{chosen[case][1]:.4f}", f"{m['mean_iou']:.4f}",
           f"{m['pixel_accuracy']:.4f}", f"{s:.0f}"] for case, (m, s) in results.items()]
  print_table(["case", "chosen on validation", "validation mean IoU",
               "mean IoU (test, 11 classes)", "pixel accuracy", "seconds"], rows,
              FLAGS.markdown)
  if {"unet", "kerasft"} <= set(results):
    ours, theirs = results["kerasft"][0]["mean_iou"], results["unet"][0]["mean_iou"]
    print(f"target (mean IoU at least 0.1 higher at equal time): "
          f"{'met' if ours >= theirs + 0.1 else 'NOT met'} ({ours:.4f} vs {theirs:.4f})")


if __name__ == "__main__":
  app.run(main)
