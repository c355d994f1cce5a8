"""kerasft.adapt: masked-LM adaptation of a tiny encoder, the preset it writes, resuming,
and the one-line mistakes."""

import json
import os

import pytest

from conftest import call_main

keras_hub = pytest.importorskip("keras_hub", reason="pip install 'kerasft[text]'")

from test_text import TEXTS, _write_csv, make_tiny_preset  # noqa: E402


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
  return make_tiny_preset("distil_bert", str(tmp_path_factory.mktemp("adapt") / "preset"))


def _texts_csv(tmp_path):
  return _write_csv(tmp_path / "texts.csv", TEXTS, times=8)


@pytest.mark.slow
def test_adaptation_lowers_the_masked_lm_loss_and_the_preset_trains(preset, tmp_path):
  out = tmp_path / "adapted"
  result = call_main("adapt", f"--model=keras_hub:{preset}", f"--csv={_texts_csv(tmp_path)}",
                     f"--output_dir={out}", "--mlm_epochs=8", "--mlm_learning_rate=3e-3",
                     "--batch_size=8", "--mask_rate=0.3", "--time_budget=1h")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.load(open(out / "adaptation.json"))
  assert report["after"]["loss"] < report["before"]["loss"], report
  assert "head" in report["history"]  # a random tiny encoder's head predicts at chance
  assert not os.path.exists(str(out) + ".partial") and not os.path.exists(str(out) + ".tmp")
  assert "held-out masked-LM loss" in result.stdout
  trained = call_main("train", f"--model=keras_hub:{out}", f"--csv={_texts_csv(tmp_path)}",
                      f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert os.path.isdir(tmp_path / "export" / "1")


@pytest.mark.slow
def test_a_killed_adaptation_resumes_its_finished_phases(preset, tmp_path):
  from kerasft.workflows import adapt as adapting
  out = tmp_path / "adapted"
  work = str(out) + ".partial"
  os.makedirs(work)
  args = [f"--model=keras_hub:{preset}", f"--csv={_texts_csv(tmp_path)}", f"--output_dir={out}",
          "--mlm_epochs=1", "--batch_size=8"]
  first = call_main("adapt", *args, "--mlm_head_epochs=0")
  assert first.returncode == 0, first.stderr[-3000:]
  # a run killed after its encoder phase: the state and weights it left behind
  state = {"done": ["encoder"], "history": {"encoder": {"loss": [1.0]}}}
  os.makedirs(work)
  json.dump(state, open(os.path.join(work, adapting.STATE), "w"))
  import keras
  model = keras_hub.models.MaskedLM.from_preset(str(out))
  model.save_weights(os.path.join(work, adapting.WEIGHTS))
  again = call_main("adapt", *args, "--mlm_head_epochs=0", "--overwrite")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming in" in again.stderr and "Epoch 1/1" not in again.stdout
  assert json.load(open(out / "adaptation.json"))["history"] == state["history"]
  del keras


@pytest.mark.parametrize("args, message", [
    (["--model=mobilenet", "--csv={csv}"], "--model: adapt continues a text encoder"),
    (["--model=keras_hub:{preset}"], "--csv/--text_dir/--tfds: pass the unlabelled texts"),
    (["--model=keras_hub:{preset}", "--csv={csv}", "--output_dir={exists}"],
     "--output_dir: {exists} exists; pass --overwrite"),
    (["--model=keras_hub:{preset}", "--csv={csv}", "--mask_rate=1.5"],
     "--mask_rate: must be between 0 and 1"),
    (["--model=keras_hub:{preset}", "--csv={csv}", "--time_budget=soon"],
     "--time_budget: a duration such as 300s"),
    (["--model=keras_hub:{preset}", "--text_dir={missing}"], "--text_dir: {missing} is not a "
     "folder"),
    (["--model=keras_hub:{missing}", "--csv={csv}"], "--model: keras_hub: folder {missing} does "
     "not exist"),
    (["--model=keras_hub:{preset}", "--csv={csv}", "--batch_size=auto"],
     "--batch_size=auto: kerasft.train chooses its batch by memory, adapt does not"),
])
def test_adapt_mistakes_are_one_line_errors(preset, tmp_path, args, message):
  (tmp_path / "exists").mkdir()
  paths = {"csv": _texts_csv(tmp_path), "preset": preset, "exists": str(tmp_path / "exists"),
           "missing": str(tmp_path / "missing")}
  result = call_main("adapt", *[a.format(**paths) for a in args])
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert message.format(**paths) in last, last


def test_texts_are_read_from_csv_folders_and_tfds_labels_ignored(tmp_path):
  import kerasft
  import tensorflow_datasets as tfds
  from kerasft.workflows import adapt as adapting
  csv = _texts_csv(tmp_path)
  assert len(adapting.read_texts(kerasft.DataConfig(csv=csv))) == 64
  (tmp_path / "docs" / "a").mkdir(parents=True)
  (tmp_path / "docs" / "a" / "one.txt").write_text("first text\n")
  (tmp_path / "docs" / "two.txt").write_text("second text")
  (tmp_path / "docs" / "empty.txt").write_text("  ")
  assert sorted(adapting.read_texts(kerasft.DataConfig(text_dir=str(tmp_path / "docs")))) == [
      "first text", "second text"]

  class KerasftNotes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "note": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["a", "b"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(5):
        yield str(i), {"note": f"note number {i}", "label": i % 2}
  KerasftNotes(data_dir=str(tmp_path / "tfds")).download_and_prepare()
  texts = adapting.read_texts(kerasft.DataConfig(tfds="kerasft_notes",
                                                 tfds_data_dir=str(tmp_path / "tfds")))
  assert sorted(texts) == [f"note number {i}" for i in range(5)]
