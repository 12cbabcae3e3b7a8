"""runner: a plugin-based experiment runner for CIFAR-10 studies.

The public API, all a plugin may import (tests/test_structure.py holds plugins to it):
- names: hookimpl, Plugin and setting (a plugin's declaration), Setting, the errors, TrainEvents
  (the trainer's custom events);
- modules: adversarial (the adversarial set an attack run saves, adversarial_set.pt, and 8-bit
  PNGs), artifacts (run folders, atomic writes, figures saved and closed), attacks (iterative FGSM
  in batches, distortion measures), figures (matplotlib, headless), input_grad (gradients w.r.t. a
  model's input, for attacks), progress (progress displays), sources (other specs' runs and trained
  models), blocks (shared model parts), report (report sections a plugin contributes), results (a
  run's headline figure, numbers as summary.json and tables show them), trackers (what the
  tensorboard and mlflow plugins share), visdom_server (the Visdom log's name and default port).
And for notebooks and scripts (runner/api.py): run (one spec, as the command line runs it), runs (the
runs in an OUT folder, as `runner ls` lists them), Result (a run's summary, metrics and model).
"""
import importlib
import importlib.abc
import importlib.util
import sys

from .errors import DataError, PluginError, RunnerError, SpecError
from .plugin_host.declaration import Plugin, setting
from .plugin_host.hookspecs import hookimpl
from .spec.schema import Setting

__version__ = "0.1.0"

API = ("Result", "run", "runs")
# The public modules by the name plugins import them (`from runner.blocks import Residual`), and
# where each lives in the tree (the floors: docs/architecture.md).
PUBLIC_MODULES = {
    "adversarial": "runner.training.adversarial",
    "artifacts": "runner.artifacts",
    "attacks": "runner.training.attacks",
    "blocks": "runner.nets.blocks",
    "figures": "runner.training.figures",
    "input_grad": "runner.nets.input_grad",
    "progress": "runner.progress",
    "report": "runner.report",
    "results": "runner.results",
    "sources": "runner.training.sources",
    "trackers": "runner.training.trackers",
    "visdom_server": "runner.visdom_server",
}
__all__ = ["DataError", "Plugin", "PluginError", "RunnerError", "Setting", "SpecError", "TrainEvents", "hookimpl",
           "setting", *API, *PUBLIC_MODULES]


def __getattr__(name):
    # Lazy: importing torch (through the engine and most modules) costs seconds, which commands
    # like `runner visdom` should not pay.
    if name == "TrainEvents":
        from .training.engine import TrainEvents

        return TrainEvents
    if name in API:
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    if name in PUBLIC_MODULES:
        return importlib.import_module(PUBLIC_MODULES[name])
    raise AttributeError(f"module 'runner' has no attribute {name!r}")


class _PublicModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import runner.blocks` gives runner.nets.blocks itself (one module object, not a copy), so
    plugins import the public modules by their short names wherever the tree keeps them."""

    def find_spec(self, fullname, path=None, target=None):
        short = fullname.removeprefix(f"{__name__}.")
        if short != fullname and short in PUBLIC_MODULES and PUBLIC_MODULES[short] != fullname:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(PUBLIC_MODULES[spec.name.removeprefix(f"{__name__}.")])

    def exec_module(self, module):
        pass  # already executed under its own name


if not any(isinstance(finder, _PublicModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _PublicModules())
