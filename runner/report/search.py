"""The report's section per searched spec (runner SPEC --search, runner/suite/search.py): what was
searched and how, its trials, the best trial's test accuracy beside the spec it extends, and
Optuna's own matplotlib plots of the study."""
from __future__ import annotations

import json
import statistics
import tomllib
from pathlib import Path

from .. import artifacts
from ..errors import RunnerError
from ..results import percent
from ..suite import search
from ..training import figures  # noqa: F401  (sets the headless backend before Optuna draws)
from .collect import Runs, spec_path
from .document import Figure, Paragraph, Section, Table
from .templates import accuracy_text

SAMPLERS = {"tpe": "TPE", "random": "random", "grid": "grid"}
PRUNERS_SAID = {"median": "median pruner", "halving": "successive-halving pruner", "none": "no pruner"}


def report_sections(runs: Runs) -> list:
    """A report section per study in the runs' folder (a --quick report's --quick studies only)."""
    sections = []
    for spec_dir in search.studies(runs.out):
        try:
            study = search.open_study(spec_dir.parent, spec_dir.name, create=False)
            best = search.best_trial(study)
        except RunnerError:
            continue
        if bool(study.user_attrs.get("quick")) != runs.quick:
            continue
        best_run = search.trial_folder(spec_dir, best)
        settings = _read(best_run, "spec.toml")
        metric = settings.get("search", {}).get("metric", "value")
        shown = percent if metric.endswith("accuracy") else (lambda value: f"{value:.4f}")
        header, rows = search.trials_table(study, shown, metric.replace("_", " "))
        held_out = _read(best_run, "summary.json").get("search", {}).get("validation_images")
        blocks = [Paragraph(_summary(study, best, settings, held_out, shown, runs)),
                  Table(header, rows, f"{spec_dir.name}: the trials, complete ones best first, then the pruned by "
                        "the last value they reported (a pruned trial's state names the iteration it stopped at).",
                        small=True)]
        blocks += _figures(study, runs.workdir / f"search-{spec_dir.name}")
        title = f"Hyperparameter search: {spec_dir.name}" + (f" ({settings['title']})" if settings.get("title") else "")
        sections.append(Section(title, blocks))
    return sections


def _read(folder: Path | None, name: str) -> dict:
    """A run's spec.toml or summary.json as a dict ({} if the folder is not there or the file unreadable)."""
    if folder is None:
        return {}
    try:
        text = (folder / name).read_text()
        return tomllib.loads(text) if name.endswith(".toml") else json.loads(text)
    except (OSError, ValueError):  # TOMLDecodeError and JSONDecodeError are ValueErrors
        return {}


def _summary(study, best, settings: dict, held_out: int | None, shown, runs: Runs) -> str:
    chosen = settings.get("search", {})
    counts = search.states(study)
    total = sum(counts.values())
    keys = list(best.params)
    how = "; Optuna"
    if chosen:
        how += (f"'s {SAMPLERS.get(chosen['sampler'], chosen['sampler'])} sampler and "
                f"{PRUNERS_SAID.get(chosen['pruner'], chosen['pruner'] + ' pruner')}")
    text = (f"`runner {search.spec_file(study)} --search` ran a study of {total} trials ("
            + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + how
            + f") over {', '.join(keys)}. Each trial trains on the training images less "
            + (f"the last {held_out:,}" if held_out else "a held-out set")
            + " and is judged by its accuracy on those held-out images, never by the test set.")
    iterations = settings.get("train", {}).get("iterations")
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    if iterations and counts.get("pruned"):
        trained = sum(max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values
                      else iterations for t in finished)
        text += (f" Pruned trials stop early: the {len(finished)} complete and pruned trials trained "
                 f"{trained:,} of the {len(finished) * iterations:,} iterations they would have unpruned.")
    if counts.get("interrupted"):
        text += " An interrupted trial's process was stopped: the study tried its values again."
    text += (f" The best, trial {best.number}, reaches {shown(best.value)} with "
             + ", ".join(f"{key} {search.value_text(best.params[key])}" for key in keys) + ".")
    tested = study.user_attrs.get("test")
    if tested and tested.get("trial") == best.number and tested.get("test_accuracy"):
        found = tested["test_accuracy"]
        sd = statistics.stdev(found) if len(found) > 1 else None
        text += (f" Trained with these values on every training image, it scores "
                 f"{accuracy_text(statistics.mean(found), sd, len(found))}"
                 " on the test set")
        base = _base(study, runs)
        mean, sd = base.mean_sd() if base is not None else (None, None)
        if base is not None and mean is not None:
            text += (f", against {accuracy_text(mean, sd, len(base.runs))} with the values of "
                     f"{base.name}, the spec it extends ({base.title})")
        text += "."
    return text


def _base(study, runs: Runs):
    """The report's runs of the spec the searched spec extends, or None."""
    found = spec_path({"spec_file": study.user_attrs.get("spec_file")}, runs.out)
    try:
        extends = tomllib.loads(found.read_text()).get("extends") if found else None
    except (OSError, tomllib.TOMLDecodeError):
        return None
    parents = [extends] if isinstance(extends, str) else extends or []
    return next((runs[Path(p).stem] for p in parents if Path(p).stem in runs), None)


def _figures(study, folder: Path) -> list:
    """Optuna's matplotlib plots of the study as report figures (those it can draw)."""
    import warnings

    from optuna.visualization import matplotlib as plots

    complete = search.states(study).get("complete", 0)
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for name, plot, caption, width in (
            ("history", plots.plot_optimization_history, "optimization history (complete trials)", 0.5),
            ("importances", lambda s: plots.plot_param_importances(s, evaluator=search.importance_evaluator()),
             f"parameter importances (fANOVA over the {complete} complete trials: with few, a rough guide)", 0.5),
            ("parallel", plots.plot_parallel_coordinate, "parallel coordinates (complete trials)", 0.8)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        axes = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = axes.figure
        if width > 0.5 and hasattr(figure, "set_size_inches"):  # Optuna draws it narrow: labels meet the colour bar
            figure.set_size_inches(10, 4.5)
        path = folder / f"search-{study.study_name}-{name}.png"  # the writers keep figures by file name
        artifacts.save_figure(path, figure)
        found.append(Figure(path, f"{study.study_name}: {caption}.", width=width))
    return found
