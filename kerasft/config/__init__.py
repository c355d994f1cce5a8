"""The settings of a run and of every command, as frozen dataclasses (no TensorFlow).

`RunConfig` holds a run's groups (`ModelConfig`, `DataConfig`, `TrainingConfig`,
`MethodsConfig`, and each task's own settings); `kerasft.config.checks` runs the checks
that span groups, once, before a run starts.
"""

from kerasft.config.data import DataConfig
from kerasft.config.methods import MethodsConfig
from kerasft.config.run import ModelConfig, RunConfig, TrainingConfig
from kerasft.tasks.settings import TaskData, TaskSettings

__all__ = ["DataConfig", "MethodsConfig", "ModelConfig", "RunConfig", "TaskData",
           "TaskSettings", "TrainingConfig"]
