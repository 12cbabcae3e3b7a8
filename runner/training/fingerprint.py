"""What makes two runs the same experiment: the resolved spec and the code that ran it."""
from __future__ import annotations

import hashlib
from pathlib import Path


def code_version() -> str:
    """A hash of the runner's and built-in plugins' source: a run made by other code is not up to date."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for folder in ("runner", "plugins"):
        for path in sorted((root / folder).glob("*.py")):  # not report/: it reads runs, makes none
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(spec) -> str:
    return hashlib.sha256((spec.dumps() + code_version()).encode()).hexdigest()[:16]
