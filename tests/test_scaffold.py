"""`runner new plugin NAME` (the scaffold, its generated test passing as written) and `runner plugins NAME`."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import main
from runner.scaffold import HOMEWORK_SPEC, _relative_or_absolute

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_new_plugin_then_pytest_passes(tmp_path):
    """The issue's check, as a user types it: runner new plugin demo && pytest demo."""
    made = subprocess.run([sys.executable, "-m", "runner", "new", "plugin", "demo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["demo.py", "demo.toml", "test_demo.py"]
    assert all(text in made.stdout for text in ("wrote demo/demo.py", "cd demo", "runner demo.toml --quick"))
    tested = subprocess.run([sys.executable, "-m", "pytest", "demo", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-2000:]
    assert re.search(r"\b2 passed\b", tested.stdout) and "warning" not in tested.stdout.lower()


def test_the_new_spec_extends_a_homework_spec_and_enables_the_plugin(tmp_path, capsys):
    from runner.plugin_host.catalogue import Catalogue
    from runner.spec.loading import load

    folder = tmp_path / "nested" / "here"
    assert main(["new", "plugin", "weight_watch", "--dir", str(folder)]) == 0
    assert "wrote" in capsys.readouterr().out
    spec_text = (folder / "weight_watch.toml").read_text()
    assert f'extends = "{HOMEWORK_SPEC.as_posix()}"' in spec_text  # outside the repository: absolute
    spec = load(folder / "weight_watch.toml", Catalogue.default())
    assert spec.enabled_plugins()["weight_watch"]["every"] == 10
    assert spec.model["name"] == "table1" and spec.train["iterations"] == 2000
    # Inside the runner's own repository the path is relative, so a clone can move.
    assert _relative_or_absolute(HOMEWORK_SPEC, REPO_ROOT / "weight_watch") == "../specs/p1_q1_raw.toml"


def test_new_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "demo.py").write_text("# mine\n")
    assert main(["new", "plugin", "demo", "--dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "demo.py exists already" in error and "never overwrites" in error and "--dir" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.py"]
    assert (tmp_path / "demo.py").read_text() == "# mine\n"


@pytest.mark.parametrize("name, message", [
    ("my-plugin", "'my-plugin' is not a Python identifier: use letters, digits and underscores, not starting with "
                  "a digit (e.g. 'my_plugin')"),
    ("3d", "(e.g. 'plugin_3d')"),
    ("class", "'class' is not a Python identifier"),
    ("skip", "a plugin named 'skip' exists already"),
    ("json", "'json' is the name of an importable module"),
])
def test_new_rejects_a_bad_name(tmp_path, capsys, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    assert main(["new", "plugin", name]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_new_without_a_kind_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["new"])
    assert exited.value.code == 2 and "KIND" in capsys.readouterr().err


def test_plugins_name_prints_help_hooks_and_the_settings_table(capsys):
    assert main(["plugins", "fgsm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fgsm  (built-in)"
    assert lines[1].strip().startswith("iterative FGSM")
    assert "hooks: report_sections, run_finished" in lines
    columns = ["key", "type", "default", "--quick", "allowed", "help"]
    header = next(i for i, line in enumerate(lines) if line.split() == columns)
    rows = {line.split()[0]: line for line in lines[header + 1:] if line.startswith("  ")}
    assert re.match(r"\s+max_steps\s+int\s+200\s+20\s+>= 0\s+steps per image", rows["max_steps"])
    assert re.match(r"\s+confidence\s+float\s+0\.99\s+-\s+0\.0 to 1\.0\s+stop once", rows["confidence"])
    assert re.match(r'\s+source\s+str\s+"p1_q4_crop"\s+-\s+names specs \(their model\)', rows["source"])
    assert list(rows)[:3] == ["source", "eps", "max_steps"]  # declaration order


def test_plugins_name_shows_choices_lists_and_registered_models(capsys):
    assert main(["plugins", "grad_magnitude"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"layers\s+str\s+\"conv\"\s+-\s+\"conv\", \"all\"", out)
    assert main(["plugins", "models"]) == 0
    out = capsys.readouterr().out
    assert "model table1:" in out and "model allconv:" in out and "settings: none" in out


def test_plugins_name_loads_a_plugin_file(tmp_path, capsys):
    assert main(["new", "plugin", "demo", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["plugins", str(tmp_path / "demo.py")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("demo  (file ") and "the norm of the model's weights over training" in out
    assert "hooks: attach, report_sections, run_finished" in out
    assert re.search(r"every\s+int\s+10\s+2\s+>= 1\s+iterations between records", out)


def test_plugins_unknown_name_exits_2_with_the_closest(capsys):
    assert main(["plugins", "grad_magnitud"]) == 2
    assert "no plugin named 'grad_magnitud'; did you mean 'grad_magnitude'?" in capsys.readouterr().err


def test_plugins_listing_gives_each_plugins_help(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "grad_magnitude  (built-in): G = max |dL/dw| of each layer over iterations (P2 Q2)" in out
    assert "augment  (built-in)" in out


def test_completion_knows_new_plugin_and_its_options(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "_shtab_runner_new_subparsers=(plugin)" in script
    assert re.search(r"_shtab_runner_new_plugin_option_strings=\(.*--dir\)", script)
    assert "_shtab_runner_new_plugin___dir_COMPGEN=_shtab_compgen_dirs" in script  # --dir completes folders


def test_a_packaged_plugin_loads_from_its_entry_point(tmp_path, monkeypatch, run_spec, capsys):
    """The README's "package it": an entry point in the `runner.plugins` group names the module; a
    spec then enables the plugin by name alone. A dist-info folder on sys.path is what `pip install`
    leaves, so no install is needed here."""
    from runner.scaffold import new_plugin
    from runner.testing import MINIMAL_SPEC

    site = tmp_path / "site"
    new_plugin("wn_packaged", site)
    info = site / "wn_packaged-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wn-packaged\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[runner.plugins]\nwn_packaged = wn_packaged\n")
    monkeypatch.syspath_prepend(str(site))
    assert main(["plugins", "wn_packaged"]) == 0
    assert capsys.readouterr().out.startswith("wn_packaged  (entry point wn_packaged (wn-packaged))")
    (tmp_path / "minimal.toml").write_text(MINIMAL_SPEC)
    (tmp_path / "packaged.toml").write_text('extends = "minimal.toml"\n\n[plugins.wn_packaged]\nevery = 5\n')
    result = run_spec(tmp_path / "packaged.toml", iterations=20)
    assert result.summary["wn_packaged"]["records"] == 4
