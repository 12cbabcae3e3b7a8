"""The design the code keeps: no import cycles, and plugins built on the public runner API alone."""
import ast
from pathlib import Path

import runner

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    """The name a file imports as: plugins/ installs as runner.plugins (setup.py's package_dir)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("runner", *parts) if parts[0] == "plugins" else parts)


def imports(path: Path, package: str) -> list[str]:
    """Every module a file imports (relative imports resolved), at any depth of the file."""
    module = module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[:-node.level]  # a package's name ends in .__init__ here
                base = ".".join(parent + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def modules() -> dict[str, Path]:
    found = {}
    for package in ("runner", "plugins"):
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path).removesuffix(".__init__")] = path
    return found


def test_no_import_cycles():
    known = modules()
    graph = {name: {m for m in imports(path, name) if m in known and m != name} for name, path in known.items()}
    # A package's __init__ may import its own modules; a module importing its package is no cycle.
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state: dict[str, str] = {}

    def visit(name, chain):
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join(chain + [name, dep])}"
            if dep not in state:
                visit(dep, chain + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_plugins_import_no_plugin_and_only_the_public_api():
    public = {f"runner.{name}" for name in runner.__all__} | {"runner"}
    for path in (ROOT / "plugins").glob("*.py"):
        for module in imports(path, "runner.plugins"):
            if module.startswith(("plugins", "runner.plugins")):
                assert module == "runner.plugins", f"{path.name} imports another plugin: {module}"
            elif module.startswith("runner"):
                top = ".".join(module.split(".")[:2])
                assert top in public, f"{path.name} imports {module}, which runner/__init__.py does not export"


# The floors of runner/, lowest first: a module imports only from its own floor or those below.
# `runner` itself (the public API, lazy) may be imported from anywhere.
LAYERS = [
    ("foundation", {"runner.errors", "runner.artifacts", "runner.results", "runner.progress", "runner.data"}),
    ("spec", {"runner.spec"}),
    ("plugin_host", {"runner.plugin_host"}),
    ("nets", {"runner.nets"}),
    ("training", {"runner.training"}),
    ("suite", {"runner.suite"}),
    ("report", {"runner.report"}),
    ("interfaces", {"runner.cli", "runner.api", "runner.scaffold", "runner.testing", "runner.visdom_server",
                    "runner.__main__"}),
    # The built-in plugins (plugins/, installed as runner.plugins): the catalogue loads them by name,
    # nothing imports them.
    ("plugins", {"runner.plugins"}),
]


def floor(module: str) -> int | None:
    for level, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def upward_imports(known: dict[str, Path]) -> list[str]:
    found = []
    for name, path in known.items():
        own = floor(name)
        if own is None:
            continue
        for module in imports(path, name):
            target = floor(module)
            if target is not None and target > own:
                found.append(f"{name} ({LAYERS[own][0]}) imports {module} ({LAYERS[target][0]})")
    return sorted(set(found))


def test_every_runner_module_sits_on_a_floor():
    unplaced = [name for name in modules() if name.startswith("runner.") and floor(name) is None]
    assert not unplaced, f"modules in no layer of tests/test_structure.py's LAYERS: {unplaced}"


def test_no_floor_imports_a_higher_one():
    assert upward_imports(modules()) == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    # A spec module that imported the suite would break the floors: the check must say so.
    fake = tmp_path / "runner" / "spec" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..suite.plan import Plan\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = upward_imports({"runner.spec.bad": fake})
    finally:
        ROOT = saved
    assert found and "runner.spec.bad (spec) imports runner.suite.plan (suite)" in found[0]


def test_the_code_version_covers_every_floor_and_the_built_in_plugins(monkeypatch):
    # A run is up to date only if made by the same code: an edit in any floor's module or in a
    # built-in plugin must change the version, an edit in the report (which makes no run) not.
    from pathlib import Path as P

    from runner.training import fingerprint

    seen = []
    real_read = P.read_bytes
    monkeypatch.setattr(P, "read_bytes", lambda self: seen.append(self) or real_read(self))
    fingerprint.code_version()
    hashed = {p.resolve().relative_to(ROOT).as_posix() for p in seen}
    for module in ("runner/training/flow.py", "runner/spec/loading.py", "runner/suite/plan.py",
                   "runner/nets/models.py", "runner/plugin_host/hooks.py", "runner/data.py", "plugins/fgsm.py"):
        assert module in hashed, module
    assert not any(p.startswith("runner/report/") for p in hashed)
