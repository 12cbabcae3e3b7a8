"""How a plugin declares itself: one `runner.Plugin(...)` object in its module.

    @dataclass
    class Settings:
        every: int = setting(50, "iterations between records", min=1)

    plugin = Plugin(settings=Settings, help="log each layer's weight norm")

The settings class is the `[plugins.<name>]` table of a spec: its fields' types, defaults and
bounds are checked when the spec loads, and every hook that takes `settings` receives an
instance (`settings.every`). A plugin never names itself: the catalogue finds the declaration
by its type, whatever the module calls it, and hands each hook the plugin's own settings and
per-run `state`.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import PluginError
from ..spec.schema import Setting

# Keys every [plugins.<name>] table may hold besides the plugin's own: the runner's, not the plugin's.
TABLE_KEYS = {
    "enabled": Setting(True, "run this plugin"),
    "path": Setting("", "load the plugin from this .py file (relative to the spec)"),
}


T = TypeVar("T")


def setting(default: T, help: str = "", *, choices: tuple | None = None, min: float | None = None,
            max: float | None = None, item: type | None = None, length: tuple[int, int] | None = None,
            quick: Any = None, reads: str | None = None) -> T:
    """A dataclass field of a plugin's settings: `every: int = setting(50, "help", min=1)`.

    The options are `runner.Setting`'s; the type is the field's annotation. Typed as the default's
    type, as `dataclasses.field` is, so a type checker compares it with the annotation."""
    declared = Setting(default, help, choices=choices, min=min, max=max, item=item, length=length, quick=quick,
                       reads=reads)
    return _field(default, {"runner": declared})


def _field(default: Any, metadata: dict[str, Setting]) -> Any:
    if isinstance(default, list):  # a dataclass refuses a mutable default: each instance gets a copy
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Plugin:
    """A plugin's declaration: its settings (a dataclass, or a dict of `runner.Setting`), whether it is
    on unless a spec turns it off, and which setting names the spec whose trained model is the run's
    own model (`run_model`, an attack's `source`: its specs name no model and train nothing)."""

    settings: type | dict[str, Setting] | None = None
    help: str = ""
    default_enabled: bool = False
    run_model: str | None = None

    def __post_init__(self) -> None:
        schema = settings_schema(self.settings)  # a bad declaration fails when the plugin loads
        if self.run_model is not None and self.run_model not in schema:
            raise PluginError(f"run_model={self.run_model!r} names no setting "
                              f"(settings: {', '.join(schema) or 'none'})")
        for key in TABLE_KEYS:
            if key in schema:
                raise PluginError(f"a plugin setting may not be called {key!r}: every plugin table has it")

    @functools.cached_property
    def schema(self) -> dict[str, Setting]:
        """{key: Setting} of the plugin's own settings, in declaration order."""
        return settings_schema(self.settings)

    @functools.cached_property
    def settings_class(self) -> type:
        """The declared dataclass, or one made from a dict of Setting (frozen: hooks read settings)."""
        if self.settings is None or isinstance(self.settings, dict):
            fields = [(name, typing.Any, _field(s.default, {})) for name, s in self.schema.items()]
            return dataclasses.make_dataclass("Settings", fields, frozen=True)
        return self.settings

    def make_settings(self, table: dict[str, Any]) -> Any:
        """The settings object a hook receives, from a validated table (the runner's keys left out)."""
        return self.settings_class(**{key: table[key] for key in self.schema if key in table})


def settings_schema(declared: type | dict[str, Setting] | None) -> dict[str, Setting]:
    if declared is None:
        return {}
    if isinstance(declared, dict):
        for key, value in declared.items():
            if not isinstance(value, Setting):
                raise PluginError(f"setting {key!r} is {value!r}; declare it as runner.Setting(default, help)")
        return dict(declared)
    if not (isinstance(declared, type) and dataclasses.is_dataclass(declared)):
        raise PluginError(f"settings={declared!r}: expected a dataclass or a dict of runner.Setting")
    hints = typing.get_type_hints(declared)
    schema = {}
    for f in dataclasses.fields(declared):
        given = f.metadata.get("runner")
        if given is None:
            if f.default is dataclasses.MISSING:
                raise PluginError(f"setting {f.name!r} of {declared.__name__} has no default; "
                                  f"every setting needs one: {f.name}: ... = setting(DEFAULT, \"help\")")
            given = Setting(f.default)
        kind, item = _kind(hints[f.name], f"{declared.__name__}.{f.name}")
        schema[f.name] = dataclasses.replace(given, type=kind, item=given.item or item)
    return schema


def _kind(annotation: Any, where: str) -> tuple[type | tuple, type | None]:
    """(type, element type) of a settings field's annotation: int, float, str, bool, list[X], or a union."""
    origin = typing.get_origin(annotation)
    if annotation in (int, float, str, bool, dict):
        return annotation, None
    if annotation is list or origin is list:
        args = typing.get_args(annotation)
        return list, (args[0] if args else None)
    if origin in (typing.Union, types.UnionType):
        return tuple(_kind(arg, where)[0] for arg in typing.get_args(annotation)), None
    raise PluginError(f"setting {where}: type {annotation!r} is not one a spec can hold "
                      "(int, float, str, bool, list[...], or a union of them)")


def declaration_of(module: object) -> Plugin:
    """The module's `Plugin` (found by type), or an empty one for a plugin with hooks only."""
    # dir(), not vars(): a plugin object's declaration may be a class attribute.
    found = list({id(value): value for value in (getattr(module, name, None) for name in dir(module))
                  if isinstance(value, Plugin)}.values())
    if len(found) > 1:
        raise PluginError(f"{getattr(module, '__name__', module)} declares {len(found)} runner.Plugin objects; "
                          "a plugin declares one")
    if not found:
        stale = [name for name in ("SETTINGS", "RUN_MODEL", "DEFAULT_ENABLED") if hasattr(module, name)]
        if stale:
            raise PluginError(f"{getattr(module, '__name__', module)} sets {', '.join(stale)}; declare the plugin "
                              "with one object instead: plugin = runner.Plugin(settings=..., run_model=..., "
                              "default_enabled=...) (docs/plugins.md)")
        return Plugin()
    return found[0]
