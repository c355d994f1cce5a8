"""Garment segmentation from ../shared/data/fashion_mnist_small: kerasft against the Keras
example "Image segmentation with a U-Net-like architecture", for the same wall time.

  .venv/bin/python benchmarks/segmentation.py                       # both cases
  .venv/bin/python benchmarks/segmentation.py --segmenters=kerasft --markdown

The data set is derived here: each Fashion-MNIST image (28x28, grayscale) with a mask
that is the garment's class where the pixel is part of the garment (intensity above
--threshold) and background elsewhere: 11 classes. train/ (1,000 images) trains, test/
(500) scores, mean IoU over the 11 classes at the images' own 28x28 size.
Cases:
  kerasft: `python -m kerasft.train --flagfile=flags/garments.cfg` (MobileNet's ImageNet
           weights, frozen-encoder decoder on cached maps, then fine-tuned), then
           `python -m kerasft.evaluate --export=... --data_dir=... --split=test`, through
           the export (class maps at the images' own size).
  unet:    the Keras example's model (Xception-style U-Net, RMSprop, sparse cross-entropy)
           at --unet_size px, trained from scratch on the same training images for the
           kerasft case's whole train-process seconds (or --unet_seconds), then scored on
           the test images (probabilities resized to 28x28, bilinear).
Prints one table (mean IoU, pixel accuracy, seconds) and whether the target (kerasft's
mean IoU at least 0.1 higher at equal time) is met.
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
flags.DEFINE_integer("unet_size", 32, "unet: its input side (the 28 px images resized).")
flags.DEFINE_float("unet_seconds", 0, "unet: its training seconds [the kerasft case's].")
FLAGS = flags.FLAGS


def garments(root: str) -> list[str]:
  """Writes root/{train,test}/{images,masks}/ and root/classes.txt; returns the classes
  (background, then the Fashion-MNIST classes)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  names = sorted(os.listdir(os.path.join(DATA, "train")))
  for split in ("train", "test"):
    for sub in ("images", "masks"):
      os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    for k, name in enumerate(names, start=1):
      folder = os.path.join(DATA, split, name)
      for file in sorted(os.listdir(folder)):
        pixels = np.asarray(Image.open(os.path.join(folder, file)).convert("L"))
        stem = f"{name}-{os.path.splitext(file)[0]}.png"
        Image.fromarray(pixels).save(os.path.join(root, split, "images", stem))
        mask = np.where(pixels > FLAGS.threshold, k, 0).astype(np.uint8)
        Image.fromarray(mask, "L").save(os.path.join(root, split, "masks", stem))
  classes = ["background"] + names
  with open(os.path.join(root, "classes.txt"), "w") as f:
    f.write("\n".join(classes) + "\n")
  return classes


def kerasft_case(root: str) -> tuple[dict, float]:
  """(test metrics through the export, seconds of the whole train process)."""
  _, seconds = run_kerasft("train", "--flagfile=flags/garments.cfg",
                           f"--data_dir={root}/train", f"--mask_classes={root}/classes.txt",
                           f"--model_dir={root}/run", f"--export_dir={root}/export")
  run_kerasft("evaluate", f"--export={root}/export", f"--data_dir={root}", "--split=test",
              f"--output_dir={root}/eval")
  with open(os.path.join(root, "eval", "metrics.json")) as f:
    return json.load(f), seconds


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


def unet_case(root: str, classes: list[str], seconds: float) -> dict:
  """Test metrics of the U-Net trained for `seconds` of wall time (whole epochs)."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kerasft.tasks.segmentation import data as segmentation
  start = time.monotonic()
  keras.utils.set_random_seed(0)
  images, _, masks = _split(root, "train", FLAGS.unet_size)
  model = unet(FLAGS.unet_size, len(classes))
  model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")

  class Deadline(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      spent = time.monotonic() - start
      if spent + spent / (epoch + 1) > seconds:  # the next epoch would overrun
        self.model.stop_training = True
  history = model.fit(images, masks, batch_size=32, epochs=1000, verbose=0,
                      callbacks=[Deadline()])
  test, true, _ = _split(root, "test", FLAGS.unet_size)
  probabilities = tf.image.resize(model.predict(test, verbose=0), true.shape[1:3]).numpy()
  matrix = segmentation.confusion(true, probabilities.argmax(-1), len(classes))
  metrics = segmentation.iou_metrics(matrix, classes)
  metrics.update(epochs=len(history.history["loss"]), seconds=time.monotonic() - start)
  return metrics


def main(argv):
  del argv
  results = {}
  with tempfile.TemporaryDirectory(prefix="kerasft-segmentation-") as root:
    classes = garments(root)
    if "kerasft" in FLAGS.segmenters:
      metrics, seconds = kerasft_case(root)
      results["kerasft"] = (metrics, seconds)
      print(f"kerasft: mean IoU {metrics['mean_iou']:.4f} in {seconds:.0f} s", flush=True)
    if "unet" in FLAGS.segmenters:
      budget = FLAGS.unet_seconds or results.get("kerasft", (None, 180.0))[1]
      metrics = unet_case(root, classes, budget)
      results["unet"] = (metrics, metrics["seconds"])
      print(f"unet: mean IoU {metrics['mean_iou']:.4f} in {metrics['seconds']:.0f} s "
            f"({metrics['epochs']} epochs at {FLAGS.unet_size} px)", flush=True)
  rows = [[case, f"{m['mean_iou']:.4f}", f"{m['pixel_accuracy']:.4f}", f"{s:.0f}"]
          for case, (m, s) in results.items()]
  print_table(["case", "mean IoU (test, 11 classes)", "pixel accuracy", "seconds"], rows,
              FLAGS.markdown)
  if {"unet", "kerasft"} <= set(results):
    ours, theirs = results["kerasft"][0]["mean_iou"], results["unet"][0]["mean_iou"]
    print(f"target (mean IoU at least 0.1 higher at equal time): "
          f"{'met' if ours >= theirs + 0.1 else 'NOT met'} ({ours:.4f} vs {theirs:.4f})")


if __name__ == "__main__":
  app.run(main)
