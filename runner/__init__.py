"""runner: a plugin-based experiment runner for CIFAR-10 studies."""
from .errors import DataError, PluginError, RunnerError, SpecError
from .hookspecs import hookimpl
from .schema import Setting

__version__ = "0.1.0"
__all__ = ["DataError", "PluginError", "RunnerError", "Setting", "SpecError", "TrainEvents", "hookimpl"]


def __getattr__(name):
    # Lazy: importing torch (through the engine) costs seconds, which commands like
    # `runner visdom` should not pay.
    if name == "TrainEvents":
        from .engine import TrainEvents

        return TrainEvents
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
