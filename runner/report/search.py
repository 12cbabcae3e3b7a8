"""The report's section per searched spec (runner SPEC --search, runner/suite/search.py): its trials,
the best trial's test accuracy, and Optuna's own matplotlib plots of the study."""
from __future__ import annotations

from pathlib import Path

from .. import artifacts
from ..errors import RunnerError
from ..suite.search import best_trial, mean_sd, open_study, studies, trials_table
from ..training import figures  # noqa: F401  (sets the headless backend before Optuna draws)
from .document import Figure, Paragraph, Section, Table


def report_sections(out, workdir, quick: bool | None = None) -> list:
    """A report section per searched spec: its trials, the best trial's test accuracy, and Optuna's
    optimization history, parameter importances and parallel coordinates."""
    sections = []
    for spec_dir in studies(out):
        try:
            study = open_study(spec_dir.parent, spec_dir.name, create=False)
            best = best_trial(study)
        except RunnerError:
            continue
        if quick is not None and bool(study.user_attrs.get("quick")) != quick:  # a --quick report's studies are --quick
            continue
        rows = trials_table(study)
        tested = study.user_attrs.get("test")
        text = (f"A search of {len(rows)} trials (Optuna, `runner {spec_dir.name}.toml --search`): each trial "
                f"trains on the training images less a held-out set and is judged by the held-out accuracy; the "
                f"best, trial {best.number} ({best.value:.4f}), has {' '.join(best.user_attrs.get('overrides', []))}.")
        if tested and tested.get("trial") == best.number:
            text += (f" Its values trained on every training image score {mean_sd(tested['test_accuracy'])} on the "
                     f"test set over seeds {', '.join(map(str, tested['seeds']))}.")
        blocks = [Paragraph(text), Table(["trial", "state", "value", "values", "run"], rows,
                                         f"{spec_dir.name}: the trials, best first.", small=True)]
        blocks += _figures(study, Path(workdir) / f"search-{spec_dir.name}")
        sections.append(Section(f"Search: {spec_dir.name}", blocks))
    return sections


def _figures(study, folder: Path) -> list:
    """Optuna's matplotlib plots of the study as report figures (those it can draw)."""
    import warnings

    from optuna.visualization import matplotlib as plots

    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for name, plot, caption in (("history", plots.plot_optimization_history, "optimization history"),
                                ("importances", plots.plot_param_importances, "parameter importances"),
                                ("parallel", plots.plot_parallel_coordinate, "parallel coordinates")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        axes = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = axes.get_figure()
        path = folder / f"search-{study.study_name}-{name}.png"  # the writers keep figures by file name
        artifacts.save_figure(path, figure)
        found.append(Figure(path, f"{study.study_name}: {caption}.", width=0.5))
    return found
