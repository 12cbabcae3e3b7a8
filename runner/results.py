"""A run's result in one figure: what `runner ls`, the end-of-suite table and progress lines show.

A trained spec's is its test accuracy. A plugin whose run produces something else (an attack's
fooled share) sets `results["headline"] = {"name": ..., "value": ..., "seconds": ...,
"per_second": ...}` in its run_finished hook, and that is shown instead.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Headline:
    name: str  # "test accuracy", "fooled", ...
    value: float | None  # a fraction
    seconds: float | None = None  # the work behind it (training, the attack)
    per_second: float | None = None  # images per second of that work

    def text(self) -> str:
        return f"{self.name} {self.value:.4f}" if self.value is not None else f"{self.name} -"


def headline(summary: dict) -> Headline | None:
    own = summary.get("headline")
    if isinstance(own, dict) and "name" in own:
        return Headline(own["name"], own.get("value"), own.get("seconds"), own.get("per_second"))
    if "test_accuracy" in summary:
        return Headline("test accuracy", summary["test_accuracy"], summary.get("seconds"),
                        summary.get("images_per_second"))
    return None
