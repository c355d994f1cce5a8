"""Fine-tune a backbone on labelled images or texts and export it for TF Serving.

  python -m kerasft.train --model=mobilenet --data_dir=flowers/ --image_size=128
  python -m kerasft.train --flagfile=flags/fashion_mnist_small.cfg
  python -m kerasft.train            # the built-in recipe (scikit-learn's digits)
  python -m kerasft.train --list_models
"""

import os
import time

STARTED = time.monotonic()  # the run's time breakdown counts importing from here
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasft.core import cli, errors  # noqa: E402
from kerasft.config import commands  # noqa: E402
from kerasft import config  # noqa: E402
from kerasft.config import backbones  # noqa: E402

cli.define_flags(commands.TrainActions)
cli.define_flags(config.RunConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  actions = cli.from_flags(commands.TrainActions)
  if actions.list_models:
    print(backbones.model_table())
    return
  run_config = cli.from_flags(config.RunConfig)
  if actions.list_blocks:
    from kerasft.tasks import registry as tasks
    print(tasks.for_config(run_config).block_table())
    return
  from kerasft.workflows.train import run_training
  result = run_training(run_config, before={"import": time.monotonic() - STARTED})
  if result.export_path:  # not on multi-worker workers other than the chief
    print(f"validation {result.headline}; run in {result.config.model_dir}; exported to "
          f"{result.export_path}")


if __name__ == "__main__":
  cli.run_app(main)
