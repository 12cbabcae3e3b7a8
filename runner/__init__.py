"""runner: a plugin-based experiment runner for CIFAR-10 studies."""
from .engine import TrainEvents
from .errors import DataError, PluginError, RunnerError, SpecError
from .hookspecs import hookimpl
from .schema import Setting

__version__ = "0.1.0"
__all__ = ["DataError", "PluginError", "RunnerError", "Setting", "SpecError", "TrainEvents", "hookimpl"]
