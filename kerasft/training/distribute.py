"""tf.distribute strategies and the process-wide settings a run needs before it builds.

`setup(training)` must run before TensorFlow has executed anything in the process when
`cpu_replicas` is set (logical devices cannot change afterwards); the entry point calls it
first. Nothing here writes files.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from absl import logging

from kerasft.core import _compat
from kerasft.config import TrainingConfig
from kerasft.core.errors import UsageError


@dataclasses.dataclass
class Runtime:
  """The strategy and switches one run trains with."""
  strategy: tf.distribute.Strategy
  is_chief: bool
  worker_id: int
  jit_compile: bool
  policy: str  # the Keras dtype policy name


def default_runtime() -> Runtime:
  """This process's default strategy, as the chief, without XLA, in float32."""
  return Runtime(tf.distribute.get_strategy(), True, 0, False, "float32")


def _split_cpu(n: int) -> None:
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
  except RuntimeError:
    raise UsageError(f"--cpu_replicas={n}: TensorFlow is already initialized in this process; "
                     "set it in a fresh process (the command line does)") from None


def _make_strategy(name: str, gpus: list, cluster_resolver: str) -> tf.distribute.Strategy:
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "default"
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
  if name == "mirrored":
    logical = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in logical])
  try:
    resolver = (tf.distribute.cluster_resolver.SlurmClusterResolver()
                if cluster_resolver == "slurm"
                else tf.distribute.cluster_resolver.TFConfigClusterResolver())
    if name == "multi_worker":
      if not resolver.cluster_spec().as_dict():
        raise UsageError("--strategy=multi_worker: no cluster in TF_CONFIG; set TF_CONFIG on "
                         "every worker or pass --cluster_resolver=slurm")
      return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if name == "parameter_server":
      return tf.distribute.experimental.ParameterServerStrategy(resolver)
    tpu = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(tpu)
    tf.tpu.experimental.initialize_tpu_system(tpu)
    return tf.distribute.TPUStrategy(tpu)
  except (ValueError, RuntimeError, KeyError, OSError, tf.errors.OpError) as e:
    where = " (--cluster_resolver=slurm needs a Slurm job step)" if (
        cluster_resolver == "slurm") else ""
    raise UsageError(f"--strategy={name}: {(str(e).splitlines() or [repr(e)])[0]}"
                     f"{where}") from None


def chief_and_id(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
  """Whether this process is the chief (it alone writes the run's files), and its task id."""
  resolver = getattr(strategy, "cluster_resolver", None)
  task_type = getattr(resolver, "task_type", None)
  if not task_type:
    return True, 0
  task_id = int(resolver.task_id or 0)
  if task_type == "chief":
    return True, task_id
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return task_type == "worker" and task_id == 0 and not has_chief, task_id


def setup(training: TrainingConfig, batch_size: int | str) -> Runtime:
  """Creates the strategy and sets the dtype policy and determinism for this process;
  batch_size: the global batch (or "auto": checked once chosen, `plan.batch`)."""
  _compat.apply()
  if training.cpu_replicas:
    _split_cpu(training.cpu_replicas)
  gpus = tf.config.list_physical_devices("GPU")
  strategy = _make_strategy(training.strategy, gpus, training.cluster_resolver)
  policy = training.mixed_precision
  if policy == "auto":
    bf16 = gpus and all(tf.config.experimental.get_device_details(g).get(
        "compute_capability", (0, 0)) >= (8, 0) for g in gpus)
    policy = "mixed_bfloat16" if bf16 else "off"
  policy = "float32" if policy == "off" else policy
  keras.mixed_precision.set_global_policy(policy)
  if training.deterministic:
    tf.config.experimental.enable_op_determinism()
  else:  # an earlier --deterministic run in this process must not linger (it turns XLA off)
    _compat.disable_op_determinism()
  jit = training.jit_compile == "on" or (training.jit_compile == "auto" and bool(gpus))
  is_chief, worker_id = chief_and_id(strategy)
  replicas = strategy.num_replicas_in_sync
  if batch_size != "auto" and batch_size % replicas:
    raise UsageError(f"--batch_size={batch_size} is the global batch; it must divide evenly "
                     f"over {replicas} replicas")
  logging.info("strategy %s: %d replicas, global batch %s; dtype policy %s; jit_compile "
               "%s%s", type(strategy).__name__, replicas, "auto (chosen once the model is "
               "built)" if batch_size == "auto" else f"{batch_size} = {batch_size // replicas}"
               " per replica", policy, jit, "" if is_chief else
               f"; worker {worker_id} (not the chief: writes to a temporary folder)")
  return Runtime(strategy=strategy, is_chief=is_chief, worker_id=worker_id, jit_compile=jit,
                 policy=policy)
