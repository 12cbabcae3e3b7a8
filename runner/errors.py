"""The project's own errors: each carries what the user needs to fix the problem and an exit code."""
from __future__ import annotations


class RunnerError(Exception):
    """Base of every error the command line reports without a traceback."""

    exit_code = 1
    details = None  # where more is written (a failed run's status.json, with the traceback)


class SpecError(RunnerError):
    """A spec file is malformed or names something that does not exist."""

    exit_code = 2

    def __init__(self, message: str, *, file=None, key: str | None = None, allowed=None, line=None, column=None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        self.allowed = list(allowed) if allowed is not None else None
        self.line, self.column = line, column
        where = self.file or "<spec>"
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        text = f"{where}: " + (f"{key}: " if key else "") + message
        if self.allowed:
            text += " (allowed: " + ", ".join(_as_toml(value) for value in self.allowed) + ")"
        super().__init__(text)

    def in_file(self, file) -> "SpecError":
        """The same error attributed to a spec file (for errors raised by plugins, which know no file)."""
        return SpecError(self.message, file=file, key=self.key, allowed=self.allowed, line=self.line,
                         column=self.column)


def _as_toml(value) -> str:
    """A value as a spec would spell it: true, not True."""
    return str(value).lower() if isinstance(value, bool) else str(value)


class DataError(RunnerError):
    """CIFAR-10 data is missing, corrupt or cannot be downloaded."""

    exit_code = 3


class PluginError(RunnerError):
    """A plugin failed; the message names the plugin and the hook."""

    exit_code = 4


class DivergedError(RunnerError):
    """Training produced a NaN or infinite loss."""

    exit_code = 5
