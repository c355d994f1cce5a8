"""report.html, explanations (Grad-CAM, word attributions), temperature scaling and slices."""

import csv
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import checked, COLORS, call_main, tiny_model, write_color_images
import kerasft
import kerasft.tasks.registry
import kerasft.data.examples
from kerasft.models import backbones, explain, heads
from kerasft.reporting import calibration, html as html_report
from kerasft.data import tables as sources
from kerasft.tasks import registry as tasks
from kerasft.core.errors import UsageError
from kerasft.reporting import sections as report_sections

SITES = ("north", "south")


class _Page(HTMLParser):
  """Section titles, image sources and links of an HTML page."""

  def __init__(self):
    super().__init__()
    self.sections, self.images, self.links, self._in_h2 = [], [], [], False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self._in_h2 = self._in_h2 or tag == "h2"
    if tag == "img":
      self.images.append(attrs.get("src", ""))
    if attrs.get("href") or (tag in ("script", "link")):
      self.links.append(attrs.get("href") or tag)

  def handle_endtag(self, tag):
    self._in_h2 = self._in_h2 and tag != "h2"

  def handle_data(self, data):
    if self._in_h2:
      self.sections.append(data)


def _page(path):
  page = _Page()
  page.feed(open(path, encoding="utf-8").read())
  return page


def _csv(root, colors):
  path = root / "labels.csv"
  tags = {"blue": "cool", "green": "cool|natural", "red": "warm"}
  redness = {"blue": 0.0, "green": 0.25, "red": 1.0}
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label", "tags", "redness", "site"])
    for color in COLORS:
      for i, name in enumerate(sorted(os.listdir(os.path.join(colors, color)))):
        writer.writerow([os.path.join(colors, color, name), color, tags[color], redness[color],
                         SITES[i % 2]])
  return str(path)


def _run(root, task, column, **training):
  colors = write_color_images(root / "colors", per_class=12, size=32)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model(), task=task),
      data=kerasft.DataConfig(csv=_csv(root, colors), label_column=column, batch_size=8,
                              slice_column=("site",)),
      training=kerasft.TrainingConfig(epochs=3, learning_rate=0.03, **training),
      name=task, model_dir=str(root / "run"), export_dir=str(root / "export"))
  return kerasft.run_training(config, verbose=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return {"multiclass": _run(tmp_path_factory.mktemp("mc"), "multiclass", "label",
                             calibrate="temperature"),
          "multilabel": _run(tmp_path_factory.mktemp("ml"), "multilabel", "tags"),
          "regression": _run(tmp_path_factory.mktemp("rg"), "regression", "redness")}


SECTIONS = {"multiclass": ["Summary", "Training curves", "Confusion matrix", "Per class",
                           "Most confused pairs", "Most confident mistakes", "Calibration",
                           "Slices"],
            "multilabel": ["Summary", "Training curves", "Per label", "Largest errors",
                           "Slices"],
            "regression": ["Summary", "Training curves", "Predictions and residuals",
                           "Largest errors", "Slices"]}


@pytest.mark.parametrize("task", list(SECTIONS))
def test_every_run_writes_a_self_contained_report_with_its_tasks_sections(runs, task):
  folder = runs[task].config.model_dir
  page = _page(os.path.join(folder, "report.html"))
  assert page.sections == SECTIONS[task]
  assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
  assert [l for l in page.links if not l.startswith("#")] == []  # no network, no scripts
  text = open(os.path.join(folder, "report.html")).read()
  assert 'class="warn"' not in text  # every figure was drawn
  metrics = json.load(open(os.path.join(folder, "metrics.json")))
  assert set(metrics["slices"]["site"]) == set(SITES)


def test_slices_equal_scikit_learn_on_the_same_predictions(runs):
  from sklearn import metrics as sk
  result = runs["multiclass"]
  task = kerasft.tasks.registry.for_config(result.config)
  val = task.index(result.config.training.seed)[1]
  sites = sources.slice_values(result.config.data, val, "path")["site"]
  probabilities = np.asarray(result.model(task.sample_inputs(len(val.inputs))[0]))
  labels = np.asarray(val.labels)
  got = report_sections.slices(task.output, {"site": sites}, labels, probabilities)
  for site in SITES:
    idx = [i for i, s in enumerate(sites) if s == site]
    assert got["site"][site] == {"count": len(idx), "accuracy": sk.accuracy_score(
        labels[idx], probabilities[idx].argmax(1))}
  metrics = json.load(open(os.path.join(result.config.model_dir, "metrics.json")))
  # the run's slices count the examples its figures come from: the validation split, or
  # under k-fold (this tiny run) the out-of-fold predictions of every labelled example
  train = task.index(result.config.training.seed)[0]
  expected = len(train.inputs) + len(val.inputs) if "fold" in metrics.get(
      "validated_on", "") else len(val.inputs)
  assert sum(v["count"] for v in metrics["slices"]["site"].values()) == expected
  assert metrics["num_examples"] == expected


def test_a_slice_column_that_does_not_exist_is_one_line(runs, tmp_path):
  data = runs["multiclass"].config.data
  run = call_main("train", f"--csv={data.csv}", f"--model={tiny_model()}", "--epochs=1",
                  "--slice_column=device", f"--model_dir={tmp_path / 'r'}",
                  f"--export_dir={tmp_path / 'e'}")
  assert run.returncode == 2, run.stderr[-2000:]
  assert run.stderr.strip().splitlines()[-1].startswith(
      "error: --slice_column: ") and "has no column 'device'" in run.stderr
  assert not (tmp_path / "r").exists()
  other = call_main("train", f"--data_dir={tmp_path}", "--slice_column=site")
  assert other.stderr.strip().splitlines()[-1] == "error: --slice_column: only goes with --csv"


def test_temperature_lowers_ece_on_overconfident_logits():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 2000)
  logits = rng.normal(0, 1, (2000, 5))
  logits[np.arange(2000), labels] += 1.0  # right 50-60% of the time ...
  probabilities = calibration.scaled(np.exp(logits * 4) / np.exp(logits * 4).sum(1, keepdims=True), 1.0)
  before = calibration.ece(probabilities, labels)  # ... but sure of it: over-confident
  t = calibration.fit_temperature(probabilities, labels)
  after = calibration.ece(calibration.scaled(probabilities, t), labels)
  assert t > 2 and after < before / 3, (t, before, after)
  assert np.array_equal(calibration.scaled(probabilities, t).argmax(1), probabilities.argmax(1))


def test_the_export_serves_calibrated_probabilities_with_the_same_classes(runs, tmp_path):
  result = runs["multiclass"]
  entry = result.metrics["calibration"]
  assert entry["ece_calibrated"] <= entry["ece"] and entry["temperature"] > 0
  plain = kerasft.run_training(dataclasses_replace(result.config, tmp_path), verbose=0)
  assert "temperature" not in plain.metrics["calibration"]
  task = kerasft.tasks.registry.for_config(result.config)
  images = task.sample_inputs(16)[0]
  np.save(tmp_path / "x.npy", images)
  served = {}
  for name, export in (("calibrated", result.export_path), ("plain", plain.export_path)):
    cli = os.path.join(os.path.dirname(__import__("sys").executable), "saved_model_cli")
    done = subprocess.run([cli, "run", "--dir", export, "--tag_set", "serve",
                           "--signature_def", "serving_default", "--inputs",
                           f"images={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / name)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    served[name] = np.load(tmp_path / name / "probabilities.npy")
  np.testing.assert_allclose(served["calibrated"],
                             calibration.scaled(served["plain"], entry["temperature"]),
                             atol=1e-5)
  assert np.array_equal(served["calibrated"].argmax(1), served["plain"].argmax(1))


def dataclasses_replace(config, tmp_path):
  import dataclasses
  return dataclasses.replace(
      config, training=dataclasses.replace(config.training, calibrate="none"),
      model_dir=str(tmp_path / "plain"), export_dir=str(tmp_path / "plain_export"))


def test_calibrate_is_refused_where_there_is_no_softmax():
  with pytest.raises(UsageError, match="--calibrate: not for --task=multilabel"):
    checked(kerasft.RunConfig(model=kerasft.ModelConfig(task="multilabel"),
                              training=kerasft.TrainingConfig(calibrate="temperature")))


def _squares(n, seed, size=32, side=8):
  """Gray noise images; class 1 has a bright square somewhere. Returns (images, labels,
  the squares' top-left corners)."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(40, 90, (n, size, size, 3)).astype(np.float32)
  labels = np.arange(n) % 2
  corners = rng.integers(0, size - side, (n, 2))
  for i in np.flatnonzero(labels):
    y, x = corners[i]
    images[i, y:y + side, x:x + side] = 250
  return images, labels, corners


def test_gradcam_peaks_inside_the_square_the_model_learned_to_find():
  import keras
  path = tiny_model()  # written before the seed: the head's initialization is the same
  keras.utils.set_random_seed(0)
  backbone = backbones.build(kerasft.ModelConfig(model=path))
  backbone.model.trainable = True
  model = heads.build_classifier(backbone, 2, tasks.make_output(), dropout=0.0)
  model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
  x, y, _ = _squares(400, 0)
  model.fit(x, y, epochs=8, batch_size=32, verbose=0)
  test, labels, corners = _squares(40, 1)
  assert np.mean(np.asarray(model(test)).argmax(1) == labels) > 0.9
  positive = np.flatnonzero(labels)
  maps = explain.gradcam(model, test[positive], np.ones(len(positive), int))
  cell = 32 / maps.shape[1]
  inside = []
  for heat, (y0, x0) in zip(maps, corners[positive]):
    cy, cx = np.unravel_index(heat.argmax(), heat.shape)
    center = ((cy + 0.5) * cell, (cx + 0.5) * cell)  # the peak cell's centre, in pixels
    inside.append(y0 - cell / 2 <= center[0] <= y0 + 8 + cell / 2 and
                  x0 - cell / 2 <= center[1] <= x0 + 8 + cell / 2)
  # The peak cell is the square's (within half a cell) on 0.65-1.0 of the images over
  # initialization seeds 0-2 (0.85 for this one); a random peak would be on about 0.14.
  assert np.mean(inside) >= 0.6, np.mean(inside)


def test_text_attributions_rank_the_planted_word_first(tmp_path):
  pytest.importorskip("keras_hub")
  from test_text import VOCAB, make_tiny_preset
  from kerasft.models import text_encoders as text
  preset = make_tiny_preset("distil_bert", str(tmp_path / "preset"))
  rng = np.random.default_rng(0)
  # three classes: with two, "no soup" would already mean computers, and removing "kernel"
  # from a computers text would change nothing
  planted = {"food": "soup", "computers": "kernel", "music": "pipes"}
  filler = [w for w in VOCAB[5:] if w not in planted.values()]
  for label in planted:
    (tmp_path / "texts" / label).mkdir(parents=True)
  for i in range(60):  # pairs: the same words and places, only the planted word differs
    words, at = list(rng.choice(filler, 5)), int(rng.integers(0, 6))
    for label, word in planted.items():
      (tmp_path / "texts" / label / f"{i}.txt").write_text(
          " ".join(words[:at] + [word] + words[at:]))
  result = kerasft.run_training(kerasft.RunConfig(
      model=kerasft.ModelConfig(model="keras_hub:" + preset, dropout=0.0, unfreeze_blocks=3),
      data=kerasft.DataConfig(text_dir=str(tmp_path / "texts"), batch_size=8),
      training=kerasft.TrainingConfig(fine_tune_epochs=10, fine_tune_learning_rate=3e-3),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export")), verbose=0)
  task = kerasft.tasks.registry.for_config(result.config)
  val = task.index(0)[1]
  predict = lambda texts: result.model(text.tokenize(task.encoder, texts))  # noqa: E731
  predicted = np.asarray(predict(val.inputs)).argmax(1)
  ranked = explain.word_occlusion(predict, val.inputs, predicted)
  first = [max(pairs, key=lambda p: p[1])[0] == planted[val.class_names[label]]
           for pairs, label in zip(ranked, val.labels)]
  # measured 0.89-1.0 over repeated runs (training is not bit-reproducible); chance: 1/6
  assert np.mean(first) >= 0.8, (np.mean(first), ranked[:3])
  card = task.cards(result.model, val)([0], [int(predicted[0])], ["caption"])[0]
  assert "background:rgba(0,150,0,0.70)" in card  # the report's examples: the top word shaded
  assert "Most confident mistakes" in open(os.path.join(result.config.model_dir,
                                                        "report.html")).read()


def test_predict_explain_writes_overlays_and_needs_the_run(runs, tmp_path):
  result = runs["multiclass"]
  image = os.path.join(os.path.dirname(result.config.data.csv), "colors", "red", "001.png")
  run = call_main("predict", f"--export={result.export_path}", "--explain",
                  f"--explain_dir={tmp_path / 'why'}", image)
  assert run.returncode == 0, run.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "why")) == ["0000-001.gradcam.png", "explanations.html"]
  assert _page(tmp_path / "why" / "explanations.html").images
  moved = tmp_path / "copy"
  shutil.copytree(result.export_path, moved)
  card = json.loads((moved / "model_card.json").read_text())
  card["run"]["model_dir"] = str(tmp_path / "gone")
  (moved / "model_card.json").write_text(json.dumps(card))
  gone = call_main("predict", f"--export={moved}", "--explain", image)
  assert gone.returncode == 2
  assert gone.stderr.strip().splitlines()[-1].startswith("error: --explain: needs the run")


def test_a_section_that_fails_is_a_warning_not_a_failed_report(tmp_path):
  def broken():
    raise RuntimeError("no font")
  result = html_report.write(str(tmp_path / "r.html"), "t", [("Fine", lambda: "<p>ok</p>"),
                                                             ("Broken", broken)])
  text = (tmp_path / "r.html").read_text()
  assert result["warnings"] == ["Broken: RuntimeError: no font"]
  assert "<p>ok</p>" in text and 'class="warn"' in text


def _browser():
  return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
               if shutil.which(b)), None)


def test_the_report_renders_in_a_headless_browser(runs, tmp_path):
  """Skips where no browser is installed, unless KERASFT_REQUIRE_BROWSER is set (.ci/run
  sets it once chromium is installed: there a missing browser is a failure)."""
  from PIL import Image
  if _browser() is None:
    if os.environ.get("KERASFT_REQUIRE_BROWSER"):
      pytest.fail("KERASFT_REQUIRE_BROWSER is set but no chromium is on the PATH")
    pytest.skip("no headless browser (chromium) found; .ci/run installs Debian's chromium")
  shot = tmp_path / "shot.png"
  done = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu",
                         f"--screenshot={shot}", "--window-size=1000,1400",
                         "file://" + os.path.join(runs["multiclass"].config.model_dir,
                                                  "report.html")],
                        capture_output=True, text=True, timeout=120)
  assert shot.is_file(), done.stderr[-2000:]
  pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
  assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text and figures, not blank


def test_report_none_writes_no_page_and_a_hub_backbone_says_why_there_is_no_gradcam(
    tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=8, size=32)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model()),
      data=kerasft.DataConfig(data_dir=colors, batch_size=8),
      training=kerasft.TrainingConfig(report="none"),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  assert not os.path.exists(os.path.join(result.config.model_dir, "report.html"))
  assert os.path.isfile(os.path.join(result.config.model_dir, "metrics.json"))
  task = kerasft.tasks.registry.for_config(result.config)
  val = task.index(0)[1]
  assert explain.can_gradcam(result.model)
  import keras  # a model whose backbone is one opaque layer, as a hub: module is
  inputs = keras.Input((32, 32, 3))
  opaque = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(
      keras.layers.GlobalAveragePooling2D()(inputs)))
  assert not explain.can_gradcam(opaque)
  card = task.cards(opaque, val)([0], [0], ["caption"])[0]
  assert "no Grad-CAM: the backbone&#x27;s feature maps are not reachable" in card
