"""Testing plugins and specs without CIFAR-10: pytest fixtures, loaded in any project that installs runner.

Registered through pytest's own entry point (`pytest11`), so a plugin author's test needs no
conftest.py:

    def test_my_plugin(run_plugin):
        result = run_plugin("my_plugin.py", settings={"every": 5})
        assert result.summary["my_plugin"]["final"] > 0
        assert "my_plugin/value" in result.metrics

- `synthetic_cifar` (session): a folder holding a tiny CIFAR-10 in the official pickle layout
  (cifar-10-batches-py/data_batch_1, test_batch, batches.meta), 500 training and 200 test images
  whose classes a net learns to tell apart within a few iterations.
- `run_spec(spec=None, iterations=20, set={...}, quick=False)`: one run of a spec file (None: the
  harness's own minimal spec, a narrow Table 1 net) on that data, through the runner's own loading
  and run code (`runner.spec.loading.load`, `runner.training.flow.execute`); returns a `RunResult`.
- `run_plugin(path, extends=None, settings={...}, iterations=20, set={...})`: a spec that extends
  `extends` (None: the minimal spec) and enables the plugin file with `settings`, run as above.

Relative paths are looked up beside the test file first, then in the working directory. Turn the
fixtures off with `pytest -p no:runner_testing` (not "runner": pytest has a plugin of that name).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from .api import Result

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The harness's own spec: a narrow Table 1 net that trains in well under a second on the synthetic
# images, on the CPU whatever the machine has, so results repeat exactly.
MINIMAL_SPEC = """\
# runner.testing's minimal spec: a narrow Table 1 net on the synthetic data set.
device = "cpu"
seed = 0

[data]
train = ["data_batch_1"]
test = ["test_batch"]
transforms = ["normalize"]

[model]
name = "table1"
widths = [8, 16, 16]
hidden = 32

[train]
iterations = 20
batch_size = 50
lr = 0.05
log_every = 5

[eval]
batch_size = 200

[plugins.visdom]
enabled = false  # no live plots: a test needs no server
"""


def write_synthetic_cifar(folder, *, train: int = 500, test: int = 200, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 into folder/cifar-10-batches-py and return `folder` (what --data takes).

    Each class has its own faint coarse pattern (4x4 blocks of colour, +-10 around grey) under strong
    pixel noise (sd 60): the minimal spec's net gets about 28% of the test images right after 5
    iterations, 74% after 20 and 96% after 60, so a test can tell a run that learned from one that did not.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    templates = rng.uniform(118, 138, size=(10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)  # (10, 3, 32, 32)
    batches = {"data_batch_1": train, "test_batch": test}
    target = Path(folder) / "cifar-10-batches-py"
    target.mkdir(parents=True, exist_ok=True)
    for name, count in batches.items():
        labels = rng.integers(0, 10, size=count)
        images = templates[labels] + rng.normal(0, 60, size=(count, 3, 32, 32))
        batch = {b"batch_label": f"synthetic {name}".encode(), b"labels": labels.tolist(),
                 b"data": images.clip(0, 255).astype(np.uint8).reshape(count, 3072),
                 b"filenames": [f"synthetic_{name}_{i}.png".encode() for i in range(count)]}
        (target / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"num_cases_per_batch": train, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (target / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Path(folder)


class RunResult(Result):
    """A finished run, as `runner.run` returns it (`summary`, `metrics` by column, `dir`, `model()`
    loaded from model.pt), and `run`: the runner's own Run object, its model still on its device,
    `run.results` and `run.spec` (the resolved spec)."""

    def __init__(self, run):
        super().__init__(run.dir)
        self.run = run


def run_spec_file(spec, *, data, out, iterations: int | None = 20, set=None, quick: bool = False) -> RunResult:
    """Run one spec file on the data at `data` into `out`, as `runner SPEC --data DATA --out OUT` would.

    iterations: train.iterations (None: the spec's own; a spec that trains nothing keeps 0).
    set: {"train.lr": 0.01} or ["train.lr=0.01"], like --set. quick: --quick's overrides first."""
    from .plugin_host.catalogue import Catalogue
    from .spec.loading import load, read
    from .spec.overrides import Override
    from .suite import plan as suite
    from .training.flow import execute

    spec = Path(spec)
    catalogue = Catalogue.default()  # a fresh one: a plugin file edited since the last run loads anew
    overrides: list[Override | str] = [*suite.quick_overrides(spec, catalogue)] if quick else []
    if iterations is not None and read(spec)[0].get("train", {}).get("iterations") != 0:
        overrides.append(f"train.iterations={iterations}")
    overrides += _overrides(set)
    loaded = load(spec, catalogue, overrides)
    return RunResult(execute(loaded, catalogue, out=out, data=str(data), quick=quick, show_progress=False))


def write_plugin_spec(plugin, folder, *, extends=None, settings: dict | None = None) -> Path:
    """Write folder/<plugin's stem>.toml: extends `extends` (None: the minimal spec, written beside it)
    and enables the plugin file with `settings` in its [plugins.<stem>] table."""
    import tomli_w

    plugin, folder = Path(plugin).resolve(), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if extends is None:
        extends = folder / "runner_minimal.toml"
        extends.write_text(MINIMAL_SPEC)
    table = {"extends": str(Path(extends).resolve()),
             "plugins": {plugin.stem: {"path": str(plugin), **(settings or {})}}}
    path = folder / f"{plugin.stem}.toml"
    path.write_text(tomli_w.dumps(table))
    return path


def _overrides(given) -> list[str]:
    if not given:
        return []
    if isinstance(given, dict):
        from .api import _toml

        return [f"{key}={_toml(key, value)}" for key, value in given.items()]  # as runner.run(set=...) does
    return list(given)


def _find(path, test_file: Path) -> Path:
    """A path given to a fixture: absolute, else beside the test file, else in the working directory."""
    path = Path(path)
    for candidate in (path, test_file.parent / path, Path.cwd() / path):
        if candidate.exists():
            return candidate.resolve()
    raise FileNotFoundError(f"{path} not found beside {test_file.name} ({test_file.parent}) nor in the working "
                            f"directory ({Path.cwd()}); give a path relative to one of them, or an absolute one")


# ---- the fixtures -------------------------------------------------------------------------------

def pytest_configure(config):
    # torch 2.13 deprecates torch.jit, which ignite uses on import: not the plugin author's warning.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="session")
def synthetic_cifar(tmp_path_factory) -> Path:
    """A folder with a tiny synthetic CIFAR-10 (500 training, 200 test images) in the official layout."""
    return write_synthetic_cifar(tmp_path_factory.mktemp("synthetic_cifar"))


@pytest.fixture
def run_spec(synthetic_cifar, tmp_path, request):
    """run_spec(spec=None, *, iterations=20, set=None, quick=False) -> RunResult: one run of a spec
    file (None: the harness's minimal spec) on the synthetic data, its folder under tmp_path."""
    def run(spec=None, *, iterations: int | None = 20, set=None, quick: bool = False) -> RunResult:
        if spec is None:
            spec = tmp_path / "runner_minimal.toml"
            spec.write_text(MINIMAL_SPEC)
        return run_spec_file(_find(spec, request.path), data=synthetic_cifar, out=tmp_path / "runs",
                             iterations=iterations, set=set, quick=quick)

    return run


@pytest.fixture
def run_plugin(run_spec, tmp_path, request):
    """run_plugin(path, *, extends=None, settings=None, iterations=20, set=None, quick=False) -> RunResult:
    the plugin file enabled with `settings` in a spec extending `extends` (None: the minimal spec)."""
    def run(plugin, *, extends=None, settings: dict | None = None, iterations: int | None = 20, set=None,
            quick: bool = False) -> RunResult:
        base = _find(extends, request.path) if extends is not None else None
        spec = write_plugin_spec(_find(plugin, request.path), tmp_path / "specs", extends=base, settings=settings)
        return run_spec(spec, iterations=iterations, set=set, quick=quick)

    return run
