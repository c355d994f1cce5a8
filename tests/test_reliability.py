"""Bad inputs and faults across every entry point: one `error:` line, exit 2, no traceback,
nothing written; SIGTERM then resume; concurrent exports; damaged exports and runs."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, call_main, run_cli, tiny_model, write_color_images
import kerasft


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """Colour images, a finished tiny run and its export, a file, damaged copies."""
  root = tmp_path_factory.mktemp("made")
  colors = write_color_images(root / "colors", per_class=8, size=32)
  one_class = write_color_images(root / "one", per_class=4, size=32, colors={"red": (255, 0, 0)})
  config = kerasft.RunConfig(model=kerasft.ModelConfig(model=tiny_model()),
                             data=kerasft.DataConfig(data_dir=colors),
                             model_dir=str(root / "run"), export_dir=str(root / "export"))
  result = kerasft.run_training(config, verbose=0)
  (root / "afile").write_text("not a folder")
  junk_pb = _copy(result.export_path, root / "junk_pb")
  (junk_pb / "saved_model.pb").write_bytes(b"junk")
  no_vars = _copy(result.export_path, root / "no_vars")
  subprocess.run(["rm", "-rf", str(no_vars / "variables")], check=True)
  junk_run = _copy(str(root / "run"), root / "junk_run")
  (junk_run / "best.keras").write_bytes(b"junk")
  return {"colors": colors, "one": one_class, "root": root, "export": result.export_path,
          "run": str(root / "run"), "file": str(root / "afile"), "junk_pb": str(junk_pb),
          "no_vars": str(no_vars), "junk_run": str(junk_run), "model": tiny_model()}


def _copy(src, dst):
  subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
  return dst


CASES = [
    # train
    ("train", ["--data_dir=/no/such/folder"], "--data_dir:"),
    ("train", ["--data_dir={file}"], "--data_dir:"),
    ("train", ["--data_dir={one}"], "--data_dir:"),
    ("train", ["--data_dir={colors}", "--export_dir={file}/x"], "--export_dir: "),
    ("train", ["--data_dir={colors}", "--model_dir={file}/run"], "--model_dir: "),
    ("train", ["--model=nosuchnet"], "--model:"),
    ("train", ["--data_dir={colors}", "--image_size=-3"], "--image_size:"),
    ("train", ["--data_dir={colors}", "--batch_size=0"], "--batch_size:"),
    ("train", ["--data_dir={colors}", "--validation_split=1.5"], "--validation_split:"),
    ("train", ["--data_dir={colors}", "--weights=none"], "--weights: only for Keras Applications"),
    ("train", ["--data_dir={colors}", "--signature=serve"], "--signature: only for hub:"),
    ("train", ["--data_dir={colors}", "--model=mobilenet", "--backbone_layer=x"],
     "--backbone_layer: only for keras:"),
    ("train", ["--data_dir={colors}", "--train_split=train[:50%]"],
     "--train_split: only goes with --tfds"),
    ("train", ["--data_dir={colors}", "--path_column=file"], "--path_column: only goes with --csv"),
    ("train", ["--data_dir={colors}", "--cache_features=on", "--augment=flip"],
     "--cache_features=on: --augment"),
    ("train", ["--csv=/no/such.csv"], "--csv:"),
    ("train", ["--data_dir={colors}", "--unfreeze_top=2"], "--unfreeze_top/"),
    ("train", ["--data_dir={colors}", "--mixup=-1"], "--mixup:"),
    ("train", ["--data_dir={colors}", "--strategy=multi_worker", "--cluster_resolver=slurm"],
     "--strategy=multi_worker:"),
    ("train", ["--data_dir={colors}", "--peft=lora"], "--peft: acts on the fine-tune phase"),
    ("train", ["--data_dir={colors}", "--lr_schedule=cosine", "--reduce_lr_patience=2"],
     "--reduce_lr_patience:"),
    ("train", ["--data_dir={colors}", "--cache_dir={file}/c"], "--cache_dir: "),
    ("train", ["stray_argument", "--data_dir={colors}"], "unexpected arguments"),
    # evaluate
    ("evaluate", ["--export=/no/such/export", "--data_dir={colors}"], "--export:"),
    ("evaluate", ["--export={export}", "--run_dir={run}"], "--export or --run_dir"),
    ("evaluate", ["--export={junk_pb}", "--data_dir={colors}"], "--export: "),
    ("evaluate", ["--export={export}", "--data_dir={colors}", "--output_dir={file}/e"],
     "--output_dir: "),
    ("evaluate", ["--run_dir={junk_run}", "--data_dir={colors}"], "--run_dir: "),
    # predict
    ("predict", ["--export={export}", "--output=preds.txt", "{colors}"], "--output: must end"),
    ("predict", ["--export={export}", "--output={file}/p.csv", "{colors}"], "--output: "),
    ("predict", ["--export={export}"], "inputs:"),
    ("predict", ["--export={no_vars}", "{colors}"], "--export: "),
    # export
    ("export", ["--run_dir={root}"], "--run_dir:"),
    ("export", ["--run_dir={run}", "--export_dir={file}/x"], "--export_dir: "),
    ("export", ["--run_dir={run}", "--version=0"], "--version:"),
    ("export", ["--run_dir={junk_run}", "--export_dir={root}/never"], "--run_dir: "),
    ("export", ["--adapter=/no/such.npz", "--export_dir={root}/never"], "--adapter:"),
    # tune
    ("tune", ["--data_dir={colors}", "--time_budget=soon"], "--time_budget:"),
    ("tune", ["--data_dir={colors}", "--space=/no/space.json"], "--space:"),
]


@pytest.mark.parametrize("module,args,prefix", CASES,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_each_mistake_is_one_line_exit_2_and_writes_nothing(made, tmp_path, module, args,
                                                            prefix):
  args = [a.format(**made) for a in args]
  if module in ("train", "tune") and not any(a.startswith("--model=") for a in args):
    args.append(f"--model={made['model']}")
  if module in ("train", "tune"):
    args = [a for a in args if not a.startswith("stray")] + (
        ["stray_argument"] if "stray_argument" in args else [])
    args += [f"--model_dir={tmp_path / 'run'}"] * (not any("--model_dir" in a for a in args))
    args += [f"--export_dir={tmp_path / 'export'}"] * (
        not any("--export_dir" in a for a in args))
  before = sorted(os.listdir(made["root"]))
  done = call_main(module, *args, cwd=tmp_path)
  assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
  assert "Traceback" not in done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: {prefix}"), done.stderr[-1500:]
  assert "\n" not in errors[0] and "\x1b" not in errors[0]
  assert not (tmp_path / "export").exists() and not (tmp_path / "run").exists()
  assert sorted(os.listdir(made["root"])) == before  # nothing new beside the inputs


def test_there_are_at_least_30_distinct_mistakes():
  assert len({(m, tuple(a)) for m, a, _ in CASES}) >= 30


@pytest.mark.slow
def test_sigterm_mid_epoch_stops_in_one_line_and_the_run_resumes(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=40, size=32)
  args = [f"--model={tiny_model()}", f"--data_dir={colors}", "--head_solver=epochs",
          "--epochs=40", "--cache_features=off", "--batch_size=4", "--learning_rate=0.01",
          f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}"]
  proc = subprocess.Popen([sys.executable, "-m", "kerasft.train", *args], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  log = tmp_path / "run" / "epochs.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
    time.sleep(0.1)
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  stopped_in = time.monotonic() - sent
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert stopped_in < 30 and "Traceback" not in err
  print(f"SIGTERM to exit: {stopped_in:.2f} s")
  last = err.strip().splitlines()[-1]
  assert last.startswith("interrupted (SIGTERM) at epoch ") and last.endswith(
      "of 40; run the same command to resume"), last
  assert not (tmp_path / "export").exists()
  from kerasft.training.callbacks import history_from_log
  before = history_from_log(str(log))["loss"]
  assert len(before) >= 3
  resumed = run_cli("train", *args, cwd=tmp_path, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  after = history_from_log(str(log))["loss"]
  assert len(after) == 40 and after[:len(before)] == before  # continued, not restarted
  assert os.listdir(tmp_path / "export") == ["1"]


@pytest.mark.slow
def test_two_runs_exporting_to_one_folder_at_once_get_two_complete_versions(made, tmp_path):
  export_dir = tmp_path / "shared_export"
  procs = [subprocess.Popen([sys.executable, "-m", "kerasft.export", f"--run_dir={made['run']}",
                             f"--export_dir={export_dir}"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
  assert sorted(os.listdir(export_dir)) == ["1", "2"]
  for version in ("1", "2"):
    card = json.load(open(export_dir / version / "model_card.json"))
    assert card["version"] == int(version)
    assert (export_dir / version / "variables").is_dir()


def test_class_names_survive_exactly_and_a_line_break_is_refused(tmp_path):
  import csv
  names = {"with space": (250, 0, 0), "comma,name": (0, 250, 0), "Émile ünïcode": (0, 0, 250),
           "quote's \"q\"": (250, 250, 0), ".lead dot": (0, 250, 250)}
  # folders starting with a dot are hidden (skipped); a CSV can name any class
  colors = write_color_images(tmp_path / "odd", per_class=6, size=32, colors={
      f"c{i}": rgb for i, rgb in enumerate(names.values())})
  with open(tmp_path / "odd.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label"])
    for i, name in enumerate(names):
      for image in sorted(os.listdir(os.path.join(colors, f"c{i}"))):
        writer.writerow([os.path.join(colors, f"c{i}", image), name])
  config = kerasft.RunConfig(model=kerasft.ModelConfig(model=tiny_model()),
                             data=kerasft.DataConfig(csv=str(tmp_path / "odd.csv")),
                             model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  result = kerasft.run_training(config, verbose=0)
  assert result.class_names == sorted(names)
  with open(os.path.join(result.export_path, "assets", "labels.txt")) as f:
    assert f.read().splitlines() == sorted(names)
  bad = write_color_images(tmp_path / "bad", per_class=4, size=32,
                           colors={"line\nbreak": (250, 0, 0), "ok": (0, 0, 250)})
  done = call_main("train", f"--model={tiny_model()}", f"--data_dir={bad}",
                   f"--model_dir={tmp_path / 'run2'}", f"--export_dir={tmp_path / 'export2'}")
  assert done.returncode == 2 and "cannot be written to labels.txt" in done.stderr
  assert not (tmp_path / "run2").exists()


def test_an_absurdly_large_image_is_skipped_with_a_warning(tmp_path):
  from PIL import Image
  colors = write_color_images(tmp_path / "colors", per_class=6, size=32)
  huge = os.path.join(colors, "red", "huge.png")
  Image.new("1", (12_000, 10_000)).save(huge)  # 120 megapixels, a tiny file
  from kerasft.data import examples as data
  reasons = data.unreadable_reasons([huge, os.path.join(colors, "red", os.listdir(
      os.path.join(colors, "red"))[0])])
  assert reasons[0].startswith("12000x10000 pixels, more than the 100-megapixel limit")
  assert reasons[1] is None


def test_a_keras_file_with_a_lambda_layer_does_not_run_its_code(tmp_path):
  import keras
  marker = tmp_path / "ran"
  inputs = keras.Input((32, 32, 3))
  x = keras.layers.Lambda(lambda t: t * 1.0)(inputs)
  x = keras.layers.Conv2D(4, 3)(x)
  keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(tmp_path / "lam.keras")
  colors = write_color_images(tmp_path / "colors", per_class=4, size=32)
  done = call_main("train", f"--model=keras:{tmp_path / 'lam.keras'}", f"--data_dir={colors}",
                   f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}")
  assert done.returncode == 2 and not marker.exists()
  assert "error: --model:" in done.stderr and "Traceback" not in done.stderr


def test_a_full_disk_during_export_is_one_line_and_leaves_no_version(made, tmp_path,
                                                                      monkeypatch):
  """The disk fills while the variables are written (ENOSPC from the write call itself,
  simulated in-process: it runs everywhere, no size-limited mount needed)."""
  import errno
  import tensorflow as tf
  export = tmp_path / "export"
  (export / "1").mkdir(parents=True)  # an earlier version, kept as it is
  (export / "1" / "marker").write_text("v1")
  save = tf.saved_model.save

  def fills_the_disk(obj, path, *args, **kwargs):
    save(obj, path, *args, **kwargs)  # half of it is written, then the device is full
    raise OSError(errno.ENOSPC, "No space left on device",
                  os.path.join(path, "variables", "variables.data-00000-of-00001"))
  monkeypatch.setattr(tf.saved_model, "save", fills_the_disk)
  done = call_main("export", f"--run_dir={made['run']}", f"--export_dir={export}")
  assert done.returncode == 1, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(
      f"error: no space left on the device of {export}; "), done.stderr[-1000:]
  assert "Traceback" not in done.stderr
  assert sorted(os.listdir(export)) == ["1"]  # no half version, no staging folder
  assert (export / "1" / "marker").read_text() == "v1"


@pytest.mark.slow
def test_sigkill_during_export_then_the_same_command_gives_one_complete_version(tmp_path):
  colors = write_color_images(tmp_path / "colors", per_class=8, size=32)
  args = [f"--model={tiny_model()}", f"--data_dir={colors}",
          f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}"]
  proc = subprocess.Popen([sys.executable, "-m", "kerasft.train", *args], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  export = tmp_path / "export"
  deadline = time.time() + 300
  while time.time() < deadline and not (export.is_dir() and any(
      n.startswith(".tmp-") for n in os.listdir(export))):
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not [n for n in os.listdir(export) if n.isdigit()]  # killed before the rename
  done = run_cli("train", *args, cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  assert os.listdir(export) == ["1"]  # one complete version; the abandoned staging is gone
  assert (export / "1" / "saved_model.pb").is_file()


def test_resume_with_cached_features_continues_the_head_epochs(tmp_path, monkeypatch):
  from kerasft.training import callbacks
  colors = write_color_images(tmp_path / "colors", per_class=10, size=32)
  config = kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model()), data=kerasft.DataConfig(data_dir=colors),
      training=kerasft.TrainingConfig(head_solver="epochs", epochs=8, learning_rate=0.03,
                                      cache_features="on"),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  original = callbacks.EpochLog.on_epoch_end

  def killed_after_three(self, epoch, logs=None):
    original(self, epoch, logs)
    if epoch == 2:
      raise KeyboardInterrupt("killed")
  monkeypatch.setattr(callbacks.EpochLog, "on_epoch_end", killed_after_three)
  with pytest.raises(KeyboardInterrupt):
    kerasft.run_training(config, verbose=0)
  best = json.load(open(tmp_path / "run" / "best.keras.json"))  # kept mid-phase
  assert best["epoch"] in (0, 1, 2) and (tmp_path / "run" / "best.keras").is_file()
  before = callbacks.history_from_log(str(tmp_path / "run" / "epochs.jsonl"))["loss"]
  monkeypatch.setattr(callbacks.EpochLog, "on_epoch_end", original)
  result = kerasft.run_training(config, verbose=0)
  assert len(before) == 3 and len(result.history["loss"]) == 8
  # killed before epoch 3's backup: epochs 1-2 are kept, 3-8 run after the resume
  assert result.history["loss"][:2] == before[:2]
  assert result.history["phase"] == ["head"] * 8


def test_a_run_killed_after_its_export_does_not_export_twice(tmp_path, monkeypatch):
  from kerasft.training import run_folder
  colors = write_color_images(tmp_path / "colors", per_class=8, size=32)
  config = kerasft.RunConfig(model=kerasft.ModelConfig(model=tiny_model()),
                             data=kerasft.DataConfig(data_dir=colors),
                             model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))
  original = run_folder.RunFolder.finish

  def killed(self, *args):
    raise KeyboardInterrupt("killed between the export and its record")
  monkeypatch.setattr(run_folder.RunFolder, "finish", killed)
  with pytest.raises(KeyboardInterrupt):
    kerasft.run_training(config, verbose=0)
  assert os.listdir(tmp_path / "export") == ["1"]
  monkeypatch.setattr(run_folder.RunFolder, "finish", original)
  result = kerasft.run_training(config, verbose=0)
  assert os.listdir(tmp_path / "export") == ["1"] and result.export_path.endswith("1")
  again = kerasft.run_training(dataclasses.replace(config, overwrite=True), verbose=0)
  assert sorted(os.listdir(tmp_path / "export")) == ["1", "2"]  # a new run: a new version
  assert again.export_path.endswith("2")
