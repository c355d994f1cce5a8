import json

import pytest

import kerasft
from kerasft import config
from kerasft.config import checks
from kerasft.core.errors import UsageError


@pytest.mark.parametrize("make, flag", [
    (lambda: config.DataConfig(batch_size=0), "--batch_size"),
    (lambda: config.DataConfig(validation_split=1.0), "--validation_split"),
    (lambda: config.TrainingConfig(learning_rate=-1), "--learning_rate"),
    (lambda: config.TrainingConfig(epochs=0), "--epochs"),
    (lambda: config.TrainingConfig(optimizer="rmsprop"), "--optimizer"),
    (lambda: config.ModelConfig(dropout=1.5), "--dropout"),
    (lambda: config.ModelConfig(head=(512, 0)), "--head"),
    (lambda: config.ModelConfig(model="inception_v3", image_size=32), "--image_size"),
    (lambda: config.ModelConfig(model="resnet5O"), "--model"),
    (lambda: checks.check_run(config.RunConfig(model=config.ModelConfig(unfreeze_top=3))),
     "--unfreeze_top"),
    (lambda: checks.check_run(config.RunConfig(
        training=config.TrainingConfig(fine_tune_epochs=2))), "--fine_tune_epochs"),
    (lambda: config.RunConfig(name="a/b"), "--name"),
    (lambda: config.DataConfig(augment=("flip", "blur")), "--augment"),
    (lambda: config.DataConfig(class_weight="inverse"), "--class_weight"),
])
def test_bad_values_name_the_flag(make, flag):
  with pytest.raises(UsageError) as e:
    make()
  assert str(e.value).startswith(flag)
  assert "\n" not in str(e.value)


def test_unknown_model_lists_close_matches():
  with pytest.raises(UsageError, match="did you mean resnet50"):
    config.ModelConfig(model="resnet_50")


def test_resolved_fills_defaults_from_backbone():
  c = config.RunConfig(model=config.ModelConfig(model="efficientnet_b2")).resolved()
  assert c.name == "efficientnet_b2"
  assert c.model_dir == "runs/efficientnet_b2"
  assert c.export_dir == "saved_models/efficientnet_b2"
  assert c.model.image_size == 260
  assert c.training.fine_tune_learning_rate == pytest.approx(1e-4)


def test_json_round_trip(tmp_path):
  c = config.RunConfig(model=config.ModelConfig(head=(64, 32), unfreeze_top=2),
                       training=config.TrainingConfig(fine_tune_epochs=1),
                       name="x").resolved()
  path = tmp_path / "config.json"
  c.to_json(str(path))
  assert json.loads(path.read_text())["model"]["head"] == [64, 32]
  assert config.RunConfig.from_json(str(path)) == c


def test_the_resolved_config_keeps_data_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a run started here is exported or evaluated from anywhere
  resolved = kerasft.RunConfig(data=kerasft.DataConfig(
      csv="labels.csv", val_csv="val.csv", cache_dir="cache")).resolved()
  assert resolved.data.csv == str(tmp_path / "labels.csv")
  assert resolved.data.val_csv == str(tmp_path / "val.csv")
  assert resolved.data.cache_dir == str(tmp_path / "cache")
  assert resolved.data.data_dir == "" and resolved.resolved() == resolved
