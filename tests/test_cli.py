"""Flags come from the config dataclasses: one flag per setting, any entry points together."""

import dataclasses
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from conftest import REPO
from kerasft.core import cli
from kerasft.config import commands
from kerasft import config
from kerasft.core.errors import UsageError

ENTRY_POINTS = ("train", "evaluate", "predict", "export", "tune", "cluster", "adapt")
SETTINGS = (config.RunConfig, commands.TrainActions, commands.EvaluateConfig,
            commands.PredictConfig, commands.ExportConfig, commands.TuneConfig,
            commands.ClusterConfig, commands.AdaptConfig)


def _fields():
  return [f for cls in SETTINGS for f, _ in cli.flag_fields(cls)]


def test_entry_points_import_together_in_one_process():
  code = ("import kerasft.train, kerasft.evaluate, kerasft.predict, kerasft.export, "
          "kerasft.tune, kerasft.cluster, kerasft.adapt; from absl import flags; print(len(list(flags.FLAGS))); "
          "assert callable(kerasft.tune)")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]


def test_every_field_has_one_flag_and_every_flag_one_field():
  import kerasft.evaluate, kerasft.export, kerasft.predict, kerasft.train, kerasft.tune  # noqa: F401,E401
  import kerasft.adapt, kerasft.cluster  # noqa: F401,E401
  by_name = {}
  for field in _fields():
    by_name.setdefault(field.name, []).append(field)
  defined = {f.name for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
             if module.startswith("kerasft") for f in module_flags}
  assert defined == set(by_name), (defined ^ set(by_name))
  for name, fields in by_name.items():  # a name in two settings is one shared flag
    assert len({repr(f.default) for f in fields}) == 1, name
    assert all(f.metadata["help"] for f in fields), name
    default = fields[0].default  # an `int | str` field (auto or a number) is a string flag
    assert flags.FLAGS[name].default == (list(map(str, default)) if isinstance(default, tuple)
                                         else str(default) if name == "batch_size"
                                         else default), name


def test_choices_are_declared_once_and_validated_from_the_declaration():
  for cls in (config.ModelConfig, config.DataConfig, config.TrainingConfig):
    for field in dataclasses.fields(cls):
      choices = field.metadata.get("choices")
      if choices and not isinstance(field.default, tuple):
        assert field.default in choices, field.name
        with pytest.raises(UsageError, match=f"^--{field.name}: must be one of"):
          cls(**{field.name: "not-a-choice"})


def _flag_values(cls, **given):
  values = flags.FlagValues()
  cli.define_flags(cls, flag_values=values)
  values(["prog"] + [f"--{k}={v}" for k, v in given.items()])
  return values


def test_flags_map_to_the_nested_config():
  values = _flag_values(config.RunConfig, model="resnet50", head="64,32", epochs=3,
                        augment="flip,zoom", fine_tune_learning_rate=0.5, task="multilabel",
                        data_dir="x", name="n")
  run = cli.from_flags(config.RunConfig, flag_values=values)
  assert run.model.model == "resnet50" and run.model.head == (64, 32)
  assert run.training.epochs == 3 and run.training.fine_tune_learning_rate == 0.5
  assert run.data.augment == ("flip", "zoom") and run.data.data_dir == "x"
  assert run.model.task == "multilabel" and run.name == "n"
  assert run.training.weight_decay is None  # Optional default survives
  default = cli.from_flags(config.RunConfig, flag_values=_flag_values(config.RunConfig))
  assert default == config.RunConfig()


def test_bad_flag_values_name_the_flag():
  with pytest.raises(UsageError, match="^--head: expected comma-separated int values"):
    cli.from_flags(config.RunConfig, flag_values=_flag_values(config.RunConfig, head="64,x"))
  with pytest.raises(flags.IllegalFlagValueError):
    _flag_values(config.RunConfig, bn_mode="sometimes")


def test_only_restricts_the_flags_and_keeps_other_defaults():
  values = flags.FlagValues()
  cli.define_flags(config.DataConfig, only=commands.EVALUATION_DATA, flag_values=values)
  assert "mixup" not in values and "csv" in values
  values(["prog", "--csv=t.csv", "--batch_size=8"])
  d = cli.from_flags(config.DataConfig, only=commands.EVALUATION_DATA, flag_values=values)
  assert d.csv == "t.csv" and d.batch_size == 8 and d.mixup == 0.0


def test_a_shared_flag_with_another_default_is_refused():
  values = flags.FlagValues()
  cli.define_flags(config.DataConfig, flag_values=values)

  @dataclasses.dataclass(frozen=True)
  class Other:
    batch_size: int = dataclasses.field(default=7, metadata={"help": "h", "choices": ()})
  with pytest.raises(ValueError, match="--batch_size is declared twice"):
    cli.define_flags(Other, flag_values=values)


@flagsaver.flagsaver(epochs=7, model="mobilenet_v2", overwrite=True)
def test_train_flags_through_flagsaver():
  import kerasft.train  # noqa: F401  pylint: disable=unused-import
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  run = cli.from_flags(config.RunConfig)
  assert run.training.epochs == 7 and run.model.model == "mobilenet_v2" and run.overwrite


@pytest.mark.parametrize("command, cls", [("evaluate", commands.EvaluateConfig),
                                          ("predict", commands.PredictConfig),
                                          ("export", commands.ExportConfig)])
def test_command_settings_validate(command, cls):
  with pytest.raises(UsageError):
    cls()
