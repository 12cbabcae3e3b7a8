"""runner: a plugin-based experiment runner for CIFAR-10 studies.

The public API, all a plugin may import (tests/test_structure.py holds plugins to it):
- names: hookimpl, Plugin and setting (a plugin's declaration), Setting, the errors, TrainEvents (the trainer's custom events);
- modules: artifacts (run folders, atomic writes), figures (matplotlib, headless), input_grad
  (gradients w.r.t. a model's input, for attacks), progress (progress displays), sources (other
  specs' runs and trained models), blocks (shared model parts), report (report sections a plugin
  contributes), results (a run's headline figure), trackers (what the tensorboard and mlflow plugins
  share).
And for notebooks and scripts (runner/api.py): run (one spec, as the command line runs it), runs (the
runs in an OUT folder, as `runner ls` lists them), Result (a run's summary, metrics and model).
"""
import importlib
import sys
import types

from .declaration import Plugin, setting
from .errors import DataError, PluginError, RunnerError, SpecError
from .hookspecs import hookimpl
from .schema import Setting

__version__ = "0.1.0"

API = ("Result", "run", "runs")
PUBLIC_MODULES = ("artifacts", "blocks", "figures", "input_grad", "progress", "report", "results", "sources",
                  "trackers")
__all__ = ["DataError", "Plugin", "PluginError", "RunnerError", "Setting", "SpecError", "TrainEvents", "hookimpl", "setting",
           *API, *PUBLIC_MODULES]


def __getattr__(name):
    # Lazy: importing torch (through the engine and most modules) costs seconds, which commands
    # like `runner visdom` should not pay.
    if name == "TrainEvents":
        from .engine import TrainEvents

        return TrainEvents
    if name in API:
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    if name in PUBLIC_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'runner' has no attribute {name!r}")


class _Package(types.ModuleType):
    """The package's own module type, so that `runner.run` stays the API's function: importing the
    submodule runner/run.py (one run's flow) would otherwise bind the name `run` here to it. Code
    that needs the submodule imports from it by its full name: `from runner.run import execute`."""

    def __setattr__(self, name, value):
        if name == "run" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
