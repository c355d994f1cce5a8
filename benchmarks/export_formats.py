"""Every format a model ships in, side by side, on the fashion test images.

  python benchmarks/export_formats.py [--markdown] [--run_dir=runs/NAME]

Trains the fashion recipe (flags/fashion_mnist_small.cfg: MobileNet v1, ImageNet weights,
96 px, frozen backbone + convex head) unless --run_dir names a finished run of it, then
exports it once per format with `python -m kerasft.export` and measures each file on the
test images of ../shared/data/fashion_mnist_small (500), read as in training:
  - test accuracy, and the share of images with the SavedModel's top-1 class (the target
    for int8: at least 98%) and the largest probability difference;
  - file size, the export command's wall time (conversion, calibration and the check on
    validation images included) and the latency of one image on one thread (median of the
    test images; SavedModel: its serving_default in TensorFlow).
int8 three ways: full int8 (--min_agreement=0), kerasft's choice (the most compressed file
that keeps 98% of the float model's top-1 classes on the run's validation images), and full
int8 with uint8 input and output. The target: the chosen file keeps >= 98% on the test
images at no more than half the float file's size.
"""

import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import small_data  # noqa: E402  pylint: disable=wrong-import-position

flags.DEFINE_string("run_dir", "", "A finished run of the fashion recipe [train one].")
FLAGS = flags.FLAGS
CASES = (  # name, export flags
    ("SavedModel (float32)", ["--format=saved_model"]),
    ("LiteRT float32", ["--format=tflite"]),
    ("LiteRT dynamic range", ["--format=tflite", "--quantize=dynamic"]),
    ("LiteRT float16", ["--format=tflite", "--quantize=float16"]),
    ("LiteRT int8, full (float io)", ["--format=tflite", "--quantize=int8",
                                      "--min_agreement=0"]),
    ("LiteRT int8, chosen (--min_agreement=0.98)", ["--format=tflite", "--quantize=int8"]),
    ("LiteRT int8, full (uint8 io)", ["--format=tflite", "--quantize=int8",
                                      "--tflite_io=uint8"]),
    ("ONNX float32", ["--format=onnx"]),
)


def _latency(run_one, images) -> float:
  """Median seconds of run_one(image[None]) over `images` (after one warm-up call)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  run_one(images[:1])
  times = []
  for i in range(len(images)):
    start = time.perf_counter()
    run_one(images[i:i + 1])
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  from kerasft.serving import client, formats
  from kerasft.data import tables as sources
  from kerasft.tasks import registry as tasks
  from kerasft.training.run_folder import RunFolder
  work = tempfile.mkdtemp(prefix="kerasft-formats-")
  run_dir = FLAGS.run_dir or os.path.join(work, "run")
  if not FLAGS.run_dir:
    small_data.run_kerasft("train", "--flagfile=flags/fashion_mnist_small.cfg",
                           f"--model_dir={run_dir}",
                           f"--export_dir={os.path.join(work, 'unused')}")
  task = tasks.for_config(RunFolder(run_dir).read_config())
  names = RunFolder(run_dir).class_names()
  test = sources.evaluation_images(
      task.config.data.__class__(data_dir=os.path.join(small_data.FASHION, "test")),
      task.output.labels, names)
  images = np.concatenate([x for x, _ in task.pipeline(test, 64)])
  labels = np.asarray(test.labels)
  rows, reference, variant = [], None, "-"
  for name, args in CASES:
    export_dir = os.path.join(work, name.split()[0] + str(len(rows)))
    _, seconds = small_data.run_kerasft("export", f"--run_dir={run_dir}",
                                        f"--export_dir={export_dir}", *args)
    fmt = args[0].split("=")[1]
    if fmt == "saved_model":
      path = os.path.join(export_dir, "1")
      signature = client.load_saved_model(path).signatures["serving_default"]
      probs = np.concatenate([task.output.main_output(signature(images=tf.constant(images[i:i + 64])))
                              for i in range(0, len(images), 64)])
      reference = probs
      size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(
          os.path.join(path, "variables")) for f in fs)
      latency = _latency(lambda x: signature(images=tf.constant(x)), images[:200])
    else:
      path = os.path.join(export_dir, fmt, "1", formats.FILES[fmt])
      probs = task.output.main_output(formats.RUNNERS[fmt](path, images))
      size = os.path.getsize(path)
      if fmt == "tflite":
        runner = formats._interpreter(path).get_signature_runner("serving_default")  # pylint: disable=protected-access
        detail = runner.get_input_details()["images"]
        latency = _latency(lambda x: runner(images=formats._quantize(x, detail)),  # pylint: disable=protected-access
                           images[:200])
      else:
        import onnxruntime  # pylint: disable=g-import-not-at-top
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options,
                                               providers=["CPUExecutionProvider"])
        latency = _latency(lambda x: session.run(None, {"images": x}), images[:200])
    rows.append([name, f"{np.mean(probs.argmax(1) == labels):.3f}",
                 f"{np.mean(probs.argmax(1) == reference.argmax(1)):.3f}",
                 f"{np.abs(probs - reference).max():.1e}", f"{size / 1e6:.1f} MB",
                 f"{seconds:.1f} s", f"{1000 * latency:.1f} ms"])
    print(json.dumps({"case": name, "row": rows[-1]}), file=sys.stderr)
    if "chosen" in name:  # the variant --quantize=int8 chose
      variant = json.load(open(os.path.join(os.path.dirname(path), "model_card.json")))[
          "format"]["chosen"]
  small_data.print_table(
      ["format", "test accuracy", "same top-1 as SavedModel", "largest difference",
       "size (weights)", "export command", "latency, 1 image, 1 thread"],
      rows, FLAGS.markdown)
  chosen, float_row = rows[5], rows[1]
  half = float(chosen[4].split()[0]) <= 0.5 * float(float_row[4].split()[0])
  print(f"\n{len(labels)} test images; int8 target: the chosen file keeps the same top-1 on "
        f">= 98% at no more than half the float file's size "
        f"({'met' if float(chosen[2]) >= 0.98 and half else 'not met'}: {chosen[2]}, "
        f"{chosen[4]} vs {float_row[4]}); chosen: {variant}")


if __name__ == "__main__":
  app.run(main)
