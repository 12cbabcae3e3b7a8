"""The plugin catalogue: built-ins, entry points and spec-named files, in one pluggy manager.

Registry hooks fill the model and transform registries from every plugin; run hooks are called
for the plugins a spec enables, one plugin at a time and in the spec's order, so an error names
its plugin and order never depends on pluggy's registration order.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError, RunnerError, SpecError
from .schema import plugin_files

ENTRY_POINT_GROUP = "runner.plugins"

# Built-ins are registered by name like any plugin; order here is only the listing order.
BUILTINS = {
    "models": "runner.models",
    "augment": "plugins.augment",
    "grad_magnitude": "plugins.grad_magnitude",
    "skip": "plugins.skip",
    "init": "plugins.init",
    "visdom": "plugins.visdom_live",
    "fgsm": "plugins.fgsm",
    "transfer": "plugins.transfer",
    "universal": "plugins.universal",
}


@dataclass
class Entry:
    """A registered model or transform."""

    name: str
    factory: Callable
    settings: dict
    help: str = ""
    plugin: str = ""
    train_only: bool = False


@dataclass
class Catalogue:
    pm: pluggy.PluginManager
    origins: dict[str, str] = field(default_factory=dict)
    models: dict[str, Entry] = field(default_factory=dict)
    transforms: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def default(cls) -> "Catalogue":
        pm = pluggy.PluginManager("runner")
        pm.add_hookspecs(hookspecs)
        catalogue = cls(pm)
        for name, module in BUILTINS.items():
            try:
                catalogue.add(name, importlib.import_module(module), "built-in")
            except ModuleNotFoundError as exc:
                if exc.name != module:  # a built-in's own import failed: a real error
                    raise
        for ep in _entry_points():
            try:
                catalogue.add(ep.name, ep.load(), f"entry point {ep.value} ({ep.dist.name if ep.dist else '?'})")
            except RunnerError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin {ep.name!r} from entry point {ep.value} failed to load: {exc}") from exc
        return catalogue

    @property
    def plugins(self) -> dict[str, Any]:
        return {name: self.pm.get_plugin(name) for name in self.origins}

    def add(self, name: str, plugin, origin: str) -> None:
        if name in self.origins:
            if self.pm.get_plugin(name) is plugin:
                return
            raise PluginError(f"two plugins are named {name!r}: {self.origins[name]} and {origin}")
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()  # a hookimpl with no matching hookspec: a misspelled hook
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"plugin {name!r} ({origin}) is invalid: {exc} (a misspelled hook name? "
                              f"hooks are listed in runner/hookspecs.py)") from exc
        self.origins[name] = origin
        self._call_registry_hooks(name, plugin)

    def add_file(self, name: str, path: Path, spec_file=None) -> None:
        """Load a plugin from a .py file; the spec table naming it enables it."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"plugin file {str(path)!r} not found", file=spec_file, key=f"plugins.{name}.path")
        module_name = f"runner_plugin_file_{name}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginError(f"plugin {name!r} from {path} failed to load: {exc}") from exc
        sys.modules[module_name] = module
        self.add(name, module, f"file {path}")

    def add_spec_files(self, spec_file: Path, table: dict) -> None:
        for name, settings in plugin_files(table):
            if self.origins.get(name) != f"file {Path(settings['path'])}":
                self.add_file(name, Path(settings["path"]), spec_file)

    def _call_registry_hooks(self, name: str, plugin) -> None:
        def registrar(table: dict, kind: str):
            def register(entry_name, factory, settings=None, help="", train_only=False):
                if entry_name in table:
                    raise PluginError(f"plugin {name!r} registers {kind} {entry_name!r}, "
                                      f"already registered by plugin {table[entry_name].plugin!r}")
                table[entry_name] = Entry(entry_name, factory, dict(settings or {}), help, name, train_only)
            return register

        self.call(name, "register_models", register=registrar(self.models, "model"))
        self.call(name, "register_transforms", register=registrar(self.transforms, "transform"))

    def default_enabled(self) -> set[str]:
        """Plugins that are on unless a spec turns them off (`DEFAULT_ENABLED = True`: visdom)."""
        return {name for name, plugin in self.plugins.items() if getattr(plugin, "DEFAULT_ENABLED", False)}

    def settings_of(self, name: str) -> dict:
        return getattr(self.pm.get_plugin(name), "SETTINGS", {})

    def reads(self, plugins: dict) -> dict[str, str]:
        """{spec name: the setting naming it} of the specs whose runs the enabled plugins of a spec's
        `plugins` table read (their settings declared with `reads`), in settings order."""
        found = {}
        for plugin, settings in plugins.items():
            if not settings.get("enabled", True) or plugin not in self.plugins:
                continue
            for key, setting in self.settings_of(plugin).items():
                value = settings.get(key) if setting.reads else None
                for name in value if isinstance(value, list) else [value]:
                    if name:
                        found.setdefault(name, f"plugins.{plugin}.{key}")
        return found

    def model_source(self, plugins: dict) -> tuple[str, str] | None:
        """(plugin, setting) of the enabled plugin whose named spec's trained model is the run's own
        model (the plugin module's RUN_MODEL), if there is one."""
        for plugin, settings in plugins.items():
            key = getattr(self.plugins.get(plugin), "RUN_MODEL", None)
            if key and settings.get("enabled", True):
                return plugin, key
        return None

    def hooks_of(self, name: str) -> list[str]:
        return sorted(caller.name for caller in self.pm.get_hookcallers(self.pm.get_plugin(name)) or [])

    def call(self, name: str, hook: str, **kwargs):
        """Call one plugin's implementation of a hook; its failure is reported with its name."""
        plugin = self.pm.get_plugin(name)
        impls = [impl for impl in getattr(self.pm.hook, hook).get_hookimpls() if impl.plugin is plugin]
        if not impls:
            return None
        function = impls[0].function
        # Arguments with a default too (pluggy lists them apart): a hook's caller gives them all.
        args = {arg: kwargs[arg] for arg in (*impls[0].argnames, *impls[0].kwargnames) if arg in kwargs}
        try:
            return function(**args)
        except RunnerError:
            raise
        except Exception as exc:
            where = failing_line(exc, getattr(plugin, "__file__", None))
            raise PluginError(f"plugin {name!r} failed in hook {hook!r} at {where}: {type(exc).__name__}: {exc}") from exc


def _entry_points():
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def attributed(handler: Callable, plugin: str, event) -> Callable:
    """Wrap an event handler so its failure names the plugin that attached it.

    functools.wraps keeps the signature visible (inspect follows __wrapped__), which Ignite
    checks when the handler is added.
    """
    if inspect.isclass(handler):
        return handler

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except RunnerError:
            raise
        except Exception as exc:
            # An event with a filter (once=2, every=50) prints as a function's address; its name reads.
            where = failing_line(exc, getattr(getattr(handler, "__code__", None), "co_filename", None))
            raise PluginError(f"plugin {plugin!r} failed in its {getattr(event, 'name', event)} handler "
                              f"{getattr(handler, '__name__', '')}() at {where}: {type(exc).__name__}: {exc}") from exc

    return wrapper


def failing_line(exc: BaseException, plugin_file: str | None) -> str:
    """'crash.py:12': the last line of the plugin's own file the error passed through (where its
    author looks first), else the line that raised it."""
    import os
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    mine = [f for f in frames if plugin_file and os.path.realpath(f.filename) == os.path.realpath(plugin_file)]
    frame = (mine or frames)[-1]
    path = Path(frame.filename)
    try:
        path = path.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{path}:{frame.lineno}"
