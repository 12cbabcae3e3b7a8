import os

import pytest
import torch

# Tests use tiny tensors: one thread avoids oversubscribing small CI machines, also for the
# runner subprocesses some tests start (they inherit the variable).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

pytest_plugins = ["tests.fixtures_data"]


@pytest.fixture
def catalogue():
    """A fresh plugin catalogue (built-ins and entry points), so a test's registrations stay in it."""
    from runner.plugin_host.catalogue import Catalogue

    return Catalogue.default()


def pytest_configure(config):
    # torch 2.13 deprecates torch.jit, which ignite imports; not our code's warning.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit:DeprecationWarning")
