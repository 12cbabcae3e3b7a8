"""runner: a plugin-based experiment runner for CIFAR-10 studies.

The public API, all a plugin may import (tests/test_structure.py holds plugins to it):
- names: hookimpl, Setting, the errors, TrainEvents (the trainer's custom events);
- modules: artifacts (run folders, atomic writes), figures (matplotlib, headless), input_grad
  (gradients w.r.t. a model's input, for attacks), progress (progress displays), sources (other
  specs' runs and trained models), blocks (shared model parts), report (report sections a plugin
  contributes), results (a run's headline figure).
"""
import importlib

from .errors import DataError, PluginError, RunnerError, SpecError
from .hookspecs import hookimpl
from .schema import Setting

__version__ = "0.1.0"

PUBLIC_MODULES = ("artifacts", "blocks", "figures", "input_grad", "progress", "report", "results", "sources")
__all__ = ["DataError", "PluginError", "RunnerError", "Setting", "SpecError", "TrainEvents", "hookimpl",
           *PUBLIC_MODULES]


def __getattr__(name):
    # Lazy: importing torch (through the engine and most modules) costs seconds, which commands
    # like `runner visdom` should not pay.
    if name == "TrainEvents":
        from .engine import TrainEvents

        return TrainEvents
    if name in PUBLIC_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
