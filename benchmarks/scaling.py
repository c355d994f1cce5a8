"""How a run's time and memory grow with the data: features in memory against on disk.

  .venv/bin/python benchmarks/scaling.py [--markdown] [--sizes=1000,10000,50000]

Images: the fashion sample's 1,000 training images repeated with small changes (a shift of
up to 2 pixels, a mirror image, a brightness change of up to 15%; seeded) to each size, as
PNG files listed in a CSV. Each size trains `python -m kerasft.train` twice, MobileNet
(ImageNet) at 96 px, the head trained by epochs (--head_solver=epochs --epochs=3, so that
both cases train alike: the convex solve needs the features in memory):
  memory: the features cached in memory (the default when they fit);
  disk:   --feature_cache_memory=1 (MiB): the features are written to the run folder and
          streamed back every epoch.
Prints each run's whole-process seconds, seconds per 1,000 images, and peak RSS (the
process's own, from wait4), and whether time grows linearly (seconds per 1,000 images
within 1.5x of the smallest size's) and memory stays flat on disk (peak within 1.25x).
"""

import csv
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from small_data import REPO, _rows, print_table  # noqa: E402

flags.DEFINE_list("sizes", ["1000", "10000", "50000"], "Numbers of images.")
flags.DEFINE_list("features", ["memory", "disk"], "Where the features go: memory, disk.")
FLAGS = flags.FLAGS


def make_images(folder: str, n: int, seed: int = 0) -> str:
  """Writes `n` PNGs varied from the fashion training images; returns a CSV of them."""
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  rows, _, _ = _rows("image")
  rng = np.random.default_rng(seed)
  originals = [(np.asarray(Image.open(r["path"]).convert("RGB")), r["label"]) for r in rows]
  listed = []
  for i in range(n):
    pixels, label = originals[i % len(originals)]
    image = Image.fromarray(np.roll(pixels, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)))
    if rng.random() < 0.5:
      image = ImageOps.mirror(image)
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) * rng.uniform(0.85, 1.15),
                                    0, 255).astype(np.uint8))
    path = os.path.join(folder, f"{i:06d}.png")
    image.save(path)
    listed.append({"path": path, "label": label})
  table = os.path.join(folder, f"images-{n}.csv")
  with open(table, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["path", "label"])
    writer.writeheader()
    writer.writerows(listed)
  return table


def run(table: str, folder: str, *extra: str) -> tuple[float, float]:
  """(whole-process seconds, peak RSS MiB) of one `kerasft.train` on `table`."""
  env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3",
         "KERAS_HOME": os.environ.get("KERAS_HOME", os.path.join(REPO, ".keras_home"))}
  start = time.monotonic()
  process = subprocess.Popen(
      [sys.executable, "-m", "kerasft.train", "--model=mobilenet", "--image_size=96",
       f"--csv={table}", "--head_solver=epochs", "--epochs=3", "--report=none",
       f"--model_dir={folder}/run", f"--export_dir={folder}/export", *extra], env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _, status, usage = os.wait4(process.pid, 0)
  seconds = time.monotonic() - start
  if status:
    sys.exit(f"kerasft.train failed:\n{process.stderr.read()[-3000:]}")
  return seconds, usage.ru_maxrss / 1024


def main(argv):
  del argv
  sizes = sorted(int(s) for s in FLAGS.sizes)
  rows, measured = [], {}
  with tempfile.TemporaryDirectory(prefix="kerasft-scaling-") as work:
    images = os.path.join(work, "images")
    os.makedirs(images)
    start = time.monotonic()
    make_images(images, sizes[-1])
    print(f"{sizes[-1]} images written in {time.monotonic() - start:.0f} s", file=sys.stderr)
    for n in sizes:
      table = os.path.join(work, f"first-{n}.csv")
      with open(os.path.join(images, f"images-{sizes[-1]}.csv")) as f:
        lines = f.readlines()[:n + 1]
      with open(table, "w") as f:
        f.writelines(lines)
      for case, extra in (("memory", ()), ("disk", ("--feature_cache_memory=1",))):
        if case not in FLAGS.features:
          continue
        seconds, peak = run(table, os.path.join(work, f"{case}-{n}"), *extra)
        measured[case, n] = (seconds, peak)
        rows.append([f"{n:,}", case, f"{seconds:.1f}", f"{1000 * seconds / n:.2f}",
                     f"{peak:.0f}"])
        print(f"# {n} {case}: {seconds:.1f} s, {peak:.0f} MiB", file=sys.stderr, flush=True)
  print_table(["images", "features", "process s", "s per 1,000 images", "peak RSS MiB"],
              rows, FLAGS.markdown)
  small, large = sizes[0], sizes[-1]
  for case in FLAGS.features:
    rate = [measured[case, n][0] / n for n in (small, large)]
    growth = measured[case, large][1] / measured[case, small][1]
    print(f"{case}: {rate[1] / rate[0]:.2f}x the seconds per image of {small:,} images at "
          f"{large:,} (fixed costs weigh less at larger sizes; linear: <= 1.5x); peak RSS "
          f"{growth:.2f}x" + (" (flat: <= 1.25x)" if case == "disk" else ""))


if __name__ == "__main__":
  app.run(main)
