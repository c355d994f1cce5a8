"""Peak memory of a large backbone's fine-tune: batch 32 against batch 8 x 4 accumulated.

  .venv/bin/python benchmarks/memory.py --markdown

ResNet50 (random weights: the ImageNet ones are not cached offline; memory does not depend
on the weights' values) at 224 px on 64 training and 16 validation images of
../shared/data/fashion_mnist_small: the head solved, then every block fine-tuned for one
epoch (SGD), each case in a fresh process whose peak resident memory is read after the run:
  batch32   --batch_size=32
  batch8x4  --batch_size=8 --gradient_accumulation_steps=4 (one optimizer step per 4
            batches: the same effective batch; tests/test_methods.py checks that it equals batch
            32 to 1e-5 with SGD and no batch norm)
  batch8    --batch_size=8 (what accumulation adds beyond a small batch)
--remat is not in the table: keras.RematScope fails inside `fit` on the TensorFlow backend
(keras-team/keras#21207), so kerasft does not offer it yet.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import small_data  # noqa: E402  pylint: disable=wrong-import-position

CASES = {"batch32": {"batch_size": 32}, "batch8x4": {"batch_size": 8, "accumulate": 4},
         "batch8": {"batch_size": 8}}
flags.DEFINE_string("case", "", "Run one case in this process (internal).")
flags.DEFINE_string("work", "", "The work folder (internal).")
flags.DEFINE_string("model", "resnet50", "The backbone.")
flags.DEFINE_integer("image_size", 224, "The image size.")
flags.DEFINE_integer("blocks", 18, "Blocks fine-tuned (ResNet50 has 18: all).")
FLAGS = flags.FLAGS


def _run(case: str, work: str) -> dict:
  """One case in this process: {seconds, validation accuracy}."""
  import kerasft  # pylint: disable=g-import-not-at-top
  rows = small_data._slice(small_data._rows("image")[0], 8)  # pylint: disable=protected-access
  data = small_data._write(rows, os.path.join(work, "train.csv"), "path")  # pylint: disable=protected-access
  spec = CASES[case]
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=FLAGS.model, weights="none",
                                image_size=FLAGS.image_size, unfreeze_blocks=FLAGS.blocks),
      data=kerasft.DataConfig(csv=data, batch_size=spec["batch_size"]),
      training=kerasft.TrainingConfig(fine_tune_epochs=1, optimizer="sgd",
                                      gradient_accumulation_steps=spec.get("accumulate", 1)),
      name=case, model_dir=os.path.join(work, "run"), export_dir=os.path.join(work, "export"))
  start = time.monotonic()
  result = kerasft.run_training(config, verbose=0, export=False)
  return {"seconds": time.monotonic() - start, "accuracy": result.metrics.get("accuracy")}


def main(argv):
  del argv
  if FLAGS.case:
    os.makedirs(FLAGS.work, exist_ok=True)
    result = _run(FLAGS.case, FLAGS.work)
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
    return
  work = tempfile.mkdtemp(prefix="kerasft-memory-")
  rows = []
  for case, spec in CASES.items():
    run = subprocess.run([sys.executable, __file__, f"--case={case}",
                          f"--work={os.path.join(work, case)}", f"--model={FLAGS.model}",
                          f"--image_size={FLAGS.image_size}", f"--blocks={FLAGS.blocks}"],
                         cwd=small_data.REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": small_data.REPO})
    if run.returncode:
      sys.exit(f"{case} failed:\n{run.stderr[-3000:]}")
    r = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps({"case": case, **r}), file=sys.stderr, flush=True)
    rows.append([case, str(spec["batch_size"]), str(spec.get("accumulate", 1)),
                 str(spec["batch_size"] * spec.get("accumulate", 1)),
                 f"{r['peak_mib']:.0f}", f"{r['seconds']:.0f}"])
  small_data.print_table(["case", "batch", "accumulated", "effective batch",
                          "peak memory (MiB)", "seconds"], rows, FLAGS.markdown)


if __name__ == "__main__":
  app.run(main)
