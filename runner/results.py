"""A run's result in one figure: what `runner ls`, the end-of-suite table and progress lines show.

A trained spec's is its test accuracy. A plugin whose run produces something else (an attack's
fooled share) sets `results["headline"] = {"name": ..., "value": ..., "seconds": ...,
"per_second": ...}` in its run_finished hook, and that is shown instead; with `"percent": False`
when the value is not a fraction (a correlation), so that reports do not show it as a percent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Headline:
    name: str  # "test accuracy", "fooled", ...
    value: float | None  # a fraction
    seconds: float | None = None  # the work behind it (training, the attack)
    per_second: float | None = None  # images per second of that work
    percent: bool = True  # the value is a fraction, shown as a percent in reports

    def text(self) -> str:
        return f"{self.name} {self.value:.4f}" if self.value is not None else f"{self.name} -"

    def value_text(self, value: float | None = None) -> str:
        """`value` (by default the headline's own) as reports show it: "66.1%" for a fraction,
        "0.452" otherwise, a dash for none."""
        value = self.value if value is None else value
        return percent(value) if self.percent else number_text(value, ".3f")


def headline(summary: dict) -> Headline | None:
    own = summary.get("headline")
    if isinstance(own, dict) and "name" in own:
        return Headline(own["name"], own.get("value"), own.get("seconds"), own.get("per_second"),
                        bool(own.get("percent", True)))
    if "test_accuracy" in summary:
        return Headline("test accuracy", summary["test_accuracy"], summary.get("seconds"),
                        summary.get("images_per_second"))
    return None


def finite(value, digits: int | None = None) -> float | None:
    """A number summary.json can hold: None for inf and NaN (JSON has neither: an unchanged
    image's PSNR, a correlation of a constant map), else the value, rounded to `digits` if given."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


DASH = "–"  # what tables show for a number a run did not record


def number_text(value, form: str = "") -> str:
    """`value` formatted by `form` ("66.1%" for ".1%"), or a dash where there is none."""
    return DASH if value is None else format(value, form)


def percent(value, places: int = 1) -> str:
    """A fraction as a percent with `places` decimals, or a dash where there is none."""
    return number_text(value, f".{places}%")
