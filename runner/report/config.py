"""What a report says of itself: its title, course and assignment, the author and collaborators
(the title page), its conclusion (a template, filled like the answers) and its references. They
come from a `report.toml` beside the runs' spec files (its `[report]` table), and the command
line's --author and --collaborators override it:

    [report]
    title = "CIFAR-10 and vanishing gradients"
    course = "CIS680: Vision & Learning"
    assignment = "Assignment 2"
    author = "Ada Lovelace"
    collaborators = ["Charles Babbage"]
    conclusion = "... {p1_q4_crop.accuracy} ..."
    references = ["I. J. Goodfellow, J. Shlens, C. Szegedy. Explaining and harnessing adversarial examples. 2014."]
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import SpecError
from ..spec.loading import REPORT_CONFIG as FILE


@dataclass
class ReportConfig:
    title: str = "Experiment report"
    course: str = ""
    assignment: str = ""
    author: str = ""
    collaborators: list[str] = field(default_factory=list)
    conclusion: str = ""
    references: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "ReportConfig":
        """The `[report]` table of a file; unknown keys and wrong types are refused, naming them."""
        try:
            table = tomllib.loads(path.read_text()).get("report", {})
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"not valid TOML: {exc}", file=path) from None
        known = {f.name: f for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                raise SpecError("unknown key", file=path, key=f"report.{key}", allowed=sorted(known))
            wanted = list if key in ("collaborators", "references") else str
            if not isinstance(value, wanted) or (wanted is list and not all(isinstance(v, str) for v in value)):
                raise SpecError(f"expected {'a list of strings' if wanted is list else 'a string'}, got {value!r}",
                                file=path, key=f"report.{key}")
        return cls(**table)

    @classmethod
    def find(cls, folders) -> "ReportConfig":
        """The first report.toml in the folders (the runs' spec folders), else the defaults."""
        for folder in folders:
            if (Path(folder) / FILE).is_file():
                return cls.load(Path(folder) / FILE)
        return cls()
