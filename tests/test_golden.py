"""The behaviour a refactor keeps: every spec's --quick run at seed 0 (CPU, one thread) gives the
same metrics.csv, byte for byte, and the same headline result as pinned in
tests/golden/quick_seed0.json.

A change meant to alter results (a new recipe, a fixed bug) updates the pins, on purpose:
RUNNER_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""
import hashlib
import json
import os
from pathlib import Path

import pytest

from runner import artifacts
from runner.results import headline

PINS = Path(__file__).with_name("golden") / "quick_seed0.json"
SPECS = Path(__file__).resolve().parents[1] / "specs"


def observed(runs: Path) -> dict:
    """spec -> its run's status, metrics.csv digest and headline result."""
    found = {}
    for spec in sorted(SPECS.glob("*.toml")):
        folders = sorted((runs / spec.stem).iterdir()) if (runs / spec.stem).is_dir() else []
        if not folders:
            found[spec.stem] = {"status": "not run"}
            continue
        run_dir = folders[-1]
        metrics = run_dir / "metrics.csv"
        figure = headline(artifacts.read_summary(run_dir))
        found[spec.stem] = {
            "status": artifacts.read_status(run_dir)["status"],
            "metrics_sha256": hashlib.sha256(metrics.read_bytes()).hexdigest() if metrics.is_file() else None,
            "result": [figure.name, figure.value] if figure else None,
        }
    return found


def test_every_specs_quick_run_is_as_pinned(quick_suite):
    runs, _ = quick_suite
    now = observed(runs)
    if os.environ.get("RUNNER_UPDATE_GOLDEN") == "1":
        PINS.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"pins written to {PINS}")
    pinned = json.loads(PINS.read_text())
    assert sorted(now) == sorted(pinned), "specs added or removed: update the pins (see this file's docstring)"
    differing = {name: (pinned[name], now[name]) for name in pinned if pinned[name] != now[name]}
    assert not differing, "changed since pinned (pinned, now):\n" + "\n".join(
        f"  {name}: {was} -> {is_now}" for name, (was, is_now) in differing.items())
