import pytest

pytest_plugins = ["tests.fixtures_data"]


@pytest.fixture
def catalogue():
    """A fresh plugin catalogue (built-ins and entry points), so a test's registrations stay in it."""
    from runner.plugins import Catalogue

    return Catalogue.default()


def pytest_configure(config):
    # torch 2.13 deprecates torch.jit, which ignite imports; not our code's warning.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit:DeprecationWarning")
