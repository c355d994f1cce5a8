"""Print the TF_CONFIG of one worker of a multi-worker training cluster.

  export TF_CONFIG=$(python -m kerasft.cluster --hosts='kerasft-{i}.kerasft:2222' --workers=2)
  python -m kerasft.train --strategy=multi_worker --model_dir=/shared/runs/NAME ...

Every worker runs the same two lines; each finds its index in $JOB_COMPLETION_INDEX (a
Kubernetes indexed Job) or $SLURM_PROCID (a Slurm task), or takes --index. Worker 0 is the
chief: it alone writes the run folder's files and the export. The templates in `deploy/`
use this; TF_CONFIG is TensorFlow's own format (`tf.distribute.cluster_resolver`).
"""

from __future__ import annotations

import json
import os

from kerasft.core import cli, errors
from kerasft.config import commands

INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "SLURM_PROCID")


def hosts(pattern: str, workers: int = 0) -> list[str]:
  """The workers' host:port: `pattern` with {i} = 0..workers-1, or a comma-separated list."""
  if workers:
    return [pattern.replace("{i}", str(i)) for i in range(workers)]
  return [h.strip() for h in pattern.split(",") if h.strip()]


def worker_index(index: int | None, environ=os.environ) -> int:
  """`index`, else the first of INDEX_VARIABLES set in `environ`; a UsageError if none."""
  if index is not None:
    return index
  for name in INDEX_VARIABLES:
    value = environ.get(name, "")
    if value.isdigit():
      return int(value)
  raise errors.UsageError(f"--index: pass this worker's index, or run where "
                          f"${' or $'.join(INDEX_VARIABLES)} gives it")


def tf_config(workers: list[str], index: int) -> str:
  """The TF_CONFIG JSON of worker `index` in a cluster of `workers` (host:port each)."""
  for host in workers:
    name, _, port = host.rpartition(":")
    if not name or not port.isdigit():
      raise errors.UsageError(f"--hosts: {host!r} is not host:port")
  if not 0 <= index < len(workers):
    raise errors.UsageError(f"--index: {index} is not a worker of {len(workers)} (0 to "
                            f"{len(workers) - 1})")
  return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker",
                                                               "index": index}})


cli.define_flags(commands.ClusterConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  settings = cli.from_flags(commands.ClusterConfig)
  print(tf_config(hosts(settings.hosts, settings.workers), worker_index(settings.index)))


if __name__ == "__main__":
  cli.run_app(main)
