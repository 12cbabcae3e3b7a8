"""Hooks go through pluggy (wrapper, tryfirst, trylast), each plugin with its own settings and
state, and the errors a plugin author meets name the file, the line and what to do."""
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from runner import Plugin, PluginError, SpecError, hookimpl, setting
from runner.cli import main
from runner.spec.loading import validate
from runner.training.state import Run

SPECS = Path(__file__).resolve().parents[1] / "specs"


def add(catalogue, name, plugin):
    catalogue.add(name, plugin, "test")
    return plugin


def tiny_spec(catalogue, plugins: dict):
    return validate("t.toml", {"model": {"name": "table1", "widths": [4, 4, 4], "hidden": 8},
                               "plugins": plugins}, catalogue)


def Calls(seen: list, label: str, **options):
    """A plugin that appends (label, how often it was called in this Hooks) to a shared list."""

    class Plugin_:
        @hookimpl(**options)
        def run_finished(self, results, state):
            state.count = getattr(state, "count", 0) + 1
            seen.append((label, state.count))

    return Plugin_()


def test_hooks_run_in_spec_order_with_tryfirst_and_trylast(catalogue):
    seen = []
    add(catalogue, "a", Calls(seen, "a"))
    add(catalogue, "b", Calls(seen, "b", trylast=True))
    add(catalogue, "c", Calls(seen, "c"))
    add(catalogue, "d", Calls(seen, "d", tryfirst=True))
    spec = tiny_spec(catalogue, {"b": {}, "a": {}, "c": {}, "d": {}})
    hooks = catalogue.hooks(spec.enabled_plugins())
    hooks.run_finished(run=None, results={})
    hooks.run_finished(run=None, results={})
    # Spec order (b, a, c, d) but tryfirst before and trylast after; each plugin's state is its own.
    assert seen == [("d", 1), ("a", 1), ("c", 1), ("b", 1), ("d", 2), ("a", 2), ("c", 2), ("b", 2)]


def test_a_wrapper_runs_around_the_other_plugins(catalogue):
    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def run_finished(self, run, results):
            seen.append("before")
            result = yield
            seen.append(("after", dict(results)))
            results["wrapped"] = True
            return result

    class Plain:
        @hookimpl
        def run_finished(self, results):
            seen.append("plain")
            results["plain"] = 1

    add(catalogue, "wrapper", Wrapper())
    add(catalogue, "plain", Plain())
    spec = tiny_spec(catalogue, {"wrapper": {}, "plain": {}})
    run = Run(spec=spec, catalogue=catalogue, device=torch.device("cpu"), dir=Path("."))
    run.hooks.run_finished(run=run, results=run.results)
    assert seen == ["before", "plain", ("after", {"plain": 1})]
    assert run.results == {"plain": 1, "wrapped": True}


def test_settings_arrive_as_a_typed_object(catalogue):
    @dataclass(frozen=True)
    class Settings:
        every: int = setting(5, "how often", min=1)
        mode: str = setting("fast", "how", choices=("fast", "slow"))
        rate: float = setting(0.5, "a number")
        names: list[str] = setting([], "some names")

    got = []

    class Typed:
        plugin = Plugin(settings=Settings)

        @hookimpl
        def configure(self, settings):
            got.append(settings)

    add(catalogue, "typed", Typed())
    spec = tiny_spec(catalogue, {"typed": {"every": 7, "rate": 1, "names": ["x"]}})
    catalogue.hooks(spec.enabled_plugins()).configure(spec=spec)
    assert got == [Settings(every=7, mode="fast", rate=1.0, names=["x"])]
    assert isinstance(got[0].rate, float)  # an integer in TOML widened, as the annotation says
    with pytest.raises(SpecError) as error:
        tiny_spec(catalogue, {"typed": {"every": 0}})
    assert error.value.key == "plugins.typed.every" and "below the minimum 1" in str(error.value)
    with pytest.raises(SpecError) as error:
        tiny_spec(catalogue, {"typed": {"mode": "medium"}})
    assert error.value.allowed == ["fast", "slow"]
    with pytest.raises(SpecError) as error:
        tiny_spec(catalogue, {"typed": {"evrey": 3}})
    assert "did you mean 'plugins.typed.every'" in str(error.value)
    with pytest.raises(SpecError, match="every element must be a string"):
        tiny_spec(catalogue, {"typed": {"names": [1]}})


@pytest.mark.parametrize("declaration, message", [
    ("SETTINGS = {'x': Setting(1)}", "sets SETTINGS; declare the plugin with one object instead"),
    ("plugin = Plugin(run_model='nope')", "run_model='nope' names no setting"),
    ("plugin = Plugin(settings={'enabled': Setting(1)})", "may not be called 'enabled'"),
    ("@dataclass\nclass S:\n    x: tuple = setting((1,))\nplugin = Plugin(settings=S)",
     "type <class 'tuple'> is not one a spec can hold"),
    ("@dataclass\nclass S:\n    x: int\nplugin = Plugin(settings=S)", "has no default"),
])
def test_a_bad_declaration_is_refused_when_the_plugin_loads(tmp_path, catalogue, declaration, message):
    (tmp_path / "bad.py").write_text("from dataclasses import dataclass\n"
                                     "from runner import Plugin, Setting, setting\n" + declaration + "\n")
    with pytest.raises(PluginError, match=message) as error:
        catalogue.add_file("bad", tmp_path / "bad.py")
    assert "plugin 'bad'" in str(error.value)


def spec_with(tmp_path, source: str) -> Path:
    (tmp_path / "mine.py").write_text(source)
    spec = tmp_path / "s.toml"
    spec.write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\n[plugins.mine]\npath = "mine.py"\n')
    return spec


@pytest.mark.parametrize("source, expected", [
    ("from runner import hookimpl\n\n@hookimpl\ndef attach(trainer:\n", "has a syntax error at {file}:4"),
    ("import numpy\nimport no_such_package_here\n",
     "imports 'no_such_package_here', which is not installed (at {file}:2); "
     "install it (pip install no_such_package_here)"),
    ("from runner import hookimpl\n\n@hookimpl\ndef atach(trainer):\n    pass\n", "unknown hook 'atach'"),
    ("from runner import hookimpl\n\n@hookimpl\ndef attach(trainer, engine):\n    pass\n",
     "argument 'engine' of hook 'attach' at {file}:3 is not one the hook passes (it passes: trainer, evaluator"),
    ("raise ValueError('no')\n", "failed to load at {file}:1: ValueError: no"),
])
def test_a_broken_plugin_file_is_named_with_its_line_and_exits_4(tmp_path, capsys, source, expected):
    spec = spec_with(tmp_path, source)
    assert main([str(spec), "--quick", "--out", str(tmp_path / "out")]) == PluginError.exit_code
    err = capsys.readouterr().err
    assert expected.format(file=tmp_path / "mine.py") in err, err
    assert "Traceback" not in err and err.count("\n") <= 2


def test_a_model_name_registered_twice_names_both_plugins(tmp_path, capsys):
    spec = spec_with(tmp_path, "from runner import hookimpl\n\n@hookimpl\ndef register_models(register):\n"
                               "    register('table1', lambda: None)\n")
    assert main([str(spec), "--quick"]) == PluginError.exit_code
    err = capsys.readouterr().err
    assert "model 'table1'" in err and "already registered by plugin 'models'" in err


def test_tracing_shows_every_hook_call(tmp_path, monkeypatch, capfd, catalogue):
    monkeypatch.setenv("RUNNER_TRACE_HOOKS", "1")
    seen = []
    add(catalogue, "traced", Calls(seen, "t"))
    spec = tiny_spec(catalogue, {"traced": {}})
    catalogue.hooks(spec.enabled_plugins()).run_finished(run=None, results={})
    assert "run_finished" in capfd.readouterr().err and seen == [("t", 1)]
