"""What spec loading asks of the plugin catalogue: the models, transforms and plugin settings a spec
is checked against. The catalogue (runner/plugin_host/catalogue.py) sits a floor above spec/, so
loading names its type through this Protocol instead of importing it."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .schema import Setting


class SpecCatalogue(Protocol):
    @property
    def models(self) -> Mapping[str, Any]:
        """{name: entry with .settings ({key: Setting})} of every registered model."""
        ...

    @property
    def transforms(self) -> Mapping[str, Any]:
        """The same for batch transforms."""
        ...

    def default_enabled(self) -> set[str]: ...

    def add_spec_files(self, spec_file: Path, table: dict[str, Any]) -> None: ...

    def table_schema(self, name: str) -> dict[str, Setting]: ...

    def reads(self, plugins: dict[str, dict[str, Any]]) -> dict[str, str]: ...

    def model_source(self, plugins: dict[str, dict[str, Any]]) -> tuple[str, str] | None: ...

    def hooks(self, tables: Mapping[str, dict | None], **injected: dict[str, Any]) -> Any: ...
