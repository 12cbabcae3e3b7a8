"""What makes two runs the same experiment: the resolved spec and the code that ran it."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """A hash of the runner's and built-in plugins' source, each file by its place in the tree: a
    run made by other code is not up to date. The report's modules are left out: they read runs
    and make none."""
    digest = hashlib.sha256()
    plugins = importlib.util.find_spec("runner.plugins")
    assert plugins is not None, "runner/__init__.py's alias finder maps runner.plugins to plugins/"
    folders = [("runner", RUNNER)] + [("plugins", Path(p)) for p in (plugins.submodule_search_locations or [])]
    for label, folder in folders:
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder)
            if label == "runner" and relative.parts[0] in ("report", "plugins"):
                continue
            digest.update(f"{label}/{relative.as_posix()}".encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(spec) -> str:
    return hashlib.sha256((spec.dumps() + code_version()).encode()).hexdigest()[:16]
