import pytest

pytest_plugins = ["tests.fixtures_data"]


@pytest.fixture
def catalogue():
    """A fresh plugin catalogue (built-ins and entry points), so a test's registrations stay in it."""
    from runner.plugins import Catalogue

    return Catalogue.default()
