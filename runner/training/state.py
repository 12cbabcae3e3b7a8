"""What plugins see of a run: one object, built once, read by every hook."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSource
from ..plugin_host.catalogue import Catalogue
from ..plugin_host.hooks import Hooks
from ..progress import Progress
from ..spec.loading import Spec
from .metrics import MetricsLog


@dataclass
class Run:
    """A run's spec, model, data, engines and results: read what you need and add results through
    `results`. A plugin's own per-run objects live on the `state` its hooks receive, not here."""

    spec: Spec
    catalogue: Catalogue
    device: torch.device
    dir: Path
    quick: bool = False
    data: DataSource | None = None  # where its CIFAR-10 is (runner.data.resolve), resolved once
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
    # The enabled plugins' hooks for this run, each plugin with its settings and state
    # (runner/plugin_host/hooks.py); made from the spec's enabled plugins.
    hooks: Hooks = field(init=False)

    def __post_init__(self):
        self.hooks = self.catalogue.hooks(self.spec.enabled_plugins())

    def show_images(self, window: str, images, caption: str = "") -> None:
        """Show uint8 images (N, 3, H, W) live in one window (the show_images hook: Visdom, if on)."""
        self.hooks.show_images(run=self, window=window, images=images, caption=caption)
