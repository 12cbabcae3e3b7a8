"""What plugins see of a run: one object, built once, read by every hook."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .metrics import MetricsLog
from .plugins import Catalogue
from .progress import Progress
from .spec import Spec


@dataclass
class Run:
    """A run's spec, model, data, engines and results: read what you need, add results through
    `results`, keep your plugin's per-run objects with `state(plugin, make)`."""

    spec: Spec
    catalogue: Catalogue
    device: torch.device
    dir: Path
    quick: bool = False
    model: nn.Module | None = None
    train_pipeline: nn.Module | None = None
    eval_pipeline: nn.Module | None = None
    optimizer: Any = None
    scheduler: Any = None
    trainer: Any = None
    evaluator: Any = None
    metrics: MetricsLog | None = None
    train_images: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    rank: int = 0   # this process in a data-parallel run; 0 writes the artifacts
    world: int = 1  # processes in the run
    started: float = field(default_factory=time.perf_counter)  # for setup_seconds and wall_seconds
    progress: Progress | None = None  # the training display, open while the trainer runs
    plugin_state: dict[str, Any] = field(default_factory=dict)

    def settings(self, plugin: str) -> dict:
        return self.spec.plugins[plugin]

    def state(self, plugin: str, make: Callable[[], Any] | None = None) -> Any:
        """The per-run object a plugin keeps between its hooks, made by `make` on first use;
        None if the plugin made none (and no `make` was given)."""
        if plugin not in self.plugin_state and make is not None:
            self.plugin_state[plugin] = make()
        return self.plugin_state.get(plugin)

    def call_plugins(self, hook: str, **kwargs) -> list:
        """Call `hook` on each enabled plugin in the spec's order, each with its own settings."""
        return [self.catalogue.call(name, hook, settings=self.settings(name), **kwargs)
                for name in self.spec.plugin_names()]

    def show_images(self, window: str, images, caption: str = "") -> None:
        """Show uint8 images (N, 3, H, W) live in one window (the show_images hook: Visdom, if on)."""
        self.call_plugins("show_images", run=self, window=window, images=images, caption=caption)
