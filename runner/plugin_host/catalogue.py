"""The plugin catalogue: built-ins, entry points and spec-named files, in one pluggy manager.

Registering a plugin here is where pluggy validates it (a hook name no hookspec has, an argument
its hookspec lacks). Registry hooks fill the model and transform registries from every plugin;
run hooks are called through `hooks(plugins)`: a manager of a spec's enabled plugins, in the
spec's order, each with its own settings (runner/plugin_host/hooks.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

from ..errors import PluginError, RunnerError, SpecError
from ..spec.schema import Setting, plugin_files, suggestion
from .declaration import TABLE_KEYS, Plugin, declaration_of
from .hooks import Hooks, failing_line, new_manager

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "runner.plugins"

# Built-ins are registered by name like any plugin; order here is only the listing order.
BUILTINS = {
    "models": "runner.nets.models",
    "augment": "runner.plugins.augment",
    "grad_magnitude": "runner.plugins.grad_magnitude",
    "skip": "runner.plugins.skip",
    "init": "runner.plugins.init",
    "visdom": "runner.plugins.visdom_live",
    "fgsm": "runner.plugins.fgsm",
    "transfer": "runner.plugins.transfer",
    "universal": "runner.plugins.universal",
    "layer_stats": "runner.plugins.layer_stats",
    "lr_finder": "runner.plugins.lr_finder",
    "sharpness": "runner.plugins.sharpness",
    "saliency": "runner.plugins.saliency",
    "tensorboard": "runner.plugins.tensorboard_log",
    "mlflow": "runner.plugins.mlflow_log",
}


@dataclass
class Entry:
    """A registered model or transform."""

    name: str
    factory: Callable[..., Any]
    settings: dict[str, Setting]
    help: str = ""
    plugin: str = ""
    train_only: bool = False


@dataclass
class Catalogue:
    """Every plugin the runner knows, by name: where each came from, its declaration, and the models
    and transforms the plugins registered."""

    pm: pluggy.PluginManager
    origins: dict[str, str] = field(default_factory=dict)
    declarations: dict[str, Plugin] = field(default_factory=dict)
    models: dict[str, Entry] = field(default_factory=dict)
    transforms: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Catalogue:
        """The built-ins and every installed entry point's plugin."""
        catalogue = cls(new_manager())
        for name, module in BUILTINS.items():
            try:
                catalogue.add(name, importlib.import_module(module), "built-in")
            except ModuleNotFoundError as exc:
                if exc.name == "runner.plugins":  # sources on sys.path, the package never installed
                    raise RunnerError("the built-in plugins (the repository's plugins/ folder, installed as "
                                      "runner.plugins) cannot be imported: install the runner with "
                                      "pip install -e . (see README)") from exc
                if exc.name != module:  # a built-in's own import failed: a real error
                    raise
        for ep in _entry_points():
            try:
                catalogue.add(ep.name, ep.load(), f"entry point {ep.value} ({ep.dist.name if ep.dist else '?'})")
            except RunnerError:
                raise
            except Exception as exc:
                raise load_failure(ep.name, f"entry point {ep.value}", exc) from exc
        return catalogue

    @property
    def plugins(self) -> dict[str, object]:
        """{name: the plugin object (a module, mostly)}, in registration order."""
        return {name: self.pm.get_plugin(name) for name in self.origins}

    def add(self, name: str, plugin: object, origin: str) -> None:
        """Register `plugin` as `name`; `origin` says where it came from in listings and errors."""
        if name in self.origins:
            if self.pm.get_plugin(name) is plugin:
                return
            raise PluginError(f"two plugins are named {name!r}: {self.origins[name]} and {origin}")
        try:
            declaration = declaration_of(plugin)
        except PluginError as exc:
            raise PluginError(f"plugin {name!r} ({origin}): {exc}") from None
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()  # a hookimpl with no matching hookspec: a misspelled hook
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"plugin {name!r} ({origin}) is invalid: {why_invalid(self.pm, plugin, exc)}") from exc
        self.origins[name] = origin
        self.declarations[name] = declaration
        self._call_registry_hooks(name, plugin)

    def add_file(self, name: str, path: Path | str, spec_file: Path | str | None = None) -> None:
        """Load a plugin from a .py file; the spec table naming it enables it."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"plugin file {str(path)!r} not found", file=spec_file, key=f"plugins.{name}.path")
        module_name = f"runner_plugin_file_{name}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise SpecError(f"plugin file {str(path)!r} is not a Python module: a plugin file is NAME.py",
                            file=spec_file, key=f"plugins.{name}.path")
        module = importlib.util.module_from_spec(module_spec)
        # In sys.modules while it runs, as an import puts it: a dataclass under
        # `from __future__ import annotations` looks its module up there.
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except RunnerError as exc:
            sys.modules.pop(module_name, None)
            raise PluginError(f"plugin {name!r} from {path} failed to load: {exc}") from exc
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise load_failure(name, str(path), exc, str(path)) from exc
        self.add(name, module, f"file {path}")

    def add_spec_files(self, spec_file: Path, table: dict[str, Any]) -> None:
        """Load the plugin files a spec's merged table names (`[plugins.NAME] path = ...`), once each."""
        for name, settings in plugin_files(table):
            if self.origins.get(name) != f"file {Path(settings['path'])}":
                self.add_file(name, Path(settings["path"]), spec_file)

    def _call_registry_hooks(self, name: str, plugin: object) -> None:
        def registrar(table: dict[str, Entry], kind: str) -> Callable[..., None]:
            def register(entry_name: str, factory: Callable[..., Any], settings: dict[str, Setting] | None = None,
                         help: str = "", train_only: bool = False) -> None:
                if entry_name in table:
                    raise PluginError(f"plugin {name!r} registers {kind} {entry_name!r}, "
                                      f"already registered by plugin {table[entry_name].plugin!r}")
                table[entry_name] = Entry(entry_name, factory, dict(settings or {}), help, name, train_only)
            return register

        hooks = Hooks({name: plugin})
        hooks.register_models(register=registrar(self.models, "model"))
        hooks.register_transforms(register=registrar(self.transforms, "transform"))

    def default_enabled(self) -> set[str]:
        """Plugins that are on unless a spec turns them off (declared `default_enabled=True`: visdom)."""
        return {name for name, declared in self.declarations.items() if declared.default_enabled}

    def settings_of(self, name: str) -> dict[str, Setting]:
        """The plugin's own settings ({key: Setting}), without the keys every plugin table has."""
        return self.declarations[name].schema

    def table_schema(self, name: str) -> dict[str, Setting]:
        """Every key a `[plugins.<name>]` table may hold."""
        return {**self.settings_of(name), **TABLE_KEYS}

    def hooks(self, tables: Mapping[str, dict | None], **injected: dict[str, Any]) -> Hooks:
        """The hooks of these plugins, in this order, each hook that takes `settings` given the
        plugin's settings object made from its validated table (its defaults for None). Further
        per-plugin arguments: injected={argument: {plugin: value}}."""
        per_plugin = {name: {"settings": self.declarations[name].make_settings(table or {})}
                      for name, table in tables.items()}
        for argument, values in injected.items():
            for name, value in values.items():
                per_plugin[name][argument] = value
        return Hooks({name: self.pm.get_plugin(name) for name in tables}, per_plugin)

    def reads(self, plugins: dict[str, dict[str, Any]]) -> dict[str, str]:
        """{spec name: the setting naming it} of the specs whose runs the enabled plugins of a spec's
        `plugins` table read (their settings declared with `reads`), in settings order."""
        found: dict[str, str] = {}
        for plugin, settings in plugins.items():
            if not settings.get("enabled", True) or plugin not in self.plugins:
                continue
            for key, setting in self.settings_of(plugin).items():
                value = settings.get(key) if setting.reads else None
                for name in value if isinstance(value, list) else [value]:
                    if name:
                        found.setdefault(name, f"plugins.{plugin}.{key}")
        return found

    def model_source(self, plugins: dict[str, dict[str, Any]]) -> tuple[str, str] | None:
        """(plugin, setting) of the enabled plugin whose named spec's trained model is the run's own
        model (its declared `run_model`), if there is one."""
        for plugin, settings in plugins.items():
            key = self.declarations[plugin].run_model if plugin in self.declarations else None
            if key and settings.get("enabled", True):
                return plugin, key
        return None

    def hooks_of(self, name: str) -> list[str]:
        """The names of the hooks plugin `name` implements, sorted."""
        return sorted(caller.name for caller in self.pm.get_hookcallers(self.pm.get_plugin(name)) or [])


def _entry_points() -> list[EntryPoint]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def load_failure(name: str, origin: str, exc: Exception, plugin_file: str | None = None) -> PluginError:
    """What to tell the author of a plugin that does not import: the file and line, and what to do."""
    if isinstance(exc, SyntaxError):
        return PluginError(f"plugin {name!r} ({origin}) has a syntax error at {exc.filename}:{exc.lineno}: "
                           f"{exc.msg}; fix that line, then check it with: runner plugins {name}")
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        package = exc.name.split(".")[0]
        return PluginError(f"plugin {name!r} ({origin}) imports {exc.name!r}, which is not installed (at "
                           f"{failing_line(exc, plugin_file)}); install it (pip install {package}) or remove "
                           f"the import")
    return PluginError(f"plugin {name!r} ({origin}) failed to load at {failing_line(exc, plugin_file)}: "
                       f"{type(exc).__name__}: {exc}")


def why_invalid(pm: pluggy.PluginManager, plugin: object, error: pluggy.PluginValidationError) -> str:
    """Pluggy's verdict in the plugin author's terms: which function, at which line, and what to do."""
    for attribute in dir(plugin):
        options = pm.parse_hookimpl_opts(plugin, attribute)
        if options is None:
            continue
        function = getattr(plugin, attribute)
        hook = options.get("specname") or attribute
        where = _defined_at(function)
        caller = getattr(pm.hook, hook, None)
        if caller is None or caller.spec is None:
            known = [h for h in vars(pm.hook) if getattr(pm.hook, h).spec is not None]
            return (f"unknown hook {hook!r} at {where}{suggestion(hook, known)} "
                    "(every hook: runner/plugin_host/hookspecs.py; list a plugin's with: runner plugins NAME)")
        argnames = pluggy._hooks.varnames(function)
        extra = [a for a in (*argnames[0], *argnames[1]) if a not in caller.spec.argnames]
        if extra:
            return (f"argument {extra[0]!r} of hook {hook!r} at {where} is not one the hook passes "
                    f"(it passes: {', '.join(caller.spec.argnames)}); remove it or rename it")
    return str(error)


def _defined_at(function: Callable[..., Any]) -> str:
    code = getattr(inspect.unwrap(function), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else repr(function)
