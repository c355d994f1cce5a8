"""Under k-fold (small data), should the convex head standardize its features? Measured on
training data only, with nested cross-validation.

  python benchmarks/kfold_standardize.py [--markdown] [--subsets=5] [--sizes=5,10]

For each data set (a frozen backbone's features of its *training* split: the test splits
are never read), each size (N labelled examples per class) and each of --subsets seeded
draws of N per class, the whole small-data procedure of `kerasft.training.head_solver` is
scored by nested 5-fold cross-validation of the draw: the L2 strength chosen by an inner
5-fold on each outer fold's training rows, the head fitted there and scored on the outer
fold. That is done with raw features and with standardized ones; the table prints the
mean nested accuracy of each and the decision: the variant with the higher mean over
every row (kerasft's default under k-fold).
Data sets: ../shared/data/fashion_mnist_small (MobileNet, ImageNet weights, 96 px),
scikit-learn's digits (the same backbone, 96 px), ../shared/data/fortunes_4class (the MiniLM
encoder in ../shared/models, mean-pooled).
"""

import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
sys.path.insert(0, REPO)
flags.DEFINE_list("sizes", ["5", "10"], "Labelled examples per class.")
flags.DEFINE_integer("subsets", 5, "Seeded draws of N per class for each size.")
flags.DEFINE_bool("markdown", False, "Print the table as Markdown.")
FLAGS = flags.FLAGS


def _features(run_config) -> tuple[np.ndarray, np.ndarray]:
  """(features, labels) of every training example of a run config's data (its own
  validation split included: the test split is another folder or file)."""
  from kerasft.models import features
  from kerasft.tasks import registry
  task = registry.for_config(run_config.resolved()).resolve_data()
  train, val = task.index(0)
  task, model = task.build_model(train)
  files = train + val
  return features.extract(model, files, task.pipeline), np.asarray(files.labels)


def _datasets() -> dict:
  import kerasft
  work = tempfile.mkdtemp()
  image = lambda data_dir: kerasft.RunConfig(  # noqa: E731
      model=kerasft.ModelConfig(model="mobilenet", image_size=96),
      data=kerasft.DataConfig(data_dir=data_dir), model_dir=work)
  from kerasft.core import _compat
  from kerasft.data import folders
  digits = folders.builtin_digits(os.path.join(_compat.keras_home(), "datasets"))
  return {
      "fashion (MobileNet 96 px)": _features(image(os.path.join(
          SHARED, "data", "fashion_mnist_small", "train"))),
      "digits (MobileNet 96 px)": _features(image(digits)),
      "fortunes (MiniLM)": _features(kerasft.RunConfig(
          model=kerasft.ModelConfig(model="keras_hub:" + os.path.join(SHARED, "models",
                                                                      "all-minilm-l6-v2")),
          data=kerasft.DataConfig(csv=os.path.join(SHARED, "data", "fortunes_4class",
                                                   "train.csv")), model_dir=work))}


def _draw(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                                 for c in np.unique(y)]))


def nested_accuracy(x: np.ndarray, y: np.ndarray, standardize: bool) -> float:
  """The nested 5-fold accuracy of kerasft's small-data head on (x, y)."""
  import kerasft
  from kerasft.tasks.classify import solver as solvers
  from kerasft.training import head_solver
  solver = solvers.Softmax(standardize)
  k = int(y.max()) + 1
  return head_solver._nested(solver, x, y, k, None,  # pylint: disable=protected-access
                             (kerasft.TrainingConfig(), True))


def main(argv):
  del argv
  rows, means = [], {True: [], False: []}
  start = time.monotonic()
  for name, (x, y) in _datasets().items():
    _, y = np.unique(y, return_inverse=True)
    for per_class in map(int, FLAGS.sizes):
      scores = {s: [] for s in (False, True)}
      for seed in range(FLAGS.subsets):
        idx = _draw(y, per_class, seed)
        for standardize in (False, True):
          scores[standardize].append(nested_accuracy(x[idx], y[idx], standardize))
        print(f"{name}, {per_class} per class, draw {seed + 1}/{FLAGS.subsets}: raw "
              f"{scores[False][-1]:.4f}, standardized {scores[True][-1]:.4f} "
              f"({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
      for s in (False, True):
        means[s].append(float(np.mean(scores[s])))
      rows.append((name, per_class, np.mean(scores[False]), np.std(scores[False]),
                   np.mean(scores[True]), np.std(scores[True])))
  header = ("data (training split only)", "per class", "raw: nested accuracy",
            "standardized: nested accuracy")
  lines = [" | ".join(header), " | ".join("---" for _ in header)] if FLAGS.markdown else []
  for name, n, raw, raw_sd, std, std_sd in rows:
    cells = (name, str(n), f"{raw:.4f} ± {raw_sd:.4f}", f"{std:.4f} ± {std_sd:.4f}")
    lines.append(" | ".join(cells) if FLAGS.markdown else "  ".join(cells))
  winner = "standardized" if np.mean(means[True]) > np.mean(means[False]) else "raw"
  lines.append(f"\nmean over rows: raw {np.mean(means[False]):.4f}, standardized "
               f"{np.mean(means[True]):.4f} ({FLAGS.subsets} draws each): {winner} features "
               "under k-fold")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
