"""Fine-tuning methods (kerasft.methods): weight averaging, WiSE-FT, L2-SP, LoRA / BitFit /
NormFit and adapters, on tiny models in process."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import call_main, tiny_model, write_color_images
import kerasft
from kerasft.training import optimizers
from kerasft.config.methods import MethodsConfig
from kerasft.methods import averaging, peft


def _config(tmp_path, data_dir, methods=None, model=None, **training):
  training = {"fine_tune_epochs": 3, "learning_rate": 0.03, "fine_tune_learning_rate": 0.01,
              **training}
  return kerasft.RunConfig(
      model=kerasft.ModelConfig(model=tiny_model(), dropout=0.0, unfreeze_blocks=2,
                                **(model or {})),
      data=kerasft.DataConfig(data_dir=str(data_dir), batch_size=8),
      training=kerasft.TrainingConfig(**training),
      methods=MethodsConfig(**(methods or {})),
      model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"))


@pytest.fixture
def colors(tmp_path):
  return write_color_images(tmp_path / "colors", per_class=16, size=32)


class _Scores:
  """A scorer whose validation score of a weight list is a known function of it."""
  monitor, sign = "val_accuracy", 1.0

  def __init__(self, model, score):
    self.model, self.score, self.calls = model, score, []

  def __call__(self, weights):
    self.calls.append([w.copy() for w in weights])
    self.model.set_weights(weights)
    self.weights = weights
    return self.score(weights)


def _one_weight_model():
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
  return model


def _top_k(folder, weights_and_values):
  os.makedirs(folder, exist_ok=True)
  entries = []
  for epoch, (w, value) in enumerate(weights_and_values):
    averaging.save_weights(w, os.path.join(folder, f"epoch_{epoch}.npz"))
    entries.append({"epoch": epoch, "value": value, "file": f"epoch_{epoch}.npz"})
  json.dump(sorted(entries, key=lambda e: -e["value"]), open(os.path.join(folder, "index.json"),
                                                              "w"))


def test_greedy_soup_averages_what_helps_and_is_kept_only_when_it_helps(tmp_path):
  model = _one_weight_model()
  w = lambda v: [np.array([[v]], "float32")]  # noqa: E731
  # epochs scored 0.9 (w=1), 0.8 (w=3), 0.7 (w=100); a soup scores 1 - |mean - 2| / 10
  _top_k(tmp_path, [(w(1.0), 0.9), (w(3.0), 0.8), (w(100.0), 0.7)])
  scorer = _Scores(model, lambda ws: 1 - abs(float(ws[0][0, 0]) - 2.0) / 10)
  outcome = averaging.finish(MethodsConfig(average="greedy_soup"), scorer, str(tmp_path),
                             (w(1.0), 0.9))
  # {1, 3} averages to 2 (score 1.0): kept; adding 100 would drop it, so it is left out
  np.testing.assert_allclose(model.get_weights()[0], [[2.0]])
  assert outcome.kept == "greedy_soup of 2 epochs" and outcome.scores[outcome.kept] == 1.0
  np.testing.assert_allclose(scorer.calls[1][0], [[(1 + 3 + 100) / 3]], rtol=1e-6)
  # a soup worse than the best epoch is not kept: the model ends with the best epoch
  worse = _Scores(model, lambda ws: 0.5)
  outcome = averaging.finish(MethodsConfig(average="uniform_soup"), worse, str(tmp_path),
                             (w(1.0), 0.9))
  assert outcome.kept == "" and outcome.scores == {"uniform_soup of 3 epochs": 0.5}
  np.testing.assert_allclose(model.get_weights()[0], [[1.0]])
  np.testing.assert_allclose(worse.calls[0][0], [[104 / 3]], rtol=1e-6)


def test_wise_ft_endpoints_reproduce_the_two_models_exactly(tmp_path):
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
  start = [np.random.default_rng(0).normal(size=w.shape).astype("float32")
           for w in model.get_weights()]
  end = [np.random.default_rng(1).normal(size=w.shape).astype("float32")
         for w in model.get_weights()]
  for alpha, expected in (("0", start), ("1", end)):
    scorer = _Scores(model, lambda ws: 0.0)
    weights, chosen, _ = averaging.wise_ft(alpha, scorer, start, end)
    assert chosen == float(alpha)
    for got, want in zip(weights, expected):
      np.testing.assert_array_equal(got, want)
  scorer = _Scores(model, lambda ws: -abs(float(ws[1][0]) - (0.75 * end[1][0]
                                                              + 0.25 * start[1][0])))
  _, chosen, scores = averaging.wise_ft("auto", scorer, start, end)
  assert chosen == 0.75 and sorted(scores) == [0, 0.25, 0.5, 0.75, 1]


def test_l2sp_gradient_is_twice_lambda_times_the_distance_to_the_pretrained_weight():
  """Zero loss gradient, SGD at rate 1 (first step: momentum has no history): the step is
  exactly -2 * lambda * (w - w0); with --layer_lr_decay the block's factor scales it, and
  under a loss-scale optimizer (mixed precision) it is the same."""
  for multiplier, wrap in ((1.0, False), (0.1, False), (1.0, True)):
    kernel = keras.Variable(np.full((2, 2), 3.0, "float32"), name="kernel")
    w0 = np.full((2, 2), 1.0, "float32")
    opt = optimizers.make_optimizer("sgd", 1.0, lr_multipliers={kernel.path: multiplier},
                                    l2sp=optimizers.L2SP(0.05, [(kernel, w0)]))
    if wrap:
      opt = keras.optimizers.LossScaleOptimizer(opt)
    opt.apply([keras.ops.zeros((2, 2))], [kernel])
    np.testing.assert_allclose(kernel.numpy(), 3.0 - multiplier * 2 * 0.05 * (3.0 - 1.0),
                               rtol=1e-6)
  # AdamW: the anchored kernel gets no decay toward zero; another variable does
  kernel = keras.Variable(np.full((2, 2), 1.0, "float32"), name="kernel")
  head = keras.Variable(np.full((2,), 1.0, "float32"), name="head")
  opt = optimizers.make_optimizer("adamw", 0.1, weight_decay=0.5,
                                  l2sp=optimizers.L2SP(0.05, [(kernel, kernel.numpy())]))
  opt.apply([keras.ops.zeros((2, 2)), keras.ops.zeros((2,))], [kernel, head])
  np.testing.assert_allclose(kernel.numpy(), 1.0)
  np.testing.assert_allclose(head.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)


def test_batch_norm_statistics_of_an_average_are_the_mean_over_training_batches():
  import tensorflow as tf
  inputs = keras.Input((2,))
  bn = keras.layers.BatchNormalization(name="bn")
  model = keras.Model(inputs, bn(inputs))
  batches = [np.full((4, 2), v, "float32") + np.array([[0, 1]] * 2 + [[0, -1]] * 2, "float32")
             for v in (1.0, 3.0, 8.0)]
  train = tf.data.Dataset.from_tensor_slices((np.concatenate(batches), np.zeros(12))).batch(4)
  assert averaging.recompute_batch_norm(model, train, model) == 3
  np.testing.assert_allclose(bn.moving_mean.numpy(), [4.0, 4.0], rtol=1e-5)
  np.testing.assert_allclose(bn.moving_variance.numpy(), [0.0, 1.0], atol=1e-5)
  assert bn.momentum == 0.99


def test_soup_and_wise_ft_run_end_to_end_and_say_what_was_kept(tmp_path, colors):
  result = kerasft.run_training(_config(
      tmp_path, colors, {"average": "greedy_soup", "average_top_k": 2, "wise_ft": "auto"},
      fine_tune_epochs=3), verbose=0)
  run = tmp_path / "run"
  kept = json.load(open(run / "top_k" / "index.json"))
  assert len(kept) == 2 and sorted(os.listdir(run / "top_k")) == sorted(
      ["index.json"] + [e["file"] for e in kept])
  assert all(e["epoch"] >= 1 for e in kept)  # the fine-tune phase's epochs only
  scores = json.load(open(run / "averaging.json"))
  assert scores["kept"].startswith("wise_ft alpha")
  assert len([k for k in scores["validation"] if k.startswith("wise_ft")]) == 5
  assert (run / "wise_ft.png").stat().st_size > 1000 and (run / "head_phase.npz").is_file()
  card = json.load(open(os.path.join(result.export_path, "model_card.json")))
  assert card["methods"] == {"average": "greedy_soup", "average_top_k": 2, "wise_ft": "auto"}
  assert card["kept"] == scores["kept"] and result.metrics["kept"] == scores["kept"]
  assert 0 < card["parameters"]["trainable"] < card["parameters"]["total"]


@pytest.fixture
def made(monkeypatch):
  """Every optimizer `make_optimizer` makes during the test, in order."""
  made = []
  original = optimizers.make_optimizer

  def spy(*args, **kwargs):
    made.append(original(*args, **kwargs))
    return made[-1]
  monkeypatch.setattr(optimizers, "make_optimizer", spy)
  return made


def test_ema_uses_keras_own_moving_average_of_the_weights(tmp_path, colors, made):
  kerasft.run_training(_config(tmp_path, colors, {"average": "ema", "ema_momentum": 0.9},
                                   fine_tune_epochs=2), verbose=0)
  assert [o.use_ema for o in made] == [False, True] and made[1].ema_momentum == 0.9
  assert (tmp_path / "run" / "ema.npz").is_file()
  assert "ema" in json.load(open(tmp_path / "run" / "averaging.json"))["validation"]


def test_accumulating_k_batches_equals_one_batch_k_times_larger():
  """SGD (momentum 0.9), no batch norm: 4 accumulated batches of 8 end where batches of 32
  end (to 1e-5); batches of 8 without accumulation end elsewhere (the test can fail)."""
  x = np.random.default_rng(0).normal(size=(96, 6)).astype("float32")
  y = (x[:, 0] + x[:, 1] > 0).astype("int32")

  def trained(batch, accumulate):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    options = {"gradient_accumulation_steps": accumulate} if accumulate > 1 else {}
    model.compile(optimizers.make_optimizer("sgd", 0.1, keras_options=options),
                  "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=batch, epochs=3, shuffle=False, verbose=0)
    return model.get_weights()
  large = trained(32, 1)
  for a, b in zip(large, trained(8, 4), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert max(np.abs(a - b).max() for a, b in zip(large, trained(8, 1))) > 1e-3


def test_gradient_accumulation_reaches_the_fine_tune_optimizer_and_the_card(tmp_path, colors,
                                                                            made):
  result = kerasft.run_training(_config(tmp_path, colors, fine_tune_epochs=1,
                                        gradient_accumulation_steps=2), verbose=0)
  assert made and all(o.gradient_accumulation_steps == 2 for o in made)
  assert int(made[-1].iterations.numpy()) >= 1  # the fine-tune phase took optimizer steps
  card = json.load(open(os.path.join(result.export_path, "model_card.json")))
  assert card["gradient_accumulation_steps"] == 2


def test_the_averaging_scorer_reads_a_figure_an_epoch_callback_computes():
  """Detection's val_map is no compiled metric: its callback puts it in the epoch's logs.
  The scorer of --average/--wise_ft asks the same callback (it raised KeyError: 'map')."""
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile("sgd", "mse")
  val = tf.data.Dataset.from_tensor_slices((np.ones((4, 2), "float32"),
                                            np.zeros((4, 1), "float32"))).batch(2)

  class Map(keras.callbacks.Callback):  # a figure of the weights it is given
    def on_epoch_end(self, epoch, logs=None):
      logs["val_map"] = float(np.sum(self.model.get_weights()[0]))
  scorer = averaging.Scorer(model, model, val, "val_map", "max", epoch_callbacks=[Map()])
  weights = [np.full((2, 1), 0.25, "float32"), np.zeros(1, "float32")]
  assert scorer(weights) == pytest.approx(0.5)
  assert averaging.Scorer(model, model, val, "val_loss", "min")(weights) == pytest.approx(-0.25)


def test_auto_batch_takes_the_largest_divisor_that_fits_and_accumulates_the_rest():
  from kerasft.core.errors import UsageError
  from kerasft.models import memory
  assert memory.auto_batch(100, 64, 1, available=2000) == (16, 4)  # 20 fit: 16 divides 64
  assert memory.auto_batch(100, 64, 2, available=2000) == (32, 2)  # 20 per replica
  assert memory.auto_batch(100, 32, 1, available=1 << 30) == (32, 1)
  assert memory.auto_batch(100, 96, 1, available=4000) == (32, 3)
  with pytest.raises(UsageError, match="^--batch_size=auto: one example takes"):
    memory.auto_batch(100, 64, 1, available=50)
  with pytest.raises(UsageError, match="^--effective_batch_size=63: must divide evenly over "
                     "the 2 replicas$"):
    memory.auto_batch(100, 63, 2, available=2000)


def test_batch_size_auto_accumulates_to_the_effective_batch_and_says_so_in_the_card(
    tmp_path, colors, made, monkeypatch):
  """With memory for 4 examples, --batch_size=auto --effective_batch_size=16 trains batches
  of 4 and steps the optimizer every 4 of them; the card says what was chosen and why."""
  from kerasft.models import memory
  monkeypatch.setattr(memory, "per_example", lambda model, trains: 1 << 20)
  monkeypatch.setattr(memory, "batch_memory", lambda: (4 << 20) + 1)
  config = _config(tmp_path, colors, fine_tune_epochs=1, effective_batch_size=16)
  config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                batch_size="auto"))
  result = kerasft.run_training(config, verbose=0)
  assert made and all(o.gradient_accumulation_steps == 4 for o in made)
  card = json.load(open(os.path.join(result.export_path, "model_card.json")))
  assert card["batch"]["batch_size"] == 4 and card["batch"]["effective_batch_size"] == 16
  assert card["batch"]["gradient_accumulation_steps"] == 4
  assert card["batch"]["chosen"].startswith("auto: the largest dividing 16")
  saved = json.load(open(tmp_path / "run" / "config.json"))
  assert saved["data"]["batch_size"] == 4 and saved["training"]["effective_batch_size"] == 0


def _by_layer(backbone):
  return {f"{layer.name}/{w.name}": w.numpy() for layer in backbone.layers for w in layer.weights}


def _fresh_backbone_weights():
  from conftest import build_backbone
  return _by_layer(build_backbone(tiny_model()).model)


def _backbone_weights(model):
  from kerasft.models.heads import backbone_of
  return _by_layer(backbone_of(model))


def _saved_model_cli(*args):
  return subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                         *args], capture_output=True, text=True, timeout=300)


def test_lora_trains_only_low_rank_updates_and_the_merged_export_is_the_model(tmp_path, colors):
  import tensorflow as tf
  result = kerasft.run_training(_config(
      tmp_path, colors, {"peft": "lora", "lora_rank": 2, "lora_targets": ["block3_conv"],
                         "save_adapter": True}, fine_tune_epochs=2, head_solver="epochs",
      epochs=1), verbose=0)
  assert result.history["phase"] == ["head", "fine_tune", "fine_tune"]
  before, after = _fresh_backbone_weights(), _backbone_weights(result.model)
  assert before.keys() == after.keys()  # merged: no LoRA factors left
  for path in before:
    if path != "block3_conv/kernel":
      np.testing.assert_array_equal(before[path], after[path], err_msg=path)
  delta = (after["block3_conv/kernel"] - before["block3_conv/kernel"]).reshape(-1, 16)
  singular = np.linalg.svd(delta, compute_uv=False)
  assert singular[0] > 1e-4 and np.all(singular[2:] < 1e-5 * singular[0])  # rank 2
  card = json.load(open(os.path.join(result.export_path, "model_card.json")))
  lora_params = 3 * 3 * 16 * 2 + 2 * 16
  assert card["parameters"]["trainable"] == lora_params + 16 * 3 + 3  # factors + head
  loaded = tf.saved_model.load(result.export_path)
  assert len(loaded.model_variables) == len(result.model.variables)  # no factors exported
  assert not peft.lora_layers(result.model)
  pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
  np.save(tmp_path / "x.npy", pixels)
  run = _saved_model_cli("run", "--dir", result.export_path, "--tag_set", "serve",
                         "--signature_def", "serving_default", "--inputs",
                         f"images={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out"))
  assert run.returncode == 0, run.stderr[-3000:]
  expected = np.asarray(result.model(pixels, training=False))
  np.testing.assert_allclose(np.load(tmp_path / "out" / "probabilities.npy"), expected,
                             atol=1e-5)
  # the adapter (factors + head) applied to a fresh backbone gives the same model
  adapter = tmp_path / "run" / "adapter.npz"
  assert adapter.stat().st_size < 20_000
  done = call_main("export", f"--adapter={adapter}", f"--export_dir={tmp_path / 'again'}")
  assert done.returncode == 0, done.stderr[-2000:]
  again = tf.saved_model.load(str(tmp_path / "again" / "1")).signatures["serving_default"]
  np.testing.assert_allclose(again(images=tf.constant(pixels))["probabilities"].numpy(),
                             expected, atol=1e-5)


@pytest.mark.parametrize("method,trained", [("bitfit", ("bias", "beta")),
                                            ("normfit", ("gamma", "beta"))])
def test_bitfit_and_normfit_train_only_their_parameters(tmp_path, colors, method, trained):
  result = kerasft.run_training(_config(tmp_path, colors, {"peft": method},
                                            head_solver="epochs", epochs=1), verbose=0)
  before, after = _fresh_backbone_weights(), _backbone_weights(result.model)
  changed = {p for p in before if not np.array_equal(before[p], after[p])}
  assert changed and all(p.rsplit("/", 1)[-1] in trained for p in changed), changed
  assert all(p.split("/")[0] in ("block2_bn", "block3_bn", "block2_conv", "block3_conv")
             for p in changed), changed  # the two unfrozen blocks only


def test_a_lora_run_killed_mid_fine_tune_resumes_and_keeps_learning(tmp_path, colors,
                                                                     monkeypatch):
  config = _config(tmp_path, colors, {"peft": "lora", "lora_rank": 2,
                                      "lora_targets": ["block*_conv"], "average": "greedy_soup"},
                   fine_tune_epochs=4)
  original, seen = averaging.TopK.on_epoch_end, []

  def dies(self, epoch, logs=None):
    original(self, epoch, logs)
    seen.append(epoch)
    if epoch == 2:
      raise KeyboardInterrupt("killed")
  monkeypatch.setattr(averaging.TopK, "on_epoch_end", dies)
  with pytest.raises(KeyboardInterrupt):
    kerasft.run_training(config, verbose=0)
  assert not (tmp_path / "export").exists()
  monkeypatch.setattr(averaging.TopK, "on_epoch_end", original)
  factors = []
  monkeypatch.setattr(peft, "merge", lambda model, merge=peft.merge: (
      factors.extend(keras.ops.convert_to_numpy(l.lora_kernel_b)
                     for l in peft.lora_layers(model)), merge(model))[1])
  result = kerasft.run_training(config, verbose=0)
  assert seen == [1, 2]
  assert len(result.history["loss"]) == 5 and os.listdir(tmp_path / "export") == ["1"]
  assert factors and any(np.any(b) for b in factors)  # the factors still learn after resume
  assert len(json.load(open(tmp_path / "run" / "top_k" / "index.json"))) == 3


@pytest.mark.parametrize("args,message", [
    (["--average=greedy_soup"], "--average=greedy_soup: averages epochs"),
    (["--wise_ft=2"], "--wise_ft: must be a number in [0, 1] or auto"),
    (["--wise_ft=auto"], "--wise_ft: acts on the fine-tune phase"),
    (["--peft=lora"], "--peft: acts on the fine-tune phase"),
    (["--lora_rank=4"], "--lora_rank: only goes with --peft=lora"),
    (["--fine_tune_epochs=1", "--unfreeze_blocks=1", "--peft=bitfit", "--l2sp=0.1"],
     "--l2sp: pulls the unfrozen backbone weights"),
    (["--fine_tune_epochs=1", "--unfreeze_blocks=1", "--peft=lora", "--bn_mode=train"],
     "--bn_mode=train: --peft=lora keeps"),
    (["--fine_tune_epochs=1", "--unfreeze_blocks=1", "--peft=lora", "--lora_targets=nothing*"],
     "--lora_targets: no layer of the unfrozen part matches nothing*"),
    (["--ema_momentum=1.5"], "--ema_momentum: must be between 0 and 1"),
    (["--gradient_accumulation_steps=4"], "--gradient_accumulation_steps: accumulates the "
     "gradients of phases trained by epochs"),
    (["--gradient_accumulation_steps=0"], "--gradient_accumulation_steps: must be a positive"),
    (["--batch_size=big"], "--batch_size: must be a positive integer or auto, got 'big'"),
    (["--batch_size=32", "--effective_batch_size=48"], "--effective_batch_size=48: must be a "
     "multiple of --batch_size=32"),
    (["--effective_batch_size=64", "--gradient_accumulation_steps=2"],
     "--effective_batch_size: sets the accumulation steps itself"),
    (["--effective_batch_size=64"], "--effective_batch_size: accumulates the gradients of "
     "phases trained by epochs"),
])
def test_bad_method_combinations_are_one_line_exit_2(tmp_path, colors, args, message):
  done = call_main("train", f"--model={tiny_model()}", f"--data_dir={colors}",
                   f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}",
                   *args)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), done.stderr
  assert not (tmp_path / "run").exists() and not (tmp_path / "export").exists()


def test_pairs_alternate_same_and_other_class_partners_reproducibly():
  from kerasft.methods import few_shot
  labels = [0, 0, 0, 1, 1, 2]
  first, second, same = few_shot.sample_pairs(labels, 4, seed=3)
  assert len(first) == 24 and list(first) == [i for i in range(6) for _ in range(4)]
  assert list(same) == [1.0, 0.0] * 12
  for a, b, s in zip(first, second, same):
    assert (labels[a] == labels[b]) == bool(s)
    assert a != b or labels.count(labels[a]) == 1  # itself only when alone in its class
  again = few_shot.sample_pairs(labels, 4, seed=3)
  assert all(np.array_equal(x, y) for x, y in zip((first, second, same), again))
  assert not np.array_equal(second, few_shot.sample_pairs(labels, 4, seed=4)[1])


def test_few_shot_is_for_text_models_and_its_settings_need_it(tmp_path, colors):
  for args, message in ((["--recipe=few_shot"], "--recipe=few_shot: tunes a text encoder"),
                        (["--pairs_per_example=4"], "--pairs_per_example: only goes with "
                                                    "--recipe=few_shot")):
    done = call_main("train", f"--model={tiny_model()}", f"--data_dir={colors}",
                     f"--model_dir={tmp_path / 'run'}", *args)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        f"error: {message}"), done.stderr[-2000:]


def test_recipe_auto_fine_tunes_with_a_soup_from_50_per_class_and_keeps_user_choices(tmp_path):
  many = write_color_images(tmp_path / "many", per_class=50, size=24)
  few = write_color_images(tmp_path / "few", per_class=10, size=24)
  from kerasft.tasks import registry as tasks
  from kerasft.methods import auto

  def resolved(data_dir, name=tiny_model(), training=None, **model):
    config = kerasft.RunConfig(
        model=kerasft.ModelConfig(model=name, **model),
        data=kerasft.DataConfig(data_dir=str(data_dir)),
        training=kerasft.TrainingConfig(**(training or {})),
        methods=MethodsConfig(recipe="auto")).resolved()
    task = tasks.for_config(config)
    return auto.apply(task, *task.index(0)).config
  big = resolved(many)
  assert big.model.unfreeze_blocks == 3 and big.training.fine_tune_epochs == 4
  assert big.methods.average == "greedy_soup" and big.methods.recipe == "default"
  assert big.training.fine_tune_learning_rate == 1e-4
  assert big.model.image_size is None  # a keras: backbone keeps its own size
  mobilenet = resolved(many, "mobilenet", weights="none")
  assert mobilenet.model.image_size == 128  # 24 px images: 128 px inputs, not 224
  config = kerasft.RunConfig(model=kerasft.ModelConfig(model="mobilenet", weights="none",
                                                       image_size=224),
                             data=kerasft.DataConfig(data_dir=str(many)),
                             methods=MethodsConfig(recipe="auto")).resolved()
  task = tasks.for_config(config)  # --image_size=224 given (the default): it stays
  assert auto.apply(task, *task.index(0), {"model.image_size"}).config.model.image_size == 224
  from kerasft.workflows import train as training  # what run_training passes as given
  given = training._given  # pylint: disable=protected-access
  assert given(kerasft.RunConfig(model=kerasft.ModelConfig(image_size=224))) == {
      "model.image_size"}
  assert not given(kerasft.RunConfig())
  assert mobilenet.model.unfreeze_blocks == 15
  small = resolved(few)
  assert small.training.fine_tune_epochs == 0 and small.methods.average == "best"
  user = resolved(many, unfreeze_top=1, training={"fine_tune_epochs": 2})
  assert user.model.unfreeze_top == 1 and user.model.unfreeze_blocks == 0
  assert user.training.fine_tune_epochs == 2
