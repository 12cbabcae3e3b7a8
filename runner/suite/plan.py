"""What a command line asks to run: the jobs, their dependency order, and which are up to date.

Planning only; runner/suite/executors.py runs a Plan. A Job is one run of one spec (a seed, a sweep
point) described by plain values, so it travels to a worker process or a cluster and is loaded
there exactly as here (executors.run_job), and its Outcome travels back.
"""
from __future__ import annotations

import itertools
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from .. import artifacts
from ..errors import RunnerError, SpecError
from ..spec.overrides import QUICK, Override, of


@dataclass(frozen=True)
class Job:
    """One run to do: a spec file and the overrides it is loaded with (seed, --quick's, --set)."""

    path: str
    overrides: tuple[Override, ...]
    name: str
    seed: int
    requires: frozenset = frozenset()  # names of the specs it needs (their models, their attacks)
    sweep: tuple[str, ...] = ()  # the --set values that make it one point of a sweep
    device: str = "auto"  # the spec's device setting

    def __post_init__(self):
        # `key=value` texts (a script's or a test's Job) become Overrides of origin "set".
        object.__setattr__(self, "overrides", tuple(of(self.overrides)))

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}" + "".join(f" {text}" for text in self.sweep)

    def load(self, catalogue):
        return load_spec(self.path, catalogue, self.overrides)


@dataclass(frozen=True)
class RunOptions:
    out: str = "artifacts"
    data: str | None = None
    quick: bool = False
    resume: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal


@dataclass
class Outcome:
    """How a job ended: status is ran, skipped (up to date), failed, diverged, interrupted or not run."""

    job: Job
    status: str
    summary: dict = field(default_factory=dict)
    run_dir: str | None = None
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("ran", "skipped")

    def to_json(self) -> dict:
        return {"job": job_to_json(self.job),
                "status": self.status, "summary": self.summary, "run_dir": self.run_dir, "error": self.error,
                "exit_code": self.exit_code, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict) -> "Outcome":
        job = data["job"]
        return cls(job=job_from_json(job),
                   **{key: data[key] for key in ("status", "summary", "run_dir", "error", "exit_code", "seconds")})


def job_to_json(job: Job) -> dict:
    return {**job.__dict__, "overrides": [o.to_json() for o in job.overrides], "requires": sorted(job.requires),
            "sweep": list(job.sweep)}


def job_from_json(data: dict) -> Job:
    return Job(data["path"], tuple(Override.from_json(o) for o in data["overrides"]), data["name"], data["seed"],
               frozenset(data["requires"]), tuple(data["sweep"]), data["device"])


@dataclass
class Plan:
    jobs: list[Job]  # to run, each after the jobs it requires
    skipped: list[Outcome] = field(default_factory=list)  # up to date
    expected: dict = field(default_factory=dict)  # job -> seconds its spec's last run took (0: unknown)

    def start_order(self) -> list[Job]:
        """The jobs by the work that waits on them (their own time plus the longest chain of jobs
        needing them), most first: a deep net an attack waits for starts before short runs
        nothing waits for, so the last run ends sooner. Equal ranks keep the order given."""
        rank: dict[Job, float] = {}
        for i in reversed(range(len(self.jobs))):
            job = self.jobs[i]
            waiting = [rank[later] for later in self.jobs[i + 1:] if job.name in later.requires]
            rank[job] = self.expected.get(job, 0.0) + max(waiting, default=0.0)
        return sorted(self.jobs, key=lambda job: -rank[job])


# ---- building a plan --------------------------------------------------------------------------

def expand_specs(paths) -> list[Path]:
    """Spec files in the order given; a folder contributes its *.toml files sorted, base/ left out,
    and so is its report.toml (what `runner report` prints about these specs: report/config.py)
    and any spec holding a [search] table: a study is run by naming it, `runner SPEC --search`."""
    from ..spec.loading import REPORT_CONFIG

    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.toml") if p.name != REPORT_CONFIG and not _declares_search(p))
            if not found:
                raise SpecError(f"no spec files (*.toml) in folder {path}")
            out += found
        else:
            out.append(path)
    return out


def _declares_search(path: Path) -> bool:
    import tomllib

    try:
        return "search" in tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False  # loading it reports the problem, with its line


def sweep_points(overrides) -> list[list[Override]]:
    """Each combination of the swept values: `train.lr=0.01,0.05` gives two points (each value an
    Override of origin "sweep"), two such keys a grid. A TOML array (`model.widths=[16,32]`) is
    one value; `[16,32],[64,128]` is two. Overrides given as Overrides keep their origin."""
    choices = []
    for override in of(overrides):
        values = split_values(override.value)
        origin = "sweep" if len(values) > 1 and override.origin == "set" else override.origin
        choices.append([Override(override.key, value, origin) for value in values] if len(values) > 1 else [override])
    return [list(point) for point in itertools.product(*choices)]


def split_values(raw: str) -> list[str]:
    """'0.01,0.05' -> ['0.01', '0.05']; commas inside brackets, braces or quotes do not split."""
    parts, depth, quote, current = [], 0, None, ""
    for char in raw:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return [part for part in parts if part] or [raw]


def build(paths, catalogue, *, options: RunOptions, overrides=(), seeds=None, with_deps=False, force=False,
          device=None, log=None) -> tuple[Plan, list]:
    """The plan for `runner PATHS...`: every spec x seed x sweep point, loaded (so any bad spec
    fails before the first run), ordered by dependencies; in a suite (a folder given, no --force)
    the jobs whose latest completed run is up to date are skipped. Returns the plan and the specs.

    log(line): where the planning decisions are told (up to date, reruns because ...)."""
    from ..spec.loading import check_overrides_used

    log = log or (lambda line: print(line, file=sys.stderr))
    files = expand_specs(paths)
    seed_overrides = [[Override("seed", str(seed), "seed")] for seed in seeds] if seeds else [[]]
    device_override = [Override("device", f'"{device}"', "device")] if device else []
    points = sweep_points(overrides)
    loaded = []  # (job, spec)
    for path in files:
        quick = quick_overrides(path, catalogue) if options.quick else []
        for point in points:
            for seed in seed_overrides:
                every = quick + point + device_override + seed
                spec = load_spec(path, catalogue, every)
                sweep = tuple(o.text for o in point if o.origin == "sweep")
                loaded.append((_job(spec, every, sweep), spec))
    check_overrides_used([spec for _, spec in loaded], [o.text for point in points for o in point])
    if with_deps:
        given = {Path(p).resolve() for p in files}
        by_path = {spec.path.resolve(): spec for _, spec in loaded}
        for path in dependencies_of(list(by_path), catalogue, include_roots=False, loaded=by_path):
            if path in given or artifacts.latest_run(options.out, load_spec(path, catalogue).name, options.quick):
                continue
            # The user's --set is for the specs named; where they run (--device) holds for all.
            every = (quick_overrides(path, catalogue) if options.quick else []) + device_override
            spec = load_spec(path, catalogue, every)
            loaded.insert(0, (_job(spec, every), spec))
    by_path = {spec.path.resolve(): spec for _, spec in loaded}
    order = dependencies_of(list(by_path), catalogue, loaded=by_path)
    loaded.sort(key=lambda pair: order.index(pair[1].path.resolve()))  # stable: seeds keep their order
    suite = any(Path(p).is_dir() for p in paths) and not force
    plan = Plan(jobs=[])
    from ..training.fingerprint import fingerprint

    for job, spec in loaded:
        done = _matching_run(options, job, fingerprint(spec)) if suite else None
        if done is not None:
            why = outdated_by(job, done, {j.name for j in plan.jobs}, options)
            if why is None:
                log(f"[{spec.name}] up to date: {done} (--force reruns it)")
                plan.skipped.append(Outcome(job, "skipped", artifacts.read_summary(done), str(done)))
                continue
            log(f"[{spec.name}] reruns: {why}")
        plan.jobs.append(job)
        plan.expected[job] = expected_seconds(spec.name, options)
    return plan, [spec for _, spec in loaded]


_SPECS: dict = {}  # (catalogue id, file, overrides) -> (the catalogue, weakly; the files' stamps; the spec)


def load_spec(path, catalogue, overrides=()):
    """spec.load, once per catalogue, file and overrides while the spec's files are unchanged:
    planning asks for a spec many times. An entry holds its catalogue weakly (an id alone could
    be a later catalogue's, with other plugins) and the stamps of every file the spec read, so an
    edited file is read afresh."""
    from ..spec.loading import load

    overrides = tuple(of(overrides))
    key = (id(catalogue), str(Path(path).resolve()), overrides)
    cached = _SPECS.get(key)
    if cached is not None and cached[0]() is catalogue and cached[1] == _stamps(cached[2].chain):
        return cached[2]
    spec = load(path, catalogue, list(overrides))
    _SPECS[key] = (weakref.ref(catalogue), _stamps(spec.chain), spec)
    return spec


def _stamps(files) -> tuple:
    stamps: list[tuple[str, int | None, int | None]] = []  # (file, mtime, size); None: unreadable
    for file in files:
        try:
            stat = Path(file).stat()
            stamps.append((str(file), stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((str(file), None, None))
    return tuple(stamps)


def forget_loaded_specs() -> None:
    """Drop load_spec's specs, so a long-lived process (a notebook, runner/api.py) reads edited
    spec files afresh at its next run."""
    _SPECS.clear()


def _job(spec, overrides, sweep=()) -> Job:
    return Job(path=str(spec.path), overrides=tuple(overrides), name=spec.name, seed=spec.seed,
               requires=frozenset(required_names(spec)), sweep=tuple(sweep), device=spec.device)


def _matching_run(options: RunOptions, job: Job, fingerprint: str) -> Path | None:
    """The latest completed run of this job's spec and seed if it was made from the same resolved
    spec and code. A sweep's points share a spec name and seed, so for one of them: the latest
    run made from its own resolved spec."""
    runs = reversed(artifacts.completed_runs(options.out, job.name, seed=job.seed))
    for run_dir in runs:
        summary = artifacts.read_summary(run_dir)
        if not summary or bool(summary.get("quick")) != options.quick:
            continue
        if summary.get("fingerprint") == fingerprint:
            return run_dir
        if not job.sweep:
            return None
    return None


def outdated_by(job: Job, done: Path, rerun: set[str], options: RunOptions) -> str | None:
    """Why a job whose latest run `done` has its fingerprint must run again, or None: a spec it
    requires is rerun now (any seed: one it may fall back to), or the run of it that the source
    plugins would take now (artifacts.source_run: its own seed's, else any seed's) started after
    `done`, which used an older model. `rerun`: the specs this invocation runs before it; it holds
    those rerun for this reason too, so a rerun reaches every spec that needs it, however indirectly."""
    if job.requires & rerun:
        names = sorted(job.requires & rerun)
        return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} rerun"
    for name in sorted(job.requires):
        latest = artifacts.source_run(options.out, name, options.quick, job.seed)
        if latest is not None and artifacts.started_after(latest, done):
            return f"{name} ran after it ({latest} is newer than {done.name})"
    return None


def expected_seconds(name: str, options: RunOptions) -> float:
    """How long the latest completed run of this spec in OUT took (its wall_seconds), in the same
    mode (--quick or not); 0 when it has not run, so a first suite keeps the order given."""
    latest = artifacts.latest_run(options.out, name, options.quick)
    return float(artifacts.read_summary(latest).get("wall_seconds", 0.0)) if latest else 0.0


def required_names(spec) -> set[str]:
    """The names of the specs `spec` requires (a spec's name is its file's stem): those its plugins
    read, and any its `requires` adds."""
    return {Path(p).stem for p in spec.requires} | set(spec.reads)


def required_files(spec) -> list[Path]:
    """The spec files `spec` requires: each spec its plugins read, found beside it (or beside a
    file it extends), then its `requires`."""
    found = []
    for name, setting in spec.reads.items():
        folders = [spec.path.parent] + [file.parent for file in reversed(spec.chain)]
        candidates = [folder / f"{name}.toml" for folder in folders]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise SpecError(f"names spec {name!r}, and there is no {name}.toml beside {spec.path.name} "
                            f"(looked in {', '.join(sorted({str(f) for f in folders}))})", file=spec.path, key=setting)
        found.append(path.resolve())
    for required in map(Path, spec.requires):
        if not required.is_file():
            raise SpecError(f"required spec {required.name!r} not found (looked for {required})",
                            file=spec.path, key="requires")
        found.append(required)
    return list(dict.fromkeys(found))


def quick_overrides(path, catalogue) -> list[Override]:
    """--quick's overrides: the run's (an evaluate-only spec stays evaluate-only), then each enabled
    plugin's settings that name a quick value (an attack's step cap, say)."""
    import json

    from ..spec.loading import read

    table, _, _ = read(path)
    catalogue.add_spec_files(Path(path), table)
    plugins = {name: settings for name, settings in table.get("plugins", {}).items() if isinstance(settings, dict)}
    keep_zero = table.get("train", {}).get("iterations") == 0 or catalogue.model_source(plugins)
    overrides = [Override.parse(o, "quick") for o in QUICK if not (keep_zero and o.startswith("train.iterations="))]
    for name, settings in table.get("plugins", {}).items():
        if isinstance(settings, dict) and settings.get("enabled", True):
            # JSON scalars are TOML too.
            overrides += [Override(f"plugins.{name}.{key}", json.dumps(setting.quick), "quick")
                          for key, setting in catalogue.settings_of(name).items() if setting.quick is not None]
    return overrides


def dependencies_of(paths, catalogue, include_roots=True, loaded=None) -> list[Path]:
    """The spec files (and, with include_roots, the given ones) in an order where requirements come
    first. `loaded`: specs already loaded, by resolved path (what they read may depend on a --set),
    so that each is loaded once; others load as their files say."""
    ordered: list[Path] = []
    loaded = loaded or {}

    def visit(path: Path, chain: tuple):
        if path in chain:
            raise RunnerError(f"circular requires: {' -> '.join(p.name for p in chain + (path,))}")
        if path in ordered:
            return
        for required in files(path):
            visit(required, chain + (path,))
        ordered.append(path)

    def files(path: Path) -> list[Path]:
        return required_files(loaded.get(path) or load_spec(path, catalogue))

    for path in paths:
        if include_roots:
            visit(path, ())
        else:
            for required in files(path):
                visit(required, (path,))
    return ordered
