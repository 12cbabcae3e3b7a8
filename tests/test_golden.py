"""The behaviour a refactor keeps: every spec's --quick run at seed 0 (CPU, one thread) gives the
same metrics.csv, byte for byte, and the same headline result as pinned in
tests/golden/quick_seed0.json.

Bytes hold only among CPUs whose kernels round alike (oneDNN picks its kernels and their order of
summation by CPU), so the file holds one set of pins per kernel signature (a digest of one small
training step's gradients). A run matching any set passes. A CPU of a pinned signature must match
exactly; on a CPU of another signature only the headline results are compared, within a quick
run's seed-to-seed noise, and a warning says how to pin it.

A change meant to alter results (a new recipe, a fixed bug) replaces every set with this CPU's:
    RUNNER_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
Results unchanged, a CPU that rounds differently: add its set beside the others:
    RUNNER_UPDATE_GOLDEN=add python -m pytest tests/test_golden.py
"""
import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from runner import artifacts
from runner.results import headline

PINS = Path(__file__).with_name("golden") / "quick_seed0.json"
SPECS = Path(__file__).resolve().parents[1] / "specs"
# Pins made before signatures were taken: compared exactly, matched by content only.
UNSIGNED = "unsigned"
# Quick runs (tens of steps) move by a few points between seeds; a broken spec moves by far more.
NOISE = 0.05


def observed(runs: Path) -> dict:
    """spec -> its run's status, metrics.csv digest and headline result."""
    found = {}
    from runner.suite.plan import expand_specs

    for spec in expand_specs([SPECS]):
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


def kernel_signature() -> str:
    """How this CPU's kernels round: a digest of the gradients of one training step of a Table 1
    style net (5x5 convolutions from 3 channels, BatchNorm, pooling; channels_last, one thread)
    on fixed data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = nn.Sequential(
                nn.Conv2d(3, 32, 5, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
                nn.Conv2d(32, 32, 5, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
                nn.Conv2d(32, 64, 5, padding=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.AvgPool2d(2),
                nn.Flatten(), nn.Linear(1024, 10)).to(memory_format=torch.channels_last)
            images = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            labels = torch.randint(0, 10, (16,))
        F.cross_entropy(net(images), labels).backward()
        digest = hashlib.sha256()
        for parameter in net.parameters():
            digest.update(parameter.grad.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
    finally:
        torch.set_num_threads(threads)


def _differences(pinned: dict, now: dict) -> dict:
    return {name: (pinned[name], now[name]) for name in pinned if pinned[name] != now[name]}


def _report(differing: dict) -> str:
    return "\n".join(f"  {name}: {was} -> {is_now}" for name, (was, is_now) in differing.items())


def test_every_specs_quick_run_is_as_pinned(quick_suite):
    runs, _ = quick_suite
    now, signature = observed(runs), kernel_signature()
    update = os.environ.get("RUNNER_UPDATE_GOLDEN")
    if update in ("1", "add"):
        sets = json.loads(PINS.read_text()) if update == "add" and PINS.is_file() else {}
        sets[signature] = now
        PINS.write_text(json.dumps(sets, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"pins for kernels {signature} written to {PINS}")
    sets = json.loads(PINS.read_text())
    if any(pinned == now for pinned in sets.values()):
        return
    if signature in sets:
        assert sorted(now) == sorted(sets[signature]), \
            "specs added or removed: update the pins (see this file's docstring)"
        raise AssertionError(f"changed since pinned for kernels {signature} (pinned, now):\n"
                             + _report(_differences(sets[signature], now)))
    # A CPU no set was made on: the runs must still complete with about the pinned results (of the
    # set with the most specs: a set pinned before a spec was added does not hold it).
    reference = max(sets.values(), key=len)
    removed = sorted(set(reference) - set(now))
    assert not removed, f"specs removed: {removed}; update the pins (see this file's docstring)"
    off = {name: (reference[name], now[name]) for name in reference
           if reference[name]["status"] != now[name]["status"]
           or not _close(reference[name]["result"], now[name]["result"])}
    assert not off, (f"kernels {signature} (no pins): results off by more than {NOISE} (pinned, now):\n"
                     + _report(off))
    warnings.warn(f"no golden pins for this CPU's kernels ({signature}): results compared within {NOISE} only; "
                  f"pin them with RUNNER_UPDATE_GOLDEN=add python -m pytest tests/test_golden.py", stacklevel=1)


def _close(pinned, now) -> bool:
    if None in (pinned, now) or None in (pinned[1], now[1]):
        return pinned == now
    return pinned[0] == now[0] and abs(pinned[1] - now[1]) <= NOISE


def test_the_kernel_signature_is_the_same_every_time_whatever_the_global_seed():
    threads = torch.get_num_threads()
    signature = kernel_signature()
    assert len(signature) == 16 and kernel_signature() == signature
    with torch.random.fork_rng():
        torch.manual_seed(1)
        assert kernel_signature() == signature  # its net and data are drawn from a seed of its own
    assert torch.get_num_threads() == threads
