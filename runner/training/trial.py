"""A search trial's side of `runner SPEC --search` (runner/suite/search.py runs the study): what one run
does when RUNNER_SEARCH names the study and trial it belongs to. Its last `search.validation`
training images are held out; every `search.every` iterations an Ignite evaluator measures them,
reports the accuracy to the trial and stops training cleanly when the pruner says so (status
"pruned"). Lives below the executors, so runner/training/flow.py can use it without importing the search's
planning; Optuna is imported only when a trial runs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecError

if TYPE_CHECKING:
    import torch

ENV = "RUNNER_SEARCH"  # JSON naming the study, its storage and the trial a run belongs to
# Under --quick (12 iterations on 1,200 images) a trial holds out at most 200 images and validates
# at least every 4 iterations.
QUICK_VALIDATION, QUICK_EVERY = 200, 4


def storage_path(out, spec_name: str) -> Path:
    return Path(out) / spec_name / "_search" / "journal.log"


def open_storage(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _median(settings):
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=settings["warmup"])


def _halving(settings):
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(settings["every"], settings["warmup"]))


def _none(settings):
    import optuna

    return optuna.pruners.NopPruner()


# search.pruner -> its Optuna pruner (a test may add one, e.g. a ThresholdPruner that always prunes).
PRUNERS = {"median": _median, "halving": _halving, "none": _none}


# ---- inside a run --------------------------------------------------------------------------------

class SearchRun:
    """What a run does as part of a search (RUNNER_SEARCH set): a trial holds out validation
    images, validates every search.every iterations, reports to its trial and stops when pruned; a
    test run of the best values only records where it comes from."""

    def __init__(self, run, context: dict):
        self.run, self.context = run, context
        self.settings = run.spec.values.get("search")
        self.held_out: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, labels), set by hold_out()
        self.validated_at = 0
        role = context.get("role", "trial")
        run.results["search"] = {"study": context["study"], "role": role}
        if role == "trial":
            run.results["search"].update(trial=context["number"], pruned_at=None)
        else:
            run.results["search"]["best_trial"] = context.get("best_trial")

    @classmethod
    def from_environment(cls, run) -> "SearchRun | None":
        text = os.environ.get(ENV)
        if not text or "search" not in run.spec.values:
            return None
        return cls(run, json.loads(text))

    @property
    def is_trial(self) -> bool:
        return self.context.get("role", "trial") == "trial"

    def hold_out(self) -> None:
        """The last search.validation training images become the validation set; training uses the rest."""
        if not self.is_trial:
            return
        run, count = self.run, self.settings["validation"]
        count = min(count, QUICK_VALIDATION) if run.quick else count
        if count >= len(run.train_labels):
            raise SpecError(f"holds out {count} of the {len(run.train_labels)} training images, leaving none to "
                            f"train on: lower it", file=run.spec.path, key="search.validation")
        self.held_out = run.train_images[-count:], run.train_labels[-count:]
        run.train_images, run.train_labels = run.train_images[:-count], run.train_labels[:-count]
        run.results["search"]["validation_images"] = count

    def attach(self) -> None:
        """Validation every search.every iterations and at the end; each reported to the trial."""
        if not self.is_trial:
            return
        import optuna
        from ignite.engine import Events

        from .engine import create_evaluator, resolve_precision

        run, context = self.run, self.context
        study = optuna.load_study(study_name=context["study"], storage=open_storage(Path(context["storage"])),
                                  pruner=PRUNERS[self.settings["pruner"]](self.settings))
        trial = optuna.trial.Trial(study, context["trial_id"])
        evaluator = create_evaluator(run.model, run.eval_pipeline, num_classes=len(run.class_names),
                                     channels_last=run.spec.train["channels_last"],
                                     precision=resolve_precision(run.spec.train["precision"], run.device))

        every = min(self.settings["every"], QUICK_EVERY) if run.quick else self.settings["every"]

        @run.trainer.on(Events.ITERATION_COMPLETED(every=every) | Events.COMPLETED)
        def validate(engine):
            iteration = engine.state.iteration
            if iteration == self.validated_at:  # COMPLETED right after an every-th iteration
                return
            self.validated_at = iteration
            accuracy = self.accuracy(evaluator)
            run.metrics.add("validation_accuracy", iteration, accuracy)
            run.results["validation_accuracy"] = run.results["search"]["validation_accuracy"] = accuracy
            trial.report(accuracy, iteration)
            if iteration < run.spec.train["iterations"] and trial.should_prune():
                run.results["search"]["pruned_at"] = iteration
                print(f"[{run.spec.name}] pruned at iteration {iteration}: validation accuracy {accuracy:.4f}",
                      file=sys.stderr)
                engine.terminate()

    def accuracy(self, evaluator) -> float:
        from .engine import EpochBatches

        assert self.held_out is not None  # attach() validates trials only, which hold_out() gave a set
        images, labels = self.held_out
        evaluator.run(EpochBatches(images, labels, self.run.spec.eval.batch_size, shuffle=False))
        return evaluator.state.metrics["accuracy"]


def final_status(run) -> str:
    """"pruned" for a trial its pruner stopped, else "complete"."""
    return "pruned" if (run.results.get("search") or {}).get("pruned_at") is not None else "complete"
