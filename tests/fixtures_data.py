"""Shared CIFAR-10 test data: finds the offline copy of the archive and extracts it once per session.

Loaded as a pytest plugin (conftest.py: pytest_plugins = ["tests.fixtures_data"]).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_NAME = "cifar-10-python.tar.xz"


def find_shared_archive() -> Path | None:
    """The offline CIFAR-10 archive: $RUNNER_CIFAR_ARCHIVE, then ../shared/cifar10/, then shared/cifar10/."""
    env = os.environ.get("RUNNER_CIFAR_ARCHIVE")
    candidates = [Path(env).expanduser()] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "cifar10" / ARCHIVE_NAME,
                   REPO_ROOT / "shared" / "cifar10" / ARCHIVE_NAME]
    return next((p for p in candidates if p.is_file()), None)


def require_shared_archive() -> Path:
    """The archive, or skip the test; on CI (CI=true) a missing archive is a failure, since CI must run it."""
    archive = find_shared_archive()
    if archive is None:
        msg = ("CIFAR-10 archive not found: set RUNNER_CIFAR_ARCHIVE or put it at ../shared/cifar10/"
               f"{ARCHIVE_NAME} or shared/cifar10/{ARCHIVE_NAME} (relative to the repository root)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return archive


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    return require_shared_archive()


@pytest.fixture(scope="session")
def cifar_dir(cifar_archive, tmp_path_factory) -> Path:
    """A folder holding the extracted cifar-10-batches-py files (data_batch_1, test_batch, batches.meta)."""
    from runner.data import locate

    return locate(cifar_archive, cache_dir=tmp_path_factory.mktemp("cifar"), progress=False)


@pytest.fixture(scope="session")
def quick_suite(tmp_path_factory, cifar_archive) -> tuple[Path, int]:
    """Every spec of specs/ run --quick at seed 0, two at a time, one thread each (conftest sets
    OMP_NUM_THREADS): the runs folder and the command's exit code. Shared by the report's tests and
    the golden test, so the suite runs once per session."""
    from runner.cli import main

    out = tmp_path_factory.mktemp("quick-suite")
    code = main([str(REPO_ROOT / "specs"), "--quick", "--jobs", "2", "--data", str(cifar_archive), "--out", str(out),
                 "--no-progress"])
    return out, code
