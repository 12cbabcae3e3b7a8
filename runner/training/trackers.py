"""What the tracker plugins (tensorboard, mlflow) share: a tracker records a run for another tool,
so it must never fail or stop the run; its errors become one warning each run.

- `Guard(run, tool, hint)`: `warn(what, exc)` prints that warning once and turns the tracker off;
  `handler(inner)` wraps an Ignite log handler so its first error does the same.
- `record_the_end(state, finish)`: the tracker's end-of-run record, under its guard.
- `flat(spec_values)`: the resolved spec as flat hyperparameters ({"train.lr": 0.05, ...}).
- `log_points(run, every)`: the event of iteration 1, every `every`-th and the last.
- `latest_row(run, trainer, rename)`: an output_transform giving the metrics.csv row of the
  trainer's iteration, recorded values only.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Callable


class Guard:
    """One warning, then silence: a tracker's error never reaches the run."""

    def __init__(self, run, tool: str, hint: Callable[[Exception | str], str]):
        self.label, self.tool, self.hint, self.off = run.spec.name, tool, hint, False

    def warn(self, what: str, exc: Exception | str) -> None:
        self.off = True
        problem = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        print(f"[{self.label}] {self.tool}: warning: {what}: {problem}; {self.hint(exc)}. "
              f"The run goes on without {self.tool}.", file=sys.stderr, flush=True)

    def handler(self, inner):
        """An ignite log handler that stops logging, with a warning, at its first error."""
        def log(engine, logger, event_name):
            if self.off:
                return
            try:
                inner(engine, logger, event_name)
            except Exception as exc:
                self.warn("logging stopped", exc)

        return log


def record_the_end(state, finish: Callable[[], None]) -> None:
    """Call `finish` (what a tracker records once the run's results are complete) unless the
    tracker is off; its failure is the guard's one warning."""
    guard = getattr(state, "guard", None)
    if guard is not None and not guard.off:
        try:
            finish()
        except Exception as exc:
            guard.warn("the end of the run was not recorded", exc)


def flat(values: dict, prefix: str = "") -> dict:
    """The resolved spec as flat hyperparameters: {"train.lr": 0.05, "model.widths": "[32, 32, 64]"}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def log_points(run, every: int):
    """Iteration 1, every `every`-th (the spec's train.log_every when 0) and the last."""
    from ignite.engine import Events

    every, last = every or run.spec.train.log_every, run.spec.train.iterations
    return Events.ITERATION_COMPLETED(event_filter=lambda engine, i: i == 1 or i % every == 0 or i == last)


def latest_row(run, trainer, rename: Callable[[str], str] = lambda name: name):
    """An output_transform giving the metrics.csv row of the trainer's iteration (recorded values
    only), each column named as `rename` says (a tracker's rules for metric names)."""
    def transform(output) -> dict:
        return {rename(name): value for name, value in run.metrics.row(trainer.state.iteration).items()
                if math.isfinite(value)}

    return transform
