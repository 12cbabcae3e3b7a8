"""The Python API, for notebooks and scripts: run one spec as `runner SPEC` does, list runs as
`runner ls` does, and read a run's results.

    import runner
    result = runner.run("specs/p1_q4_crop.toml", set={"train.lr": 0.01}, quick=True)
    result.test_accuracy, result.metrics["running_accuracy"], result.model()
    runner.runs("artifacts", spec="p1_q4_crop")

A run takes the command line's own path (suite.build plans it, executors.execute_job runs it), so
its folder, its numbers and resuming are the command line's; what goes wrong raises the runner's
own exceptions (SpecError, DataError, PluginError, DivergedError, ...). docs/notebook.md has a
worked example.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import artifacts
from .errors import RunnerError, SpecError
from .progress import duration
from .results import headline
from .spec.overrides import shown
from .suite.listing import RunInfo, find_runs, runs_table

STATUSES = ("complete", "running", "interrupted", "failed", "diverged", "pruned")


def run(spec: str | Path, *, set: dict[str, Any] | None = None, data: str | Path | None = None,
        out: str | Path = "artifacts", quick: bool = False, seed: int | None = None, device: str | None = None,
        progress: bool = True, resume: bool = False) -> "Result":
    """Train and evaluate one spec file, as `runner SPEC` with the same options would; the Result.

    set: {"train.lr": 0.01, "data.transforms": ["flip"]}, Python values for `--set` (one run: a
    sweep is a loop over calls). data, out, quick, seed, device: as --data, --out, --quick, --seed,
    --device. progress: a bar (in Jupyter a widget), else a line at every tenth. resume: continue the
    latest unfinished run of this spec and seed, as --resume does (a fresh run if there is none).
    """
    from .plugin_host.catalogue import Catalogue
    from .suite import plan as suite
    from .suite.executors import execute_job

    if Path(spec).is_dir():
        raise RunnerError(f"{spec} is a folder: runner.run runs one spec file (call it for each spec, or run "
                          f"the suite with `runner {spec}`)")
    suite.forget_loaded_specs()  # the last call's catalogue is gone: its cached specs would only hold memory
    catalogue = Catalogue.default()
    options = suite.RunOptions(out=str(out), data=None if data is None else str(data), quick=quick, resume=resume,
                               progress=progress)
    overrides = [f"{key}={_toml(key, value)}" for key, value in (set or {}).items()]
    plan, _ = suite.build([spec], catalogue, options=options, overrides=overrides,
                          seeds=None if seed is None else [seed], device=device)
    if len(plan.jobs) != 1:  # a value the sweep syntax splits: `--set` would make several runs
        raise SpecError(f"the settings make {len(plan.jobs)} runs ({', '.join(job.label for job in plan.jobs)}); "
                        f"runner.run makes one: loop over the values", file=spec)
    return Result(execute_job(plan.jobs[0], options, catalogue).dir)


def _toml(key: str, value) -> str:
    """A Python value as the TOML text `--set key=...` takes."""
    from .suite.listing import _toml as one_line_toml

    try:
        return one_line_toml(value)
    except TypeError:
        raise SpecError(f"{value!r} has no TOML form: give a number, string, bool, list or dict",
                        file="runner.run(set=...)", key=key) from None


class Result:
    """A run folder's results: summary (summary.json), metrics (metrics.csv as columns), the
    trained model (model(), loaded when asked), and the folder itself (dir)."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        if not (self.dir / artifacts.STATUS_FILE).is_file():
            raise RunnerError(f"{self.dir} is not a run folder (it has no {artifacts.STATUS_FILE}); "
                              f"runner.runs(OUT) lists the runs in OUT")
        self._summary: dict | None = None
        self._metrics: Metrics | None = None

    @property
    def status(self) -> str:
        return artifacts.read_status(self.dir)["status"]

    @property
    def summary(self) -> dict:
        """summary.json: test accuracy, seconds, overrides, ... (empty until the run completes)."""
        if self._summary is None:
            self._summary = artifacts.read_summary(self.dir)
        return self._summary

    @property
    def spec(self) -> str:
        return self.summary.get("spec", self.dir.parent.name)

    @property
    def seed(self) -> int | None:
        return self.summary.get("seed", artifacts.run_seed(self.dir))

    @property
    def test_accuracy(self) -> float | None:
        return self.summary.get("test_accuracy")

    @property
    def metrics(self) -> "Metrics":
        """metrics.csv: one row per training iteration (a stopped run's, as far as it got)."""
        if self._metrics is None:
            from .training.metrics import read_csv

            path = self.dir / "metrics.csv"
            if not path.is_file():
                raise RunnerError(f"{self.dir} has no metrics.csv (status: {self.status}; a run writes it when it "
                                  f"ends or stops)")
            try:
                self._metrics = Metrics(read_csv(path))
            except (ValueError, IndexError, UnicodeDecodeError) as exc:  # garbage, or cut short
                raise artifacts.Unreadable(path, f"is not a metrics table ({type(exc).__name__}: {exc})") from None
        return self._metrics

    def model(self, device: str = "cpu"):
        """The trained model in eval mode, its normalization in front: it takes pixel values 0-255
        (N x 3 x 32 x 32, float) and returns logits."""
        from .training.sources import load_trained

        if not (self.dir / "model.pt").is_file():
            raise RunnerError(f"{self.dir} has no model.pt (status: {self.status}): only a completed run has one")
        return load_trained(self.dir, device=device)[0]

    def __repr__(self) -> str:
        figure = headline(self.summary)
        parts = [f"{self.spec} seed {self.seed}", self.status]
        if figure:
            parts.append(figure.text())
        if self.summary.get("iterations") is not None:
            parts.append(f"{self.summary['iterations']} iterations in {duration(self.summary.get('seconds'))}")
        return f"<Result {', '.join(parts)}: {self.dir}>"


class Metrics:
    """metrics.csv as columns by name: metrics["running_accuracy"] is a list with one value per
    iteration (NaN where a plugin logged nothing that step), metrics["iteration"] the iterations
    (from 1); len() the rows; to_pandas() a DataFrame."""

    def __init__(self, columns: dict[str, list]):
        self._columns = dict(columns)
        if "iteration" in self._columns:
            self._columns["iteration"] = [int(i) for i in self._columns["iteration"]]

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __getitem__(self, name: str) -> list:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r} in metrics.csv (columns: {', '.join(self._columns)})") from None

    def __contains__(self, name) -> bool:
        return name in self._columns

    def __iter__(self):  # the column names, as a dict's keys
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns.get("iteration", []))

    def to_pandas(self):
        """The columns as a pandas DataFrame (pandas is not a dependency of runner: pip install pandas)."""
        import pandas

        return pandas.DataFrame(self._columns)

    def __repr__(self) -> str:
        return f"<Metrics {len(self)} iterations: {', '.join(self._columns)}>"


@dataclasses.dataclass
class RunRow(RunInfo):
    """One run as `runner ls` lists it: dir, spec, seed, status, result (its headline figure),
    overrides (runner.spec.overrides.Override: key, value, origin), started, wall (seconds), summary;
    load() reads it as a Result."""

    def load(self) -> Result:
        return Result(self.dir)


class Runs(list):
    """runner.runs()'s rows (RunRow), shown as `runner ls` prints them."""

    def __repr__(self) -> str:
        return runs_table(self) if self else "no runs"

    def to_pandas(self):
        import pandas

        return pandas.DataFrame([{"spec": row.spec, "seed": row.seed, "status": row.status, "result": row.result,
                                  "overrides": " ".join(shown(row.overrides)), "started": row.started, "wall": row.wall,
                                  "dir": str(row.dir)} for row in self])


def runs(out: str | Path = "artifacts", spec: str | Path | Sequence[str | Path] | None = None,
         status: str | Sequence[str] | None = None) -> Runs:
    """The runs in OUT, oldest first, as `runner ls OUT [--spec S] [--status S]` lists them.
    spec, status: a name (a spec's file works too) or a list of them."""
    specs = [spec] if isinstance(spec, (str, Path)) else spec
    statuses = [status] if isinstance(status, str) else status
    unknown = [s for s in statuses or () if s not in STATUSES]
    if unknown:
        raise RunnerError(f"status {unknown[0]!r}: not a run status (one of {', '.join(STATUSES)})")
    names = [Path(s).stem if str(s).endswith(".toml") else str(s) for s in specs] if specs else None
    return Runs(RunRow(**{f.name: getattr(info, f.name) for f in dataclasses.fields(RunInfo)})
                for info in find_runs(out, specs=names, statuses=statuses))
