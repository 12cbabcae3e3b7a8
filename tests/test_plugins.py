"""Plugin discovery (built-ins, registered objects, files, entry points), hook order and failures."""
import inspect
import json
import re
import types
from pathlib import Path

import pytest
import torch

from runner import Plugin, PluginError, Setting, SpecError, hookimpl
from runner.cli import main
from runner.plugin_host.catalogue import Catalogue
from runner.spec.loading import load, validate
from runner.training.builders import build_model
from runner.training.metrics import read_csv
from runner.training.state import Run

README = Path(__file__).resolve().parents[1] / "README.md"
SPECS = Path(__file__).resolve().parents[1] / "specs"


class Recorder:
    """A plugin object registered by a test: records the hooks it sees."""

    plugin = Plugin(settings={"tag": Setting("x", "a label")})

    def __init__(self):
        self.calls = []

    @hookimpl
    def configure(self, spec, settings):
        self.calls.append(("configure", settings.tag))

    @hookimpl
    def change_model(self, model, settings):
        self.calls.append(("change_model", settings.tag))
        return torch.nn.Sequential(model)

    @hookimpl
    def register_models(self, register):
        register("tiny", lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)))


@pytest.fixture
def recorder(catalogue):
    plugin = Recorder()
    catalogue.add("recorder", plugin, "test fixture")
    yield plugin
    catalogue.pm.unregister(plugin)


def test_builtins_are_listed_with_their_hooks(catalogue, capsys):
    assert catalogue.origins["augment"] == "built-in"
    assert "register_transforms" in catalogue.hooks_of("augment")
    assert {"table1", "allconv"} <= set(catalogue.models)
    assert {"normalize", "flip", "pad_crop"} <= set(catalogue.transforms)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "augment  (built-in)" in out and "transform pad_crop" in out and "model table1" in out


def test_registered_object_adds_a_model_and_runs_in_spec_order(catalogue, recorder):
    assert catalogue.models["tiny"].plugin == "recorder"
    spec = validate("t.toml", {"model": {"name": "tiny"}, "plugins": {"recorder": {"tag": "a"}}}, catalogue)
    run = Run(spec=spec, catalogue=catalogue, device=torch.device("cpu"), dir=Path("."))
    run.hooks.configure(spec=spec)
    model = build_model(spec, catalogue, run)
    assert recorder.calls == [("configure", "a"), ("change_model", "a")]
    assert isinstance(model[0], torch.nn.Sequential)  # change_model's return replaced the model


def test_disabled_plugin_is_not_called(catalogue, recorder):
    spec = validate("t.toml", {"model": {"name": "tiny"}, "plugins": {"recorder": {"enabled": False}}}, catalogue)
    build_model(spec, catalogue)
    assert recorder.calls == []


def test_plugin_settings_are_validated(catalogue, recorder):
    with pytest.raises(SpecError) as info:
        validate("t.toml", {"model": {"name": "tiny"}, "plugins": {"recorder": {"tga": "a"}}}, catalogue)
    assert info.value.key == "plugins.recorder.tga" and "tag" in info.value.allowed


def test_a_raising_plugin_is_named_with_its_hook(catalogue):
    class Broken:
        @hookimpl
        def change_model(self, model):
            raise ValueError("boom")

    catalogue.add("broken", Broken(), "test")
    spec = validate("t.toml", {"model": {"name": "table1"}, "plugins": {"broken": {}}}, catalogue)
    # Where its author looks first: the line in the plugin's own file.
    line = inspect.getsourcelines(Broken.change_model)[1] + 2
    with pytest.raises(PluginError, match=rf"plugin 'broken' failed in hook 'change_model' at "
                                          rf"tests/test_plugins.py:{line}: ValueError: boom"):
        build_model(spec, catalogue)


def test_a_plugin_with_a_misspelled_hook_is_refused(catalogue):
    class Misspelled:
        @hookimpl
        def atach(self, trainer):
            pass

    with pytest.raises(PluginError, match="misspelled"):
        catalogue.add("misspelled", Misspelled(), "test")


def test_two_plugins_registering_one_model_name(catalogue):
    class Clash:
        @hookimpl
        def register_models(self, register):
            register("table1", lambda: None)

    with pytest.raises(PluginError, match="already registered by plugin 'models'"):
        catalogue.add("clash", Clash(), "test")


def test_entry_point_plugins_are_loaded(monkeypatch):
    module = types.ModuleType("fake_ep_plugin")
    module.register_models = hookimpl(lambda register: register("ep_model", lambda: torch.nn.Identity()))

    class FakeEntryPoint:
        name, value, dist = "fake", "fake_ep_plugin", types.SimpleNamespace(name="fake-dist")

        def load(self):
            return module

    monkeypatch.setattr("runner.plugin_host.catalogue._entry_points", lambda: [FakeEntryPoint()])
    catalogue = Catalogue.default()
    assert catalogue.origins["fake"].startswith("entry point fake_ep_plugin (fake-dist)")
    assert catalogue.models["ep_model"].plugin == "fake"


def test_plugin_from_a_py_file_next_to_the_spec(tmp_path, catalogue):
    (tmp_path / "mine.py").write_text(
        "from runner import hookimpl, Plugin, Setting\nplugin = Plugin(settings={'scale': Setting(2.0)})\n"
        "@hookimpl\ndef change_model(model, settings):\n    model.scale_seen = settings.scale\n")
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\n[plugins.mine]\npath = "mine.py"\nscale = 3.0\n')
    spec = load(spec_path, catalogue)
    assert catalogue.origins["mine"] == f"file {(tmp_path / 'mine.py').resolve()}"
    assert build_model(spec, catalogue).scale_seen == 3.0


def test_a_plugin_error_about_a_setting_names_who_set_it(tmp_path, catalogue):
    (tmp_path / "picky.py").write_text(
        "from runner import hookimpl, Plugin, Setting, SpecError\nplugin = Plugin(settings={'scale': Setting(2.0)})\n"
        "@hookimpl\ndef change_model(model, settings):\n"
        "    if settings.scale > 5:\n        raise SpecError('too large for this model', key='plugins.picky.scale')\n")
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\n[plugins.picky]\npath = "picky.py"\nscale = 9.0\n')
    with pytest.raises(SpecError) as err:
        build_model(load(spec_path, catalogue), catalogue)
    assert err.value.file == str(spec_path.resolve()) and err.value.key == "plugins.picky.scale"
    with pytest.raises(SpecError) as err:
        build_model(load(spec_path, catalogue, ["plugins.picky.scale=7.0"]), catalogue)
    assert err.value.file == "--set plugins.picky.scale=7.0"  # the option, not the file it overrode


def test_missing_plugin_file(tmp_path, catalogue):
    spec_path = tmp_path / "s.toml"
    spec_path.write_text('[model]\nname = "table1"\n[plugins.mine]\npath = "absent.py"\n')
    with pytest.raises(SpecError, match="absent.py"):
        load(spec_path, catalogue)


def readme_plugin() -> str:
    text = README.read_text()
    section = text.split("## Writing a plugin", 1)[1]
    return re.search(r"```python\n(# weight_norms.py.*?)```", section, re.S)[1]


def test_the_readme_plugin_runs_end_to_end(tmp_path, cifar_archive):
    (tmp_path / "weight_norms.py").write_text(readme_plugin())
    spec_path = tmp_path / "with_norms.toml"
    spec_path.write_text(f'extends = "{SPECS / "p1_q4_crop.toml"}"\n[plugins.weight_norms]\n'
                         'path = "weight_norms.py"\nevery = 5\n')  # 12 quick iterations: the last is no record
    out = tmp_path / "out"
    assert main([str(spec_path), "--quick", "--data", str(cifar_archive), "--out", str(out)]) == 0
    run_dir = next((out / "with_norms").iterdir())
    metrics = read_csv(run_dir / "metrics.csv")
    norms = [c for c in metrics if c.startswith("weight_norm/")]
    assert len(norms) == 9  # every module with a weight: 3 convs, 4 batchnorms, 2 linears
    recorded = [i for i, v in zip(metrics["iteration"], metrics[norms[0]]) if v == v]
    assert recorded == [5.0, 10.0]
    assert (run_dir / "weight_norms.png").stat().st_size > 1000
    # The last value recorded, not the NaN of iteration 12 (json.dumps would write NaN: not JSON).
    final = json.loads((run_dir / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    # The csv keeps 6 digits.
    assert final["weight_norms_final"][norms[0]] == pytest.approx(metrics[norms[0]][9], rel=1e-4)


def test_runs_that_crash_fail_alone_in_a_suite(tmp_path, cifar_archive, capsys):
    # A handler's error is the plugin's (PluginError, named readably); an error in the training
    # step itself reaches the runner as a plain RuntimeError, which once stopped the whole suite
    # with a traceback while --jobs went on.
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "crash.py").write_text(
        "import torch\nfrom ignite.engine import Events\nfrom runner import Plugin, Setting, hookimpl\n"
        "plugin = Plugin(settings={'where': Setting('handler', choices=('handler', 'forward'))})\n"
        "class Broken(torch.nn.Linear):\n"
        "    def forward(self, x):\n        raise RuntimeError('boom in forward')\n"
        "@hookimpl\ndef change_model(model, settings):\n"
        "    return Broken(1, 1) if settings.where == 'forward' else None\n"
        "@hookimpl\ndef attach(trainer):\n"
        "    @trainer.on(Events.ITERATION_COMPLETED(once=2))\n"
        "    def explode(engine):\n        raise RuntimeError('boom at iteration 2')\n")
    raw = SPECS / "p1_q1_raw.toml"
    (suite / "a_handler.toml").write_text(f'extends = "{raw}"\n[plugins.crash]\npath = "crash.py"\n')
    (suite / "b_forward.toml").write_text(f'extends = "{raw}"\n[plugins.crash]\npath = "crash.py"\nwhere = "forward"\n')
    (suite / "c_runs.toml").write_text(f'extends = "{raw}"\n')
    assert main([str(suite), "--quick", "--set", "train.iterations=4", "--data", str(cifar_archive),
                 "--out", str(tmp_path / "out")]) == PluginError.exit_code  # the first failure's
    err = capsys.readouterr().err
    # Once (Ignite's logger once added two copies), with the line in the plugin's file and where
    # the whole traceback is.
    handler_error = (f"plugin 'crash' failed in its ITERATION_COMPLETED handler explode() at {suite / 'crash.py'}:15: "
                     "RuntimeError: boom at iteration 2 (full traceback: ")
    assert err.count("boom at iteration 2") == 1 and "[a_handler] seed 0 failed after" in err
    assert handler_error in err and "a_handler" in err.split(handler_error)[1].split(")")[0]
    assert "[b_forward] seed 0 failed after" in err and "RuntimeError: boom in forward (full traceback: " in err
    assert "Engine run is terminating" not in err
    assert "2 of 3 runs did not complete: a_handler, b_forward" in err
    assert (next((tmp_path / "out" / "c_runs").iterdir()) / "summary.json").is_file()
    (crashed,) = (tmp_path / "out" / "b_forward").iterdir()
    assert "boom in forward" in (crashed / "status.json").read_text()  # with its traceback


def test_a_hook_argument_with_a_default_is_still_given(catalogue):
    class WithDefault:
        @hookimpl
        def show_images(self, run, window, images, caption="(none)"):
            return caption

    catalogue.add("with_default", WithDefault(), "test")
    hooks = catalogue.hooks({"with_default": None})
    assert hooks.show_images(run=None, window="w", images=[], caption="given") == ["given"]
