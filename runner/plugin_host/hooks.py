"""Calling plugins' hooks through pluggy, each plugin with its own settings and state.

A spec's enabled plugins are registered, in the spec's order, in a plugin manager of their own
(`Hooks`), so every pluggy option works as pytest's and llm's authors know it: `tryfirst`,
`trylast`, `wrapper=True` (a body around the other plugins' calls), `specname` and call tracing
(RUNNER_TRACE_HOOKS=1 prints every hook call to stderr). What differs per plugin is injected: a
hook that takes `settings` gets that plugin's validated settings object, one that takes `state`
gets a namespace the plugin keeps for the run. Each call is attributed: an exception from a
plugin becomes a PluginError naming the plugin, the hook and the line of the plugin's file.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any, Callable

import pluggy

from ..errors import PluginError, RunnerError
from . import hookspecs

PROJECT = "runner"
INJECTED = ("settings", "state")  # per-plugin arguments: each plugin's own value, never the caller's
TRACE_VARIABLE = "RUNNER_TRACE_HOOKS"

# The plugin whose hook is running (wrappers nest): handlers it attaches are attributed to it.
current_plugin: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_plugin", default=None)


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if os.environ.get(TRACE_VARIABLE):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


class Hooks:
    """The hooks of some plugins, called as `hooks.attach(trainer=..., run=...)` (pluggy's relay):
    in the order given (pluggy calls the last registered first, so they are registered reversed),
    each plugin with its own injected arguments."""

    def __init__(self, modules: dict[str, Any], injected: dict[str, dict[str, Any]] | None = None):
        self.order = list(modules)
        self.pm = new_manager()
        self.state = {name: types.SimpleNamespace() for name in self.order}
        injected = injected or {}
        for name in reversed(self.order):
            given = {"state": self.state[name], **injected.get(name, {})}
            self.pm.register(bound(name, modules[name], given), name=name)

    def __getattr__(self, hook: str) -> "Caller":
        if hook.startswith("__"):
            raise AttributeError(hook)
        return Caller(getattr(self.pm.hook, hook))

    def one(self, name: str, hook: str) -> "Caller":
        """A caller of one plugin's implementation alone (for hooks whose calls chain, like
        change_model, each plugin given what the one before returned)."""
        others = [self.pm.get_plugin(other) for other in self.order if other != name]
        return Caller(self.pm.subset_hook_caller(hook, remove_plugins=others))


class Caller:
    """A pluggy hook caller that supplies the injected arguments' names itself: each plugin's
    stand-in fills in its own value, so a caller passes only the hook's shared arguments."""

    def __init__(self, caller: pluggy.HookCaller):
        self.caller = caller

    def __call__(self, **kwargs):
        for argument in INJECTED:
            if self.caller.spec is not None and argument in self.caller.spec.argnames:
                kwargs.setdefault(argument, None)
        return self.caller(**kwargs)

    def __getattr__(self, attribute: str):
        return getattr(self.caller, attribute)


class BoundPlugin:
    """A stand-in for a plugin module: its hook implementations with the injected arguments bound."""

    def __init__(self, name: str):
        self.__name__ = name


def bound(name: str, module, given: dict[str, Any]) -> BoundPlugin:
    """A stand-in for a plugin module holding its hook implementations with the `given` arguments
    filled in: each takes only the arguments the caller passes, so pluggy sees the rest as absent."""
    proxy = BoundPlugin(getattr(module, "__name__", name))
    plugin_file = getattr(module, "__file__", None)
    for attribute in dir(module):
        function = getattr(module, attribute, None)
        options = getattr(function, f"{PROJECT}_impl", None)
        if options is None or not inspect.isroutine(function):
            continue
        hook = options.get("specname") or attribute
        setattr(proxy, attribute, _bind(function, name, hook, given, plugin_file, options))
    return proxy


def _bind(function, plugin: str, hook: str, given: dict, plugin_file, options) -> Callable:
    parameters = list(inspect.signature(function).parameters)
    passed = [p for p in parameters if p not in given]
    filled = {p: given[p] for p in parameters if p in given}

    @contextlib.contextmanager
    def attributed_to_plugin():
        token = current_plugin.set(plugin)
        try:
            yield
        except RunnerError:
            raise
        except Exception as exc:
            raise _failure(exc, plugin, hook, plugin_file) from exc
        finally:
            current_plugin.reset(token)

    def call(**kwargs):
        with attributed_to_plugin():
            return function(**kwargs, **filled)

    def call_wrapper(**kwargs):
        with attributed_to_plugin():
            return (yield from function(**kwargs, **filled))

    wrapper = inspect.isgeneratorfunction(function)
    # pluggy reads a hook implementation's argument names from its code object, so the stand-in is
    # a real function with exactly the arguments the caller supplies.
    arguments = ", ".join(passed)
    source = (f"def {hook}({arguments}):\n"
              f"    return {'(yield from ' if wrapper else ''}target({', '.join(f'{p}={p}' for p in passed)})"
              f"{')' if wrapper else ''}\n")
    namespace = {"target": call_wrapper if wrapper else call}
    exec(compile(source, f"<runner hook {plugin}.{hook}>", "exec"), namespace)
    stand_in = namespace[hook]
    setattr(stand_in, f"{PROJECT}_impl", dict(options))
    stand_in.__doc__ = function.__doc__
    return stand_in


def _failure(exc: Exception, plugin: str, hook: str, plugin_file) -> PluginError:
    where = failing_line(exc, plugin_file)
    return PluginError(f"plugin {plugin!r} failed in hook {hook!r} at {where}: {type(exc).__name__}: {exc}")


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
