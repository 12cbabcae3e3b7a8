"""The design the code keeps: no import cycles, and plugins built on the public runner API alone."""
import ast
from pathlib import Path

import runner

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path, package: str) -> list[str]:
    """Every module a file imports (relative imports resolved), at any depth of the file."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[:-node.level] if not path.name == "__init__.py" else \
                    module.split(".")[:len(module.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def modules() -> dict[str, Path]:
    found = {}
    for package in ("runner", "plugins"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
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
        for module in imports(path, "plugins"):
            if module.startswith("plugins"):
                assert module == "plugins", f"{path.name} imports another plugin: {module}"
            if module.startswith("runner"):
                top = ".".join(module.split(".")[:2])
                assert top in public, f"{path.name} imports {module}, which runner/__init__.py does not export"
