"""Overrides: the values a run was given beyond its spec file, each recorded once with its origin.

An `Override` is a dotted key, the value as TOML text and where it came from:
- "set": a --set, or runner.run(set={...}) in a notebook;
- "sweep": one value of a --set with several (`--set train.lr=0.01,0.05`);
- "search": a value an Optuna trial drew (runner SPEC --search);
- "quick": --quick's run settings and plugins' quick values;
- "seed" and "device": --seed/--seeds and --device.
Runs record them as entries in status.json and summary.json, so `runner ls`, `compare`, `show`
and the report read where each value came from instead of working it out again.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError

ORIGINS = ("set", "sweep", "search", "quick", "seed", "device")
# What a user chose (a table of their own in the report, a column in `runner ls`); the rest are
# how a run was made (quick, seed, device), shown in their own ways.
CHOSEN = ("set", "sweep", "search")

# --quick's run settings: a few iterations on a subset (a plugin may add its own quick values).
# All 12 steps warm the learning rate up: at the full rate after one step, a deep net without
# BatchNorm blows up, which says nothing of its full run (200 steps of warmup).
QUICK = ("train.iterations=12", "data.train_limit=1200", "data.test_limit=500", "train.log_every=4",
         "train.warmup=1.0")


@dataclass(frozen=True)
class Override:
    key: str  # dotted: "train.lr", "plugins.fgsm.max_steps"
    value: str  # TOML text: "0.05", '"cpu"', "[16, 32]"
    origin: str = "set"

    @property
    def text(self) -> str:
        """As --set takes it: key=value."""
        return f"{self.key}={self.value}"

    @property
    def where(self) -> str:
        """Who set it, as `runner show` and errors say: "--set train.lr=0.05", "--quick (...)"."""
        if self.origin in ("seed", "device"):
            return f"--{self.origin} {self.value.strip(chr(34))}"
        if self.origin in ("quick", "search"):
            return f"--{self.origin} ({self.text})"
        return f"--set {self.text}"

    @classmethod
    def parse(cls, text: str, origin: str = "set") -> "Override":
        """`key=value` text (a --set) as an Override; a text without `=` is refused, naming it."""
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {text!r} is not KEY.PATH=VALUE, e.g. --set train.lr=0.05", file=f"--set {text}")
        return cls(key.strip(), value.strip(), origin)

    def to_json(self) -> dict:
        return {"key": self.key, "value": self.value, "origin": self.origin}

    @classmethod
    def from_json(cls, entry) -> "Override":
        """An entry of status.json or summary.json. Runs recorded before origins were kept hold
        plain `key=value` texts: their origin is read from the key (seed, device) or --quick's
        own settings, else taken for a --set."""
        if isinstance(entry, dict):
            return cls(str(entry["key"]), str(entry["value"]), str(entry.get("origin", "set")))
        override = cls.parse(str(entry))
        if override.key in ("seed", "device"):
            return cls(override.key, override.value, override.key)
        return cls(override.key, override.value, "quick" if override.text in QUICK else "set")


def of(items, origin: str = "set") -> list[Override]:
    """Overrides from Overrides or `key=value` texts (those get `origin`)."""
    return [item if isinstance(item, Override) else Override.parse(item, origin) for item in items]


def read(entries) -> list[Override]:
    """A run file's recorded overrides (entries or old texts); what cannot be read is left out."""
    found = []
    for entry in entries or []:
        try:
            found.append(Override.from_json(entry))
        except (SpecError, KeyError, TypeError):
            continue
    return found


def chosen(overrides) -> list[str]:
    """The `key=value` texts a user chose (set, sweep, search), in order."""
    return [o.text for o in overrides if o.origin in CHOSEN]


def shown(overrides) -> list[str]:
    """A run's overrides as one listing column: "--quick" once for all of --quick's, the chosen
    texts, then "--device cuda" where one was given (the seed has a column of its own)."""
    quick = ["--quick"] if any(o.origin == "quick" for o in overrides) else []
    return quick + chosen(overrides) + [o.where for o in overrides if o.origin == "device"]
