"""Adapt a text encoder to your domain: continued masked-language-model training on your
unlabelled texts, written as a KerasHub preset folder that kerasft.train fine-tunes.

  python -m kerasft.adapt --model=keras_hub:bert_base_en_uncased --text_dir=tickets/
  python -m kerasft.adapt --model=keras_hub:../shared/models/all-minilm-l6-v2 \
      --csv=../shared/data/fortunes_4class/train.csv --output_dir=adapted/minilm-fortunes
  python -m kerasft.train --model=keras_hub:adapted/minilm-fortunes --csv=labelled.csv

Texts come from --csv (--text_column; other columns, labels too, are ignored), --text_dir
(.txt files, searched recursively) or --tfds (--text_key). A killed run resumes when started
again with the same flags; --time_budget stops it in time (what is trained is written).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasft.core import cli, errors  # noqa: E402
from kerasft.config import commands  # noqa: E402
from kerasft import config  # noqa: E402

cli.define_flags(config.ModelConfig, only=commands.ADAPT_MODEL)
cli.define_flags(config.DataConfig, only=commands.ADAPT_DATA)
cli.define_flags(config.TrainingConfig, only=commands.ADAPT_TRAINING)
cli.define_flags(commands.AdaptConfig)


def main(argv):
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; all inputs are --flags")
  model = cli.from_flags(config.ModelConfig, only=commands.ADAPT_MODEL)
  data = cli.from_flags(config.DataConfig, only=commands.ADAPT_DATA)
  training = cli.from_flags(config.TrainingConfig, only=commands.ADAPT_TRAINING)
  settings = cli.from_flags(commands.AdaptConfig)
  from kerasft.workflows import adapt as adapting
  result = adapting.adapt(model.model, data, settings, training, model.max_length)
  print(f"held-out masked-LM loss {result.before['loss']:.4f} -> {result.after['loss']:.4f}, "
        f"accuracy {result.before['accuracy']:.4f} -> {result.after['accuracy']:.4f}; "
        f"preset in {result.output_dir} (kerasft.train --model=keras_hub:{result.output_dir})")


if __name__ == "__main__":
  cli.run_app(main)
