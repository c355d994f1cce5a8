"""One canary per private Keras/TensorFlow API in kerasft._compat: each fails when upstream
behaviour changes (then the workaround can go, or must change), and each workaround is
shown to work. The multi-worker fix's canary is in test_distribute.py (it needs a cluster)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasft.core import _compat
from kerasft.training import optimizers


def test_checked_versions_cover_the_installed_keras():
  assert _compat.checked(), keras.__version__


def _bn_model():
  inner_in = keras.Input((4,))
  inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn")(inner_in))
  x = keras.Input((4,))
  y = keras.layers.Dense(2, name="head")(inner(x, training=False))
  return keras.Model(x, y), inner


@pytest.mark.parametrize("pinned", [False, True])
def test_pin_inference_mode_canary(pinned):
  """Keras overrides a node's training=False with fit's training=True unless pinned."""
  keras.utils.set_random_seed(0)
  model, inner = _bn_model()
  if pinned:
    _compat.pin_inference_mode(inner)
  model.compile("sgd", "mse")
  before = inner.get_layer("bn").moving_mean.numpy().copy()
  model.fit(np.random.default_rng(0).normal(5, 1, (16, 4)), np.zeros((16, 2)), verbose=0)
  moved = not np.allclose(before, inner.get_layer("bn").moving_mean.numpy())
  assert moved != pinned  # unpinned: upstream still overrides (else drop the workaround)


def test_backup_and_restore_leaves_initial_epoch_canary(tmp_path):
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile("sgd", "mse")
  x, y = np.zeros((4, 2)), np.zeros((4, 1))

  class Stop(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      if epoch == 1:
        raise RuntimeError("interrupted")

  backup = keras.callbacks.BackupAndRestore(str(tmp_path))
  with pytest.raises(RuntimeError):
    model.fit(x, y, epochs=3, callbacks=[backup, Stop()], verbose=0)
  model.fit(x, y, epochs=3, callbacks=[backup], verbose=0)
  assert model._initial_epoch is not None  # pylint: disable=protected-access  # upstream leaves it
  _compat.reset_initial_epoch(model)
  history = model.fit(x, y, initial_epoch=0, epochs=2, verbose=0)
  assert len(history.history["loss"]) == 2


def test_track_variable_adopts_an_existing_variable_canary():
  layer = keras.layers.Layer()
  variable = keras.Variable(np.ones(3, "float32"), name="adopted")
  _compat.track_variable(layer, variable)
  assert any(w is variable for w in layer.trainable_weights)


def test_capturable_resources_finds_a_lookup_table_canary():
  table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(["a"], [1]), -1)

  class Holder:
    def __init__(self):
      self.inner = {"tables": [table]}
  found = _compat.capturable_resources(Holder())
  assert found and found[0] is table


def test_keras_home_is_keras_own_canary():
  assert _compat.keras_home() == os.environ["KERAS_HOME"]


def _apply_zero_gradients(optimizer, kernel):
  optimizer.apply([np.zeros_like(kernel.numpy())], [kernel])
  return kernel.numpy()


def test_adamw_with_layer_lr_decay_scales_the_weight_decay_of_a_decayed_block():
  """--optimizer=adamw --layer_lr_decay: a block at 1/100 of the rate decays at 1/100.
  With a zero gradient Adam's step is 0, so the change is the decoupled decay alone."""
  kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
  tuned = optimizers.make_optimizer("adamw", 0.1, weight_decay=0.5,
                                    lr_multipliers={kernel.path: 0.01})
  np.testing.assert_allclose(_apply_zero_gradients(tuned, kernel), 1 - 0.1 * 0.5 * 0.01,
                             rtol=1e-6)
  other = keras.Variable(np.ones((2, 2), "float32"), name="top")
  full = optimizers.make_optimizer("adamw", 0.1, weight_decay=0.5, lr_multipliers={"x": 0.5})
  np.testing.assert_allclose(_apply_zero_gradients(full, other), 1 - 0.1 * 0.5, rtol=1e-6)


def test_keras_applies_weight_decay_outside_the_update_step_canary():
  """Upstream: AdamW's decay happens in `apply` before `_backend_update_step`, so scaling
  the rate in the update step alone leaves the decay at the full rate."""

  class RateOnly(keras.optimizers.AdamW):
    def _backend_update_step(self, grads, variables, learning_rate):
      super()._backend_update_step(grads, variables, learning_rate * 0.01)

  kernel = keras.Variable(np.ones((2, 2), "float32"))
  np.testing.assert_allclose(_apply_zero_gradients(RateOnly(0.1, weight_decay=0.5), kernel),
                             1 - 0.1 * 0.5, rtol=1e-6)


def test_tfds_data_root_canary(tmp_path):
  import tensorflow_datasets as tfds
  builder = tfds.builder("mnist", data_dir=str(tmp_path))
  assert _compat.tfds_data_root(builder) == str(tmp_path)


def test_op_determinism_can_be_turned_off_again_canary():
  import tensorflow as tf
  from tensorflow.python.framework import config as tf_config
  tf.config.experimental.enable_op_determinism()
  assert tf_config.is_op_determinism_enabled()
  _compat.disable_op_determinism()
  assert not tf_config.is_op_determinism_enabled()
