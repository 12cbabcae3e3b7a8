"""What `pip install` puts in site-packages: the built-in plugins under the runner's own namespace
(runner.plugins), never as a top-level `plugins` package, a name other projects use too."""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from runner.plugin_host.catalogue import BUILTINS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    """The files of the wheel built from a clean copy of the sources (no stale build/ folder)."""
    # About 5 s: one pip process building a pure-Python wheel.
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("runner", "plugins"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    shutil.copy(ROOT / "setup.py", source)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(folder / "dist"), str(source)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    [wheel] = (folder / "dist").glob("cifar_runner-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_wheel_installs_the_plugins_as_runner_plugins(wheel_files):
    assert "runner/plugins/__init__.py" in wheel_files
    assert "runner/plugins/fgsm.py" in wheel_files
    tops = {name.split("/")[0] for name in wheel_files if not name.startswith("cifar_runner-")}
    assert tops == {"runner"}, f"the wheel installs top-level packages besides runner: {sorted(tops - {'runner'})}"


def test_every_built_in_plugin_is_in_the_wheel(wheel_files):
    missing = [module for module in BUILTINS.values() if module.replace(".", "/") + ".py" not in wheel_files]
    assert missing == []


def test_the_installed_runner_imports_the_built_ins_from_the_plugins_folder():
    # The editable install maps runner.plugins onto the repository's top-level plugins/ folder.
    found = importlib.util.find_spec("runner.plugins.fgsm")
    assert found is not None and Path(found.origin) == ROOT / "plugins" / "fgsm.py"


def test_sources_without_the_install_say_to_install(tmp_path):
    # The sources on sys.path alone (no site processing, so no editable install): runner/ imports,
    # runner.plugins does not exist.
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *site_packages])}
    listed = subprocess.run([sys.executable, "-S", "-m", "runner", "plugins"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode != 0
    assert "cannot be imported: install the runner with pip install -e ." in listed.stderr
