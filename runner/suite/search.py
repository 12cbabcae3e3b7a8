"""Hyperparameter search over a spec: `runner SPEC --search [--trials N] [--jobs K]`.

An Optuna study (its samplers, pruners and journal storage) whose trials are ordinary runs: this
process asks the study for a trial, turns its values into `--set` overrides, plans the run as
`runner SPEC --set ...` would (suite.build) and runs it in this process or, under --jobs K, in a
worker process of its own (executors.Worker) or a Dask task; then it tells the study the run's
metric. Each trial's run folder is OUT/<spec>/<run id> like any run's, its summary.json holding its
overrides and `search` = {study, trial, validation_accuracy, pruned_at}, so `runner ls`, `compare`
and `show` list trials unchanged.

Inside a trial's run (runner/training/trial.py, which runner/training/flow.py calls), the last
`search.validation` training images are held out: the run trains on the rest, and every
`search.every` iterations an Ignite evaluator measures the held-out accuracy, reports it to the
trial (reopened from the storage that RUNNER_SEARCH names) and stops training cleanly when the
pruner says so: status "pruned". Choosing by the test set would be dishonest; the test set is
measured once, after the search, for the best trial's values over seeds 0-2 (`measure_best`).

The study lives in OUT/<spec>/_search/journal.log (Optuna's JournalStorage: appends only, so a
kill leaves it consistent). Rerunning the command continues it: trials left running by a process
that is gone are marked failed and interrupted, and their values are asked again first, so an
interrupted study of one seed ends with the trials an uninterrupted one makes (with --jobs 1: the
sampler is reseeded per trial from the count of trials before it). Optuna is imported only here and
only when a search runs.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RunnerError, SpecError
from ..spec.overrides import of
from ..training.trial import ENV, PRUNERS, open_storage, storage_path  # noqa: F401 (tests set PRUNERS)

DEFAULT_TEST_SEEDS = (0, 1, 2)
POLL_SECONDS = 0.2


def make_sampler(settings: dict, offset: int = 0):
    """The study's sampler, seeded with search.seed + offset (a fresh one per trial: see the module)."""
    import optuna

    seed = settings["seed"] + offset
    if settings["sampler"] == "grid":
        return optuna.samplers.GridSampler(grid(settings), seed=seed)
    if settings["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def spaces(settings: dict) -> dict[str, dict]:
    """The [search] table's spaces: {"train.lr": {"log": [low, high]}, ...}."""
    return {key: value for key, value in settings.items() if "." in key}


def _choice_value(value):
    """A choice as Optuna stores it: a scalar as itself, a list or table as its TOML text."""
    from .listing import _toml

    return value if value is None or isinstance(value, (bool, int, float, str)) else _toml(value)


def grid(settings: dict) -> dict[str, list]:
    """Every point of each space, for the grid sampler (spec.py allows only choice and int spaces)."""
    points = {}
    for key, space in spaces(settings).items():
        kind, given = next(iter(space.items()))
        points[key] = list(range(given[0], given[1] + 1)) if kind == "int" else [_choice_value(v) for v in given]
    return points


def suggest(trial, settings: dict) -> list[str]:
    """The trial's value for each space, as `--set key=value` texts."""
    from .listing import _toml

    texts = []
    for key, space in spaces(settings).items():
        kind, given = next(iter(space.items()))
        if kind in ("log", "range"):
            value = trial.suggest_float(key, given[0], given[1], log=kind == "log")
        elif kind == "int":
            value = trial.suggest_int(key, given[0], given[1])
        else:
            encoded = [_choice_value(v) for v in given]
            value = given[encoded.index(trial.suggest_categorical(key, encoded))]
        texts.append(f"{key}={_toml(value)}")
    return texts


# ---- the study: open, recover, count -----------------------------------------------------------

def open_study(out, spec, create: bool):
    """The spec's study in OUT/<spec>/_search (created with create, else it must exist)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = storage_path(out, spec.name if hasattr(spec, "name") else spec)
    if not create and not path.is_file():
        raise RunnerError(f"no study in {path.parent}: run `runner SPEC --search --out {out}` first")
    storage = open_storage(path)
    if not create:
        return optuna.load_study(study_name=path.parent.parent.name, storage=storage)
    settings = spec.values["search"]
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                direction=settings["direction"], pruner=PRUNERS[settings["pruner"]](settings))
    if study.direction.name.lower() != settings["direction"]:
        raise SpecError(f"the study in {path.parent} was made to {study.direction.name.lower()}; start another "
                        f"(another --out, or remove {path.parent})", file=spec.path, key="search.direction")
    study.set_user_attr("spec_file", str(spec.path.resolve()))
    return study


def _states():
    from optuna.trial import TrialState

    return TrialState


def counted(study) -> int:
    """Trials that count toward search.trials: finished (complete, pruned, failed), not interrupted."""
    TrialState = _states()
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
               and not t.user_attrs.get("interrupted"))


def _sampler_offset(study) -> int:
    """Trials before the next one, interrupted ones and waiting retries left out: the same number
    for the n-th trial of a study however often it was interrupted."""
    TrialState = _states()
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted"))


def _owner_gone(attrs: dict) -> bool:
    """Whether the search process that ran a trial is gone (one on another machine is presumed alive)."""
    if attrs.get("host") != socket.gethostname() or not isinstance(attrs.get("pid"), int):
        return False
    try:
        os.kill(attrs["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return attrs["pid"] == os.getpid()  # this very process asked it and lost it (an earlier call's)


def recover(study, log=print) -> list[int]:
    """Trials left running by a search process that is gone (killed): failed, marked interrupted,
    and their values queued to be asked again first. Returns their numbers."""
    import optuna

    TrialState = _states()
    lost = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _owner_gone(frozen.user_attrs):
            trial = optuna.trial.Trial(study, frozen._trial_id)
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            lost.append(frozen.number)
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if frozen.user_attrs.get("interrupted") and frozen.number not in retried:
            study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})
            log(f"[{study.study_name}] trial {frozen.number} was interrupted: its values are tried again")
    return lost


# ---- running trials ----------------------------------------------------------------------------

@dataclass
class Slots:
    """Where trials run: in this process (jobs 1), each in a worker process of its own (local), or
    as Dask tasks. start() begins a run, poll() is its Outcome once done, stop() ends them all."""

    jobs: int
    catalogue: object = None
    executor: str = "local"
    scheduler: str | None = None
    resources: dict | None = None
    handles: dict = field(default_factory=dict)  # trial number -> running handle

    def start(self, number: int, job, options, env: dict, log: Path) -> None:
        if self.jobs == 1 and self.executor == "local":
            from .executors import run_job

            with _environment(env):
                self.handles[number] = ("done", run_job(job, options, self.catalogue))
        elif self.executor == "dask":
            self.handles[number] = ("dask", self._client().submit(
                run_dask_trial, job, options, env, pure=False, resources=self._resources(job)))
        else:
            from .executors import Worker, threads_per_process

            with _environment(env):  # the worker inherits it; a fresh worker per trial
                worker = Worker(threads_per_process(self.jobs))
            worker.start(job, options, log)
            worker.stop(interrupt=False)  # it exits after this job
            self.handles[number] = ("worker", (worker, job, log))

    def poll(self, number: int):
        kind, handle = self.handles[number]
        if kind == "done":
            outcome = handle
        elif kind == "dask":
            if not handle.done():
                return None
            outcome = handle.result()
        else:
            worker, job, log = handle
            if worker.poll() is None:
                return None
            outcome = worker.outcome(job, log)
            worker.process.wait()
        del self.handles[number]
        return outcome

    def stop(self) -> None:
        for kind, handle in self.handles.values():
            if kind == "worker":
                handle[0].stop(interrupt=True)
                handle[0].process.wait()
            elif kind == "dask":
                handle.cancel()
        self.handles.clear()

    def close(self) -> None:
        if hasattr(self, "_dask"):
            self._dask.close()

    def _client(self):
        if not hasattr(self, "_dask"):
            from distributed import Client

            self._dask = Client(self.scheduler)
        return self._dask

    def _resources(self, job):
        from .dask_executor import DEFAULT_RESOURCES, resources_for

        has_gpus = any(w.get("resources", {}).get("GPU") for w in self._client().scheduler_info()["workers"].values())
        return resources_for(job, self.resources or DEFAULT_RESOURCES, has_gpus)


def run_dask_trial(job, options, env: dict):
    """A trial's run on a Dask worker: the environment names its trial, as for a worker process."""
    from .executors import run_job

    with _environment(env):
        return run_job(job, options)


class _environment:
    """RUNNER_SEARCH set while the block runs (restored after)."""

    def __init__(self, value: dict):
        self.value = json.dumps(value)

    def __enter__(self):
        self.before = os.environ.get(ENV)
        os.environ[ENV] = self.value

    def __exit__(self, *exc):
        if self.before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self.before


def plan_one(path, catalogue, options, overrides, seeds=None, device=None):
    """The one job `runner PATH --set ...` would plan."""
    from . import plan as suite

    plan, _ = suite.build([path], catalogue, options=options, overrides=list(overrides), seeds=seeds, device=device,
                          log=lambda line: None)
    return plan


def run_search(path, catalogue, options, *, overrides=(), trials=None, jobs=1, seed=None, device=None,
               executor="local", scheduler=None, resources=None, log=None) -> object:
    """Run the spec's study to its trial count (search.trials, or `trials`); returns the study."""
    import optuna

    from . import plan as suite

    log = log or (lambda line: print(line, file=sys.stderr))
    search_overrides = list(overrides)
    seeds = None if seed is None else [seed]
    quick = suite.quick_overrides(path, catalogue) if options.quick else []
    spec = suite.load_spec(path, catalogue, quick + search_overrides + ([f"seed={seed}"] if seed is not None else []))
    if "search" not in spec.values:
        raise SpecError("has no [search] table to search over (docs/search.md)", file=path, key="search")
    settings = spec.values["search"]
    target = trials or settings["trials"]
    if settings["sampler"] == "grid":
        target = min(target, _grid_size(settings))
    study = open_study(options.out, spec, create=True)
    where = storage_path(options.out, spec.name).parent
    _same_study(study, where, options.quick, search_overrides)
    recover(study, log)
    log(f"[{spec.name}] study {where}: {counted(study)} of {target} trials done")
    logs = Path(options.out) / "_logs"
    slots = Slots(jobs, catalogue, executor, scheduler, resources)
    running: dict[int, optuna.trial.Trial] = {}  # trial number -> its trial
    failure = None
    TrialState = optuna.trial.TrialState
    try:
        while True:
            while failure is None and len(running) < jobs and counted(study) + len(running) < target:
                study.sampler = make_sampler(settings, _sampler_offset(study))
                trial = study.ask()
                running[trial.number] = trial
                values = suggest(trial, settings)
                job = plan_one(path, catalogue, options, search_overrides + of(values, "search"), seeds, device).jobs[0]
                if jobs > 1 or executor != "local":
                    logs.mkdir(parents=True, exist_ok=True)
                _start_trial(trial, values, job, spec.name, slots, options, logs, log)
            if not running:
                break
            for number in list(running):
                outcome = slots.poll(number)
                if outcome is not None:
                    trial = running.pop(number)
                    failure = _tell(study, trial, outcome, settings, log) or failure
            if running:
                time.sleep(POLL_SECONDS)
    except BaseException:
        for trial in running.values():  # stopped: these are tried again when the command is rerun
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        slots.stop()
        raise
    finally:
        slots.close()
    if failure is not None:
        raise failure
    return study


def _start_trial(trial, values: list[str], job, name: str, slots, options, logs: Path, log) -> None:
    """Record who runs the trial and its settings on it, and start its job in a free slot."""
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("overrides", values)
    env = {"storage": str(storage_path(options.out, name).resolve()), "study": name,
           "trial_id": trial._trial_id, "number": trial.number, "role": "trial"}
    log(f"[{name}] trial {trial.number}: {' '.join(values)}")
    slots.start(trial.number, job, options, env, logs / f"{name}-trial{trial.number}.log")


def _same_study(study, where: Path, quick: bool, overrides: list[str]) -> None:
    """A study continues only as it began: --quick or not, the same --set (else trials would mix)."""
    made = {"quick": quick, "overrides": overrides}
    before = {key: study.user_attrs.get(key) for key in made}
    if not study.get_trials(deepcopy=False) or before == {"quick": None, "overrides": None}:
        for key, value in made.items():
            study.set_user_attr(key, value)
    elif before != made:
        raise RunnerError(f"the study in {where} was made with "
                          f"{'--quick ' if before['quick'] else ''}--set {before['overrides']}, not "
                          f"{'--quick ' if quick else ''}--set {overrides}: rerun it as it began, or give "
                          f"another --out for a new study")


def _grid_size(settings: dict) -> int:
    size = 1
    for points in grid(settings).values():
        size *= len(points)
    return size


def _tell(study, trial, outcome, settings: dict, log) -> RunnerError | None:
    """Tell the study how a trial's run ended; a failure that is not the trial's values' (a bug, missing
    data) is returned, to stop the search once the running trials end."""
    TrialState = _states()
    if outcome.run_dir:
        trial.set_user_attr("run_dir", outcome.run_dir)
    name = study.study_name
    if outcome.status != "ran":
        trial.set_user_attr("error", outcome.error or outcome.status)
        study.tell(trial, state=TrialState.FAIL)
        log(f"[{name}] trial {trial.number} {outcome.status}: {outcome.error}")
        return None if outcome.status == "diverged" else RunnerError(f"trial {trial.number}: {outcome.error}")
    search = outcome.summary.get("search", {})
    if search.get("pruned_at") is not None:
        study.tell(trial, state=TrialState.PRUNED)
        log(f"[{name}] trial {trial.number} pruned at iteration {search['pruned_at']} (validation accuracy "
            f"{search.get('validation_accuracy', float('nan')):.4f})")
        return None
    value = outcome.summary.get(settings["metric"])
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        trial.set_user_attr("error", f"summary.json has no number {settings['metric']!r}")
        study.tell(trial, state=TrialState.FAIL)
        return RunnerError(f"trial {trial.number}: its summary.json has no number {settings['metric']!r} "
                           f"(search.metric names a summary.json key)")
    study.tell(trial, float(value))
    best = study.best_trial
    log(f"[{name}] trial {trial.number}: {settings['metric']} {value:.4f} (best: trial {best.number}, "
        f"{best.value:.4f})")
    return None


# ---- after the search: the best trial on the test set --------------------------------------------

def measure_best(path, catalogue, options, *, overrides=(), seeds=DEFAULT_TEST_SEEDS, jobs=1, device=None,
                 log=None) -> dict:
    """The best trial's values as ordinary runs (the whole training batch, the test set) over
    `seeds`; recorded in the study (user attr "test") and returned."""
    from . import plan as suite
    from .executors import InProcess, ProcessPool

    log = log or (lambda line: print(line, file=sys.stderr))
    quick = suite.quick_overrides(path, catalogue) if options.quick else []
    spec = suite.load_spec(path, catalogue, quick + list(overrides))
    study = open_study(options.out, spec.name, create=False)
    best = best_trial(study)
    values = best.user_attrs.get("overrides", [])
    plan = plan_one(path, catalogue, options, list(overrides) + of(values, "search"), list(seeds), device)
    log(f"[{spec.name}] the best trial, {best.number} ({best.value:.4f}), on the test set over seeds "
        f"{','.join(map(str, seeds))}: {' '.join(values)}")
    with _environment({"study": spec.name, "role": "test", "best_trial": best.number}):
        executor = ProcessPool(min(jobs, len(plan.jobs)), device=device) if jobs > 1 else InProcess(catalogue)
        outcomes = executor.run(plan, options, lambda *event: None)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RunnerError(f"a test run of trial {best.number} did not complete: {failed[0].error}")
    accuracies = [o.summary["test_accuracy"] for o in outcomes]
    result = {"trial": best.number, "overrides": values, "seeds": list(seeds), "test_accuracy": accuracies,
              "runs": [o.run_dir for o in outcomes]}
    study.set_user_attr("test", result)
    log(f"[{spec.name}] trial {best.number}'s test accuracy: {mean_sd(accuracies)}")
    return result


class NoCompleteTrial(RunnerError):
    """A study none of whose trials completed (all pruned or failed, or none run yet)."""


def best_trial(study):
    TrialState = _states()
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise NoCompleteTrial(f"study {study.study_name} has no complete trial yet, so no best values to measure")
    return study.best_trial


def mean_sd(values) -> str:
    if not values:
        return "-"
    text = f"{statistics.mean(values):.4f}"
    return text + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


# ---- runner search show, and the report --------------------------------------------------------

def importances(study) -> dict[str, float]:
    """Each space's importance for the metric (Optuna's fANOVA, seeded so that `search show` and the
    report agree run after run); {} with too few complete trials."""
    import optuna

    try:
        return optuna.importance.get_param_importances(study, evaluator=importance_evaluator())
    except (RuntimeError, ValueError):
        return {}


def importance_evaluator():
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=0)


def _state(trial) -> str:
    """"complete", "pruned", "fail", "running", or "interrupted" (a failed trial whose process was stopped)."""
    return "interrupted" if trial.user_attrs.get("interrupted") else trial.state.name.lower()


def state_of(trial) -> str:
    """Its state as tables show it: a pruned trial's with the iteration it last reported ("pruned at 700")."""
    state = _state(trial)
    if state == "pruned" and trial.intermediate_values:
        return f"pruned at {max(trial.intermediate_values)}"
    return state


def states(study) -> dict[str, int]:
    """State -> how many trials are in it."""
    found: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        found[_state(t)] = found.get(_state(t), 0) + 1
    return found


def value_text(value) -> str:
    """A trial's value as tables show it: a float to 3 significant digits (the rerun command, from
    the trial's overrides, keeps every digit)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trials_table(study, metric=lambda value: f"{value:.4f}", metric_name: str = "value"
                 ) -> tuple[list[str], list[list[str]]]:
    """The trials, best first (complete ones, then the rest by their last reported value): number,
    state, the metric (formatted by `metric`, headed `metric_name`), each space's value and the run's id."""
    TrialState = _states()
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    keys = list(dict.fromkeys(key for t in trials for key in t.params))
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    ranked = sorted(trials, key=lambda t: (t.state != TrialState.COMPLETE, sign * (t.value or 0), t.number))
    rows = [[str(t.number), state_of(t), "-" if t.value is None else metric(t.value),
             *(value_text(t.params[key]) if key in t.params else "-" for key in keys),
             Path(t.user_attrs["run_dir"]).name if t.user_attrs.get("run_dir") else "-"] for t in ranked]
    return ["trial", "state", metric_name, *keys, "run"], rows


def trial_folder(spec_dir: Path, trial) -> Path | None:
    """The trial's run folder in `spec_dir`, wherever the study ran (a copied study's recorded
    paths name the folder it ran in); None if it is not there."""
    recorded = trial.user_attrs.get("run_dir")
    if not recorded:
        return None
    here = Path(spec_dir) / Path(recorded).name
    return here if here.is_dir() else None


def spec_file(study) -> str:
    """The searched spec's file as a command names it: as recorded, relative to the working folder
    if it is in it; else specs/<name>.toml there (a study copied from another checkout)."""
    recorded = study.user_attrs.get("spec_file", f"{study.study_name}.toml")
    here = _relative(recorded)
    if Path(recorded).is_file() and not Path(here).is_absolute():
        return here
    own = Path("specs") / Path(recorded).name
    return str(own) if own.is_file() else recorded


def show(target, out=None) -> str:
    """`runner search show OUT/<spec>`: the study's trials, best first, the best trial and its
    command, its test accuracy if measured, and the parameter importances."""
    from .listing import _table

    target = Path(target)
    spec_dir = target if (target / "_search").is_dir() else Path(out or "artifacts") / target.stem
    if not (spec_dir / "_search").is_dir():
        raise RunnerError(f"{target}: no study in {spec_dir}/_search (give OUT/<spec>, e.g. artifacts/"
                          f"{target.stem}; `runner SPEC --search` makes one)")
    study = open_study(spec_dir.parent, spec_dir.name, create=False)
    TrialState = _states()
    found = states(study)
    lines = [f"study {study.study_name} in {spec_dir / '_search'}: {sum(found.values())} trials ("
             + ", ".join(f"{n} {s}" for s, n in sorted(found.items())) + f"), {study.direction.name.lower()}"
             + _wall(study)]
    lines.append(_table(*trials_table(study)))
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return "\n".join(lines + ["no complete trial yet"])
    best = study.best_trial
    command = spec_file(study)
    lines += ["", f"best: trial {best.number}, value {best.value:.4f}  ({trial_folder(spec_dir, best) or '-'})",
              "rerun its values as an ordinary run: runner " + " ".join(
                  [command] + [f"--set {text}" for text in best.user_attrs.get("overrides", [])])]
    tested = study.user_attrs.get("test")
    if tested and tested.get("trial") == best.number:
        lines.append(f"its test accuracy over seeds {','.join(map(str, tested['seeds']))}: "
                     f"{mean_sd(tested['test_accuracy'])}")
    else:
        lines.append(f"its test accuracy: not measured yet (runner {command} --search-test)")
    weights = importances(study)
    if weights:
        lines.append("parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()))
    return "\n".join(lines)


def _wall(study) -> str:
    """', trials ran over 41 min' (first trial's start to last trial's end; a continued study's pause included)."""
    from ..progress import duration

    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    return f", trials ran over {duration((max(ends) - min(starts)).total_seconds())}" if starts and ends else ""


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def studies(out) -> list[Path]:
    """The spec folders in OUT that hold a study."""
    out = Path(out)
    return sorted(p.parent.parent for p in out.glob("*/_search/journal.log"))
